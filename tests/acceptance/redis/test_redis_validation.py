"""The Redis backend refuses bad keys and TTLs before sending anything; its own keys are out of reach."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from statekit import create_store
from statekit.backends import RedisConfig
from statekit.backends.base import RESERVED_KEY_PREFIX
from statekit.backends.redis import RedisStateBackend
from statekit.errors import ConfigError, InvalidKey, StorageError
from tests.servers.redis_servers import RedisCluster, RedisServer, free_port

#: The internal keys of a backend with key_prefix="" (range index and TTL index).
INDEX_KEYS = ["{statekit-index:}:lex", "{statekit-index:}:exp"]
BAD_KEYS: list[object] = [
    5,
    None,
    1.5,
    "",
    b"",
    b"\xff\xfe",
    "lone \ud800 surrogate",
    *INDEX_KEYS,
    "{statekit-x",
]
BAD_TTLS: list[object] = [math.nan, math.inf, -math.inf, -1, 0, 0.0, 1e300, "10"]

Call = Callable[[RedisStateBackend], Awaitable[Any]]


def key_calls(key: Any) -> list[tuple[str, Call]]:
    """Every backend entry point that takes a key, called with ``key``."""
    return [
        ("get", lambda b: b.get(key)),
        ("exists", lambda b: b.exists(key)),
        ("put", lambda b: b.put(key, b"v")),
        ("delete", lambda b: b.delete(key)),
        ("set_if_not_exists", lambda b: b.set_if_not_exists(key, b"v")),
        ("compare_and_set", lambda b: b.compare_and_set(key, None, b"v")),
        ("get_and_delete", lambda b: b.get_and_delete(key)),
        ("incr_by", lambda b: b.incr_by(key, 1)),
        ("batch_get", lambda b: b.batch_get(["ok", key])),
        ("batch_put", lambda b: b.batch_put([("ok", b"v"), (key, b"v")])),
        ("batch_delete", lambda b: b.batch_delete(["ok", key])),
        ("replace_prefix", lambda b: b.replace_prefix("", [("ok", b"v", None), (key, b"v", None)])),
    ]


def ttl_calls(ttl: Any) -> list[tuple[str, Call]]:
    """Every backend entry point that takes a TTL, called with ``ttl``."""
    return [
        ("put", lambda b: b.put("k", b"v", ttl)),
        ("set_if_not_exists", lambda b: b.set_if_not_exists("k", b"v", ttl)),
        ("compare_and_set", lambda b: b.compare_and_set("k", None, b"v", ttl)),
        ("incr_by", lambda b: b.incr_by("k", 1, ttl)),
        ("batch_put", lambda b: b.batch_put([("k", b"v"), ("l", b"w")], ttl)),
    ]


@pytest.fixture(params=["standalone", "cluster"])
async def bare(request: pytest.FixtureRequest) -> AsyncIterator[RedisStateBackend]:
    """A backend with no key prefix: user keys and statekit's keys share one keyspace."""
    url = request.getfixturevalue("redis_url" if request.param == "standalone" else "cluster_url")
    b = RedisStateBackend(RedisConfig.from_url(url, key_prefix=""))
    yield b
    await b.close()


def dbsize(request: pytest.FixtureRequest) -> int:
    if "redis_cluster" in request.fixturenames:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return sum(int(node.cli("DBSIZE")) for node in cluster.nodes)
    server: RedisServer = request.getfixturevalue("redis_server")
    return int(server.cli("DBSIZE"))


async def test_reserved_keys_are_refused_and_the_index_keeps_working(bare: RedisStateBackend) -> None:
    await bare.put("a", b"1")
    for key in INDEX_KEYS:
        for _name, call in key_calls(key):
            with pytest.raises(InvalidKey, match="reserved"):
                await call(bare)
            with pytest.raises(ValueError, match="reserved"):  # InvalidKey is a ValueError too
                await call(bare)
    # Nothing reached the server: the index is intact and "ok" (first in every batch) absent.
    assert await bare.list_keys() == ["a"]
    assert await bare.range("") == [("a", b"1")]
    await bare.put("b", b"2")
    assert await bare.incr_by("n", 2) == 2
    assert await bare.list_keys() == ["a", "b", "n"]
    assert await bare.get("ok") is None


