"""CachedStateBackend: a cached single-key get vs the same get on the uncached backend, same run.

Groups (2,000 awaited single-key ``get`` calls per round, every key present, 100-byte values):

* sqlite: ``CachedStateBackend(SqliteStateBackend)`` with a warm cache (every key cached) vs the
  plain ``SqliteStateBackend`` (one worker-thread hop and one SELECT per get);
* redis: ``CachedStateBackend(RedisStateBackend)``, warm, vs the plain ``RedisStateBackend`` (one
  round trip per get) on a fresh local redis-server.

The cached rows measure the hit path (an LRU lookup and an expiry check); a miss costs the
backend's get plus one ``export_items(key)`` read to learn the key's expiry.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.ci import skip_or_fail
from tests.servers.redis_servers import RedisServer, start_standalone

from _support import LoopRunner, bench_async, describe, make_key, make_values, shuffled
from statekit.backends import CachedStateBackend, RedisConfig, SqliteStateBackend, StateBackend

N = 2_000
KEYS = [make_key(i) for i in range(N)]
VALUES = make_values(N)
PAIRS = list(zip(KEYS, VALUES, strict=True))
READ_ORDER = shuffled(KEYS)
EXPECTED = dict(PAIRS)

sqlite_group = pytest.mark.benchmark(group="cached: single awaited get, sqlite behind")
redis_group = pytest.mark.benchmark(group="cached: single awaited get, redis behind")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server not found: apt-get install redis-server redis-tools")
    s = start_standalone()
    yield s
    s.stop()


def _redis(server: RedisServer) -> StateBackend:
    from statekit.backends.redis import RedisStateBackend

    return RedisStateBackend(RedisConfig.from_url(server.url, max_connections=1))


async def _get_all(backend: StateBackend) -> int:
    found = 0
    for key in READ_ORDER:
        if await backend.get(key) is not None:
            found += 1
    return found


def _run(benchmark: object, aloop: LoopRunner, backend: StateBackend, *, warm: bool, rounds: int) -> None:
    aloop.run(backend.batch_put(PAIRS))
    if warm:
        aloop.run(_get_all(backend))  # fills the cache
    describe(benchmark, ops=N)
    bench_async(benchmark, aloop, lambda: _get_all(backend), rounds=rounds)
    assert aloop.run(_get_all(backend)) == N
    assert aloop.run(backend.get(KEYS[7])) == EXPECTED[KEYS[7]]
    if isinstance(backend, CachedStateBackend):
        assert backend.cache_info()["entries"] == N
    aloop.run(backend.close())


@sqlite_group
def test_statekit_cached_sqlite_get(benchmark: object, aloop: LoopRunner, tmp_path: Path) -> None:
    backend = CachedStateBackend(SqliteStateBackend(tmp_path / "s.db"), max_entries=N)
    describe(benchmark, ops=N, targets={"baseline_uncached_sqlite_get": 5.0})
    _run(benchmark, aloop, backend, warm=True, rounds=20)


@sqlite_group
def test_baseline_uncached_sqlite_get(benchmark: object, aloop: LoopRunner, tmp_path: Path) -> None:
    _run(benchmark, aloop, SqliteStateBackend(tmp_path / "s.db"), warm=False, rounds=5)


@redis_group
def test_statekit_cached_redis_get(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    server.flushall()
    backend = CachedStateBackend(_redis(server), max_entries=N)
    describe(benchmark, ops=N, targets={"baseline_uncached_redis_get": 5.0})
    _run(benchmark, aloop, backend, warm=True, rounds=20)


@redis_group
def test_baseline_uncached_redis_get(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    server.flushall()
    _run(benchmark, aloop, _redis(server), warm=False, rounds=5)
