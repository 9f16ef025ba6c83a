"""Storage backends: async, ``str`` keys, ``bytes`` values (see :class:`StateBackend`).

* :class:`MemoryStateBackend`: in-process, ordered, TTLs; not persistent.
* :class:`SqliteStateBackend`: one SQLite file (WAL), persistent, shareable between processes.
* :class:`CachedStateBackend`: a bounded read-through LRU cache in front of any of them.
* :class:`RedisStateBackend`: Redis standalone or cluster, TLS/AUTH, pipelined batches. Needs the
  ``redis`` extra (``pip install statekit[redis]``); it is imported on first use, so this package
  imports without redis-py, and a missing extra raises ConfigError saying how to install it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from statekit.backends.base import BackendStats, StateBackend
from statekit.backends.cached import CachedStateBackend
from statekit.backends.memory import MemoryStateBackend
from statekit.backends.redis._config import RedisConfig, RedisStats
from statekit.backends.sqlite import SqliteStateBackend

if TYPE_CHECKING:
    from statekit.backends.redis import RedisStateBackend

__all__ = [
    "BackendStats",
    "CachedStateBackend",
    "MemoryStateBackend",
    "RedisConfig",
    "RedisStateBackend",
    "RedisStats",
    "SqliteStateBackend",
    "StateBackend",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStateBackend":
        return load_redis_backend()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_redis_backend() -> type[RedisStateBackend]:
    """The RedisStateBackend class; ConfigError naming the extra when redis-py is missing."""
    try:
        from statekit.backends.redis._backend import RedisStateBackend
    except ModuleNotFoundError as exc:
        if exc.name not in ("redis", "hiredis") and not (exc.name or "").startswith("redis."):
            raise
        from statekit.errors import ConfigError

        raise ConfigError(
            f"the Redis backend needs {exc.name!r}, which is not installed: pip install statekit[redis]"
        ) from None
    return RedisStateBackend
