"""The Rust kernels of ``statekit._native`` against what the same job costs in Python.

* Runs: ``last_contiguous_run(last, successful)`` on 10^6 and 10^7 run numbers (the shuffled list
  ``last+1 .. last+10^6`` plus a few duplicates, and the same list missing the middle run) vs
  the plain-Python reference ``s = set(successful); while last + 1 in s: last += 1``. Both get
  the same Python list. Two layouts of that list, because they cost very differently (see the
  README): "shuffled objects" shuffles a list of int objects made in ascending order, so
  walking the list visits memory at random (run numbers collected as runs complete); "parsed"
  makes each int in list order (run numbers read from a file, a JSON document or a query).
  An informative row reads the same numbers from an ``array('q')`` (in place, no conversion).
* SHA-256 of a 64 MiB buffer fed to ``Sha256Hasher`` (what the storage backends hash streams with)
  vs ``hashlib.sha256(buf).hexdigest()`` (OpenSSL, SHA-NI here).
"""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Callable
from typing import Any

import pytest

from _support import SEED, describe, shuffled
from statekit import _native

# -- runs ----------------------------------------------------------------------------------

N_RUNS = 1_000_000
N_RUNS_LARGE = 10_000_000
LAST = 5_000_000
RUN_ROUNDS = 7
RUN_ROUNDS_LARGE = 3


def python_last_contiguous_run(last: int, successful: list[int]) -> int:
    """The plain-Python reference (the anchors' variant A)."""
    seen = set(successful)
    while last + 1 in seen:
        last += 1
    return last


def shuffled_objects(gap: bool, n: int = N_RUNS) -> list[int]:
    """``last+1 .. last+n`` (minus the middle run when ``gap``) plus 10 duplicates, shuffled."""
    runs = list(range(LAST + 1, LAST + n + 1))
    if gap:
        del runs[n // 2]
    return shuffled(runs + runs[:: n // 10])


def parsed(gap: bool) -> list[int]:
    """The same numbers in the same order, each int object created in list order."""
    return [int(str(run)) for run in shuffled_objects(gap)]


RUN_CASES: dict[str, tuple[Callable[[], list[int]], int, int]] = {
    "10^6 ints, contiguous, shuffled objects": (
        lambda: shuffled_objects(gap=False),
        LAST + N_RUNS,
        RUN_ROUNDS,
    ),
    "10^6 ints, gap in the middle, shuffled objects": (
        lambda: shuffled_objects(gap=True),
        LAST + N_RUNS // 2,
        RUN_ROUNDS,
    ),
    "10^6 ints, contiguous, parsed": (lambda: parsed(gap=False), LAST + N_RUNS, RUN_ROUNDS),
    "10^7 ints, contiguous, shuffled objects": (
        lambda: shuffled_objects(gap=False, n=N_RUNS_LARGE),
        LAST + N_RUNS_LARGE,
        RUN_ROUNDS_LARGE,
    ),
}


def _bench_runs(benchmark: Any, case: str, fn: Any, targets: dict[str, float] | None) -> None:
    build, expected, rounds = RUN_CASES[case]
    successful = build()
    describe(benchmark, ops=len(successful), unit="ints", targets=targets)
    result = benchmark.pedantic(fn, args=(LAST, successful), rounds=rounds, warmup_rounds=1)
    assert result == expected


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_statekit_last_contiguous_run(benchmark: Any, case: str) -> None:
    benchmark.group = f"runs: last_contiguous_run, {case}"
    _bench_runs(benchmark, case, _native.last_contiguous_run, {"baseline_python_set_while": 10.0})


@pytest.mark.parametrize(
    "case", ["10^6 ints, contiguous, shuffled objects", "10^7 ints, contiguous, shuffled objects"]
)
def test_statekit_last_contiguous_run_int64_array(benchmark: Any, case: str) -> None:
    """The same run numbers as an ``array('q')`` (a numpy int64 array is read the same way)."""
    benchmark.group = f"runs: last_contiguous_run, {case}"
    build, expected, rounds = RUN_CASES[case]
    successful = array("q", build())
    describe(benchmark, ops=len(successful), unit="ints", note="array('q'), read in place")
    result = benchmark.pedantic(
        _native.last_contiguous_run, args=(LAST, successful), rounds=rounds, warmup_rounds=1
    )
    assert result == expected


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_baseline_python_set_while(benchmark: Any, case: str) -> None:
    benchmark.group = f"runs: last_contiguous_run, {case}"
    _bench_runs(benchmark, case, python_last_contiguous_run, None)


# -- SHA-256 -------------------------------------------------------------------------------

MIB = 1 << 20
SHA_SIZE = 64 * MIB
SHA_ROUNDS = 9
sha_group = pytest.mark.benchmark(group="sha256: 64 MiB buffer")


@pytest.fixture(scope="module")
def sha_buffer() -> bytes:
    return random.Random(SEED).randbytes(SHA_SIZE)


def hasher_digest(data: bytes) -> str:
    hasher = _native.Sha256Hasher()
    hasher.update(data)
    return hasher.hexdigest()


@sha_group
def test_statekit_sha256(benchmark: Any, sha_buffer: bytes) -> None:
    describe(benchmark, ops=SHA_SIZE // MIB, unit="MiB", targets={"baseline_hashlib_sha256": 0.9})
    digest = benchmark.pedantic(hasher_digest, args=(sha_buffer,), rounds=SHA_ROUNDS, warmup_rounds=1)
    assert digest == hashlib.sha256(sha_buffer).hexdigest()


@sha_group
def test_baseline_hashlib_sha256(benchmark: Any, sha_buffer: bytes) -> None:
    describe(benchmark, ops=SHA_SIZE // MIB, unit="MiB")
    benchmark.pedantic(
        lambda data: hashlib.sha256(data).hexdigest(), args=(sha_buffer,), rounds=SHA_ROUNDS, warmup_rounds=1
    )
