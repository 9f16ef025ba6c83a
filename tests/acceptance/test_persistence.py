"""PersistenceManager, RetryManager and StateTracker on every backend, with concurrency checks.

The ``store`` tests run on memory, SQLite and Redis (tests/conftest.py); the multi-process tests
share one SQLite file or one Redis server.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import KeyValueStore, create_store
from statekit._factory import configure_global_store, reset_global_store
from statekit.backends import MemoryStateBackend
from statekit.errors import ConfigError, CorruptData, InvalidKey, SerializationFailed
from statekit.persistence import (
    DEFAULT_ERROR_TTL,
    DEFAULT_PROCESSED_TTL,
    DEFAULT_STATE_TTL,
    DEFAULT_STATS_TTL,
    PersistenceManager,
    RetryManager,
    StateTracker,
    create_persistence_manager,
    create_retry_manager,
    create_state_tracker,
)
from tests.conftest import PAST_SHORT_TTL, SHORT_TTL, FakeClock

Elapse = Callable[[float], Awaitable[None]]

NS = 1_000_000_000


class SpyBackend:
    """Forwards to a real backend and counts the calls per method."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()
        self.backend_type = inner.backend_type
        self.persistent = inner.persistent

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return target(*args, **kwargs)

        return call


class YieldingBackend(SpyBackend):
    """Yields to the event loop a random number of times before each call, to shuffle tasks."""

    def __init__(self, inner: Any, rng: random.Random) -> None:
        super().__init__(inner)
        self._rng = rng

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not asyncio.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            for _ in range(self._rng.randrange(4)):
                await asyncio.sleep(0)
            return await target(*args, **kwargs)

        return call


@pytest.fixture
async def global_memory_store() -> AsyncIterator[KeyValueStore]:
    store = configure_global_store("memory")
    yield store
    await store.close()
    reset_global_store()


# -- PersistenceManager --------------------------------------------------------------------


async def test_processed_items_round_trip_one_key_each(store: KeyValueStore, clock: FakeClock) -> None:
    pm = PersistenceManager(store, "fr_siren_provider", clock=clock)
    assert await pm.load_processed_items() == set()
    assert await pm.save_processed_items({"url1", "url2", "url3"}) == 3
    assert await pm.load_processed_items() == {"url1", "url2", "url3"}
    assert await store.keys("fr_siren_provider:") == [
        "fr_siren_provider:processed_items:url1",
        "fr_siren_provider:processed_items:url2",
        "fr_siren_provider:processed_items:url3",
    ]
    assert await pm.is_processed("url2")
    assert not await pm.is_processed("url9")
    await pm.mark_processed("https://api.insee.fr/a:b?c=1")
    assert await pm.is_processed("https://api.insee.fr/a:b?c=1")
    assert await pm.clear_processed_items() == 4
    assert await pm.load_processed_items() == set()


async def test_is_processed_and_mark_processed_cost_one_key_operation() -> None:
    spy = SpyBackend(MemoryStateBackend())
    store = KeyValueStore(spy)
    pm = PersistenceManager(store, "p")
    await pm.save_processed_items(f"item{i}" for i in range(10_000))
    assert spy.calls == Counter(batch_put=1)
    spy.calls.clear()
    assert await pm.is_processed("item1234")
    assert sum(spy.calls.values()) == 1
    spy.calls.clear()
    await pm.mark_processed("new")
    assert sum(spy.calls.values()) == 1
    spy.calls.clear()
    assert len(await pm.load_processed_items()) == 10_001
    assert sum(spy.calls.values()) == 1
    await store.close()


async def test_processed_type_gives_the_seed_key_names(store: KeyValueStore) -> None:
    pm = PersistenceManager(store, "fr_siren_provider", processed_type="processed_urls")
    await pm.mark_processed("https://api.insee.fr/entreprises/sirene/V3")
    assert await store.keys() == [
        "fr_siren_provider:processed_urls:https://api.insee.fr/entreprises/sirene/V3"
    ]


