"""The job itself: the synthetic stream, its tumbling windows, the batch loop and its commits.

See the package docstring (``demo/stream_job/__init__.py``) for how exactly-once works.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from tqdm import tqdm

from statekit import KeyValueStore

if TYPE_CHECKING:
    from .bookkeeping import BatchCheckpoints, Bookkeeping

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

#: Failing events per 10,000 by default (0.05 %).
DEFAULT_FAILURE_RATE: Final = 5
RATE_SCALE: Final = 10_000

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

    This is the job's hot loop, so it avoids per-event objects and calls: event time is
    ``EPOCH_MS + offset``, which makes every window a contiguous range of offsets; within that
    range the loop steps the splitmix64 counter by one addition and mixes it inline (the body of
    :func:`_mix64`), sets failed events aside and appends the amount (plus 100, taken off once
    per key) to the key's list; the per-key statistics come from the C builtins
    ``len``/``sum``/``min``/``max``. It produces exactly what :func:`event_at` would (a unit test
    checks this).
    """
    deltas: dict[str, Delta] = {}
    failed: list[int] = []
    seed, num_keys, window_ms = params.seed, params.keys, params.window_ms
    # Bits 16..31 below the threshold, tested without shifting them down first.
    threshold = failure_threshold(params.failure_rate) << 16
    mask, gamma, mul1, mul2 = _MASK64, _GAMMA, _MUL1, _MUL2
    key_texts = _key_texts(num_keys)
    segment_start = start
    while segment_start < stop:
        window = segment_start // window_ms  # == (event time - EPOCH_MS) // window length
        segment_stop = min(stop, (window + 1) * window_ms)
        amounts: defaultdict[int, list[int]] = defaultdict(list)
        counter = (seed + segment_start * gamma) & mask  # one step before offset segment_start
        for offset in range(segment_start, segment_stop):
            counter = (counter + gamma) & mask  # == (seed + (offset + 1) * gamma) & mask
            z = ((counter ^ (counter >> 30)) * mul1) & mask
            z = ((z ^ (z >> 27)) * mul2) & mask
            z ^= z >> 31
            if z & 0xFFFF0000 < threshold:
                failed.append(offset)
                continue
            amounts[(z >> 32) % num_keys].append((z & 0xFFFF) % 1000)
        prefix = f"{AGG_PREFIX}{window:06d}:"
        for key, values in amounts.items():
            n = len(values)
            deltas[prefix + key_texts[key]] = (n, sum(values) - 100 * n, min(values) - 100, max(values) - 100)
        segment_start = segment_stop
    return Batch(deltas, failed)


@functools.cache
def _key_texts(num_keys: int) -> tuple[str, ...]:
    """The 5-digit key ids of :func:`agg_key`, formatted once per job instead of once per batch."""
    return tuple(f"{key:05d}" for key in range(num_keys))


def merge(current: Aggregate | None, delta: Delta) -> Aggregate:
    """The stored aggregate (None: not seen yet) updated with a batch's delta."""
    count, total, low, high = delta
    if current is None:
        return {"count": count, "sum": total, "min": low, "max": high}
    # Conditional expressions rather than min()/max(): two calls fewer per key and batch.
    old_low, old_high = current["min"], current["max"]
    return {
        "count": current["count"] + count,
        "sum": current["sum"] + total,
        "min": low if low < old_low else old_low,
        "max": high if high > old_high else old_high,
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


def error_id(offset: int) -> str:
    """The PersistenceManager item id of a failed event: its offset, zero-padded to sort."""
    return f"{offset:012d}"


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


class _Known:
    """The aggregates this run committed in one window: what a read of their keys would return.

    The job holds the lock, so it is the store's only writer: an aggregate it committed is still
    the stored value when the next batch touches the same key, and reading it back would only
    cost a round trip and a decode. Events come in event-time order, so a batch touches the last
    window of the previous batch and later ones; only that window is kept. A window that began
    before this run's first offset may hold aggregates written by an earlier run, so it is read
    from the store once (one ``range_get``) before the run touches it; every later window starts
    empty. So the merge sees exactly the values a ``get_many`` of the touched keys would return.
    """

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.window = -1
        self.aggregates: dict[str, Aggregate] = {}

    async def load_partial_window(self, store: KeyValueStore, start: int) -> None:
        """Before the first batch: the window of ``start``, if an earlier run wrote part of it."""
        if start % self.window_ms:
            self.window = start // self.window_ms
            self.aggregates = dict(await store.range_get(f"{AGG_PREFIX}{self.window:06d}:"))

    def current(self, keys: list[str]) -> list[Aggregate | None]:
        """The stored aggregate of each key (None: not stored), for keys in ``self.window`` or later."""
        return list(map(self.aggregates.get, keys))

    def committed(self, updates: dict[str, Any], start: int, stop: int) -> None:
        """Batch ``[start, stop)`` is committed: keep the aggregates of its last window."""
        last = (stop - 1) // self.window_ms
        if last != self.window:
            self.window, self.aggregates = last, {}
        if start // self.window_ms == last:  # one window (the usual case): every update but the offset
            self.aggregates.update(updates)
            self.aggregates.pop(OFFSET_KEY, None)
        else:
            prefix = f"{AGG_PREFIX}{last:06d}:"
            self.aggregates.update((k, v) for k, v in updates.items() if k.startswith(prefix))


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
    known = _Known(params.window_ms)
    await known.load_partial_window(store, start)
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
            # 2. The current aggregates of exactly those keys (see _Known: the ones this run
            # committed, as a read would return them).
            t1 = time.perf_counter()
            keys = list(deltas)
            current = known.current(keys)
            t2 = time.perf_counter()
            # 3. Merge, and add the offset record that says "events before `stop` are in".
            updates: dict[str, Any] = dict(zip(keys, map(merge, current, deltas.values()), strict=True))
            batch = Committed(stop, committed.run + 1, committed.failed + len(failed))
            updates[OFFSET_KEY] = offset_record(params, batch)
            # 4. Failure records and the tracker's work counters, before the commit.
            await book.before_commit(offset, stop, failed, fold=t1 - t0, read=t2 - t1)
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
            known.committed(updates, offset, stop)
            # 6. Then the human-facing watermarks and the commit's timing.
            await book.after_commit(batch.run, put=time.perf_counter() - t3)
            bar.update(stop - offset)
            if checkpoints is not None:
                await checkpoints.after_commit(batch, params)
            # 7. Let the other tasks run (the periodic checkpoints): a store that answers without
            # suspending, like memory://, would otherwise never hand the event loop over.
            await asyncio.sleep(0)
    return committed
