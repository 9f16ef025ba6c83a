"""The paged range index (``index_layout="paged"``) on real Redis servers: splits, deletes, reads.

Pages hold at most ``PAGE_MAX`` (120) members; most tests here shrink that to a few members with
:func:`small_pages` (the constant of the Lua library, patched into every script), so that a few
dozen keys already split pages, empty them and read across them. The structure is checked on the
server: every page within its directory range, no empty page, page sizes within the bound.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from tests.ci import require_module
from tests.servers.redis_servers import RedisCluster, RedisServer

redis = require_module("redis", "the Redis tests need redis-py: pip install statekit[redis]")

from statekit import create_store  # noqa: E402
from statekit._factory import options_from_env  # noqa: E402
from statekit.backends import RedisConfig  # noqa: E402
from statekit.backends.redis import RedisStateBackend  # noqa: E402
from statekit.backends.redis import _scripts as lua  # noqa: E402
from statekit.errors import ConfigError  # noqa: E402


def small_pages(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Every script of the paged index with pages of at most ``size`` members."""
    old = f"local PAGE_MAX = {lua.PAGE_MAX}\n"
    for value in vars(lua).values():
        if isinstance(value, lua.Script) and old in value.body:
            patched = lua.Script(value.body.replace(old, f"local PAGE_MAX = {size}\n"))
            monkeypatch.setattr(value, "body", patched.body)
            monkeypatch.setattr(value, "sha", patched.sha)


def pages(server: RedisServer, tag: str) -> dict[str, list[str]]:
    """The directory of one shard and its pages: boundary -> members, read raw from the server."""
    client = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    try:
        out: dict[str, list[str]] = {}
        for boundary in client.zrange("{" + tag + "}:dir", 0, -1):
            out[boundary] = client.zrange("{" + tag + "}:p:" + boundary, 0, -1)
        return out
    finally:
        client.close()


def check_structure(tree: dict[str, list[str]], page_max: int) -> list[str]:
    """The members in order, after checking the B-tree's invariants."""
    bounds = list(tree)
    assert bounds == sorted(bounds, key=lambda b: b.encode())
    assert not bounds or bounds[0] == ""  # the first page is always there
    members: list[str] = []
    for i, bound in enumerate(bounds):
        page = tree[bound]
        assert bound == "" or page, f"empty page {bound!r} left in the directory"
        assert len(page) <= page_max
        upper = bounds[i + 1] if i + 1 < len(bounds) else None
        assert all(m.encode() >= bound.encode() for m in page)
        assert upper is None or all(m.encode() < upper.encode() for m in page)
        members += page
    return members


@pytest.fixture
async def paged(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RedisStateBackend]:
    small_pages(monkeypatch, 4)
    b = RedisStateBackend(
        RedisConfig.from_url(redis_url, key_prefix="pg:", index_layout="paged", pipeline_batch_size=7)
    )
    yield b
    await b.close()


TAG = "statekit-index:pg:"


async def test_single_puts_split_pages(paged: RedisStateBackend, redis_server: RedisServer) -> None:
    keys = [f"k{i:03d}" for i in range(40)]
    for k in keys[::-1]:  # descending: every insert lands in the first page
        await paged.put(k, b"v")
    assert check_structure(pages(redis_server, TAG), 4) == keys
    assert len(pages(redis_server, TAG)) >= 10
    assert await paged.list_keys("") == keys


async def test_a_batch_into_one_page_splits_it_repeatedly(
    paged: RedisStateBackend, redis_server: RedisServer
) -> None:
    await paged.put("m", b"v")  # one page, then a batch of 200 keys all falling into it
    keys = sorted(f"m{i:03d}" for i in range(200))
    await paged.batch_put([(k, b"v") for k in reversed(keys)])
    tree = pages(redis_server, TAG)
    assert check_structure(tree, 4) == ["m", *keys]
    assert len(tree) >= 50
    assert (await paged.stats()).total_keys == 201


