"""Every example of seeds 000 (persistence features) and 002 (run state and file lock), with statekit paths.

Substitutions, applied consistently:

* ``data_fetcher.utils.persistence_utils`` -> ``statekit.persistence``;
  ``data_fetcher.kv_store`` -> ``statekit``; ``OC_KV_STORE_*`` -> ``STATEKIT_STORE_*``;
* ``run_record_archiver.persistence.state`` -> ``statekit.runs`` (imported as ``state``);
  ``run_record_archiver.persistence.lock`` -> ``statekit.locks``;
  ``run_record_archiver.exceptions`` -> ``statekit.errors``;
* absolute paths such as ``/var/archiver/...`` live under pytest's ``tmp_path``;
* top-level ``await`` is wrapped in ``async def``; names a snippet leaves undefined (``duration``,
  ``retry_item``, ``load_config``, ``Orchestrator``, ...) get small stand-ins.

Documented output (in comments) is asserted.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import unittest
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest

from statekit import KeyValueStore
from statekit._factory import configure_global_store, reset_global_store


@pytest.fixture
async def global_store() -> AsyncIterator[KeyValueStore]:
    """The seed's snippets use the global store; give each test a fresh in-memory one."""
    store = configure_global_store("memory")
    yield store
    await store.close()
    reset_global_store()


# ===========================================================================================
# Seed 000: persistence features
# ===========================================================================================


async def test_000_persistence_manager(global_store: KeyValueStore) -> None:
    from statekit.persistence import create_persistence_manager

    # Create a persistence manager
    persistence = await create_persistence_manager("my_provider")

    # Save processed items
    await persistence.save_processed_items({"url1", "url2", "url3"})

    # Load processed items
    processed = await persistence.load_processed_items()

    # Save state
    await persistence.save_state({"current_date": "2024-01-15", "processed_count": 150})

    # Handle errors
    await persistence.save_error("failed_url", "Connection timeout", 2)
    failed_items = await persistence.get_failed_items(max_retries=3)

    assert processed == {"url1", "url2", "url3"}
    state = await persistence.load_state()
    assert state["current_date"] == "2024-01-15"
    assert state["processed_count"] == 150
    assert [(i["item_id"], i["error"], i["retry_count"]) for i in failed_items] == [
        ("failed_url", "Connection timeout", 2)
    ]


async def test_000_retry_manager(global_store: KeyValueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit.persistence import create_retry_manager

    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)

    # Create a retry manager
    retry_manager = await create_retry_manager(max_retries=3, backoff_factor=2.0)

    # Check if item should be retried
    if await retry_manager.should_retry("failed_item"):
        # Record retry attempt
        retry_count = await retry_manager.record_retry("failed_item", "Error message")

        # Get delay before next retry
        delay = await retry_manager.get_retry_delay("failed_item")
        await asyncio.sleep(delay)

        # Clear retry data on success
        await retry_manager.clear_retry_data("failed_item")

    assert retry_count == 1
    assert slept == [delay]
    assert 0.5 <= delay <= 1.0
    assert await retry_manager.get_retry_count("failed_item") == 0


async def test_000_state_tracker(global_store: KeyValueStore) -> None:
    from statekit.persistence import create_state_tracker

    # Create a state tracker
    tracker = await create_state_tracker("my_tracker")

    # Track counters
    await tracker.increment_counter("api_calls", 5)
    await tracker.increment_counter("successful_fetches", 3)

    # Record processing times
    await tracker.record_processing_time("api_request", 1.5)

    # Get statistics
    stats = await tracker.get_processing_stats("api_request")
    count = await tracker.get_counter("api_calls")

    assert count == 5
    assert await tracker.get_counter("successful_fetches") == 3
    assert stats["count"] == 1
    assert stats["total_time"] == stats["min_time"] == stats["max_time"] == stats["avg_time"] == 1.5


