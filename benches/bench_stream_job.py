"""The stream job of ``make run`` (demo/stream_job), in-process, on the memory and SQLite backends.

Every statekit row runs the demo's own batch loop, :func:`demo.stream_job.job.process`, over the
first ``N`` events of the default stream (10,000 keys, 60 s windows, 5 failing events per 10,000,
batches of 20,000) into a fresh store, with the demo's :class:`Bookkeeping` (tracker counters and
timings, error records, and on SQLite the failure log and run-state file): what ``make run`` does
between "lock taken" and "verifying", without the lock and without a crash.

* ``statekit_stream_job_memory`` / ``statekit_stream_job_sqlite``: no checkpoints.
* ``statekit_stream_job_sqlite_checkpoints``: plus the checkpoints ``make run`` takes (every 5
  batches, every 2 s, and a final one): informative, the peer takes none.

The peers are what a user would write without statekit, around the same ``fold_batch``:

* ``baseline_dict`` (memory group): the aggregates in a plain ``dict`` of dicts, merged in place;
  nothing encoded, nothing outlives the process. The floor of any in-memory version.
* ``baseline_sqlite3_executemany`` (SQLite group): stdlib ``sqlite3`` with statekit's settings
  (``journal_mode=WAL``, ``synchronous=FULL``); per batch the same fold, the same merge with the
  current window's aggregates kept in memory (the demo's ``_Known``), then in one ``BEGIN
  IMMEDIATE`` transaction an ``executemany`` of ``INSERT OR REPLACE`` of the ``json.dumps``-ed
  aggregates and offset record, the error rows and the counters. Same exactly-once guarantee as the
  job (aggregates and offset in one transaction), but no run-state file, no failure log and no
  timings: it does less.

``N`` is 200,000 (10 batches), or ``STATEKIT_BENCH_STREAM_EVENTS``; under ``--benchmark-disable``
(the CI pass) 20,000 unless that variable is set. Every round's result is checked, outside the
timed code, against the demo's own recomputation (``verify.expected_windows``).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from _support import LoopRunner, describe
from statekit import KeyValueStore, create_store
from statekit.persistence import create_persistence_manager, create_state_tracker

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the demo is a package at the repository root, not installed
    sys.path.insert(0, str(ROOT))

from demo.stream_job.bookkeeping import (  # noqa: E402
    BatchCheckpoints,
    Bookkeeping,
    JobFiles,
    checkpoint_coordinator,
    checkpointing,
    side_store,
)
from demo.stream_job.cli import parse_args  # noqa: E402
from demo.stream_job.job import (  # noqa: E402
    AGG_PREFIX,
    ERRORS_NAME,
    JOB_NAME,
    OFFSET_KEY,
    Aggregate,
    Committed,
    JobParams,
    _Known,
    error_id,
    event_at,
    failure_reason,
    fold_batch,
    merge,
    offset_record,
    process,
)
from demo.stream_job.verify import expected_windows  # noqa: E402

BATCH = 20_000
ROUNDS = 3
CHECKPOINT_EVERY = 5  # the demo's default


def n_events(config: pytest.Config) -> int:
    override = os.environ.get("STATEKIT_BENCH_STREAM_EVENTS")
    if override:
        return int(override)
    return 20_000 if config.getoption("benchmark_disable") else 200_000


@pytest.fixture(scope="module")
def params(request: pytest.FixtureRequest) -> JobParams:
    # The stream of ``make run`` (the CLI's defaults), cut at N events.
    defaults = parse_args([])
    return JobParams(
        events=n_events(request.config),
        keys=defaults.keys,
        seed=defaults.seed,
        window_seconds=defaults.window_seconds,
        failure_rate=defaults.failure_rate,
    )


@pytest.fixture(scope="module")
def expected(params: JobParams) -> tuple[dict[str, Aggregate], list[int]]:
    """Every aggregate and failed offset of the stream, from the demo's plain recomputation."""
    failed: list[int] = []
    aggregates: dict[str, Aggregate] = {}
    for _, window in expected_windows(params, failed):
        aggregates.update(window)
    return aggregates, failed


memory_group = pytest.mark.benchmark(group="stream job: memory")
sqlite_group = pytest.mark.benchmark(group="stream job: SQLite")


# -- statekit: the demo's batch loop ---------------------------------------------------------


@dataclass
class JobRound:
    """One round's fresh store (opened in setup, not timed) and what the job needs around it."""

    directory: Path
    url: str
    store: KeyValueStore
    side: KeyValueStore
    book: Bookkeeping
    contexts: list[Any]


