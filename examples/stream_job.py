#!/usr/bin/env python3
"""A crash-safe stream job on statekit: tumbling-window aggregates, committed exactly once.

The job reads a synthetic stream of events (a key, an integer amount and an event time) and
keeps, for every (window, key) pair, the count, sum, min and max of the amounts, in
60-second tumbling windows of event time. The aggregates live in a statekit store
(SQLite by default), so the job can be killed at any moment and started again::

    python examples/stream_job.py --crash-after 400000   # dies hard ~400,000 events into the run
    python examples/stream_job.py                        # resumes from the last commit

(``--crash-after N`` counts the events of the current run). Every run ends by recomputing
every aggregate from scratch, comparing them with the store and printing ``MATCH`` (exit
code 0) or ``MISMATCH`` (exit code 1).

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
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple
from urllib.parse import quote

from tqdm import tqdm

from statekit import KeyValueStore, create_store
from statekit.errors import ConfigError, StateError

# -- constants ---------------------------------------------------------------------------------

#: Exit codes: 0 MATCH, 1 MISMATCH, 2 bad arguments or a refused resume, 3 a store error, and
#: 70 for the simulated crash of ``--crash-after``.
EXIT_MATCH: Final = 0
EXIT_MISMATCH: Final = 1
EXIT_REFUSED: Final = 2
EXIT_STORE_ERROR: Final = 3
CRASH_EXIT_CODE: Final = 70

#: Event time of offset 0 (2024-01-01T00:00:00Z, in ms). Event ``i`` happens ``i`` ms later,
#: so the stream is in event-time order and 1,000,000 events span 1,000 s of event time.
EPOCH_MS: Final = 1_704_067_200_000

#: Store keys. Aggregates sort by window, then key, so ``range_get("agg:")`` lists them in order
#: and ``range_get("agg:000003:")`` lists one window.
AGG_PREFIX: Final = "agg:"
OFFSET_KEY: Final = "job:offset"
MAX_KEYS: Final = 100_000  # key ids are written with 5 digits
MAX_WINDOWS: Final = 1_000_000  # window numbers are written with 6 digits

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
    """The store key of the aggregate of ``key`` in ``window``: ``agg:000003:00042``."""
    return f"{AGG_PREFIX}{window:06d}:{key:05d}"


# -- the synthetic stream ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobParams:
    """What defines the stream and the aggregates. A resumed run must use the same values."""

    events: int
    keys: int
    seed: int
    window_seconds: int

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


def _mix64(z: int) -> int:
    """The splitmix64 finaliser: a bijection on 64-bit ints that scrambles every bit."""
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return z ^ (z >> 31)


def event_at(seed: int, offset: int, num_keys: int) -> Event:
    """The event at ``offset``: computed directly, without replaying the stream before it."""
    z = _mix64((seed + (offset + 1) * _GAMMA) & _MASK64)  # the (offset + 1)-th splitmix64 output
    # The high 32 bits pick the key, the low 16 bits the amount.
    return Event(offset, (z >> 32) % num_keys, (z & 0xFFFF) % 1000 - 100, EPOCH_MS + offset)


def fold_batch(params: JobParams, start: int, stop: int) -> dict[str, Delta]:
    """Events ``[start, stop)`` folded into ``{agg_key: (count, sum, min, max)}`` deltas.

    This is the job's hot loop, so it avoids per-event objects: event time is ``EPOCH_MS +
    offset``, which makes every window a contiguous range of offsets; within that range the
    loop only mixes the counter and appends the amount to the key's list, and the per-key
    statistics come from the C builtins ``len``/``sum``/``min``/``max``. It produces exactly
    what :func:`event_at` would (a unit test checks this).
    """
    deltas: dict[str, Delta] = {}
    seed, num_keys, window_ms = params.seed, params.keys, params.window_ms
    segment_start = start
    while segment_start < stop:
        window = segment_start // window_ms  # == (event time - EPOCH_MS) // window length
        segment_stop = min(stop, (window + 1) * window_ms)
        amounts: defaultdict[int, list[int]] = defaultdict(list)
        for offset in range(segment_start, segment_stop):
            z = _mix64((seed + (offset + 1) * _GAMMA) & _MASK64)
            amounts[(z >> 32) % num_keys].append((z & 0xFFFF) % 1000 - 100)
        for key, values in amounts.items():
            deltas[agg_key(window, key)] = (len(values), sum(values), min(values), max(values))
        segment_start = segment_stop
    return deltas


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


# -- the job -----------------------------------------------------------------------------------


class ResumeRefused(Exception):
    """The store holds state this run cannot safely continue."""


def offset_record(params: JobParams, offset: int) -> dict[str, int]:
    """The ``job:offset`` value. ``offset`` counts the events whose effect is in the store: it is
    the last contiguously processed offset + 1, i.e. the next offset to read."""
    return {
        "offset": offset,
        "events_total": params.events,
        "keys": params.keys,
        "seed": params.seed,
        "window_seconds": params.window_seconds,
    }


async def load_offset(store: KeyValueStore, params: JobParams) -> int:
    """Where to start: 0 for a fresh store, the committed offset when resuming.

    Raises ResumeRefused when the stored state belongs to a job with other parameters (its
    aggregates would be meaningless mixed with ours) or has aggregates but no offset.
    """
    record: Any = await store.get(OFFSET_KEY)
    if record is None:
        if await store.range_get(AGG_PREFIX, limit=1):
            raise ResumeRefused(
                f"the store holds aggregates but no {OFFSET_KEY!r} record, so it is not known which "
                "events they include; pass --reset to start over"
            )
        return 0
    expected = offset_record(params, 0)
    fields = {
        "events_total": "--events",
        "keys": "--keys",
        "seed": "--seed",
        "window_seconds": "--window-seconds",
    }
    if not isinstance(record, dict) or not isinstance(record.get("offset"), int):
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
    offset: int = record["offset"]
    if not 0 <= offset <= params.events:
        raise ResumeRefused(f"stored offset {offset} is outside 0..{params.events}; pass --reset")
    return offset


async def reset(store: KeyValueStore) -> int:
    """Delete the job's keys (and only those) in one call: one transaction on SQLite."""
    keys = [*await store.keys(AGG_PREFIX), OFFSET_KEY]
    return await store.delete_many(keys)