async def test_000_configuration_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # export STATEKIT_STORE_TYPE=...  (the seed's Redis lines are covered once the Redis backend exists)
    monkeypatch.setenv("STATEKIT_STORE_TYPE", "sqlite")
    monkeypatch.setenv("STATEKIT_STORE_PATH", str(tmp_path / "state.db"))
    # Key prefix for namespacing
    monkeypatch.setenv("STATEKIT_STORE_KEY_PREFIX", "data_fetcher:")
    # Serialization format
    monkeypatch.setenv("STATEKIT_STORE_SERIALIZER", "json")
    # Default TTL
    monkeypatch.setenv("STATEKIT_STORE_DEFAULT_TTL", "3600")
    reset_global_store()
    from statekit.persistence import create_persistence_manager

    try:
        persistence = await create_persistence_manager("my_provider")
        await persistence.mark_processed("url1")
        store = persistence.store
        assert store.key_prefix == "data_fetcher:"
        assert store.default_ttl == 3600
        assert await store.backend.list_keys() == ["data_fetcher:my_provider:processed_items:url1"]
        await store.close()
    finally:
        reset_global_store()


def test_000_programmatic_configuration_for_redis() -> None:
    # Connections are opened lazily, so configuring a store for an unreachable host works.
    # Configure for production
    store = configure_global_store(
        store_type="redis",
        host="redis.example.com",
        port=6379,
        password="your_password",
        key_prefix="data_fetcher:",
        serializer="json",
        default_ttl=3600,
    )
    assert store.key_prefix == "data_fetcher:"
    reset_global_store()


async def test_000_basic_persistence_in_bundle_locators(tmp_path: Path) -> None:
    """``run_fetcher`` is the seed's application, not part of statekit; this is what it says a
    bundle locator does with persistence: save processed URLs, track pagination state, handle
    errors with retry, and resume from the last known state on restart."""
    from statekit import create_store
    from statekit.persistence import create_persistence_manager, create_retry_manager

    pages = {f"https://api.example.com/data?page={i}": i for i in range(1, 11)}
    flaky = {"https://api.example.com/data?page=4"}

    async def run_fetcher(stop_after: int | None) -> list[str]:
        store = create_store("sqlite", path=str(tmp_path / "fetcher.db"))
        persistence = await create_persistence_manager("fr-api", store)
        retry_manager = await create_retry_manager(max_retries=3, jitter=False, store=store)
        state = await persistence.load_state()
        fetched: list[str] = []
        for url, page in pages.items():
            if page <= state.get("last_page", 0) and await persistence.is_processed(url):
                continue
            if url in flaky and await retry_manager.should_retry(url):
                await retry_manager.record_retry(url, "HTTP 503")
                await persistence.save_error(url, "HTTP 503", await retry_manager.get_retry_count(url))
                continue
            fetched.append(url)
            await persistence.mark_processed(url)
            await persistence.save_state({"last_page": page})
            if stop_after is not None and len(fetched) == stop_after:
                break
        await store.close()
        return fetched

    first = await run_fetcher(stop_after=5)  # "crashes" after five pages
    second = await run_fetcher(stop_after=None)  # resumes
    assert len(first) == 5
    assert "https://api.example.com/data?page=4" not in first
    assert set(first).isdisjoint(second)
    assert sorted(set(first) | set(second)) == sorted(set(pages) - flaky)


@dataclass
class _Request:
    url: str


