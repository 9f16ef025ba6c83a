#!/usr/bin/env python3
"""A crash-safe stream job on statekit: tumbling-window aggregates, committed exactly once.

The job reads a synthetic stream of events (a key, an integer amount and an event time) and
keeps, for every (window, key) pair, the count, sum, min and max of the amounts, in
60-second tumbling windows of event time. The aggregates live in a statekit store
(SQLite by default), so the job can be killed at any moment and started again::

    python examples/stream_job.py --crash-after 400000   # dies hard ~400,000 events into the run
    python examples/stream_job.py                        # resumes from the last commit

(``--crash-after N`` counts the events of the current run; the second run restores the
latest checkpoint first, see Checkpoints). Every run ends by recomputing
every aggregate from scratch, comparing them (and the records of the failed events) with the
store and printing ``MATCH`` (exit code 0) or ``MISMATCH`` (exit code 1).

Exit codes: 0 ``MATCH``; 1 ``MISMATCH``; 2 bad arguments or a refused resume; 3 a store,
run-state file or failure-log error; 70 the simulated crash of ``--crash-after``; 75 another
instance holds the job's lock, or the lock was lost while running (nothing half-done is left:
run again once the other instance is gone).

How exactly-once works here
---------------------------
Events are processed in batches. For each batch the job

1. folds the batch into per-(window, key) deltas in a plain dict (no I/O),
2. reads the current aggregates of the touched keys with one ``get_many``,
3. merges, and writes the merged aggregates *and* the new committed offset with one
   ``put_many``.

On SQLite a ``put_many`` is one transaction: either the aggregates and the offset that
accounts for them are both on disk, or neither is. A crash anywhere therefore leaves the
store exactly as it was after some whole batch, and the restarted job replays from the
stored offset: no event is lost and none is counted twice. (Writing the aggregates and the
offset in two calls would open a window where a crash double-counts a batch on replay.)

The stream is deterministic: the event at offset ``i`` is a pure function of ``(seed, i)``,
computed with the splitmix64 mixer, so any offset can be regenerated on its own. A real job
would read from Kafka, Kinesis or files instead, and store the source's offsets the same way.

The bookkeeping of an incremental job
-------------------------------------
Around that core the job keeps what a production job keeps (in ``--state-dir``, next to the
SQLite file; a ``memory://`` store, which dies with the process, gets none of the files):

* ``stream_job.lock``, a :class:`~statekit.locks.FileLock` held for the whole run: a second
  instance exits at once with code 75 instead of interleaving its commits with ours. A crash
  leaves the file behind, but the kernel drops the ``flock`` with the process, so the next run
  takes it without ceremony (the file only holds the last holder's PID). A monitor thread
  checks every ``--lock-check-interval`` seconds that the file is still ours; if it was
  deleted or rewritten the job stops before its next commit (code 75).
* ``run_state.json``, the watermarks of :mod:`statekit.runs`. Every batch is a numbered "run"
  (1, 2, ...; the number is kept in the offset record, so it does not depend on the batch
  size). After each commit ``last_attempted_run`` and ``last_contiguous_run`` move to it.
* ``failures.log``: events fail at a small deterministic rate (``--failure-rate``, 5 per
  10,000 by default; 0 disables). A failed event is left out of the aggregates, its offset is
  appended to the failure log (one per line, the :mod:`statekit.runs` format that
  ``parse_run_records_from_file`` reads back) and an error record with its key and the reason
  is saved with :meth:`~statekit.persistence.PersistenceManager.save_error` (prefix ``job``,
  so under ``job:errors:``), where a retry pass would find it with ``get_failed_items``.
* a :class:`~statekit.persistence.StateTracker` named ``stream_job`` in the store: counters
  (batches, events processed, events failed) and the time of each batch phase (fold,
  get_many, put_many), printed at the end.
* ``checkpoints/``, the :mod:`statekit.checkpoint` files (see Checkpoints).

Only the store's offset record decides what is committed. The other records are written
outside the batch transaction, so each is made consistent in its own way: the run-state file
is checked against the offset record on every start (and caught up, or set back, when they
disagree); failure records are written *before* the commit, so a crash can only leave extra
ones, and those are trimmed on resume; the tracker's counters are at-least-once ("work done,
including batches redone after a crash") and the summary says so next to the exact figures.

Checkpoints
-----------
While it runs, a :class:`~statekit.checkpoint.CheckpointCoordinator` writes a checkpoint of the
committed state into ``<state-dir>/checkpoints`` (the newest 5 are kept) after every
``--checkpoint-every`` committed batches of the run (5 by default), every
``--checkpoint-interval`` seconds (2 by default; a time-based safety net for slow batches),
and a final one when the run ends. The batch-based ones make the demo repeatable: with the
defaults, a crash after 400,000 events (20 batches) always leaves the checkpoints taken after
batches 5, 10 and 15, whatever the speed of the machine, and the crash message names the
newest one.
When a run starts on an unfinished stream (a crash, a lost lock, or a store that was lost and
starts empty) and checkpoints exist, the job first restores the newest one that verifies (a
corrupt one is kept aside as ``*.corrupt`` and the next older one is tried), then resumes from
the offset in the restored store, which is usually earlier than the one it had: the batches
since that checkpoint are redone.

A checkpoint holds exactly the keys under ``job:``: the aggregates (``job:agg:...``), the
offset record (``job:offset``) and the error records (``job:errors:...``). An SQLite snapshot
is one read transaction (it also sees what the second connection of the error records
committed) and every batch commits its aggregates and its offset in one transaction, so a
checkpoint is always the state after some whole batch, with the error records of at least those
batches (they are written before the commit); a restore (one transaction too) puts back
aggregates and an offset that agree, and a store restored after its file was lost still has
its error records. The tracker (``stream_job:...``) is deliberately outside that prefix: it
counts work done, which a restore does not undo, so the batches redone after a restore show up
as redone work. The files are reconciled as after any crash: the run-state file is set back to
the restored run, and failure-log lines at or past the restored offset are dropped (they are
written again when their batches are redone).

``--no-checkpoints`` turns checkpoints off. A ``memory://`` store takes none unless
``--checkpoint-interval`` or ``--checkpoint-every`` is given; they are then its only way to
survive a restart, so they hold the whole store, tracker included. A Redis store takes none,
since a Redis snapshot taken while the job commits is not point in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple
from urllib.parse import quote

from tqdm import tqdm

from statekit import KeyValueStore, create_store
from statekit.checkpoint import (
    CHECKPOINT_SUFFIX,
    CheckpointCoordinator,
    CheckpointOptions,
    CheckpointStats,
    scan_checkpoints,
)
from statekit.errors import (
    CheckpointFailed,
    ConfigError,
    CorruptData,
    LockExistsError,
    LockLost,
    RestoreFailed,
    StateError,
)
from statekit.locks import FileLock
from statekit.persistence import (
    PersistenceManager,
    StateTracker,
    create_persistence_manager,
    create_state_tracker,
)
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

# -- constants ---------------------------------------------------------------------------------

#: Exit codes (see the module docstring).
EXIT_MATCH: Final = 0
EXIT_MISMATCH: Final = 1
EXIT_REFUSED: Final = 2
EXIT_STORE_ERROR: Final = 3
CRASH_EXIT_CODE: Final = 70
EXIT_LOCKED: Final = 75  # EX_TEMPFAIL of sysexits.h: "try again later"

#: Event time of offset 0 (2024-01-01T00:00:00Z, in ms). Event ``i`` happens ``i`` ms later,
#: so the stream is in event-time order and 1,000,000 events span 1,000 s of event time.
EPOCH_MS: Final = 1_704_067_200_000

#: Store keys. The committed state (aggregates and offset record) lives under one prefix, which is
#: what the checkpoints hold. Aggregates sort by window, then key, so ``range_get("job:agg:")``
#: lists them in order and ``range_get("job:agg:000003:")`` lists one window.
STATE_PREFIX: Final = "job:"
AGG_PREFIX: Final = "job:agg:"
OFFSET_KEY: Final = "job:offset"
#: Where earlier versions of this example kept the aggregates (refused on resume, deleted by --reset).
OLD_AGG_PREFIX: Final = "agg:"
MAX_KEYS: Final = 100_000  # key ids are written with 5 digits
MAX_WINDOWS: Final = 1_000_000  # window numbers are written with 6 digits
#: Namespace of the StateTracker (``stream_job:counter:batches``, ...), outside the checkpoints.
JOB_NAME: Final = "stream_job"
#: Namespace of the PersistenceManager's error records (``job:errors:000000001234``): under
#: STATE_PREFIX, so in the checkpoints with the aggregates.
ERRORS_NAME: Final = "job"

#: Files in --state-dir besides the SQLite file.
LOCK_FILE: Final = "stream_job.lock"
RUN_STATE_FILE: Final = "run_state.json"
FAILURE_LOG_FILE: Final = "failures.log"
CHECKPOINT_DIR: Final = "checkpoints"
#: Seconds between checkpoints by default, committed batches between them, and how many are kept.
DEFAULT_CHECKPOINT_INTERVAL: Final = 2.0
DEFAULT_CHECKPOINT_EVERY: Final = 5
MAX_CHECKPOINTS: Final = 5

#: Failing events per 10,000 by default (0.05 %).
DEFAULT_FAILURE_RATE: Final = 5
RATE_SCALE: Final = 10_000
#: Tracker counters and timed phases, in the order the summary prints them.
COUNTERS: Final = ("batches", "events_processed", "events_failed")
PHASES: Final = ("fold", "get_many", "put_many")

# splitmix64 (Steele, Lea & Flood 2014): a counter stepped by the golden-ratio gamma, then mixed.
_MASK64: Final = (1 << 64) - 1
_GAMMA: Final = 0x9E3779B97F4A7C15
_MUL1: Final = 0xBF58476D1CE4E5B9
_MUL2: Final = 0x94D049BB133111EB

#: One aggregate as stored (JSON): {"count": .., "sum": .., "min": .., "max": ..}.
Aggregate = dict[str, int]
#: What one batch adds to an aggregate: (count, sum, min, max).
Delta = tuple[int, int, int, int]


def agg_key(window: int, key: int) -> str:
    """The store key of the aggregate of ``key`` in ``window``: ``job:agg:000003:00042``."""
    return f"{AGG_PREFIX}{window:06d}:{key:05d}"


# -- the synthetic stream ----------------------------------------------------------------------


def failure_threshold(failure_rate: int) -> int:
    """Events fail when bits 16..31 of their mixed value are below this.

    Those 16 bits are a uniform fraction ``u`` in ``[0, 1)`` (in steps of 1/65,536), independent
    of the key (bits 32..63) and the amount (bits 0..15); an event fails when ``u < rate /
    10,000``, so ``failure_rate`` is honoured to within 1/65,536 (5 gives 5.04 per 10,000).
    """
    return -(-failure_rate * 65_536 // RATE_SCALE)


@dataclass(frozen=True)
class JobParams:
    """What defines the stream and the aggregates. A resumed run must use the same values."""

    events: int
    keys: int
    seed: int
    window_seconds: int
    failure_rate: int = 0  # failing events per 10,000

    @property
    def window_ms(self) -> int:
        return self.window_seconds * 1000

    @property
    def windows(self) -> int:
        """How many windows the stream touches (the last one may be partial)."""
        return -(-self.events // self.window_ms)


class Event(NamedTuple):
    offset: int
    key: int  # 0 <= key < keys
    amount: int  # -100 <= amount < 900: a purchase or, when negative, a refund
    time_ms: int  # event time, ms since the Unix epoch
    fails: bool  # a "poison" event: rejected, left out of the aggregates, logged as a failure


def _mix64(z: int) -> int:
    """The splitmix64 finaliser: a bijection on 64-bit ints that scrambles every bit."""
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return z ^ (z >> 31)


def event_at(seed: int, offset: int, num_keys: int, failure_rate: int = 0) -> Event:
    """The event at ``offset``: computed directly, without replaying the stream before it."""
    z = _mix64((seed + (offset + 1) * _GAMMA) & _MASK64)  # the (offset + 1)-th splitmix64 output
    # The high 32 bits pick the key, the low 16 bits the amount, bits 16..31 whether it fails.
    return Event(
        offset,
        (z >> 32) % num_keys,
        (z & 0xFFFF) % 1000 - 100,
        EPOCH_MS + offset,
        (z >> 16) & 0xFFFF < -(-failure_rate * 65_536 // RATE_SCALE),  # failure_threshold, inlined
    )


def failure_reason(event: Event) -> str:
    """The error recorded for a failed event (what a real job would get from its validator)."""
    return f"key {event.key:05d}: poison event (amount {event.amount}) rejected by the synthetic failure rule"


class Batch(NamedTuple):
    deltas: dict[str, Delta]  # {agg_key: (count, sum, min, max)} of the events that did not fail
    failed: list[int]  # offsets of the events that failed, ascending


def fold_batch(params: JobParams, start: int, stop: int) -> Batch:
    """Events ``[start, stop)`` folded into ``{agg_key: (count, sum, min, max)}`` deltas.

    This is the job's hot loop, so it avoids per-event objects: event time is ``EPOCH_MS +
    offset``, which makes every window a contiguous range of offsets; within that range the
    loop only mixes the counter, sets failed events aside and appends the amount to the key's
    list, and the per-key statistics come from the C builtins ``len``/``sum``/``min``/``max``.
    It produces exactly what :func:`event_at` would (a unit test checks this).
    """
    deltas: dict[str, Delta] = {}
    failed: list[int] = []
    seed, num_keys, window_ms = params.seed, params.keys, params.window_ms
    threshold = failure_threshold(params.failure_rate)
    segment_start = start
    while segment_start < stop:
        window = segment_start // window_ms  # == (event time - EPOCH_MS) // window length
        segment_stop = min(stop, (window + 1) * window_ms)
        amounts: defaultdict[int, list[int]] = defaultdict(list)
        for offset in range(segment_start, segment_stop):
            z = _mix64((seed + (offset + 1) * _GAMMA) & _MASK64)
            if (z >> 16) & 0xFFFF < threshold:
                failed.append(offset)
                continue
            amounts[(z >> 32) % num_keys].append((z & 0xFFFF) % 1000 - 100)
        for key, values in amounts.items():
            deltas[agg_key(window, key)] = (len(values), sum(values), min(values), max(values))
        segment_start = segment_stop
    return Batch(deltas, failed)


def merge(current: Aggregate | None, delta: Delta) -> Aggregate:
    """The stored aggregate (None: not seen yet) updated with a batch's delta."""
    count, total, low, high = delta
    if current is None:
        return {"count": count, "sum": total, "min": low, "max": high}
    return {
        "count": current["count"] + count,
        "sum": current["sum"] + total,
        "min": min(current["min"], low),
        "max": max(current["max"], high),
    }


