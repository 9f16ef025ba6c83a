"""``PostgresLock``: a PostgreSQL advisory lock with fencing tokens, in two modes.

**Session mode** (``PostgresLock(dsn, name)``): the lock is a session-level advisory lock
(``pg_try_advisory_lock``) held on a connection opened for this lock alone, never taken from a
pool: PostgreSQL releases a session's advisory locks when the session ends, so the connection
*is* the lease. A background task runs ``SELECT 1`` on it every ``check_every`` seconds; a
connection that fails (dropped, terminated by ``pg_terminate_backend``, a server restart) or
does not answer within ``check_timeout`` is a lost lock, and is closed so that the server
really ends the session. ``release()`` checks the boolean ``pg_advisory_unlock`` returns.

**Transaction mode** (``await PostgresLock.in_transaction(conn, name)``): for clients behind
PgBouncer in *transaction* pooling, where consecutive statements of one client may run on
different server sessions, so a session lock would be taken on one session and "released" on
another. ``pg_try_advisory_xact_lock`` is taken inside the caller's open transaction, on the
caller's connection, and PostgreSQL releases it at that transaction's ``COMMIT`` or
``ROLLBACK``; nothing runs in the background and there is no ``release()``.

Fence tokens come from one sequence, ``statekit_lock_fence`` (created on first use: the role
needs ``CREATE`` on its schema once), read with ``nextval`` in the same session right after the
lock was granted. ``nextval`` is never rolled back and a sequence only moves forward across
restarts, so tokens increase strictly for every name, across processes, holders and restarts.
The advisory key of a name is the first 8 bytes of its BLAKE2b digest (a signed bigint).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from statekit._fence import Fence
from statekit._utils.durations import to_seconds
from statekit.errors import ConfigError, LockExistsError, StorageError
from statekit.locks._lease import _POLL_MAX, _POLL_START, LeaseLock, OnLost

if TYPE_CHECKING:
    import psycopg

__all__ = ["FENCE_SEQUENCE", "PostgresLock", "advisory_key"]

FENCE_SEQUENCE: Final = "statekit_lock_fence"
DEFAULT_CHECK_EVERY: Final = 5.0
DEFAULT_CHECK_TIMEOUT: Final = 10.0
DEFAULT_CONNECT_TIMEOUT: Final = 10.0


def advisory_key(name: str) -> int:
    """The signed 64-bit advisory-lock key of a lock name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError("PostgresLock needs psycopg 3: pip install 'statekit[postgres]'") from exc
    return psycopg


