"""Where the stream job's time goes: a py-spy profile of ``python -m demo.stream_job``, bucketed.

Usage (py-spy is not a dependency: ``pip install py-spy``)::

    py-spy record --threads --idle -r 250 -f raw -o job.raw -- \\
        .venv/bin/python -m demo.stream_job --state-dir /tmp/sj --no-progress
    .venv/bin/python benches/stream_job_profile.py job.raw --rate 250

``-f raw`` writes one line per distinct stack, ``thread;frame;...;frame count``. Every sample of
the processing phase (the verification and the summary are left out) goes to the bucket of its
innermost frame that a rule below recognises; the seconds are samples / rate, per thread. With
``--idle`` the samples where a thread waits are kept: the event loop waiting in ``select`` is the
job waiting for the store's thread, the other threads' waits are dropped.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

#: (substring of a frame, bucket), for the event loop's thread; the first rule matching the
#: innermost recognised frame wins.
MAIN_RULES = (
    ("checkpoint", "checkpoints"),
    ("Checkpoint", "checkpoints"),
    ("fold_batch", "fold: the event generator"),
    ("merge (", "merge"),
    ("_Known", "read: the job's window"),
    ("get_many", "read: get_many + decode"),
    ("encode", "encode values (JSON)"),
    ("MemoryStateBackend", "memory backend"),
    ("SqliteStateBackend", "SQLite backend (hand-off to its thread)"),
    ("put_many", "store.put_many: keys, checks"),
    ("Bookkeeping", "bookkeeping (tracker, error records)"),
    ("process (", "process: loop, offset record"),
)
#: The same for the other threads (the SQLite backends' workers, asyncio's default executor).
WORKER_RULES = (
    ("_export", "checkpoint export"),
    ("snapshot", "checkpoint write"),
    ("_batch_put", "SQLite: batch write + commit"),
    ("_batch_get", "SQLite: read"),
    ("_range", "SQLite: range read"),
    ("advance_watermarks", "run-state file (fsynced writes)"),
    ("append_to_failure_log", "failure log"),
    ("incr", "tracker / error records"),
    ("_put", "tracker / error records"),
    ("call_soon_threadsafe", "waking the event loop (GIL hand-back)"),
)
IDLE = re.compile(r"select \(selectors|\.wait \(threading|_worker \(concurrent|get \(queue")
OUTSIDE_PROCESSING = ("verify (", "tracker_summary", "expected_windows")


def bucket(frames: list[str], rules: tuple[tuple[str, str], ...], default: str) -> str:
    for frame in reversed(frames):
        for needle, name in rules:
            if needle in frame:
                return name
    return default


def summarise(lines: list[str]) -> dict[str, Counter[str]]:
    """Samples per thread and bucket."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        if not frames:
            continue
        name = re.sub(r"^thread \(\d+\):? ?", "", thread) or "MainThread"
        name = re.sub(r"_\d+$", "", name)  # statekit-sqlite_0 -> statekit-sqlite
        idle = IDLE.search(frames[-1]) is not None
        if name == "MainThread":
            text = ";".join(frames)
            if "run_until_complete" not in text or any(s in text for s in OUTSIDE_PROCESSING):
                continue  # start-up, imports, verification
            what = (
                "idle: waiting for the store's thread" if idle else bucket(frames, MAIN_RULES, "event loop")
            )
        elif idle:
            continue
        else:
            # A thread running native code only: the checkpoint file (snapshot_write, in Rust).
            native = frames[-1].startswith("_WorkItem.run")
            what = bucket(frames, WORKER_RULES, "native code (the checkpoint file)" if native else "other")
        out[name][what] += int(count)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path, help="file written by py-spy record -f raw")
    parser.add_argument("--rate", type=float, default=100.0, help="py-spy's -r (samples per second)")
    args = parser.parse_args(argv)
    try:
        lines = args.raw.read_text().splitlines()
    except OSError as exc:
        print(f"cannot read {args.raw}: {exc}", file=sys.stderr)
        return 1
    out = []
    for thread, buckets in summarise(lines).items():
        total = sum(buckets.values()) / args.rate
        if total < 0.02:
            continue
        out.append(f"{thread}: {total:.2f} s")
        out += [
            f"  {n / args.rate:7.2f} s  {what}" for what, n in buckets.most_common() if n / args.rate >= 0.01
        ]
    try:
        print("\n".join(out))
    except BrokenPipeError:  # piped into head & co.
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