async def test_000_custom_error_handling(
    global_store: KeyValueStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from statekit.persistence import create_persistence_manager, create_retry_manager

    async def handle_failed_request(request: Any, error: Exception) -> bool:
        persistence = await create_persistence_manager("my_provider")
        retry_manager = await create_retry_manager(max_retries=3)

        # Save error
        await persistence.save_error(request.url, str(error))

        # Check if we should retry
        if await retry_manager.should_retry(request.url):
            retry_count = await retry_manager.record_retry(request.url, str(error))
            delay = await retry_manager.get_retry_delay(request.url)

            print(f"Retrying {request.url} in {delay:.2f} seconds (attempt {retry_count})")
            return True

        return False

    request = _Request("https://api.example.com/data/1")
    outcomes = [await handle_failed_request(request, TimeoutError("timed out")) for _ in range(4)]
    assert outcomes == [True, True, True, False]
    out = capsys.readouterr().out
    assert "(attempt 1)" in out
    assert "(attempt 3)" in out
    assert "(attempt 4)" not in out


async def test_000_monitoring_and_statistics(
    global_store: KeyValueStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from statekit.persistence import create_state_tracker

    duration = 0.25

    async def monitor_processing() -> None:
        tracker = await create_state_tracker("monitoring")

        # Track various metrics
        await tracker.increment_counter("total_requests")
        await tracker.record_processing_time("api_request", duration)

        # Get statistics
        stats = await tracker.get_processing_stats("api_request")
        total_requests = await tracker.get_counter("total_requests")

        print(f"Total requests: {total_requests}")
        print(f"Average API request time: {stats['avg_time']:.2f}s")

    await monitor_processing()
    await monitor_processing()
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "Total requests: 2",
        "Average API request time: 0.25s",
    ]


async def test_000_recovery_and_cleanup(global_store: KeyValueStore) -> None:
    from statekit.persistence import create_persistence_manager

    seeded = await create_persistence_manager("my_provider")
    for i in range(1, 6):
        await seeded.save_error(f"url{i}", "Connection timeout", i - 1)  # url5 is out of retries

    async def retry_item(item: Any) -> bool:
        return bool(item["item_id"] in {"url1", "url3"})

    async def cleanup_and_recover() -> None:
        persistence = await create_persistence_manager("my_provider")

        # Get failed items
        failed_items = await persistence.get_failed_items(max_retries=3)

        # Retry failed items
        for item in failed_items:
            if await retry_item(item):
                await persistence.clear_errors(item["item_id"])

        assert [i["item_id"] for i in await persistence.get_failed_items(max_retries=10)] == [
            "url2",
            "url4",
            "url5",
        ]
        # Clear old data
        await persistence.clear_errors()  # Clear all errors

    await cleanup_and_recover()
    assert await seeded.get_failed_items(max_retries=10) == []


async def test_000_key_naming_convention(global_store: KeyValueStore) -> None:
    from statekit.persistence import create_persistence_manager, create_retry_manager, create_state_tracker

    fr = await create_persistence_manager("fr_siren_provider", processed_type="processed_urls")
    await fr.mark_processed("https://api.insee.fr/...")
    await (await create_persistence_manager("us_fl_daily_provider")).save_state({"a": 1}, state_id="/doc/cor")
    await (await create_persistence_manager("api_provider")).save_error("https://api.example.com/data/1", "e")
    await (await create_retry_manager()).record_retry("failed_url_1", "e")
    await (await create_state_tracker()).increment_counter("api_calls")
    keys = await global_store.keys()
    for example in (
        "fr_siren_provider:processed_urls:https://api.insee.fr/...",
        "us_fl_daily_provider:state:/doc/cor",
        "api_provider:errors:https://api.example.com/data/1",
        "retry:failed_url_1",
        "state_tracker:counter:api_calls",
    ):
        assert example in keys


async def test_000_data_structures(global_store: KeyValueStore) -> None:
    from statekit.persistence import create_persistence_manager, create_state_tracker

    persistence = await create_persistence_manager("p")
    await persistence.save_state(
        {"current_date": "2024-01-15", "current_cursor": "abc123", "processed_count": 150}
    )
    assert set(await persistence.load_state()) == {
        "current_date",
        "current_cursor",
        "processed_count",
        "last_updated",
    }
    await persistence.save_error("failed_url_1", "Connection timeout", 2)
    (error,) = await persistence.get_failed_items()
    assert set(error) == {"item_id", "error", "retry_count", "timestamp"}
    assert error["timestamp"].endswith("Z")
    tracker = await create_state_tracker()
    for t in (0.1, 5.2, 145.2):
        await tracker.record_processing_time("x", t)
    stats = await tracker.get_processing_stats("x")
    assert {"count", "total_time", "min_time", "max_time", "last_updated"} <= set(stats)
    assert (stats["count"], stats["total_time"], stats["min_time"], stats["max_time"]) == (
        3,
        150.5,
        0.1,
        145.2,
    )


async def test_000_key_prefixing_and_ttl_management(global_store: KeyValueStore) -> None:
    from statekit.persistence import create_persistence_manager, create_retry_manager, create_state_tracker

    # Good
    persistence_prefix = "fr_siren_provider"
    persistence = await create_persistence_manager(persistence_prefix)
    assert persistence.prefix == "fr_siren_provider"

    # Short-lived data (errors, retry info)
    ttl = timedelta(hours=24)
    assert persistence.error_ttl == ttl
    assert (await create_retry_manager()).ttl == ttl
    # Medium-lived data (state, processed items)
    ttl = timedelta(days=7)
    assert persistence.state_ttl == persistence.processed_ttl == ttl
    # Long-lived data (statistics, configuration)
    ttl = timedelta(days=30)
    assert (await create_state_tracker()).ttl == ttl


async def test_000_error_handling(global_store: KeyValueStore, capsys: pytest.CaptureFixture[str]) -> None:
    from statekit.persistence import create_persistence_manager

    persistence = await create_persistence_manager("my_provider")
    await global_store.close()  # the store goes away under the job
    state = {"current_date": "2024-01-15"}
    try:
        await persistence.save_state(state)
    except Exception as e:
        print(f"Failed to save state: {e}")
        # Continue processing without persistence
    assert "Failed to save state: the memory backend is closed" in capsys.readouterr().out


async def test_000_cleanup(global_store: KeyValueStore) -> None:
    from statekit.persistence import create_persistence_manager, create_retry_manager

    persistence = await create_persistence_manager("my_provider")
    retry_manager = await create_retry_manager()
    await persistence.save_error("old_item", "e")
    await retry_manager.record_retry("old_item", "e")

    # Clear old errors
    await persistence.clear_errors()

    # Clear old retry data
    await retry_manager.clear_retry_data("old_item")

    assert await global_store.keys() == []


async def test_000_debugging_and_persistence_monitor(
    global_store: KeyValueStore, caplog: pytest.LogCaptureFixture
) -> None:
    from statekit.persistence import create_persistence_manager, create_state_tracker

    logging.getLogger("statekit").setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG, logger="statekit"):
            await (await create_persistence_manager("my_provider")).save_processed_items({"a", "b"})
        assert "my_provider: saved 2 processed item(s)" in caplog.text
    finally:
        logging.getLogger("statekit").setLevel(logging.NOTSET)

    duration = 0.01
    tracker = await create_state_tracker("persistence_monitor")
    await tracker.increment_counter("persistence_operations")
    await tracker.record_processing_time("state_save", duration)
    assert (await tracker.get_processing_stats("state_save"))["count"] == 1


