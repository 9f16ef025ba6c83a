"""KeyValueStore behaviour, run against every backend kind (see tests/conftest.py).

Key counts are read with ``await store.get_stats()``: SQLite counts keys off the event-loop thread
and Redis on the server, so their synchronous ``get_stats()`` reports the figures of the last
awaited call (the memory backend counts live either way).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from statekit import KeyValueStore
from statekit.backends import SqliteStateBackend, StateBackend
from statekit.errors import (
    ConfigError,
    DeserializationFailed,
    InvalidKey,
    NotInitialized,
    SerializationFailed,
    StateError,
    StorageError,
)
from tests.conftest import PAST_SHORT_TTL, SHORT_TTL, FakeClock

Elapse = Callable[[float], Awaitable[None]]


async def test_put_get_exists_delete(store: KeyValueStore) -> None:
    await store.put("user:123", {"name": "John Doe", "email": "john@example.com"})
    assert await store.get("user:123") == {"name": "John Doe", "email": "john@example.com"}
    assert await store.exists("user:123")
    assert await store.delete("user:123") is True
    assert await store.delete("user:123") is False
    assert not await store.exists("user:123")
    assert await store.get("user:123") is None
    assert await store.get("user:123", default="fallback") == "fallback"


async def test_overwrite_replaces_value(store: KeyValueStore) -> None:
    await store.put("k", 1)
    await store.put("k", [1, 2])
    assert await store.get("k") == [1, 2]


async def test_range_with_end_is_start_inclusive_end_exclusive(store: KeyValueStore) -> None:
    for i in range(10):
        await store.put(f"item:{i}", f"value_{i}")
    result = await store.range_get("item:3", "item:7")
    assert result == [(f"item:{i}", f"value_{i}") for i in range(3, 7)]


async def test_range_without_end_is_a_prefix_query(store: KeyValueStore) -> None:
    await store.put_many({"item:1": 1, "item:2": 2, "itemx": 3, "iten": 4, "other": 5, "item:": 0})
    assert await store.range_get("item:") == [("item:", 0), ("item:1", 1), ("item:2", 2)]
    assert await store.range_get("item:", limit=2) == [("item:", 0), ("item:1", 1)]
    assert await store.range_get("item:", limit=0) == []
    assert [k for k, _ in await store.range_get("")] == [
        "item:",
        "item:1",
        "item:2",
        "itemx",
        "iten",
        "other",
    ]
    assert await store.keys("item") == ["item:", "item:1", "item:2", "itemx"]


async def test_range_orders_by_code_point_including_non_ascii(store: KeyValueStore) -> None:
    keys = ["a", "a\U0010ffff", "b", "é", "z", "ÿ", "\u4e2d", "\U0001f600"]
    await store.put_many((k, k) for k in keys)
    assert [k for k, _ in await store.range_get("")] == sorted(keys)
    assert [k for k, _ in await store.range_get("a")] == ["a", "a\U0010ffff"]


async def test_key_prefix_isolates_stores_on_one_backend(backend: StateBackend) -> None:
    a = KeyValueStore(backend, key_prefix="a:")
    b = KeyValueStore(backend, key_prefix="b:")
    await a.put("x", 1)
    await b.put("x", 2)
    await b.put("y", 3)
    assert await a.get("x") == 1
    assert await b.get("x") == 2
    assert await a.range_get("") == [("x", 1)]
    assert await b.range_get("") == [("x", 2), ("y", 3)]
    assert await b.range_get("x", "y") == [("x", 2)]
    assert (await a.get_stats())["total_keys"] == 1
    assert (await b.get_stats())["total_keys"] == 2
    assert sorted(await backend.list_keys("")) == ["a:x", "b:x", "b:y"]


@pytest.mark.fake_clock("see test_short_ttls_expire_and_leave_the_counts_right")
async def test_ttl_expiry_with_controlled_clock(backend: StateBackend, clock: FakeClock) -> None:
    store = KeyValueStore(backend)
    await store.put("short", "v", ttl=10)
    await store.put("delta", "v", ttl=timedelta(minutes=1))
    await store.put("forever", "v")
    clock.advance(9.9)
    assert await store.exists("short")
    assert (await store.get_stats())["expiring_keys"] == 2
    clock.advance(0.2)
    assert not await store.exists("short")
    assert await store.get("short") is None
    assert await store.range_get("") == [("delta", "v"), ("forever", "v")]
    clock.advance(60)
    assert await store.range_get("") == [("forever", "v")]
    stats = await store.get_stats()
    assert (stats["total_keys"], stats["expiring_keys"]) == (1, 0)


async def test_short_ttls_expire_and_leave_the_counts_right(backend: StateBackend, elapse: Elapse) -> None:
    store = KeyValueStore(backend)
    await store.put("short", "v", ttl=SHORT_TTL)
    await store.put_many({"short:batch": "v"}, ttl=SHORT_TTL)
    await store.incr("short:counter", ttl=SHORT_TTL)
    await store.put("delta", "v", ttl=timedelta(minutes=1))
    await store.put("forever", "v")
    stats = await store.get_stats()
    assert (stats["total_keys"], stats["expiring_keys"]) == (5, 4)
    assert await store.exists("short")
    await elapse(PAST_SHORT_TTL)
    assert not await store.exists("short")
    assert await store.get_many(["short", "short:batch", "short:counter"]) == [None, None, None]
    assert await store.range_get("") == [("delta", "v"), ("forever", "v")]
    assert await store.keys("short") == []
    stats = await store.get_stats()
    assert (stats["total_keys"], stats["expiring_keys"]) == (2, 1)
    assert await store.incr("short:counter") == 1  # a fresh counter, without the old TTL


async def test_default_ttl_applies_when_no_ttl_given(backend: StateBackend, elapse: Elapse) -> None:
    store = KeyValueStore(backend, default_ttl=timedelta(seconds=SHORT_TTL))
    await store.put("a", 1)
    await store.put("b", 1, ttl=100)
    await store.put_many({"c": 1})
    await elapse(PAST_SHORT_TTL)
    assert await store.get_many(["a", "b", "c"]) == [None, 1, None]
    assert store.get_stats()["default_ttl"] == SHORT_TTL


@pytest.mark.parametrize("bad", [0, -1, "10", True, float("nan")])
async def test_invalid_ttl_is_a_config_error(store: KeyValueStore, bad: Any) -> None:
    with pytest.raises(ConfigError, match="ttl"):
        await store.put("k", 1, ttl=bad)
    assert not await store.exists("k")


async def test_put_over_expired_key_and_set_if_absent(backend: StateBackend, elapse: Elapse) -> None:
    store = KeyValueStore(backend)
    assert await store.set_if_absent("lock", "a", ttl=SHORT_TTL)
    assert not await store.set_if_absent("lock", "b", ttl=SHORT_TTL)
    assert await store.get("lock") == "a"
    await elapse(PAST_SHORT_TTL)
    assert await store.set_if_absent("lock", "c")
    assert await store.get("lock") == "c"


async def test_pop_returns_and_removes(store: KeyValueStore) -> None:
    await store.put("k", {"v": 1})
    assert await store.pop("k") == {"v": 1}
    assert await store.pop("k", default="gone") == "gone"
    assert not await store.exists("k")


async def test_batch_operations_align_with_keys(store: KeyValueStore) -> None:
    await store.put_many([("a", 1), ("b", 2)])
    await store.put_many({"c": 3})
    assert await store.get_many(["c", "missing", "a", "a"]) == [3, None, 1, 1]
    assert await store.delete_many(["a", "missing", "c"]) == 2
    assert await store.get_many(["a", "b", "c"]) == [None, 2, None]
    assert await store.get_many([]) == []
    assert await store.delete_many([]) == 0


async def test_delete_of_expired_key_reports_false(backend: StateBackend, elapse: Elapse) -> None:
    store = KeyValueStore(backend)
    await store.put("k", 1, ttl=SHORT_TTL)
    await store.put("j", 1, ttl=SHORT_TTL)
    await elapse(PAST_SHORT_TTL)
    assert await store.delete("k") is False
    assert await store.delete_many(["j"]) == 0
    assert await store.pop("j") is None


async def test_unencodable_value_raises_and_writes_nothing(store: KeyValueStore) -> None:
    with pytest.raises(SerializationFailed, match="'bad'") as info:
        await store.put("bad", {"f": object()})
    assert info.value.key == "bad"
    assert not await store.exists("bad")
    with pytest.raises(SerializationFailed):
        await store.put_many({"ok": 1, "bad": object()})
    assert await store.get_many(["ok", "bad"]) == [None, None]


@pytest.mark.parametrize("key", ["", b"", b"\xff\xfe", "\udc80", 1, None, ("t",), 1.5])
async def test_invalid_keys_are_rejected(store: KeyValueStore, key: Any) -> None:
    with pytest.raises(InvalidKey) as info:
        await store.put(key, 1)
    assert isinstance(info.value, StateError)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidKey):
        await store.get(key)
    with pytest.raises(InvalidKey):
        await store.get_many(["ok", key])
    with pytest.raises(InvalidKey):
        await store.put_many({"ok": 1, key: 2})
    assert await store.keys() == []


async def test_utf8_bytes_keys_are_the_same_key_as_str(store: KeyValueStore) -> None:
    await store.put(b"window:1", {"n": 1})
    assert await store.get("window:1") == {"n": 1}
    await store.put_many({b"window:2": 2, "window:3": 3})
    assert await store.keys("window:") == ["window:1", "window:2", "window:3"]
    assert await store.get_many([b"window:2", "window:3"]) == [2, 3]
    assert await store.delete(b"window:1")
    assert await store.range_get(b"window:") == [("window:2", 2), ("window:3", 3)]


async def test_counters_are_exact_under_concurrent_tasks(store: KeyValueStore) -> None:
    async def bump(n: int) -> None:
        for _ in range(n):
            await store.incr("counter")

    await asyncio.gather(*(bump(20) for _ in range(50)))
    assert await store.incr("counter", 0) == 1000
    assert await store.incr("counter", -10) == 990


async def test_incr_on_non_integer_is_storage_error(store: KeyValueStore) -> None:
    await store.put("text", "hello")
    with pytest.raises(StorageError, match="'text'"):
        await store.incr("text")
    assert await store.get("text") == "hello"


async def test_concurrent_tasks_never_lose_writes(store: KeyValueStore) -> None:
    async def writer(task: int) -> None:
        for i in range(50):
            await store.put(f"t{task:02d}:{i:03d}", [task, i])
            assert await store.get(f"t{task:02d}:{i:03d}") == [task, i]

    await asyncio.gather(*(writer(t) for t in range(20)))
    rows = await store.range_get("t")
    assert len(rows) == 1000
    assert rows == sorted(rows)


async def test_closed_store_raises_not_initialized(backend: StateBackend) -> None:
    store = KeyValueStore(backend)
    await store.close()
    with pytest.raises(NotInitialized):
        await store.put("k", 1)
    with pytest.raises(NotInitialized):
        await store.get("k")
    assert await store.health_check() is False
    await store.close()  # harmless


async def test_async_with_closes(backend: StateBackend) -> None:
    async with KeyValueStore(backend) as store:
        await store.put("k", 1)
        assert await store.health_check()
    with pytest.raises(NotInitialized):
        await store.get("k")


async def test_stats_shape_sync_and_awaited(store: KeyValueStore) -> None:
    await store.put("a", 1)
    await store.get("a")
    await store.get("missing")
    stats = store.get_stats()
    for field in ("total_keys", "expiring_keys", "serializer", "default_ttl", "key_prefix", "backend"):
        assert field in stats
    if store.backend.backend_type == "memory":  # the others count keys only when awaited
        assert stats["total_keys"] == 1
    assert stats["serializer"] == "json"
    assert stats["hit_count"] >= 1
    assert stats["miss_count"] >= 1
    awaited = await store.get_stats()
    assert awaited["total_keys"] == 1
    assert store.get_stats()["total_keys"] == 1  # SQLite, Redis: the figure of the last awaited call


# -- serializers ----------------------------------------------------------------------------


async def test_msgpack_round_trips_bytes(backend: StateBackend) -> None:
    store = KeyValueStore(backend, serializer="msgpack")
    await store.put("blob", {"data": b"\x00\xff", "n": 1})
    assert await store.get("blob") == {"data": b"\x00\xff", "n": 1}


async def test_pickle_round_trips_datetimes_and_sets(backend: StateBackend) -> None:
    store = KeyValueStore(backend, serializer="pickle", signing_key=b"0123456789abcdef")
    value = {"when": datetime(2024, 1, 2, 3, 4, 5), "ids": {1, 2, 3}}
    await store.put("complex", value)
    assert await store.get("complex") == value


class _Tripwire:
    """Unpickling this calls _trip, which records that code ran."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_trip, ())


