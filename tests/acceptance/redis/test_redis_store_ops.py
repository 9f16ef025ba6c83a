"""Store operations on Redis specifically: the index stays consistent with expire/persist/clear, and
``clear`` without a range index refuses instead of scanning the server; on real servers."""

from __future__ import annotations

import pytest

from statekit import KeyValueStore, create_store
from statekit.backends import RedisConfig
from statekit.backends.redis import RedisStateBackend
from statekit.errors import ConfigError
from tests.servers.redis_servers import RedisServer


async def test_clear_without_a_range_index_refuses_and_deletes_nothing(
    redis_url: str, redis_server: RedisServer
) -> None:
    backend = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="noidx:", range_index=False))
    async with KeyValueStore(backend) as store:
        await store.put_many({"a": 1, "b": 2})
        with pytest.raises(ConfigError, match="range_index=False"):
            await store.clear()
        assert await store.get_many(["a", "b"]) == [1, 2]
        # expire/persist/touch/ttl need no index
        assert await store.expire("a", 60)
        assert await store.ttl("a") is not None
        assert await store.persist("a")
        with pytest.raises(ConfigError, match="range_index=False"):
            [k async for k in store.iter_keys()]


async def test_clear_leaves_other_prefixes_and_foreign_keys(
    redis_url: str, redis_server: RedisServer
) -> None:
    redis_server.cli("SET", "foreign", "x")  # not statekit's: never touched
    async with (
        create_store(redis_url, key_prefix="a:") as mine,
        create_store(redis_url, key_prefix="b:") as other,
    ):
        await mine.put_many({f"k{i}": i for i in range(2500)})  # several index pages
        await other.put("k1", "kept")
        assert await mine.clear() == 2500
        assert await other.get("k1") == "kept"
    assert redis_server.cli("GET", "foreign").strip() == "x"
    index = redis_server.cli("ZRANGE", "{statekit-index:}:lex", "0", "-1").split()
    assert index == ["b:k1"]  # the cleared keys left the index with their values


async def test_expire_and_persist_keep_the_index_expiry_entries(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with create_store(redis_url) as store:
        await store.put("k", 1)
        assert await store.expire("k", 600)
        assert redis_server.cli("ZRANGE", "{statekit-index:}:exp", "0", "-1").split() == ["k"]
        assert await store.persist("k")
        assert redis_server.cli("ZRANGE", "{statekit-index:}:exp", "0", "-1").split() == []
        assert await store.touch("k", "1h")
        assert redis_server.cli("ZRANGE", "{statekit-index:}:exp", "0", "-1").split() == ["k"]
        assert not await store.expire("missing", 600)
        assert redis_server.cli("ZRANGE", "{statekit-index:}:exp", "0", "-1").split() == ["k"]
