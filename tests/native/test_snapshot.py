"""Snapshot files: write→read identity, the documented layout, and corruption detection."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit import _native
from statekit.backends.base import ItemColumns
from statekit.errors import CorruptData, StateError
from tests.native import reference

Item = tuple[str, bytes, float | None]

# Keys as the backends hold them: str, any code point but surrogates (not valid UTF-8).
keys_st = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
expiries_st = st.none() | st.floats(allow_nan=False)
items_st = st.lists(st.tuples(keys_st, st.binary(max_size=120), expiries_st), max_size=30)
small_items_st = st.lists(st.tuples(keys_st, st.binary(max_size=12), expiries_st), min_size=1, max_size=3)


def file_settings(max_examples: int) -> settings:
    """Each example writes a file (with fsyncs) into the test's own tmp_path."""
    return settings(
        max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )


def _read_items(path: Path, **kwargs: object) -> list[tuple[object, bytes, float | None]]:
    _, keys, values, expires = _native.snapshot_read(path, **kwargs)  # type: ignore[arg-type]
    return list(zip(keys, values, expires if expires is not None else [None] * len(keys), strict=True))


@file_settings(150)
@given(items=items_st, compress=st.booleans())
def test_write_then_read_is_the_identity(tmp_path: Path, items: list[Item], compress: bool) -> None:
    path = tmp_path / "s.ckpt"
    info = _native.snapshot_write(path, items, compress=compress, created_at=1_700_000_000.25)
    assert _read_items(path) == items
    assert info.entry_count == len(items)
    assert info.compression == ("zstd" if compress else "none")
    assert info.created_at == 1_700_000_000.25
    assert info.file_size == path.stat().st_size
    assert _native.snapshot_verify(path).checksum == info.checksum
    assert _native.snapshot_verify(path, deep=False).checksum == info.checksum
    assert _native.snapshot_info(path).checksum == info.checksum
    assert os.listdir(tmp_path) == ["s.ckpt"]


@file_settings(100)
@given(records=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=50), expiries_st), max_size=20))
def test_bytes_keys_round_trip(tmp_path: Path, records: list[tuple[bytes, bytes, float | None]]) -> None:
    path = tmp_path / "b.ckpt"
    _native.snapshot_write(path, records)
    assert _read_items(path, str_keys=False) == records


@file_settings(100)
@given(items=items_st)
def test_layout_matches_the_reference_reader(tmp_path: Path, items: list[Item]) -> None:
    path = tmp_path / "r.ckpt"
    info = _native.snapshot_write(path, items, compress=False, created_at=12.5)
    data = path.read_bytes()
    header = reference.snapshot_header(data)
    assert header == {
        "version": info.version,
        "compression": "none",
        "created_at": 12.5,
        "entry_count": len(items),
        "uncompressed_size": info.uncompressed_size,
        "file_size": info.file_size,
        "checksum": info.checksum,
    }
    expected = [(k.encode(), v, e) for k, v, e in items]
    assert reference.snapshot_records(data) == expected
    assert data[80:] == reference.encode_records(expected)