TRIPPED: list[bool] = []


def _trip() -> None:
    TRIPPED.append(True)


async def test_tampered_signed_pickle_is_never_unpickled(backend: StateBackend) -> None:
    TRIPPED.clear()
    store = KeyValueStore(backend, serializer="pickle", signing_key="a-long-enough-key!")
    await store.put("k", "safe")
    # An attacker with write access stores a payload without a valid signature.
    await backend.put("k", pickle.dumps(_Tripwire()))
    with pytest.raises(DeserializationFailed, match="signed"):
        await store.get("k")
    forged = b"SKP2" + b"\x00" * 32 + pickle.dumps(_Tripwire())
    await backend.put("k", forged)
    with pytest.raises(DeserializationFailed, match="does not verify"):
        await store.get("k")
    assert TRIPPED == []


async def test_unsigned_pickle_is_refused_on_persistent_backends(
    backend: StateBackend, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="statekit"):
        KeyValueStore(backend, serializer="pickle", signing_key=b"0123456789abcdef")
    assert not caplog.records
    if backend.persistent:
        with pytest.raises(ConfigError, match="allow_unsigned_pickle"):
            KeyValueStore(backend, serializer="pickle")
        with caplog.at_level(logging.WARNING, logger="statekit"):
            KeyValueStore(backend, serializer="pickle", allow_unsigned_pickle=True)
        assert any("unsigned pickle" in r.getMessage() for r in caplog.records)
    else:
        with caplog.at_level(logging.WARNING, logger="statekit"):
            KeyValueStore(backend, serializer="pickle")
        assert not caplog.records


