"""Embedded persistent storage: 100k records (16-byte keys, 100-byte values) into and out of one file.

statekit's ``SqliteStateBackend`` with its default ``durability="full"`` (``journal_mode=WAL``,
``synchronous=FULL``) against:

* ``baseline_sqlite3``: the stdlib ``sqlite3`` module with the same settings and the same table
  (``key TEXT PRIMARY KEY, value BLOB, expires_at REAL`` ``WITHOUT ROWID`` and its partial expiry
  index): ``executemany`` of ``INSERT OR REPLACE`` in one ``BEGIN IMMEDIATE`` transaction for puts,
  one ``SELECT value ... WHERE key = ?`` per key for gets (and, as a second get baseline, the
  same chunked ``WHERE key IN (...)`` query statekit uses, to isolate statekit's own overhead).
  This is the floor: statekit's backend is this plus a worker thread and the TTL filter.
* ``baseline_diskcache``: ``diskcache.Cache`` (the usual persistent-dict library, itself on SQLite),
  with ``sqlite_synchronous=2`` (FULL, like the others); ``set`` in a loop inside one
  ``cache.transact()``, and a ``get`` loop.

Puts go into a fresh database in a fresh directory each round; creating it is not timed (it
happens in pedantic's ``setup``). Gets read every key once, in a shuffled order, from a database
filled before timing.
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache
import pytest

from _support import LoopRunner, bench_async, describe, make_key, make_values, shuffled
from statekit.backends.sqlite import SqliteStateBackend

N = 100_000
#: statekit's own single-key get goes through the worker thread per call, so it gets fewer keys.
N_SINGLE = 10_000
PUT_ROUNDS = 5
GET_ROUNDS = 5
#: diskcache stores ~17k records/s even inside one transaction (~6 s per round).
DISKCACHE_PUT_ROUNDS = 2
DISKCACHE_GET_ROUNDS = 3

KEYS = [make_key(i) for i in range(N)]
VALUES = make_values(N)
PAIRS = list(zip(KEYS, VALUES, strict=True))
READ_ORDER = shuffled(KEYS)
IN_CHUNK = 500  # the chunk statekit's batch_get uses

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiry ON kv(expires_at) WHERE expires_at IS NOT NULL;
"""
INSERT = "INSERT OR REPLACE INTO kv (key, value, expires_at) VALUES (?, ?, NULL)"
SELECT_ONE = "SELECT value FROM kv WHERE key = ?"

put_group = pytest.mark.benchmark(group="sqlite: batch put 100k, 16 B keys, 100 B values")
get_group = pytest.mark.benchmark(group="sqlite: get 100k, 16 B keys, 100 B values")


