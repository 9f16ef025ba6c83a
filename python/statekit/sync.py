"""The same stores, not async: for scripts, notebooks and threaded workers.

Example::

    from statekit.sync import create_store

    with create_store("sqlite:///tmp/state.db", key_prefix="job:") as store:
        store.put("user:1", {"name": "Ada"}, ttl=3600)
        print(store.get("user:1"))

:func:`create_store` takes exactly what :func:`statekit.create_store` takes and returns a
:class:`SyncStore`, whose methods are those of :class:`statekit.KeyValueStore` without ``await``;
they raise the same errors (:mod:`statekit.errors`).

How it works: one background thread per process ("statekit-sync-loop") runs one asyncio event
loop; every store made here lives on that loop, and each call is handed to it
(``asyncio.run_coroutine_threadsafe``) while the calling thread waits for the result. So:

* any number of threads may share one ``SyncStore`` (calls from many threads run concurrently on
  the loop, as concurrent tasks would; the backends are safe under concurrent tasks);
* it works where an event loop is already running in the calling thread (Jupyter), since the
  work happens on the other thread;
* calling a ``SyncStore`` from code running *on* the background loop (e.g. inside the function
  given to :meth:`SyncStore.update`) would wait for itself: it raises RuntimeError instead;
* Ctrl-C while waiting cancels the operation on the loop and raises KeyboardInterrupt;
* at interpreter exit (``atexit``) every store still open is closed and the loop stopped (join
  your worker threads first: once the main thread has returned, Python shuts its thread pools
  down, and the SQLite backend runs its I/O in one, so a write still in flight then fails); after
  ``os.fork()`` the child starts a loop of its own on first use (stores made before the fork
  belong to the parent: make new ones in the child).

An async method added to ``KeyValueStore`` later is also reachable here (looked up by name and run
on the loop), so the two APIs cannot drift apart.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from statekit import _factory
from statekit._fence import Fence
from statekit.backends.base import StateBackend
from statekit.serializers import Serializer
from statekit.store import TTL, KeyValueStore, StoreStats

__all__ = ["SyncStore", "create_store", "run"]

T = TypeVar("T")

#: How long the exit handler waits for open stores to close.
_CLOSE_TIMEOUT = 10.0


class _LoopThread:
    """One event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stores: weakref.WeakSet[SyncStore] = weakref.WeakSet()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._main, args=(ready,), name="statekit-sync-loop", daemon=True
        )
        self.thread.start()
        ready.wait()

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                "a statekit.sync store was called from its own event loop (e.g. inside update()'s "
                "function, or from async code given to it): that would wait for itself forever; use "
                "the async store (SyncStore.async_store) there"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C while waiting: do not leave the operation running
            raise

    def shutdown(self) -> None:
        async def close_all() -> None:
            stores = [store._store for store in list(self.stores)]
            await asyncio.gather(*(store.close() for store in stores), return_exceptions=True)

        if self.loop.is_running() and self.thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(close_all(), self.loop)
            # Interpreter exit: a store that fails to close has nobody left to report to.
            with contextlib.suppress(Exception):
                future.result(timeout=_CLOSE_TIMEOUT)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=_CLOSE_TIMEOUT)
        if not self.loop.is_running():
            self.loop.close()


_lock = threading.Lock()
_runner: _LoopThread | None = None


def _loop_thread() -> _LoopThread:
    global _runner
    with _lock:
        if _runner is None:
            _runner = _LoopThread()
        return _runner


def _forget_after_fork() -> None:
    # The child has no loop thread (threads do not survive fork); it makes its own on first use.
    global _runner, _lock
    _runner = None
    _lock = threading.Lock()


@atexit.register
def _shutdown() -> None:
    global _runner
    with _lock:
        runner, _runner = _runner, None
    if runner is not None:
        runner.shutdown()