async def test_prefixes_are_isolated(store: KeyValueStore) -> None:
    a, b = PersistenceManager(store, "a"), PersistenceManager(store, "ab")
    await a.save_processed_items({"x"})
    await b.save_processed_items({"y"})
    await a.save_error("e1", "boom")
    await b.save_error("e2", "boom")
    assert await a.load_processed_items() == {"x"}
    assert await b.load_processed_items() == {"y"}
    assert await a.clear_errors() == 1
    assert [r["item_id"] for r in await b.get_failed_items()] == ["e2"]


async def test_state_round_trip_with_last_updated(store: KeyValueStore, clock: FakeClock) -> None:
    pm = PersistenceManager(store, "us_fl_daily_provider", clock=clock)
    assert await pm.load_state() == {}
    await pm.save_state({"current_date": "2024-01-15", "processed_count": 150})
    assert await pm.load_state() == {
        "current_date": "2024-01-15",
        "processed_count": 150,
        "last_updated": "2023-11-14T22:13:20Z",
    }
    clock.advance(60)
    state = await pm.load_state()
    state["processed_count"] += 1
    await pm.save_state(state)
    assert (await pm.load_state())["last_updated"] == "2023-11-14T22:14:20Z"
    await pm.save_state({"cursor": "abc"}, state_id="/doc/cor")
    assert await store.exists("us_fl_daily_provider:state:/doc/cor")
    assert (await pm.load_state("/doc/cor"))["cursor"] == "abc"


async def test_state_that_cannot_be_encoded_is_not_written(store: KeyValueStore) -> None:
    pm = PersistenceManager(store, "p")
    await pm.save_state({"ok": 1})
    with pytest.raises(SerializationFailed):
        await pm.save_state({"bad": object()})
    assert (await pm.load_state())["ok"] == 1


async def test_foreign_value_under_state_key_is_corrupt_data(store: KeyValueStore) -> None:
    await store.put("p:state:current", [1, 2])
    with pytest.raises(CorruptData, match="not a saved state dict"):
        await PersistenceManager(store, "p").load_state()


async def test_errors_filtered_by_retry_count_and_cleared(store: KeyValueStore, clock: FakeClock) -> None:
    pm = PersistenceManager(store, "api_provider", clock=clock)
    await pm.save_error("https://api.example.com/data/1", "Connection timeout", 2)
    await pm.save_error("url2", ValueError("bad payload"))
    await pm.save_error("url3", TimeoutError(), 3)
    assert await store.exists("api_provider:errors:https://api.example.com/data/1")
    failed = await pm.get_failed_items(max_retries=3)
    assert failed == [
        {
            "item_id": "https://api.example.com/data/1",
            "error": "Connection timeout",
            "retry_count": 2,
            "timestamp": "2023-11-14T22:13:20Z",
        },
        {
            "item_id": "url2",
            "error": "ValueError: bad payload",
            "retry_count": 0,
            "timestamp": "2023-11-14T22:13:20Z",
        },
    ]
    assert [r["item_id"] for r in await pm.get_failed_items(max_retries=4)][-1] == "url3"
    assert await pm.clear_errors("url2") == 1
    assert await pm.clear_errors("url2") == 0
    assert await pm.clear_errors() == 2
    assert await pm.get_failed_items(max_retries=10) == []


async def test_foreign_values_under_error_keys_are_skipped_with_a_warning(
    store: KeyValueStore, caplog: pytest.LogCaptureFixture
) -> None:
    pm = PersistenceManager(store, "p")
    await pm.save_error("good", "boom", 1)
    await store.put("p:errors:weird", "not a record")
    await store.put("p:errors:weirder", {"retry_count": "2"})
    with caplog.at_level(logging.WARNING, logger="statekit"):
        assert [r["item_id"] for r in await pm.get_failed_items()] == ["good"]
    assert "p:errors:weird" in caplog.text


