"""The one transport of the Redis backend: redis-py connections, one retry policy, pipelined round trips.

Connections (TCP, TLS, unix sockets, AUTH, SELECT, RESP handshake) are redis-py's, taken from
one pool per server: a ``redis.asyncio.ConnectionPool`` on a standalone server, the
``ClusterNode`` pools of a ``redis.asyncio.RedisCluster`` in a cluster. Every operation, single
or batched, is one or more *round trips*: Rust-encoded RESP commands
(``statekit._native.encode_commands``) written at once, then their replies read.

Replies are parsed by a ``hiredis.Reader`` fed from the connection's stream, not by redis-py's
``read_response()``: that costs about 5 µs per reply, which made a 1000-command pipeline 9-12x
slower (benches/README.md, "Redis transport"). This is the only place that reaches into a
redis-py private attribute (the connection's ``_reader`` stream); without it (another redis-py
version) replies are read with the public ``read_response()``, slower but the same.

Error replies become redis-py's public exception classes, chosen by the reply's error code (its
first word, which RESP defines as the error's type), never by the message text.

The retry loop (:meth:`Transport.retry`) is the backend's one retry policy: exponential backoff
with full jitter on connection errors, timeouts and replies proving the command did not run
(``LOADING``, ``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``); never on other error replies.
A round trip knows whether its request may have left this process (:class:`NotSent` is raised
only when it cannot have), which the non-idempotent operations need to tell StorageError from
OutcomeUnknown.
"""

from __future__ import annotations

import asyncio
import random
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, Final, Protocol, TypeVar

import hiredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    ExecAbortError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from statekit.errors import NotInitialized, OutcomeUnknown, StorageError

__all__ = ["LATENCY_BUCKETS", "Endpoint", "NotSent", "Transport", "reply_error"]

T = TypeVar("T")

#: Bytes read from a connection at a time while replies are pending.
_READ_SIZE: Final = 1 << 20
#: Upper bounds (seconds) of the operation latency histogram (statekit.metrics).
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class NotSent(RedisConnectionError):
    """Nothing of the request left this process (no connection, no free slot): safe to send again."""


class NoFreeSlot(NotSent):
    """Every connection slot stayed busy for ``connect_timeout``."""


# Error codes (the first word of an error reply) -> redis-py's exception classes. MOVED and ASK
# take the rest of the reply ("<slot> <host>:<port>"), as redis-py builds them.
_ERROR_CODES: Final[dict[str, type[RedisError]]] = {
    "LOADING": BusyLoadingError,
    "MOVED": MovedError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
    "NOSCRIPT": NoScriptError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "NOPERM": NoPermissionError,
    "READONLY": ReadOnlyError,
    "EXECABORT": ExecAbortError,
}


def reply_error(message: str) -> RedisError:
    """The redis-py exception of an error reply, by its error code."""
    code, _, rest = message.partition(" ")
    cls = _ERROR_CODES.get(code, ResponseError)
    if cls is MovedError or cls is AskError:
        return cls(rest)
    return cls(message)


# Failures that prove the command was not executed, whatever it was: retried like any other.
# BusyLoadingError is a redis-py ConnectionError, MOVED & co are ResponseErrors: this tuple is
# checked before both.
NOT_RUN: Final = (NotSent, BusyLoadingError, AskError, TryAgainError, ClusterDownError)
# Failures after which the request may or may not have been applied. RedisClusterException (not
# a RedisError): "Redis Cluster cannot be connected" when no node answers.
_RETRYABLE: Final = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError, TimeoutError)

# The connection gate the current task holds, so that nested calls do not take a second slot.
_HELD_GATE: ContextVar[asyncio.Semaphore | None] = ContextVar("statekit_redis_held_gate", default=None)
# For a call that is not idempotent: [True] once the current attempt started to write its request.
_SENDING: ContextVar[list[bool] | None] = ContextVar("statekit_redis_sending", default=None)


class Endpoint(Protocol):
    """One server's connection pool, as the transport uses it."""

    name: str

    async def acquire(self) -> AbstractConnection:
        """A connected connection (redis-py connects, authenticates and selects the db)."""
        ...

    async def release(self, connection: AbstractConnection) -> None: ...


