"""Fenced writes (``fence=``) on the memory and SQLite backends, through KeyValueStore."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statekit import KeyValueStore
from statekit.backends import CachedStateBackend, MemoryStateBackend, SqliteStateBackend
from statekit.errors import ConfigError, InvalidValue, LockLost, StaleFence
from statekit.locks import Fence

OLD, NEW, NEWER = Fence("job", 5), Fence("job", 7), Fence("job", 9)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyValueStore]:
    backend = MemoryStateBackend() if request.param == "memory" else SqliteStateBackend(tmp_path / "f.db")
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
