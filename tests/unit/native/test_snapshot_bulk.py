"""The fast checkpoint paths against plain-Python references.

* ``snapshot_write`` frames records on the fly from the caller's objects (columns or tuples):
  the file must be the reference framing of those records, whatever their shape.
* ``snapshot_load`` returns a dict for a bulk load: it must hold what a dict built from
  ``snapshot_read``'s columns holds (a later record of a key wins), and refuse exactly the
  files ``snapshot_read`` refuses, with the same exception type.
* ``MemoryStateBackend._replace_prefix_loaded`` must leave the backend as ``replace_prefix``
  does with the same content.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit import _native
from statekit.backends.base import RESERVED_KEY_PREFIX, ItemColumns
from statekit.backends.memory import MemoryStateBackend
from statekit.errors import CorruptData
from tests.unit.native import reference

Item = tuple[str, bytes, float | None]

# Valid statekit keys: non-empty, no surrogates, outside the reserved namespace; few
# distinct ones, so duplicates are common.
keys_st = st.sampled_from(["a", "b", "p:1", "p:2", "p:é", "q:x", "{statekit-x", ""]) | st.text(
    st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8
)
valid_keys_st = keys_st.filter(lambda k: bool(k) and not k.startswith(RESERVED_KEY_PREFIX))
expiries_st = st.none() | st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=4e9)
items_st = st.lists(st.tuples(valid_keys_st, st.binary(max_size=40), expiries_st), max_size=25)
any_items_st = st.lists(
    st.tuples(keys_st, st.binary(max_size=8), st.none() | st.floats(allow_infinity=False)), max_size=6
)

FILES = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def as_mapping(items: list[Item]) -> tuple[dict[str, bytes], dict[str, float] | None, int]:
    """The reference of ``snapshot_load``: a dict per key, the last record winning."""
    values: dict[str, bytes] = {}
    expires: dict[str, float] = {}
    for key, value, at in items:
        values[key] = value
        if at is None:
            expires.pop(key, None)
        else:
            expires[key] = at
    any_expiry = any(at is not None for _, _, at in items)
    return values, (expires if any_expiry else None), sum(len(v) for _, v, _ in items)


def columns(items: list[Item]) -> tuple[list[str], list[bytes], list[float | None] | None]:
    """``items`` as the three lists ``snapshot_write`` reads by index (as from an ``ItemColumns``)."""
    expires = [e for _, _, e in items]
    keys, values = [k for k, _, _ in items], [v for _, v, _ in items]
    return keys, values, None if expires.count(None) == len(expires) else expires


@FILES
@given(items=items_st, compress=st.booleans(), as_columns=st.booleans())
def test_the_file_is_the_reference_framing(
    tmp_path: Path, items: list[Item], compress: bool, as_columns: bool
) -> None:
    path = tmp_path / "s.ckpt"
    records = columns(items) if as_columns else items
    _native.snapshot_write(path, records, compress=compress, created_at=1.0)
    expected = [(k.encode(), v, e) for k, v, e in items]
    if compress:  # the reference reads uncompressed files only
        _, keys, values, expires = _native.snapshot_read(path, str_keys=False)
        assert list(zip(keys, values, expires or [None] * len(keys), strict=True)) == expected
    else:
        assert reference.snapshot_records(path.read_bytes()) == expected


@FILES
@given(items=items_st, compress=st.booleans())
def test_load_is_the_dict_of_the_records(tmp_path: Path, items: list[Item], compress: bool) -> None:
    path = tmp_path / "s.ckpt"
    _native.snapshot_write(path, columns(items), compress=compress)
    info, values, expires, value_bytes = _native.snapshot_load(path, reserved_prefix=RESERVED_KEY_PREFIX)
    assert (values, expires, value_bytes) == as_mapping(items)
    assert list(values) == list(as_mapping(items)[0])  # insertion order too
    assert info.checksum == _native.snapshot_verify(path).checksum


def test_load_of_many_records_and_chunk_boundaries(tmp_path: Path) -> None:
    # More than one framing chunk (1 MiB) and more than the two-thread CRC threshold.
    items: list[Item] = [(f"k:{i:06d}", bytes([i % 256]) * (i % 700), None) for i in range(20_000)]
    items[7] = ("k:000007", b"x" * (3 << 20), 5.5)  # a value larger than a chunk
    items.append(("k:000003", b"again", None))
    path = tmp_path / "big.ckpt"
    for records in (columns(items), items):
        _native.snapshot_write(path, records, prefix="k:")
        loaded = _native.snapshot_load(path, reserved_prefix=RESERVED_KEY_PREFIX, require_prefix="k:")
        assert loaded[1:] == as_mapping(items)
        _, keys, values, _ = _native.snapshot_read(path)
        assert keys == [k for k, _, _ in items]
        assert values == [v for _, v, _ in items]


@FILES
@given(items=any_items_st, compress=st.booleans(), data=st.data())
def test_load_refuses_what_read_refuses(
    tmp_path: Path, items: list[tuple[str, bytes, float | None]], compress: bool, data: st.DataObject
) -> None:
    path = tmp_path / "s.ckpt"
    _native.snapshot_write(path, items, compress=compress)
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans(), label="damage"):
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        raw[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        path.write_bytes(raw)
    require = data.draw(st.sampled_from([None, "p:", "a"]), label="require_prefix")
    errors: list[type[BaseException] | None] = []
    results = []
    for read in (_native.snapshot_read, _native.snapshot_load):
        try:
            results.append(read(path, reserved_prefix=RESERVED_KEY_PREFIX, require_prefix=require))
            errors.append(None)
        except (CorruptData, ValueError) as exc:
            errors.append(CorruptData if isinstance(exc, CorruptData) else ValueError)
    assert errors[0] == errors[1]
    if errors[0] is None:
        _, keys, values, expires = results[0]
        rebuilt = list(zip(keys, values, expires or [None] * len(keys), strict=True))
        assert results[1][1:] == as_mapping(rebuilt)


def test_load_needs_the_signing_key_when_signed(tmp_path: Path) -> None:
    path = tmp_path / "s.ckpt"
    key = b"k" * 32
    _native.snapshot_write(path, [("a", b"1", None)], signing_key=key)
    assert _native.snapshot_load(path, reserved_prefix="{", signing_key=key)[1] == {"a": b"1"}
    with pytest.raises(CorruptData, match="signature"):
        _native.snapshot_load(path, reserved_prefix="{", signing_key=b"z" * 32)
    _native.snapshot_write(path, [("a", b"1", None)])
    with pytest.raises(CorruptData, match="not signed"):
        _native.snapshot_load(path, reserved_prefix="{", signing_key=key)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


existing_st = st.lists(
    st.tuples(valid_keys_st, st.binary(max_size=4), st.none() | st.integers(1, 50)), max_size=8
)


@settings(max_examples=150, deadline=None)
@given(
    existing=existing_st,
    items=st.lists(
        st.tuples(valid_keys_st, st.binary(max_size=4), st.none() | st.floats(900.0, 1100.0)), max_size=10
    ),
    prefix=st.sampled_from(["", "p:", "a", "q:"]),
)
def test_bulk_load_leaves_the_backend_as_replace_prefix_does(
    existing: list[tuple[str, bytes, int | None]], items: list[Item], prefix: str
) -> None:
    # One record per key, as a checkpoint written by statekit holds (with duplicates, the bulk
    # load keeps the last record even when it expired, replace_prefix an earlier live one).
    items = list({key: (key, value, at) for key, value, at in items if key.startswith(prefix)}.values())

    async def run(bulk: bool) -> tuple[list[tuple[str, bytes]], dict[str, float], int, int]:
        clock = Clock()
        backend = MemoryStateBackend(clock=clock)
        for key, value, ttl in existing:
            await backend.put(key, value, ttl)
        if bulk:
            values, expires, value_bytes = as_mapping(items)
            await backend._replace_prefix_loaded(prefix, values, expires, value_bytes)
        else:
            await backend.replace_prefix(prefix, ItemColumns(*columns(items)))
        clock.now = 1001.0
        found = await backend.range("")
        stats = backend.stats_nowait()
        expiries = {key: at for key, at in backend._expires.items()}
        await backend.close()
        return found, expiries, stats.put_count, stats.total_keys

    by_columns = asyncio.run(run(bulk=False))
    by_dict = asyncio.run(run(bulk=True))
    assert by_dict[:2] == by_columns[:2]
    assert by_dict[3] == by_columns[3]


@FILES
@given(items=items_st, compress=st.booleans(), signed=st.booleans())
def test_write_with_verify_is_the_same_file(
    tmp_path: Path, items: list[Item], compress: bool, signed: bool
) -> None:
    key = b"s" * 16 if signed else None
    plain = _native.snapshot_write(
        tmp_path / "a.ckpt", columns(items), compress=compress, created_at=5.0, signing_key=key
    )
    checked = _native.snapshot_write(
        tmp_path / "b.ckpt", columns(items), compress=compress, created_at=5.0, signing_key=key, verify=True
    )
    assert (tmp_path / "a.ckpt").read_bytes() == (tmp_path / "b.ckpt").read_bytes()
    assert (
        checked.checksum
        == plain.checksum
        == _native.snapshot_verify(tmp_path / "b.ckpt", signing_key=key).checksum
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt"]