def open_sqlite3(path: Path) -> sqlite3.Connection:
    """A connection configured like statekit's durability="full"."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    return conn


def sqlite3_put(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT, PAIRS)
    conn.execute("COMMIT")


def open_diskcache(directory: Path) -> diskcache.Cache:
    return diskcache.Cache(str(directory), sqlite_synchronous=2)


def diskcache_put(cache: diskcache.Cache) -> None:
    with cache.transact():
        set_ = cache.set
        for key, value in PAIRS:
            set_(key, value)


class FreshPerRound:
    """pedantic ``setup``: closes the previous round's database, opens a new one in a new directory."""

    def __init__(self, tmp_path: Path, open_: Callable[[Path], Any], close: Callable[[Any], None]) -> None:
        self._tmp = tmp_path
        self._open = open_
        self._close = close
        self._count = itertools.count()
        self._current: tuple[Path, Any] | None = None

    def __call__(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        self.finish()
        directory = self._tmp / f"round-{next(self._count)}"
        directory.mkdir()
        handle = self._open(directory)
        self._current = (directory, handle)
        return (handle,), {}

    def finish(self) -> None:
        if self._current is not None:
            directory, handle = self._current
            self._close(handle)
            shutil.rmtree(directory)
            self._current = None


# -- put -----------------------------------------------------------------------------------


@put_group
def test_statekit_sqlite_batch_put(benchmark: Any, aloop: LoopRunner, tmp_path: Path) -> None:
    def check_and_close(backend: SqliteStateBackend) -> None:
        assert aloop.run(backend.get(KEYS[7])) == VALUES[7]
        aloop.run(backend.close())

    fresh = FreshPerRound(tmp_path, lambda d: SqliteStateBackend(d / "state.db"), check_and_close)
    describe(benchmark, ops=N, targets={"baseline_sqlite3_executemany": 0.8})
    benchmark.pedantic(
        lambda backend: aloop.run(backend.batch_put(PAIRS)), setup=fresh, rounds=PUT_ROUNDS, warmup_rounds=1
    )
    fresh.finish()


@put_group
def test_statekit_sqlite_batch_put_normal(benchmark: Any, aloop: LoopRunner, tmp_path: Path) -> None:
    fresh = FreshPerRound(
        tmp_path,
        lambda d: SqliteStateBackend(d / "state.db", durability="normal"),
        lambda backend: aloop.run(backend.close()),
    )
    describe(benchmark, ops=N, note='durability="normal" (synchronous=NORMAL)')
    benchmark.pedantic(
        lambda backend: aloop.run(backend.batch_put(PAIRS)), setup=fresh, rounds=PUT_ROUNDS, warmup_rounds=1
    )
    fresh.finish()


@put_group
def test_baseline_sqlite3_executemany(benchmark: Any, tmp_path: Path) -> None:
    def check_and_close(conn: sqlite3.Connection) -> None:
        assert conn.execute(SELECT_ONE, (KEYS[7],)).fetchone() == (VALUES[7],)
        conn.close()

    fresh = FreshPerRound(tmp_path, lambda d: open_sqlite3(d / "state.db"), check_and_close)
    describe(benchmark, ops=N, note="WAL, synchronous=FULL, one transaction")
    benchmark.pedantic(sqlite3_put, setup=fresh, rounds=PUT_ROUNDS, warmup_rounds=1)
    fresh.finish()


@put_group
def test_baseline_diskcache_transact(benchmark: Any, tmp_path: Path) -> None:
    def check_and_close(cache: diskcache.Cache) -> None:
        assert cache.get(KEYS[7]) == VALUES[7]
        cache.close()

    fresh = FreshPerRound(tmp_path, open_diskcache, check_and_close)
    describe(benchmark, ops=N, note="set() loop inside one cache.transact(), synchronous=FULL")
    benchmark.pedantic(diskcache_put, setup=fresh, rounds=DISKCACHE_PUT_ROUNDS, warmup_rounds=0)
    fresh.finish()


# -- get -----------------------------------------------------------------------------------


@get_group
def test_statekit_sqlite_batch_get(benchmark: Any, aloop: LoopRunner, tmp_path: Path) -> None:
    backend = SqliteStateBackend(tmp_path / "state.db")
    aloop.run(backend.batch_put(PAIRS))
    result: list[list[bytes | None]] = []

    async def work() -> None:
        result.append(await backend.batch_get(READ_ORDER))

    describe(benchmark, ops=N)
    bench_async(benchmark, aloop, work, rounds=GET_ROUNDS)
    assert result[-1][:3] == [VALUES[int(key[4:])] for key in READ_ORDER[:3]]
    aloop.run(backend.close())


@get_group
def test_statekit_sqlite_get_loop(benchmark: Any, aloop: LoopRunner, tmp_path: Path) -> None:
    backend = SqliteStateBackend(tmp_path / "state.db")
    aloop.run(backend.batch_put(PAIRS))
    keys = READ_ORDER[:N_SINGLE]

    async def work() -> None:
        get = backend.get
        for key in keys:
            await get(key)

    describe(benchmark, ops=N_SINGLE, note="one awaited get() per key (10k keys)")
    bench_async(benchmark, aloop, work, rounds=3)
    aloop.run(backend.close())


@get_group
def test_baseline_sqlite3_select_loop(benchmark: Any, tmp_path: Path) -> None:
    conn = open_sqlite3(tmp_path / "state.db")
    sqlite3_put(conn)

    def work() -> None:
        execute = conn.execute
        for key in READ_ORDER:
            execute(SELECT_ONE, (key,)).fetchone()

    describe(benchmark, ops=N, note="execute + fetchone per key")
    benchmark.pedantic(work, rounds=GET_ROUNDS, warmup_rounds=1)
    conn.close()


@get_group
def test_baseline_sqlite3_select_in(benchmark: Any, tmp_path: Path) -> None:
    conn = open_sqlite3(tmp_path / "state.db")
    sqlite3_put(conn)
    sql = f"SELECT key, value FROM kv WHERE key IN ({','.join('?' * IN_CHUNK)})"

    def work() -> list[bytes | None]:
        found: dict[str, bytes] = {}
        execute = conn.execute
        for i in range(0, N, IN_CHUNK):
            found.update(execute(sql, READ_ORDER[i : i + IN_CHUNK]).fetchall())
        return [found.get(key) for key in READ_ORDER]

    describe(benchmark, ops=N, note=f"WHERE key IN (...) in chunks of {IN_CHUNK}, like statekit")
    values = benchmark.pedantic(work, rounds=GET_ROUNDS, warmup_rounds=1)
    assert values[:3] == [VALUES[int(key[4:])] for key in READ_ORDER[:3]]
    conn.close()


@get_group
def test_baseline_diskcache_get_loop(benchmark: Any, tmp_path: Path) -> None:
    cache = open_diskcache(tmp_path / "cache")
    diskcache_put(cache)

    def work() -> None:
        get = cache.get
        for key in READ_ORDER:
            get(key)

    describe(benchmark, ops=N)
    benchmark.pedantic(work, rounds=DISKCACHE_GET_ROUNDS, warmup_rounds=0)
    cache.close()