async def test_a_key_prefix_cannot_reach_the_reserved_namespace(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="key_prefix"):
        RedisConfig.from_url(redis_url, key_prefix=RESERVED_KEY_PREFIX + "index:")
    b = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="{"))
    try:
        await b.put("x", b"1")
        # "{" + "statekit-index:{}:lex" is this backend's own range index.
        for _name, call in key_calls("statekit-index:{}:lex"):
            with pytest.raises(InvalidKey):
                await call(b)
        await b.put("statekit", b"2")  # not reserved: "{statekit" lacks the "-"
        assert await b.list_keys() == ["statekit", "x"]
    finally:
        await b.close()


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
async def test_bad_keys_are_refused_before_anything_is_sent(
    bare: RedisStateBackend, request: pytest.FixtureRequest, key: object
) -> None:
    for _name, call in key_calls(key):
        with pytest.raises(InvalidKey):
            await call(bare)
    assert dbsize(request) == 0


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
async def test_bad_ttls_are_refused_before_anything_is_sent(
    bare: RedisStateBackend, request: pytest.FixtureRequest, ttl: object
) -> None:
    for _name, call in ttl_calls(ttl):
        with pytest.raises(ConfigError, match="ttl"):
            await call(bare)
    assert dbsize(request) == 0


async def test_validation_happens_before_connecting() -> None:
    """Nothing listens on the port: a bad argument is ConfigError/InvalidKey, never StorageError."""
    b = RedisStateBackend(RedisConfig.from_url(f"redis://127.0.0.1:{free_port()}", max_retries=0))
    try:
        for key in [b"\xff", "{statekit-index:}:lex", 7]:
            for _name, call in key_calls(key):
                with pytest.raises(InvalidKey):
                    await call(b)
        for _name, call in ttl_calls(math.nan):
            with pytest.raises(ConfigError):
                await call(b)
        with pytest.raises(StorageError):  # a valid call does try the server
            await b.get("k")
    finally:
        await b.close()


async def test_bytes_keys_are_the_same_keys_as_str(bare: RedisStateBackend) -> None:
    await bare.put(b"window:1", b"x")  # type: ignore[arg-type]
    assert await bare.get("window:1") == b"x"
    await bare.batch_put([(b"window:2", b"y")])  # type: ignore[list-item]
    assert await bare.batch_get([b"window:1", "window:2"]) == [b"x", b"y"]  # type: ignore[list-item]
    assert await bare.list_keys() == ["window:1", "window:2"]
    assert await bare.incr_by(b"count", 3) == 3  # type: ignore[arg-type]
    assert await bare.get_and_delete(b"window:1") == b"x"  # type: ignore[arg-type]
    assert await bare.batch_delete([b"window:2", "count"]) == 2  # type: ignore[list-item]
    assert await bare.list_keys() == []


async def test_huge_ttl_is_a_config_error_not_a_redis_error(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with create_store(redis_url, key_prefix="app:") as store:
        with pytest.raises(ConfigError):
            await store.put_many({"a": 1, "b": 2}, ttl=1e300)
        with pytest.raises(ConfigError):
            await store.put("a", 1, ttl=1e300)
        assert await store.get_many(["a", "b"]) == [None, None]
    assert int(redis_server.cli("DBSIZE")) == 0
    with pytest.raises(ConfigError, match="default_ttl"):
        RedisConfig.from_url(redis_url, default_ttl=1e300)


async def test_restore_items_are_checked_before_the_old_keys_go(bare: RedisStateBackend) -> None:
    await bare.put("keep", b"1")
    with pytest.raises(InvalidKey):
        await bare.replace_prefix("", [("new", b"2", None), ("{statekit-index:}:lex", b"3", None)])
    with pytest.raises(ValueError, match="expires_at"):
        await bare.replace_prefix("", [("new", b"2", math.inf)])
    assert await bare.list_keys() == ["keep"]


async def test_range_bounds_and_prefixes_are_checked_like_keys(bare: RedisStateBackend) -> None:
    await bare.batch_put([("a:1", b"1"), ("a:2", b"2"), ("b", b"3")])
    assert await bare.list_keys(b"a:") == ["a:1", "a:2"]  # type: ignore[arg-type]
    assert await bare.range(b"a:", b"b") == [("a:1", b"1"), ("a:2", b"2")]  # type: ignore[arg-type]
    assert await bare.list_keys("") == ["a:1", "a:2", "b"]
    assert await bare.list_keys(RESERVED_KEY_PREFIX) == []  # a bound there is harmless: no user key
    assert len(await bare.export_items(b"a:")) == 2  # type: ignore[arg-type]
    for bad in [5, b"\xff", "\udc80", None]:
        with pytest.raises(InvalidKey):
            await bare.list_keys(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidKey):
            await bare.range(bad, "b")  # type: ignore[arg-type]
        if bad is not None:  # end=None means "every key starting with start"
            with pytest.raises(InvalidKey):
                await bare.range("a", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidKey):
            await bare.export_items(bad)  # type: ignore[arg-type]
    for bad_limit in ("3", -1, 2.0, True):  # ConfigError, as on memory and SQLite
        with pytest.raises(ConfigError):
            await bare.range("a", limit=bad_limit)  # type: ignore[arg-type]