async def test_keys_longer_than_a_listpack_value_and_unicode(
    paged: RedisStateBackend, redis_server: RedisServer
) -> None:
    keys = [
        "a" * 200,
        "a" * 65 + "b",
        "a",
        "é",
        "e\u0301",
        "z",
        "日本",
        "日本語",
        "\U0001f600",
        "ß",
        "Z",
        "ab" * 40,
        "0",
        " ",
        "~",
    ]
    await paged.batch_put([(k, k.encode()) for k in keys[:8]])
    for k in keys[8:]:
        await paged.put(k, k.encode())
    expected = sorted(keys, key=lambda k: k.encode())  # code point order = UTF-8 byte order
    assert check_structure(pages(redis_server, TAG), 4) == expected
    assert await paged.list_keys("") == expected
    assert await paged.list_keys("日本") == ["日本", "日本語"]
    assert [k for k, _ in await paged.range("a", "b")] == [k for k in expected if "a" <= k < "b"]
    assert await paged.batch_delete(keys[::2]) == len(keys[::2])
    assert await paged.list_keys("") == [k for k in expected if k not in keys[::2]]
    check_structure(pages(redis_server, TAG), 4)


async def test_the_empty_string_boundary_and_deletes_emptying_pages(
    paged: RedisStateBackend, redis_server: RedisServer
) -> None:
    keys = [f"d{i:02d}" for i in range(30)]
    await paged.batch_put([(k, b"v") for k in keys])
    tree = pages(redis_server, TAG)
    assert "" in tree
    assert len(tree) > 5
    # Empty every page but the last two, the "" page first: it stays in the directory, empty.
    doomed = [m for bound in list(tree)[:-2] for m in tree[bound]]
    for k in doomed[:3]:
        assert await paged.delete(k)
    assert await paged.batch_delete(doomed[3:]) == len(doomed) - 3
    tree = pages(redis_server, TAG)
    assert next(iter(tree)) == ""
    assert tree[""] == []
    assert len(tree) == 3  # "" and the two pages left
    left = [k for k in keys if k not in doomed]
    assert check_structure(tree, 4) == left
    assert await paged.list_keys("") == left
    assert await paged.get_and_delete(left[0]) == b"v"
    # A key below every boundary goes to the "" page again.
    await paged.put("A", b"v")
    assert pages(redis_server, TAG)[""] == ["A"]
    assert await paged.list_keys("") == ["A", *left[1:]]
    assert await paged.clear() == len(left)
    assert pages(redis_server, TAG) == {"": []}
    assert await paged.list_keys("") == []


async def test_range_with_limit_and_count_across_pages(paged: RedisStateBackend) -> None:
    keys = [f"r{i:03d}" for i in range(100)]
    await paged.batch_put([(k, b"x") for k in keys[1::2]])
    await paged.batch_put([(k, b"x") for k in keys[::2]], ttl=600)
    cases = [
        ("r010", "r090", 25),
        ("r0", None, 7),
        ("r05", None, None),
        ("r0995", None, 3),
        ("r", "r1", None),
    ]
    for start, end, limit in cases:  # end None: a prefix query
        want = [k for k in keys if k >= start and (k < end if end is not None else k.startswith(start))]
        got = [k for k, _ in await paged.range(start, end, limit)]
        assert got == (want if limit is None else want[:limit])
    assert [k for k, _ in await paged.scan_range("r042", "r047", limit=2)] == ["r042", "r043"]
    stats = await paged.stats()
    assert (stats.total_keys, stats.expiring_keys) == (100, 50)
    assert (await paged.stats("r04")).total_keys == 10
    assert (await paged.stats("r1")).total_keys == 0
    items = await paged.export_items("r09")
    assert items.keys == keys[90:]
    assert items.expires_at is not None
    assert sum(e is not None for e in items.expires_at) == 5
    restored = [(f"r0{i:02d}", b"n", None if i % 3 else time.time() + 600) for i in range(20)]
    await paged.replace_prefix("r0", restored)  # expiring items: one expiry score per member
    assert await paged.list_keys("") == [k for k, _, _ in restored]
    stats = await paged.stats()
    assert (stats.total_keys, stats.expiring_keys) == (20, 7)


async def test_pages_of_the_real_size_stay_listpacks(redis_url: str, redis_server: RedisServer) -> None:
    b = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="big:", index_layout="paged"))
    try:
        keys = [f"key:{i:012d}" for i in range(5000)]
        for start in range(0, 5000, 1000):  # ascending batches, as a bulk load writes
            await b.batch_put([(k, b"v") for k in keys[start : start + 1000]])
        await b.batch_put([(f"key:{i:012d}x", b"v") for i in range(0, 5000, 7)])  # into full pages
        tree = pages(redis_server, "statekit-index:big:")
        expected = sorted([*keys, *(f"key:{i:012d}x" for i in range(0, 5000, 7))])
        assert check_structure(tree, lua.PAGE_MAX) == expected
        client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
        try:
            encodings = {client.object("encoding", "{statekit-index:big:}:p:" + bound) for bound in tree}
        finally:
            client.close()
        assert encodings == {"listpack"}
        assert len(expected) / len(tree) > 60  # pages are at least half full
        assert (await b.stats()).total_keys == len(expected)
    finally:
        await b.close()


