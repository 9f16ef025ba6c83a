"""RedisStateBackend against real servers: CRUD, TTL, ranges, batches, atomics, cluster."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis
import redis.asyncio as aioredis

from statekit import create_store
from statekit.backends import RedisConfig, RedisStats
from statekit.backends.redis import RedisStateBackend
from statekit.errors import ConfigError, StorageError
from tests.servers.redis_servers import RedisServer


async def test_crud_and_keys_are_plain_redis_strings(
    backend: RedisStateBackend, redis_server: RedisServer
) -> None:
    await backend.put("item:3", b"three")
    assert await backend.get("item:3") == b"three"
    assert await backend.exists("item:3")
    assert redis_server.cli("GET", "t:item:3").strip() == "three"
    raw = redis.Redis(port=redis_server.port)
    try:
        assert raw.get("t:item:3") == b"three"
    finally:
        raw.close()
    assert await backend.delete("item:3") is True
    assert await backend.delete("item:3") is False
    assert await backend.get("item:3") is None
    assert not await backend.exists("item:3")


async def test_ttl_uses_server_expiry(backend: RedisStateBackend, redis_server: RedisServer) -> None:
    await backend.put("short", b"x", ttl=0.15)
    await backend.put("long", b"y", ttl=100)
    pttl = int(redis_server.cli("PTTL", "t:long"))
    assert 90_000 < pttl <= 100_000
    stats = await backend.refresh_stats()
    assert (stats.total_keys, stats.expiring_keys) == (2, 2)
    await asyncio.sleep(0.3)
    assert await backend.get("short") is None
    assert await backend.list_keys() == ["long"]
    stats = await backend.refresh_stats()
    assert (stats.total_keys, stats.expiring_keys) == (1, 1)
    await backend.put("long", b"z")  # re-put without TTL clears the expiry
    assert int(redis_server.cli("PTTL", "t:long")) == -1
    assert (await backend.refresh_stats()).expiring_keys == 0


async def test_default_ttl_applies(redis_url: str, redis_server: RedisServer) -> None:
    b = RedisStateBackend(RedisConfig.from_url(redis_url, default_ttl=50))
    try:
        await b.put("k", b"v")
        assert 0 < int(redis_server.cli("PTTL", "k")) <= 50_000
    finally:
        await b.close()


async def test_range_and_list_keys_in_code_point_order(backend: RedisStateBackend) -> None:
    keys = ["b", "a:2", "a:1", "a:10", "é", "a", "\U0010ffff", "ab"]
    await backend.batch_put([(k, k.encode()) for k in keys])
    assert await backend.list_keys() == sorted(keys)
    assert await backend.list_keys("a:") == ["a:1", "a:10", "a:2"]
    assert await backend.range("a:") == [(k, k.encode()) for k in ["a:1", "a:10", "a:2"]]
    assert await backend.range("a", "b") == [(k, k.encode()) for k in ["a", "a:1", "a:10", "a:2", "ab"]]
    assert await backend.range("a", "b", limit=2) == [("a", b"a"), ("a:1", b"a:1")]
    assert await backend.range("", limit=0) == []


async def test_range_prunes_keys_deleted_behind_its_back(
    backend: RedisStateBackend, redis_server: RedisServer
) -> None:
    await backend.batch_put([(f"k{i}", b"v") for i in range(5)])
    redis_server.cli("DEL", "t:k1", "t:k3")
    assert await backend.list_keys() == ["k0", "k2", "k4"]
    assert redis_server.cli("ZCARD", "{statekit-index:t:}:lex").strip() == "3"
    assert await backend.range("k", limit=2) == [("k0", b"v"), ("k2", b"v")]


async def test_range_never_uses_keys_or_scan(backend: RedisStateBackend, redis_server: RedisServer) -> None:
    await backend.batch_put([(f"k{i}", b"v") for i in range(20)])
    before = redis_server.cli("INFO", "commandstats")
    await backend.range("k", limit=5)
    await backend.list_keys("k1")
    after = redis_server.cli("INFO", "commandstats")
    for command in ("cmdstat_keys:", "cmdstat_scan:"):
        assert command not in after or after.count(command) == before.count(command)
    assert "cmdstat_keys:" not in after
    assert "cmdstat_scan:" not in after


async def test_batches_across_chunks(backend: RedisStateBackend) -> None:
    pairs = [(f"key:{i:05d}", f"value-{i}".encode()) for i in range(1234)]  # 25 chunks of 50
    await backend.batch_put(pairs)
    keys = [k for k, _ in pairs] + ["missing"]
    assert await backend.batch_get(keys) == [v for _, v in pairs] + [None]
    assert await backend.batch_get([]) == []
    assert len(await backend.list_keys("key:")) == 1234
    assert await backend.batch_delete([*keys[:600], "missing", keys[0]]) == 600
    assert await backend.batch_get(keys[599:601]) == [None, pairs[600][1]]
    assert len(await backend.list_keys()) == 634
    await backend.batch_put(pairs[:10], ttl=30)
    stats = await backend.refresh_stats()
    assert (stats.total_keys, stats.expiring_keys) == (644, 10)


async def test_atomic_operations(backend: RedisStateBackend) -> None:
    assert await backend.set_if_not_exists("lock", b"a", ttl=10)
    assert not await backend.set_if_not_exists("lock", b"b")
    assert await backend.get("lock") == b"a"
    assert await backend.get_and_delete("lock") == b"a"
    assert await backend.get_and_delete("lock") is None
    assert await backend.list_keys() == []
    assert await backend.incr_by("n") == 1
    assert await backend.incr_by("n", 41) == 42
    for loose in (b" 7", b"0_7", b"07", b"-0", b"+7", b"7.0", b"9223372036854775808"):
        await backend.put("loose", loose)  # not canonical ASCII decimal: not a counter anywhere
        with pytest.raises(StorageError, match="not an integer"):
            await backend.incr_by("loose", 1)
        assert await backend.get("loose") == loose
    await backend.put("text", b"abc")
    with pytest.raises(StorageError, match="not an integer") as info:
        await backend.incr_by("text")
    assert info.value.key == "text"


async def test_incr_beyond_lua_number_precision_is_exact(
    backend: RedisStateBackend, cluster_backend: RedisStateBackend
) -> None:
    # Lua numbers are doubles printed with 14 digits: the result is read back as a string instead.
    for b in (backend, cluster_backend):
        assert await b.incr_by("big", 10**15) == 10**15
        assert await b.incr_by("big", 1) == 10**15 + 1
        assert await b.incr_by("big", 2**62) == 10**15 + 1 + 2**62
        assert await b.get("big") == str(10**15 + 1 + 2**62).encode()


async def test_concurrent_incr_is_atomic(backend: RedisStateBackend) -> None:
    await asyncio.gather(*(backend.incr_by("c") for _ in range(200)))
    assert await backend.incr_by("c", 0) == 200


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["standalone", "cluster"])
async def test_more_tasks_than_connections_wait_for_one(mode: str, request: pytest.FixtureRequest) -> None:
    """50 tasks on 2 connections: every operation waits for a free connection, none fails or retries."""
    url = request.getfixturevalue("redis_url" if mode == "standalone" else "cluster_url")
    b = RedisStateBackend(
        RedisConfig.from_url(url, key_prefix="t:", max_connections=2, max_retries=0, pipeline_batch_size=5)
    )

    async def task(i: int) -> None:
        for j in range(4):
            await b.incr_by("n")
            await b.put(f"k:{i:02d}:{j}", b"v", ttl=100 if j % 2 else None)
            assert await b.get(f"k:{i:02d}:{j}") == b"v"
            await b.batch_put([(f"b:{i:02d}:{j}", b"w")])
            assert len(await b.range(f"k:{i:02d}:")) == j + 1

    try:
        await asyncio.gather(*(task(i) for i in range(50)))
        assert await b.incr_by("n", 0) == 200
        assert len(await b.list_keys()) == 1 + 400
        stats = await b.refresh_stats()
        assert (stats.retry_count, stats.error_count) == (0, 0)
    finally:
        await b.close()


async def test_wrongtype_is_not_retried(backend: RedisStateBackend, redis_server: RedisServer) -> None:
    redis_server.cli("LPUSH", "t:list", "x")
    with pytest.raises(StorageError, match="WRONGTYPE") as info:
        await backend.get("list")
    assert "get" in str(info.value)
    assert info.value.key == "list"
    assert backend.stats_nowait().retry_count == 0


async def test_stats(backend: RedisStateBackend) -> None:
    await backend.put("a", b"12345")
    await backend.get("a")
    await backend.get("nope")
    await backend.batch_get(["a", "nope"])
    stats = await backend.refresh_stats()
    assert isinstance(stats, RedisStats)
    assert (stats.get_count, stats.hit_count, stats.miss_count, stats.put_count) == (4, 2, 2, 1)
    assert stats.hit_rate() == 0.5
    assert stats.pipeline_count == 1
    assert stats.bytes_written == 5
    assert stats.bytes_read == 10
    assert stats.redis_version
    assert stats.redis_version.startswith(("6", "7", "8"))
    assert stats.used_memory_human
    assert stats.avg_latency_us > 0
    assert stats.active_connections >= 1
    assert await backend.memory_usage() > 0
    assert await backend.health_check()


async def test_closed_backend(redis_url: str) -> None:
    from statekit.errors import NotInitialized

    b = RedisStateBackend(RedisConfig.from_url(redis_url))
    await b.put("k", b"v")
    await b.close()
    await b.close()
    with pytest.raises(NotInitialized):
        await b.get("k")
    assert not await b.health_check()


# -- the store over Redis ------------------------------------------------------------------


async def test_create_store_from_url_and_options(redis_url: str, redis_server: RedisServer) -> None:
    async with create_store(redis_url + "/0?key_prefix=myapp:", default_ttl=60) as store:
        await store.put("item:3", {"n": 3})
        assert await store.get("item:3") == {"n": 3}
        assert await store.keys() == ["item:3"]
        assert redis_server.cli("GET", "myapp:item:3").strip() == '{"n":3}'
        stats = await store.get_stats()
        assert stats["backend"] == "redis"
        assert stats["redis_version"]
        assert stats["used_memory_human"]
    store = create_store(
        "redis", host="127.0.0.1", port=redis_server.port, db=1, timeout=2, max_connections=4, key_prefix="x:"
    )
    try:
        await store.put_many({"a": 1, "b": 2})
        assert await store.range_get("") == [("a", 1), ("b", 2)]
        assert redis_server.cli("-n", "1", "GET", "x:a").strip() == "1"
    finally:
        await store.close()


def test_pickle_over_redis_needs_a_signing_key(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="signing_key"):
        create_store(redis_url, serializer="pickle")
    with caplog.at_level(logging.WARNING, logger="statekit"):
        create_store(redis_url, serializer="pickle", signing_key=b"k" * 32)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="statekit"):
        create_store(redis_url, serializer="pickle", allow_unsigned_pickle=True)
    assert any("unsigned pickle" in r.getMessage() for r in caplog.records)  # accepted, still warned


def test_config_builder_toml_and_repr(tmp_path: object) -> None:
    from datetime import timedelta
    from pathlib import Path

    config = (
        RedisConfig.builder()
        .url("redis://:hunter2-secret@localhost:6379")
        .key_prefix("stream_processor:")
        .default_ttl(timedelta(hours=1))
        .pool_size(10, 50)
        .timeouts(5, timedelta(seconds=3), 3)
        .retries(3, timedelta(milliseconds=100), 5)
        .cluster_mode(False)
        .tls(False)
        .pipeline_batch_size(100)
        .build()
    )
    assert config.default_ttl == 3600
    assert config.retry_base_delay == pytest.approx(0.1)
    assert (config.min_connections, config.max_connections, config.pipeline_batch_size) == (10, 50, 100)
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in repr(RedisStateBackend(config))
    with pytest.raises(ConfigError, match="min_connections"):
        RedisConfig.builder().pool_size(5, 2).build()
    with pytest.raises(ConfigError, match="valid schemes"):
        RedisConfig(urls=("http://x",))
    path = Path(str(tmp_path)) / "config.toml"
    path.write_text(
        '[state]\nbackend = "redis"\n[state.redis]\n'
        'urls = ["redis://r1:6379", "redis://r2:6379"]\nkey_prefix = "llm_optimizer:"\n'
        "default_ttl_secs = 3600\nmin_connections = 10\nmax_connections = 50\nconnect_timeout_secs = 5\n"
        "read_timeout_secs = 3\nwrite_timeout_secs = 3\nmax_retries = 3\nretry_base_delay_ms = 100\n"
        "retry_max_delay_secs = 5\ncluster_mode = true\ntls_enabled = false\npipeline_batch_size = 100\n"
    )
    loaded = RedisConfig.from_toml(path)
    assert loaded.urls == ("redis://r1:6379", "redis://r2:6379")
    assert loaded.cluster_mode
    assert loaded.retry_base_delay == pytest.approx(0.1)
    assert loaded.default_ttl == 3600
    path.write_text("[state.redis]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="valid options"):
        RedisConfig.from_toml(path)


# -- cluster ---------------------------------------------------------------------------------


async def test_cluster_batch_across_slots(cluster_backend: RedisStateBackend, cluster_url: str) -> None:
    from statekit import _native

    pairs = [(f"user:{i}", str(i).encode()) for i in range(500)]
    assert len(set(_native.hash_slots([f"t:{k}" for k, _ in pairs]))) > 100
    await cluster_backend.batch_put(pairs, ttl=100)
    assert await cluster_backend.batch_get([k for k, _ in pairs]) == [v for _, v in pairs]
    assert await cluster_backend.list_keys("user:1") == sorted(k for k, _ in pairs if k.startswith("user:1"))
    stats = await cluster_backend.refresh_stats()
    assert (stats.total_keys, stats.expiring_keys) == (500, 500)
    assert await cluster_backend.batch_delete([k for k, _ in pairs[:100]]) == 100
    assert len(await cluster_backend.list_keys()) == 400
    # readable by redis-py's own cluster client
    rc = aioredis.RedisCluster.from_url(cluster_url.replace("redis+cluster", "redis"))
    try:
        assert await rc.get("t:user:450") == b"450"
    finally:
        await rc.aclose()


async def test_cluster_single_ops(cluster_backend: RedisStateBackend) -> None:
    b = cluster_backend
    await b.put("a", b"1")
    assert await b.get("a") == b"1"
    assert await b.incr_by("a", 2) == 3
    assert await b.set_if_not_exists("b", b"x", ttl=50)
    assert await b.get_and_delete("b") == b"x"
    assert await b.range("") == [("a", b"3")]
    assert await b.delete("a")
    assert await b.list_keys() == []
    assert await b.health_check()
    assert await b.memory_usage() > 0