@pytest.mark.fake_clock(
    "see test_short_ttls_per_kind_of_data, test_default_ttls_per_kind_of_data_as_the_backend_holds_them"
)
async def test_ttls_per_kind_of_data(store: KeyValueStore, clock: FakeClock) -> None:
    pm = PersistenceManager(store, "p", clock=clock)
    assert (pm.error_ttl, pm.state_ttl, pm.processed_ttl) == (
        timedelta(hours=24),
        timedelta(days=7),
        timedelta(days=7),
    )
    await pm.save_error("e", "boom")
    await pm.save_state({"a": 1})
    await pm.mark_processed("x")
    clock.advance(DEFAULT_ERROR_TTL.total_seconds() + 1)
    assert await pm.get_failed_items() == []
    assert await pm.is_processed("x")
    assert await pm.load_state() != {}
    clock.advance(DEFAULT_STATE_TTL.total_seconds())
    assert not await pm.is_processed("x")
    assert await pm.load_state() == {}
    assert DEFAULT_PROCESSED_TTL == DEFAULT_STATE_TTL


async def _ttls(store: KeyValueStore) -> dict[str, float | None]:
    return {key: await store.ttl(key) for key in await store.keys()}


def _close_to(left: float | None, ttl: timedelta) -> bool:
    """``left`` is ``ttl`` less the moments the test took (a minute is far more than needed)."""
    return left is not None and ttl.total_seconds() - 60 < left <= ttl.total_seconds()


async def test_default_ttls_per_kind_of_data_as_the_backend_holds_them(store: KeyValueStore) -> None:
    # test_ttls_per_kind_of_data waits days on the FakeClock, so it cannot run on Redis; this checks the
    # same defaults on every kind as remaining TTLs (PTTL on Redis), without waiting.
    pm = PersistenceManager(store, "p")
    await pm.save_error("e", "boom")
    await pm.save_state({"a": 1})
    await pm.mark_processed("x")
    ttls = await _ttls(store)
    assert sorted(ttls) == ["p:errors:e", "p:processed_items:x", "p:state:current"]
    assert _close_to(ttls["p:errors:e"], DEFAULT_ERROR_TTL)
    assert _close_to(ttls["p:state:current"], DEFAULT_STATE_TTL)
    assert _close_to(ttls["p:processed_items:x"], DEFAULT_PROCESSED_TTL)


async def test_short_ttls_per_kind_of_data(store: KeyValueStore, elapse: Elapse) -> None:
    longer = SHORT_TTL + PAST_SHORT_TTL
    pm = PersistenceManager(store, "p", error_ttl=SHORT_TTL, state_ttl=longer, processed_ttl=longer)
    await pm.save_error("e", "boom")
    await pm.save_state({"a": 1})
    await pm.save_processed_items({"x", "y"})
    await elapse(PAST_SHORT_TTL)
    assert await pm.get_failed_items() == []
    assert await pm.load_processed_items() == {"x", "y"}
    assert await pm.load_state() != {}
    await elapse(PAST_SHORT_TTL)
    assert await pm.load_processed_items() == set()
    assert await pm.load_state() == {}
    assert await store.keys() == []


async def test_invalid_arguments(store: KeyValueStore) -> None:
    with pytest.raises(InvalidKey, match="prefix"):
        PersistenceManager(store, "")
    with pytest.raises(ConfigError, match="error_ttl"):
        PersistenceManager(store, "p", error_ttl=-1)
    pm = PersistenceManager(store, "p")
    with pytest.raises(InvalidKey, match="item"):
        await pm.mark_processed("")
    with pytest.raises(InvalidKey):
        await pm.save_processed_items([1])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="retry_count"):
        await pm.save_error("x", "boom", -1)


# -- RetryManager --------------------------------------------------------------------------


async def test_retry_counts_and_backoff(store: KeyValueStore) -> None:
    rm = RetryManager(store, max_retries=3, backoff_factor=2.0, base_delay=0.5, max_delay=3.0, jitter=False)
    assert await rm.should_retry("u")
    assert await rm.get_retry_count("u") == 0
    assert await rm.get_retry_delay("u") == 0.5
    delays = []
    for expected in (1, 2, 3):
        assert await rm.record_retry("u", f"error {expected}") == expected
        delays.append(await rm.get_retry_delay("u"))
    assert delays == [0.5, 1.0, 2.0]
    assert not await rm.should_retry("u")
    assert await rm.record_retry("u", "again") == 4
    assert await rm.get_retry_delay("u") == 3.0  # capped
    assert rm.compute_delay(10_000) == 3.0  # no overflow
    assert await store.incr("retry:u", 0) == 4  # the seed's key, an atomic counter
    last = await rm.get_last_error("u")
    assert last is not None
    assert last["error"] == "again"
    assert last["retry_count"] == 4
    assert await rm.clear_retry_data("u") is True
    assert await rm.clear_retry_data("u") is False
    assert await rm.should_retry("u")
    assert await rm.get_last_error("u") is None
    assert await store.keys() == []


