"""UnzipResourceDecorator: magic-byte detection, streaming gzip, zip members as resources,
zip-slip impossible, bombs bounded with nothing stored, pass-through of everything else."""

from __future__ import annotations

import gzip
import io
import os
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit.errors import ConfigError, CorruptData, DecompressionBombError
from statekit.storage import BundleRef, FileStorage, Recipe, UnzipResourceDecorator, create_storage_stack
from statekit.storage.unzip import RATIO_GRACE
from tests.unit.storage.conftest import chunks


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


async def start(tmp_path: Path, **options: object):  # type: ignore[no-untyped-def]
    storage = UnzipResourceDecorator(FileStorage(tmp_path), **options)  # type: ignore[arg-type]
    return await storage.start_bundle(BundleRef(), Recipe("r"))


async def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    ctx = await start(tmp_path)
    payload = b'{"rows": [1, 2, 3]}' * 100
    await ctx.add_resource(
        "https://h/data.json.gz", "application/gzip", 200, chunks(gzip.compress(payload), 5)
    )
    await ctx.add_resource("https://h/misnamed.txt", "text/plain", 200, chunks(gzip.compress(b"hidden gzip")))
    await ctx.add_resource("https://h/fake.gz", None, 200, chunks(b"not gzip at all"))
    d = ctx.directory
    assert (d / "data.json").read_bytes() == payload
    assert (d / "misnamed.txt").read_bytes() == b"hidden gzip"
    assert (d / "fake.gz").read_bytes() == b"not gzip at all"
    by_name = {r.name: r for r in ctx.resources}
    assert by_name["data.json"].content_type == "application/json"
    assert by_name["misnamed.txt"].content_type == "text/plain"


async def test_multi_member_gzip(tmp_path: Path) -> None:
    ctx = await start(tmp_path)
    await ctx.add_resource(
        "https://h/x.gz", None, 200, chunks(gzip.compress(b"one ") + gzip.compress(b"two"), 3)
    )
    assert (ctx.directory / "x").read_bytes() == b"one two"


async def test_short_and_empty_resources_pass_through(tmp_path: Path) -> None:
    ctx = await start(tmp_path)
    await ctx.add_resource("https://h/empty", None, 204, chunks(b""))
    await ctx.add_resource("https://h/one", None, 200, chunks(b"\x1f"))
    assert (ctx.directory / "empty").read_bytes() == b""
    assert (ctx.directory / "one").read_bytes() == b"\x1f"


async def test_zip_members_become_resources_and_cannot_slip(tmp_path: Path) -> None:
    ctx = await start(tmp_path / "out")
    archive = make_zip(
        {
            "../../evil.sh": b"rm -rf /",
            "/etc/passwd": b"root",
            "docs/readme.txt": b"hello",
            "other/readme.txt": b"second",
            "bundle.json": b"not our manifest",
        }
    )
    await ctx.add_resource("https://h/archive.zip", "application/zip", 200, chunks(archive, 1000))
    names = sorted(p.name for p in ctx.directory.iterdir() if not p.name.endswith(".meta"))
    assert names == ["bundle.json_", "docs_readme.txt", "etc_passwd", "evil.sh", "other_readme.txt"]
    assert not (tmp_path / "evil.sh").exists()
    assert (ctx.directory / "docs_readme.txt").read_bytes() == b"hello"
    urls = {r.name: r.url for r in ctx.resources}
    assert urls["docs_readme.txt"] == "https://h/archive.zip#docs/readme.txt"
    await ctx.complete({})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=6, unique=True))
async def test_any_member_names_stay_inside(tmp_path: Path, members: list[str]) -> None:
    import uuid

    ctx = await start(tmp_path / uuid.uuid4().hex)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i, name in enumerate(members):
            info = zipfile.ZipInfo(name)  # raw names, no normalisation by the writer
            archive.writestr(info, str(i).encode())
    await ctx.add_resource("https://h/a.zip", None, 200, chunks(buf.getvalue(), 64))
    for path in ctx.directory.iterdir():
        assert path.resolve().parent == ctx.directory.resolve()
    names = [r.name for r in ctx.resources]
    assert len(set(names)) == len(names)


async def test_gzip_bomb_ratio_stores_nothing(tmp_path: Path) -> None:
    ctx = await start(tmp_path)
    bomb = gzip.compress(b"\0" * (64 << 20))
    with pytest.raises(DecompressionBombError) as info:
        await ctx.add_resource("https://h/bomb.gz", None, 200, chunks(bomb, 1 << 16))
    assert info.value.limit == "max_ratio"
    assert os.listdir(ctx.directory) == []


