"""In-process single-key get and put: statekit's memory backend vs what a user would write instead.

Every implementation holds the same 10k keys (16 bytes) with 100-byte values; a round is one
coroutine doing 10k awaited operations on keys in a shuffled order, on an event loop created once
per benchmark. Peers:

* ``baseline_dict_lock``: a plain ``dict`` behind an ``asyncio.Lock`` (``async with lock: d.get(k)``),
  the smallest thing that is async and safe between tasks: the floor for any async in-memory store.
* ``baseline_aiocache``: ``aiocache.SimpleMemoryCache`` (NullSerializer), the usual library choice.

``statekit_store_memory_*`` goes through :class:`statekit.KeyValueStore` (JSON codec, a dict
value whose JSON is 100 bytes): the cost a user of the public API pays on top of the backend.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from aiocache import SimpleMemoryCache

from _support import LoopRunner, bench_async, describe, make_key, make_values, shuffled
from statekit import create_store
from statekit.backends.memory import MemoryStateBackend

N_KEYS = 10_000
ROUNDS = 25
#: aiocache costs ~40 us per call (each call is wrapped in asyncio.wait_for, i.e. a new Task).
AIOCACHE_ROUNDS = 7
KEYS = [make_key(i) for i in range(N_KEYS)]
VALUES = make_values(N_KEYS)
READ_ORDER = shuffled(KEYS)
WRITES = shuffled(zip(KEYS, make_values(N_KEYS, seed=7), strict=True))
GET_TARGETS = {"baseline_dict_lock_get": 0.7}


def store_value(i: int) -> dict[str, Any]:
    """A small state record whose JSON encoding is exactly 100 bytes."""
    value: dict[str, Any] = {"user": f"user-{i:08d}", "count": i, "sum": 12.5, "tags": ["a", "b"], "pad": ""}
    pad = 100 - len(msgspec.json.encode(value))
    value["pad"] = "x" * pad
    return value


STORE_VALUES = [store_value(i) for i in range(N_KEYS)]
assert all(len(msgspec.json.encode(v)) == 100 for v in STORE_VALUES[:10])

get_group = pytest.mark.benchmark(group="memory: single get, 10k keys, 100 B values")
put_group = pytest.mark.benchmark(group="memory: single put, 10k keys, 100 B values")


# -- get -----------------------------------------------------------------------------------


@get_group
def test_statekit_memory_get(benchmark: Any, aloop: LoopRunner) -> None:
    backend = MemoryStateBackend()
    aloop.run(backend.batch_put(zip(KEYS, VALUES, strict=True)))

    async def work() -> None:
        get = backend.get
        for key in READ_ORDER:
            await get(key)

    describe(benchmark, ops=N_KEYS, targets=GET_TARGETS)
    bench_async(benchmark, aloop, work, rounds=ROUNDS)
    assert aloop.run(backend.get(KEYS[5])) == VALUES[5]
    aloop.run(backend.close())


@get_group
def test_statekit_store_memory_get(benchmark: Any, aloop: LoopRunner) -> None:
    store = create_store("memory")
    aloop.run(store.put_many(dict(zip(KEYS, STORE_VALUES, strict=True))))

    async def work() -> None:
        get = store.get
        for key in READ_ORDER:
            await get(key)

    describe(benchmark, ops=N_KEYS, note="KeyValueStore, JSON codec")
    bench_async(benchmark, aloop, work, rounds=ROUNDS)
    assert aloop.run(store.get(KEYS[5])) == STORE_VALUES[5]
    aloop.run(store.close())


@get_group
def test_baseline_dict_lock_get(benchmark: Any, aloop: LoopRunner) -> None:
    data = dict(zip(KEYS, VALUES, strict=True))
    lock = asyncio.Lock()

    async def work() -> None:
        get = data.get
        for key in READ_ORDER:
            async with lock:
                get(key)

    describe(benchmark, ops=N_KEYS)
    bench_async(benchmark, aloop, work, rounds=ROUNDS)


@get_group
def test_baseline_aiocache_get(benchmark: Any, aloop: LoopRunner) -> None:
    cache = SimpleMemoryCache()
    aloop.run(cache.multi_set(list(zip(KEYS, VALUES, strict=True))))

    async def work() -> None:
        get = cache.get
        for key in READ_ORDER:
            await get(key)

    describe(benchmark, ops=N_KEYS)
    bench_async(benchmark, aloop, work, rounds=AIOCACHE_ROUNDS)
    assert aloop.run(cache.get(KEYS[5])) == VALUES[5]
    aloop.run(cache.close())


# -- put -----------------------------------------------------------------------------------


@put_group
def test_statekit_memory_put(benchmark: Any, aloop: LoopRunner) -> None:
    backend = MemoryStateBackend()
    aloop.run(backend.batch_put(zip(KEYS, VALUES, strict=True)))

    async def work() -> None:
        put = backend.put
        for key, value in WRITES:
            await put(key, value)

    describe(benchmark, ops=N_KEYS)
    bench_async(benchmark, aloop, work, rounds=ROUNDS)
    key, value = WRITES[5]
    assert aloop.run(backend.get(key)) == value
    aloop.run(backend.close())


@put_group
def test_statekit_store_memory_put(benchmark: Any, aloop: LoopRunner) -> None:
    store = create_store("memory")
    aloop.run(store.put_many(dict(zip(KEYS, STORE_VALUES, strict=True))))
    writes = shuffled(zip(KEYS, reversed(STORE_VALUES), strict=True))

    async def work() -> None:
        put = store.put
        for key, value in writes:
            await put(key, value)

    describe(benchmark, ops=N_KEYS, note="KeyValueStore, JSON codec")
    bench_async(benchmark, aloop, work, rounds=ROUNDS)
    key, value = writes[5]
    assert aloop.run(store.get(key)) == value
    aloop.run(store.close())


@put_group
def test_baseline_dict_lock_put(benchmark: Any, aloop: LoopRunner) -> None:
    data = dict(zip(KEYS, VALUES, strict=True))
    lock = asyncio.Lock()

    async def work() -> None:
        for key, value in WRITES:
            async with lock:
                data[key] = value

    describe(benchmark, ops=N_KEYS)
    bench_async(benchmark, aloop, work, rounds=ROUNDS)


@put_group
def test_baseline_aiocache_put(benchmark: Any, aloop: LoopRunner) -> None:
    cache = SimpleMemoryCache()
    aloop.run(cache.multi_set(list(zip(KEYS, VALUES, strict=True))))

    async def work() -> None:
        set_ = cache.set
        for key, value in WRITES:
            await set_(key, value)

    describe(benchmark, ops=N_KEYS)
    bench_async(benchmark, aloop, work, rounds=AIOCACHE_ROUNDS)
    key, value = WRITES[5]
    assert aloop.run(cache.get(key)) == value
    aloop.run(cache.close())
