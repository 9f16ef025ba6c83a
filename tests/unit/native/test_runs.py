"""Run watermarks: the Rust core against the Python reference."""

from __future__ import annotations

import random
import subprocess
import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import _native
from tests.unit.native import reference

I64_MIN, I64_MAX = -(2**63), 2**63 - 1

lasts = st.integers(-50, 50)
runs_near = st.lists(st.integers(-60, 120), max_size=80)
i64s = st.integers(I64_MIN, I64_MAX)


def test_documented_examples() -> None:
    assert _native.last_contiguous_run(100, [101, 102, 103]) == 103
    assert _native.last_contiguous_run(103, [104, 106, 107]) == 104
    assert _native.last_contiguous_run(104, [107, 108, 109]) == 104
    assert _native.max_attempted_run(5, []) == 5
    assert _native.max_attempted_run(5, [3, 9, 1]) == 9
    assert _native.run_gaps(100, [101, 103, 106], 107) == [102, 104, 105, 107]


def test_empty_duplicates_unordered_negative() -> None:
    assert _native.last_contiguous_run(7, []) == 7
    assert _native.last_contiguous_run(0, [2, 1, 1, 2, 3, 3]) == 3
    assert _native.last_contiguous_run(-3, [0, -1, -2, -10, 5]) == 0
    assert _native.last_contiguous_run(10, [1, 2, 3, 10]) == 10
    assert _native.max_attempted_run(-5, [-9, -6]) == -5
    assert _native.run_gaps(-3, [-1], 1) == [-2, 0, 1]
    assert _native.run_gaps(5, [], 5) == []
    assert _native.run_gaps(5, [6], 2) == []


@settings(max_examples=300)
@given(lasts, runs_near)
def test_last_contiguous_run_matches_reference(last: int, successful: list[int]) -> None:
    assert _native.last_contiguous_run(last, successful) == reference.last_contiguous_run(last, successful)


@given(lasts, st.integers(0, 200), st.randoms(use_true_random=False))
def test_shuffled_runs_with_holes(last: int, length: int, rnd: random.Random) -> None:
    successful = list(range(last + 1, last + 1 + length))
    if successful and rnd.random() < 0.5:
        successful.remove(rnd.choice(successful))
    successful += successful[: rnd.randrange(len(successful) + 1)]  # duplicates
    rnd.shuffle(successful)
    assert _native.last_contiguous_run(last, successful) == reference.last_contiguous_run(last, successful)


@settings(max_examples=300)
@given(i64s, st.lists(i64s, max_size=30))
def test_max_attempted_run_matches_reference(current: int, attempted: list[int]) -> None:
    assert _native.max_attempted_run(current, attempted) == reference.max_attempted_run(current, attempted)


@settings(max_examples=300)
@given(lasts, runs_near, st.integers(-60, 200))
def test_run_gaps_matches_reference(last: int, successful: list[int], bound: int) -> None:
    assert _native.run_gaps(last, successful, bound) == reference.run_gaps(last, successful, bound)


@given(i64s, st.lists(i64s, max_size=10))
def test_extremes_do_not_overflow(last: int, successful: list[int]) -> None:
    near_top = [*successful, I64_MAX, I64_MAX - 1, I64_MIN]
    assert _native.last_contiguous_run(last, near_top) == reference.last_contiguous_run(last, near_top)


def test_top_of_the_range() -> None:
    assert _native.last_contiguous_run(I64_MAX - 2, [I64_MAX, I64_MAX - 1]) == I64_MAX
    assert _native.last_contiguous_run(I64_MAX, [I64_MIN]) == I64_MAX
    assert _native.run_gaps(I64_MAX - 3, [I64_MAX - 1], I64_MAX) == [I64_MAX - 2, I64_MAX]


def test_window_guard() -> None:
    assert len(_native.run_gaps(0, [], 1000)) == 1000
    with pytest.raises(ValueError, match="too large"):
        _native.run_gaps(0, [], 10**9 + 1)
    with pytest.raises(ValueError, match="too large"):
        _native.run_gaps(I64_MIN, [], I64_MAX)


def test_huge_windows_raise_instead_of_aborting() -> None:
    # run_gaps(0, [], 10**9) used to abort the interpreter (an 8 GB allocation failed in Rust).
    # Run it in a subprocess so that a regression fails this test instead of killing pytest.
    code = (
        "from statekit import _native\n"
        "try:\n"
        "    _native.run_gaps(0, [], 10**9)\n"
        "except ValueError as exc:\n"
        "    print('ValueError', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ValueError")
    assert "too large" in proc.stdout
    with pytest.raises(ValueError, match="too large"):
        _native.run_gaps(5, [6, 7], 5 + 10**6 + 3)
    assert len(_native.run_gaps(5, [6, 7], 5 + 10**6 + 2)) == 10**6


