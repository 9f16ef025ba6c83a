"""Store operations peers have: ``ttl``, ``expire``/``persist``, ``touch``, ``clear`` and the paged
iterators ``iter_keys``/``iter_range``; run against every backend kind (see tests/conftest.py), and
again over the cached backend and the sync API (test_cached_backend.py, test_sync_store.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from statekit import KeyValueStore
from statekit.backends import StateBackend
from statekit.errors import ConfigError, InvalidKey, KeyNotFound
from tests.conftest import PAST_SHORT_TTL, SHORT_TTL

Elapse = Callable[[float], Awaitable[None]]
#: Float rounding of ``clock() + ttl - clock()`` at unix-time magnitudes.
EPS = 1e-3


async def test_ttl_reports_seconds_left_none_for_forever_and_raises_for_missing(
    store: KeyValueStore, elapse: Elapse
) -> None:
    await store.put("forever", 1)
    await store.put("day", 2, ttl=timedelta(days=1))
    await store.put("short", 3, ttl=SHORT_TTL)
    assert await store.ttl("forever") is None
    left = await store.ttl("day")
    assert isinstance(left, float)
    assert 86_000 < left <= 86_400 + EPS
    with pytest.raises(KeyNotFound) as caught:
        await store.ttl("missing")
    assert caught.value.key == "missing"  # the store's key, not the backend's prefixed one
    await elapse(PAST_SHORT_TTL)
    with pytest.raises(KeyNotFound):
        await store.ttl("short")


async def test_expire_sets_a_ttl_on_an_existing_key_only(store: KeyValueStore, elapse: Elapse) -> None:
    await store.put("k", {"v": 1})
    assert await store.expire("k", SHORT_TTL) is True
    left = await store.ttl("k")
    assert left is not None
    assert 0 < left <= SHORT_TTL + EPS
    assert await store.get("k") == {"v": 1}  # the value is kept
    assert await store.expire("missing", 60) is False
    assert not await store.exists("missing")  # nothing was created
    await elapse(PAST_SHORT_TTL)
    assert await store.get("k") is None
    assert await store.expire("k", 60) is False  # expired is missing


async def test_expire_takes_durations_and_refuses_bad_arguments_before_writing(store: KeyValueStore) -> None:
    await store.put("k", 1)
    assert await store.expire("k", "2h")
    left = await store.ttl("k")
    assert left is not None
    assert 7000 < left <= 7200 + EPS
    assert await store.expire("k", timedelta(minutes=1))
    left = await store.ttl("k")
    assert left is not None
    assert left <= 60 + EPS
    for bad in (0, -1, float("nan"), "soon", 1e300):
        with pytest.raises(ConfigError):
            await store.expire("k", bad)
        with pytest.raises(ConfigError):
            await store.touch("k", bad)
    with pytest.raises(ConfigError):
        await store.expire("k", None)  # type: ignore[arg-type]
    for bad_key in ("", 7, b"\xff"):
        with pytest.raises(InvalidKey):
            await store.expire(bad_key, 10)  # type: ignore[arg-type]
        with pytest.raises(InvalidKey):
            await store.ttl(bad_key)  # type: ignore[arg-type]
        with pytest.raises(InvalidKey):
            await store.persist(bad_key)  # type: ignore[arg-type]
    left = await store.ttl("k")
    assert left is not None
    assert left <= 60 + EPS  # unchanged by the refused calls


async def test_persist_removes_an_expiry(store: KeyValueStore, elapse: Elapse) -> None:
    await store.put("k", "v", ttl=SHORT_TTL)
    assert await store.persist("k") is True
    assert await store.ttl("k") is None
    assert await store.persist("k") is False  # no expiry left to remove
    assert await store.persist("missing") is False
    await elapse(PAST_SHORT_TTL)
    assert await store.get("k") == "v"


async def test_expire_and_persist_keep_the_expiring_count_right(store: KeyValueStore) -> None:
    await store.put_many({"a": 1, "b": 2, "c": 3})
    assert await store.expire("a", 600)
    assert await store.expire("b", 600)
    stats = await store.get_stats()
    assert (stats["total_keys"], stats["expiring_keys"]) == (3, 2)
    assert await store.persist("a")
    stats = await store.get_stats()
    assert (stats["total_keys"], stats["expiring_keys"]) == (3, 1)
    assert await store.touch("c", 600)
    assert await store.touch("b")  # no ttl, no default: never expires
    stats = await store.get_stats()
    assert (stats["total_keys"], stats["expiring_keys"]) == (3, 1)
    assert await store.ttl("b") is None


async def test_touch_restarts_the_ttl(store: KeyValueStore, elapse: Elapse) -> None:
    await store.put("k", 1, ttl=SHORT_TTL)
    assert await store.touch("k", 600) is True
    await elapse(PAST_SHORT_TTL)
    assert await store.get("k") == 1
    assert await store.touch("missing", 600) is False
    assert not await store.exists("missing")


async def test_touch_without_ttl_applies_the_default_ttl(backend: StateBackend, elapse: Elapse) -> None:
    store = KeyValueStore(backend, key_prefix="d:", default_ttl=SHORT_TTL)
    await store.put("k", 1, ttl=600)
    assert await store.touch("k") is True
    left = await store.ttl("k")
    assert left is not None
    assert left <= SHORT_TTL + EPS
    await elapse(PAST_SHORT_TTL)
    assert not await store.exists("k")


async def test_clear_deletes_only_the_stores_prefix_and_counts_live_keys(
    backend: StateBackend, elapse: Elapse
) -> None:
    mine = KeyValueStore(backend, key_prefix="job:")
    near = KeyValueStore(backend, key_prefix="job;")  # sorts right after "job:": a range edge
    inner = KeyValueStore(backend, key_prefix="jo")  # a prefix of ours: must keep its own keys
    await mine.put_many({f"k{i}": i for i in range(120)})  # several pipelined chunks on Redis
    await mine.put("short", 1, ttl=SHORT_TTL)
    await near.put("k", "near")
    await inner.put("x", "inner")
    await elapse(PAST_SHORT_TTL)
    assert await mine.clear() == 120  # the expired key is not counted
    assert await mine.keys() == []
    assert await mine.get("k5") is None
    assert (await mine.get_stats())["total_keys"] == 0
    assert await near.get("k") == "near"
    assert await inner.keys() == ["b;k", "x"]  # "job;k" and "jox"
    assert await mine.clear() == 0
    await mine.put("again", 1)  # usable afterwards, index included
    assert await mine.keys() == ["again"]


async def test_clear_without_prefix_empties_the_backend(store: KeyValueStore) -> None:
    await store.put_many({"a": 1, "b": 2, "\U0010ffff": 3})
    assert await store.clear() == 3
    assert await store.keys() == []


KEYS = sorted(["a", "a\x00", "a\x00b", "ab", "b", "é", "\u4e2d", "\U0010ffff", "\U0010ffff\U0010ffff"])


async def test_iter_keys_pages_through_everything_in_order(store: KeyValueStore) -> None:
    many = [f"item:{i:03d}" for i in range(57)]
    await store.put_many({key: key for key in [*many, *KEYS]})
    everything = sorted([*many, *KEYS])
    assert [k async for k in store.iter_keys(page_size=4)] == everything
    assert [k async for k in store.iter_keys()] == await store.keys()
    assert [k async for k in store.iter_keys("item:", page_size=10)] == many
    assert [k async for k in store.iter_keys("item:", limit=13, page_size=5)] == many[:13]
    assert [k async for k in store.iter_keys("item:", limit=0)] == []
    assert [k async for k in store.iter_keys("a", page_size=1)] == ["a", "a\x00", "a\x00b", "ab"]
    assert [k async for k in store.iter_keys("\U0010ffff", page_size=1)] == ["\U0010ffff", "\U0010ffff" * 2]
    assert [k async for k in store.iter_keys("nothing")] == []


async def test_iter_range_matches_range_get(store: KeyValueStore) -> None:
    await store.put_many({f"item:{i:02d}": i for i in range(30)})
    await store.put("other", -1)
    assert [p async for p in store.iter_range("item:", page_size=7)] == await store.range_get("item:")
    assert [p async for p in store.iter_range("item:05", "item:17", page_size=3)] == await store.range_get(
        "item:05", "item:17"
    )
    assert [p async for p in store.iter_range("item:05", "item:17", limit=4, page_size=3)] == [
        (f"item:{i:02d}", i) for i in range(5, 9)
    ]
    assert [p async for p in store.iter_range("", page_size=8)] == await store.range_get("")


async def test_iterators_refuse_bad_arguments(store: KeyValueStore) -> None:
    with pytest.raises(ConfigError):
        [k async for k in store.iter_keys(limit=-1)]
    with pytest.raises(ConfigError):
        [k async for k in store.iter_keys(page_size=0)]
    with pytest.raises(InvalidKey):
        [p async for p in store.iter_range(7)]  # type: ignore[arg-type]


async def test_iter_keys_skips_expired_and_deleted_keys(store: KeyValueStore, elapse: Elapse) -> None:
    await store.put_many({f"k{i}": i for i in range(10)})
    await store.put("k5", 5, ttl=SHORT_TTL)
    await store.delete("k7")
    await elapse(PAST_SHORT_TTL)
    assert [k async for k in store.iter_keys("k", page_size=3)] == [
        f"k{i}" for i in range(10) if i not in (5, 7)
    ]


async def test_breaking_out_of_an_iterator_leaves_the_store_usable(store: KeyValueStore) -> None:
    await store.put_many({f"k{i:02d}": i for i in range(30)})
    seen = []
    async for key in store.iter_keys(page_size=4):
        seen.append(key)
        if len(seen) == 6:
            break
    assert seen == [f"k{i:02d}" for i in range(6)]
    assert await store.delete("k03")
    assert [k async for k in store.iter_keys(limit=4)] == ["k00", "k01", "k02", "k04"]
