"""Incremental SHA-256 (``Sha256Hasher``, what the storage backends hash streams with) against hashlib."""

from __future__ import annotations

import array
import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import _native


def digest(*chunks: object) -> str:
    hasher = _native.Sha256Hasher()
    for chunk in chunks:
        hasher.update(chunk)  # type: ignore[arg-type]
    return hasher.hexdigest()


def test_known_vectors() -> None:
    assert digest() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert digest(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert digest(b"a", b"", b"bc") == digest(b"abc")


@settings(max_examples=200)
@given(st.binary(max_size=4096), st.data())
def test_matches_hashlib_for_bytes_like_chunks(data: bytes, draw: st.DataObject) -> None:
    expected = hashlib.sha256(data).hexdigest()
    cut = draw.draw(st.integers(0, len(data)), label="cut")
    assert digest(data) == expected
    assert digest(bytearray(data[:cut]), memoryview(data)[cut:]) == expected


def test_other_buffer_formats() -> None:
    ints = array.array("i", range(1000))
    assert digest(ints) == hashlib.sha256(ints).hexdigest()
    quads = memoryview(bytes(range(64))).cast("Q")
    assert digest(quads) == hashlib.sha256(quads).hexdigest()


def test_large_chunks_hashed_detached() -> None:
    # Chunks of 64 KiB or more are hashed with the GIL released.
    data = os.urandom(3 * 1024 * 1024 + 5)
    assert digest(data[:100], data[100:]) == hashlib.sha256(data).hexdigest()


def test_hexdigest_does_not_consume_the_state() -> None:
    hasher = _native.Sha256Hasher()
    hasher.update(b"ab")
    assert hasher.hexdigest() == hashlib.sha256(b"ab").hexdigest()
    hasher.update(b"c")
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("bad", ["text", 5, None, [1, 2], object()])
def test_non_bytes_are_type_errors(bad: object) -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        digest(bad)
