"""The verification: every aggregate and failure record recomputed from scratch and compared."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statekit import KeyValueStore
from statekit.persistence import PersistenceManager
from statekit.runs import parse_run_records_from_file

from .job import AGG_PREFIX, EPOCH_MS, OFFSET_KEY, Aggregate, JobParams, agg_key, event_at, failure_reason


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