async def test_gzip_max_size_stores_nothing(tmp_path: Path) -> None:
    ctx = await start(tmp_path, max_size=1000)
    with pytest.raises(DecompressionBombError) as info:
        await ctx.add_resource("https://h/x.gz", None, 200, chunks(gzip.compress(os.urandom(5000)), 512))
    assert info.value.limit == "max_size"
    assert os.listdir(ctx.directory) == []


async def test_small_high_ratio_files_are_fine(tmp_path: Path) -> None:
    ctx = await start(tmp_path)
    data = b"\0" * (RATIO_GRACE // 2)  # ratio ~1000, but tiny
    await ctx.add_resource("https://h/zeros.gz", None, 200, chunks(gzip.compress(data), 1 << 12))
    assert (ctx.directory / "zeros").stat().st_size == len(data)


async def test_zip_bomb_stores_no_member(tmp_path: Path) -> None:
    ctx = await start(tmp_path)
    archive = make_zip({"a.txt": b"fine", "b.bin": b"\0" * (32 << 20)})
    with pytest.raises(DecompressionBombError):
        await ctx.add_resource("https://h/a.zip", None, 200, chunks(archive, 1 << 16))
    assert os.listdir(ctx.directory) == []


async def test_zip_member_count_bounded(tmp_path: Path) -> None:
    ctx = await start(tmp_path, max_members=3)
    archive = make_zip({f"{i}.txt": b"x" for i in range(4)})
    with pytest.raises(DecompressionBombError, match="max_members"):
        await ctx.add_resource("https://h/a.zip", None, 200, chunks(archive, 100))
    assert os.listdir(ctx.directory) == []


async def test_lying_zip_header_cannot_inflate_past_declared_size(tmp_path: Path) -> None:
    ctx = await start(tmp_path)
    archive = bytearray(make_zip({"big.bin": b"A" * 200_000}))
    # Declare 10 bytes in the central directory: zipfile stops there and the CRC check fails.
    central = archive.rfind(b"PK\x01\x02")
    archive[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(CorruptData):
        await ctx.add_resource("https://h/a.zip", None, 200, chunks(bytes(archive), 4096))
    assert not (ctx.directory / "big.bin").exists()


async def test_corrupt_inputs_are_typed_errors(tmp_path: Path) -> None:
    ctx = await start(tmp_path)
    with pytest.raises(CorruptData):
        await ctx.add_resource("https://h/t.gz", None, 200, chunks(gzip.compress(b"abc" * 1000)[:-20]))
    with pytest.raises(CorruptData):
        await ctx.add_resource("https://h/z.gz", None, 200, chunks(b"\x1f\x8b" + b"garbage" * 10))
    with pytest.raises(CorruptData):
        await ctx.add_resource("https://h/z.zip", None, 200, chunks(b"PK\x03\x04" + b"garbage" * 10))
    with pytest.raises(CorruptData):
        await ctx.add_resource("https://h/tail.gz", None, 200, chunks(gzip.compress(b"x") + b"trailing junk"))
    assert os.listdir(ctx.directory) == []
    assert zlib  # the module under test maps zlib.error to CorruptData


async def test_writer_form_decompresses(tmp_path: Path) -> None:
    storage = UnzipResourceDecorator(FileStorage(tmp_path))
    compressed_data = gzip.compress(b"decompressed content")
    async with storage.open_bundle("compressed_bundle", {}) as bundle:
        await bundle.write(compressed_data[:5])
        await bundle.write(compressed_data[5:])
    directory = storage.bundle_path(bundle.get_bundle_ref().bid)
    assert (directory / "compressed_bundle").read_bytes() == b"decompressed content"


def test_options_and_stack(tmp_path: Path) -> None:
    base = FileStorage(tmp_path)
    with pytest.raises(ConfigError):
        UnzipResourceDecorator(base, max_ratio=0)
    assert create_storage_stack(base_storage=base, unzip_resources=False) is base
    stacked = create_storage_stack(base_storage=base, unzip_resources=True, max_ratio=10)
    assert isinstance(stacked, UnzipResourceDecorator)
    assert stacked.max_ratio == 10
    with pytest.raises(ConfigError, match="bundle_resources"):
        create_storage_stack(base_storage=base, unzip_resources=True, bundle_resources=True)


async def test_writer_form_surfaces_a_bomb_and_stores_nothing(tmp_path: Path) -> None:
    storage = UnzipResourceDecorator(FileStorage(tmp_path))
    bomb = gzip.compress(b"\0" * (16 << 20))

    async def write_bomb() -> None:
        async with storage.open_bundle("b", {}) as bundle:
            for i in range(0, len(bomb), 4096):
                await bundle.write(bomb[i : i + 4096])

    with pytest.raises(DecompressionBombError):
        await write_bomb()
    [info] = storage.list_bundles()
    assert not info.complete
    assert os.listdir(info.path) == []