async def test_retry_jitter_stays_within_half_to_full_delay(store: KeyValueStore) -> None:
    rm = RetryManager(store, base_delay=2.0, backoff_factor=3.0, max_delay=100.0, rng=random.Random(1))
    delays = [rm.compute_delay(3) for _ in range(500)]
    assert all(9.0 <= d < 18.0 for d in delays)
    assert len(set(delays)) > 400


async def test_retry_prefix_and_ttl(store: KeyValueStore, elapse: Elapse) -> None:
    rm = RetryManager(store, prefix="api_provider", ttl=SHORT_TTL)
    await rm.record_retry("u", "e")
    assert sorted(await store.keys()) == ["api_provider:retry:u", "api_provider:retry_errors:u"]
    # The TTL counts from the first retry (on the backend's TTL clock).
    await elapse(PAST_SHORT_TTL)
    assert await rm.get_retry_count("u") == 0
    assert await rm.get_last_error("u") is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"backoff_factor": 0.5},
        {"base_delay": -1},
        {"base_delay": 5, "max_delay": 1},
        {"ttl": 0},
    ],
)
async def test_retry_manager_rejects_bad_settings(store: KeyValueStore, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RetryManager(store, **kwargs)


async def test_concurrent_retries_are_all_counted(store: KeyValueStore) -> None:
    rm = RetryManager(store, max_retries=1000)
    counts = await asyncio.gather(*(rm.record_retry("hot", f"e{i}") for i in range(50)))
    assert sorted(counts) == list(range(1, 51))
    assert await rm.get_retry_count("hot") == 50


# -- StateTracker --------------------------------------------------------------------------


async def test_counters(store: KeyValueStore) -> None:
    tracker = StateTracker(store)
    assert await tracker.get_counter("api_calls") == 0
    assert await store.keys() == []  # reading a missing counter creates nothing
    assert await tracker.increment_counter("api_calls", 5) == 5
    assert await tracker.increment_counter("api_calls") == 6
    assert await tracker.increment_counter("api_calls", -2) == 4
    await tracker.increment_counter("successful_fetches", 3)
    assert await tracker.get_counter("api_calls") == 4
    assert await store.keys() == [
        "state_tracker:counter:api_calls",
        "state_tracker:counter:successful_fetches",
    ]
    assert await tracker.get_counters() == {"api_calls": 4, "successful_fetches": 3}
    assert await tracker.reset_counter("api_calls")
    assert await tracker.get_counter("api_calls") == 0


async def test_processing_stats(store: KeyValueStore, clock: FakeClock) -> None:
    tracker = StateTracker(store, "t", clock=clock)
    empty = await tracker.get_processing_stats("api_request")
    assert empty == {
        "count": 0,
        "total_time": 0.0,
        "min_time": 0.0,
        "max_time": 0.0,
        "avg_time": 0.0,
        "last_updated": None,
    }
    for seconds in (1.5, 0.1, 5.2, 2, 0.1):
        await tracker.record_processing_time("api_request", seconds)
    stats = await tracker.get_processing_stats("api_request")
    assert stats == {
        "count": 5,
        "total_time": pytest.approx(8.9),
        "min_time": 0.1,
        "max_time": 5.2,
        "avg_time": pytest.approx(1.78),
        "last_updated": "2023-11-14T22:13:20Z",
    }
    # Operations whose names extend one another stay apart.
    await tracker.record_processing_time("api_request:slow", 100)
    await tracker.record_processing_time("api_request:00000000000000000009", 0.001)
    again = await tracker.get_processing_stats("api_request")
    assert (again["count"], again["min_time"], again["max_time"]) == (5, 0.1, 5.2)
    assert (await tracker.get_processing_stats("api_request:slow"))["max_time"] == 100


async def test_extremes_live_in_one_key_each(store: KeyValueStore) -> None:
    tracker = StateTracker(store, "t")
    for seconds in range(1, 30):  # every time is a new maximum
        await tracker.record_processing_time("op", seconds)
    assert await store.keys("t:timing_max:op") == ["t:timing_max:op"]
    assert await store.keys("t:timing_min:op") == ["t:timing_min:op"]
    assert (await tracker.get_processing_stats("op"))["max_time"] == 29


async def test_timed_context_records_even_on_error(store: KeyValueStore) -> None:
    tracker = StateTracker(store)
    async with tracker.timed("op"):
        await asyncio.sleep(0)
    with pytest.raises(KeyError):
        async with tracker.timed("op"):
            raise KeyError("x")
    assert (await tracker.get_processing_stats("op"))["count"] == 2


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1", True])
async def test_bad_durations_are_rejected(store: KeyValueStore, bad: Any) -> None:
    with pytest.raises(ConfigError):
        await StateTracker(store).record_processing_time("op", bad)
    assert await store.keys() == []


@pytest.mark.fake_clock("see test_short_stats_ttl, test_default_stats_ttl_as_the_backend_holds_it")
async def test_stats_ttl(store: KeyValueStore, clock: FakeClock) -> None:
    tracker = StateTracker(store, clock=clock)
    assert tracker.ttl == DEFAULT_STATS_TTL == timedelta(days=30)
    await tracker.increment_counter("c")
    await tracker.record_processing_time("op", 1)
    clock.advance(DEFAULT_STATS_TTL.total_seconds() + 1)
    assert await tracker.get_counter("c") == 0
    assert (await tracker.get_processing_stats("op"))["count"] == 0


async def test_default_stats_ttl_as_the_backend_holds_it(store: KeyValueStore) -> None:
    # test_stats_ttl's 30 days on the FakeClock, checked on every kind as remaining TTLs.
    tracker = StateTracker(store)
    await tracker.increment_counter("c")
    await tracker.record_processing_time("op", 1)
    ttls = await _ttls(store)
    assert "state_tracker:counter:c" in ttls
    assert len(ttls) > 1  # the timing statistics too
    assert all(_close_to(left, DEFAULT_STATS_TTL) for left in ttls.values()), ttls


async def test_short_stats_ttl(store: KeyValueStore, elapse: Elapse) -> None:
    tracker = StateTracker(store, ttl=SHORT_TTL)
    await tracker.increment_counter("c")
    await tracker.record_processing_time("op", 1)
    assert (await tracker.get_processing_stats("op"))["count"] == 1
    await elapse(PAST_SHORT_TTL)
    assert await tracker.get_counter("c") == 0
    assert (await tracker.get_processing_stats("op"))["count"] == 0


def _times(worker: int, n: int) -> list[int]:
    """Distinct durations in nanoseconds; worker 0 holds the global min, the last worker the max."""
    rng = random.Random(worker)
    return [rng.randrange(10_000, 10**10) * 4 + worker for _ in range(n)]


async def test_50_concurrent_tasks_lose_nothing(store: KeyValueStore) -> None:
    tracker = StateTracker(store)
    durations = [ns for w in range(50) for ns in _times(w, 4)]

    async def task(worker: int) -> None:
        for ns in _times(worker, 4):
            await tracker.increment_counter("events")
            await tracker.record_processing_time("op", ns / NS)

    await asyncio.gather(*(task(w) for w in range(50)))
    assert await tracker.get_counter("events") == 200
    stats = await tracker.get_processing_stats("op")
    assert stats["count"] == 200
    assert round(stats["total_time"] * NS) == sum(durations)
    assert stats["min_time"] == min(durations) / NS
    assert stats["max_time"] == max(durations) / NS


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    batches=st.lists(st.lists(st.integers(0, 10**6), min_size=1, max_size=8), min_size=2, max_size=12),
)
async def test_extremes_exact_under_random_interleavings(seed: int, batches: list[list[int]]) -> None:
    backend = YieldingBackend(MemoryStateBackend(), random.Random(seed))
    store = KeyValueStore(backend)
    tracker = StateTracker(store, "t")

    async def writer(values: list[int]) -> None:
        for ns in values:
            await tracker.record_processing_time("op", ns / NS)

    await asyncio.gather(*(writer(b) for b in batches))
    flat = [ns for b in batches for ns in b]
    stats = await tracker.get_processing_stats("op")
    assert stats["count"] == len(flat)
    assert round(stats["total_time"] * NS) == sum(flat)
    assert round(stats["min_time"] * NS) == min(flat)
    assert round(stats["max_time"] * NS) == max(flat)
    await store.close()


