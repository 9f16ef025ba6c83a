"""``statekit.sync``: the store behaviour suite run through the blocking API, plus threads and exit.

The ``store`` fixture is overridden here: each test of ``test_store.py`` imported below gets an
async-looking adapter whose every method runs the ``SyncStore`` method in a worker thread
(``asyncio.to_thread``), so the same assertions check the sync API on every backend kind, with
calls arriving from several threads at once where a test runs tasks concurrently.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from statekit import KeyValueStore
from statekit.backends import MemoryStateBackend
from statekit.errors import ConfigError, InvalidKey, NotInitialized, SerializationFailed
from statekit.sync import SyncStore, create_store
from tests.acceptance.test_store import (  # noqa: F401 - collected here again, over the sync API
    test_batch_operations_align_with_keys,
    test_concurrent_tasks_never_lose_writes,
    test_counters_are_exact_under_concurrent_tasks,
    test_get_counter_reads_without_creating,
    test_incr_on_non_integer_is_storage_error,
    test_invalid_keys_are_rejected,
    test_invalid_ttl_is_a_config_error,
    test_json_refuses_nan_and_infinities,
    test_overwrite_replaces_value,
    test_pop_returns_and_removes,
    test_put_get_exists_delete,
    test_range_orders_by_code_point_including_non_ascii,
    test_range_with_end_is_start_inclusive_end_exclusive,
    test_range_without_end_is_a_prefix_query,
    test_unencodable_value_raises_and_writes_nothing,
    test_update_is_a_read_modify_write_without_lost_updates,
    test_utf8_bytes_keys_are_the_same_key_as_str,
)
from tests.acceptance.test_store_ops import (  # noqa: F401 - collected here again, over the sync API
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
from tests.conftest import BackendFactory, FakeClock


class AsyncOverSync:
    """Looks like a KeyValueStore to the async tests; every call goes through the SyncStore."""

    def __init__(self, sync: SyncStore) -> None:
        self.sync = sync

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.sync, name)
        if name.startswith("iter_"):  # a blocking iterator, pulled from a worker thread item by item
            return lambda *args, **kwargs: self._iterate(method(*args, **kwargs))

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call

    @staticmethod
    async def _iterate(items: Iterator[Any]) -> AsyncIterator[Any]:
        done = object()
        while (item := await asyncio.to_thread(next, items, done)) is not done:
            yield item


@pytest.fixture
def store(backend_factory: BackendFactory, tmp_path: Path, clock: FakeClock) -> Iterator[AsyncOverSync]:
    sync = SyncStore.wrap(lambda: KeyValueStore(backend_factory(tmp_path, clock)))
    yield AsyncOverSync(sync)
    sync.close()


def test_every_async_store_method_has_a_blocking_twin() -> None:
    async_methods = {
        name
        for name, member in inspect.getmembers(KeyValueStore)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    for name in async_methods:
        assert not inspect.iscoroutinefunction(getattr(SyncStore, name)), name
    assert callable(SyncStore.get_stats)


def test_sqlite_round_trip_and_same_errors(tmp_path: Path) -> None:
    with create_store(f"sqlite:///{tmp_path / 'state.db'}", key_prefix="job:") as store:
        store.put("user:1", {"name": "Ada"}, ttl=3600)
        assert store.get("user:1") == {"name": "Ada"}
        assert store.keys() == ["user:1"]
        assert store.get_stats()["total_keys"] == 1
        assert store.incr("n", 5) == 5
        with pytest.raises(InvalidKey):
            store.put("", 1)
        with pytest.raises(SerializationFailed):
            store.put("bad", object())
        with pytest.raises(ConfigError):
            store.put("k", 1, ttl=-1)
    with pytest.raises(NotInitialized):
        store.get("user:1")
    store.close()  # twice: harmless
    with pytest.raises(ConfigError):
        create_store("nope")
    with create_store(f"sqlite:///{tmp_path / 'state.db'}", key_prefix="job:") as again:
        assert again.get("user:1") == {"name": "Ada"}


def test_ttls_expire_on_the_backend_clock() -> None:
    clock = FakeClock()
    store = SyncStore.wrap(lambda: KeyValueStore(MemoryStateBackend(clock=clock)))
    store.put("k", 1, ttl=10)
    clock.advance(11)
    assert store.get("k") is None
    store.close()


def test_many_threads_share_one_store(tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path / 'state.db'}")
    threads = 16

    def work(worker: int) -> None:
        for i in range(50):
            store.put(f"w{worker:02d}:{i:02d}", [worker, i])
            assert store.get(f"w{worker:02d}:{i:02d}") == [worker, i]
            store.incr("total")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    assert store.get_counter("total") == threads * 50
    assert len(store.keys("w")) == threads * 50
    assert {thread.name for thread in threading.enumerate()} >= {"statekit-sync-loop"}
    assert sum(t.name == "statekit-sync-loop" for t in threading.enumerate()) == 1
    store.close()


def test_works_where_an_event_loop_is_already_running(tmp_path: Path) -> None:
    async def notebook_cell() -> Any:
        with create_store("memory") as store:  # blocking calls from inside a running loop (Jupyter)
            store.put("k", {"v": 1})
            return store.get("k")

    assert asyncio.run(notebook_cell()) == {"v": 1}


def test_calling_the_store_from_its_own_loop_is_an_error() -> None:
    store = create_store("memory")
    store.put("k", 1)
    with pytest.raises(RuntimeError, match="wait for itself"):
        store.update("k", lambda current: store.get("k"))
    assert store.get("k") == 1
    store.close()


def test_new_async_methods_are_reachable_by_name() -> None:
    class Extended(KeyValueStore):
        async def double(self, key: str) -> int:
            value: int = await self.get(key)
            return 2 * value

    store = SyncStore.wrap(lambda: Extended(MemoryStateBackend()))
    store.put("k", 21)
    assert store.double("k") == 42
    with pytest.raises(AttributeError):
        store.no_such_method  # noqa: B018
    store.close()


def test_open_stores_are_closed_at_exit(tmp_path: Path) -> None:
    script = f"""
import threading
from statekit.sync import create_store
store = create_store("sqlite:///{tmp_path / "exit.db"}")
store.put("k", "written")
worker = threading.Thread(target=lambda: store.put("t", "from a thread"))
worker.start()
worker.join()
print("done")
"""  # exits without closing: atexit closes the store and stops the loop
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert proc.stderr == ""
    with create_store(f"sqlite:///{tmp_path / 'exit.db'}") as store:
        assert store.get_many(["k", "t"]) == ["written", "from a thread"]


def test_sync_iterators_page_and_stop_early() -> None:
    with create_store() as store:
        store.put_many({f"k{i:04d}": i for i in range(2500)})
        keys = store.iter_keys(page_size=100)
        assert [next(keys) for _ in range(3)] == ["k0000", "k0001", "k0002"]
        keys.close()  # an abandoned iterator closes its async generator on the loop
        assert list(store.iter_keys("k24", page_size=7)) == [f"k24{i:02d}" for i in range(100)]
        assert list(store.iter_range("k0010", "k0013")) == [("k0010", 10), ("k0011", 11), ("k0012", 12)]
        assert sum(1 for _ in store.iter_keys(limit=1234)) == 1234
        assert store.clear() == 2500
        assert list(store.iter_keys()) == []
