"""What the job keeps besides its commits: the lock, the run-state file, the failure log, the
tracker and error records, and the checkpoints (taken every N batches, restored on resume)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from statekit import KeyValueStore, create_store
from statekit.checkpoint import CheckpointCoordinator, CheckpointOptions, CheckpointStats
from statekit.errors import CheckpointFailed, CorruptData, LockLost, RestoreFailed, StateError
from statekit.persistence import PersistenceManager, StateTracker
from statekit.runs import (
    append_to_failure_log,
    get_incremental_start_run,
    parse_run_records_from_file,
    read_state,
    update_attempted_run_state,
    update_contiguous_run_state,
    write_failure_log,
    write_state,
)

from .job import STATE_PREFIX, Committed, JobParams, error_id, event_at, failure_reason

#: Files in --state-dir besides the SQLite file.
LOCK_FILE: Final = "stream_job.lock"
RUN_STATE_FILE: Final = "run_state.json"
FAILURE_LOG_FILE: Final = "failures.log"
CHECKPOINT_DIR: Final = "checkpoints"
#: Seconds between checkpoints by default, committed batches between them, and how many are kept.
DEFAULT_CHECKPOINT_INTERVAL: Final = 2.0
DEFAULT_CHECKPOINT_EVERY: Final = 5
MAX_CHECKPOINTS: Final = 5

#: Tracker counters and timed phases, in the order the summary prints them.
COUNTERS: Final = ("batches", "events_processed", "events_failed")
PHASES: Final = ("fold", "read", "put_many")


# -- the files next to the store ---------------------------------------------------------------


@dataclass(frozen=True)
class JobFiles:
    lock: Path
    run_state: Path
    failure_log: Path

    @classmethod
    def in_dir(cls, state_dir: Path) -> JobFiles:
        state_dir = state_dir.resolve()
        return cls(state_dir / LOCK_FILE, state_dir / RUN_STATE_FILE, state_dir / FAILURE_LOG_FILE)


class LockWatch:
    """Told by the lock's monitor thread that the lock file was deleted or rewritten.

    The job checks it before every commit: once another process may believe it holds the
    lock, committing more batches could interleave with that process's commits.
    """

    def __init__(self) -> None:
        self.lost: LockLost | None = None

    def on_lost(self, error: LockLost) -> None:  # runs in the monitor thread
        self.lost = error  # one attribute store: atomic, read by the job between batches

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost


def advance_watermarks(run_state: Path, run: int) -> None:
    """After the commit of batch ``run``: both watermarks move to it (two small fsynced writes)."""
    update_attempted_run_state(run_state, [run])
    update_contiguous_run_state(run_state, [run])


def reconcile_run_state(run_state: Path, committed: Committed) -> str | None:
    """Make the run-state file agree with the store; say what was found (None: nothing to say).

    The store's offset record is the source of truth for exactly-once; the run-state file is
    the human-facing watermark (what an operator or a scheduler looks at) and is written after
    each commit, outside the batch transaction. So a crash between a commit and the watermark
    update leaves it one run behind (it is caught up here), and a store replaced or restored
    from an older copy leaves it ahead (it is set back: the store decides).
    """
    try:
        start = get_incremental_start_run(run_state)
        state = read_state(run_state)
        contiguous = int(state.get("last_contiguous_run", 0))
        attempted = int(state.get("last_attempted_run", 0))
    except CorruptData as exc:  # a watermark that is not a number: rewrite both from the store
        start = contiguous = attempted = -1
        state = read_state(run_state)
        print(f"warning: {exc}", file=sys.stderr)
    found = f"incremental start run {start:,} (contiguous {contiguous:,}, attempted {attempted:,})"
    target = committed.run
    if contiguous == attempted == target:
        if target == 0:
            return None
        return f"run-state file: {found}; the store has committed run {target:,}: they agree"
    if contiguous > target or attempted > target or contiguous < 0 or attempted < 0:
        state.update(last_contiguous_run=target, last_attempted_run=target)
        if not write_state(run_state, state):
            raise StateError(f"cannot write run-state file {str(run_state)!r}; see the log above")
        return (
            f"run-state file: {found} is AHEAD of the store, which has committed run {target:,}; "
            f"the store is the source of truth, so both watermarks were set back to {target:,}"
        )
    update_contiguous_run_state(run_state, range(contiguous + 1, target + 1))
    update_attempted_run_state(run_state, [target])
    return (
        f"run-state file: {found} lags the store, which has committed run {target:,} (a crash "
        f"between a commit and the watermark update); caught up to {target:,}"
    )


def reconcile_failure_log(failure_log: Path, committed: Committed) -> str | None:
    """Keep exactly one line per failed event of the committed batches; say what changed.

    A batch's failure lines are appended *before* its commit (after it, a crash between the
    two would lose them for good, since a committed batch is never redone). So the log is
    at-least-once: a crash can leave the lines of the uncommitted batch, which the resumed
    run appends again when it redoes that batch. Dropping every line at or past the
    committed offset (and any duplicate) before processing makes it exactly-once again.
    """
    logged = parse_run_records_from_file(failure_log)
    keep = sorted({offset for offset in logged if 0 <= offset < committed.offset})
    notes = []
    if keep != logged:
        write_failure_log(failure_log, keep)
        notes.append(
            f"failure log: dropped {len(logged) - len(keep):,} line(s) of the uncommitted batch "
            "or of batches a checkpoint restore undid (they are redone), or duplicates"
        )
    if len(keep) != committed.failed:
        notes.append(
            f"warning: the failure log lists {len(keep):,} failed events before offset "
            f"{committed.offset:,}, but the offset record counts {committed.failed:,}; was it edited?"
        )
    return "\n".join(notes) or None


# -- checkpoints -------------------------------------------------------------------------------


def remove_checkpoints(coordinator: CheckpointCoordinator) -> int:
    """Delete the coordinator's checkpoint files, damaged ones included (for --reset); files kept
    aside as ``*.corrupt`` stay."""
    listed = coordinator.list_checkpoints(include_damaged=True)
    for info in listed:
        info.path.unlink(missing_ok=True)
    return len(listed)


async def restore_checkpoint(coordinator: CheckpointCoordinator, committed: Committed) -> str | None:
    """Restore the newest checkpoint that verifies; say which, and which newer ones were corrupt.

    Returns the restored id, or None when there is no checkpoint or none could be restored: the
    store is then left as it is, which is consistent on its own (a restore is one transaction).
    The checkpoints that failed are the coordinator's ``last_restore.set_aside``.
    """
    listed = coordinator.list_checkpoints(include_damaged=True)
    if not listed:
        return None
    at = f"at offset {committed.offset:,}" if committed.offset else "empty"
    print(
        f"checkpoints: {len(listed)} in {coordinator.checkpoint_dir}; the stream is unfinished (the store is "
        f"{at}), so the newest valid checkpoint is restored before resuming",
        flush=True,
    )
    restored: str | None = None
    try:
        restored = await coordinator.restore_latest()
    except RestoreFailed as exc:
        print(f"warning: {exc}; resuming from the store as it is", file=sys.stderr, flush=True)
    result = coordinator.last_restore
    for aside in reversed(result.set_aside if result is not None else ()):  # oldest first
        kept = aside.path.name if aside.path is not None else "(could not be renamed)"
        print(f"checkpoint {aside.checkpoint_id} failed verification: kept aside as {kept}", flush=True)
    return restored


class BatchCheckpoints:
    """A checkpoint after every ``every`` batches committed by this run.

    Taken between two commits, so it is the state after a whole batch; unlike the periodic
    ones, where they fall does not depend on how fast the machine is.
    """

    def __init__(self, coordinator: CheckpointCoordinator, every: int) -> None:
        self.coordinator = coordinator
        self.every = every
        self.committed = 0  # batches committed by this run
        #: ``(id, offset)`` of the newest checkpoint this object took.
        self.newest: tuple[str, int] | None = None

    async def after_commit(self, committed: Committed, params: JobParams) -> None:
        self.committed += 1
        # The last batch is left to the final checkpoint, which follows at once.
        if self.committed % self.every or committed.offset >= params.events:
            return
        try:
            self.newest = (await self.coordinator.create_checkpoint(), committed.offset)
        except CheckpointFailed as exc:  # counted in the stats; the committed state is unharmed
            print(f"warning: a checkpoint failed: {exc}", file=sys.stderr, flush=True)


def checkpoint_summary(coordinator: CheckpointCoordinator | None, off: str, every: int) -> str:
    """One line of the coordinator's stats (``off``: why there are no checkpoints)."""
    if coordinator is None:
        return f"checkpoints: off ({off})"
    stats: CheckpointStats = coordinator.stats()
    if stats.last_checkpoint_time is None or stats.last_checkpoint_duration_ms is None:
        last = "none written"
    else:
        last = (
            f"the last at {stats.last_checkpoint_time:%H:%M:%S.%f}"[:-3]
            + f" UTC took {stats.last_checkpoint_duration_ms:.1f} ms"
        )
    return (
        f"checkpoints in {coordinator.checkpoint_dir} (every {every:,} batches and every "
        f"{coordinator.interval:g} s, newest "
        f"{coordinator.options.max_checkpoints} kept): created {stats.checkpoints_created}, failures "
        f"{stats.checkpoint_failures}, restores {stats.restores}, restore failures {stats.restore_failures}; "
        f"{last}; {stats.total_bytes_checkpointed / 1e6:,.1f} MB written in all"
    )