def crash_now(offset: int, stop: int, *, computed: int, seconds: float) -> None:
    """Die like a killed process: no ``finally`` blocks, no store close, no flushing by Python."""
    print(
        f"simulating a crash after computing {computed:,} events in {seconds:.2f} s "
        f"({computed / seconds:,.0f} events/s): batch [{offset:,}, {stop:,}) is not written; "
        f"exiting hard with code {CRASH_EXIT_CODE}, the last commit is offset {offset:,}",
        flush=True,
    )
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


async def process(
    store: KeyValueStore,
    params: JobParams,
    start: int,
    *,
    batch_size: int,
    crash_after: int | None,
    progress: bool,
) -> int:
    """Consume events ``[start, params.events)`` in batches; return how many were processed."""
    offset = start
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
        while offset < params.events:
            stop = min(offset + batch_size, params.events)
            # 1. Fold the batch locally: one entry per (window, key) the batch touches.
            deltas = fold_batch(params, offset, stop)
            # 2. Read the current aggregates of exactly those keys, in one round trip.
            keys = list(deltas)
            current = await store.get_many(keys)
            # 3. Merge, and add the offset record that says "events before `stop` are in".
            updates: dict[str, Any] = {
                key: merge(old, deltas[key]) for key, old in zip(keys, current, strict=True)
            }
            updates[OFFSET_KEY] = offset_record(params, stop)
            if crash_after is not None and stop - start >= crash_after:
                bar.close()
                # The worst moment: the batch's work is done but not committed.
                crash_now(offset, stop, computed=stop - start, seconds=time.perf_counter() - began)
            # 4. Commit aggregates and offset together: one put_many, one transaction.
            await store.put_many(updates)
            bar.update(stop - offset)
            offset = stop
    return offset - start


# -- verification ------------------------------------------------------------------------------


def expected_windows(params: JobParams) -> Iterator[tuple[int, dict[str, Aggregate]]]:
    """``(window, {agg_key: aggregate})`` for every window, recomputed from scratch.

    Deliberately a second, plain implementation: one :func:`event_at` per event, the window
    taken from the event time, the aggregate updated field by field. Events come in event-time
    order, so one window is held in memory at a time.
    """
    seed, num_keys, window_ms = params.seed, params.keys, params.window_ms
    current_window = -1
    aggregates: dict[int, list[int]] = {}  # key -> [count, sum, min, max] in the current window
    for offset in range(params.events):
        _, key, amount, time_ms = event_at(seed, offset, num_keys)
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
    events: int  # sum of the expected counts: every event of the stream
    problems: list[str]  # the first few differences, readable
    mismatched: int  # how many aggregates differ, are missing or are unexpected

    @property
    def ok(self) -> bool:
        return self.mismatched == 0


