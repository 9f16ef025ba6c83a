"""PostgresLock on a real PostgreSQL (started by the postgres_server fixture)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from statekit import KeyValueStore
from statekit.backends import MemoryStateBackend
from statekit.errors import ConfigError, LockExistsError, LockLost, StaleFence, StorageError
from statekit.locks import PostgresLock
from tests.servers.pg_server import PostgresServer

pytestmark = pytest.mark.timeout(120)


async def admin(dsn: str) -> Any:
    import psycopg

    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def test_acquire_release_contention_and_fences(postgres_dsn: str) -> None:
    first, second = PostgresLock(postgres_dsn, "job-42"), PostgresLock(postgres_dsn, "job-42")
    f1 = await first.acquire()
    assert first.held
    assert first.fence == f1
    assert f1.name == "job-42"
    with pytest.raises(LockExistsError):
        await second.acquire(blocking=False)
    with pytest.raises(LockExistsError):
        await second.acquire(timeout=0.2)
    assert second.backend_pid is None  # a failed attempt leaves no connection behind
    waiter = asyncio.create_task(second.acquire(timeout=60))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await first.release()
    f2 = await waiter
    assert f2.token > f1.token
    await second.release()
    assert not second.held
    assert second.backend_pid is None


async def test_connection_killed_is_a_lost_lock(postgres_dsn: str) -> None:
    event = asyncio.Event()
    calls: list[PostgresLock] = []

    def on_lost(lock: PostgresLock) -> None:
        calls.append(lock)
        event.set()

    lock = PostgresLock(postgres_dsn, "killed", on_lost=on_lost, check_every=0.1)
    store = KeyValueStore(MemoryStateBackend())
    fence = await lock.acquire()
    await store.put("out", "first", fence=fence)
    conn = await admin(postgres_dsn)
    await conn.execute("SELECT pg_terminate_backend(%s)", (lock.backend_pid,))
    await asyncio.wait_for(event.wait(), 60)  # found by the periodic check
    assert lock.lost
    assert not lock.held
    assert calls == [lock]
    with pytest.raises(LockLost):
        await lock.ensure_held()
    successor = PostgresLock(postgres_dsn, "killed")
    newer = await successor.acquire(timeout=30)  # the server released it with the session
    await store.put("out", "successor", fence=newer)
    with pytest.raises(StaleFence):
        await store.put("out", "stale", fence=fence)
    with pytest.raises(LockLost):
        await lock.release()
    await successor.release()
    await conn.close()


async def test_killed_connection_seen_by_ensure_held_and_at_context_exit(postgres_dsn: str) -> None:
    lock = PostgresLock(postgres_dsn, "killed-2", check_every=3600)  # no periodic check in time
    conn = await admin(postgres_dsn)
    with pytest.raises(LockLost):  # noqa: PT012 - raised when the block ends
        async with lock:
            await conn.execute("SELECT pg_terminate_backend(%s)", (lock.backend_pid,))
            with pytest.raises(LockLost):
                await lock.ensure_held()
    assert lock.lost
    await conn.close()


async def test_unlock_returning_false_is_a_loss(postgres_dsn: str) -> None:
    lock = PostgresLock(postgres_dsn, "unlocked-behind-our-back", check_every=3600)
    await lock.acquire()
    assert lock._conn is not None
    await lock._conn.execute("SELECT pg_advisory_unlock(%s)", (lock.key,))  # now the server holds nothing
    with pytest.raises(LockLost, match="pg_advisory_unlock returned false"):
        await lock.release()


async def test_server_restart_loses_the_lock_and_keeps_fences_increasing(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    lock = PostgresLock(postgres_dsn, "restart", check_every=3600)
    before = await lock.acquire()
    postgres_server.stop()
    postgres_server.start()
    with pytest.raises(LockLost):
        await lock.ensure_held()
    with pytest.raises(LockLost):
        await lock.release()
    after = await lock.acquire()
    assert after.token > before.token
    await lock.release()


async def test_transaction_mode(postgres_dsn: str) -> None:
    conn = await admin(postgres_dsn)
    session_lock = PostgresLock(postgres_dsn, "xact")
    with pytest.raises(ConfigError):
        await PostgresLock.in_transaction(conn, "xact")  # autocommit: no transaction open
    async with conn.transaction():
        fence = await PostgresLock.in_transaction(conn, "xact")
        with pytest.raises(LockExistsError):
            await session_lock.acquire(blocking=False)
    taken = await session_lock.acquire(blocking=False)  # released by the COMMIT
    assert taken.token > fence.token
    with pytest.raises(LockExistsError):
        async with conn.transaction():
            await PostgresLock.in_transaction(conn, "xact", timeout=0.1)
    await session_lock.release()
    try:
        async with conn.transaction():
            again = await PostgresLock.in_transaction(conn, "xact", blocking=False)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert again.token > taken.token
    assert (await session_lock.acquire(blocking=False)).token > again.token  # released by the ROLLBACK
    await session_lock.release()
    await conn.close()


def test_sync_form(postgres_dsn: str) -> None:
    with PostgresLock(postgres_dsn, "cron").sync() as fence:
        other = PostgresLock(postgres_dsn, "cron").sync()
        with pytest.raises(LockExistsError):
            other.acquire(blocking=False)
        other.close()
    again = PostgresLock(postgres_dsn, "cron").sync()
    assert again.acquire(blocking=False).token > fence.token
    again.release()
    again.close()


async def test_unreachable_server_error_hides_the_password() -> None:
    lock = PostgresLock("postgresql://app:s3cret-pw@127.0.0.1:1/db", "x", connect_timeout=2)
    with pytest.raises(StorageError) as raised:
        await lock.acquire(blocking=False)
    assert "s3cret-pw" not in str(raised.value)
    assert "s3cret-pw" not in repr(lock)
