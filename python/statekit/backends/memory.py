"""In-process backend: a sorted dict of bytes, with TTLs.

Keys live in a :class:`sortedcontainers.SortedDict`, so a point read is a dict lookup and a
range query costs O(log n + k) instead of sorting every key. Expiry is both lazy (a read of an
expired key removes it) and periodic (a timer on the running event loop reaps expired keys
from a heap ordered by expiry time, so memory does not grow with keys nobody reads again).

Every operation completes without yielding to the event loop, so operations are atomic with
respect to other tasks; a lock makes them atomic with respect to other threads as well. That
includes ``export_items`` (a point-in-time snapshot) and ``replace_prefix``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from itertools import compress, repeat

from sortedcontainers import SortedDict

from statekit._fence import Fence, check_fence
from statekit._utils.durations import to_seconds
from statekit.backends._fencing import stale_fence
from statekit.backends.base import (
    BackendStats,
    Item,
    ItemColumns,
    add_to_counter,
    check_amount,
    check_bound,
    check_item_prefix,
    check_items,
    check_key,
    check_keys,
    check_limit,
    check_pairs,
    check_ttl,
    check_value,
    parse_counter,
    prefix_upper_bound,
)
from statekit.errors import ConfigError, InvalidValue, KeyNotFound, NotInitialized

__all__ = ["MemoryStateBackend"]

DEFAULT_CLEANUP_INTERVAL = 1.0


class MemoryStateBackend:
    """A fast, non-persistent backend for tests, development and single-process jobs.

    Args:
        cleanup_interval: seconds (int, float or timedelta; positive and finite) between
            sweeps of expired keys (they are also dropped lazily whenever they are read).
        clock: returns the current time in seconds; inject a fake clock to test TTLs.

    Raises:
        ConfigError: ``cleanup_interval`` is not a positive, finite number of seconds.
    """

    backend_type = "memory"
    persistent = False

    def __init__(
        self,
        *,
        cleanup_interval: float | timedelta = DEFAULT_CLEANUP_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # 0 (or NaN, negative) would re-arm the reaper timer at once, forever: 100% CPU.
        interval = to_seconds(cleanup_interval, "cleanup_interval")
        self._data: SortedDict = SortedDict()
        self._expires: dict[str, float] = {}
        # (expires_at, key) entries; stale when the key's current expiry differs.
        self._expiry_heap: list[tuple[float, str]] = []
        self._lock = threading.RLock()
        self._clock = clock
        self._cleanup_interval = interval
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False
        self._stats = BackendStats(backend_type=self.backend_type)
        # (lock name, key) -> highest fence token that wrote the key (see backends/_fencing.py).
        self._fences: dict[tuple[str, str], int] = {}

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        self._check_open()
        key = check_key(key)
        stats = self._stats
        stats.get_count += 1
        value: bytes | None = self._data.get(key)
        if value is not None and self._expires and self._is_expired(key):
            value = None
        if value is None:
            stats.miss_count += 1
            return None
        stats.hit_count += 1
        stats.bytes_read += len(value)
        return value

    async def exists(self, key: str) -> bool:
        self._check_open()
        key = check_key(key)
        return key in self._data and not (self._expires and self._is_expired(key))

    async def list_keys(self, prefix: str = "") -> list[str]:
        self._check_open()
        prefix = check_bound(prefix, "prefix")
        with self._lock:
            return [key for key in self._iter_range(prefix, prefix_upper_bound(prefix))]

    async def range(
        self, start: str, end: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        self._check_open()
        start = check_bound(start, "start")
        end = None if end is None else check_bound(end, "end")
        limit = check_limit(limit)
        upper = prefix_upper_bound(start) if end is None else end
        out: list[tuple[str, bytes]] = []
        if limit is not None and limit <= 0:
            return out
        with self._lock:
            for key in self._iter_range(start, upper):
                out.append((key, self._data[key]))
                if limit is not None and len(out) >= limit:
                    break
        self._stats.bytes_read += sum(len(v) for _, v in out)
        return out

    async def batch_get(self, keys: Sequence[str]) -> list[bytes | None]:
        self._check_open()
        keys = check_keys(keys)
        self._stats.batch_count += 1
        data = self._data
        with self._lock:
            values: list[bytes | None] = [data.get(k) for k in keys]
            if self._expires:
                for i, key in enumerate(keys):
                    if values[i] is not None and self._is_expired(key):
                        values[i] = None
        hits = sum(1 for v in values if v is not None)
        self._stats.get_count += len(values)
        self._stats.hit_count += hits
        self._stats.miss_count += len(values) - hits
        return values

    # -- writes --------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._check_open()
        key, value, ttl = check_key(key), check_value(value, key), check_ttl(ttl)
        with self._lock:
            self._set(key, value, ttl)
        self._stats.put_count += 1
        self._stats.bytes_written += len(value)

    async def batch_put(self, pairs: Iterable[tuple[str, bytes]], ttl: float | None = None) -> None:
        self._check_open()
        items = check_pairs(pairs)  # the whole batch, before anything is applied
        ttl = check_ttl(ttl)
        with self._lock:
            if ttl is None and not self._expires:
                self._data.update(items)  # fast path: no expiry bookkeeping at all
            else:
                for key, value in items:
                    self._set(key, value, ttl)
        self._stats.batch_count += 1
        self._stats.put_count += len(items)
        self._stats.bytes_written += sum(len(v) for _, v in items)

    async def delete(self, key: str) -> bool:
        self._check_open()
        key = check_key(key)
        with self._lock:
            existed = self._pop_live(key) is not None
        self._stats.delete_count += 1
        return existed

    async def batch_delete(self, keys: Sequence[str]) -> int:
        self._check_open()
        keys = check_keys(keys)
        with self._lock:
            removed = sum(1 for key in keys if self._pop_live(key) is not None)
        self._stats.batch_count += 1
        self._stats.delete_count += len(keys)
        return removed

    async def set_if_not_exists(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        self._check_open()
        key, value, ttl = check_key(key), check_value(value, key), check_ttl(ttl)
        with self._lock:
            if key in self._data and not self._is_expired(key):
                return False
            self._set(key, value, ttl)
        self._stats.put_count += 1
        return True

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None
    ) -> bool:
        self._check_open()
        key, value, ttl = check_key(key), check_value(value, key), check_ttl(ttl)
        if expected is not None:
            expected = check_value(expected, key)
        with self._lock:
            current: bytes | None = self._data.get(key)
            if current is not None and self._expires and self._is_expired(key):
                current = None
            if current != expected:
                return False
            self._set(key, value, ttl)
        self._stats.put_count += 1
        self._stats.bytes_written += len(value)
        return True

    async def get_and_delete(self, key: str) -> bytes | None:
        self._check_open()
        key = check_key(key)
        with self._lock:
            return self._pop_live(key)

    async def incr_by(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        self._check_open()
        key, amount, ttl = check_key(key), check_amount(amount, key), check_ttl(ttl)
        with self._lock:
            current = self._data.get(key)
            if current is not None and self._is_expired(key):
                current = None
            if current is None:
                new = amount
                self._set(key, str(new).encode(), ttl)
            else:
                new = add_to_counter(parse_counter(current, key, self.backend_type), amount, key, "memory")
                self._data[key] = str(new).encode()  # keeps its existing expiry
        return new

    # -- snapshots -----------------------------------------------------------------------

    async def export_items(self, prefix: str = "") -> ItemColumns:
        """Every live key under ``prefix`` with its value and expiry, as of one instant.

        Taken under the lock without yielding, so it is a point-in-time snapshot. The items are
        in insertion order when most keys are exported (walking the dict's own storage in order
        is several times faster than looking values up in key order), in key order otherwise.
        """
        self._check_open()
        prefix = check_bound(prefix, "prefix")
        with self._lock:
            data = self._data
            upper = prefix_upper_bound(prefix)
            start = data.bisect_left(prefix)
            stop = len(data) if upper is None else data.bisect_left(upper)
            if stop - start == len(data):
                keys: list[str] = list(dict.keys(data))
                values: list[bytes] = list(dict.values(data))
            elif 8 * (stop - start) > len(data):
                mask = list(map(str.startswith, dict.keys(data), repeat(prefix)))
                keys = list(compress(dict.keys(data), mask))
                values = list(compress(dict.values(data), mask))
            else:
                keys = data.keys()[start:stop]
                values = list(map(data.__getitem__, keys))
            columns = ItemColumns(keys, values)
            if self._expires:
                columns = self._live_columns(columns)
        self._stats.bytes_read += sum(map(len, columns.values))
        return columns

    async def replace_prefix(self, prefix: str, items: Sequence[Item]) -> None:
        """Atomically replace everything under ``prefix`` with ``items`` (under the lock)."""
        self._check_open()
        prefix = check_bound(prefix, "prefix")
        columns = check_items(items)
        check_item_prefix(columns.keys, prefix)
        with self._lock:
            if columns.expires_at is not None:
                columns = self._live_columns(columns)
            keys, values, expires = columns.keys, columns.values, columns.expires_at
            data = self._data
            upper = prefix_upper_bound(prefix)
            start = data.bisect_left(prefix)
            stop = len(data) if upper is None else data.bisect_left(upper)
            if stop - start == len(data):
                # Everything goes: build a fresh mapping in one pass instead of deleting keys.
                fresh = SortedDict()
                fresh.update(zip(keys, values, strict=True))
                self._data = fresh
                self._expires = {}
                self._expiry_heap = []
            else:
                for key in data.keys()[start:stop]:
                    del data[key]
                    self._expires.pop(key, None)
                data.update(zip(keys, values, strict=True))
                if expires is None and self._expires:
                    for key in keys:  # overwritten keys lose an old expiry
                        self._expires.pop(key, None)
            if expires is not None:
                for key, expires_at in zip(keys, expires, strict=True):
                    if expires_at is None:
                        self._expires.pop(key, None)
                    else:
                        self._expires[key] = expires_at
            self._compact_heap()
            if self._expires:
                self._arm_reaper()
        stats = self._stats
        stats.batch_count += 1
        stats.put_count += len(keys)
        stats.bytes_written += sum(map(len, values))

    async def _replace_prefix_loaded(
        self, prefix: str, items: dict[str, bytes], expires: dict[str, float] | None, value_bytes: int
    ) -> None:
        """``replace_prefix`` for a verified checkpoint, handed over as a dict (no lists, no
        per-key insertion: the sorted mapping is built from the dict in one go).

        Only for the checkpoint coordinator, with what ``_native.snapshot_load`` returns: every
        key was already checked there like ``check_keys`` does (non-empty UTF-8, not reserved,
        under ``prefix``) and every value is ``bytes``; the expiries are checked here. Takes
        ownership of ``items`` and ``expires``.
        """
        self._check_open()
        prefix = check_bound(prefix, "prefix")
        expires = expires or {}
        for key, at in expires.items():
            if not math.isfinite(at):
                raise InvalidValue(f"item {key!r} has an invalid expiry {at!r}", key=key)
        with self._lock:
            if expires:
                now = self._clock()
                for key in [key for key, at in expires.items() if at <= now]:
                    value_bytes -= len(items.pop(key))
                    del expires[key]
            data = self._data
            upper = prefix_upper_bound(prefix)
            start = data.bisect_left(prefix)
            stop = len(data) if upper is None else data.bisect_left(upper)
            if stop - start == len(data):
                self._data = SortedDict(items)
                self._expires = expires
            else:
                for key in data.keys()[start:stop]:
                    del data[key]
                    self._expires.pop(key, None)
                data.update(items)
                if self._expires:
                    for key in items:  # overwritten keys lose an old expiry
                        self._expires.pop(key, None)
                self._expires.update(expires)
            self._compact_heap()
            if self._expires:
                self._arm_reaper()
        stats = self._stats
        stats.batch_count += 1
        stats.put_count += len(items)
        stats.bytes_written += value_bytes

    def _live_columns(self, columns: ItemColumns) -> ItemColumns:
        """``columns`` without the items already expired, with each kept key's expiry.

        Export passes columns without expiries (they are looked up here); replace passes the
        expiries to install.
        """
        now = self._clock()
        if columns.expires_at is None:
            expires: list[float | None] = list(map(self._expires.get, columns.keys))
        else:
            expires = columns.expires_at
        if expires.count(None) == len(expires):
            return ItemColumns(columns.keys, columns.values)
        keep = [at is None or at > now for at in expires]
        if all(keep):
            return ItemColumns(columns.keys, columns.values, expires)
        return ItemColumns(
            list(compress(columns.keys, keep)),
            list(compress(columns.values, keep)),
            list(compress(expires, keep)),
        )

    # -- expiry, clear, paged ranges -----------------------------------------------------

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires, None when it never does; KeyNotFound when missing."""
        self._check_open()
        key = check_key(key)
        with self._lock:
            if key not in self._data or self._is_expired(key):
                raise KeyNotFound(key)
            expires_at = self._expires.get(key)
            return None if expires_at is None else expires_at - self._clock()

    async def expire(self, key: str, ttl: float) -> bool:
        self._check_open()
        key, seconds = check_key(key), check_ttl(ttl)
        if seconds is None:
            raise ConfigError("expire needs a ttl; use persist() to remove an expiry")
        return self._change_expiry(key, seconds)[0]

    async def persist(self, key: str) -> bool:
        self._check_open()
        return self._change_expiry(check_key(key), None)[1]

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        self._check_open()
        key, seconds = check_key(key), check_ttl(ttl)
        return self._change_expiry(key, seconds)[0]

    def _change_expiry(self, key: str, ttl: float | None) -> tuple[bool, bool]:
        """Set (``ttl`` seconds) or clear (None) a live key's expiry: ``(existed, had an expiry)``."""
        with self._lock:
            if key not in self._data or self._is_expired(key):
                return False, False
            had = key in self._expires
            if ttl is None:
                self._expires.pop(key, None)
            else:
                self._set(key, self._data[key], ttl)
        return True, had

    async def clear(self, prefix: str = "") -> int:
        """Delete every key under ``prefix`` (under the lock); how many live keys were deleted."""
        self._check_open()
        prefix = check_bound(prefix, "prefix")
        with self._lock:
            data = self._data
            upper = prefix_upper_bound(prefix)
            doomed = list(data.irange(prefix, upper, inclusive=(True, False)))
            now = self._clock()
            expires = self._expires
            live = sum(1 for key in doomed if (at := expires.get(key)) is None or at > now)
            if len(doomed) == len(data):
                self._data = SortedDict()
                self._expires = {}
                self._expiry_heap = []
            else:
                for key in doomed:
                    del data[key]
                    expires.pop(key, None)
        self._stats.batch_count += 1
        self._stats.delete_count += len(doomed)
        return live

    async def scan_range(
        self, start: str, end: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        """Live ``(key, value)`` pairs with ``start <= key < end`` (``end=None``: unbounded)."""
        self._check_open()
        start = check_bound(start, "start")
        end = None if end is None else check_bound(end, "end")
        limit = check_limit(limit)
        out: list[tuple[str, bytes]] = []
        if limit == 0:
            return out
        with self._lock:
            data = self._data
            for key in self._iter_range(start, end):
                out.append((key, data[key]))
                if limit is not None and len(out) >= limit:
                    break
        self._stats.bytes_read += sum(len(v) for _, v in out)
        return out

    # -- housekeeping --------------------------------------------------------------------

    async def health_check(self) -> bool:
        return not self._closed

    async def stats(self, prefix: str = "") -> BackendStats:
        return self.stats_nowait(prefix)

    def stats_nowait(self, prefix: str = "") -> BackendStats:
        with self._lock:
            if self._expires:
                self._reap_expired()
            if prefix:
                upper = prefix_upper_bound(prefix)
                keys = list(self._data.irange(prefix, upper, inclusive=(True, False)))
                total = len(keys)
                expiring = sum(1 for key in keys if key in self._expires)
            else:
                total = len(self._data)
                expiring = len(self._expires)
        return dataclasses.replace(self._stats, total_keys=total, expiring_keys=expiring)

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    # -- internals (call with the lock held) ---------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NotInitialized("the memory backend is closed", backend_type=self.backend_type)

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._data[key] = value
        if ttl is None:
            if self._expires:
                self._expires.pop(key, None)
            return
        expires_at = self._clock() + ttl
        self._expires[key] = expires_at
        heapq.heappush(self._expiry_heap, (expires_at, key))
        if len(self._expiry_heap) > 2 * len(self._expires) + 1024:
            self._compact_heap()
        self._arm_reaper()

    def _is_expired(self, key: str) -> bool:
        expires_at = self._expires.get(key)
        if expires_at is None or expires_at > self._clock():
            return False
        with self._lock:
            # Re-check under the lock: another thread may have re-put the key meanwhile.
            expires_at = self._expires.get(key)
            if expires_at is not None and expires_at <= self._clock():
                del self._data[key]
                del self._expires[key]
                return True
            return False

    def _pop_live(self, key: str) -> bytes | None:
        if key not in self._data:
            return None
        expired = self._is_expired(key)
        if expired:
            return None
        self._expires.pop(key, None)
        value: bytes = self._data.pop(key)
        return value

    def _iter_range(self, start: str, end: str | None) -> Iterable[str]:
        now = self._clock()
        expires = self._expires
        for key in self._data.irange(start, end, inclusive=(True, False)):
            expires_at = expires.get(key) if expires else None
            if expires_at is None or expires_at > now:
                yield key

    def _reap_expired(self) -> None:
        now = self._clock()
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            if self._expires.get(key) == expires_at:
                del self._expires[key]
                del self._data[key]

    def _compact_heap(self) -> None:
        self._expiry_heap = [(at, key) for key, at in self._expires.items()]
        heapq.heapify(self._expiry_heap)

    def _arm_reaper(self) -> None:
        if self._reaper is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (called from a thread): lazy expiry and stats() still reap
        self._reaper = loop.call_later(self._cleanup_interval, self._on_reaper_timer)

    def _on_reaper_timer(self) -> None:
        self._reaper = None
        with self._lock:
            self._reap_expired()
            if self._expiry_heap:
                self._arm_reaper()

    # -- fenced writes (see backends/_fencing.py) ------------------------------------------

    async def fenced_put(self, fence: Fence, key: str, value: bytes, ttl: float | None = None) -> None:
        """``put``, refused with StaleFence when a newer token of ``fence.name`` wrote ``key``."""
        self._check_open()
        if type(fence) is not Fence or type(fence.token) is not int:
            fence = check_fence(fence)
        key, value, ttl = check_key(key), check_value(value, key), check_ttl(ttl)
        record = (fence.name, key)
        with self._lock:
            seen = self._fences.get(record)
            if seen is not None and seen > fence.token:
                raise stale_fence(fence, key, seen)
            self._fences[record] = fence.token
            self._set(key, value, ttl)
        self._stats.put_count += 1
        self._stats.bytes_written += len(value)

    async def fenced_batch_put(
        self, fence: Fence, pairs: Iterable[tuple[str, bytes]], ttl: float | None = None
    ) -> None:
        """``batch_put``, refused whole with StaleFence when a newer token of ``fence.name`` wrote a key."""
        self._check_open()
        fence = check_fence(fence)
        items = check_pairs(pairs)
        ttl = check_ttl(ttl)
        with self._lock:
            self._record_fence(fence, [key for key, _ in items])
            for key, value in items:
                self._set(key, value, ttl)
        self._stats.put_count += len(items)
        self._stats.bytes_written += sum(len(v) for _, v in items)

    async def fenced_batch_delete(self, fence: Fence, keys: Sequence[str]) -> int:
        """``batch_delete`` under a fence (the deletion is recorded like a write)."""
        self._check_open()
        fence = check_fence(fence)
        keys = check_keys(keys)
        with self._lock:
            self._record_fence(fence, keys)
            removed = sum(1 for key in keys if self._pop_live(key) is not None)
        self._stats.delete_count += len(keys)
        return removed

    async def fenced_compare_and_set(
        self, fence: Fence, key: str, expected: bytes | None, value: bytes, ttl: float | None = None
    ) -> bool:
        """``compare_and_set`` under a fence."""
        self._check_open()
        fence = check_fence(fence)
        key = check_key(key)
        with self._lock:  # re-entrant: compare_and_set takes it again
            self._record_fence(fence, [key])
            return await self.compare_and_set(key, expected, value, ttl)

    def _record_fence(self, fence: Fence, keys: list[str]) -> None:
        fences, name, token = self._fences, fence.name, fence.token
        for key in keys:
            seen = fences.get((name, key))
            if seen is not None and seen > token:
                raise stale_fence(fence, key, seen)
        for key in keys:
            fences[(name, key)] = token
