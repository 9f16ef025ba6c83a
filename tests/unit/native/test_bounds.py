"""Allocations sized from arguments are bounded: a lying ``__len__`` is only a hint.

Each entry point that reserves room from ``len(obj)`` used to trust it: an iterable claiming
2**62 items made ``Vec::with_capacity`` panic (an untyped ``PanicException``) or abort.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from statekit import _native


class LyingLength:
    """An iterable whose ``__len__`` claims far more items than it yields."""

    def __init__(self, items: list[object]) -> None:
        self._items = items

    def __len__(self) -> int:
        return 2**62

    def __iter__(self) -> Iterator[object]:
        return iter(self._items)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: _native.last_contiguous_run(0, LyingLength([1, 2])), 2),
        (lambda: _native.max_attempted_run(0, LyingLength([1, 2])), 2),
        (lambda: _native.run_gaps(0, LyingLength([1, 2]), 3), [3]),
        (lambda: _native.hash_slots(LyingLength([b"a"])), [_native.hash_slot(b"a")]),
        (lambda: _native.encode_commands(LyingLength([[b"PING"]])), b"*1\r\n$4\r\nPING\r\n"),
        (
            lambda: _native.decode_records(_native.encode_records(LyingLength([(b"k", b"v", None)]))),
            [(b"k", b"v", None)],
        ),
    ],
    ids=[
        "last_contiguous_run",
        "max_attempted_run",
        "run_gaps",
        "hash_slots",
        "encode_commands",
        "encode_records",
    ],
)
def test_a_lying_length_is_only_a_hint(call: Callable[[], object], expected: object) -> None:
    assert call() == expected


def test_snapshot_write_with_a_lying_length(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    info = _native.snapshot_write(path, LyingLength([("k", b"v", None)]))  # type: ignore[arg-type]
    assert info.entry_count == 1
