"""Redis: statekit's RedisStateBackend vs redis-py, on one connection, 16-byte keys, 100-byte values.

Groups (statekit rows are compared with every baseline row of their group):

* batch put 100k: ``batch_put`` (Rust-encoded MULTI/ZADD/ZREM/MSET/EXEC chunks written on a redis-py
  connection, replies parsed by hiredis from its stream; and with ``range_index=False``: MSET
  chunks alone, the very commands of the redis-py MSET baseline) vs a
  redis-py asyncio pipeline (``transaction=False``, hiredis) of SETs, vs redis-py ``MSET`` chunks,
  vs ``redis-benchmark -P 256 -c 1`` (the server's ceiling) and 10k pre-encoded SETs in one
  ``sendall`` on a raw socket (the wire's ceiling, per 10k).
* batch get 100k: ``batch_get`` (MGET chunks) vs the pipeline of GETs and redis-py ``MGET`` chunks.
* single put / get: one awaited operation at a time vs the raw redis-py call.
* a paused server: how long a read takes to give up on a SIGSTOPped server (statekit alone; the
  test suite asserts the attempt counts, this measures the time, against the budget in its note).

A fresh standalone redis-server (no persistence) is started for the module, as in the tests.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest
from tests.ci import require_module, skip_or_fail
from tests.servers.redis_servers import RedisServer, start_standalone

from _support import LoopRunner, bench_async, describe, make_key, make_values
from statekit import _native
from statekit.backends import RedisConfig
from statekit.backends.redis import RedisStateBackend
from statekit.errors import StorageError

redis_asyncio = require_module("redis.asyncio", "pip install statekit[redis]")

N = 100_000
N_SINGLE = 2_000
N_WIRE = 10_000
CHUNK = 1000
KEYS = [make_key(i) for i in range(N)]
VALUES = make_values(N)
PAIRS = list(zip(KEYS, VALUES, strict=True))

put_group = pytest.mark.benchmark(group="redis: batch put 100k, 100 B values, one connection")
get_group = pytest.mark.benchmark(group="redis: batch get 100k, 100 B values, one connection")
single_put_group = pytest.mark.benchmark(group="redis: single awaited put")
single_get_group = pytest.mark.benchmark(group="redis: single awaited get")
paused_group = pytest.mark.benchmark(group="redis: a paused server, time to give up")
put_20k_group = pytest.mark.benchmark(group="redis: batch put 20k, 100 B values, one connection")
N_20K = 20_000
PAIRS_20K = PAIRS[:N_20K]

#: The retry policy of tests/acceptance/redis/test_redis_faults.py's paused-server test.
PAUSED_OPTIONS: dict[str, object] = {
    "max_retries": 1,
    "retry_base_delay": 0.05,
    "retry_max_delay": 0.05,
    "connect_timeout": 0.3,
    "read_timeout": 0.3,
    "write_timeout": 0.3,
}
#: (1 + max_retries) attempts x (connect + read timeout) + the backoff: reported, never asserted.
PAUSED_BUDGET = 2 * (0.3 + 0.3) + 0.05


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server not found: apt-get install redis-server redis-tools")
    s = start_standalone()
    yield s
    s.stop()


def _backend(server: RedisServer, **options: object) -> RedisStateBackend:
    config = RedisConfig.from_url(server.url, pipeline_batch_size=CHUNK, max_connections=1, **options)
    return RedisStateBackend(config)


def _redispy_pipeline_puts(
    benchmark: object, aloop: LoopRunner, server: RedisServer, pairs: list[tuple[str, bytes]], rounds: int
) -> None:
    """The peer: redis-py's pipeline of one SET per key."""
    client = redis_asyncio.Redis(port=server.port, max_connections=1)

    async def work() -> None:
        pipe = client.pipeline(transaction=False)
        for key, value in pairs:
            pipe.set(key, value)
        await pipe.execute()

    describe(benchmark, ops=len(pairs))
    bench_async(benchmark, aloop, work, rounds=rounds)
    aloop.run(client.aclose())


