"""Record batches: the Rust core against the Python reference, and corruption detection."""

from __future__ import annotations

import contextlib
import math
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import _native
from statekit.errors import CorruptData, StateError
from tests.unit.native import reference

expiries = st.none() | st.floats(allow_nan=False)
records_st = st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200), expiries), max_size=25)
small_records_st = st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=16), expiries), max_size=4)


def _encoded(records: list[tuple[bytes, bytes, float | None]]) -> bytes:
    return _native.encode_records(records)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200), st.none() | st.floats())))
def test_encode_matches_reference(records: list[tuple[bytes, bytes, float | None]]) -> None:
    # NaN included: both sides write the float's own bits.
    assert _native.encode_records(records) == reference.encode_records(records)


@settings(max_examples=200)
@given(records_st)
def test_round_trip(records: list[tuple[bytes, bytes, float | None]]) -> None:
    data = _encoded(records)
    assert _native.decode_records(data) == records
    assert reference.decode_records(data) == records


@given(records_st)
def test_decode_accepts_bytes_like(records: list[tuple[bytes, bytes, float | None]]) -> None:
    data = _encoded(records)
    assert _native.decode_records(bytearray(data)) == records
    assert _native.decode_records(memoryview(data)) == records
    padded = b"xx" + data + b"yy"
    assert _native.decode_records(memoryview(padded)[2:-2]) == records


def test_decoded_types() -> None:
    out = _native.decode_records(_encoded([(b"k", b"v", None), (b"", b"", 2.5)]))
    assert isinstance(out, list)
    assert out == [(b"k", b"v", None), (b"", b"", 2.5)]
    for record in out:
        assert type(record) is tuple
        assert type(record[0]) is bytes
        assert type(record[1]) is bytes


def test_special_floats_round_trip() -> None:
    records: list[tuple[bytes, bytes, float | None]] = [
        (b"a", b"1", math.inf),
        (b"b", b"2", -math.inf),
        (b"c", b"3", -0.0),
        (b"d", b"4", math.nan),
    ]
    out = _native.decode_records(_encoded(records))
    assert out[:2] == records[:2]
    assert math.copysign(1.0, out[2][2]) == -1.0  # type: ignore[arg-type]
    assert math.isnan(out[3][2])  # type: ignore[arg-type]


def test_layout_is_the_documented_one() -> None:
    data = _encoded([(b"ab", b"xyz", 2.0), (b"k", b"", None)])
    magic, version, flags, reserved, count, body_len, crc = struct.unpack_from("<4sBBHQQI", data)
    assert (magic, version, flags, reserved, count) == (b"SKRB", 1, 0, 0, 2)
    body = data[28:]
    assert body_len == len(body)
    assert crc == zlib.crc32(body)
    assert body == (struct.pack("<IIBd", 2, 3, 1, 2.0) + b"abxyz" + struct.pack("<IIB", 1, 0, 0) + b"k")


def test_empty_batch() -> None:
    data = _native.encode_records([])
    assert len(data) == 28
    assert _native.decode_records(data) == []


def test_accepts_any_sequence_of_records() -> None:
    records = [(b"k1", b"v1", None), (b"k2", b"v2", 1.0)]
    expected = _native.encode_records(records)
    assert _native.encode_records(tuple(records)) == expected
    assert _native.encode_records(iter(records)) == expected
    assert _native.encode_records([list(r) for r in records]) == expected  # type: ignore[misc]
    # An int is accepted as an expiry, like struct.pack("<d", 1) would.
    assert _native.encode_records([(b"k2", b"v2", 1)]) == _native.encode_records([(b"k2", b"v2", 1.0)])


@pytest.mark.parametrize(
    "records",
    [
        [("k", b"v", None)],
        [(b"k", "v", None)],
        [(bytearray(b"k"), b"v", None)],
        [(b"k", memoryview(b"v"), None)],
        [(b"k", b"v", "soon")],
        [(b"k", b"v")],
        [(b"k", b"v", None, None)],
        [b"kv"],
        [None],
        5,
        b"not records",
        "not records",
    ],
)
def test_bad_records_are_type_errors(records: object) -> None:
    with pytest.raises(TypeError):
        _native.encode_records(records)  # type: ignore[arg-type]