# ===========================================================================================
# Seed 002: run state (statekit.runs) and FileLock (statekit.locks)
# ===========================================================================================


def test_002_read_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from statekit import runs as state

    state_file = tmp_path / "var" / "run_record_archiver" / "import_state.json"
    state.write_state(state_file, {"last_contiguous_run": 19500, "last_attempted_run": 19550})

    current_state = state.read_state(state_file)
    print(current_state)
    # Output: {'last_contiguous_run': 19500, 'last_attempted_run': 19550}

    assert capsys.readouterr().out == "{'last_contiguous_run': 19500, 'last_attempted_run': 19550}\n"


def test_002_write_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from statekit import runs as state

    state_file = tmp_path / "import_state.json"
    state_data = {
        "last_contiguous_run": 19500,
        "last_attempted_run": 19550,
        "timestamp": "2025-10-24T10:30:00",
    }
    success = state.write_state(state_file, state_data)
    if success:
        print("State saved successfully")

    assert capsys.readouterr().out == "State saved successfully\n"
    assert state.read_state(state_file) == state_data


def test_002_update_contiguous_run_state(tmp_path: Path) -> None:
    from statekit import runs as state

    state_file = tmp_path / "state.json"
    state.write_state(state_file, {"last_contiguous_run": 100})

    # Current state: last_contiguous_run = 100
    state.update_contiguous_run_state(state_file, [101, 102, 103])
    # Result: last_contiguous_run = 103
    assert state.read_state(state_file)["last_contiguous_run"] == 103

    # Current state: last_contiguous_run = 103
    state.update_contiguous_run_state(state_file, [104, 106, 107])
    # Result: last_contiguous_run = 104 (stops at gap before 106)
    assert state.read_state(state_file)["last_contiguous_run"] == 104

    # Current state: last_contiguous_run = 104
    state.update_contiguous_run_state(state_file, [107, 108, 109])
    # Result: last_contiguous_run = 104 (no change, gap at 105-106)
    assert state.read_state(state_file)["last_contiguous_run"] == 104


def test_002_update_attempted_run_state(tmp_path: Path) -> None:
    from statekit import runs as state

    state_file = tmp_path / "state.json"
    state.write_state(state_file, {"last_attempted_run": 100})

    # Current state: last_attempted_run = 100
    state.update_attempted_run_state(state_file, [101, 105, 103])
    # Result: last_attempted_run = 105
    assert state.read_state(state_file)["last_attempted_run"] == 105

    # Current state: last_attempted_run = 105
    state.update_attempted_run_state(state_file, [98, 99, 100])
    # Result: last_attempted_run = 105 (no change, doesn't decrease)
    assert state.read_state(state_file)["last_attempted_run"] == 105

    # Current state: last_attempted_run = 105
    state.update_attempted_run_state(state_file, [])
    # Result: last_attempted_run = 105 (no change, empty list)
    assert state.read_state(state_file)["last_attempted_run"] == 105


