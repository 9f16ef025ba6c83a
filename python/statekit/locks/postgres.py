"""placeholder"""

from statekit.locks._lease import LeaseLock


class PostgresLock(LeaseLock):
    pass
