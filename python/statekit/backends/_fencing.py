"""Shared pieces of fenced writes (``put(..., fence=...)``) on the backends that support them.

Each backend keeps, per ``(lock name, key)``, the highest fence token that has written (or
deleted) that key, outside the user's key space: the memory backend in a private dict, SQLite
in its own table ``statekit_fences``, Redis in a hash per hash slot in its reserved namespace
(see ``RedisStateBackend.fenced_put``). A fenced write first checks every key of the call against
that record and refuses the whole call with :class:`~statekit.errors.StaleFence` when any key
was written by a newer token of the same lock; the check, the record update and the write
happen atomically (under the memory backend's lock; in one SQLite transaction; in one Lua script
per hash slot on Redis, so a cluster batch spanning slots is atomic per slot, after a read-only
check of every slot). Unfenced writes are neither checked nor recorded.
"""

from __future__ import annotations

from statekit._fence import Fence
from statekit.errors import StaleFence

__all__ = ["stale_fence"]


def stale_fence(fence: Fence, key: str, newer: int) -> StaleFence:
    """The error refusing ``fence``'s write of ``key``, already written by token ``newer``."""
    return StaleFence(
        f"write refused: key {key!r} was already written under lock {fence.name!r} with fence token "
        f"{newer}, newer than this writer's {fence.token}; this holder lost the lock and must stop",
        name=fence.name,
        key=key,
        token=fence.token,
        newer_token=newer,
    )