@asynccontextmanager
async def checkpointing(coordinator: CheckpointCoordinator | None) -> AsyncIterator[None]:
    """Periodic checkpoints while the body runs, then a final one (also when it raises, as
    ``async with coordinator`` does; a crash, ``os._exit``, takes none)."""
    if coordinator is None:
        yield
        return
    await coordinator.start()
    try:
        yield
    finally:
        try:
            await coordinator.shutdown()  # stops the periodic task, then the final checkpoint
        except CheckpointFailed as exc:  # counted in the stats; the committed state is unharmed
            print(f"warning: the final checkpoint failed: {exc}", file=sys.stderr, flush=True)


# -- a batch's writes besides its commit -------------------------------------------------------


class Bookkeeping:
    """Everything a batch writes besides its commit: tracker, error records, failure log, run state.

    Per batch that is one ``asyncio.gather`` of small writes before the commit and one after, so
    their round trips overlap, and a run-state update that runs in a thread while the next
    batch is folded. ``seconds`` adds up how long the batch loop waited for all that.

    The tracker and the error records are given the store of :func:`side_store`: on SQLite a
    second connection to the same file with ``durability=normal``, whose commits skip the
    fsync. That loses nothing we need: a process crash loses no commit in either mode, and on
    a power cut the next batch commit (``synchronous=FULL``) fsyncs the write-ahead log,
    earlier frames included, so an error record written before its batch's commit is on disk
    whenever that batch is.
    """

    def __init__(
        self,
        params: JobParams,
        tracker: StateTracker,
        errors: PersistenceManager,
        files: JobFiles | None,
        watch: LockWatch | None,
    ) -> None:
        self.params = params
        self.tracker = tracker
        self.errors = errors
        self.files = files
        self.watch = watch
        self.seconds = 0.0
        self._watermarks: asyncio.Future[None] | None = None

    async def before_commit(
        self, start: int, stop: int, failed: list[int], *, fold: float, read: float
    ) -> None:
        """Record the batch's work and failures; done before the commit, so at least once.

        Failure records must not be lost, so they go first (see reconcile_failure_log); the
        error records are keyed by offset, so writing them again when a batch is redone just
        replaces them with the same content. The tracker's counters are not idempotent: a
        redone batch is counted twice, which the summary reports as redone work.
        """
        began = time.perf_counter()
        writes: list[Awaitable[object]] = [
            self.tracker.increment_counter("batches"),
            self.tracker.increment_counter("events_processed", stop - start),
            self.tracker.record_processing_time("fold", fold),
            self.tracker.record_processing_time("read", read),
        ]
        if failed:
            writes.append(self.tracker.increment_counter("events_failed", len(failed)))
            params = self.params
            for offset in failed:
                event = event_at(params.seed, offset, params.keys, params.failure_rate)
                writes.append(self.errors.save_error(error_id(offset), failure_reason(event)))
            if self.files is not None:
                writes.append(asyncio.to_thread(append_to_failure_log, self.files.failure_log, failed))
        await asyncio.gather(*writes)
        self.seconds += time.perf_counter() - began

    async def after_commit(self, run: int, *, put: float) -> None:
        """Batch ``run`` is committed: record the commit's time, start moving the watermarks."""
        began = time.perf_counter()
        await asyncio.gather(self.tracker.record_processing_time("put_many", put), self.settle())
        if self.files is not None:
            # Two fsynced file writes: done in a thread (started now, without waiting for the
            # event loop) while the next batch is folded. The previous update is settled first,
            # since the contiguous watermark only advances one run after the other.
            self._watermarks = asyncio.get_running_loop().run_in_executor(
                None, advance_watermarks, self.files.run_state, run
            )
        self.seconds += time.perf_counter() - began

    async def settle(self) -> None:
        """Wait for the pending run-state update (and raise its error, if any)."""
        pending, self._watermarks = self._watermarks, None
        if pending is not None:
            await pending

    def check_lock(self) -> None:
        """Raise LockLost when the lock monitor found the lock file deleted or rewritten."""
        if self.watch is not None:
            self.watch.check()