os.register_at_fork(after_in_child=_forget_after_fork)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the shared background loop and return its result (from any thread).

    For async statekit objects this module has no sync wrapper for, e.g.
    ``run(coordinator.create_checkpoint())`` for a coordinator over ``store.async_store``.
    """
    return _loop_thread().run(coro)


class SyncStore:
    """A :class:`statekit.KeyValueStore` with blocking methods. Made by :func:`create_store`.

    Every method waits for the async store's method of the same name and returns its result or
    raises its error. Usable as a context manager (``with create_store(...) as store:``).
    """

    def __init__(self, store: KeyValueStore) -> None:
        """Wrap ``store``, which must have been made on the background loop (see :meth:`wrap`)."""
        self._store = store
        self._runner = _loop_thread()
        self._runner.stores.add(self)

    @classmethod
    def wrap(cls, make: Callable[[], KeyValueStore]) -> SyncStore:
        """A SyncStore over the store ``make()`` returns, called on the background loop.

        For a store built by hand, e.g. ``SyncStore.wrap(lambda: KeyValueStore(MyBackend()))``:
        backends that bind to the running loop when made then bind to the right one.
        """

        async def build() -> KeyValueStore:
            return make()

        return cls(run(build()))

    def __repr__(self) -> str:
        return f"Sync{self._store!r}"

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def __getattr__(self, name: str) -> Any:
        # Async methods of KeyValueStore that have no explicit wrapper below (added later).
        if name.startswith("_"):
            raise AttributeError(name)
        attribute = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        @functools.wraps(attribute)
        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._call(attribute(*args, **kwargs))

        return blocking

    # -- properties -------------------------------------------------------------------------

    @property
    def async_store(self) -> KeyValueStore:
        """The async store underneath (it lives on the background loop: await it only there)."""
        return self._store

    @property
    def backend(self) -> StateBackend:
        """The backend the store writes to."""
        return self._store.backend

    @property
    def key_prefix(self) -> str:
        """Prefix prepended to every key in the backend."""
        return self._store.key_prefix

    @property
    def serializer(self) -> Serializer:
        """The codec turning values into bytes."""
        return self._store.serializer

    @property
    def default_ttl(self) -> float | None:
        """TTL in seconds applied when a write gives none."""
        return self._store.default_ttl

    # -- the store's methods, blocking ------------------------------------------------------

    def put(self, key: str, value: Any, ttl: TTL | None = None, *, fence: Fence | None = None) -> None:
        """Store ``value`` under ``key`` (see :meth:`KeyValueStore.put`, also for ``fence``)."""
        self._call(self._store.put(key, value, ttl, fence=fence))

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key`` or ``default`` (see :meth:`KeyValueStore.get`)."""
        return self._call(self._store.get(key, default))

    def delete(self, key: str, *, fence: Fence | None = None) -> bool:
        """Remove ``key``; True when it existed."""
        return self._call(self._store.delete(key, fence=fence))

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a live value."""
        return self._call(self._store.exists(key))

    def get_counter(self, key: str) -> int | None:
        """The value of the counter ``key``, or None."""
        return self._call(self._store.get_counter(key))

    def set_if_absent(self, key: str, value: Any, ttl: TTL | None = None) -> bool:
        """Store ``value`` only if ``key`` holds nothing live; True when stored."""
        return self._call(self._store.set_if_absent(key, value, ttl))

    def update(
        self, key: str, fn: Callable[[Any], Any], ttl: TTL | None = None, *, fence: Fence | None = None
    ) -> Any:
        """Atomically replace ``key``'s value by ``fn(current)`` (see :meth:`KeyValueStore.update`).

        ``fn`` runs on the background loop's thread: it must not call this store.
        """
        return self._call(self._store.update(key, fn, ttl, fence=fence))

    def pop(self, key: str, default: Any = None) -> Any:
        """Atomically remove ``key`` and return its value (``default`` when missing)."""
        return self._call(self._store.pop(key, default))

    def incr(self, key: str, amount: int = 1, ttl: TTL | None = None) -> int:
        """Atomically add ``amount`` to the counter ``key``; the new value."""
        return self._call(self._store.incr(key, amount, ttl))

    def range_get(
        self, start_key: str, end_key: str | None = None, limit: int | None = None
    ) -> list[tuple[str, Any]]:
        """Sorted ``(key, value)`` pairs (see :meth:`KeyValueStore.range_get`)."""
        return self._call(self._store.range_get(start_key, end_key, limit))

    def keys(self, prefix: str = "") -> list[str]:
        """Every live key starting with ``prefix``, sorted."""
        return self._call(self._store.keys(prefix))

    def iter_keys(
        self, prefix: str = "", limit: int | None = None, *, page_size: int = 1000
    ) -> Iterator[str]:
        """Every live key starting with ``prefix``, sorted, read a page at a time (see
        :meth:`KeyValueStore.iter_keys`); one call to the background loop per page."""
        return self._iterate(self._store.iter_keys(prefix, limit, page_size=page_size), page_size)

    def iter_range(
        self, start_key: str, end_key: str | None = None, limit: int | None = None, *, page_size: int = 1000
    ) -> Iterator[tuple[str, Any]]:
        """The pairs of :meth:`range_get`, read a page at a time (see :meth:`KeyValueStore.iter_range`)."""
        return self._iterate(
            self._store.iter_range(start_key, end_key, limit, page_size=page_size), page_size
        )

    def _iterate(self, pages: AsyncIterator[T], page_size: int) -> Iterator[T]:
        async def next_page() -> list[T]:
            out: list[T] = []
            async for item in pages:
                out.append(item)
                if len(out) >= page_size:
                    break
            return out

        async def close() -> None:
            await pages.aclose()  # type: ignore[attr-defined]

        try:
            while page := self._call(next_page()):
                yield from page
                if len(page) < page_size:
                    return
        finally:
            self._call(close())

    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires, None when it never does; KeyNotFound when missing."""
        return self._call(self._store.ttl(key))

    def expire(self, key: str, ttl: TTL) -> bool:
        """Make ``key`` expire ``ttl`` from now; True when it exists."""
        return self._call(self._store.expire(key, ttl))

    def persist(self, key: str) -> bool:
        """Remove ``key``'s expiry; True when it had one."""
        return self._call(self._store.persist(key))

    def touch(self, key: str, ttl: TTL | None = None) -> bool:
        """Restart ``key``'s TTL (``ttl``, else the default TTL); True when the key exists."""
        return self._call(self._store.touch(key, ttl))

    def clear(self) -> int:
        """Delete every key under the store's ``key_prefix``; how many live keys went."""
        return self._call(self._store.clear())

    def put_many(
        self,
        items: Mapping[str, Any] | Iterable[tuple[str, Any]],
        ttl: TTL | None = None,
        *,
        fence: Fence | None = None,
    ) -> None:
        """Store many values in one backend batch."""
        self._call(self._store.put_many(items, ttl, fence=fence))

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        """Values aligned with ``keys``; None where missing."""
        return self._call(self._store.get_many(keys))

    def delete_many(self, keys: Sequence[str], *, fence: Fence | None = None) -> int:
        """Remove every key; how many existed."""
        return self._call(self._store.delete_many(keys, fence=fence))

    def health_check(self) -> bool:
        """True when the backend can serve requests. Never raises."""
        return self._call(self._store.health_check())

    def get_stats(self) -> StoreStats:
        """Key counts, settings and backend counters (refreshed, as ``await store.get_stats()``)."""

        async def stats() -> StoreStats:
            return await self._store.get_stats()

        return self._call(stats())

    def close(self) -> None:
        """Close the store. Further operations raise NotInitialized; closing twice is harmless."""
        self._call(self._store.close())
        self._runner.stores.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def create_store(store_type: str = "memory", **options: Any) -> SyncStore:
    """A blocking store: same arguments, URLs, options and errors as :func:`statekit.create_store`."""

    async def build() -> KeyValueStore:
        return _factory.create_store(store_type, **options)

    return SyncStore(run(build()))