async def test_unsigned_pickle_on_sqlite_is_refused_through_every_door(tmp_path: Path) -> None:
    from statekit import create_store

    path = tmp_path / "p.db"
    with pytest.raises(ConfigError, match="signing_key"):
        create_store("sqlite", path=str(path), serializer="pickle")
    with pytest.raises(ConfigError, match="signing_key"):
        create_store(f"sqlite:///{path}?serializer=pickle")
    allowed = create_store(f"sqlite:///{path}?serializer=pickle&allow_unsigned_pickle=true")
    await allowed.close()
    mem = create_store("memory", serializer="pickle")  # private to the process: nothing to plant
    await mem.close()


async def test_a_planted_pickle_row_is_never_unpickled(tmp_path: Path) -> None:
    """Someone who can write the database plants a pickle that would run code on get()."""
    from statekit import create_store

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, ("raise SystemExit('planted pickle ran')",))

    path = tmp_path / "p.db"
    writer = SqliteStateBackend(str(path))
    await writer.put("job:k", pickle.dumps(Boom()))
    await writer.close()
    store = create_store(f"sqlite:///{path}", serializer="pickle", signing_key=b"k" * 16, key_prefix="job:")
    with pytest.raises(DeserializationFailed, match="not a signed pickle"):
        await store.get("k")
    await store.close()


