"""A crash-safe stream job on statekit: tumbling-window aggregates, committed exactly once.

The job reads a synthetic stream of events (a key, an integer amount and an event time) and
keeps, for every (window, key) pair, the count, sum, min and max of the amounts, in
60-second tumbling windows of event time. The aggregates live in a statekit store
(SQLite by default), so the job can be killed at any moment and started again::

    python -m demo.stream_job --crash-after 400000   # dies hard ~400,000 events into the run
    python -m demo.stream_job                        # resumes from the last commit

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
2. takes the current aggregates of the touched keys: the job holds the lock, so the ones it
   committed itself are still what the store holds, and it keeps those of the window it is in
   rather than reading them back; a window an earlier run had started is read once, with one
   ``range_get``, before the run's first batch,
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
  read, put_many), printed at the end.
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

Layout: :mod:`.job` (the stream, the windows, the batch loop and its commits),
:mod:`.bookkeeping` (lock, run-state file, failure log, tracker, checkpoints), :mod:`.verify`
(the recomputation) and :mod:`.cli` (arguments, printing, exit codes). Run it from the
repository root with ``python -m demo.stream_job`` (``--help`` lists the options).
"""

from __future__ import annotations

from .bookkeeping import MAX_CHECKPOINTS
from .cli import main, parse_args
from .job import (
    CRASH_EXIT_CODE,
    EPOCH_MS,
    EXIT_LOCKED,
    JobParams,
    agg_key,
    event_at,
    failure_threshold,
    fold_batch,
    merge,
)

__all__ = [
    "CRASH_EXIT_CODE",
    "EPOCH_MS",
    "EXIT_LOCKED",
    "MAX_CHECKPOINTS",
    "JobParams",
    "agg_key",
    "event_at",
    "failure_threshold",
    "fold_batch",
    "main",
    "merge",
    "parse_args",
]