def test_002_get_incremental_start_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from statekit import runs as state

    state_file = tmp_path / "state.json"

    # State: last_contiguous_run=100, last_attempted_run=150
    state.write_state(state_file, {"last_contiguous_run": 100, "last_attempted_run": 150})
    start = state.get_incremental_start_run(state_file)
    print(start)  # Output: 150

    # State: last_contiguous_run=200, last_attempted_run=150
    state.write_state(state_file, {"last_contiguous_run": 200, "last_attempted_run": 150})
    start = state.get_incremental_start_run(state_file)
    print(start)  # Output: 200

    # No state file
    start = state.get_incremental_start_run(Path("/nonexistent.json"))
    print(start)  # Output: 0

    assert capsys.readouterr().out.split() == ["150", "200", "0"]


def test_002_parse_run_records_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from statekit import runs as state

    runs_file = tmp_path / "runs.txt"
    runs_file.write_text("100\n200\ninvalid\n300\n\n")

    runs = state.parse_run_records_from_file(runs_file)
    print(runs)  # Output: [100, 200, 300]

    assert capsys.readouterr().out == "[100, 200, 300]\n"


def test_002_append_to_failure_log(tmp_path: Path) -> None:
    from statekit import runs as state

    failure_log = tmp_path / "var" / "archiver" / "import_failure_log"
    state.append_to_failure_log(failure_log, [105])

    # Append new failures
    failed = [106, 107]
    state.append_to_failure_log(failure_log, failed)

    # File contents after append:
    # 105
    # 106
    # 107
    assert failure_log.read_text() == "105\n106\n107\n"


def test_002_write_failure_log(tmp_path: Path) -> None:
    from statekit import runs as state

    failure_log = tmp_path / "import_failure_log"
    state.append_to_failure_log(failure_log, [1, 2, 3])

    # During state recovery, rebuild failure log
    recovered_failures = [105, 110, 115]
    state.write_failure_log(failure_log, recovered_failures)

    # File contents after write:
    # 105
    # 110
    # 115
    assert failure_log.read_text() == "105\n110\n115\n"


def test_002_tracking_strategy_scenarios(tmp_path: Path) -> None:
    from statekit import runs as state

    state_file = tmp_path / "state.json"
    failure_log = tmp_path / "failure_log"
    state.write_state(state_file, {"last_contiguous_run": 99, "last_attempted_run": 99})

    # Runs 100-105 succeed -> last_contiguous_run = 105
    state.update_contiguous_run_state(state_file, list(range(100, 106)))
    state.update_attempted_run_state(state_file, list(range(100, 106)))
    assert state.read_state(state_file)["last_contiguous_run"] == 105
    # Run 106 fails, 107-110 succeed -> last_contiguous_run = 105 (gap at 106)
    state.update_contiguous_run_state(state_file, [107, 108, 109, 110])
    state.update_attempted_run_state(state_file, list(range(106, 111)))
    state.append_to_failure_log(failure_log, [106])
    assert state.read_state(state_file)["last_contiguous_run"] == 105

    # State: last_contiguous_run=105, last_attempted_run=110
    assert state.read_state(state_file)["last_attempted_run"] == 110
    # Incremental mode uses max of both:
    start_run = state.get_incremental_start_run(state_file)
    # Returns 110 (max of 105 and 110)
    assert start_run == 110
    # Failed run 106 remains in failure log for explicit retry
    assert state.parse_run_records_from_file(failure_log) == [106]


