"""The runnable example ``examples/stream_job.py``, run for real.

Most tests start it as a subprocess with a small stream, the way a user (and ``make run``)
does, including the hard crash; a few import it to check its building blocks and that its
verification does catch a wrong store.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from statekit import create_store

EXAMPLE = Path(__file__).parents[2] / "examples" / "stream_job.py"
EVENTS = 30_000
BATCH = 2_000
# 5 s windows: 6 windows of 5,000 events, so batches of 2,000 straddle window boundaries.
SMALL = ["--events", str(EVENTS), "--keys", "500", "--batch-size", str(BATCH), "--window-seconds", "5"]
CRASH_CODE = 70


@pytest.fixture(scope="module")
def job() -> ModuleType:
    """The example, imported as a module."""
    spec = importlib.util.spec_from_file_location("stream_job", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stream_job"] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["stream_job"]
    return module


def run_job(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--state-dir", str(state_dir), "--no-progress", *SMALL, *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=state_dir.parent,
        check=False,
    )


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def assert_match(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, describe(proc)
    assert re.search(r"^MATCH: all [\d,]+ stored aggregates", proc.stdout, re.MULTILINE), describe(proc)
    assert "MISMATCH" not in proc.stdout


def processed(proc: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"^processed ([\d,]+) events", proc.stdout, re.MULTILINE)
    assert found, describe(proc)
    return int(found.group(1).replace(",", ""))


def stored(db: Path) -> tuple[Any, int]:
    """The offset record and the number of aggregates in a job's SQLite file."""

    async def read() -> tuple[Any, int]:
        async with create_store(f"sqlite://{db}") as store:
            return await store.get("job:offset"), len(await store.keys("agg:"))

    return asyncio.run(read())


# -- the example as a program -------------------------------------------------------------------