class PostgresLock(LeaseLock):
    """A distributed lock on PostgreSQL (session-level advisory lock on a dedicated connection).

    Example::

        lock = PostgresLock("postgresql://app@db/app", "nightly-export")
        async with lock as fence:
            await store.put("export:last", today, fence=fence)

    Same interface as :class:`~statekit.locks.RedisLock`: ``acquire``/``release``/``ensure_held``,
    ``held``/``lost``/``fence``, ``async with``, ``sync()``, and a loss reported four ways.

    Args:
        dsn: a libpq connection string or URL. It is never logged or shown in errors.
        name: the lock's name (global to the database cluster: advisory locks are).
        on_lost: called once, with the lock, when the lease is lost.
        check_every: seconds between liveness checks of the dedicated connection.
        check_timeout: seconds a check may take before the connection counts as lost.
        connect_timeout: seconds to open the connection.

    Behind PgBouncer in transaction pooling use :meth:`in_transaction` instead.
    """

    _kind = "PostgreSQL lock"

    def __init__(
        self,
        dsn: str,
        name: str,
        on_lost: OnLost | None = None,
        *,
        check_every: float | timedelta = DEFAULT_CHECK_EVERY,
        check_timeout: float | timedelta = DEFAULT_CHECK_TIMEOUT,
        connect_timeout: float | timedelta = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        super().__init__(name, on_lost)
        if not isinstance(dsn, str) or not dsn:
            raise ConfigError("dsn must be a non-empty libpq connection string or postgresql:// URL")
        self._dsn = dsn
        self._key = advisory_key(name)
        self._check_every = to_seconds(check_every, "check_every")
        self._check_timeout = to_seconds(check_timeout, "check_timeout")
        self._connect_timeout = to_seconds(connect_timeout, "connect_timeout")
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @property
    def key(self) -> int:
        """The advisory-lock key (``pg_locks``: ``classid``/``objid`` are its high/low halves)."""
        return self._key

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the dedicated connection (None when not connected)."""
        conn = self._conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    # -- LeaseLock hooks -----------------------------------------------------------------

    async def _acquire_once(self) -> Fence | None:
        psycopg = _psycopg()
        conn = await self._connect()
        try:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
            row = await cur.fetchone()
            if row is None or row[0] is not True:
                return None
            token = await _next_fence(conn)
        except psycopg.Error as exc:
            await self._close_session()  # ends the session: no advisory lock is left behind
            raise StorageError(
                f"PostgreSQL lock {self._name!r}: acquire failed: {type(exc).__name__}: {_first_line(exc)}",
                backend_type="postgres",
            ) from None
        return Fence(self._name, token)

    async def _release_remote(self) -> None:
        psycopg = _psycopg()
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._declare_lost("its dedicated connection was closed before the release")
            return
        try:
            async with asyncio.timeout(self._check_timeout):
                cur = await conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
                row = await cur.fetchone()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._declare_lost(f"its dedicated connection failed before the release ({type(exc).__name__})")
            return
        if row is None or row[0] is not True:
            self._declare_lost("pg_advisory_unlock returned false: this session no longer held it")

    async def _verify(self) -> None:
        psycopg = _psycopg()
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._declare_lost(
                "its dedicated connection was closed (the session's advisory locks went with it)"
            )
            return
        try:
            async with asyncio.timeout(self._check_timeout):
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._declare_lost(
                f"its dedicated connection failed ({type(exc).__name__}); PostgreSQL releases a session's "
                "advisory locks when the session ends"
            )
            await self._close_session()

    async def _keep(self) -> None:
        while self._held and not self._lost:
            await asyncio.sleep(self._check_every)
            await self._verify()

    async def _close_session(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.closed:
            return
        try:
            async with asyncio.timeout(self._check_timeout):
                await conn.close()
        except (OSError, TimeoutError, _psycopg().Error):
            pass  # the socket is dropped either way; the server ends the session

    async def _close_client(self) -> None:
        await self._close_session()

    # -- internals -----------------------------------------------------------------------

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        pg = _psycopg()
        try:
            async with asyncio.timeout(self._connect_timeout + 1):
                conn: psycopg.AsyncConnection[Any] = await pg.AsyncConnection.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=max(1, round(self._connect_timeout)),
                    application_name=f"statekit-lock:{self._name}"[:63],
                    keepalives=1,
                    keepalives_idle=max(1, round(self._check_every)),
                    keepalives_interval=max(1, round(self._check_every)),
                    keepalives_count=3,
                )
        except (pg.Error, OSError, TimeoutError) as exc:
            raise StorageError(
                f"PostgreSQL lock {self._name!r}: cannot connect: {type(exc).__name__}: {_first_line(exc)}",
                backend_type="postgres",
            ) from None
        self._conn = conn
        return conn

    # -- transaction mode ----------------------------------------------------------------

    @staticmethod
    async def in_transaction(
        conn: psycopg.AsyncConnection[Any],
        name: str,
        *,
        blocking: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109 - the same contract as acquire()
    ) -> Fence:
        """Take ``name`` as a transaction-level advisory lock inside ``conn``'s open transaction.

        For clients behind PgBouncer in transaction pooling (where a session lock would end up
        on another server session). The lock is released by PostgreSQL when the transaction
        ends (``COMMIT`` or ``ROLLBACK``); there is no release call and no background task::

            async with conn.transaction():
                fence = await PostgresLock.in_transaction(conn, "nightly-export")
                ...  # the lock is held until the transaction block ends

        Args:
            conn: a psycopg 3 ``AsyncConnection`` inside a transaction.
            name: the lock's name (the same key as a session-mode ``PostgresLock`` of that name).
            blocking: wait (polling ``pg_try_advisory_xact_lock``, which never aborts the
                caller's transaction) instead of failing at once.
            timeout: with ``blocking``, give up after this many seconds.

        Returns:
            The :class:`Fence` (a ``nextval`` of the fence sequence, taken in a savepoint).

        Raises:
            ConfigError: ``conn`` is not inside a transaction.
            LockExistsError: the lock is held elsewhere (for ``timeout`` seconds when blocking).
        """
        psycopg = _psycopg()
        from psycopg import pq

        if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
            raise ConfigError(
                "PostgresLock.in_transaction needs an open transaction on conn: "
                "`async with conn.transaction(): ...` (the lock ends with that transaction)"
            )
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a lock name must be a non-empty str, got {name!r}")
        key = advisory_key(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_START
        try:
            while True:
                cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,))
                row = await cur.fetchone()
                if row is not None and row[0] is True:
                    return Fence(name, await _next_fence(conn, savepoint=True))
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    waited = "" if not blocking else f" for {timeout}s"
                    raise LockExistsError(f"PostgreSQL lock {name!r} is held by another holder{waited}")
                await asyncio.sleep(
                    delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
                )
                delay = min(delay * 2, _POLL_MAX)
        except psycopg.Error as exc:
            raise StorageError(
                f"PostgreSQL lock {name!r}: {type(exc).__name__}: {_first_line(exc)}", backend_type="postgres"
            ) from None


async def _next_fence(conn: psycopg.AsyncConnection[Any], *, savepoint: bool = False) -> int:
    """``nextval`` of the fence sequence, creating the sequence on first use.

    ``savepoint``: run inside savepoints, so a missing sequence does not abort the caller's
    transaction (transaction mode).
    """
    from psycopg import errors

    async def nextval() -> int:
        cur = await conn.execute(f"SELECT nextval('{FENCE_SEQUENCE}')")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def create() -> None:
        try:
            if savepoint:
                async with conn.transaction():
                    await conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {FENCE_SEQUENCE}")
            else:
                await conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {FENCE_SEQUENCE}")
        except (errors.UniqueViolation, errors.DuplicateTable):
            pass  # created concurrently by another first user

    if not savepoint:
        try:
            return await nextval()
        except errors.UndefinedTable:
            await create()
            return await nextval()
    try:
        async with conn.transaction():
            return await nextval()
    except errors.UndefinedTable:
        await create()
    async with conn.transaction():
        return await nextval()


def _first_line(exc: BaseException) -> str:
    """An error's first line (psycopg's connection errors never include the password)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
