"""``CachedStateBackend``: the store suite over a cached backend of every kind, plus what the cache adds.

The ``backend`` fixture is overridden here: every kind (memory, SQLite, Redis, Redis Cluster) is
wrapped in a small cache (64 entries, so the suite's bigger tests also evict), on the backend's
own clock, and the store tests imported below run against it unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statekit import KeyValueStore
from statekit.backends import CachedStateBackend, MemoryStateBackend, SqliteStateBackend, StateBackend
from statekit.errors import ConfigError, InvalidKey
from tests.acceptance.test_store import (  # noqa: F401 - collected here again, over the cached backend
    test_batch_operations_align_with_keys,
    test_closed_store_raises_not_initialized,
    test_concurrent_tasks_never_lose_writes,
    test_counters_are_exact_under_concurrent_tasks,
    test_default_ttl_applies_when_no_ttl_given,
    test_delete_of_expired_key_reports_false,
    test_get_counter_reads_without_creating,
    test_incr_on_non_integer_is_storage_error,
    test_invalid_keys_are_rejected,
    test_key_prefix_isolates_stores_on_one_backend,
    test_overwrite_replaces_value,
    test_pop_returns_and_removes,
    test_put_get_exists_delete,
    test_put_over_expired_key_and_set_if_absent,
    test_range_with_end_is_start_inclusive_end_exclusive,
    test_range_without_end_is_a_prefix_query,
    test_short_ttls_expire_and_leave_the_counts_right,
    test_ttl_expiry_with_controlled_clock,
    test_unencodable_value_raises_and_writes_nothing,
    test_update_is_a_read_modify_write_without_lost_updates,
    test_utf8_bytes_keys_are_the_same_key_as_str,
)
from tests.acceptance.test_store_ops import (  # noqa: F401 - collected here again, over the cached backend
    test_clear_deletes_only_the_stores_prefix_and_counts_live_keys,
    test_clear_without_prefix_empties_the_backend,
    test_expire_and_persist_keep_the_expiring_count_right,
    test_expire_sets_a_ttl_on_an_existing_key_only,
    test_expire_takes_durations_and_refuses_bad_arguments_before_writing,
    test_iter_keys_pages_through_everything_in_order,
    test_iter_keys_skips_expired_and_deleted_keys,
    test_iter_range_matches_range_get,
    test_iterators_refuse_bad_arguments,
    test_persist_removes_an_expiry,
    test_touch_restarts_the_ttl,
    test_touch_without_ttl_applies_the_default_ttl,
    test_ttl_reports_seconds_left_none_for_forever_and_raises_for_missing,
)
from tests.conftest import SERVER_CLOCK_KINDS, BackendFactory, FakeClock


@pytest.fixture
async def backend(
    backend_factory: BackendFactory, backend_kind: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StateBackend]:
    inner = backend_factory(tmp_path, clock)
    cached = CachedStateBackend(
        inner, max_entries=64, clock=time.time if backend_kind in SERVER_CLOCK_KINDS else clock
    )
    yield cached
    await cached.close()


def _cache(store: KeyValueStore) -> CachedStateBackend:
    assert isinstance(store.backend, CachedStateBackend)
    return store.backend


async def test_reads_are_served_from_memory(backend: StateBackend) -> None:
    cached = backend
    assert isinstance(cached, CachedStateBackend)
    await cached.put("k", b"v")
    reads_before = cached.backend.stats_nowait().get_count
    for _ in range(10):
        assert await cached.get("k") == b"v"
    assert cached.backend.stats_nowait().get_count == reads_before  # the backend was not asked
    assert cached.cache_info()["hits"] == 10


async def test_a_miss_fills_the_cache_with_the_keys_own_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    inner = SqliteStateBackend(tmp_path / "s.db", clock=clock)
    await inner.put("k", b"written elsewhere", ttl=10)
    cached = CachedStateBackend(inner, clock=clock)
    assert await cached.get("k") == b"written elsewhere"
    assert await cached.get("k") == b"written elsewhere"
    assert cached.cache_info()["hits"] == 1
    clock.advance(10.5)
    assert await cached.get("k") is None  # never served past the key's own TTL
    await cached.close()


async def test_written_ttls_bound_cached_entries() -> None:
    clock = FakeClock()
    cached = CachedStateBackend(MemoryStateBackend(clock=clock), clock=clock)
    await cached.put("short", b"1", ttl=5)
    await cached.batch_put([("a", b"1"), ("b", b"2")], ttl=5)
    await cached.put("forever", b"2")
    assert await cached.batch_get(["short", "a", "b", "forever"]) == [b"1", b"1", b"2", b"2"]
    clock.advance(6)
    assert await cached.batch_get(["short", "a", "b", "forever"]) == [None, None, None, b"2"]
    assert not await cached.exists("short")
    await cached.close()


async def test_other_writers_are_seen_after_the_cache_ttl(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "shared.db"
    cached = CachedStateBackend(SqliteStateBackend(path, clock=clock), ttl=30, clock=clock)
    other = SqliteStateBackend(path, clock=clock)  # another process, in effect
    await cached.put("k", b"old")
    await other.put("k", b"new")
    assert await cached.get("k") == b"old"  # documented: not seen while cached
    clock.advance(31)
    assert await cached.get("k") == b"new"
    await other.put("k", b"newer")
    assert cached.invalidate(["k"]) == 1
    assert await cached.get("k") == b"newer"
    await other.close()
    await cached.close()


async def test_writes_go_through_and_drop_stale_entries() -> None:
    inner = MemoryStateBackend()
    cached = CachedStateBackend(inner)
    await cached.put("n", b"1")
    assert await cached.incr_by("n", 2) == 3
    assert await cached.get("n") == b"3"
    assert await cached.get_and_delete("n") == b"3"
    assert await cached.get("n") is None
    await cached.put("k", b"a")
    assert await cached.compare_and_set("k", b"a", b"b")
    assert await cached.get("k") == b"b"
    assert await inner.get("k") == b"b"
    assert not await cached.set_if_not_exists("k", b"c")
    assert await cached.delete("k")
    assert await cached.get("k") is None
    await cached.batch_put([("p:1", b"1"), ("p:2", b"2"), ("q", b"3")])
    await cached.replace_prefix("p:", [("p:3", b"3", None)])
    assert await cached.batch_get(["p:1", "p:2", "p:3", "q"]) == [None, None, b"3", b"3"]
    assert await cached.batch_delete(["p:3", "q"]) == 2
    assert await cached.batch_get(["p:3", "q"]) == [None, None]
    await cached.close()


async def test_the_cache_is_bounded_lru() -> None:
    cached = CachedStateBackend(MemoryStateBackend(), max_entries=3)
    for key in "abcd":
        await cached.put(key, key.encode())
    assert cached.cache_info()["entries"] == 3
    assert cached.cache_info()["evictions"] == 1
    await cached.get("b")  # most recently used now
    await cached.put("e", b"e")  # evicts c
    hits = cached.cache_info()["hits"]
    assert await cached.get("b") == b"b"
    assert await cached.get("c") == b"c"  # from the backend
    assert cached.cache_info()["hits"] == hits + 1
    await cached.close()


async def test_overlapping_writes_leave_the_key_uncached() -> None:
    class Slow(MemoryStateBackend):
        async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
            await asyncio.sleep(0.02 if value == b"first" else 0)
            await super().put(key, value, ttl)

    inner = Slow()
    cached = CachedStateBackend(inner)
    await asyncio.gather(cached.put("k", b"first"), cached.put("k", b"second"))
    assert cached.cache_info()["entries"] == 0
    assert await cached.get("k") == await inner.get("k")
    await cached.close()


async def test_a_read_overlapping_a_write_does_not_cache_the_old_value() -> None:
    class SlowRead(MemoryStateBackend):
        async def get(self, key: str) -> bytes | None:
            value = await super().get(key)
            await asyncio.sleep(0.02)
            return value

    cached = CachedStateBackend(SlowRead())
    await cached.backend.put("k", b"old")
    read = asyncio.create_task(cached.get("k"))
    await asyncio.sleep(0.005)
    await cached.put("k", b"new")
    assert await read == b"old"  # it started before the write
    assert await cached.get("k") == b"new"
    await cached.close()


def test_bad_settings_are_config_errors() -> None:
    assert isinstance(CachedStateBackend(MemoryStateBackend()), StateBackend)
    with pytest.raises(ConfigError):
        CachedStateBackend(MemoryStateBackend(), max_entries=0)
    with pytest.raises(ConfigError):
        CachedStateBackend(MemoryStateBackend(), ttl=-1)
    with pytest.raises(ConfigError):
        CachedStateBackend(CachedStateBackend(MemoryStateBackend()))


async def test_bad_keys_are_refused_like_the_backend_does() -> None:
    cached = CachedStateBackend(MemoryStateBackend())
    with pytest.raises(InvalidKey):
        await cached.get("")
    with pytest.raises(InvalidKey):
        await cached.put("{statekit-x", b"1")
    assert await cached.get(b"k".decode()) is None
    await cached.close()