def checkpoint_coordinator(
    store: KeyValueStore, args: argparse.Namespace
) -> tuple[CheckpointCoordinator | None, str]:
    """The coordinator of the job's checkpoints, or None and why there are none."""
    if args.no_checkpoints:
        return None, "--no-checkpoints"
    backend_type = store.backend.backend_type
    if backend_type == "redis":
        return None, "a Redis snapshot taken while the job commits is not point in time"
    if not store.backend.persistent and args.checkpoint_interval is None and args.checkpoint_every is None:
        return None, (
            f"a {backend_type} store takes checkpoints only with --checkpoint-interval or --checkpoint-every"
        )
    interval = args.checkpoint_interval or DEFAULT_CHECKPOINT_INTERVAL
    options = CheckpointOptions(
        args.state_dir.resolve() / CHECKPOINT_DIR, max_checkpoints=MAX_CHECKPOINTS, min_interval=0
    )
    # The committed state (see Checkpoints); all of a memory store, whose tracker dies with it too.
    # prefix= counts from the backend's key space, so a store URL's own key_prefix is honoured.
    scope = STATE_PREFIX if store.backend.persistent else ""
    return CheckpointCoordinator(store, interval, options, prefix=store.key_prefix + scope), ""


@asynccontextmanager
async def side_store(store: KeyValueStore, url: str) -> AsyncIterator[KeyValueStore]:
    """Where the tracker and the error records go (see Bookkeeping): on SQLite, a second
    connection to the same file without an fsync per commit; otherwise ``store`` itself."""
    if store.backend.backend_type != "sqlite":
        yield store
        return
    async with create_store(url, durability="normal") as side:
        yield side


async def tracker_summary(tracker: StateTracker, committed: Committed) -> list[str]:
    """The tracker's counters and timings, next to the exact figures of the offset record."""
    counters = {name: await tracker.get_counter(name) for name in COUNTERS}
    lines = [
        f"tracker {tracker.name!r}, work done including batches redone after a crash (written apart "
        "from the commits, so at least once): "
        + ", ".join(f"{name} {value:,}" for name, value in counters.items()),
        f"committed exactly once (offset record): batches {committed.run:,}, events_processed "
        f"{committed.offset:,}, events_failed {committed.failed:,}; redone work: "
        f"{counters['batches'] - committed.run:,} batch(es), "
        f"{counters['events_processed'] - committed.offset:,} events",
    ]
    for phase in PHASES:
        stats = await tracker.get_processing_stats(phase)
        lines.append(
            f"  {phase:<8} count {stats['count']:>6,}  avg {stats['avg_time'] * 1e3:8.2f} ms  "
            f"min {stats['min_time'] * 1e3:8.2f} ms  max {stats['max_time'] * 1e3:8.2f} ms  "
            f"total {stats['total_time']:7.2f} s"
        )
    return lines
