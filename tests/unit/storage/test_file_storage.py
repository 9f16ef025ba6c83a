"""FileStorage: layout, streaming, metadata, manifest last, atomic files, callbacks, errors."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statekit.errors import ConfigError, InvalidBidError, SerializationFailed, StorageError
from statekit.storage import BundleRef, FileStorage, Recipe, bid_time
from tests.unit.storage.conftest import chunks


class Hook:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def on_bundle_complete_hook(self, bundle_ref: BundleRef) -> None:
        self.seen.append(bundle_ref.bid)


async def test_seed_usage_example(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "captures")
    loader, locator = Hook(), Hook()
    recipe = Recipe("fr", loader=loader, locators=(locator,))
    bundle_ref = BundleRef(primary_url="https://example.com", resources_count=2)
    bundle_context = await storage.start_bundle(bundle_ref, recipe)
    await bundle_context.add_resource(
        "https://example.com/page.html", "text/html", 200, chunks(b"<html></html>")
    )
    await bundle_context.add_resource("https://example.com/data.json", "application/json", 200, chunks(b"{}"))
    await bundle_context.complete({"source": "us-fl"})

    directory = tmp_path / "captures" / f"bundle_{bundle_ref.bid}"
    assert sorted(os.listdir(directory)) == [
        "bundle.json",
        "data.json",
        "data.json.meta",
        "page.html",
        "page.html.meta",
    ]
    assert (directory / "page.html").read_bytes() == b"<html></html>"
    meta = json.loads((directory / "page.html.meta").read_text())
    assert meta["url"] == "https://example.com/page.html"
    assert meta["content_type"] == "text/html"
    assert meta["status_code"] == 200
    assert meta["size"] == 13
    assert meta["sha256"] == hashlib.sha256(b"<html></html>").hexdigest()
    assert meta["stored_at"].endswith("Z")
    manifest = json.loads((directory / "bundle.json").read_text())
    assert manifest["bid"] == bundle_ref.bid
    assert manifest["metadata"] == {"source": "us-fl"}
    assert manifest["recipe_id"] == "fr"
    assert [r["name"] for r in manifest["resources"]] == ["page.html", "data.json"]
    assert loader.seen == [bundle_ref.bid]
    assert locator.seen == [bundle_ref.bid]


async def test_seed_writer_form(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "files")
    async with storage.open_bundle("bundle_123", {"source": "us-fl"}) as bundle:
        await bundle.write(b"file ")
        await bundle.write(b"content")
    ref = bundle.get_bundle_ref()
    assert bundle_time_ok(ref.bid)
    directory = storage.bundle_path(ref.bid)
    assert (directory / "bundle_123").read_bytes() == b"file content"
    assert json.loads((directory / "bundle.json").read_text())["meta"] == {"bundle_name": "bundle_123"}


def bundle_time_ok(bid: str) -> bool:
    return bid_time(bid).year >= 2024


async def test_writer_form_failure_leaves_incomplete_bundle_without_the_resource(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)

    async def write_then_fail() -> None:
        async with storage.open_bundle("x", {}) as bundle:
            await bundle.write(b"partial")
            raise RuntimeError("caller failed")

    with pytest.raises(RuntimeError):
        await write_then_fail()
    [info] = storage.list_bundles()
    assert not info.complete
    assert os.listdir(info.path) == []


async def test_incomplete_bundles_are_listed_as_such(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    done = await storage.start_bundle(BundleRef(), Recipe("r"))
    await done.complete({})
    pending = await storage.start_bundle(BundleRef(), Recipe("r"))
    await pending.add_resource("https://h/a", None, 200, chunks(b"a"))
    listed = storage.list_bundles()
    assert [(b.bid, b.complete) for b in listed] == [
        (done.bundle_ref.bid, True),
        (pending.bundle_ref.bid, False),
    ]
    assert storage.read_manifest(pending.bundle_ref.bid) is None


async def test_large_resource_streams_and_hashes(tmp_path: Path) -> None:
    block = os.urandom(1 << 16)
    expected = hashlib.sha256()

    async def stream() -> AsyncIterator[bytes]:
        for i in range(80):  # 5 MiB in 64 KiB chunks, gathered into 1 MiB writes
            chunk = block[i:] + block[:i]
            expected.update(chunk)
            yield chunk

    storage = FileStorage(tmp_path)
    ctx = await storage.start_bundle(BundleRef(), Recipe("r"))
    await ctx.add_resource("https://h/big.bin", None, 200, stream())
    [resource] = ctx.resources
    assert resource.size == 80 << 16
    assert resource.sha256 == expected.hexdigest()
    assert hashlib.sha256((ctx.directory / "big.bin").read_bytes()).hexdigest() == expected.hexdigest()


async def test_failing_stream_leaves_nothing_and_frees_the_name(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"half"
        raise ConnectionError("peer went away")

    storage = FileStorage(tmp_path)
    ctx = await storage.start_bundle(BundleRef(), Recipe("r"))
    with pytest.raises(ConnectionError):
        await ctx.add_resource("https://h/a.txt", None, 200, broken())
    assert os.listdir(ctx.directory) == []  # no temp file, no partial resource
    await ctx.add_resource("https://h/a.txt", None, 200, chunks(b"whole"))
    assert (ctx.directory / "a.txt").read_bytes() == b"whole"


async def test_stream_must_yield_bytes(tmp_path: Path) -> None:
    async def strings() -> AsyncIterator[bytes]:
        yield "text"  # type: ignore[misc]

    ctx = await FileStorage(tmp_path).start_bundle(BundleRef(), Recipe("r"))
    with pytest.raises(StorageError, match="expected bytes"):
        await ctx.add_resource("https://h/a", None, 200, strings())


async def test_name_collisions_and_hostile_urls(tmp_path: Path) -> None:
    ctx = await FileStorage(tmp_path).start_bundle(BundleRef(), Recipe("r"))
    for url in ["https://h/../../etc/passwd", "https://h/a/passwd", "https://h/bundle.json", "/"]:
        await ctx.add_resource(url, None, 200, chunks(b"x"))
    assert [r.name for r in ctx.resources] == ["passwd", "passwd-2", "bundle.json_", "resource"]
    assert all(p.parent == ctx.directory for p in ctx.directory.iterdir())
    assert not (tmp_path.parent / "etc").exists()


async def test_complete_rules(tmp_path: Path) -> None:
    ctx = await FileStorage(tmp_path).start_bundle(BundleRef(), Recipe("r"))
    with pytest.raises(SerializationFailed):
        await ctx.complete({"bad": object()})
    assert not (ctx.directory / "bundle.json").exists()
    await ctx.complete({})
    with pytest.raises(StorageError, match="already complete"):
        await ctx.complete({})
    with pytest.raises(StorageError, match="already complete"):
        await ctx.add_resource("https://h/a", None, 200, chunks(b"a"))


async def test_failing_callback_is_a_storage_error_after_the_manifest(tmp_path: Path) -> None:
    class Bad:
        async def on_bundle_complete_hook(self, bundle_ref: BundleRef) -> None:
            raise KeyError("x")

    ctx = await FileStorage(tmp_path).start_bundle(BundleRef(), Recipe("r", loader=Bad()))
    with pytest.raises(StorageError, match=r"Bad\.on_bundle_complete_hook") as info:
        await ctx.complete({})
    assert isinstance(info.value.__cause__, KeyError)
    assert (ctx.directory / "bundle.json").exists()


async def test_bad_bid_and_missing_dir(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "missing", create_dirs=False)
    with pytest.raises(ConfigError):
        await storage.start_bundle(BundleRef(), Recipe("r"))
    with pytest.raises(InvalidBidError):
        storage.bundle_path("../../x")

    class Forged:  # a duck-typed ref with a hostile bid never reaches the file system
        bid = "../../escape"

    with pytest.raises(InvalidBidError):
        await FileStorage(tmp_path).start_bundle(Forged(), Recipe("r"))  # type: ignore[arg-type]
    assert not (tmp_path.parent / "escape").exists()


async def test_restarting_a_complete_bundle_is_refused(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    ref = BundleRef()
    await (await storage.start_bundle(ref, Recipe("r"))).complete({})
    with pytest.raises(StorageError, match="already complete"):
        await storage.start_bundle(ref, Recipe("r"))


async def test_verify_bundle_reports_every_damaged_resource_and_never_leaves_the_bundle(
    tmp_path: Path,
) -> None:
    storage = FileStorage(tmp_path / "out")
    ctx = await storage.start_bundle(BundleRef(), Recipe("r"))
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt"):
        await ctx.add_resource(f"https://h/{name}", "text/plain", 200, chunks(name.encode() * 1000))
    await ctx.complete({})
    bid = ctx.bundle_ref.bid
    assert await storage.verify_bundle(bid) == []

    directory = ctx.directory
    data = bytearray((directory / "a.txt").read_bytes())
    data[100] ^= 1  # same size, one bit flipped
    (directory / "a.txt").write_bytes(bytes(data))
    (directory / "b.txt").write_bytes(b"short")
    (directory / "c.txt").unlink()
    (directory / "d.txt").unlink()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"d.txt" * 1000)  # the right content, but reached through a symlink
    (directory / "d.txt").symlink_to(secret)
    manifest = json.loads((directory / "bundle.json").read_text())
    manifest["resources"].append({"name": "../secret.txt", "size": 5000, "sha256": "0" * 64})
    (directory / "bundle.json").write_text(json.dumps(manifest))

    problems = await storage.verify_bundle(bid)
    assert len(problems) == 5
    assert problems[0].startswith("a.txt: SHA-256 ")
    assert problems[1] == "b.txt: 5 bytes, the manifest says 5000"
    assert problems[2] == "c.txt: missing"
    assert problems[3] == "d.txt: not a regular file"
    assert problems[4] == "'../secret.txt': not a resource name statekit writes"
    assert "e.txt" not in " ".join(problems)


async def test_verify_bundle_refuses_incomplete_bundles_and_bad_bids(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    pending = await storage.start_bundle(BundleRef(), Recipe("r"))
    await pending.add_resource("https://h/a", None, 200, chunks(b"a"))
    with pytest.raises(StorageError, match="no manifest"):
        await storage.verify_bundle(pending.bundle_ref.bid)
    with pytest.raises(InvalidBidError):
        await storage.verify_bundle("../../etc")
