"""Fenced writes (``fence=``) on every backend kind (memory, SQLite, Redis, Redis Cluster)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from statekit import KeyValueStore
from statekit.backends import CachedStateBackend, MemoryStateBackend, SqliteStateBackend, StateBackend
from statekit.errors import ConfigError, InvalidValue, LockLost, StaleFence
from statekit.locks import Fence
from tests.ci import require_module

OLD, NEW, NEWER = Fence("job", 5), Fence("job", 7), Fence("job", 9)


@pytest.fixture
async def store(backend: StateBackend) -> AsyncIterator[KeyValueStore]:
    """conftest's ``backend``: one run per backend kind, Redis standalone and cluster included."""
    kv = KeyValueStore(backend, key_prefix="app:")
    yield kv
    await kv.close()


async def test_older_token_refused_after_newer_wrote(store: KeyValueStore) -> None:
    await store.put("k", "old", fence=OLD)
    await store.put("k", "new", fence=NEW)
    await store.put("k", "new again", fence=NEW)  # the same holder may write again
    with pytest.raises(StaleFence) as refused:
        await store.put("k", "stale", fence=OLD)
    err = refused.value
    assert isinstance(err, LockLost)
    assert (err.name, err.key, err.token, err.newer_token) == ("job", "app:k", 5, 7)
    assert await store.get("k") == "new again"
    await store.put("k", "newer", fence=NEWER)
    assert await store.get("k") == "newer"


async def test_other_lock_names_and_unfenced_writes_are_independent(store: KeyValueStore) -> None:
    await store.put("k", "new", fence=NEW)
    await store.put("k", "other lock", fence=Fence("other", 1))
    await store.put("k", "unfenced")
    assert await store.get("k") == "unfenced"
    await store.put("fresh", "old is fine on a key no newer token wrote", fence=OLD)


async def test_put_many_is_refused_whole(store: KeyValueStore) -> None:
    await store.put("b", "new", fence=NEW)
    with pytest.raises(StaleFence):
        await store.put_many({"a": 1, "b": 2, "c": 3}, fence=OLD)
    assert await store.get_many(["a", "b", "c"]) == [None, "new", None]
    await store.put_many({"a": 1, "b": 2}, fence=NEWER)
    assert await store.get_many(["a", "b"]) == [1, 2]


async def test_deletes_are_fenced_and_recorded(store: KeyValueStore) -> None:
    await store.put_many({"a": 1, "b": 2}, fence=OLD)
    assert await store.delete("a", fence=NEW) is True
    with pytest.raises(StaleFence):
        await store.put("a", "resurrected", fence=OLD)  # the newer holder's delete stands
    assert await store.get("a") is None
    with pytest.raises(StaleFence):
        await store.delete_many(["a", "b"], fence=OLD)
    assert await store.get("b") == 2
    assert await store.delete_many(["a", "b"], fence=NEW) == 1


async def test_update_is_fenced(store: KeyValueStore) -> None:
    assert await store.update("n", lambda v: (v or 0) + 1, fence=NEW) == 1
    with pytest.raises(StaleFence):
        await store.update("n", lambda v: (v or 0) + 100, fence=OLD)
    assert await store.get("n") == 1


async def test_records_stay_out_of_the_user_key_space(store: KeyValueStore) -> None:
    await store.put("k", 1, fence=NEW)
    assert await store.keys() == ["k"]
    assert (await KeyValueStore(store.backend).get_stats())["total_keys"] == 1


async def test_a_fence_must_be_a_fence(store: KeyValueStore) -> None:
    with pytest.raises(InvalidValue):
        await store.put("k", 1, fence=("job", 5))  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        await store.put("k", 1, fence=Fence("job", "5"))  # type: ignore[arg-type]


async def test_sqlite_check_spans_connections_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    one, two = SqliteStateBackend(path), SqliteStateBackend(path)
    await two.fenced_batch_put(NEW, [("k", b"new")])
    with pytest.raises(StaleFence):
        await one.fenced_batch_put(OLD, [("k", b"stale")])
    await one.close()
    await two.close()
    three = SqliteStateBackend(path)
    with pytest.raises(StaleFence):
        await three.fenced_batch_put(OLD, [("k", b"stale")])
    assert await three.get("k") == b"new"
    await three.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name, key, token FROM statekit_fences").fetchall() == [("job", "k", 7)]
        assert conn.execute("SELECT key FROM statekit_kv").fetchall() == [("k",)]


