"""The Redis backend, as a package.

* :mod:`._backend`: the façade, :class:`RedisStateBackend` (validation, operation plans, counters);
* :mod:`._transport`: one transport: redis-py connections, one pool per server, one set of
  timeouts, one retry policy, pipelined round trips with Rust-encoded commands;
* :mod:`._topology`: where keys live: :class:`~._topology.Standalone` or :class:`~._topology.Cluster`;
* :mod:`._index`: the range index, sharded across slots;
* :mod:`._scripts`: the Lua scripts;
* :mod:`._config`: :class:`RedisConfig` and :class:`RedisStats` (no redis-py needed).

``RedisStateBackend`` is imported on first use, so ``RedisConfig`` works without the ``redis`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from statekit.backends.redis._config import RedisConfig, RedisConfigBuilder, RedisStats

if TYPE_CHECKING:
    from statekit.backends.redis._backend import RedisStateBackend

__all__ = ["RedisConfig", "RedisConfigBuilder", "RedisStateBackend", "RedisStats"]


def __getattr__(name: str) -> Any:
    if name == "RedisStateBackend":
        from statekit.backends.redis._backend import RedisStateBackend

        return RedisStateBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
