"""The Rust kernels of ``statekit._native`` against what the same job costs in Python.

* Runs: ``last_contiguous_run(last, successful)`` on 10^6 and 10^7 run numbers (the shuffled list
  ``last+1 .. last+10^6`` plus a few duplicates, and the same list missing the middle run) vs
  the plain-Python reference ``s = set(successful); while last + 1 in s: last += 1``. Both get
  the same Python list. Two layouts of that list, because they cost very differently (see the
  README): "shuffled objects" shuffles a list of int objects made in ascending order, so
  walking the list visits memory at random (run numbers collected as runs complete); "parsed"
  makes each int in list order (run numbers read from a file, a JSON document or a query).
  An informative row reads the same numbers from an ``array('q')`` (in place, no conversion).
* SHA-256 of a 64 MiB buffer vs ``hashlib.sha256(buf).hexdigest()`` (OpenSSL, SHA-NI here), and of a
  64 MiB file (page cache warm) vs ``hashlib.file_digest``.
* Framing: ``encode_records`` + ``decode_records`` of 100k ``(key, value, expires_at)`` records
  (16-byte keys, 100-byte values, half with an expiry) vs ``msgspec.msgpack`` encoding the same
  list of tuples and decoding it typed as ``list[tuple[bytes, bytes, float | None]]``, so both
  return the same Python objects. statekit also computes and checks a CRC-32 of the body;
  msgpack has no checksum.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from _support import SEED, describe, make_values, shuffled
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
sha_file_group = pytest.mark.benchmark(group="sha256: 64 MiB file (page cache)")


@pytest.fixture(scope="module")
def sha_buffer() -> bytes:
    return random.Random(SEED).randbytes(SHA_SIZE)


@pytest.fixture(scope="module")
def sha_file(sha_buffer: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sha") / "blob.bin"
    path.write_bytes(sha_buffer)
    return path


@sha_group
def test_statekit_sha256(benchmark: Any, sha_buffer: bytes) -> None:
    describe(benchmark, ops=SHA_SIZE // MIB, unit="MiB", targets={"baseline_hashlib_sha256": 0.9})
    digest = benchmark.pedantic(_native.sha256, args=(sha_buffer,), rounds=SHA_ROUNDS, warmup_rounds=1)
    assert digest == hashlib.sha256(sha_buffer).hexdigest()


@sha_group
def test_baseline_hashlib_sha256(benchmark: Any, sha_buffer: bytes) -> None:
    describe(benchmark, ops=SHA_SIZE // MIB, unit="MiB")
    benchmark.pedantic(
        lambda data: hashlib.sha256(data).hexdigest(), args=(sha_buffer,), rounds=SHA_ROUNDS, warmup_rounds=1
    )


@sha_file_group
def test_statekit_sha256_file(benchmark: Any, sha_file: Path, sha_buffer: bytes) -> None:
    describe(benchmark, ops=SHA_SIZE // MIB, unit="MiB")
    digest = benchmark.pedantic(_native.sha256_file, args=(sha_file,), rounds=SHA_ROUNDS, warmup_rounds=1)
    assert digest == hashlib.sha256(sha_buffer).hexdigest()


@sha_file_group
def test_baseline_hashlib_file_digest(benchmark: Any, sha_file: Path) -> None:
    def digest(path: Path) -> str:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    describe(benchmark, ops=SHA_SIZE // MIB, unit="MiB")
    benchmark.pedantic(digest, args=(sha_file,), rounds=SHA_ROUNDS, warmup_rounds=1)


# -- framing -------------------------------------------------------------------------------

N_RECORDS = 100_000
FRAMING_ROUNDS = 9
Record = tuple[bytes, bytes, float | None]

RECORDS: list[Record] = [
    (f"key:{i:012d}".encode(), value, 1_800_000_000.0 + i if i % 2 else None)
    for i, value in enumerate(make_values(N_RECORDS))
]
MSGPACK_ENCODER = msgspec.msgpack.Encoder()
MSGPACK_DECODER = msgspec.msgpack.Decoder(list[Record])
roundtrip_group = pytest.mark.benchmark(group="framing: encode + decode 100k records")
encode_group = pytest.mark.benchmark(group="framing: encode 100k records")
decode_group = pytest.mark.benchmark(group="framing: decode 100k records")


def statekit_roundtrip(records: list[Record]) -> list[Record]:
    decoded: list[Record] = _native.decode_records(_native.encode_records(records))
    return decoded


def msgpack_roundtrip(records: list[Record]) -> list[Record]:
    return MSGPACK_DECODER.decode(MSGPACK_ENCODER.encode(records))


@roundtrip_group
def test_statekit_framing_roundtrip(benchmark: Any) -> None:
    describe(benchmark, ops=N_RECORDS, unit="records", targets={"baseline_msgspec_msgpack_roundtrip": 1.0})
    out = benchmark.pedantic(statekit_roundtrip, args=(RECORDS,), rounds=FRAMING_ROUNDS, warmup_rounds=1)
    assert out == RECORDS


@roundtrip_group
def test_baseline_msgspec_msgpack_roundtrip(benchmark: Any) -> None:
    describe(benchmark, ops=N_RECORDS, unit="records")
    out = benchmark.pedantic(msgpack_roundtrip, args=(RECORDS,), rounds=FRAMING_ROUNDS, warmup_rounds=1)
    assert out == RECORDS


@encode_group
def test_statekit_framing_encode(benchmark: Any) -> None:
    describe(benchmark, ops=N_RECORDS, unit="records")
    benchmark.pedantic(_native.encode_records, args=(RECORDS,), rounds=FRAMING_ROUNDS, warmup_rounds=1)


@encode_group
def test_baseline_msgspec_msgpack_encode(benchmark: Any) -> None:
    describe(benchmark, ops=N_RECORDS, unit="records")
    benchmark.pedantic(MSGPACK_ENCODER.encode, args=(RECORDS,), rounds=FRAMING_ROUNDS, warmup_rounds=1)


@decode_group
def test_statekit_framing_decode(benchmark: Any) -> None:
    describe(benchmark, ops=N_RECORDS, unit="records")
    data = _native.encode_records(RECORDS)
    benchmark.pedantic(_native.decode_records, args=(data,), rounds=FRAMING_ROUNDS, warmup_rounds=1)


@decode_group
def test_baseline_msgspec_msgpack_decode(benchmark: Any) -> None:
    describe(benchmark, ops=N_RECORDS, unit="records")
    data = MSGPACK_ENCODER.encode(RECORDS)
    benchmark.pedantic(MSGPACK_DECODER.decode, args=(data,), rounds=FRAMING_ROUNDS, warmup_rounds=1)