async def test_backend_without_fenced_writes_refuses_with_config_error() -> None:
    store = KeyValueStore(CachedStateBackend(MemoryStateBackend()))
    with pytest.raises(ConfigError, match="fence"):
        await store.put("k", 1, fence=NEW)
    assert await store.get("k") is None
    await store.close()


# -- Redis only ------------------------------------------------------------------------------


def _redis_backend(url: str) -> StateBackend:
    require_module("redis", "the Redis fenced-write tests need redis-py: pip install statekit[redis]")
    from statekit.backends import RedisConfig
    from statekit.backends.redis import RedisStateBackend

    return RedisStateBackend(RedisConfig.from_url(url, key_prefix="t:"))


async def test_redis_standalone_refuses_a_token_older_than_the_lock_issued(redis_url: str) -> None:
    """On one server the script also reads RedisLock's counter: the successor need not write first."""
    from statekit.locks import RedisLock

    backend = _redis_backend(redis_url)
    kv = KeyValueStore(backend)
    first, second = RedisLock(backend, "issued", ttl=10), RedisLock(backend, "issued", ttl=10)
    old = await first.acquire()
    await kv.put("a", "first", fence=old)
    await first.release()
    new = await second.acquire()  # issued, but has written nothing yet
    with pytest.raises(StaleFence) as refused:
        await kv.put_many({"a": "stale", "untouched": "stale"}, fence=old)
    assert (refused.value.name, refused.value.token, refused.value.newer_token) == (
        "issued",
        old.token,
        new.token,
    )
    with pytest.raises(StaleFence):
        await kv.delete("a", fence=old)
    with pytest.raises(StaleFence):
        await kv.update("a", lambda v: "stale", fence=old)
    assert await kv.get_many(["a", "untouched"]) == ["first", None]
    await kv.put("a", "second", fence=new)
    assert await kv.get("a") == "second"
    await second.release()
    await first.aclose()
    await second.aclose()
    await kv.close()


async def test_redis_cluster_multi_slot_batch_with_one_stale_key_writes_nothing(cluster_url: str) -> None:
    from statekit import _native
    from statekit.backends.redis import RedisStateBackend

    backend = _redis_backend(cluster_url)
    assert isinstance(backend, RedisStateBackend)
    keys = [f"k{i}" for i in range(40)]
    assert len({_native.hash_slot("t:" + k) for k in keys}) > 1  # the batch spans several slots
    await backend.fenced_put(NEW, "k7", b"new")
    with pytest.raises(StaleFence) as refused:
        await backend.fenced_batch_put(OLD, [(k, b"stale") for k in keys])
    assert (refused.value.key, refused.value.newer_token) == ("k7", NEW.token)
    with pytest.raises(StaleFence):
        await backend.fenced_batch_delete(OLD, keys)
    assert await backend.batch_get(keys) == [b"new" if k == "k7" else None for k in keys]
    assert await backend.list_keys() == ["k7"]
    # Without the read-only pre-check (a newer holder writing between check and write), the
    # stale key's own slot still refuses atomically: its slot is untouched, others are written.
    stale_slot = _native.hash_slot("t:k7")

    async def no_precheck(*args: object) -> None:
        return None

    backend._fence_precheck = no_precheck  # type: ignore[method-assign]
    with pytest.raises(StaleFence):
        await backend.fenced_batch_put(OLD, [(k, b"raced") for k in keys])
    for key, value in zip(keys, await backend.batch_get(keys), strict=True):
        if _native.hash_slot("t:" + key) == stale_slot:
            assert value == (b"new" if key == "k7" else None)
        else:
            assert value == b"raced"
    await backend.close()


async def test_redis_fenced_write_is_remembered_per_request(redis_url: str) -> None:
    """A retried script (same request record) returns the first result and applies nothing again."""
    from statekit.backends.redis import RedisStateBackend

    backend = _redis_backend(redis_url)
    assert isinstance(backend, RedisStateBackend)
    await backend.batch_put([("a", b"1"), ("b", b"2")])
    sent: list[tuple[Any, list[str], list[Any]]] = []
    real_eval = backend._eval

    async def recording_eval(script: Any, keys: list[str], args: list[Any]) -> Any:
        sent.append((script, keys, args))
        return await real_eval(script, keys, args)

    backend._eval = recording_eval  # type: ignore[method-assign]
    assert await backend.fenced_batch_delete(NEW, ["a", "b"]) == 2
    backend._eval = real_eval  # type: ignore[method-assign]
    await backend.put("a", b"again")
    [(script, keys, args)] = sent
    assert await backend._eval(script, keys, args) == 2  # the remembered count, not 1
    assert await backend.get("a") == b"again"
    await backend.close()