def test_checksum_is_sha256_of_payload_then_header(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    info = _native.snapshot_write(path, [("k", b"v", None)])
    data = path.read_bytes()
    assert info.checksum == hashlib.sha256(data[80:] + data[:48]).hexdigest()
    assert data[48:80].hex() == info.checksum


def test_columns_are_read_by_index(tmp_path: Path) -> None:
    columns = ItemColumns(["a", "b", "c"], [b"1", b"2", b"3"], [None, 5.0, None])
    _native.snapshot_write(tmp_path / "a.ckpt", columns)
    _native.snapshot_write(tmp_path / "b.ckpt", list(columns))
    assert _read_items(tmp_path / "a.ckpt") == list(columns)
    # Same records, same payload, whichever way they were handed over.
    assert (tmp_path / "a.ckpt").read_bytes()[80:] == (tmp_path / "b.ckpt").read_bytes()[80:]
    _native.snapshot_write(tmp_path / "n.ckpt", ItemColumns(["x"], [b"y"]))
    _, keys, values, expires = _native.snapshot_read(tmp_path / "n.ckpt")
    assert (keys, values, expires) == (["x"], [b"y"], None)


def test_mismatched_columns_are_rejected(tmp_path: Path) -> None:
    class Columns:
        def __init__(self) -> None:
            self.keys = ["a", "b"]
            self.values = [b"1"]
            self.expires_at = None

    with pytest.raises(ValueError, match="2 keys but 1 values"):
        _native.snapshot_write(tmp_path / "x.ckpt", Columns())  # type: ignore[arg-type]
    assert not (tmp_path / "x.ckpt").exists()


def test_expiries_are_none_when_no_record_expires(tmp_path: Path) -> None:
    path = tmp_path / "e.ckpt"
    _native.snapshot_write(path, [("a", b"1", None), ("b", b"2", None)])
    assert _native.snapshot_read(path)[3] is None
    _native.snapshot_write(path, [("a", b"1", None), ("b", b"2", 3.0)])
    assert _native.snapshot_read(path)[3] == [None, 3.0]


def _written(tmp_path: Path, items: list[Item], compress: bool) -> tuple[Path, bytes]:
    path = tmp_path / "f.ckpt"
    _native.snapshot_write(path, items, compress=compress)
    return path, path.read_bytes()


def _all_checks_reject(path: Path) -> None:
    for check in (
        lambda: _native.snapshot_read(path),
        lambda: _native.snapshot_verify(path),
        lambda: _native.snapshot_verify(path, deep=False),
    ):
        with pytest.raises(CorruptData, match=r"f\.ckpt"):
            check()


@file_settings(200)
@given(items=small_items_st, compress=st.booleans(), data=st.data())
def test_any_single_flipped_bit_is_detected(
    tmp_path: Path, items: list[Item], compress: bool, data: st.DataObject
) -> None:
    path, content = _written(tmp_path, items, compress)
    bit = data.draw(st.integers(0, len(content) * 8 - 1), label="bit")
    bad = bytearray(content)
    bad[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bad)
    _all_checks_reject(path)


@file_settings(200)
@given(items=small_items_st, compress=st.booleans(), data=st.data())
def test_any_truncation_is_detected(
    tmp_path: Path, items: list[Item], compress: bool, data: st.DataObject
) -> None:
    path, content = _written(tmp_path, items, compress)
    cut = data.draw(st.integers(0, len(content) - 1), label="cut")
    path.write_bytes(content[:cut])
    _all_checks_reject(path)
    with pytest.raises(CorruptData):
        _native.snapshot_info(path)


def test_every_bit_of_a_small_file(tmp_path: Path) -> None:
    path, content = _written(tmp_path, [("k", b"value", 2.0)], compress=True)
    for bit in range(len(content) * 8):
        bad = bytearray(content)
        bad[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bad)
        with pytest.raises(CorruptData):
            _native.snapshot_verify(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "truncated"),
        (b"PK\x03\x04 a zip file, not ours" * 4, "not a statekit snapshot"),
        (b"SKRB" + bytes(40), "bad magic"),
        (b"SKSNAP\r\n" + bytes(10), "truncated"),
    ],
)
def test_foreign_files_are_rejected_clearly(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "f.ckpt"
    path.write_bytes(content)
    for check in (_native.snapshot_read, _native.snapshot_verify, _native.snapshot_info):
        with pytest.raises(CorruptData, match=message) as info:
            check(path)
        assert isinstance(info.value, StateError)
        assert isinstance(info.value, ValueError)


def test_appended_bytes_are_detected(tmp_path: Path) -> None:
    path, content = _written(tmp_path, [("k", b"v", None)], compress=True)
    path.write_bytes(content + b"\0")
    with pytest.raises(CorruptData, match="trailing"):
        _native.snapshot_verify(path, deep=False)


def test_forged_header_with_valid_digest_fails_the_deep_check(tmp_path: Path) -> None:
    path, content = _written(tmp_path, [("a", b"1", None), ("b", b"2", None)], compress=True)
    header = bytearray(content[:80])
    struct.pack_into("<Q", header, 24, 3)  # entry count 2 -> 3
    digest = hashlib.sha256(content[80:] + bytes(header[:48])).digest()
    header[48:80] = digest
    path.write_bytes(bytes(header) + content[80:])
    assert _native.snapshot_verify(path, deep=False).entry_count == 3  # the digest matches...
    with pytest.raises(CorruptData, match="entries"):
        _native.snapshot_verify(path)  # ...but the records do not
    with pytest.raises(CorruptData, match="entries"):
        _native.snapshot_read(path)


def test_required_prefix_and_utf8(tmp_path: Path) -> None:
    path = tmp_path / "p.ckpt"
    _native.snapshot_write(path, [("job:a", b"1", None), ("other", b"2", None)])
    with pytest.raises(ValueError, match="required prefix") as info:
        _native.snapshot_read(path, require_prefix="job:")
    assert not isinstance(info.value, CorruptData)
    assert _native.snapshot_read(path, require_prefix="")[1] == ["job:a", "other"]
    _native.snapshot_write(path, [(b"\xff", b"1", None)])
    with pytest.raises(ValueError, match="not UTF-8"):
        _native.snapshot_read(path)
    assert _native.snapshot_read(path, str_keys=False)[1] == [b"\xff"]


def test_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    with pytest.raises(TypeError, match="record 1: value must be bytes"):
        _native.snapshot_write(path, [("a", b"1", None), ("b", "2", None)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="key must be str or bytes"):
        _native.snapshot_write(path, [(1, b"1", None)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="expires_at must be a float or None"):
        _native.snapshot_write(path, [("a", b"1", "soon")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="tuple of length 2"):
        _native.snapshot_write(path, [("a", b"1")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _native.snapshot_write(path, b"not records")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        _native.snapshot_write(path, [], level=0)
    with pytest.raises(ValueError, match="level"):
        _native.snapshot_write(path, [], level=23)
    with pytest.raises(ValueError, match="finite"):
        _native.snapshot_write(path, [], created_at=float("nan"))
    assert os.listdir(tmp_path) == []


def test_explicit_levels_and_generators(tmp_path: Path) -> None:
    items = [(f"key:{i:06d}", bytes([i % 251]) * 100, None) for i in range(2000)]
    raw = _native.snapshot_write(tmp_path / "raw.ckpt", items, compress=False).file_size
    for level in (1, 19):
        path = tmp_path / f"l{level}.ckpt"
        info = _native.snapshot_write(path, (item for item in items), level=level)
        assert info.file_size < raw // 4
        assert _read_items(path) == items


def test_file_errors_are_oserrors_with_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.ckpt"
    for check in (_native.snapshot_read, _native.snapshot_verify, _native.snapshot_info):
        with pytest.raises(FileNotFoundError) as info:
            check(missing)
        assert info.value.filename == str(missing)
    with pytest.raises(FileNotFoundError):
        _native.snapshot_write(tmp_path / "no" / "dir" / "x.ckpt", [])


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "busy.ckpt"
    target.mkdir()
    (target / "inside").write_bytes(b"x")
    with pytest.raises(OSError, match=r"busy\.ckpt") as info:
        _native.snapshot_write(target, [("k", b"v", None)])
    assert info.value.filename == str(target)
    assert sorted(os.listdir(tmp_path)) == ["busy.ckpt"]


def test_info_repr(tmp_path: Path) -> None:
    info = _native.snapshot_write(tmp_path / "i.ckpt", [("k", b"v", None)], compress=False)
    assert "entry_count=1" in repr(info)
    assert 'compression="none"' in repr(info)
    with pytest.raises(AttributeError):
        info.entry_count = 2  # type: ignore[misc]
