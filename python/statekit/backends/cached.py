"""``CachedStateBackend``: a bounded, read-through LRU cache in front of any backend.

Example::

    from statekit import KeyValueStore
    from statekit.backends import CachedStateBackend, SqliteStateBackend

    backend = CachedStateBackend(SqliteStateBackend("/var/lib/job/state.db"), max_entries=10_000, ttl=30)
    store = KeyValueStore(backend)

What is cached, and for how long:

* ``get`` is served from memory when the key is cached; on a miss it reads the backend and caches
  the value. Misses are not cached (a key written elsewhere is seen at the next read).
* Writes go through to the backend first; ``put``/``batch_put`` then cache the written value, and
  every other write (``delete``, ``batch_delete``, ``incr_by``, ``get_and_delete``,
  ``compare_and_set``, ``set_if_not_exists``, ``replace_prefix``, ``expire``, ``persist``,
  ``touch``, ``clear``) drops the keys it touches (a
  successful ``compare_and_set``/``set_if_not_exists`` caches the value it wrote).
* A cached entry never outlives the key's own TTL: a write caches its value until its expiry;
  a read miss learns the key's expiry from the backend (``export_items(key)``: one extra range
  read per miss, over the keys that start with ``key``) before caching. Entries also leave after
  ``ttl`` seconds in the cache, when given, and the least recently used entries are evicted beyond
  ``max_entries``.
* ``exists`` answers True from the cache; ``list_keys``, ``range``, ``scan_range``, ``ttl``,
  ``export_items``, ``batch_get`` misses, counters and stats always go to the backend (``batch_get``
  serves the cached keys and reads the others, without caching them). Other read-only methods of
  the backend (``refresh_stats``) are passed through; backend methods not listed here that write
  are not reachable through the cache (they would bypass its invalidation).

Invalidation is local to this object: the cache is correct when every write to the keys it serves
goes through it (one process, one ``CachedStateBackend``). Writes made by other processes, other
``CachedStateBackend`` objects or other stores on the same database are **not** seen until the
entry leaves the cache: after ``ttl`` seconds (so ``ttl`` bounds how stale a read can be), by LRU
eviction, or at the key's own expiry. With other writers, give ``ttl``; without it, a key changed
elsewhere can be served stale until it is evicted. Call :meth:`invalidate` after changing keys by
another route.

Concurrency (tasks on one event loop): a read that overlaps a write never caches (the write's
value, or nothing, wins); two overlapping writes to one key leave it uncached, so the cache never
holds a value the backend might not.

Expiries are compared with ``clock`` (default ``time.time``): give the backend's own clock when it
has a custom one (a test's fake clock).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from statekit.backends.base import BackendStats, Item, StateBackend, check_key, check_ttl
from statekit.errors import ConfigError

__all__ = ["CachedStateBackend"]

#: Backend methods that only read, forwarded as they are when the backend has them.
_PASSED_THROUGH = frozenset({"refresh_stats"})


class CachedStateBackend:
    """A bounded LRU read-through cache over ``backend`` (see the module docstring).

    Args:
        backend: any :class:`StateBackend`; closing this closes it.
        max_entries: most keys held in memory (least recently used evicted first).
        ttl: most seconds an entry is served from memory (None: until evicted or the key expires).
            Bounds staleness when other processes write the same keys.
        clock: the backend's clock (seconds since the epoch), to compare expiries with.
    """

    def __init__(
        self,
        backend: StateBackend,
        *,
        max_entries: int = 10_000,
        ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"max_entries must be an int >= 1, got {max_entries!r}")
        if isinstance(backend, CachedStateBackend):
            raise ConfigError("backend is already a CachedStateBackend")
        self._backend = backend
        self._max_entries = max_entries
        self._ttl = check_ttl(ttl, name="ttl")
        self._clock = clock
        self.backend_type: str = f"cached({backend.backend_type})"
        self.persistent: bool = backend.persistent
        # key -> (value, deadline on ``clock``; inf when neither the key nor the cache expires it)
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._writes = 0  # every write started so far (a read that saw one start does not fill)
        self._inflight: dict[str, int] = {}  # key -> writes running
        self._last_write: dict[str, int] = {}  # key -> number of the last write started on it
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def __repr__(self) -> str:
        return (
            f"CachedStateBackend({self._backend!r}, max_entries={self._max_entries}, ttl={self._ttl}, "
            f"entries={len(self._entries)})"
        )

    @property
    def backend(self) -> StateBackend:
        """The backend behind the cache."""
        return self._backend

    # -- the cache ---------------------------------------------------------------------------

    def _lookup(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, deadline = entry
        if deadline <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def _store(self, key: str, value: bytes, expires_at: float | None) -> None:
        deadline = math.inf if expires_at is None else expires_at
        if self._ttl is not None:
            deadline = min(deadline, self._clock() + self._ttl)
        if deadline <= self._clock():
            return
        self._entries[key] = (value, deadline)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1

    def _begin_write(self, keys: Iterable[str]) -> dict[str, int]:
        """Drop ``keys`` and note the write; returns the keys this write may cache afterwards."""
        self._writes += 1
        number = self._writes
        mine: dict[str, int] = {}
        for key in keys:
            self._entries.pop(key, None)
            busy = key in self._inflight
            self._inflight[key] = self._inflight.get(key, 0) + 1
            self._last_write[key] = number
            if not busy:
                mine[key] = number
        return mine

    def _end_write(self, keys: Iterable[str], mine: dict[str, int]) -> set[str]:
        """Finish a write; returns the keys no other write overlapped (safe to cache)."""
        safe = set()
        for key in keys:
            left = self._inflight.get(key, 1) - 1
            if key in mine and self._last_write.get(key) == mine[key] and left == 0:
                safe.add(key)
            if left > 0:
                self._inflight[key] = left
            else:
                self._inflight.pop(key, None)
                self._last_write.pop(key, None)
        return safe

    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._clock() + ttl

    def invalidate(self, keys: Iterable[str] | None = None, *, prefix: str | None = None) -> int:
        """Drop cached entries: the given ``keys``, those under ``prefix``, or (neither) all.

        For keys changed by another route (another process, another store). Returns how many
        entries were dropped.
        """
        if keys is None and prefix is None:
            count = len(self._entries)
            self._entries.clear()
            return count
        doomed = [] if keys is None else [key for key in keys if key in self._entries]
        if prefix is not None:
            doomed += [key for key in self._entries if key.startswith(prefix)]
        for key in doomed:
            self._entries.pop(key, None)
        return len(doomed)

    def cache_info(self) -> dict[str, Any]:
        """Hits, misses, evictions and size of the cache itself (``stats()`` is the backend's)."""
        lookups = self._hits + self._misses
        return {
            "hits": self._hits,
            "misses": self._misses,
            "hit_rate": self._hits / lookups if lookups else 0.0,
            "evictions": self._evictions,
            "entries": len(self._entries),
            "max_entries": self._max_entries,
            "ttl": self._ttl,
        }

    async def _expiry_of(self, key: str) -> tuple[bool, float | None]:
        """``(found, absolute expiry or None)`` of a live key, from the backend."""
        # export_items is on every backend and says "missing" and "never expires" apart.
        for name, _, expires_at in await self._backend.export_items(key):
            if name == key:
                return True, expires_at
        return False, None

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        key = check_key(key)
        value = self._lookup(key)
        if value is not None:
            self._hits += 1
            return value
        self._misses += 1
        # Fill only when no write to any key started meanwhile and none to this key was running.
        before = None if key in self._inflight else self._writes
        value = await self._backend.get(key)
        if value is None or before is None:
            return value
        found, expires_at = await self._expiry_of(key)
        if found and self._writes == before:
            self._store(key, value, expires_at)
        return value

    async def exists(self, key: str) -> bool:
        key = check_key(key)
        if self._lookup(key) is not None:
            return True
        return await self._backend.exists(key)

    async def batch_get(self, keys: Sequence[str]) -> list[bytes | None]:
        cached = [self._lookup(check_key(key)) for key in keys]
        missing = [key for key, value in zip(keys, cached, strict=True) if value is None]
        self._hits += len(keys) - len(missing)
        self._misses += len(missing)
        if not missing:
            return cached
        fetched = iter(await self._backend.batch_get(missing))
        return [value if value is not None else next(fetched) for value in cached]

    async def list_keys(self, prefix: str = "") -> list[str]:
        return await self._backend.list_keys(prefix)

    async def range(
        self, start: str, end: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        return await self._backend.range(start, end, limit)

    async def export_items(self, prefix: str = "") -> Sequence[Item]:
        return await self._backend.export_items(prefix)

    async def ttl(self, key: str) -> float | None:
        return await self._backend.ttl(key)

    async def scan_range(
        self, start: str, end: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        return await self._backend.scan_range(start, end, limit)

    # -- writes ------------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        key = check_key(key)
        mine = self._begin_write([key])
        try:
            await self._backend.put(key, value, ttl)
        finally:
            safe = self._end_write([key], mine)
        if safe:
            self._store(key, value, self._expiry(ttl))

    async def batch_put(self, pairs: Iterable[tuple[str, bytes]], ttl: float | None = None) -> None:
        pairs = list(pairs)
        keys = [check_key(key) for key, _ in pairs]
        mine = self._begin_write(keys)
        try:
            await self._backend.batch_put(pairs, ttl)
        finally:
            safe = self._end_write(keys, mine)
        expires_at = self._expiry(ttl)
        for key, (_, value) in zip(keys, pairs, strict=True):
            if key in safe:
                self._store(key, value, expires_at)

    async def set_if_not_exists(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        key = check_key(key)
        mine = self._begin_write([key])
        try:
            stored = await self._backend.set_if_not_exists(key, value, ttl)
        finally:
            safe = self._end_write([key], mine)
        if stored and safe:
            self._store(key, value, self._expiry(ttl))
        return stored

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None
    ) -> bool:
        key = check_key(key)
        mine = self._begin_write([key])
        try:
            stored = await self._backend.compare_and_set(key, expected, value, ttl)
        finally:
            safe = self._end_write([key], mine)
        if stored and safe:
            self._store(key, value, self._expiry(ttl))
        return stored

    async def delete(self, key: str) -> bool:
        key = check_key(key)
        mine = self._begin_write([key])
        try:
            return await self._backend.delete(key)
        finally:
            self._end_write([key], mine)

    async def batch_delete(self, keys: Sequence[str]) -> int:
        checked = [check_key(key) for key in keys]
        mine = self._begin_write(checked)
        try:
            return await self._backend.batch_delete(checked)
        finally:
            self._end_write(checked, mine)

    async def get_and_delete(self, key: str) -> bytes | None:
        key = check_key(key)
        mine = self._begin_write([key])
        try:
            return await self._backend.get_and_delete(key)
        finally:
            self._end_write([key], mine)

    async def incr_by(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        key = check_key(key)
        mine = self._begin_write([key])
        try:
            return await self._backend.incr_by(key, amount, ttl)
        finally:
            self._end_write([key], mine)

    async def replace_prefix(self, prefix: str, items: Sequence[Item]) -> None:
        self._writes += 1
        self.invalidate(prefix=prefix)
        try:
            await self._backend.replace_prefix(prefix, items)
        finally:
            self.invalidate(prefix=prefix)  # reads that started before may have filled some

    async def expire(self, key: str, ttl: float) -> bool:
        return await self._expiry_write(key, lambda k: self._backend.expire(k, ttl))

    async def persist(self, key: str) -> bool:
        return await self._expiry_write(key, self._backend.persist)

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        return await self._expiry_write(key, lambda k: self._backend.touch(k, ttl))

    async def _expiry_write(self, key: str, write: Callable[[str], Awaitable[bool]]) -> bool:
        # The entry's deadline follows the key's expiry: drop it, the next read learns the new one.
        key = check_key(key)
        mine = self._begin_write([key])
        try:
            return await write(key)
        finally:
            self._end_write([key], mine)

    async def clear(self, prefix: str = "") -> int:
        self._writes += 1
        self.invalidate(prefix=prefix)
        try:
            return await self._backend.clear(prefix)
        finally:
            self.invalidate(prefix=prefix)  # reads that started before may have filled some

    # -- the rest ----------------------------------------------------------------------------

    async def health_check(self) -> bool:
        return await self._backend.health_check()

    def __getattr__(self, name: str) -> Any:
        # Read-only extras of the backend, passed through when it has them (Redis's server-side
        # ``refresh_stats``). Anything that writes is deliberately not forwarded:
        # it would bypass the invalidation above.
        if name in _PASSED_THROUGH:
            return getattr(self._backend, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    async def stats(self, prefix: str = "") -> BackendStats:
        """The backend's stats (the cache's own figures are in :meth:`cache_info`)."""
        return await self._backend.stats(prefix)

    def stats_nowait(self, prefix: str = "") -> BackendStats:
        """The backend's counters without I/O (see ``StateBackend.stats_nowait``)."""
        return self._backend.stats_nowait(prefix)

    async def close(self) -> None:
        self._entries.clear()
        await self._backend.close()
