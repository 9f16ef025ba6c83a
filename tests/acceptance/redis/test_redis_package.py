"""The Redis backend package: one config source of truth, a user's own client, the sharded index,
``range_index=False``, ``min_connections`` and the async ``stats()``; on real servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode

from statekit import create_store
from statekit.backends import RedisConfig
from statekit.backends.redis import RedisStateBackend
from statekit.errors import ConfigError
from tests.servers.redis_servers import RedisCluster, RedisServer, require_redis, start_standalone

# -- configuration: one source of truth ------------------------------------------------------------


def test_explicit_fields_win_over_the_url() -> None:
    config = RedisConfig.from_url("rediss://alice:secret@h:6380/3", db=0, tls=False, password="other")
    assert (config.db, config.tls, config.username, config.password) == (0, False, "alice", "other")
    assert config.nodes[0].host == "h"
    assert config.nodes[0].port == 6380
    implicit = RedisConfig(urls=("rediss://alice:secret@h:6380/3",))
    assert (implicit.db, implicit.tls, implicit.password) == (3, True, "secret")
    assert not implicit.cluster_mode
    assert RedisConfig(urls=("redis+cluster://h:7000",)).cluster_mode
    assert not RedisConfig(urls=("redis+cluster://h:7000",), cluster_mode=False).cluster_mode


def test_one_set_of_option_names_in_kwargs_url_toml(tmp_path: Path) -> None:
    url = "redis://h:6379/2?max_connections=4&range_index=false&index_shards=8&connect_timeout=1.5"
    from_url = RedisConfig.from_url(url, key_prefix="app:")
    assert (from_url.max_connections, from_url.range_index, from_url.index_shards) == (4, False, 8)
    assert (from_url.connect_timeout, from_url.db, from_url.key_prefix) == (1.5, 2, "app:")
    assert RedisConfig.from_url(url, max_connections=9).max_connections == 9  # keyword wins
    toml = tmp_path / "config.toml"
    toml.write_text(
        '[state.redis]\nurl = "redis://h:6379"\nmax_connections = 4\nrange_index = false\n'
        "index_shards = 8\nconnect_timeout = 1.5\ndefault_ttl_secs = 60\n"
    )
    from_toml = RedisConfig.from_toml(toml)
    assert (from_toml.max_connections, from_toml.range_index, from_toml.index_shards) == (4, False, 8)
    assert (from_toml.connect_timeout, from_toml.default_ttl) == (1.5, 60)
    with pytest.raises(ConfigError, match="valid options"):
        RedisConfig.from_url("redis://h?bogus=1")
    with pytest.raises(ConfigError, match="range_index"):
        RedisConfig.from_url("redis://h?range_index=maybe")


def test_environment_uses_the_same_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit._factory import options_from_env

    monkeypatch.setenv("STATEKIT_STORE_URL", "redis://h:6379")
    monkeypatch.setenv("STATEKIT_STORE_MAX_CONNECTIONS", "3")
    monkeypatch.setenv("STATEKIT_STORE_RANGE_INDEX", "false")
    monkeypatch.setenv("STATEKIT_STORE_INDEX_SHARDS", "4")
    _, options = options_from_env()
    assert (options["max_connections"], options["range_index"], options["index_shards"]) == (3, False, 4)


def test_index_shards_default_to_the_topology() -> None:
    assert RedisConfig(urls=("redis://h",)).index_shards == 1
    assert RedisConfig(urls=("redis+cluster://h:7000",)).index_shards == 16
    with pytest.raises(ConfigError, match="index_shards"):
        RedisConfig(urls=("redis://h",), index_shards=0)


# -- a user's own client -----------------------------------------------------------------------------


async def test_a_users_redis_client(redis_url: str, redis_server: RedisServer) -> None:
    client = aioredis.Redis(port=redis_server.port, max_connections=3)
    b = RedisStateBackend(RedisConfig(key_prefix="own:"), client=client)
    try:
        await b.batch_put([("a", b"1"), ("b", b"2")])
        await b.put("c", b"3")
        assert await b.range("") == [("a", b"1"), ("b", b"2"), ("c", b"3")]
        assert await client.get("own:a") == b"1"
        assert await b.incr_by("n", 2) == 2
    finally:
        await b.close()
    assert await client.get("own:c") == b"3"  # statekit did not close the user's client
    await client.aclose()


async def test_a_users_cluster_client(cluster_url: str, redis_cluster: RedisCluster) -> None:
    client = aioredis.RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", redis_cluster.nodes[0].port)])
    b = RedisStateBackend(key_prefix="own:", client=client)
    try:
        pairs = [(f"k{i:03d}", str(i).encode()) for i in range(300)]
        await b.batch_put(pairs)
        assert await b.range("k", limit=3) == pairs[:3]
        assert await client.get("own:k007") == b"7"
        assert await b.batch_delete([k for k, _ in pairs]) == 300
    finally:
        await b.close()
    await client.aclose()


def test_a_client_of_another_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"redis\.asyncio\.Redis"):
        RedisStateBackend(client=object())


# -- the sharded index -------------------------------------------------------------------------------


@pytest.fixture(params=["standalone", "cluster"])
async def sharded(request: pytest.FixtureRequest) -> AsyncIterator[RedisStateBackend]:
    url = request.getfixturevalue("redis_url" if request.param == "standalone" else "cluster_url")
    b = RedisStateBackend(RedisConfig.from_url(url, key_prefix="sh:", index_shards=5, pipeline_batch_size=64))
    yield b
    await b.close()


async def test_sharded_index_merges_in_key_order(sharded: RedisStateBackend) -> None:
    keys = [f"item:{i:04d}" for i in range(700)]
    await sharded.batch_put([(k, k.encode()) for k in reversed(keys)])
    await sharded.put("item:0350x", b"single", ttl=60)
    expected = sorted([*keys, "item:0350x"])
    assert await sharded.list_keys("item:") == expected
    assert [k for k, _ in await sharded.range("item:", limit=10)] == expected[:10]
    assert [k for k, _ in await sharded.range("item:0345", "item:0352")] == expected[345:353]
    assert await sharded.range("item:0699", limit=5) == [("item:0699", b"item:0699")]
    stats = await sharded.stats()
    assert (stats.total_keys, stats.expiring_keys) == (701, 1)
    assert await sharded.batch_delete(keys[:600]) == 600
    assert await sharded.get_and_delete("item:0350x") == b"single"
    assert await sharded.list_keys("item:") == keys[600:]
    assert (await sharded.stats("item:06")).total_keys == 100


async def test_shards_spread_over_the_cluster_masters(cluster_url: str, redis_cluster: RedisCluster) -> None:
    b = RedisStateBackend(RedisConfig.from_url(cluster_url, key_prefix="spread:"))
    try:
        await b.batch_put([(f"k{i}", b"v") for i in range(2000)])
        indexes = [int(node.cli("EVAL", _COUNT_INDEXES, "0")) for node in redis_cluster.nodes]
        assert all(n > 0 for n in indexes), indexes  # every master holds index shards
        assert sum(indexes) == 16
    finally:
        await b.close()


_COUNT_INDEXES = (
    "local n = 0 for _, k in ipairs(redis.call('KEYS', '{statekit-index#*:spread:}:lex')) do n = n + 1 end "
    "return n"
)


async def test_clients_with_another_index_layout_are_refused(redis_url: str) -> None:
    first = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="layout:", index_shards=4))
    other = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="layout:"))
    try:
        await first.put("a", b"1")
        with pytest.raises(ConfigError, match="index_shards"):
            await other.get("a")
    finally:
        await first.close()
        await other.close()


# -- range_index=False -------------------------------------------------------------------------------


async def test_without_a_range_index(redis_url: str, redis_server: RedisServer) -> None:
    b = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="noidx:", range_index=False))
    try:
        await b.batch_put([("a", b"1"), ("b", b"2")], ttl=60)
        await b.put("c", b"3")
        assert await b.incr_by("n") == 1
        assert await b.set_if_not_exists("s", b"x")
        assert await b.batch_get(["a", "b", "c"]) == [b"1", b"2", b"3"]
        assert await b.batch_delete(["a", "b"]) == 2
        for call in (b.range("a"), b.list_keys(""), b.export_items("")):
            with pytest.raises(ConfigError, match="range_index=False"):
                await call
        keys = redis_server.cli("KEYS", "*noidx*").split()
        meta = "{statekit-index:noidx:}:meta"  # the layout record: no index keys at all
        assert sorted(keys) == ["noidx:c", "noidx:n", "noidx:s", meta]
        assert redis_server.cli("GET", meta).strip() == "off"
        assert (await b.stats()).total_keys == 0
    finally:
        await b.close()


async def test_without_a_range_index_on_a_cluster(cluster_url: str) -> None:
    async with create_store(cluster_url, range_index=False) as store:
        await store.put_many({f"k{i}": i for i in range(50)})
        assert await store.get_many(["k1", "k49"]) == [1, 49]
        with pytest.raises(ConfigError, match="range_index"):
            await store.range_get("k")


# -- connections ---------------------------------------------------------------------------------------


async def test_min_connections_are_opened_on_first_use(redis_server: RedisServer) -> None:
    before = _clients(redis_server)
    b = RedisStateBackend(RedisConfig(urls=(redis_server.url,), min_connections=3, max_connections=5))
    try:
        await b.get("k")
        assert _clients(redis_server) - before == 3
    finally:
        await b.close()


def _clients(server: RedisServer) -> int:
    return sum(1 for line in server.cli("CLIENT", "LIST").splitlines() if "cmd=client" not in line)


async def test_unix_socket(tmp_path: Path) -> None:
    require_redis()
    socket_path = tmp_path / "redis.sock"
    server = start_standalone("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    try:
        b = RedisStateBackend(RedisConfig.from_url(f"unix://{socket_path}?db=2"))
        try:
            await b.put("k", b"v")
            assert await b.get("k") == b"v"
            assert server.cli("-n", "2", "GET", "k").strip() == "v"
        finally:
            await b.close()
    finally:
        server.stop()


async def test_stats_is_async_and_counters_are_synchronous(redis_url: str) -> None:
    b = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="st:"))
    try:
        await b.batch_put([("a", b"1"), ("b", b"2")])
        assert b.stats_nowait().put_count == 2
        assert b.stats_nowait().total_keys == 0  # not counted yet: counting needs the server
        stats = await b.stats()
        assert stats.total_keys == 2
        assert stats.redis_version
        assert b.stats_nowait().total_keys == 2  # the last awaited figure
        assert (await asyncio.gather(b.stats("a"), b.stats("b")))[0].total_keys == 1
    finally:
        await b.close()