async def verify(store: KeyValueStore, params: JobParams, *, show: int = 5) -> Verification:
    """Compare every stored aggregate with the recomputation, one window at a time."""
    result = Verification(aggregates=0, events=0, problems=[], mismatched=0)

    def problem(text: str, count: int = 1) -> None:
        result.mismatched += count
        if len(result.problems) < show:
            result.problems.append(text)

    seen_in_windows = 0
    for window, expected in expected_windows(params):
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
    return result


# -- command line ------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tumbling-window aggregates of a synthetic event stream, kept in a statekit store "
        "and committed exactly once; verified against a recomputation at the end.",
    )
    parser.add_argument("--events", type=_positive_int, default=1_000_000, help="stream length")
    parser.add_argument("--keys", type=_positive_int, default=10_000, help="distinct keys (at most 100000)")
    parser.add_argument("--seed", type=int, default=20240101, help="stream seed")
    parser.add_argument("--batch-size", type=_positive_int, default=20_000, help="events per commit")
    parser.add_argument("--window-seconds", type=_positive_int, default=60, help="window length")
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
    parser.add_argument("--reset", action="store_true", help="delete the job's state first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.keys > MAX_KEYS:
        parser.error(f"--keys must be at most {MAX_KEYS}")
    if -(-args.events // (args.window_seconds * 1000)) > MAX_WINDOWS:
        parser.error(f"--events / --window-seconds gives more than {MAX_WINDOWS} windows")
    return args


async def run(args: argparse.Namespace) -> int:
    params = JobParams(events=args.events, keys=args.keys, seed=args.seed, window_seconds=args.window_seconds)
    # sqlite:/// followed by the absolute path (quoted, in case it holds a space, "?" or "#").
    url: str = args.store or f"sqlite://{quote((args.state_dir.resolve() / 'stream.db').as_posix())}"
    print(
        f"stream job: {params.events:,} events over {params.keys:,} keys (seed {params.seed}), "
        f"{params.window_seconds} s windows ({params.windows} windows), batches of {args.batch_size:,}; "
        f"store {url}",
        flush=True,
    )
    began = time.perf_counter()
    async with create_store(url) as store:
        if args.crash_after is not None and not store.backend.persistent:
            print("note: this store does not outlive the process, so the simulated crash loses everything")
        if args.reset:
            print(f"--reset: deleted {await reset(store):,} keys of a previous run", flush=True)
        try:
            start = await load_offset(store, params)
        except ResumeRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if start == params.events:
            print(f"nothing to process: all {start:,} events are already committed", flush=True)
        elif start > 0:
            print(f"resuming at offset {start:,} (the events before it are committed)", flush=True)

        processing_began = time.perf_counter()
        processed = await process(
            store,
            params,
            start,
            batch_size=args.batch_size,
            crash_after=args.crash_after,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
        processing = time.perf_counter() - processing_began
        rate = processed / processing if processing > 0 else 0.0
        print(f"processed {processed:,} events in {processing:.2f} s ({rate:,.0f} events/s)", flush=True)

        print("verifying: recomputing every aggregate from scratch and comparing with the store", flush=True)
        verify_began = time.perf_counter()
        check = await verify(store, params)
        verifying = time.perf_counter() - verify_began
    wall = time.perf_counter() - began

    print(
        f"verified {check.aggregates:,} aggregates in {params.windows} windows ({check.events:,} events) "
        f"against the recomputation in {verifying:.2f} s"
    )
    print(
        f"this run: {processed:,} events processed at {rate:,.0f} events/s; wall time {wall:.2f} s "
        "(processing + verification)"
    )
    for text in check.problems:
        print(f"  wrong: {text}")
    if not check.ok:
        print(f"MISMATCH: {check.mismatched:,} of {check.aggregates:,} aggregates are wrong")
        return EXIT_MISMATCH
    print(f"MATCH: all {check.aggregates:,} stored aggregates equal the recomputation")
    return EXIT_MATCH


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except ConfigError as exc:  # a bad --store URL: the message lists the valid choices
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (StateError, OSError) as exc:  # the store failed: say what and where, without a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_STORE_ERROR
    except KeyboardInterrupt:
        print("interrupted; the last committed batch is safe, run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
