"""RedisLock on a real redis-server and the local Redis Cluster: leases, renewal, loss, fences."""

# ruff: noqa: E402 - the imports below need redis-py, checked first by require_module

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.ci import require_module

require_module("redis", "the Redis lock tests need redis-py: pip install statekit[redis]")

import redis.asyncio as aioredis

from statekit import KeyValueStore, create_store
from statekit.backends import MemoryStateBackend, RedisConfig
from statekit.backends.redis import RedisStateBackend
from statekit.errors import ConfigError, LockExistsError, LockLost, NotInitialized, StaleFence
from statekit.locks import Fence, RedisLock
from tests.acceptance.locks.conftest import child
from tests.servers.redis_servers import RedisServer, free_port

pytestmark = pytest.mark.timeout(120)

KINDS = ["redis_url", "cluster_url"]


@pytest.fixture(params=KINDS, ids=["standalone", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    value: str = request.getfixturevalue(request.param)
    return value


def raw_client(url: str) -> aioredis.Redis | aioredis.RedisCluster:
    if url.startswith("redis+cluster://"):
        return aioredis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
    return aioredis.Redis.from_url(url)


def sync_client(url: str) -> Any:
    import redis

    if url.startswith("redis+cluster://"):
        return redis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
    return redis.Redis.from_url(url)


def server_ms(client: Any) -> int:
    """The server's clock (TIME), in ms: the clock PEXPIRETIME is on."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def wait_past_first_expiry(client: aioredis.Redis | aioredis.RedisCluster, key: str) -> int:
    """Poll until the server's clock passes the lease's current expiry (PEXPIRETIME); returns it.

    Without renewal the key would then be gone: waiting on the server's clock, not a fixed sleep.
    """
    first = int(await client.pexpiretime(key))
    assert first > 0, "the lease has no expiry"
    while True:
        seconds, micros = await client.time()
        if int(seconds) * 1000 + int(micros) // 1000 > first:
            return first
        await asyncio.sleep(0.02)


async def test_acquire_release_and_increasing_fences(url: str) -> None:
    lock = RedisLock(url, "job-42", ttl=10)
    assert (lock.held, lock.lost, lock.fence) == (False, False, None)
    tokens = []
    for _ in range(3):
        fence = await lock.acquire()
        assert isinstance(fence, Fence)
        assert fence.name == "job-42"
        assert lock.held
        assert lock.fence == fence
        tokens.append(fence.token)
        await lock.release()
        assert not lock.held
        assert lock.fence is None
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 3
    await lock.aclose()


async def test_second_holder_is_refused_then_gets_it_after_release(url: str) -> None:
    first, second = RedisLock(url, "job", ttl=10), RedisLock(url, "job", ttl=10)
    f1 = await first.acquire()
    with pytest.raises(LockExistsError):
        await second.acquire(blocking=False)
    with pytest.raises(LockExistsError):
        await second.acquire(timeout=0.2)
    waiter = asyncio.create_task(second.acquire(timeout=60))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await first.release()
    f2 = await waiter
    assert f2.token > f1.token
    assert second.held
    await second.release()
    await first.aclose()
    await second.aclose()


async def test_keys_share_one_slot_and_use_the_reserved_namespace(url: str) -> None:
    lock = RedisLock(url, "slot-check", ttl=5)
    lease_key, fence_key = lock.keys
    assert lease_key.startswith("{statekit-lock:slot-check}")
    assert fence_key.startswith("{statekit-lock:slot-check}")
    fence = await lock.acquire()
    client = raw_client(url)
    assert await client.get(lease_key) is not None
    assert int(await client.get(fence_key)) == fence.token
    await lock.release()
    assert await client.get(lease_key) is None
    assert await client.ttl(fence_key) == -1  # the fence counter never expires
    await client.aclose()
    await lock.aclose()


async def test_renewal_keeps_the_lease_past_its_ttl(url: str) -> None:
    lock = RedisLock(url, "long-job", ttl=0.5)
    other = RedisLock(url, "long-job", ttl=0.5)
    client = raw_client(url)
    await lock.acquire()
    first_expiry = await wait_past_first_expiry(client, lock.keys[0])  # only renewal keeps the key alive
    assert int(await client.pexpiretime(lock.keys[0])) > first_expiry  # renewed: the expiry moved on
    await client.aclose()
    assert lock.held
    assert not lock.lost
    await lock.ensure_held()
    with pytest.raises(LockExistsError):
        await other.acquire(blocking=False)
    await lock.release()
    await lock.aclose()
    await other.aclose()


async def test_loss_is_reported_four_ways_when_the_key_is_taken_over(url: str) -> None:
    calls: list[RedisLock] = []
    lock = RedisLock(url, "taken", ttl=10, renew_every=0.05, on_lost=calls.append)
    client = raw_client(url)
    with pytest.raises(LockLost) as at_exit:  # noqa: PT012 - raised when the block ends
        async with lock as fence:
            assert fence.token > 0
            await client.set(lock.keys[0], "someone-else")  # e.g. an operator, or an expiry + a new holder
            with pytest.raises(LockLost):
                await lock.ensure_held()
            assert lock.lost
            assert not lock.held
            await asyncio.sleep(0.2)  # the renewal task runs too: still one on_lost call
    assert "lost" in str(at_exit.value)
    assert calls == [lock]
    assert await client.get(lock.keys[0]) == b"someone-else"  # release never deletes another's key
    await client.aclose()
    await lock.aclose()


async def test_async_callback_and_body_exception_not_masked(url: str) -> None:
    event = asyncio.Event()

    async def on_lost(lock: RedisLock) -> None:
        event.set()

    lock = RedisLock(url, "masked", ttl=10, on_lost=on_lost)
    client = raw_client(url)
    with pytest.raises(ZeroDivisionError) as raised:  # noqa: PT012 - raised by the body
        async with lock:
            await client.delete(lock.keys[0])
            _ = 1 / 0
    assert any("lost" in note for note in raised.value.__notes__)
    await asyncio.wait_for(event.wait(), 30)
    assert lock.lost
    assert not lock.held
    await client.aclose()
    await lock.aclose()


async def test_release_of_an_unheld_lock(url: str) -> None:
    lock = RedisLock(url, "never", ttl=5)
    with pytest.raises(NotInitialized):
        await lock.release()
    with pytest.raises(LockLost):
        await lock.ensure_held()
    await lock.aclose()


async def test_targets_config_backend_and_store(redis_url: str) -> None:
    config = RedisConfig.from_url(redis_url, key_prefix="app:")
    backend = RedisStateBackend(config)
    store = KeyValueStore(RedisStateBackend(config))
    tokens = []
    for target in (redis_url, config, backend, store):
        lock = RedisLock(target, "shared", ttl=5)
        tokens.append((await lock.acquire()).token)
        await lock.release()
        await lock.aclose()
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 4
    with pytest.raises(ConfigError):
        RedisLock(KeyValueStore(MemoryStateBackend()), "x")
    with pytest.raises(ConfigError):
        RedisLock(redis_url, "x", ttl=1, renew_every=2)
    with pytest.raises(ConfigError):
        RedisLock(redis_url, "")
    assert "s3cret" not in repr(RedisLock("redis://:s3cret@localhost:1/0", "x"))
    await backend.close()
    await store.close()


async def test_renewal_that_cannot_reach_the_server_declares_the_loss(
    redis_server: RedisServer, redis_url: str
) -> None:
    event = asyncio.Event()
    lock = RedisLock(redis_url, "frozen-server", ttl=1.0, renew_every=0.2, on_lost=lambda _: event.set())
    await lock.acquire()
    redis_server.pause()  # the server stops answering; its TCP socket stays open
    try:
        await asyncio.wait_for(event.wait(), 60)
        assert lock.lost
        assert not lock.held
    finally:
        redis_server.resume()
    with pytest.raises(LockLost):
        await lock.release()
    await lock.aclose()


async def test_server_restart_without_persistence_mid_lease(
    redis_server: RedisServer, redis_url: str
) -> None:
    event = asyncio.Event()
    lock = RedisLock(redis_url, "restarted", ttl=5, renew_every=0.1, on_lost=lambda _: event.set())
    before = await lock.acquire()
    redis_server.restart()  # the lease key and the fence counter are gone
    await asyncio.wait_for(event.wait(), 60)
    with pytest.raises(LockLost):
        await lock.release()
    after = await lock.acquire()  # the counter is re-seeded from the server's clock
    assert after.token > before.token
    await lock.release()
    await lock.aclose()


async def test_server_restart_with_persistence_keeps_lease_and_fence_counter() -> None:
    directory = Path(tempfile.mkdtemp(prefix="statekit-lock-aof-"))
    server = RedisServer(free_port(), directory, ["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    try:
        lock = RedisLock(server.url, "durable", ttl=10, renew_every=0.1)
        first = await lock.acquire()
        await lock.release()
        second = await lock.acquire()
        assert second.token == first.token + 1
        server.stop()  # SIGKILL mid-lease
        server.start()
        await lock.ensure_held()  # the lease survived (AOF), renewal reaches the new process
        assert lock.held
        await lock.release()
        third = await lock.acquire()
        assert third.token == second.token + 1  # the persisted counter, not a re-seed
        await lock.release()
        await lock.aclose()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_paused_holder_in_process_cannot_overwrite_its_successor(url: str) -> None:
    store = KeyValueStore(MemoryStateBackend())
    lost: list[RedisLock] = []
    first = RedisLock(url, "paused", ttl=0.3, renew_every=0.1, on_lost=lost.append)
    second = RedisLock(url, "paused", ttl=10)
    f1 = await first.acquire()
    await store.put("out", "first", fence=f1)
    # A GC pause / blocked loop: blocking calls only, so no renewal runs, until the lease has
    # expired on the server (polled, not a fixed sleep).
    client = sync_client(url)
    while client.exists(first.keys[0]):
        time.sleep(0.01)  # noqa: ASYNC251 - the point: the event loop is blocked
    client.close()
    f2 = await second.acquire(timeout=30)
    await store.put("out", "second", fence=f2)
    with pytest.raises(StaleFence) as refused:
        await store.put("out", "stale", fence=f1)
    assert isinstance(refused.value, LockLost)
    assert refused.value.newer_token == f2.token
    assert await store.get("out") == "second"
    assert first.lost
    assert lost == [first]
    with pytest.raises(LockLost):
        await first.release()
    await second.release()
    await first.aclose()
    await second.aclose()


def test_two_processes_contending(redis_url: str) -> None:
    rounds = 40
    procs = [child("contend", redis_url, "contended", str(rounds), "counter") for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    tokens = [json.loads(out) for out, _ in outputs]
    for own in tokens:
        assert own == sorted(own)
        assert len(own) == rounds
    assert len(set(tokens[0]) | set(tokens[1])) == 2 * rounds  # no token handed out twice
    import redis

    assert int(redis.Redis.from_url(redis_url).get("counter")) == 2 * rounds  # no lost update


async def test_holder_sigstopped_past_its_ttl(redis_url: str, tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    proc = child("paused", redis_url, "sigstop", str(db), stdin=True)
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.startswith("ACQUIRED"), line + (proc.stderr.read() if proc.stderr else "")
        first_token = int(line.split()[1])
        proc.send_signal(signal.SIGSTOP)
        successor = RedisLock(redis_url, "sigstop", ttl=30)
        store = create_store(f"sqlite:///{db}")
        fence = await successor.acquire(timeout=60)  # granted once the frozen holder's lease expires
        assert fence.token > first_token
        await store.put("report", "successor", fence=fence)
        proc.send_signal(signal.SIGCONT)
        out, err = await asyncio.to_thread(proc.communicate, "go\n", 60)
        assert proc.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert result == {
            "write": f"StaleFence newer={fence.token}",
            "lost": True,
            "ensure_held": "LockLost",
            "release": "LockLost",
            "on_lost_calls": 1,
        }
        assert await store.get("report") == "successor"
        await successor.release()
        await successor.aclose()
        await store.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_sync_form(url: str) -> None:
    lock = RedisLock(url, "cron", ttl=0.6)
    client = sync_client(url)
    with lock.sync() as fence:
        # Until the server's clock passes the first expiry: the renewal thread keeps the lease alive.
        first_expiry = int(client.pexpiretime(lock.keys[0]))
        assert first_expiry > 0
        while server_ms(client) <= first_expiry:
            time.sleep(0.02)
        assert int(client.pexpiretime(lock.keys[0])) > first_expiry  # renewed: the expiry moved on
        other = RedisLock(url, "cron", ttl=5).sync()
        with pytest.raises(LockExistsError):
            other.acquire(blocking=False)
        other.close()
    again = RedisLock(url, "cron", ttl=5).sync()
    assert again.acquire(blocking=False).token > fence.token
    assert again.held
    again.ensure_held()
    again.release()
    assert not again.held
    with pytest.raises(NotInitialized):
        again.release()
    again.close()
    client.close()


def test_sync_form_reports_a_loss_four_ways(url: str) -> None:
    import redis

    calls: list[object] = []
    lock = RedisLock(url, "cron-lost", ttl=10, renew_every=0.05, on_lost=calls.append).sync()
    if url.startswith("redis+cluster://"):
        client: Any = redis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
    else:
        client = redis.Redis.from_url(url)
    with pytest.raises(LockLost), lock:  # noqa: PT012 - raised when the block ends
        client.set(lock._keys[0], "someone-else")
        with pytest.raises(LockLost):
            lock.ensure_held()
        assert lock.lost
        time.sleep(0.2)  # the renewal thread notices too: still one call
    assert calls == [lock]
    client.delete(lock._keys[0])
    with pytest.raises(KeyError) as raised, lock:  # noqa: PT012 - raised by the body
        client.delete(lock._keys[0])
        raise KeyError("body")
    assert any("lost" in note for note in raised.value.__notes__)
    client.close()


async def test_acquire_again_after_a_loss_without_release(redis_url: str) -> None:
    lock = RedisLock(redis_url, "again", ttl=10, renew_every=0.05)
    client = raw_client(redis_url)
    first = await lock.acquire()
    await client.delete(lock.keys[0])
    with pytest.raises(LockLost):
        await lock.ensure_held()
    second = await lock.acquire(blocking=False)
    assert second.token > first.token
    assert lock.held
    assert not lock.lost
    await asyncio.sleep(0.2)  # renewals of the new lease only
    await lock.ensure_held()
    await lock.release()
    await client.aclose()
    await lock.aclose()
