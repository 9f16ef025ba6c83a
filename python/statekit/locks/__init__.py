"""Locks that keep a job to one running instance.

* :class:`FileLock`: ``fcntl.flock`` on a local file; one instance per machine.

``LockExistsError`` (also in :mod:`statekit.errors`) is raised when a lock is already held.
"""

from statekit.errors import LockExistsError
from statekit.locks.file import FileLock, LockMonitor

__all__ = ["FileLock", "LockExistsError", "LockMonitor"]
