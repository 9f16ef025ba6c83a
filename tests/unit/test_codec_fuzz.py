"""Stored bytes are data, not trusted input: every codec decodes them or raises DeserializationFailed.

And every value a codec accepts comes back as itself (modulo the documented JSON conversions),
never as another value.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit.errors import DeserializationFailed
from statekit.serializers import JsonSerializer, MsgpackSerializer, PickleSerializer

CODECS = [JsonSerializer(), MsgpackSerializer(), PickleSerializer(signing_key=b"k" * 16)]

HOSTILE = [b"[" * 100_000, b"{" * 5000, b"\x91" * 100_000, b"9" * 5000, b"-", b"1e400", b"NaN", b""]


def _decode_or_typed_error(data: bytes) -> None:
    for codec in CODECS:
        with contextlib.suppress(DeserializationFailed):
            codec.decode(data, key="k")


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_any_stored_bytes_decode_or_raise_deserialization_failed(data: bytes) -> None:
    _decode_or_typed_error(data)


@pytest.mark.parametrize("data", HOSTILE, ids=lambda d: repr(d[:8]))
def test_hostile_payloads_raise_deserialization_failed(data: bytes) -> None:
    _decode_or_typed_error(data)


_json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400)
@given(_json_values)
def test_values_round_trip_exactly(value: Any) -> None:
    for codec in CODECS:
        assert codec.decode(codec.encode(value, key="k"), key="k") == value


@settings(max_examples=300)
@given(st.binary(max_size=32) | st.lists(st.binary(max_size=4), max_size=3))
def test_msgpack_and_pickle_round_trip_bytes(value: Any) -> None:
    for codec in CODECS[1:]:
        assert codec.decode(codec.encode(value, key="k"), key="k") == value


def test_deeply_nested_values_are_refused_with_serialization_failed() -> None:
    from statekit.errors import SerializationFailed

    value: Any = []
    for _ in range(100_000):
        value = [value]
    for codec in CODECS[:2]:
        with pytest.raises(SerializationFailed):
            codec.encode(value, key="k")
