"""Storage backends: async, ``str`` keys, ``bytes`` values (see :class:`StateBackend`).

* :class:`MemoryStateBackend`: in-process, ordered, TTLs; not persistent.
* :class:`SqliteStateBackend`: one SQLite file (WAL), persistent, shareable between processes.
"""

from statekit.backends.base import BackendStats, StateBackend
from statekit.backends.memory import MemoryStateBackend
from statekit.backends.sqlite import SqliteStateBackend

__all__ = ["BackendStats", "MemoryStateBackend", "SqliteStateBackend", "StateBackend"]
