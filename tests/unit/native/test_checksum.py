"""SHA-256 of buffers and files: the Rust core against hashlib."""

from __future__ import annotations

import array
import errno
import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit import _native
from tests.unit.native import reference


def test_known_vectors() -> None:
    assert _native.sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert _native.sha256(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@settings(max_examples=200)
@given(st.binary(max_size=4096))
def test_matches_hashlib_for_bytes_like(data: bytes) -> None:
    expected = hashlib.sha256(data).hexdigest()
    assert _native.sha256(data) == expected
    assert _native.sha256(bytearray(data)) == expected
    assert _native.sha256(memoryview(data)) == expected
    assert reference.sha256(data) == expected


@given(st.binary(max_size=256), st.integers(0, 256), st.integers(0, 256))
def test_memoryview_slices(data: bytes, start: int, stop: int) -> None:
    view = memoryview(data)[start:stop]
    assert _native.sha256(view) == hashlib.sha256(view).hexdigest()


def test_other_buffer_formats() -> None:
    ints = array.array("i", range(1000))
    assert _native.sha256(ints) == hashlib.sha256(ints).hexdigest()
    quads = memoryview(bytes(range(64))).cast("Q")
    assert _native.sha256(quads) == hashlib.sha256(quads).hexdigest()


def test_large_buffer() -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    assert _native.sha256(data) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("bad", ["text", 5, None, [1, 2], object()])
def test_non_bytes_are_type_errors(bad: object) -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        _native.sha256(bad)  # type: ignore[arg-type]


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=10_000))
def test_file_matches_hashlib(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert _native.sha256_file(path) == expected
    assert _native.sha256_file(str(path)) == expected
    assert reference.sha256_file(path) == expected


def test_file_larger_than_the_read_buffer(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 123)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert _native.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert _native.sha256_file(path) == hashlib.sha256(b"").hexdigest()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError) as info:
        _native.sha256_file(path)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(path)
    assert str(path) in str(info.value)


def test_directory_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=str(tmp_path)) as info:
        _native.sha256_file(tmp_path)
    assert info.value.errno == errno.EISDIR


@pytest.mark.parametrize("bad", [5, None, object()])
def test_bad_path_types(bad: object) -> None:
    with pytest.raises(TypeError):
        _native.sha256_file(bad)  # type: ignore[arg-type]