async def test_value_written_with_other_codec_is_deserialization_error(backend: StateBackend) -> None:
    await KeyValueStore(backend, serializer="msgpack").put("k", {"a": 1})
    with pytest.raises(DeserializationFailed, match="'k'"):
        await KeyValueStore(backend, serializer="json").get("k")


def test_short_signing_key_is_rejected() -> None:
    from statekit import create_store

    with pytest.raises(ConfigError, match="16 bytes"):
        create_store("memory", serializer="pickle", signing_key="short")
    with pytest.raises(ConfigError, match="pickle"):
        create_store("memory", serializer="json", signing_key="a-long-enough-key!")


async def test_get_counter_reads_without_creating(store: KeyValueStore) -> None:
    assert await store.get_counter("hits") is None
    assert not await store.exists("hits")
    await store.incr("hits", 3)
    assert await store.get_counter("hits") == 3
    await store.put("text", "x")
    with pytest.raises(StorageError, match="'text'"):
        await store.get_counter("text")


async def test_update_is_a_read_modify_write_without_lost_updates(store: KeyValueStore) -> None:
    assert await store.update("doc", lambda cur: {"n": 1} if cur is None else cur) == {"n": 1}

    async def bump() -> None:
        for _ in range(10):
            await asyncio.sleep(0)
            await store.update("doc", lambda cur: {"n": cur["n"] + 1})

    await asyncio.gather(*(bump() for _ in range(20)))
    assert await store.get("doc") == {"n": 201}
    same = await store.get("doc")
    assert await store.update("doc", lambda cur: cur) == same  # unchanged: nothing written