class JobRunner:
    """Opens a fresh store per round (pedantic's setup), runs ``process`` on it (timed)."""

    def __init__(self, runner: LoopRunner, base: Path, params: JobParams, backend: str, checkpoints: bool):
        self.runner = runner
        self.base = base
        self.params = params
        self.backend = backend
        self.checkpoints = checkpoints
        self.round: JobRound | None = None
        self.rounds = 0
        self.last: JobRound | None = None

    async def _open(self, directory: Path) -> JobRound:
        url = f"sqlite://{directory / 'stream.db'}" if self.backend == "sqlite" else "memory://"
        store_cm = create_store(url)
        store = await store_cm.__aenter__()
        side_cm = side_store(store, url)
        side = await side_cm.__aenter__()
        tracker = await create_state_tracker(JOB_NAME, side, ttl=None)
        errors = await create_persistence_manager(ERRORS_NAME, side, error_ttl=None)
        files = JobFiles.in_dir(directory) if store.backend.persistent else None
        book = Bookkeeping(self.params, tracker, errors, files, None)
        return JobRound(directory, url, store, side, book, [side_cm, store_cm])

    async def _close(self, job: JobRound) -> None:
        for context in job.contexts:
            await context.__aexit__(None, None, None)

    def setup(self) -> None:
        self.teardown()
        self.rounds += 1
        directory = self.base / f"round{self.rounds}"
        directory.mkdir()
        self.round = self.runner.run(self._open(directory))

    def teardown(self) -> None:
        if self.round is not None:
            self.runner.run(self._close(self.round))
            shutil.rmtree(self.round.directory, ignore_errors=True)
            self.round = None

    async def _job(self, job: JobRound) -> Committed:
        coordinator = None
        batch_checkpoints = None
        if self.checkpoints:
            args = parse_args(["--state-dir", str(job.directory), "--store", job.url])
            coordinator, _ = checkpoint_coordinator(job.store, args)
            assert coordinator is not None
            batch_checkpoints = BatchCheckpoints(coordinator, CHECKPOINT_EVERY)
        async with checkpointing(coordinator):
            try:
                return await process(
                    job.store,
                    self.params,
                    Committed(0, 0, 0),
                    job.book,
                    batch_size=BATCH,
                    crash_after=None,
                    progress=False,
                    checkpoints=batch_checkpoints,
                )
            finally:
                await job.book.settle()

    def run(self) -> Committed:
        assert self.round is not None
        return self.runner.run(self._job(self.round))

    async def _stored(self, job: JobRound) -> tuple[dict[str, Any], Any, list[str]]:
        aggregates = dict(await job.store.range_get(AGG_PREFIX))
        failed = [record["item_id"] for record in await job.book.errors.get_failed_items(max_retries=1)]
        return aggregates, await job.store.get(OFFSET_KEY), failed

    def check(self, expected: tuple[dict[str, Aggregate], list[int]]) -> None:
        """The last round's store holds exactly the recomputed aggregates and failures."""
        assert self.round is not None
        aggregates, offset, failed = self.runner.run(self._stored(self.round))
        want_aggregates, want_failed = expected
        assert aggregates == want_aggregates
        assert offset["offset"] == self.params.events
        assert offset["failed"] == len(want_failed)
        assert sorted(failed) == [error_id(o) for o in want_failed]


@pytest.fixture
def job_runner(
    aloop: LoopRunner, tmp_path: Path, params: JobParams, request: pytest.FixtureRequest
) -> Iterator[JobRunner]:
    backend, checkpoints = request.param
    runner = JobRunner(aloop, tmp_path, params, backend, checkpoints)
    try:
        yield runner
    finally:
        runner.teardown()


def bench_job(benchmark: Any, runner: JobRunner, expected: Any, note: str) -> None:
    describe(benchmark, ops=runner.params.events, unit="events", note=note)
    result = benchmark.pedantic(runner.run, setup=runner.setup, rounds=ROUNDS, iterations=1)
    assert result.offset == runner.params.events
    runner.check(expected)


@memory_group
@pytest.mark.parametrize("job_runner", [("memory", False)], indirect=True)
def test_statekit_stream_job_memory(benchmark: Any, job_runner: JobRunner, expected: Any) -> None:
    bench_job(benchmark, job_runner, expected, "demo's process() + Bookkeeping, memory://")


@sqlite_group
@pytest.mark.parametrize("job_runner", [("sqlite", False)], indirect=True)
def test_statekit_stream_job_sqlite(benchmark: Any, job_runner: JobRunner, expected: Any) -> None:
    bench_job(benchmark, job_runner, expected, "demo's process() + Bookkeeping (files too), durability=full")