def test_type_error_names_the_record() -> None:
    with pytest.raises(TypeError, match=r"record 1: value must be bytes, got str"):
        _native.encode_records([(b"k", b"v", None), (b"k", "v", None)])  # type: ignore[list-item]


@pytest.mark.parametrize("data", ["text", 12, None, [b"SKRB"]])
def test_decode_rejects_non_bytes(data: object) -> None:
    with pytest.raises(TypeError):
        _native.decode_records(data)  # type: ignore[arg-type]


def test_corrupt_data_is_a_statekit_value_error() -> None:
    with pytest.raises(CorruptData) as info:
        _native.decode_records(b"nope, not a batch")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, StateError)
    assert "bad magic" in str(info.value)


def test_error_messages() -> None:
    data = _encoded([(b"key", b"value", None)])
    with pytest.raises(CorruptData, match=r"framed buffer truncated: expected 45 bytes, got 44"):
        _native.decode_records(data[:-1])
    with pytest.raises(CorruptData, match=r"truncated: expected at least 28 header bytes, got 10"):
        _native.decode_records(data[:10])
    with pytest.raises(CorruptData, match=r"trailing bytes"):
        _native.decode_records(data + b"\0")
    flipped = bytearray(data)
    flipped[-1] ^= 0x01
    with pytest.raises(CorruptData, match=r"checksum mismatch"):
        _native.decode_records(bytes(flipped))
    versioned = bytearray(data)
    versioned[4] = 9
    with pytest.raises(CorruptData, match=r"version 9"):
        _native.decode_records(bytes(versioned))


@settings(max_examples=60)
@given(records_st)
def test_every_truncation_is_corrupt(records: list[tuple[bytes, bytes, float | None]]) -> None:
    data = _encoded(records)
    for cut in range(len(data)):
        with pytest.raises(CorruptData):
            _native.decode_records(data[:cut])


@given(records_st, st.binary(min_size=1, max_size=16))
def test_trailing_garbage_is_corrupt(records: list[tuple[bytes, bytes, float | None]], extra: bytes) -> None:
    with pytest.raises(CorruptData):
        _native.decode_records(_encoded(records) + extra)


@settings(max_examples=60)
@given(small_records_st)
def test_every_single_bit_flip_is_corrupt(records: list[tuple[bytes, bytes, float | None]]) -> None:
    data = _encoded(records)
    for byte in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[byte] ^= 1 << bit
            with pytest.raises(CorruptData):
                _native.decode_records(bytes(bad))


def test_count_mismatch_with_a_valid_checksum_is_corrupt() -> None:
    data = bytearray(_encoded([(b"a", b"1", None), (b"b", b"2", 3.0)]))
    for count in (0, 1, 3, 2**64 - 1):
        data[8:16] = count.to_bytes(8, "little")
        with pytest.raises(CorruptData, match="count mismatch"):
            _native.decode_records(bytes(data))


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_arbitrary_bodies_agree_with_reference(body: bytes) -> None:
    # A valid header around an arbitrary body: both decoders accept it or both reject it.
    for count in range(3):
        data = reference.HEADER.pack(b"SKRB", 1, 0, 0, count, len(body), zlib.crc32(body)) + body
        try:
            expected = reference.decode_records(data)
        except CorruptData:
            with pytest.raises(CorruptData):
                _native.decode_records(data)
        else:
            got = _native.decode_records(data)
            assert len(got) == len(expected)
            for (k1, v1, e1), (k2, v2, e2) in zip(got, expected, strict=True):
                assert (k1, v1) == (k2, v2)
                assert struct.pack("<d", e1 or 0.0) == struct.pack("<d", e2 or 0.0)
                assert (e1 is None) == (e2 is None)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    for candidate in (data, b"SKRB" + data, b"SKRB\x01\x00\x00\x00" + data):
        with contextlib.suppress(CorruptData):
            _native.decode_records(candidate)


def test_large_batch_round_trip() -> None:
    records = [
        (i.to_bytes(16, "big"), bytes([i % 256]) * 100, 1.7e9 + i if i % 3 else None) for i in range(100_000)
    ]
    data = _native.encode_records(records)
    assert data == reference.encode_records(records)
    assert _native.decode_records(data) == records