def test_accepts_any_iterable_of_ints() -> None:
    expected = 4
    assert _native.last_contiguous_run(0, (1, 2, 3, 4)) == expected
    assert _native.last_contiguous_run(0, {4, 3, 2, 1}) == expected
    assert _native.last_contiguous_run(0, range(1, 5)) == expected
    assert _native.last_contiguous_run(0, iter([1, 2, 3, 4])) == expected
    assert _native.last_contiguous_run(0, [True]) == 1  # bool is an int
    assert _native.max_attempted_run(0, (x for x in [3, 1])) == 3
    assert _native.run_gaps(0, frozenset({2}), 3) == [1, 3]


@pytest.mark.parametrize("bad", [[1, "2"], [1, 2.0], [None], "123", b"123", 5, None])
def test_non_ints_are_type_errors(bad: object) -> None:
    with pytest.raises(TypeError):
        _native.last_contiguous_run(0, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _native.max_attempted_run(0, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _native.run_gaps(0, bad, 3)  # type: ignore[arg-type]


def test_type_error_names_the_item() -> None:
    with pytest.raises(TypeError, match=r"successful\[1\] must be an int, got str"):
        _native.last_contiguous_run(0, [1, "2"])  # type: ignore[list-item]


@pytest.mark.parametrize("huge", [2**63, -(2**63) - 1, 2**100])
def test_out_of_range_run_numbers(huge: int) -> None:
    with pytest.raises(ValueError, match="64-bit"):
        _native.last_contiguous_run(0, [1, huge])
    with pytest.raises(OverflowError):
        _native.last_contiguous_run(huge, [1])


def test_ten_million_runs() -> None:
    n = 10**7
    successful = list(range(1, n + 1))
    assert _native.last_contiguous_run(0, successful) == n
    assert _native.max_attempted_run(0, successful) == n
    assert _native.run_gaps(0, successful, n + 3) == [n + 1, n + 2, n + 3]
    successful[n // 2] = -1  # a hole at n // 2 + 1
    successful.reverse()
    assert _native.last_contiguous_run(0, successful) == n // 2
    assert _native.run_gaps(0, successful, n) == [n // 2 + 1]


# -- the fast paths: lists of plain ints read by index (prefetched), int64 buffers in place --


class Int(int):
    """An int subclass: the list fast path leaves it to the general path."""


def _shapes(values: list[int]) -> list[object]:
    """The same run numbers in every shape the kernels take."""
    shapes: list[object] = [values, tuple(values), iter(values)]
    if all(I64_MIN <= v <= I64_MAX for v in values):
        shapes += [array("q", values), memoryview(array("q", values)), array("l", values)]
    return shapes


mixed = st.lists(
    st.integers(-60, 120) | st.integers(-60, 120).map(Int) | st.booleans() | i64s | st.just(2**70),
    max_size=60,
)


@given(lasts, runs_near, st.integers(-60, 200))
def test_every_shape_matches_the_reference(last: int, successful: list[int], bound: int) -> None:
    for shape in _shapes(successful):
        assert _native.last_contiguous_run(last, shape) == reference.last_contiguous_run(last, successful)  # type: ignore[arg-type]
    for shape in _shapes(successful):
        assert _native.max_attempted_run(last, shape) == reference.max_attempted_run(last, successful)  # type: ignore[arg-type]
    for shape in _shapes(successful):
        assert _native.run_gaps(last, shape, bound) == reference.run_gaps(last, successful, bound)  # type: ignore[arg-type]


@given(lasts, mixed)
def test_lists_with_subclasses_bools_and_huge_ints(last: int, successful: list[int]) -> None:
    """Anything but a plain int in a list takes the general path: same results, same errors."""

    def outcome(fn: object, *args: object) -> object:
        try:
            return fn(*args)  # type: ignore[operator]
        except (TypeError, ValueError) as exc:
            return type(exc)

    assert outcome(_native.last_contiguous_run, last, successful) == outcome(
        _native.last_contiguous_run, last, iter(successful)
    )
    assert outcome(_native.max_attempted_run, last, successful) == outcome(
        _native.max_attempted_run, last, iter(successful)
    )
    if all(isinstance(v, int) and I64_MIN <= v <= I64_MAX for v in successful):
        assert _native.last_contiguous_run(last, successful) == reference.last_contiguous_run(
            last, [int(v) for v in successful]
        )


def test_long_shuffled_lists_and_buffers() -> None:
    rnd = random.Random(7)
    runs = list(range(1_000, 301_000))
    del runs[150_000]
    rnd.shuffle(runs)
    assert _native.last_contiguous_run(999, runs) == 150_999
    assert _native.last_contiguous_run(999, array("q", runs)) == 150_999
    assert _native.max_attempted_run(0, array("q", runs)) == 300_999
    # Not int64: the general path (items converted one by one).
    assert _native.last_contiguous_run(999, array("i", runs)) == 150_999
    assert _native.last_contiguous_run(
        999, memoryview(array("q", runs))[::2]
    ) == reference.last_contiguous_run(999, runs[::2])