def _duration_ns(worker: int, workers: int, round_: int) -> int:
    """Worker ``worker``'s time in round ``round_``: distinct per worker; which worker holds the
    round's extremes rotates."""
    return ((round_ * 3 + worker) % workers + 1) * 1_000_000 + round_


def _tracker_worker(
    spec: str, options: dict[str, Any], worker: int, workers: int, rounds: int, barrier: Any
) -> None:
    async def run() -> None:
        store = create_store(spec, **options)
        tracker = await create_state_tracker("shared", store)
        retries = await create_retry_manager(max_retries=10**6, store=store)
        for round_ in range(rounds):
            # Every worker records into the round's operation at the same moment, so the
            # writers of its minimum and maximum collide.
            await asyncio.to_thread(barrier.wait, 120)
            await tracker.record_processing_time(f"op{round_}", _duration_ns(worker, workers, round_) / NS)
            await tracker.increment_counter("events")
            await retries.record_retry("hot", "e")
        await store.close()

    asyncio.run(run())


async def _four_processes_lose_nothing(spec: str, options: dict[str, Any]) -> None:
    """4 spawned processes hammer one shared store (``create_store(spec, **options)``); exact totals."""
    workers, rounds = 4, 30
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [
        ctx.Process(target=_tracker_worker, args=(spec, options, w, workers, rounds, barrier))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        await asyncio.to_thread(p.join, 120)
        assert p.exitcode == 0
    store = create_store(spec, **options)
    tracker = StateTracker(store, "shared")
    assert await tracker.get_counter("events") == workers * rounds
    assert await RetryManager(store).get_retry_count("hot") == workers * rounds
    for round_ in range(rounds):
        durations = [_duration_ns(w, workers, round_) for w in range(workers)]
        stats = await tracker.get_processing_stats(f"op{round_}")
        assert stats["count"] == workers
        assert round(stats["total_time"] * NS) == sum(durations)
        assert (stats["min_time"], stats["max_time"]) == (min(durations) / NS, max(durations) / NS), round_
    await store.close()


async def test_four_processes_sharing_one_sqlite_file_lose_nothing(tmp_path: Path) -> None:
    await _four_processes_lose_nothing("sqlite", {"path": str(tmp_path / "shared.db")})


async def test_four_processes_sharing_one_redis_lose_nothing(redis_url: str) -> None:
    await _four_processes_lose_nothing(f"{redis_url}/0", {})  # redis://127.0.0.1:PORT/0, emptied


# -- factories -----------------------------------------------------------------------------


async def test_factories_use_the_global_store(global_memory_store: KeyValueStore) -> None:
    pm = await create_persistence_manager("my_provider")
    rm = await create_retry_manager(max_retries=3, backoff_factor=2.0)
    tracker = await create_state_tracker("my_tracker")
    assert pm.store is global_memory_store
    await pm.mark_processed("a")
    await rm.record_retry("b", "e")
    await tracker.increment_counter("c")
    assert await global_memory_store.keys() == [
        "my_provider:processed_items:a",
        "my_tracker:counter:c",
        "retry:b",
        "retry_errors:b",
    ]


async def test_factories_accept_an_explicit_store(store: KeyValueStore) -> None:
    pm = await create_persistence_manager("p", store, error_ttl=10)
    assert pm.store is store
    assert pm.error_ttl == 10
    assert (await create_state_tracker(store=store)).name == "state_tracker"
    rm = await create_retry_manager(5, 3.0, 0.1, 1.0, False, store)
    assert (rm.max_retries, rm.backoff_factor, rm.jitter) == (5, 3.0, False)
