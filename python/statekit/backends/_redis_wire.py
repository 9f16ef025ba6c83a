"""A minimal pipelined RESP connection for the Redis backend's batches.

redis-py parses every reply in Python (about 20 µs per command in a pipeline), which caps a
batch far below what the server and the wire can do. Batches instead go through this class:
commands are encoded to RESP by the Rust core in one call (``statekit._native.encode_commands``),
written to the socket at once, and the replies are parsed by ``hiredis.Reader`` straight from
``data_received`` until the expected number has arrived.

Only what the batches need: AUTH/SELECT on connect, TLS, and connect/read/write timeouts. Error
replies come back as ``hiredis.ReplyError`` objects in the reply list; connection-level failures
raise :class:`WireError` (retryable), or its subclass :class:`WireNotSent` when they prove that
nothing of the request left this process (the connection could not be opened, the pool had no
free connection in time): only then may a request that is not idempotent be re-sent blindly.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

import hiredis

__all__ = ["AuthError", "WireConnection", "WireError", "WireNotSent", "WirePool"]


class WireError(ConnectionError):
    """The connection failed, closed or timed out; the request may or may not have been applied."""


class WireNotSent(WireError):
    """The request was never written: no connection could be opened or taken from the pool."""


class _RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = hiredis.Reader()
        self.replies: list[Any] = []
        self.wanted = 0
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.bytes_in = 0
        self._drain: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.parser.feed(data)
        if self.waiter is not None:
            self._collect()

    def _collect(self) -> None:
        replies, gets, wanted = self.replies, self.parser.gets, self.wanted
        while len(replies) < wanted:
            reply = gets()
            if reply is False:
                return
            replies.append(reply)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or WireError("the Redis server closed the connection")
        for fut in (self.waiter, self._drain):
            if fut is not None and not fut.done():
                fut.set_exception(WireError(f"connection to Redis lost: {self.lost}"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        if not self._paused:
            return
        self._drain = asyncio.get_running_loop().create_future()
        await self._drain


class WireConnection:
    """One pipelined connection. Not shared between concurrent tasks (the pool hands it out)."""

    def __init__(
        self, transport: asyncio.Transport, protocol: _RespProtocol, read_timeout: float, write_timeout: float
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.bytes_out = 0

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        username: str | None,
        password: str | None,
        db: int,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
    ) -> WireConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                transport, protocol = await loop.create_connection(
                    _RespProtocol, host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
                )
        except TimeoutError:
            raise WireNotSent(
                f"connecting to Redis at {host}:{port} timed out after {connect_timeout}s"
            ) from None
        except OSError as exc:
            raise WireNotSent(f"cannot connect to Redis at {host}:{port}: {exc.strerror or exc}") from None
        assert isinstance(transport, asyncio.Transport)
        conn = cls(transport, protocol, read_timeout, write_timeout)
        hello: list[list[bytes | str | int]] = []
        if password is not None:
            hello.append(["AUTH", username, password] if username else ["AUTH", password])
        if db:
            hello.append(["SELECT", db])
        if hello:
            from statekit._native import encode_commands

            try:
                replies = await conn.roundtrip(encode_commands(hello), len(hello))
            except WireError as exc:  # only AUTH/SELECT were sent, never the caller's request
                conn.close()
                raise WireNotSent(
                    f"setting up the connection to Redis at {host}:{port} failed: {exc}"
                ) from None
            except BaseException:
                conn.close()
                raise
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    conn.close()
                    raise AuthError(str(reply))
        return conn

    @property
    def closed(self) -> bool:
        return self._protocol.lost is not None or self._transport.is_closing()

    @property
    def bytes_in(self) -> int:
        return self._protocol.bytes_in

    async def send(self, payload: bytes) -> None:
        """Write ``payload``; waits (up to the write timeout) while the transport buffer is full."""
        if self._protocol.lost is not None:  # noticed before writing: nothing of it was sent
            raise WireNotSent(f"connection to Redis lost: {self._protocol.lost}")
        self._transport.write(payload)
        self.bytes_out += len(payload)
        try:
            async with asyncio.timeout(self.write_timeout):
                await self._protocol.drain()
        except TimeoutError:
            self.close()
            raise WireError(f"writing to Redis timed out after {self.write_timeout}s") from None

    async def receive(self, count: int) -> list[Any]:
        """The next ``count`` replies. Waits at most the read timeout for each piece of data."""
        proto = self._protocol
        proto.replies = []
        proto.wanted = count
        try:
            while True:
                if proto.lost is not None:
                    proto._collect()
                    if len(proto.replies) < count:
                        raise WireError(f"connection to Redis lost: {proto.lost}")
                proto.waiter = asyncio.get_running_loop().create_future()
                proto._collect()
                if len(proto.replies) >= count:
                    break
                before = proto.bytes_in
                try:
                    async with asyncio.timeout(self.read_timeout):
                        await proto.waiter
                    break
                except TimeoutError:
                    if proto.bytes_in == before:  # no progress at all within the read timeout
                        self.close()
                        raise WireError(f"no reply from Redis within {self.read_timeout}s") from None
        except hiredis.ProtocolError as exc:
            self.close()
            raise WireError(f"invalid reply from Redis: {exc}") from None
        finally:
            proto.waiter = None
        replies = proto.replies
        proto.replies = []
        return replies

    async def roundtrip(self, payload: bytes, count: int) -> list[Any]:
        await self.send(payload)
        return await self.receive(count)

    def close(self) -> None:
        self._transport.close()


class AuthError(WireNotSent):
    """AUTH or SELECT was refused (wrong password, unknown user, bad db): not retryable."""


class WirePool:
    """A small pool of :class:`WireConnection` to one server."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        username: str | None,
        password: str | None,
        db: int,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
        max_connections: int,
    ) -> None:
        self.host = host
        self.port = port
        self._options: dict[str, Any] = {
            "ssl_context": ssl_context,
            "username": username,
            "password": password,
            "db": db,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "write_timeout": write_timeout,
        }
        self._idle: list[WireConnection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._slot_timeout = connect_timeout
        self.bytes_read = 0
        self.bytes_written = 0
        self.in_use = 0

    async def acquire(self) -> WireConnection:
        # Waiting for a free connection is bounded like connecting is: a stalled server must not
        # hold every later caller forever.
        try:
            await asyncio.wait_for(self._slots.acquire(), self._slot_timeout)
        except TimeoutError:
            raise WireNotSent(
                f"no free connection to Redis at {self.host}:{self.port} within {self._slot_timeout}s"
            ) from None
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    self.in_use += 1
                    return conn
            conn = await WireConnection.open(self.host, self.port, **self._options)
        except BaseException:
            self._slots.release()
            raise
        self.in_use += 1
        return conn

    def release(self, conn: WireConnection, *, broken: bool = False) -> None:
        self.in_use -= 1
        self.bytes_read += conn.bytes_in
        self.bytes_written += conn.bytes_out
        conn.bytes_out = 0
        conn._protocol.bytes_in = 0
        if broken or conn.closed:
            conn.close()
        else:
            self._idle.append(conn)
        self._slots.release()

    @property
    def connections(self) -> int:
        return self.in_use + len(self._idle)

    async def pipeline(self, payloads: Sequence[bytes], counts: Sequence[int]) -> list[list[Any]]:
        """Send every payload, then collect each one's replies: one round trip for all of them."""
        conn = await self.acquire()
        broken = True
        try:
            for payload in payloads:
                await conn.send(payload)
            out = [await conn.receive(count) for count in counts]
            broken = False
            return out
        finally:
            self.release(conn, broken=broken)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
