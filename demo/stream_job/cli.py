"""The command line: arguments, the run from lock to verdict, what is printed, the exit codes."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from statekit import KeyValueStore, create_store
from statekit.checkpoint import CheckpointCoordinator
from statekit.errors import ConfigError, LockExistsError, LockLost, StateError
from statekit.locks import FileLock
from statekit.persistence import create_persistence_manager, create_state_tracker

from .bookkeeping import (
    CHECKPOINT_DIR,
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_CHECKPOINT_INTERVAL,
    BatchCheckpoints,
    Bookkeeping,
    JobFiles,
    LockWatch,
    checkpoint_coordinator,
    checkpoint_summary,
    checkpointing,
    reconcile_failure_log,
    reconcile_run_state,
    remove_checkpoints,
    restore_checkpoint,
    side_store,
    tracker_summary,
)
from .job import (
    CRASH_EXIT_CODE,
    DEFAULT_FAILURE_RATE,
    ERRORS_NAME,
    EXIT_LOCKED,
    EXIT_MATCH,
    EXIT_MISMATCH,
    EXIT_REFUSED,
    EXIT_STORE_ERROR,
    JOB_NAME,
    MAX_KEYS,
    MAX_WINDOWS,
    RATE_SCALE,
    JobParams,
    ResumeRefused,
    load_offset,
    process,
    reset,
)
from .verify import verify


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
        if coordinator is not None and (count := remove_checkpoints(coordinator)):
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