# -- the committed state -----------------------------------------------------------------------


class ResumeRefused(Exception):
    """The store holds state this run cannot safely continue."""


class Committed(NamedTuple):
    """What the offset record says is in the store (all zero for a fresh store)."""

    offset: int  # events [0, offset) are committed
    run: int  # how many batches ("runs") committed them: the last run number
    failed: int  # how many of those events failed (and are in the failure records)


def offset_record(params: JobParams, committed: Committed) -> dict[str, int]:
    """The ``job:offset`` value. ``offset`` counts the events whose effect is in the store: it is
    the last contiguously processed offset + 1, i.e. the next offset to read. ``run`` and
    ``failed`` are committed with it, so they are exact however often the job crashed."""
    return {
        "offset": committed.offset,
        "run": committed.run,
        "failed": committed.failed,
        "events_total": params.events,
        "keys": params.keys,
        "seed": params.seed,
        "window_seconds": params.window_seconds,
        "failure_rate": params.failure_rate,
    }


async def load_offset(store: KeyValueStore, params: JobParams) -> Committed:
    """Where to start: zeros for a fresh store, the committed offset record when resuming.

    Raises ResumeRefused when the stored state belongs to a job with other parameters (its
    aggregates would be meaningless mixed with ours) or has aggregates but no offset.
    """
    if await store.range_get(OLD_AGG_PREFIX, limit=1):
        raise ResumeRefused(
            f"the store holds aggregates under {OLD_AGG_PREFIX!r}, the layout of an earlier version of this "
            f"example (now {AGG_PREFIX!r}); pass --reset to start over"
        )
    record: Any = await store.get(OFFSET_KEY)
    if record is None:
        if await store.range_get(AGG_PREFIX, limit=1):
            raise ResumeRefused(
                f"the store holds aggregates but no {OFFSET_KEY!r} record, so it is not known which "
                "events they include; pass --reset to start over"
            )
        return Committed(0, 0, 0)
    expected = offset_record(params, Committed(0, 0, 0))
    fields = {
        "events_total": "--events",
        "keys": "--keys",
        "seed": "--seed",
        "window_seconds": "--window-seconds",
        "failure_rate": "--failure-rate",
    }
    if not isinstance(record, dict) or not all(
        isinstance(record.get(name), int) for name in ("offset", "run", "failed")
    ):
        raise ResumeRefused(f"{OFFSET_KEY!r} holds {record!r}, not an offset record; pass --reset")
    differences = [
        f"{option} {record.get(name)} (stored) vs {expected[name]} (this run)"
        for name, option in fields.items()
        if record.get(name) != expected[name]
    ]
    if differences:
        raise ResumeRefused(
            "refusing to resume: the stored state was written with different parameters: "
            + "; ".join(differences)
            + ". Rerun with the stored parameters, or pass --reset to discard the state and start over"
        )
    committed = Committed(record["offset"], record["run"], record["failed"])
    if not 0 <= committed.offset <= params.events:
        raise ResumeRefused(f"stored offset {committed.offset} is outside 0..{params.events}; pass --reset")
    if committed.run < 0 or not 0 <= committed.failed <= committed.offset:
        raise ResumeRefused(f"{OFFSET_KEY!r} holds impossible counts {record!r}; pass --reset")
    return committed


