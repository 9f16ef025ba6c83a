"""RESP pipelines and Redis Cluster hash slots: the Rust core against the Python reference."""

from __future__ import annotations

import enum
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import _native
from tests.unit.native import reference

args_st = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20),
    st.integers(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
)
commands_st = st.lists(st.lists(args_st, min_size=1, max_size=6), max_size=8)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


def test_known_literal() -> None:
    assert _native.encode_commands([["SET", "k", "v"]]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"


def test_pipeline_literal() -> None:
    out = _native.encode_commands([[b"SET", b"k", b""], ("EXPIRE", "k", 10), ["INCRBY", "n", -5]])
    assert out == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        b"*3\r\n$6\r\nEXPIRE\r\n$1\r\nk\r\n$2\r\n10\r\n"
        b"*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$2\r\n-5\r\n"
    )


@settings(max_examples=300)
@given(commands_st)
def test_encode_matches_reference(commands: list[list[bytes | str | int | float]]) -> None:
    assert _native.encode_commands(commands) == reference.encode_commands(commands)


@pytest.mark.parametrize(
    "arg",
    [0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**200, -(2**200), Level.HIGH],
)
def test_ints(arg: int) -> None:
    assert _native.encode_commands([["X", arg]]) == reference.encode_commands([["X", arg]])
    assert str(int(arg)).encode() in _native.encode_commands([["X", arg]])


@pytest.mark.parametrize("arg", [0.0, -0.0, 1.5, 1e16, 1e-7, 0.1, math.inf, -math.inf, math.nan])
def test_floats_use_repr(arg: float) -> None:
    assert _native.encode_commands([["X", arg]]) == b"*2\r\n$1\r\nX\r\n$%d\r\n%s\r\n" % (
        len(repr(arg)),
        repr(arg).encode(),
    )


def test_unicode_is_utf8() -> None:
    assert _native.encode_commands([["SET", "clé", "☃"]]) == reference.encode_commands([["SET", "clé", "☃"]])
    assert b"$4\r\ncl\xc3\xa9\r\n" in _native.encode_commands([["SET", "clé"]])


def test_any_sequence() -> None:
    expected = _native.encode_commands([["GET", "k"]])
    assert _native.encode_commands((("GET", "k"),)) == expected
    assert _native.encode_commands(iter([iter(["GET", "k"])])) == expected
    assert _native.encode_commands([]) == b""


@pytest.mark.parametrize("bad", [True, False, None, object(), {"a": 1}, ["nested"], bytearray(b"x"), 1j])
def test_bad_args_are_type_errors(bad: object) -> None:
    with pytest.raises(TypeError, match=r"command 1, argument 2"):
        _native.encode_commands([["PING"], ["SET", "k", bad]])  # type: ignore[list-item]


def test_bool_message() -> None:
    with pytest.raises(TypeError, match="bool"):
        _native.encode_commands([["SET", "k", True]])


@pytest.mark.parametrize("commands", [["GET k"], [b"GET k"], [5], [None], 5, "GET k", b"GET k", None])
def test_bad_commands_are_type_errors(commands: object) -> None:
    with pytest.raises(TypeError):
        _native.encode_commands(commands)  # type: ignore[arg-type]


def test_empty_command_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="command 1 is empty"):
        _native.encode_commands([["PING"], []])


def test_surrogates_are_rejected() -> None:
    with pytest.raises(UnicodeEncodeError):
        _native.encode_commands([["SET", "\udcff"]])


# --- hash slots ----------------------------------------------------------------------------


def test_documented_slots() -> None:
    assert _native.hash_slot(b"foo") == 12182
    assert _native.hash_slot("foo") == 12182
    assert _native.hash_slot(b"123456789") == 12739
    assert _native.hash_slot("{user1000}.following") == _native.hash_slot("{user1000}.followers")
    assert _native.hash_slot("{user1000}.following") == _native.hash_slot("user1000")


def test_hash_tag_rules() -> None:
    assert _native.hash_slot("foo{}{bar}") == reference.crc16(b"foo{}{bar}") % 16384
    assert _native.hash_slot("foo{{bar}}") == _native.hash_slot("{bar")
    assert _native.hash_slot("foo{{bar}}") == reference.crc16(b"{bar") % 16384
    assert _native.hash_slot("foo{bar}{zap}") == _native.hash_slot("bar")
    assert _native.hash_slot("{}") == reference.crc16(b"{}") % 16384
    assert _native.hash_slot("") == 0


def test_crc16_reference_check_value() -> None:
    assert reference.crc16(b"123456789") == 0x31C3


@settings(max_examples=300)
@given(st.binary(max_size=40) | st.text(alphabet="ab{}c", max_size=12) | st.text(max_size=20))
def test_hash_slot_matches_reference(key: bytes | str) -> None:
    slot = _native.hash_slot(key)
    assert slot == reference.hash_slot(key)
    assert 0 <= slot < 16384


@given(st.lists(st.binary(max_size=20) | st.text(alphabet="xy{}", max_size=8), max_size=30))
def test_hash_slots_matches_reference(keys: list[bytes | str]) -> None:
    assert _native.hash_slots(keys) == reference.hash_slots(keys)
    assert _native.hash_slots(tuple(keys)) == reference.hash_slots(keys)


@pytest.mark.parametrize("bad", [1, None, bytearray(b"k"), 1.5])
def test_hash_slot_type_errors(bad: object) -> None:
    with pytest.raises(TypeError):
        _native.hash_slot(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _native.hash_slots([b"ok", bad])  # type: ignore[list-item]


def test_hash_slots_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        _native.hash_slots("abc")


def reference_msets_by_slot(
    keys: list[str], values: list[bytes], chunk: int
) -> tuple[list[int], list[bytes]]:
    """Plain Python: stable grouping by slot, slots ascending, chunks of ``chunk`` pairs, one MSET each."""
    by_slot: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_slot.setdefault(reference.hash_slot(key), []).append(i)
    slots: list[int] = []
    commands: list[bytes] = []
    for slot in sorted(by_slot):
        group = by_slot[slot]
        for start in range(0, len(group), chunk):
            args: list[bytes | str] = ["MSET"]
            for i in group[start : start + chunk]:
                args += [keys[i], values[i]]
            slots.append(slot)
            commands.append(reference.encode_commands([args]))
    return slots, commands


# Keys with shared hash tags so that slots hold several keys and chunks split.
cluster_keys = st.one_of(
    st.text(max_size=8), st.sampled_from(["{a}", "{b}x", "{a}y", "{}", "{c}{a}"]).map(str)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(cluster_keys, st.binary(max_size=20)), max_size=40), st.integers(1, 5))
def test_msets_by_slot_match_the_python_reference(pairs: list[tuple[str, bytes]], chunk: int) -> None:
    keys, values = [k for k, _ in pairs], [v for _, v in pairs]
    slots, ends, payload = _native.encode_msets_by_slot(keys, values, chunk)
    expected_slots, expected_commands = reference_msets_by_slot(keys, values, chunk)
    assert slots == expected_slots
    starts = [0, *ends[:-1]][: len(ends)]
    assert [payload[a:b] for a, b in zip(starts, ends, strict=True)] == expected_commands
    assert len(payload) == (ends[-1] if ends else 0)


def test_msets_by_slot_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        _native.encode_msets_by_slot(["a", "b"], [b"x"], 10)
    with pytest.raises(TypeError, match="value 0 must be bytes"):
        _native.encode_msets_by_slot(["a"], ["x"], 10)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="key 0 must be bytes or str"):
        _native.encode_msets_by_slot([1], [b"x"], 10)  # type: ignore[list-item]