@sqlite_group
@pytest.mark.parametrize("job_runner", [("sqlite", True)], indirect=True)
def test_statekit_stream_job_sqlite_checkpoints(benchmark: Any, job_runner: JobRunner, expected: Any) -> None:
    bench_job(benchmark, job_runner, expected, "as make run: plus checkpoints every 5 batches / 2 s / final")


# -- peers --------------------------------------------------------------------------------------


def dict_job(params: JobParams) -> tuple[dict[str, Aggregate], dict[str, int], dict[str, str]]:
    """The same fold and merge, the state in plain dicts."""
    aggregates: dict[str, Aggregate] = {}
    errors: dict[str, str] = {}
    committed = Committed(0, 0, 0)
    offset: dict[str, int] = {}
    while committed.offset < params.events:
        start = committed.offset
        stop = min(start + BATCH, params.events)
        deltas, failed = fold_batch(params, start, stop)
        for key, delta in deltas.items():
            aggregates[key] = merge(aggregates.get(key), delta)
        for failed_offset in failed:
            event = event_at(params.seed, failed_offset, params.keys, params.failure_rate)
            errors[error_id(failed_offset)] = failure_reason(event)
        committed = Committed(stop, committed.run + 1, committed.failed + len(failed))
        offset = offset_record(params, committed)
    return aggregates, offset, errors


@memory_group
def test_baseline_dict(benchmark: Any, params: JobParams, expected: Any) -> None:
    describe(benchmark, ops=params.events, unit="events", note="same fold_batch + merge into a dict")
    aggregates, offset, errors = benchmark.pedantic(dict_job, args=(params,), rounds=ROUNDS, iterations=1)
    assert aggregates == expected[0]
    assert offset["offset"] == params.events
    assert sorted(errors) == [error_id(o) for o in expected[1]]


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS errors (item_id TEXT PRIMARY KEY NOT NULL, error TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO counters VALUES ('batches', 0), ('events_processed', 0), ('events_failed', 0);
"""


def sqlite3_job(params: JobParams, path: Path) -> None:
    """The job on stdlib sqlite3: the same fold, the same aggregates kept for the current window
    (the demo's ``_Known``: nothing to read back on a fresh start), all of a batch in one transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SQLITE_SCHEMA)
        known = _Known(params.window_ms)
        committed = Committed(0, 0, 0)
        while committed.offset < params.events:
            start = committed.offset
            stop = min(start + BATCH, params.events)
            deltas, failed = fold_batch(params, start, stop)
            keys = list(deltas)
            current = known.current(keys)
            committed = Committed(stop, committed.run + 1, committed.failed + len(failed))
            updates: dict[str, Any] = {
                key: merge(old, deltas[key]) for key, old in zip(keys, current, strict=True)
            }
            updates[OFFSET_KEY] = offset_record(params, committed)
            errors = [
                (error_id(o), failure_reason(event_at(params.seed, o, params.keys, params.failure_rate)))
                for o in failed
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in updates.items()],
            )
            conn.executemany("INSERT OR REPLACE INTO errors (item_id, error) VALUES (?, ?)", errors)
            conn.executemany(
                "UPDATE counters SET value = value + ? WHERE name = ?",
                [(1, "batches"), (stop - start, "events_processed"), (len(failed), "events_failed")],
            )
            conn.execute("COMMIT")
            known.committed(updates, start, stop)
    finally:
        conn.close()


@sqlite_group
def test_baseline_sqlite3_executemany(
    benchmark: Any, params: JobParams, expected: Any, tmp_path: Path
) -> None:
    describe(benchmark, ops=params.events, unit="events", note="same fold_batch; sqlite3 + json, WAL, FULL")
    paths: list[Path] = []

    def setup() -> tuple[tuple[JobParams, Path], dict[str, Any]]:
        for old in tmp_path.glob("peer*"):
            old.unlink()
        paths.append(tmp_path / f"peer{len(paths)}.db")
        return (params, paths[-1]), {}

    benchmark.pedantic(sqlite3_job, setup=setup, rounds=ROUNDS, iterations=1)
    conn = sqlite3.connect(paths[-1])
    try:
        stored = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM state")}
        errors = [row[0] for row in conn.execute("SELECT item_id FROM errors ORDER BY item_id")]
    finally:
        conn.close()
    offset = stored.pop(OFFSET_KEY)
    assert stored == expected[0]
    assert offset["offset"] == params.events
    assert errors == [error_id(o) for o in expected[1]]