class Transport:
    """Round trips over redis-py connections, the connection gate, and the retry policy."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
        max_retries: int,
        retry_base_delay: float,
        retry_max_delay: float,
        secret: str | None,
        on_retry: Callable[[], None],
        on_error: Callable[[], None],
    ) -> None:
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self._secret = secret
        self._on_retry = on_retry
        self._on_error = on_error
        # redis-py's pools fail at once (MaxConnectionsError) when every connection is busy;
        # operations beyond max_connections wait here for a free slot instead (bounded).
        self.gate = asyncio.Semaphore(max_connections)
        self.closed = False
        self.latency_total_us = 0
        self.latency_count = 0
        #: Operations per latency bucket (not cumulative; the last one is "above every bound").
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        #: Called before each attempt (the cluster topology refreshes its slot map there).
        self.before_attempt: Callable[[], Awaitable[None]] | None = None

    # -- one round trip ------------------------------------------------------------------

    async def roundtrip(
        self, endpoint: Endpoint, payloads: Sequence[bytes], counts: Sequence[int]
    ) -> list[list[Any]]:
        """Send every payload on one connection, then read each one's ``count`` replies.

        Error replies are returned as redis-py exception objects in the reply lists (nested ones
        too, e.g. inside an EXEC result). Raises NotSent when the request cannot have been
        written, a redis-py ConnectionError/TimeoutError when it may have been.
        """
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await endpoint.acquire()
        except TimeoutError:
            raise NotSent(
                f"connecting to Redis at {endpoint.name} timed out after {self.connect_timeout}s"
            ) from None
        except (AuthenticationError, AuthorizationError):
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise NotSent(f"cannot connect to Redis at {endpoint.name}: {exc}") from None
        done = False
        try:
            flag = _SENDING.get()
            if flag is not None:
                flag[0] = True
            try:
                async with asyncio.timeout(self.write_timeout):
                    await conn.send_packed_command(list(payloads), check_health=False)
            except TimeoutError:
                raise RedisTimeoutError(
                    f"writing to Redis at {endpoint.name} timed out after {self.write_timeout}s"
                ) from None
            replies = await self._read(conn, counts, endpoint.name)
            done = True
            return replies
        finally:
            if not done:  # the connection's state is unknown: never reuse it
                await conn.disconnect(nowait=True)
            await endpoint.release(conn)

    async def _read(self, conn: AbstractConnection, counts: Sequence[int], where: str) -> list[list[Any]]:
        # redis-py keeps the connection's asyncio stream in ``_reader`` (since 4.2); reading it
        # directly is what makes long pipelines cheap (module docstring). Fallback: public API.
        stream = getattr(conn, "_reader", None)
        if not isinstance(stream, asyncio.StreamReader):
            return [[await self._read_one(conn) for _ in range(count)] for count in counts]
        parser = hiredis.Reader(replyError=reply_error)
        gets = parser.gets
        out: list[list[Any]] = []
        timeout = self.read_timeout
        for count in counts:
            replies: list[Any] = []
            while len(replies) < count:
                reply = gets()
                if reply is not False:
                    replies.append(reply)
                    continue
                try:
                    async with asyncio.timeout(timeout):  # per piece of data: progress, not total
                        data = await stream.read(_READ_SIZE)
                except TimeoutError:
                    raise RedisTimeoutError(f"no reply from Redis at {where} within {timeout}s") from None
                if not data:
                    raise RedisConnectionError(f"Redis at {where} closed the connection")
                parser.feed(data)
            out.append(replies)
        if parser.has_data():  # more than was asked for: the connection is out of step
            raise RedisConnectionError(f"unexpected extra reply data from Redis at {where}")
        return out

    async def _read_one(self, conn: AbstractConnection) -> Any:
        try:
            async with asyncio.timeout(self.read_timeout):
                return await conn.read_response(disable_decoding=True)
        except ResponseError as exc:
            return exc
        except TimeoutError:
            raise RedisTimeoutError(f"no reply from Redis within {self.read_timeout}s") from None

    # -- the retry policy ----------------------------------------------------------------

    async def retry(
        self,
        op: str,
        key: str | None,
        call: Callable[[], Awaitable[T]],
        *,
        unsafe: bool = False,
    ) -> T:
        """Run ``call`` until it succeeds, retrying what may be retried, with backoff.

        ``unsafe``: the call is not idempotent (it is protected by a request record). Retrying it
        is then safe, but when the retries run out after an attempt that may have reached the
        server, the result is OutcomeUnknown, never a guess.
        """
        if self.closed:
            raise NotInitialized("the Redis backend is closed", backend_type="redis")
        attempt = 0
        started = time.perf_counter()
        sent = [False]
        token = _SENDING.set(sent if unsafe else None)
        maybe_applied = False
        try:
            while True:
                sent[0] = False
                failure: BaseException
                final = attempt >= self.max_retries
                try:
                    result = await self._gated(call)
                except (AuthenticationError, AuthorizationError) as exc:
                    self._on_error()
                    raise self.error(op, key, f"authentication failed ({self.safe(exc)})") from None
                except NoFreeSlot as exc:
                    failure = exc
                    final = True  # waiting for a slot again would only prolong the wait
                except NOT_RUN as exc:
                    failure = exc  # not executed: safe to send again
                except ResponseError as exc:
                    self._on_error()
                    raise self.error(op, key, f"Redis replied with an error: {self.safe(exc)}") from None
                except _RETRYABLE as exc:
                    failure = exc
                    maybe_applied = maybe_applied or sent[0]
                except RedisError as exc:
                    self._on_error()
                    raise self.error(op, key, self.safe(exc)) from None
                else:
                    elapsed = time.perf_counter() - started
                    self.latency_total_us += int(elapsed * 1e6)
                    self.latency_count += 1
                    self.latency_buckets[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
                    return result
                if final:
                    self._on_error()
                    detail = f"failed after {attempt + 1} attempt(s): {self.safe(failure)}"
                    if maybe_applied:
                        where = f" key {key!r}" if key is not None else ""
                        raise OutcomeUnknown(
                            f"redis {op}{where}: {detail}; the request may or may not have been "
                            "applied (it is not safe to repeat blindly): read the key to find out",
                            backend_type="redis",
                            key=key,
                        ) from None
                    raise self.error(
                        op, key, f"{detail}; check that the server is up and reachable"
                    ) from None
                delay = min(self.retry_max_delay, self.retry_base_delay * (2**attempt))
                attempt += 1
                self._on_retry()
                await asyncio.sleep(random.uniform(0, delay))
        finally:
            _SENDING.reset(token)

    async def once(self, call: Callable[[], Awaitable[T]]) -> T:
        """One attempt of ``call`` under the connection gate, without retries."""
        if self.closed:
            raise NotInitialized("the Redis backend is closed", backend_type="redis")
        return await self._gated(call)

    async def _gated(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` holding one of the ``max_connections`` slots (once per task: re-entrant).

        Waiting for a slot is bounded by ``connect_timeout``: when every connection is stuck on
        a stalled server, later callers fail instead of queueing behind them.
        """
        if _HELD_GATE.get() is self.gate:
            return await call()
        try:
            await asyncio.wait_for(self.gate.acquire(), self.connect_timeout)
        except TimeoutError:
            raise NoFreeSlot(
                f"no free connection slot within {self.connect_timeout}s (all {self.max_connections} "
                "busy: the server is stalled or overloaded)"
            ) from None
        try:
            token = _HELD_GATE.set(self.gate)
            try:
                if self.before_attempt is not None:
                    await self.before_attempt()
                return await call()
            finally:
                _HELD_GATE.reset(token)
        finally:
            self.gate.release()

    def error(self, op: str, key: str | None, detail: str) -> StorageError:
        where = f" key {key!r}" if key is not None else ""
        return StorageError(f"redis {op}{where}: {detail}", backend_type="redis", key=key)

    def safe(self, exc: BaseException) -> str:
        """The text of ``exc`` with the password masked."""
        text = str(exc) or type(exc).__name__
        if self._secret:
            text = text.replace(self._secret, "***")
        return text


def check(reply: Any) -> Any:
    """``reply``, or raise it when it is an error reply."""
    if isinstance(reply, RedisError):
        raise reply
    return reply


def check_exec(replies: list[Any]) -> list[Any]:
    """The EXEC result of a MULTI ... EXEC reply list; raises on any error inside."""
    for reply in replies[:-1]:
        check(reply)
    result = check(replies[-1])
    if result is None:
        raise ResponseError("EXEC aborted the transaction")
    for item in result:
        check(item)
    return list(result)
