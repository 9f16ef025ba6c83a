"""Locks and fenced writes.

Groups (statekit rows are compared with every baseline row of their group):

* Redis lock, async acquire+release: statekit ``RedisLock`` (one script to acquire and take a fence,
  a renewal task started and stopped, one script to release) vs redis-py's asyncio ``Lock``
  (``SET NX PX`` + a release script; no renewal, no fence).
* Redis lock, sync acquire+release: ``RedisLock(...).sync()`` (the lock runs on a background
  event loop, so every call crosses threads) vs redis-py's ``Lock`` and python-redis-lock's
  ``Lock`` (defaults: no auto-renewal).
* fenced put: ``store.put(key, value, fence=fence)`` vs the same ``store.put`` without a fence,
  on the memory and SQLite backends (the SQLite rows commit each put: durability="normal").

One fresh standalone redis-server (no persistence) serves every Redis row, in the same run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.ci import require_module, skip_or_fail
from tests.servers.redis_servers import RedisServer, start_standalone

from _support import LoopRunner, bench_async, describe
from statekit import KeyValueStore
from statekit.backends import MemoryStateBackend, SqliteStateBackend
from statekit.locks import Fence, RedisLock

redis = require_module("redis", "pip install statekit[redis]")
redis_asyncio = require_module("redis.asyncio", "pip install statekit[redis]")

N_LOCK = 500
N_PUT = 2_000
N_PUT_SQLITE = 1_000

async_group = pytest.mark.benchmark(group="locks: Redis acquire+release, async")
sync_group = pytest.mark.benchmark(group="locks: Redis acquire+release, sync")
fenced_memory_group = pytest.mark.benchmark(group="locks: fenced put, memory")
fenced_sqlite_group = pytest.mark.benchmark(group="locks: fenced put, sqlite")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server not found: apt-get install redis-server redis-tools")
    s = start_standalone()
    yield s
    s.stop()


# -- async acquire + release -------------------------------------------------------------------


@async_group
def test_statekit_redis_lock_async(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    lock = RedisLock(server.url, "bench", ttl=30)
    tokens: list[int] = []

    async def work() -> None:
        for _ in range(N_LOCK):
            tokens.append((await lock.acquire()).token)
            await lock.release()

    describe(benchmark, ops=N_LOCK, targets={"baseline_redispy_lock_async": 1.0})
    bench_async(benchmark, aloop, work, rounds=9)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)
    aloop.run(lock.aclose())


@async_group
def test_baseline_redispy_lock_async(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    client = redis_asyncio.Redis(port=server.port)
    lock = client.lock("bench-redispy", timeout=30)

    async def work() -> None:
        for _ in range(N_LOCK):
            assert await lock.acquire()
            await lock.release()

    describe(benchmark, ops=N_LOCK)
    bench_async(benchmark, aloop, work, rounds=9)
    aloop.run(client.aclose())


# -- sync acquire + release --------------------------------------------------------------------


@sync_group
def test_statekit_redis_lock_sync(benchmark: object, server: RedisServer) -> None:
    lock = RedisLock(server.url, "bench-sync", ttl=30).sync()

    def work() -> None:
        for _ in range(N_LOCK):
            lock.acquire()
            lock.release()

    describe(
        benchmark,
        ops=N_LOCK,
        targets={"baseline_redispy_lock_sync": 1.0, "baseline_python_redis_lock": 1.0},
        note="RedisLock(...).sync() is a SyncRedisLock: redis-py's blocking client, a renewal thread",
    )
    benchmark.pedantic(work, rounds=9, iterations=1, warmup_rounds=1)
    lock.close()


@sync_group
def test_baseline_redispy_lock_sync(benchmark: object, server: RedisServer) -> None:
    client = redis.Redis(port=server.port)
    lock = client.lock("bench-redispy-sync", timeout=30)

    def work() -> None:
        for _ in range(N_LOCK):
            assert lock.acquire()
            lock.release()

    describe(benchmark, ops=N_LOCK)
    benchmark.pedantic(work, rounds=9, iterations=1, warmup_rounds=1)
    client.close()


@sync_group
def test_baseline_python_redis_lock(benchmark: object, server: RedisServer) -> None:
    redis_lock = require_module("redis_lock", "pip install python-redis-lock (the bench extra)")
    client = redis.Redis(port=server.port)
    lock = redis_lock.Lock(client, "bench-python-redis-lock", expire=30)

    def work() -> None:
        for _ in range(N_LOCK):
            assert lock.acquire()
            lock.release()

    describe(benchmark, ops=N_LOCK)
    benchmark.pedantic(work, rounds=9, iterations=1, warmup_rounds=1)
    client.close()


# -- fenced put --------------------------------------------------------------------------------


def _puts(store: KeyValueStore, n: int, fence: Fence | None) -> object:
    async def work() -> None:
        for i in range(n):
            await store.put(f"key:{i % 100:04d}", {"i": i}, fence=fence)

    return work


@fenced_memory_group
def test_statekit_fenced_put_memory(benchmark: object, aloop: LoopRunner) -> None:
    store = KeyValueStore(MemoryStateBackend())
    describe(benchmark, ops=N_PUT, targets={"baseline_unfenced_put_memory": 0.85})
    bench_async(benchmark, aloop, _puts(store, N_PUT, Fence("bench", 1)), rounds=20)  # type: ignore[arg-type]


@fenced_memory_group
def test_baseline_unfenced_put_memory(benchmark: object, aloop: LoopRunner) -> None:
    store = KeyValueStore(MemoryStateBackend())
    describe(benchmark, ops=N_PUT)
    bench_async(benchmark, aloop, _puts(store, N_PUT, None), rounds=20)  # type: ignore[arg-type]


@fenced_sqlite_group
def test_statekit_fenced_put_sqlite(benchmark: object, aloop: LoopRunner, tmp_path: Path) -> None:
    store = KeyValueStore(SqliteStateBackend(tmp_path / "fenced.db", durability="normal"))
    describe(benchmark, ops=N_PUT_SQLITE, targets={"baseline_unfenced_put_sqlite": 0.85})
    bench_async(benchmark, aloop, _puts(store, N_PUT_SQLITE, Fence("bench", 1)), rounds=11)  # type: ignore[arg-type]
    aloop.run(store.close())


@fenced_sqlite_group
def test_baseline_unfenced_put_sqlite(benchmark: object, aloop: LoopRunner, tmp_path: Path) -> None:
    store = KeyValueStore(SqliteStateBackend(tmp_path / "unfenced.db", durability="normal"))
    describe(benchmark, ops=N_PUT_SQLITE)
    bench_async(benchmark, aloop, _puts(store, N_PUT_SQLITE, None), rounds=11)  # type: ignore[arg-type]
    aloop.run(store.close())
