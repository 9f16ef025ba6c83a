"""Snapshot files: write→read identity, the documented layout, and corruption detection."""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit import _native
from statekit.backends.base import ItemColumns
from statekit.errors import CorruptData, StateError
from tests.unit.native import reference

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
        "prefix": "",
        "signed": False,
    }
    expected = [(k.encode(), v, e) for k, v, e in items]
    assert reference.snapshot_records(data) == expected
    assert data[82:] == reference.encode_records(expected)


def test_checksum_is_sha256_of_payload_then_header_then_extension(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    info = _native.snapshot_write(path, [("k", b"v", None)])
    data = path.read_bytes()
    assert info.checksum == hashlib.sha256(data[82:] + data[:48] + data[80:82]).hexdigest()
    assert data[48:80].hex() == info.checksum


def test_columns_are_read_by_index(tmp_path: Path) -> None:
    columns = ItemColumns(["a", "b", "c"], [b"1", b"2", b"3"], [None, 5.0, None])
    _native.snapshot_write(tmp_path / "a.ckpt", (columns.keys, columns.values, columns.expires_at))
    _native.snapshot_write(tmp_path / "b.ckpt", list(columns))
    # An ItemColumns itself is a sequence of tuples: iterated, not read by attribute.
    _native.snapshot_write(tmp_path / "c.ckpt", columns)
    assert _read_items(tmp_path / "a.ckpt") == list(columns)
    # Same records, same payload, whichever way they were handed over.
    assert (tmp_path / "a.ckpt").read_bytes()[82:] == (tmp_path / "b.ckpt").read_bytes()[82:]
    assert (tmp_path / "a.ckpt").read_bytes()[82:] == (tmp_path / "c.ckpt").read_bytes()[82:]
    _native.snapshot_write(tmp_path / "n.ckpt", (["x"], [b"y"], None))
    _, keys, values, expires = _native.snapshot_read(tmp_path / "n.ckpt")
    assert (keys, values, expires) == (["x"], [b"y"], None)


def test_a_tuple_of_records_is_not_taken_for_columns(tmp_path: Path) -> None:
    records = (("a", b"1", None), ("b", b"2", 5.0), ("c", b"3", None))
    _native.snapshot_write(tmp_path / "t.ckpt", records)
    assert _read_items(tmp_path / "t.ckpt") == list(records)


def test_mismatched_columns_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        _native.snapshot_write(tmp_path / "x.ckpt", (["a", "b"], [b"1"], None))
    with pytest.raises(ValueError, match="2 keys but 3 expiries"):
        _native.snapshot_write(tmp_path / "x.ckpt", (["a", "b"], [b"1", b"2"], [None, None, 1.0]))
    with pytest.raises(TypeError, match="values must be a list"):
        _native.snapshot_write(tmp_path / "x.ckpt", (["a"], (b"1",), None))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expires_at must be a list or None"):
        _native.snapshot_write(tmp_path / "x.ckpt", (["a"], [b"1"], (None,)))  # type: ignore[arg-type]
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
    digest = hashlib.sha256(content[82:] + bytes(header[:48]) + content[80:82]).digest()
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
    with pytest.raises(ValueError, match="1970 to 9999"):
        _native.snapshot_write(path, [], created_at=1e300)
    with pytest.raises(ValueError, match="16 bytes"):
        _native.snapshot_write(path, [], signing_key=b"short")
    with pytest.raises(ValueError, match="prefix"):
        _native.snapshot_write(path, [("other", b"1", None)], prefix="job:")
    with pytest.raises(ValueError, match="4096"):
        _native.snapshot_write(path, [], prefix="p" * 4097)
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


# -- format version 2: recorded prefix, signature; untrusted files ---------------------------

KEY = b"0123456789abcdef0123456789abcdef"


def test_the_prefix_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "p.ckpt"
    info = _native.snapshot_write(path, [("job:a", b"1", None)], prefix="job:")
    assert (info.version, info.prefix, info.signed) == (2, "job:", False)
    assert _native.snapshot_info(path).prefix == "job:"
    assert reference.snapshot_header(path.read_bytes())["prefix"] == "job:"


def test_version_1_files_are_still_read(tmp_path: Path) -> None:
    path = tmp_path / "v1.ckpt"
    path.write_bytes(reference.snapshot_v1([(b"k", b"v", None), (b"e", b"w", 5.0)]))
    info = _native.snapshot_verify(path)
    assert (info.version, info.prefix, info.signed, info.entry_count) == (1, None, False, 2)
    assert _read_items(path) == [("k", b"v", None), ("e", b"w", 5.0)]
    with pytest.raises(CorruptData, match="not signed"):
        _native.snapshot_read(path, signing_key=KEY)


@file_settings(30)
@given(items=items_st, compress=st.booleans())
def test_signature_matches_the_reference_hmac(tmp_path: Path, items: list[Item], compress: bool) -> None:
    path = tmp_path / "s.ckpt"
    info = _native.snapshot_write(path, items, compress=compress, signing_key=KEY)
    assert info.signed
    header = reference.snapshot_header(path.read_bytes(), signing_key=KEY)  # an independent HMAC
    assert header["signed"] is True
    assert _read_items(path, signing_key=KEY) == items
    assert _native.snapshot_verify(path, deep=False, signing_key=KEY).checksum == info.checksum
    with pytest.raises(CorruptData, match="signature does not verify"):
        _native.snapshot_verify(path, signing_key=b"some other key of 16+ bytes")


def test_a_planted_checkpoint_is_refused_with_a_key(tmp_path: Path) -> None:
    path = tmp_path / "p.ckpt"
    _native.snapshot_write(path, [("k", b"genuine", None)], signing_key=KEY)
    # Someone who can write the directory but lacks the key: a valid, unsigned snapshot...
    _native.snapshot_write(path, [("k", b"planted", None)])
    assert _read_items(path) == [("k", b"planted", None)]  # the SHA-256 cannot tell
    with pytest.raises(CorruptData, match="not signed"):
        _native.snapshot_read(path, signing_key=KEY)
    # ...or one signed with a key of their own.
    _native.snapshot_write(path, [("k", b"planted", None)], signing_key=b"attacker key 0123456")
    with pytest.raises(CorruptData, match="signature does not verify"):
        _native.snapshot_read(path, signing_key=KEY)
    with pytest.raises(ValueError, match="16 bytes"):
        _native.snapshot_read(path, signing_key=b"short")


def _zstd_bomb(path: Path, size: int) -> None:
    """A checkpoint whose few-KiB zstd payload inflates to ``size`` bytes, with a wrong SHA-256."""
    raw = path.with_name("raw.ckpt")
    _native.snapshot_write(raw, [("k", bytes(size), None)], level=19)
    data = bytearray(raw.read_bytes())
    raw.unlink()
    data[48] ^= 0xFF  # the recorded digest no longer matches
    path.write_bytes(bytes(data))


BOMB_PROBE = """
import resource, sys
from statekit import _native
from statekit.errors import CorruptData
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for check in (_native.snapshot_read, _native.snapshot_verify):
    try:
        check(sys.argv[1])
    except CorruptData as exc:
        assert "checksum mismatch" in str(exc), exc
    else:
        raise SystemExit("not refused")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024)
"""


def test_a_zstd_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    # 1 GiB of zeros in about 33 KB: it used to be inflated (1 GiB of RSS) before the digest
    # was compared. The peak RSS growth is measured in a fresh process (ru_maxrss is a peak).
    path = tmp_path / "bomb.ckpt"
    _zstd_bomb(path, 1 << 30)
    assert path.stat().st_size < 64 << 10
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    grown_mib = int(proc.stdout)
    assert grown_mib < 64, f"RSS grew by {grown_mib} MiB"


def test_declared_sizes_beyond_what_zstd_can_produce_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.ckpt"
    _native.snapshot_write(path, [("k", b"v" * 100, None)])
    data = bytearray(path.read_bytes())
    payload = len(data) - 82
    struct.pack_into("<Q", data, 32, payload * 32768 + 1)
    data[48:80] = hashlib.sha256(bytes(data[82:]) + bytes(data[:48]) + bytes(data[80:82])).digest()
    path.write_bytes(bytes(data))
    for check in (_native.snapshot_read, _native.snapshot_verify, _native.snapshot_info):
        with pytest.raises(CorruptData, match="implausible"):
            check(path)


@pytest.mark.parametrize("created_at", [1e300, float("nan"), -1.0, float("inf")])
def test_out_of_range_creation_times_are_corrupt(tmp_path: Path, created_at: float) -> None:
    path = tmp_path / "t.ckpt"
    _native.snapshot_write(path, [("k", b"v", None)], compress=False)
    data = bytearray(path.read_bytes())
    struct.pack_into("<d", data, 16, created_at)
    data[48:80] = hashlib.sha256(bytes(data[82:]) + bytes(data[:48]) + bytes(data[80:82])).digest()
    path.write_bytes(bytes(data))
    for check in (_native.snapshot_read, _native.snapshot_verify, _native.snapshot_info):
        with pytest.raises(CorruptData, match="creation time"):
            check(path)


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    real = tmp_path / "real.ckpt"
    _native.snapshot_write(real, [("k", b"v", None)])
    (tmp_path / "link.ckpt").symlink_to(real)
    (tmp_path / "dir.ckpt").mkdir()
    os.mkfifo(tmp_path / "fifo.ckpt")  # opening it for reading used to block forever
    for name, what in [("link.ckpt", "symbolic link"), ("dir.ckpt", "directory"), ("fifo.ckpt", "FIFO")]:
        for check in (_native.snapshot_read, _native.snapshot_verify, _native.snapshot_info):
            with pytest.raises(CorruptData, match=what):
                check(tmp_path / name)


@pytest.mark.parametrize(
    ("key", "expires_at", "message"),
    [
        (b"", None, "is empty"),
        (b"\xff\xfe", None, "not UTF-8"),
        (b"{statekit-index:}:lex", None, "reserved namespace"),
        (b"ok", float("nan"), "NaN"),
    ],
)
def test_reserved_prefix_refuses_invalid_keys(
    tmp_path: Path, key: bytes, expires_at: float | None, message: str
) -> None:
    path = tmp_path / "k.ckpt"
    _native.snapshot_write(path, [(b"fine", b"1", None), (key, b"2", expires_at)])
    with pytest.raises(CorruptData, match=message):
        _native.snapshot_read(path, reserved_prefix="{statekit-")
    _native.snapshot_write(path, [("fine", b"1", 2.0)])
    assert _native.snapshot_read(path, reserved_prefix="{statekit-")[1] == ["fine"]


@file_settings(300)
@given(
    compress=st.booleans(),
    signed=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=6),
    rehash=st.booleans(),
)
def test_forged_headers_only_ever_raise_corrupt_data(
    tmp_path: Path, compress: bool, signed: bool, edits: list[tuple[int, int]], rehash: bool
) -> None:
    # A hostile writer edits header, extension and first payload bytes, and may recompute the
    # SHA-256: every reader must answer with CorruptData (or succeed), never anything else
    # (no panic, no OverflowError from a wild created_at, no huge allocation).
    path = tmp_path / "h.ckpt"
    key = KEY if signed else None
    _native.snapshot_write(
        path,
        [("job:a", b"1" * 40, 5.0), ("job:b", b"2", None)],
        compress=compress,
        prefix="job:",
        signing_key=key,
    )
    data = bytearray(path.read_bytes())
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    if rehash and data[8:10] in (b"\x01\x00", b"\x02\x00"):
        offset, _ = reference.snapshot_layout(bytes(data))
        offset = min(offset, len(data))
        ext = bytes(data[80:offset])
        data[48:80] = hashlib.sha256(bytes(data[offset:]) + bytes(data[:48]) + ext).digest()
    path.write_bytes(bytes(data))
    for check in (
        lambda: _native.snapshot_info(path),
        lambda: _native.snapshot_verify(path, deep=False, signing_key=key),
        lambda: _native.snapshot_verify(path, signing_key=key),
        lambda: _native.snapshot_read(path, reserved_prefix="{statekit-", signing_key=key),
    ):
        with contextlib.suppress(CorruptData):
            check()


@pytest.mark.parametrize("as_columns", [False, True])
def test_write_releases_every_reference_it_took(tmp_path: Path, as_columns: bool) -> None:
    # The references are dropped on another thread while the file is fsynced; none may leak,
    # whether the write succeeds or fails before (a missing directory) or after staging.
    value = b"v" * 100
    keys = [f"k{i}" for i in range(5000)]
    values = [value] * len(keys)
    records: object = (
        (keys, values, None) if as_columns else list(zip(keys, values, [None] * len(keys), strict=True))
    )
    before = sys.getrefcount(value)
    _native.snapshot_write(tmp_path / "ok.ckpt", records, verify=True)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        _native.snapshot_write(tmp_path / "missing" / "x.ckpt", records)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        _native.snapshot_write(tmp_path / "p.ckpt", records, prefix="zz")  # type: ignore[arg-type]
    assert sys.getrefcount(value) == before
    assert _native.snapshot_verify(tmp_path / "ok.ckpt").entry_count == len(keys)