async def reset(store: KeyValueStore) -> int:
    """Delete the job's keys (and only those) in one call: one transaction on SQLite.

    That is the aggregates, the offset record, and the tracker's and error records' keys (and the
    aggregates of an earlier version of the example).
    """
    keys = [
        *await store.keys(STATE_PREFIX),
        *await store.keys(OLD_AGG_PREFIX),
        *await store.keys(f"{JOB_NAME}:"),
    ]
    return await store.delete_many(keys)


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


def checkpoint_ids(directory: Path) -> list[str]:
    """The ids of the checkpoint files in ``directory``, oldest first (damaged ones included)."""
    readable, unreadable = scan_checkpoints(directory)
    damaged = [path.name.removesuffix(CHECKPOINT_SUFFIX) for path, _ in unreadable]
    return sorted([info.id for info in readable] + damaged)


def remove_checkpoints(directory: Path) -> int:
    """Delete the checkpoint files of ``directory`` (for --reset); files kept aside stay."""
    ids = checkpoint_ids(directory)
    for checkpoint_id in ids:
        (directory / (checkpoint_id + CHECKPOINT_SUFFIX)).unlink(missing_ok=True)
    return len(ids)


async def restore_checkpoint(coordinator: CheckpointCoordinator, committed: Committed) -> str | None:
    """Restore the newest checkpoint that verifies; say which, and which newer ones were corrupt.

    Returns the restored id, or None when there is no checkpoint or none could be restored: the
    store is then left as it is, which is consistent on its own (a restore is one transaction).
    """
    directory = coordinator.checkpoint_dir
    before = checkpoint_ids(directory)
    if not before:
        return None
    at = f"at offset {committed.offset:,}" if committed.offset else "empty"
    print(
        f"checkpoints: {len(before)} in {directory}; the stream is unfinished (the store is {at}), so "
        "the newest valid checkpoint is restored before resuming",
        flush=True,
    )
    restored: str | None = None
    try:
        restored = await coordinator.restore_latest()
    except RestoreFailed as exc:
        print(f"warning: {exc}; resuming from the store as it is", file=sys.stderr, flush=True)
    for checkpoint_id in before:
        if restored is not None and checkpoint_id <= restored:
            continue
        if not (directory / (checkpoint_id + CHECKPOINT_SUFFIX)).exists():
            aside = sorted(path.name for path in directory.glob(f"{checkpoint_id}{CHECKPOINT_SUFFIX}.*"))
            print(
                f"checkpoint {checkpoint_id} failed verification: kept aside as "
                f"{aside[-1] if aside else '(could not be renamed)'}",
                flush=True,
            )
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


