"""What every distributed lock shares: state, the four ways a loss is reported, ``async with``.

A subclass implements ``_acquire_once`` (one attempt), ``_release_remote``, ``_verify`` (prove
the lease is still ours, or declare it lost) and, when its lease runs on a clock,
``_lease_expired``; a background *keeper* task (renewal for Redis, a liveness check for
PostgreSQL) is started by ``_start_keeper``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from statekit._fence import Fence
from statekit.errors import ConfigError, LockExistsError, LockLost, NotInitialized, StateError

if TYPE_CHECKING:
    from statekit.locks._sync import SyncLock

__all__ = ["LeaseLock", "OnLost"]

logger = logging.getLogger("statekit.locks")

#: Called once with the lock when its lease is lost (may be a coroutine function).
OnLost = Callable[[Any], object]

# Polling back-off of a blocking acquire: starts small (a released lock is taken quickly),
# grows to at most this much between attempts.
_POLL_START = 0.005
_POLL_MAX = 0.25


class LeaseLock:
    """Base of :class:`~statekit.locks.RedisLock` and :class:`~statekit.locks.PostgresLock`."""

    _kind = "lock"

    def __init__(self, name: str, on_lost: OnLost | None) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a lock name must be a non-empty str, got {name!r}")
        self._name = name
        self._on_lost = on_lost
        self._fence: Fence | None = None
        self._held = False
        self._lost = False
        self._lost_reason: str | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Task[Any]] = set()

    # -- state ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._name

    @property
    def held(self) -> bool:
        """True while this object holds a lease it has not lost (checked against the clock too)."""
        if self._held and not self._lost and self._lease_expired():
            self._declare_lost("its lease ran out before a renewal reached the server")
        return self._held and not self._lost

    @property
    def lost(self) -> bool:
        """True once the current (or last) lease was lost; reset by the next acquire."""
        if self._held and not self._lost and self._lease_expired():
            self._declare_lost("its lease ran out before a renewal reached the server")
        return self._lost

    @property
    def fence(self) -> Fence | None:
        """The fence of the current lease (kept after a loss), None before acquire and after release."""
        return self._fence

    def _lease_expired(self) -> bool:
        return False

    # -- acquire / release ---------------------------------------------------------------

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> Fence:  # noqa: ASYNC109
        """Take the lock and return its :class:`Fence`.

        Args:
            blocking: wait for the lock (polling with back-off) instead of failing at once.
            timeout: with ``blocking``, give up after this many seconds (None: wait forever).

        Raises:
            LockExistsError: the lock is held by someone else (and, when blocking, stayed held
                for ``timeout`` seconds).
            StorageError: the server could not be reached.
        """
        if self._held and not self._lost:
            raise LockExistsError(
                f"{self._kind} {self._name!r} is already held by this object; release() it first",
                held=True,
            )
        if timeout is not None and (isinstance(timeout, bool) or not timeout >= 0):
            raise ConfigError(f"timeout must be None or seconds >= 0, got {timeout!r}")
        if self._held:  # a lost lease never released: drop what is left of it first
            await self._stop_keeper()
            await self._close_session()
            self._held = False
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_START
        try:
            while True:
                fence = await self._acquire_once()
                if fence is not None:
                    break
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    waited = "" if not blocking else f" for {timeout}s"
                    raise LockExistsError(f"{self._kind} {self._name!r} is held by another holder{waited}")
                pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(pause)
                delay = min(delay * 2, _POLL_MAX)
        except BaseException:
            await self._close_session()
            raise
        self._fence = fence
        self._held = True
        self._lost = False
        self._lost_reason = None
        self._start_keeper()
        return fence

    async def release(self) -> None:
        """Give the lock up.

        Raises:
            LockLost: the lease had been lost (expired, taken over, connection dropped) before
                this call; whatever the body did after the loss was not protected.
            NotInitialized: the lock is not held by this object.
        """
        if not self._held:
            raise NotInitialized(f"{self._kind} {self._name!r} is not held; acquire() it first")
        await self._stop_keeper()
        try:
            if not self.lost:
                await self._release_remote()
        finally:
            self._held = False
            self._fence = None
            await self._close_session()
        if self._lost:
            raise LockLost(
                f"{self._kind} {self._name!r} was lost before release: {self._lost_reason}", name=self._name
            )

    async def ensure_held(self) -> None:
        """Return if the lease is still ours (asking the server), else raise :class:`LockLost`."""
        if self._held and not self.lost:
            await self._verify()
        if not self._held or self._lost:
            reason = self._lost_reason or "it is not held (never acquired, or released)"
            raise LockLost(f"{self._kind} {self._name!r} is not held: {reason}", name=self._name)

    # -- context manager -----------------------------------------------------------------

    async def __aenter__(self) -> Fence:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.release()  # raises LockLost if the lease was lost during the body
            return
        # The body's exception wins; a loss (or a failed release) is attached to it as a note.
        try:
            await self.release()
        except (StateError, OSError) as err:
            exc.add_note(f"statekit: while leaving the {self._kind} block: {err}")

    def sync(self) -> SyncLock:
        """This lock for code that is not async: ``with lock.sync() as fence: ...``.

        The lock runs (and renews) on a private event loop in a background thread, so the
        lease stays alive while the caller's code runs.
        """
        from statekit.locks._sync import SyncLock

        return SyncLock(self)

    # -- loss ----------------------------------------------------------------------------

    def _declare_lost(self, reason: str) -> None:
        """Mark the lease lost and call ``on_lost`` (once per lease)."""
        if self._lost or not self._held:
            return
        self._lost = True
        self._lost_reason = reason
        logger.warning("statekit %s %r lost: %s", self._kind, self._name, reason)
        keeper = self._keeper
        if keeper is not None and keeper is not _current_task():
            keeper.cancel()
        if self._on_lost is None:
            return
        try:
            result = self._on_lost(self)
        except Exception:
            logger.exception("on_lost callback of %s %r raised", self._kind, self._name)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(_logged(result, self._kind, self._name))
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)

    # -- keeper task ---------------------------------------------------------------------

    def _start_keeper(self) -> None:
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep(), name=f"statekit-{self._kind}-{self._name}"
        )

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is None or keeper is _current_task():
            return
        keeper.cancel()
        try:
            await keeper
        except asyncio.CancelledError:
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise
        except Exception:
            logger.exception("statekit %s %r keeper failed", self._kind, self._name)

    # -- for subclasses ------------------------------------------------------------------

    async def _acquire_once(self) -> Fence | None:
        raise NotImplementedError

    async def _release_remote(self) -> None:
        raise NotImplementedError

    async def _verify(self) -> None:
        raise NotImplementedError

    async def _keep(self) -> None:
        raise NotImplementedError

    async def _close_session(self) -> None:
        """Drop per-lease resources (PostgreSQL: the dedicated connection)."""

    async def aclose(self) -> None:
        """Release if held (ignoring a loss) and close the connection."""
        if self._held:
            with contextlib.suppress(LockLost):
                await self.release()
        await self._close_client()

    async def _close_client(self) -> None:
        """Close the client (Redis: its connection pool)."""

    def __repr__(self) -> str:
        state = "lost" if self._lost else "held" if self._held else "free"
        return f"{type(self).__name__}({self._name!r}, {state}, fence={self._fence})"


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


async def _logged(result: Awaitable[Any], kind: str, name: str) -> None:
    try:
        await result
    except Exception:
        logger.exception("on_lost callback of %s %r raised", kind, name)
