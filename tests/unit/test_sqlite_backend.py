"""SQLite-specific behaviour: persistence, several processes on one file, bad files, durability."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from statekit import create_store
from statekit.backends import SqliteStateBackend
from statekit.errors import StorageError
from tests.conftest import FakeClock


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = create_store("sqlite", path=str(path), key_prefix="job:")
    await store.put_many({f"k{i:03d}": {"i": i} for i in range(100)})
    await store.put("ttl", 1, ttl=3600)
    await store.close()
    reopened = create_store("sqlite", path=str(path), key_prefix="job:")
    assert await reopened.get("k042") == {"i": 42}
    assert len(await reopened.range_get("k")) == 100
    assert (await reopened.get_stats())["expiring_keys"] == 1
    await reopened.close()


@pytest.mark.parametrize(("durability", "synchronous"), [("full", 2), ("normal", 1)])
async def test_wal_mode_and_synchronous_level(tmp_path: Path, durability: str, synchronous: int) -> None:
    path = tmp_path / "s.db"
    backend = SqliteStateBackend(path, durability=durability)  # type: ignore[arg-type]
    assert backend._conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
    await backend.put("k", b"v")
    await backend.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_not_a_database_is_reported_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(StorageError, match="not a usable SQLite database") as info:
        SqliteStateBackend(path)
    assert info.value.path == str(path)
    assert path.read_bytes() == content


async def test_expired_rows_are_deleted_periodically(tmp_path: Path) -> None:
    clock = FakeClock()
    backend = SqliteStateBackend(tmp_path / "t.db", clock=clock, cleanup_interval=10)
    await backend.batch_put([(f"k{i}", b"v") for i in range(50)], ttl=5)
    clock.advance(11)
    await backend.put("trigger", b"v")  # a write after cleanup_interval sweeps expired rows
    rows = backend._conn.execute("SELECT count(*) FROM statekit_kv").fetchone()[0]
    assert rows == 1
    await backend.close()


async def test_event_loop_keeps_running_while_sqlite_waits_for_a_lock(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    backend = SqliteStateBackend(path, timeout=5)
    await backend.put("k", b"v")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    put_task = asyncio.create_task(backend.put("k2", b"v2"))
    while ticks < 10:  # the loop keeps scheduling the ticker while the put waits for the lock
        assert not put_task.done()
        await asyncio.sleep(0.01)
    assert not put_task.done()
    blocker.execute("COMMIT")
    blocker.close()
    await put_task
    tick_task.cancel()
    assert ticks >= 10  # the loop kept scheduling other tasks while the put waited
    assert await backend.get("k2") == b"v2"
    await backend.close()


def _increment_worker(path: str, rounds: int) -> None:
    async def run() -> None:
        store = create_store("sqlite", path=path, key_prefix="p:")
        for i in range(rounds):
            await store.incr("shared")
            await store.put(f"w{multiprocessing.current_process().pid}:{i}", i)
        await store.close()

    asyncio.run(run())


async def test_several_processes_share_one_file_without_lost_updates(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_increment_worker, args=(path, 100)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        await asyncio.to_thread(w.join, 120)
        assert w.exitcode == 0
    store = create_store("sqlite", path=path, key_prefix="p:")
    assert await store.incr("shared", 0) == 400
    assert len(await store.range_get("w")) == 400
    await store.close()


def test_unusable_directory_is_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot create the directory") as info:
        SqliteStateBackend(blocker / "sub" / "x.db")
    assert info.value.path == str(blocker / "sub" / "x.db")


class _BusyReader:
    """Stands in for the read-only connection when SQLite reports it busy."""

    def execute(self, sql: str, params: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    def close(self) -> None:
        pass


async def test_point_reads_fall_back_to_the_worker_when_the_reader_is_busy(tmp_path: Path) -> None:
    backend = SqliteStateBackend(tmp_path / "busy.db")
    await backend.put("k", b"v")
    real_reader = backend._reader
    backend._reader = _BusyReader()  # type: ignore[assignment]
    assert await backend.get("k") == b"v"
    assert await backend.get("missing") is None
    assert await backend.exists("k")
    backend._reader = real_reader
    await backend.close()


async def test_point_reads_see_every_committed_write(tmp_path: Path) -> None:
    backend = SqliteStateBackend(tmp_path / "ryw.db")
    for i in range(200):
        await backend.put("k", str(i).encode())
        assert await backend.get("k") == str(i).encode()
    await backend.batch_put([(f"b{i}", b"x") for i in range(50)])
    assert all([await backend.exists(f"b{i}") for i in range(50)])
    await backend.close()


async def test_stats_counts_off_the_event_loop_thread(tmp_path: Path) -> None:
    """While the worker thread is busy (here: its lock is held), stats() waits without blocking the loop."""
    backend = SqliteStateBackend(tmp_path / "s.db")
    try:
        await backend.batch_put([("a", b"1"), ("b", b"2")])
        backend._lock.acquire()  # as a long write on the worker thread would
        try:
            counting = asyncio.create_task(backend.stats())
            for _ in range(3):
                await asyncio.sleep(0)  # the loop runs: stats() is not holding it
            assert not counting.done()
        finally:
            backend._lock.release()
        assert (await counting).total_keys == 2
        assert backend.stats_nowait().total_keys == 2  # the last awaited figure, without I/O
    finally:
        await backend.close()