def error_id(offset: int) -> str:
    """The PersistenceManager item id of a failed event: its offset, zero-padded to sort."""
    return f"{offset:012d}"


# -- the job -----------------------------------------------------------------------------------


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
        self, start: int, stop: int, failed: list[int], *, fold: float, get: float
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
            self.tracker.record_processing_time("get_many", get),
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


def crash_now(
    offset: int, stop: int, *, computed: int, seconds: float, checkpoint: tuple[str, int] | None
) -> None:
    """Die like a killed process: no ``finally`` blocks, no store close, no lock release."""
    if checkpoint is not None:
        newest = f"; the newest checkpoint of this run is {checkpoint[0]} (offset {checkpoint[1]:,})"
    else:
        newest = "; this run took no batch checkpoint"
    print(
        f"simulating a crash after computing {computed:,} events in {seconds:.2f} s "
        f"({computed / seconds:,.0f} events/s): batch [{offset:,}, {stop:,}) has its failure records "
        f"written but is not committed; exiting hard with code {CRASH_EXIT_CODE}, the last commit is "
        f"offset {offset:,}{newest}",
        flush=True,
    )
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


async def process(
    store: KeyValueStore,
    params: JobParams,
    committed: Committed,
    book: Bookkeeping,
    *,
    batch_size: int,
    crash_after: int | None,
    progress: bool,
    checkpoints: BatchCheckpoints | None = None,
) -> Committed:
    """Consume events ``[committed.offset, params.events)`` in batches; return the last commit."""
    start = committed.offset
    began = time.perf_counter()
    with tqdm(
        total=params.events,
        initial=start,
        unit="ev",
        unit_scale=True,
        desc="events",
        disable=not progress,
        smoothing=0.1,
    ) as bar:
        while committed.offset < params.events:
            offset = committed.offset
            stop = min(offset + batch_size, params.events)
            # 1. Fold the batch locally: one entry per (window, key) the batch touches.
            t0 = time.perf_counter()
            deltas, failed = fold_batch(params, offset, stop)
            # 2. Read the current aggregates of exactly those keys, in one round trip.
            t1 = time.perf_counter()
            keys = list(deltas)
            current = await store.get_many(keys)
            t2 = time.perf_counter()
            # 3. Merge, and add the offset record that says "events before `stop` are in".
            updates: dict[str, Any] = {
                key: merge(old, deltas[key]) for key, old in zip(keys, current, strict=True)
            }
            batch = Committed(stop, committed.run + 1, committed.failed + len(failed))
            updates[OFFSET_KEY] = offset_record(params, batch)
            # 4. Failure records and the tracker's work counters, before the commit.
            await book.before_commit(offset, stop, failed, fold=t1 - t0, get=t2 - t1)
            if crash_after is not None and stop - start >= crash_after:
                bar.close()
                # Let the previous batch's run-state update land, so the demo is repeatable (a
                # real crash may leave the file one run behind: the next start catches it up).
                await book.settle()
                # The worst moment: the batch's work is done but not committed.
                crash_now(
                    offset,
                    stop,
                    computed=stop - start,
                    seconds=time.perf_counter() - began,
                    checkpoint=checkpoints.newest if checkpoints is not None else None,
                )
            book.check_lock()
            # 5. Commit aggregates and offset together: one put_many, one transaction.
            t3 = time.perf_counter()
            await store.put_many(updates)
            committed = batch
            # 6. Then the human-facing watermarks and the commit's timing.
            await book.after_commit(batch.run, put=time.perf_counter() - t3)
            bar.update(stop - offset)
            if checkpoints is not None:
                await checkpoints.after_commit(batch, params)
            # 7. Let the other tasks run (the periodic checkpoints): a store that answers without
            # suspending, like memory://, would otherwise never hand the event loop over.
            await asyncio.sleep(0)
    return committed