def test_clean_run_verifies(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = run_job(state)
    assert_match(proc)
    assert processed(proc) == EVENTS
    assert "resuming" not in proc.stdout
    record, aggregates = stored(state / "stream.db")
    assert record["offset"] == EVENTS
    assert aggregates > 0

    # A second run finds everything committed, processes nothing and verifies again.
    again = run_job(state)
    assert_match(again)
    assert processed(again) == 0
    assert "nothing to process" in again.stdout


def test_crash_then_resume(tmp_path: Path) -> None:
    state = tmp_path / "state"
    crashed = run_job(state, "--crash-after", "10000")
    assert crashed.returncode == CRASH_CODE, describe(crashed)
    assert "simulating a crash" in crashed.stdout
    assert "MATCH" not in crashed.stdout

    # The batch that reached 10,000 events was computed but never written.
    record, aggregates = stored(state / "stream.db")
    assert record["offset"] == 10_000 - BATCH
    assert aggregates > 0

    resumed = run_job(state)
    assert_match(resumed)
    assert f"resuming at offset {10_000 - BATCH:,}" in resumed.stdout
    assert processed(resumed) == EVENTS - (10_000 - BATCH)
    assert stored(state / "stream.db")[0]["offset"] == EVENTS


def test_two_crashes_then_resume(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = run_job(state, "--crash-after", "7000")
    assert first.returncode == CRASH_CODE, describe(first)
    offset_after_first = stored(state / "stream.db")[0]["offset"]
    assert offset_after_first == 6_000

    # --crash-after counts the events of this run: the second crash is further along.
    second = run_job(state, "--crash-after", "9000")
    assert second.returncode == CRASH_CODE, describe(second)
    assert f"resuming at offset {offset_after_first:,}" in second.stdout
    offset_after_second = stored(state / "stream.db")[0]["offset"]
    assert offset_after_second == 14_000

    final = run_job(state)
    assert_match(final)
    assert f"resuming at offset {offset_after_second:,}" in final.stdout
    assert processed(final) == EVENTS - offset_after_second


def test_resume_with_another_batch_size(tmp_path: Path) -> None:
    """Batching is not part of the result: a resumed run may commit in other batch sizes."""
    state = tmp_path / "state"
    assert run_job(state, "--crash-after", "5000").returncode == CRASH_CODE
    assert_match(run_job(state, "--batch-size", "1234"))


def test_memory_store_verifies(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = run_job(state, "--store", "memory://")
    assert_match(proc)
    assert processed(proc) == EVENTS
    assert "store memory://" in proc.stdout
    assert not state.exists()  # nothing was written to disk


@pytest.mark.parametrize(
    ("option", "value"),
    [("--seed", "7"), ("--events", "20000"), ("--keys", "400"), ("--window-seconds", "10")],
)
def test_resume_with_other_parameters_is_refused(tmp_path: Path, option: str, value: str) -> None:
    state = tmp_path / "state"
    assert run_job(state, "--crash-after", "4000").returncode == CRASH_CODE
    before = stored(state / "stream.db")

    refused = run_job(state, option, value)  # argparse keeps the last occurrence of an option
    assert refused.returncode == 2, describe(refused)
    assert "refusing to resume" in refused.stderr
    assert option in refused.stderr
    assert "--reset" in refused.stderr
    assert "MATCH" not in refused.stdout
    assert stored(state / "stream.db") == before  # the refused run changed nothing

    # --reset discards the old state; the job then starts over with the new parameters.
    fresh = run_job(state, option, value, "--reset")
    assert_match(fresh)
    assert "--reset: deleted" in fresh.stdout
    assert "resuming" not in fresh.stdout


def test_aggregates_without_offset_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert_match(run_job(state))

    async def drop_offset() -> None:
        async with create_store(f"sqlite://{state / 'stream.db'}") as store:
            assert await store.delete("job:offset")

    asyncio.run(drop_offset())
    refused = run_job(state)
    assert refused.returncode == 2, describe(refused)
    assert "no 'job:offset' record" in refused.stderr


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    for args in (["--events", "0"], ["--keys", "200000"], ["--batch-size", "x"]):
        proc = run_job(tmp_path / "state", *args)
        assert proc.returncode == 2, describe(proc)
        assert "usage:" in proc.stderr
    proc = run_job(tmp_path / "state", "--store", "redis-ish://localhost")
    assert proc.returncode == 2, describe(proc)
    assert "unsupported store URL scheme" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unusable_store_is_a_clean_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "state" / "stream.db"
    not_a_db.parent.mkdir()
    not_a_db.write_text("this is not a SQLite database, and it is long enough to have a header" * 20)
    proc = run_job(tmp_path / "state")
    assert proc.returncode == 3, describe(proc)
    assert "StorageError" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not_a_db.read_text().startswith("this is not")  # left untouched


# -- verification can fail ----------------------------------------------------------------------


async def _corrupt(db: Path, how: str) -> str:
    """Damage the store behind the job's back; return the key concerned."""
    async with create_store(f"sqlite://{db}") as store:
        aggregates = dict(await store.range_get("agg:"))
        if how == "wrong value":  # one event's worth of amount too much
            key = sorted(aggregates)[len(aggregates) // 2]
            await store.put(key, {**aggregates[key], "sum": aggregates[key]["sum"] + 1})
        elif how == "missing":
            key = sorted(aggregates)[-1]
            assert await store.delete(key)
        else:  # an aggregate for a key id that never occurs in the stream
            key = "agg:000002:00777"
            assert key not in aggregates
            await store.put(key, {"count": 1, "sum": 5, "min": 5, "max": 5})
        return key


@pytest.mark.parametrize("how", ["wrong value", "missing", "unexpected"])
def test_verification_detects_a_corrupted_store(
    tmp_path: Path, job: ModuleType, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    state = tmp_path / "state"
    argv = ["--state-dir", str(state), "--no-progress", *SMALL]
    assert job.main(argv) == 0
    assert "MATCH: all" in capsys.readouterr().out

    key = asyncio.run(_corrupt(state / "stream.db", how))
    assert job.main(argv) == 1  # nothing left to process: it only verifies, and fails
    out = capsys.readouterr().out
    assert "MISMATCH: 1 of" in out
    assert f"wrong: {key}" in out


# -- building blocks -----------------------------------------------------------------------------


def test_fold_batch_agrees_with_event_at(job: ModuleType) -> None:
    params = job.JobParams(events=12_000, keys=37, seed=99, window_seconds=4)
    expected: dict[str, list[int]] = {}
    for offset in range(3_500, 9_100):  # straddles the windows starting at 4,000 and 8,000
        event = job.event_at(params.seed, offset, params.keys)
        assert event.time_ms == job.EPOCH_MS + offset
        key = job.agg_key((event.time_ms - job.EPOCH_MS) // params.window_ms, event.key)
        agg = expected.setdefault(key, [0, 0, event.amount, event.amount])
        agg[0] += 1
        agg[1] += event.amount
        agg[2] = min(agg[2], event.amount)
        agg[3] = max(agg[3], event.amount)
    deltas = job.fold_batch(params, 3_500, 9_100)
    assert {key: list(delta) for key, delta in deltas.items()} == expected
    assert {key[:10] for key in deltas} == {"agg:000000", "agg:000001", "agg:000002"}


def test_events_are_deterministic_and_random_access(job: ModuleType) -> None:
    first = [job.event_at(5, offset, 100) for offset in range(1_000)]
    assert first == [job.event_at(5, offset, 100) for offset in range(1_000)]
    assert job.event_at(5, 123_456_789, 100) == job.event_at(5, 123_456_789, 100)
    assert [e.key for e in first] != [e.key for e in (job.event_at(6, o, 100) for o in range(1_000))]
    assert {e.key for e in first} == set(range(100))
    amounts = [e.amount for e in first]
    assert min(amounts) >= -100
    assert max(amounts) < 900
    assert min(amounts) < 0 < max(amounts)


def test_merge_and_key_order(job: ModuleType) -> None:
    assert job.CRASH_EXIT_CODE == CRASH_CODE
    first = job.merge(None, (2, 10, 3, 7))
    assert first == {"count": 2, "sum": 10, "min": 3, "max": 7}
    assert job.merge(first, (1, -4, -4, -4)) == {"count": 3, "sum": 6, "min": -4, "max": 7}
    keys = [job.agg_key(w, k) for w in (0, 1, 10, 100) for k in (0, 9, 10, 99_999)]
    assert sorted(keys) == keys
