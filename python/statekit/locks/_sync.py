"""``SyncLock``: a distributed lock for code that is not async (cron jobs, scripts).

The wrapped lock lives on a private event loop in a daemon thread, so its renewal (Redis) or
liveness check (PostgreSQL) keeps running while the caller's own code runs; ``on_lost`` is
called on that thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from statekit._fence import Fence
from statekit.errors import NotInitialized

if TYPE_CHECKING:
    from statekit.locks._lease import LeaseLock

__all__ = ["SyncLock"]

_T = TypeVar("_T")


class SyncLock:
    """The blocking form of a :class:`PostgresLock` (made by ``lock.sync()``; ``RedisLock.sync()``
    returns the leaner :class:`SyncRedisLock`).

    Example::

        with PostgresLock("postgresql://app@db/app", "nightly-report").sync() as fence:
            build_report(fence)

    Leaving the ``with`` block releases the lock and stops the background thread; raises
    :class:`~statekit.errors.LockLost` at exit when the lease was lost during the block (never
    hiding an exception raised by the block itself).
    """

    def __init__(self, lock: LeaseLock) -> None:
        self._lock = lock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    @property
    def lock(self) -> LeaseLock:
        """The async lock this object drives."""
        return self._lock

    @property
    def held(self) -> bool:
        """See :attr:`RedisLock.held`."""
        return self._loop is not None and self._call(_state(self._lock, "held"))

    @property
    def lost(self) -> bool:
        """See :attr:`RedisLock.lost`."""
        return self._loop is not None and self._call(_state(self._lock, "lost"))

    @property
    def fence(self) -> Fence | None:
        """See :attr:`RedisLock.fence`."""
        return self._lock.fence

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> Fence:
        """Blocking form of :meth:`RedisLock.acquire`."""
        return self._call(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        """Blocking form of :meth:`RedisLock.release`."""
        if self._loop is None:
            raise NotInitialized(f"lock {self._lock.name!r} is not held; acquire() it first")
        self._call(self._lock.release())

    def ensure_held(self) -> None:
        """Blocking form of :meth:`RedisLock.ensure_held`."""
        self._call(self._lock.ensure_held())

    def close(self) -> None:
        """Release if held (ignoring a loss), close the connection and stop the thread."""
        with self._guard:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._lock.aclose(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __enter__(self) -> Fence:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._call(self._lock.__aexit__(exc_type, exc, tb))
        finally:
            self.close()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._start()
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return future.result()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._guard:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name=f"statekit-lock-{self._lock.name}", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def __repr__(self) -> str:
        return f"SyncLock({self._lock!r})"


async def _state(lock: LeaseLock, attribute: str) -> bool:
    value: bool = getattr(lock, attribute)
    return value