# -- verification ------------------------------------------------------------------------------


def expected_windows(params: JobParams, failed: list[int]) -> Iterator[tuple[int, dict[str, Aggregate]]]:
    """``(window, {agg_key: aggregate})`` for every window, recomputed from scratch.

    Deliberately a second, plain implementation: one :func:`event_at` per event, the window
    taken from the event time, the aggregate updated field by field; failing events are left
    out and their offsets appended to ``failed``. Events come in event-time order, so one
    window is held in memory at a time.
    """
    seed, num_keys, window_ms, rate = params.seed, params.keys, params.window_ms, params.failure_rate
    current_window = -1
    aggregates: dict[int, list[int]] = {}  # key -> [count, sum, min, max] in the current window
    for offset in range(params.events):
        _, key, amount, time_ms, fails = event_at(seed, offset, num_keys, rate)
        if fails:
            failed.append(offset)
            continue
        window = (time_ms - EPOCH_MS) // window_ms
        if window != current_window:
            if aggregates:
                yield current_window, _as_aggregates(current_window, aggregates)
            current_window, aggregates = window, {}
        agg = aggregates.get(key)
        if agg is None:
            aggregates[key] = [1, amount, amount, amount]
        else:
            agg[0] += 1
            agg[1] += amount
            if amount < agg[2]:
                agg[2] = amount
            if amount > agg[3]:
                agg[3] = amount
    if aggregates:
        yield current_window, _as_aggregates(current_window, aggregates)