async def test_compare_and_set_on_the_backend(backend: StateBackend) -> None:
    assert await backend.compare_and_set("k", None, b"1")
    assert not await backend.compare_and_set("k", None, b"2")
    assert not await backend.compare_and_set("k", b"0", b"2")
    assert await backend.compare_and_set("k", b"1", b"2")
    assert await backend.get("k") == b"2"
    assert await backend.list_keys("") == ["k"]


async def test_a_signed_pickle_copied_to_another_key_is_refused(backend: StateBackend) -> None:
    store = KeyValueStore(backend, serializer="pickle", signing_key=b"0123456789abcdef", key_prefix="a:")
    await store.put("balance", {"cents": 10})
    copied = await backend.get("a:balance")
    assert copied is not None
    await backend.put("a:other", copied)
    with pytest.raises(DeserializationFailed, match="copied from another key"):
        await store.get("other")
    await backend.put("b:balance", copied)  # same key under another store prefix
    other_store = KeyValueStore(
        backend, serializer="pickle", signing_key=b"0123456789abcdef", key_prefix="b:"
    )
    with pytest.raises(DeserializationFailed):
        await other_store.get("balance")
    assert await store.get("balance") == {"cents": 10}


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
@pytest.mark.parametrize("amount", [0, 4, 9, 10, -3, 57, 2**62])
async def test_a_counter_reads_back_as_itself_with_every_serializer(
    backend: StateBackend, serializer: str, amount: int
) -> None:
    store = KeyValueStore(backend, serializer=serializer, allow_unsigned_pickle=True)
    await store.incr("c", amount)
    assert await store.get("c") == amount
    assert await store.get_counter("c") == amount


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize("value", [*range(40, 70), -1, 0, 255, 2**40, -(2**40)])
async def test_small_ints_are_not_mistaken_for_counters(
    backend: StateBackend, serializer: str, value: int
) -> None:
    store = KeyValueStore(backend, serializer=serializer)
    await store.put("n", value)
    assert await store.get("n") == value
    await store.put_many({"m": value})
    assert await store.get_many(["m"]) == [value]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
async def test_json_refuses_nan_and_infinities(store: KeyValueStore, bad: float) -> None:
    for value in (bad, [1.0, bad], {"a": {"b": (bad,)}}):
        with pytest.raises(SerializationFailed, match="NaN or an infinity"):
            await store.put("k", value)
    assert not await store.exists("k")
    await store.put("k", {"a": None, "b": [None, 1.5]})  # a real null is fine
    assert await store.get("k") == {"a": None, "b": [None, 1.5]}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object()])
async def test_put_many_refuses_a_batch_with_one_bad_value_and_names_its_key(
    store: KeyValueStore, bad: Any
) -> None:
    # put_many encodes a JSON batch in one loop; a failure must still name the key and write nothing.
    batch = {f"k{i:03d}": {"n": i, "x": None} for i in range(200)}
    batch["k150"] = {"n": 150, "x": [1.0, bad]}
    with pytest.raises(SerializationFailed, match="'k150'"):
        await store.put_many(batch)
    assert await store.keys("k") == []
    del batch["k150"]
    await store.put_many(batch)  # the nulls of the other values are real ones
    assert await store.get_many(["k000", "k199", "k150"]) == [
        {"n": 0, "x": None},
        {"n": 199, "x": None},
        None,
    ]


async def test_put_many_mixing_overwrites_new_keys_and_repeats_keeps_keys_sorted(
    store: KeyValueStore,
) -> None:
    await store.put_many({f"a{i:03d}": i for i in range(0, 300, 2)})  # the even ones
    # Mostly overwrites, some new keys (odd), one key twice (the last value wins), in no order.
    batch = [(f"a{i:03d}", -i) for i in range(299, -1, -3)] + [("a004", "again"), ("a001", "last")]
    await store.put_many(batch)
    expected = {f"a{i:03d}": i for i in range(0, 300, 2)} | {f"a{i:03d}": -i for i in range(299, -1, -3)}
    expected |= {"a004": "again", "a001": "last"}
    assert await store.range_get("a") == sorted(expected.items())
    assert await store.keys("a") == sorted(expected)
