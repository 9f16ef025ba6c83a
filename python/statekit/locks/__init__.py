"""Locks that keep a job to one running instance.

* :class:`FileLock`: ``fcntl.flock`` on a local file; one instance per machine.
* :class:`RedisLock`: a lease on Redis (standalone or cluster), renewed in the background.
* :class:`PostgresLock`: a PostgreSQL advisory lock on a dedicated connection (or, behind a
  transaction-pooling PgBouncer, inside the caller's transaction).

The distributed locks hand out a :class:`Fence` with each acquisition: pass it to
``store.put(key, value, fence=fence)`` and a holder that lost its lease cannot overwrite the
work of the holder that came after it. ``LockExistsError`` (also in :mod:`statekit.errors`) is
raised when a lock is already held.
"""

from statekit._fence import Fence
from statekit.errors import LockExistsError, LockLost, StaleFence
from statekit.locks._sync import SyncLock
from statekit.locks._sync_redis import SyncRedisLock
from statekit.locks.file import FileLock, LockMonitor
from statekit.locks.postgres import PostgresLock
from statekit.locks.redis import RedisLock

__all__ = [
    "Fence",
    "FileLock",
    "LockExistsError",
    "LockLost",
    "LockMonitor",
    "PostgresLock",
    "RedisLock",
    "StaleFence",
    "SyncLock",
    "SyncRedisLock",
]