def _as_aggregates(window: int, aggregates: dict[int, list[int]]) -> dict[str, Aggregate]:
    return {
        agg_key(window, key): {"count": c, "sum": s, "min": lo, "max": hi}
        for key, (c, s, lo, hi) in aggregates.items()
    }


@dataclass
class Verification:
    aggregates: int  # how many aggregates the recomputation expects
    events: int  # sum of the expected counts: every event of the stream that did not fail
    failed: int  # how many events the recomputation says fail
    problems: list[str]  # the first few differences, readable
    mismatched: int  # how many aggregates differ, are missing or are unexpected
    failure_problems: list[str]  # how the failure records differ from the recomputation

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 and not self.failure_problems


def _compare_offsets(what: str, found: list[int], expected: list[int]) -> list[str]:
    """Differences between the failed offsets ``found`` somewhere and the ``expected`` ones."""
    problems = []
    unique = set(found)
    if len(found) != len(unique):
        problems.append(f"{what}: {len(found) - len(unique):,} duplicate(s)")
    missing, unexpected = sorted(set(expected) - unique), sorted(unique - set(expected))
    if missing:
        problems.append(f"{what}: {len(missing):,} failed event(s) missing, first offset {missing[0]:,}")
    if unexpected:
        problems.append(f"{what}: {len(unexpected):,} unexpected event(s), first offset {unexpected[0]:,}")
    return problems


async def verify(
    store: KeyValueStore,
    params: JobParams,
    errors: PersistenceManager,
    failure_log: Path | None,
    *,
    show: int = 5,
) -> Verification:
    """Compare every stored aggregate with the recomputation, one window at a time; then the
    failure records (offset record, failure log, error records) with the recomputed failures."""
    result = Verification(aggregates=0, events=0, failed=0, problems=[], mismatched=0, failure_problems=[])

    def problem(text: str, count: int = 1) -> None:
        result.mismatched += count
        if len(result.problems) < show:
            result.problems.append(text)

    seen_in_windows = 0
    failed: list[int] = []
    for window, expected in expected_windows(params, failed):
        stored = dict(await store.range_get(f"{AGG_PREFIX}{window:06d}:"))
        seen_in_windows += len(stored)
        result.aggregates += len(expected)
        result.events += sum(agg["count"] for agg in expected.values())
        for key, want in expected.items():
            got = stored.pop(key, None)
            if got != want:
                problem(f"{key}: expected {want}, stored {got}")
        for key, got in stored.items():
            problem(f"{key}: not expected, stored {got}")
    # Aggregates outside every expected window (say, a window number past the end) are wrong too.
    outside = len(await store.keys(AGG_PREFIX)) - seen_in_windows
    if outside:
        problem(f"{outside} stored aggregates lie outside the stream's windows", count=outside)

    # The failures: counted in the offset record, listed in the failure log and the error records.
    result.failed = len(failed)
    record: Any = await store.get(OFFSET_KEY)
    counted = record.get("failed") if isinstance(record, dict) else None
    if counted != len(failed):
        result.failure_problems.append(
            f"offset record: counts {counted} failed events, expected {len(failed):,}"
        )
    if failure_log is not None:
        logged = parse_run_records_from_file(failure_log)
        result.failure_problems += _compare_offsets(f"failure log {failure_log.name}", logged, failed)
    records = await errors.get_failed_items(max_retries=1)
    result.failure_problems += _compare_offsets(
        "error records", [int(r["item_id"]) for r in records if r["item_id"].isdigit()], failed
    )
    wrong = [
        r["item_id"]
        for r in records
        if not r["item_id"].isdigit()
        or r["error"] != failure_reason(event_at(params.seed, int(r["item_id"]), params.keys))
    ]
    if wrong:
        result.failure_problems.append(
            f"error records: {len(wrong):,} with a wrong id or text, first {wrong[0]}"
        )
    return result


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