def test_002_complete_usage_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from statekit import runs as state

    # Setup
    state_file = tmp_path / "var" / "archiver" / "import_state.json"
    failure_log = tmp_path / "var" / "archiver" / "import_failure_log"
    # The state the documented output starts from (the example does not show it).
    state.write_state(state_file, {"last_contiguous_run": 100, "last_attempted_run": 100})

    # Read current state
    current_state = state.read_state(state_file)
    last_contiguous = current_state.get("last_contiguous_run", 0)
    last_attempted = current_state.get("last_attempted_run", 0)
    print(f"Starting from contiguous={last_contiguous}, attempted={last_attempted}")

    # Process a batch of runs
    attempted_runs = [101, 102, 103, 104, 105]
    successful_runs = [101, 102, 104, 105]  # 103 failed
    failed_runs = [103]

    # Update state
    state.update_contiguous_run_state(state_file, successful_runs)
    state.update_attempted_run_state(state_file, attempted_runs)
    state.append_to_failure_log(failure_log, failed_runs)

    # Check new state
    new_state = state.read_state(state_file)
    print(f"New state: {new_state}")
    # Output: {'last_contiguous_run': 102, 'last_attempted_run': 105}
    assert new_state["last_contiguous_run"] == 102
    assert new_state["last_attempted_run"] == 105

    # Prepare for next incremental run
    start_run = state.get_incremental_start_run(state_file)
    print(f"Next incremental will start from run {start_run}")
    # Output: Next incremental will start from run 105

    # Later: Retry failed runs
    failed_runs_to_retry = state.parse_run_records_from_file(failure_log)
    print(f"Retrying {len(failed_runs_to_retry)} failed runs: {failed_runs_to_retry}")
    # Output: Retrying 1 failed runs: [103]

    # After successful retry, rebuild failure log (remove 103)
    remaining_failures = [r for r in failed_runs_to_retry if r != 103]
    state.write_failure_log(failure_log, remaining_failures)

    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Starting from contiguous=100, attempted=100"
    assert out[2] == "Next incremental will start from run 105"
    assert out[3] == "Retrying 1 failed runs: [103]"
    assert state.parse_run_records_from_file(failure_log) == []