@pytest.mark.parametrize("shards", [1, 5])
async def test_paged_on_a_cluster(
    cluster_url: str, redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch, shards: int
) -> None:
    small_pages(monkeypatch, 4)
    b = RedisStateBackend(
        RedisConfig.from_url(
            cluster_url, key_prefix="cp:", index_layout="paged", index_shards=shards, pipeline_batch_size=9
        )
    )
    try:
        keys = [f"item:{i:03d}" for i in range(300)]
        await b.batch_put([(k, k.encode()) for k in reversed(keys)])
        await b.put("item:150x", b"one", ttl=60)
        assert await b.incr_by("item:151x") == 1
        expected = sorted([*keys, "item:150x", "item:151x"])
        assert await b.list_keys("item:") == expected
        assert [k for k, _ in await b.range("item:100", "item:200", limit=30)] == expected[100:130]
        stats = await b.stats()
        assert (stats.total_keys, stats.expiring_keys) == (302, 1)
        assert await b.batch_delete(keys[:250]) == 250
        assert await b.delete("item:150x")
        assert await b.list_keys("item:") == sorted([*keys[250:], "item:151x"])
        assert (await b.stats("item:2")).total_keys == 50
        assert await b.clear("item:") == 51
        assert await b.list_keys("") == []
    finally:
        await b.close()


# -- the layout record -------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 4])
async def test_a_flat_index_stays_flat(redis_url: str, shards: int) -> None:
    """A paged client on an index written flat is refused: it would read an empty index."""
    flat = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="lay:", index_shards=shards))
    paged = RedisStateBackend(
        RedisConfig.from_url(redis_url, key_prefix="lay:", index_shards=shards, index_layout="paged")
    )
    try:
        await flat.batch_put([("a", b"1"), ("b", b"2")])
        with pytest.raises(ConfigError, match="index_layout"):
            await paged.list_keys("")
        with pytest.raises(ConfigError, match="index_layout"):
            await paged.export_items("")
        assert await flat.list_keys("") == ["a", "b"]  # the flat index is untouched
    finally:
        await flat.close()
        await paged.close()


@pytest.mark.parametrize("shards", [1, 4])
async def test_a_paged_index_refuses_flat_clients(redis_url: str, shards: int) -> None:
    paged = RedisStateBackend(
        RedisConfig.from_url(redis_url, key_prefix="lay2:", index_shards=shards, index_layout="paged")
    )
    flat = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="lay2:", index_shards=shards))
    try:
        await paged.put("a", b"1")
        with pytest.raises(ConfigError, match="paged"):
            await flat.list_keys("")
        assert await paged.list_keys("") == ["a"]
    finally:
        await flat.close()
        await paged.close()


def test_index_layout_from_url_env_and_toml(tmp_path: pytest.TempPathFactory) -> None:
    assert RedisConfig().index_layout == "flat"
    assert RedisConfig.from_url("redis://h/0?index_layout=paged").index_layout == "paged"
    path = tmp_path / "c.toml"  # type: ignore[operator]
    path.write_text('[state.redis]\nurl = "redis://h"\nindex_layout = "paged"\n')
    assert RedisConfig.from_toml(path).index_layout == "paged"
    with pytest.raises(ConfigError, match="index_layout"):
        RedisConfig(index_layout="btree")
    assert options_from_env({"STATEKIT_STORE_INDEX_LAYOUT": "paged"})[1] == {"index_layout": "paged"}


async def test_index_layout_from_the_store_factory(redis_url: str) -> None:
    async with create_store(redis_url, key_prefix="fac:", index_layout="paged") as store:
        await store.put_many({"a": 1, "b": 2})
        backend = store.backend
        assert isinstance(backend, RedisStateBackend)
        assert backend.config.index_layout == "paged"
        assert await backend.list_keys("") == ["fac:a", "fac:b"]  # the store prefixes its keys