# -- command line ------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _rate(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= RATE_SCALE:
        raise argparse.ArgumentTypeError(f"must be between 0 and {RATE_SCALE:,} (per 10,000), got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tumbling-window aggregates of a synthetic event stream, kept in a statekit store "
        "and committed exactly once; verified against a recomputation at the end.",
        epilog=f"Exit codes: {EXIT_MATCH} MATCH, {EXIT_MISMATCH} MISMATCH, {EXIT_REFUSED} bad arguments or "
        f"refused resume, {EXIT_STORE_ERROR} store or state-file error, {CRASH_EXIT_CODE} simulated crash, "
        f"{EXIT_LOCKED} another instance holds the lock (or it was lost).",
    )
    parser.add_argument("--events", type=_positive_int, default=1_000_000, help="stream length")
    parser.add_argument("--keys", type=_positive_int, default=10_000, help="distinct keys (at most 100000)")
    parser.add_argument("--seed", type=int, default=20240101, help="stream seed")
    parser.add_argument("--batch-size", type=_positive_int, default=20_000, help="events per commit")
    parser.add_argument("--window-seconds", type=_positive_int, default=60, help="window length")
    parser.add_argument(
        "--failure-rate",
        type=_rate,
        default=DEFAULT_FAILURE_RATE,
        metavar="N",
        help=f"failing events per 10,000 (default {DEFAULT_FAILURE_RATE}, i.e. 0.05%%; 0 disables)",
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".statekit"), help="default: ./.statekit")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="store URL (default sqlite:///<abs state-dir>/stream.db; memory:// works but forgets on exit)",
    )
    parser.add_argument(
        "--crash-after",
        type=_positive_int,
        metavar="N",
        help=f"exit hard (code {CRASH_EXIT_CODE}) once about N events of this run are computed",
    )
    parser.add_argument(
        "--lock-check-interval",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how often the lock monitor checks the lock file (default 5)",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=_seconds,
        metavar="SECONDS",
        help=f"seconds between checkpoints into <state-dir>/{CHECKPOINT_DIR} (default "
        f"{DEFAULT_CHECKPOINT_INTERVAL:g}; a memory:// store takes checkpoints only when this or "
        "--checkpoint-every is given)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        metavar="BATCHES",
        help=f"also a checkpoint after every BATCHES batches committed by this run (default "
        f"{DEFAULT_CHECKPOINT_EVERY})",
    )
    parser.add_argument("--no-checkpoints", action="store_true", help="take no checkpoints and restore none")
    parser.add_argument(
        "--reset", action="store_true", help="delete the job's state (and its checkpoints) first"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.no_checkpoints and args.checkpoint_interval is not None:
        parser.error("--checkpoint-interval and --no-checkpoints exclude each other")
    if args.no_checkpoints and args.checkpoint_every is not None:
        parser.error("--checkpoint-every and --no-checkpoints exclude each other")
    if args.keys > MAX_KEYS:
        parser.error(f"--keys must be at most {MAX_KEYS}")
    if -(-args.events // (args.window_seconds * 1000)) > MAX_WINDOWS:
        parser.error(f"--events / --window-seconds gives more than {MAX_WINDOWS} windows")
    return args


async def run(args: argparse.Namespace) -> int:
    params = JobParams(
        events=args.events,
        keys=args.keys,
        seed=args.seed,
        window_seconds=args.window_seconds,
        failure_rate=args.failure_rate,
    )
    # sqlite:/// followed by the absolute path (quoted, in case it holds a space, "?" or "#").
    url: str = args.store or f"sqlite://{quote((args.state_dir.resolve() / 'stream.db').as_posix())}"
    print(
        f"stream job: {params.events:,} events over {params.keys:,} keys (seed {params.seed}), "
        f"{params.window_seconds} s windows ({params.windows} windows), batches of {args.batch_size:,}, "
        f"{params.failure_rate} failing events per 10,000; store {url}",
        flush=True,
    )
    async with create_store(url) as store, side_store(store, url) as side:
        coordinator, off = checkpoint_coordinator(store, args)
        if not store.backend.persistent:
            if args.crash_after is not None and coordinator is None:
                print("note: this store does not outlive the process, so the simulated crash loses all")
            print("note: no lock, run-state file or failure log for a store that dies with the process")
            return await run_locked(
                store, side, params, args, files=None, watch=None, checkpoints=(coordinator, off)
            )
        files = JobFiles.in_dir(args.state_dir)
        # The lock is taken before anything is read or changed, and held until the verification
        # is done; LockExistsError (another instance) propagates to main().
        with FileLock(files.lock) as lock:
            watch = LockWatch()
            lock.start_monitor(args.lock_check_interval, on_lost=watch.on_lost)
            print(
                f"lock {files.lock} held by pid {lock.get_pid()}; run state {files.run_state.name}, "
                f"failure log {files.failure_log.name}",
                flush=True,
            )
            return await run_locked(
                store, side, params, args, files=files, watch=watch, checkpoints=(coordinator, off)
            )


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


async def run_locked(
    store: KeyValueStore,
    side: KeyValueStore,
    params: JobParams,
    args: argparse.Namespace,
    *,
    files: JobFiles | None,
    watch: LockWatch | None,
    checkpoints: tuple[CheckpointCoordinator | None, str],
) -> int:
    began = time.perf_counter()
    coordinator, checkpoints_off = checkpoints
    if args.reset:
        deleted = await reset(store)
        removed = []
        for path in (files.run_state, files.failure_log) if files is not None else ():
            if path.exists():
                path.unlink()
                removed.append(path.name)
        if coordinator is not None and (count := remove_checkpoints(coordinator.checkpoint_dir)):
            removed.append(f"{count} checkpoint(s)")
        also = f" and removed {', '.join(removed)}" if removed else ""
        print(f"--reset: deleted {deleted:,} keys of a previous run{also}", flush=True)
    try:
        committed = await load_offset(store, params)
        # An unfinished stream (a crash, a lost lock, or an empty store that lost its file):
        # back to the newest checkpoint, then on from the offset it holds.
        if coordinator is not None and committed.offset < params.events:
            restored = await restore_checkpoint(coordinator, committed)
            if restored is not None:
                before, committed = committed, await load_offset(store, params)
                print(
                    f"restored checkpoint {restored}: the store is now at offset {committed.offset:,}, run "
                    f"{committed.run:,} (it was at offset {before.offset:,}, run {before.run:,}); "
                    f"{max(0, before.run - committed.run):,} committed batch(es) will be redone",
                    flush=True,
                )
    except ResumeRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if committed.offset == params.events:
        print(f"nothing to process: all {committed.offset:,} events are already committed", flush=True)
    elif committed.offset > 0:
        print(
            f"resuming at offset {committed.offset:,} (the events before it are committed, in "
            f"{committed.run:,} batches)",
            flush=True,
        )
    if files is not None:
        for note in (
            reconcile_run_state(files.run_state, committed),
            reconcile_failure_log(files.failure_log, committed),
        ):
            if note:
                print(note, flush=True)

    # Counters and error records live as long as the aggregates (by default the tracker's would
    # expire after 30 days and the error records after 24 hours): None is the store's default TTL, none here.
    tracker = await create_state_tracker(JOB_NAME, side, ttl=None)
    errors = await create_persistence_manager(ERRORS_NAME, side, error_ttl=None)
    book = Bookkeeping(params, tracker, errors, files, watch)
    every: int = args.checkpoint_every or DEFAULT_CHECKPOINT_EVERY
    processing_began = time.perf_counter()
    async with checkpointing(coordinator):
        try:
            final = await process(
                store,
                params,
                committed,
                book,
                batch_size=args.batch_size,
                crash_after=args.crash_after,
                progress=not args.no_progress and sys.stderr.isatty(),
                checkpoints=BatchCheckpoints(coordinator, every) if coordinator is not None else None,
            )
        finally:
            await book.settle()  # the last run-state update lands before the lock is let go, however we stop
        processing = time.perf_counter() - processing_began
    processed = final.offset - committed.offset
    rate = processed / processing if processing > 0 else 0.0
    print(f"processed {processed:,} events in {processing:.2f} s ({rate:,.0f} events/s)", flush=True)
    if processed:
        print(
            f"bookkeeping (tracker, error records, failure log, run-state file): {book.seconds:.2f} s "
            f"of the {processing:.2f} s",
            flush=True,
        )

    print("verifying: recomputing every aggregate from scratch and comparing with the store", flush=True)
    verify_began = time.perf_counter()
    check = await verify(store, params, errors, files.failure_log if files is not None else None)
    verifying = time.perf_counter() - verify_began
    summary = await tracker_summary(tracker, final)
    wall = time.perf_counter() - began

    print(
        f"verified {check.aggregates:,} aggregates in {params.windows} windows ({check.events:,} events, "
        f"{check.failed:,} failed events left out) against the recomputation in {verifying:.2f} s"
    )
    log = f" and the {files.failure_log.name} lines" if files is not None else ""
    if not check.failure_problems:
        print(
            f"failed events: the offset record's count, the error records{log} all list the {check.failed:,}"
        )
    print("\n".join(summary))
    print(checkpoint_summary(coordinator, checkpoints_off, every))
    print(
        f"this run: {processed:,} events processed at {rate:,.0f} events/s; wall time {wall:.2f} s "
        "(processing + verification)"
    )
    for text in check.problems + check.failure_problems:
        print(f"  wrong: {text}")
    if check.mismatched:
        print(f"MISMATCH: {check.mismatched:,} of {check.aggregates:,} aggregates are wrong")
        return EXIT_MISMATCH
    if check.failure_problems:
        print(
            f"MISMATCH: the aggregates are right, but {len(check.failure_problems)} check(s) of the "
            "failure records fail"
        )
        return EXIT_MISMATCH
    print(f"MATCH: all {check.aggregates:,} stored aggregates equal the recomputation")
    return EXIT_MATCH


def _lock_held_elsewhere(exc: LockExistsError) -> bool:
    """Whether a LockExistsError means "another holder" rather than "cannot take it at all".

    FileLock raises LockExistsError for both and says which in ``held``: False when the lock
    file cannot be opened or written, or the path holds something that is not a lock file.
    """
    return exc.held


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except ConfigError as exc:  # a bad --store URL: the message lists the valid choices
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except LockExistsError as exc:
        if not _lock_held_elsewhere(exc):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_STORE_ERROR
        print(f"error: another instance of the stream job is running, not starting: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except LockLost as exc:
        print(
            f"error: {exc}. Stopped before committing another batch; the committed state is consistent, "
            "run again to resume once no other instance is running",
            file=sys.stderr,
        )
        return EXIT_LOCKED
    except (StateError, OSError) as exc:  # the store failed: say what and where, without a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_STORE_ERROR
    except KeyboardInterrupt:
        print("interrupted; the last committed batch is safe, run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