def test_002_filelock_constructor_and_context_manager(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from statekit.errors import LockExistsError
    from statekit.locks import FileLock

    lock_file = tmp_path / "var" / "run" / "archiver.lock"
    lock = FileLock(lock_file)
    assert lock.lock_file == lock_file

    def example() -> None:
        try:
            with FileLock(lock_file):
                print("Lock acquired, running archiver...")
                # Do archival work here
                # Lock automatically released when exiting context
        except LockExistsError as e:
            print(f"Another instance is running: {e}")
            sys.exit(1)

    example()
    assert capsys.readouterr().out == "Lock acquired, running archiver...\n"
    with FileLock(lock_file), pytest.raises(SystemExit) as exit_info:
        example()
    assert exit_info.value.code == 1
    assert capsys.readouterr().out.startswith("Another instance is running: lock file")


def test_002_is_lock_file_valid_and_get_pid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from statekit.locks import FileLock

    lock_file = tmp_path / "archiver.lock"
    with FileLock(lock_file) as lock:
        if lock.is_lock_file_valid():
            print("Lock is valid")
        else:
            print("Lock file corrupted or modified")

    lock = FileLock(lock_file)
    print(f"Lock will use PID: {lock.get_pid()}")

    assert capsys.readouterr().out == f"Lock is valid\nLock will use PID: {os.getpid()}\n"


def test_002_error_handling(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from statekit.errors import LockExistsError
    from statekit.locks import FileLock

    logger = logging.getLogger("archiver")
    processed: list[str] = []

    def process_runs() -> None:
        processed.append("ran")

    lock_path = tmp_path / "archiver.lock"

    def run_archiver() -> bool:
        lock_file = lock_path

        try:
            with FileLock(lock_file):
                # Critical section - only one process can be here
                process_runs()
        except LockExistsError as e:
            logger.error("Cannot acquire lock: %s", e)
            return False

        return True

    assert run_archiver() is True
    with FileLock(lock_path), caplog.at_level(logging.ERROR, logger="archiver"):
        assert run_archiver() is False
    assert processed == ["ran"]
    assert "Cannot acquire lock" in caplog.text


def test_002_lock_monitoring_thread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from statekit.locks import FileLock

    logger = logging.getLogger("archiver")
    shutdown_requested = False
    lock_file = tmp_path / "archiver.lock"

    def monitor_lock_file(lock: FileLock, interval: float = 60) -> None:
        """Monitor thread that validates lock every interval seconds."""
        nonlocal shutdown_requested
        while not shutdown_requested:
            time.sleep(interval)
            if not lock.is_lock_file_valid():
                logger.error("Lock file corrupted or deleted!")
                # Trigger shutdown
                shutdown_requested = True
                break

    def run_archival_process() -> None:
        lock_file.unlink()  # someone deletes the lock file while we run
        monitor_thread.join(60)

    with caplog.at_level(logging.ERROR, logger="archiver"), FileLock(lock_file) as lock:
        # Start monitoring thread
        monitor_thread = threading.Thread(target=monitor_lock_file, args=(lock, 0.01), daemon=True)
        monitor_thread.start()

        # Run archiver
        run_archival_process()

    assert shutdown_requested
    assert "Lock file corrupted or deleted!" in caplog.text


def test_002_monitoring_helper_replaces_the_hand_written_thread(tmp_path: Path) -> None:
    from statekit.errors import LockLost
    from statekit.locks import FileLock

    shutdown = threading.Event()
    lock_file = tmp_path / "archiver.lock"
    with FileLock(lock_file) as lock:
        lock.start_monitor(interval=0.01, on_lost=lambda err: shutdown.set())
        lock_file.write_text("4242\n")
        assert shutdown.wait(60)
        monitor = lock._monitor
        assert monitor is not None
        assert isinstance(monitor.lost, LockLost)


class _Orchestrator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def run(self) -> int:
        if self.config.get("explode"):
            raise RuntimeError("database unreachable")
        return 0


@pytest.mark.parametrize(("situation", "expected"), [("free", 0), ("held", 1), ("crash", 2)])
def test_002_complete_lock_usage_main(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, situation: str, expected: int
) -> None:
    from statekit.errors import LockExistsError
    from statekit.locks import FileLock

    lock_path = tmp_path / "run_record_archiver.lock"

    def load_config(name: str) -> dict[str, Any]:
        return {"app": {"lock_file": str(lock_path)}, "explode": situation == "crash"}

    Orchestrator = _Orchestrator  # the seed's name

    def main() -> int:
        # Load configuration
        config = load_config("config.yaml")

        # Setup logging
        logger = logging.getLogger(__name__)

        # Define lock file path
        lock_file = Path(config["app"]["lock_file"])

        try:
            # Acquire exclusive lock
            with FileLock(lock_file):
                logger.info("Lock acquired, starting archiver...")

                # Run archival process
                orchestrator = Orchestrator(config)
                exit_code = orchestrator.run()

                logger.info("Archiver completed successfully")
                return exit_code

        except LockExistsError as e:
            logger.error("Another archiver instance is running: %s", e)
            return 1
        except Exception as e:
            logger.exception("Unexpected error: %s", e)
            return 2

    with caplog.at_level(logging.INFO):
        if situation == "held":
            with FileLock(lock_path):
                assert main() == expected
        else:
            assert main() == expected
    with FileLock(lock_path):  # released in every case
        pass


# The seed's own unittest examples, collected by pytest as written.


class TestState(unittest.TestCase):
    def setUp(self) -> None:
        self.tmpdir = TemporaryDirectory()
        self.state_file = Path(self.tmpdir.name) / "state.json"

    def tearDown(self) -> None:
        self.tmpdir.cleanup()

    def test_contiguous_run_with_gap(self) -> None:
        """Test that gaps prevent contiguous advancement."""
        from statekit import runs as state

        state.write_state(self.state_file, {"last_contiguous_run": 100})

        # Process runs with gap
        state.update_contiguous_run_state(self.state_file, [101, 103, 104])

        # Should stop at 101 (gap before 103)
        new_state = state.read_state(self.state_file)
        self.assertEqual(new_state["last_contiguous_run"], 101)  # noqa: PT009 - the seed's unittest code


class TestFileLock(unittest.TestCase):
    def setUp(self) -> None:
        self.tmpdir = TemporaryDirectory()
        self.lock_file = Path(self.tmpdir.name) / "test.lock"

    def tearDown(self) -> None:
        self.tmpdir.cleanup()

    def test_lock_prevents_concurrent_access(self) -> None:
        """Test that second process cannot acquire lock."""
        from statekit.errors import LockExistsError
        from statekit.locks import FileLock

        with FileLock(self.lock_file):  # noqa: SIM117 - the seed's unittest code, as written
            # Try to acquire again (simulates second process)
            with self.assertRaises(LockExistsError):  # noqa: PT027
                with FileLock(self.lock_file):
                    pass