def _redispy_mset_puts(
    benchmark: object, aloop: LoopRunner, server: RedisServer, pairs: list[tuple[str, bytes]], rounds: int
) -> None:
    """The peer: redis-py's own MSET, in the same chunks as statekit's."""
    client = redis_asyncio.Redis(port=server.port, max_connections=1)

    async def work() -> None:
        for i in range(0, len(pairs), CHUNK):
            await client.mset(dict(pairs[i : i + CHUNK]))

    describe(benchmark, ops=len(pairs))
    bench_async(benchmark, aloop, work, rounds=rounds)
    aloop.run(client.aclose())


# -- batch put, 20k keys: the second size (index included; the same peers) ------------


@put_20k_group
def test_statekit_batch_put_20k(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    backend = _backend(server, key_prefix="k20:")
    describe(
        benchmark,
        ops=N_20K,
        targets={"baseline_redispy_pipeline_20k": 10.0, "baseline_redispy_mset_20k": 2.0},
    )
    bench_async(benchmark, aloop, lambda: backend.batch_put(PAIRS_20K), rounds=10)
    assert aloop.run(backend.batch_get([KEYS[0], KEYS[N_20K - 1]])) == [VALUES[0], VALUES[N_20K - 1]]
    aloop.run(backend.close())


@put_20k_group
def test_baseline_redispy_pipeline_20k(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    _redispy_pipeline_puts(benchmark, aloop, server, PAIRS_20K, rounds=5)


@put_20k_group
def test_baseline_redispy_mset_20k(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    _redispy_mset_puts(benchmark, aloop, server, PAIRS_20K, rounds=10)


# -- batch put ---------------------------------------------------------------------------------


@put_group
def test_statekit_batch_put(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    backend = _backend(server)
    describe(benchmark, ops=N, targets={"baseline_redispy_pipeline": 10.0, "baseline_wire_sendall": 0.4})
    bench_async(benchmark, aloop, lambda: backend.batch_put(PAIRS), rounds=5)
    assert aloop.run(backend.batch_get([KEYS[0], KEYS[-1]])) == [VALUES[0], VALUES[-1]]
    aloop.run(backend.close())


@put_group
def test_statekit_batch_put_no_index(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    """range_index=False: one MSET per chunk, the same commands as the redis-py MSET baseline."""
    backend = _backend(server, key_prefix="noidx:", range_index=False)
    describe(benchmark, ops=N, note="range_index=False: MSET chunks, no index")
    bench_async(benchmark, aloop, lambda: backend.batch_put(PAIRS), rounds=5)
    aloop.run(backend.close())


@put_group
def test_baseline_redispy_pipeline(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    _redispy_pipeline_puts(benchmark, aloop, server, PAIRS, rounds=2)


@put_group
def test_baseline_redispy_mset(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    _redispy_mset_puts(benchmark, aloop, server, PAIRS, rounds=5)


@put_group
def test_baseline_redis_benchmark(benchmark: object, server: RedisServer) -> None:
    """redis-benchmark -P 256 -c 1 SET: the server's ceiling (its own ops/s, reported as the round)."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        skip_or_fail("redis-benchmark not found")
    cmd = [exe, "-h", "127.0.0.1", "-p", str(server.port), "-t", "set", "-n", str(N), "-d", "100",
           "-r", str(N), "-P", "256", "-c", "1", "-q"]  # fmt: skip
    describe(benchmark, ops=N, note=" ".join(cmd[0:1] + cmd[5:]))
    benchmark.pedantic(lambda: subprocess.run(cmd, check=True, capture_output=True), rounds=3, iterations=1)  # type: ignore[attr-defined]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout.decode()
    assert re.search(r"SET: [\d.]+ requests per second", out), out


@put_group
def test_baseline_wire_sendall(benchmark: object, server: RedisServer) -> None:
    """10k pre-encoded SETs in one sendall on a raw socket, replies drained: the wire's ceiling."""
    payload = _native.encode_commands([["SET", k, v] for k, v in PAIRS[:N_WIRE]])
    expected = b"+OK\r\n" * N_WIRE
    sock = socket.create_connection(("127.0.0.1", server.port))

    def work() -> None:
        sock.sendall(payload)
        got = 0
        while got < len(expected):
            got += len(sock.recv(1 << 20))

    describe(benchmark, ops=N_WIRE)
    benchmark.pedantic(work, rounds=20, iterations=1, warmup_rounds=2)  # type: ignore[attr-defined]
    sock.close()


# -- batch get ---------------------------------------------------------------------------------


@get_group
def test_statekit_batch_get(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    backend = _backend(server)
    aloop.run(backend.batch_put(PAIRS))
    describe(benchmark, ops=N, targets={"baseline_redispy_pipeline_get": 5.0})
    bench_async(benchmark, aloop, lambda: backend.batch_get(KEYS), rounds=5)
    assert aloop.run(backend.batch_get(KEYS)) == VALUES
    aloop.run(backend.close())


@get_group
def test_baseline_redispy_pipeline_get(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    client = redis_asyncio.Redis(port=server.port, max_connections=1)
    aloop.run(client.mset(dict(PAIRS)))

    async def work() -> list[bytes]:
        pipe = client.pipeline(transaction=False)
        for key in KEYS:
            pipe.get(key)
        result: list[bytes] = await pipe.execute()
        return result

    describe(benchmark, ops=N)
    bench_async(benchmark, aloop, work, rounds=2)
    aloop.run(client.aclose())


@get_group
def test_baseline_redispy_mget(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    client = redis_asyncio.Redis(port=server.port, max_connections=1)
    aloop.run(client.mset(dict(PAIRS)))

    async def work() -> None:
        for i in range(0, N, CHUNK):
            await client.mget(KEYS[i : i + CHUNK])

    describe(benchmark, ops=N)
    bench_async(benchmark, aloop, work, rounds=5)
    aloop.run(client.aclose())


# -- single awaited ops --------------------------------------------------------------------------


@single_put_group
def test_statekit_put(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    backend = _backend(server)

    async def work() -> None:
        for key, value in PAIRS[:N_SINGLE]:
            await backend.put(key, value)

    describe(benchmark, ops=N_SINGLE, targets={"baseline_redispy_set": 0.87})
    bench_async(benchmark, aloop, work, rounds=5)
    aloop.run(backend.close())


@single_put_group
def test_baseline_redispy_set(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    client = redis_asyncio.Redis(port=server.port, max_connections=1)

    async def work() -> None:
        for key, value in PAIRS[:N_SINGLE]:
            await client.set(key, value)

    describe(benchmark, ops=N_SINGLE)
    bench_async(benchmark, aloop, work, rounds=5)
    aloop.run(client.aclose())


@single_get_group
def test_statekit_get(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    backend = _backend(server)
    aloop.run(backend.batch_put(PAIRS[:N_SINGLE]))

    async def work() -> None:
        for key in KEYS[:N_SINGLE]:
            await backend.get(key)

    describe(benchmark, ops=N_SINGLE, targets={"baseline_redispy_get": 0.87})
    bench_async(benchmark, aloop, work, rounds=5)
    aloop.run(backend.close())


@single_get_group
def test_baseline_redispy_get(benchmark: object, aloop: LoopRunner, server: RedisServer) -> None:
    client = redis_asyncio.Redis(port=server.port, max_connections=1)

    async def work() -> None:
        for key in KEYS[:N_SINGLE]:
            await client.get(key)

    describe(benchmark, ops=N_SINGLE)
    bench_async(benchmark, aloop, work, rounds=5)
    aloop.run(client.aclose())


# -- a paused server -----------------------------------------------------------------------------


@paused_group
@pytest.mark.parametrize("op", ["get", "batch_get"])
def test_statekit_paused_server_gives_up(
    benchmark: object, aloop: LoopRunner, server: RedisServer, op: str
) -> None:
    """One read against a SIGSTOPped server, until it raises StorageError after its retries."""
    backend = RedisStateBackend(RedisConfig.from_url(server.url, **PAUSED_OPTIONS))  # type: ignore[arg-type]
    aloop.run(backend.put("paused", b"v"))

    async def work() -> None:
        try:
            await (backend.batch_get(["paused"]) if op == "batch_get" else backend.get("paused"))
        except StorageError:
            return
        raise AssertionError("a paused server answered")

    describe(benchmark, ops=1, unit="reads", note=f"budget {PAUSED_BUDGET:.2f} s (reported, not asserted)")
    server.pause()
    try:
        bench_async(benchmark, aloop, work, rounds=3, warmup_rounds=0)
    finally:
        server.resume()
    assert aloop.run(backend.get("paused")) == b"v"
    aloop.run(backend.close())
