"""``KeyValueStore``: Python values over any :class:`~statekit.backends.StateBackend`.

The store owns everything that is the same for every backend: the codec (values to bytes),
the key prefix that isolates stores sharing one database, the default TTL, and key
validation. Backends only see prefixed ``str`` keys and ``bytes`` values.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from contextlib import aclosing
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from statekit._fence import Fence
from statekit.backends.base import (
    BackendStats,
    StateBackend,
    check_amount,
    check_bound,
    check_limit,
    check_ttl,
    parse_counter,
    prefix_upper_bound,
)
from statekit.errors import ConfigError, InvalidKey, KeyNotFound
from statekit.serializers import JsonSerializer, PickleSerializer, Serializer, make_serializer

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

__all__ = ["TTL", "KeyValueStore", "StoreStats", "ttl_seconds"]

logger = logging.getLogger("statekit")

#: How many keys one page of ``iter_keys``/``iter_range`` reads from the backend.
DEFAULT_PAGE_SIZE = 1000

#: A time-to-live: seconds (int or float), a timedelta, or a duration string ("90s", "2h", "1h30m").
TTL = float | int | timedelta | str


def ttl_seconds(ttl: TTL | None, *, name: str = "ttl") -> float | None:
    """Normalise a TTL to positive seconds, at most 100 years (None stays None)."""
    return check_ttl(ttl, name=name)


class StoreStats(dict[str, Any]):
    """The dict returned by :meth:`KeyValueStore.get_stats`.

    It can be used as is (``stats["total_keys"]``) or awaited (``await store.get_stats()``),
    so code written for either style works with every backend. Used as is it holds the backend's
    ``stats_nowait()`` (no I/O: key counts are live on the memory backend, those of the last
    awaited call on SQLite and Redis); awaiting it runs the backend's async ``stats(prefix)``,
    which counts the keys (SQLite off the event-loop thread; Redis on the server, with
    ``redis_version`` and ``used_memory_human``).
    """

    refresh: Callable[[], Awaitable[BackendStats]] | None = None

    def __await__(self) -> Generator[Any, None, StoreStats]:
        async def resolved() -> StoreStats:
            if self.refresh is not None:
                self.update((await self.refresh()).as_dict())
            return self

        return resolved().__await__()


class KeyValueStore:
    """An async key-value store of Python values.

    Usually made by :func:`statekit.create_store`. Keys are non-empty ``str``; values are
    anything the serializer encodes (JSON by default).

    Example::

        store = create_store("sqlite:///tmp/state.db", key_prefix="job:")
        await store.put("user:1", {"name": "Ada"}, ttl=3600)
        assert await store.get("user:1") == {"name": "Ada"}
        await store.close()
    """

    def __init__(
        self,
        backend: StateBackend,
        *,
        serializer: str | Serializer = "json",
        key_prefix: str = "",
        default_ttl: TTL | None = None,
        signing_key: bytes | str | None = None,
        allow_unsigned_pickle: bool = False,
    ) -> None:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        check_bound(key_prefix, "key_prefix")  # no lone surrogates: every key would be unstorable
        self._backend = backend
        if isinstance(serializer, str):
            self._codec = make_serializer(serializer, signing_key=signing_key)
        elif callable(getattr(serializer, "encode", None)) and callable(getattr(serializer, "decode", None)):
            self._codec = serializer
        else:
            raise ConfigError(
                f"serializer must be 'json', 'msgpack', 'pickle' or an object with encode/decode, "
                f"got {serializer!r}"
            )
        self._prefix = key_prefix
        self._default_ttl = ttl_seconds(default_ttl, name="default_ttl")
        if isinstance(self._codec, PickleSerializer) and not self._codec.signed and backend.persistent:
            # Anyone who can write a row or a Redis key could run code in every reader.
            if not allow_unsigned_pickle:
                raise ConfigError(
                    f"serializer='pickle' on the {backend.backend_type} backend needs signing_key=... "
                    "(unpickling runs code chosen by whoever wrote the bytes, and this backend is "
                    "persistent or shared); pass allow_unsigned_pickle=True to accept that risk, or use "
                    "serializer='json' or 'msgpack'"
                )
            logger.warning(
                "statekit store on the %s backend uses unsigned pickle (allow_unsigned_pickle=True): "
                "anyone who can write to it can run code in every reader",
                backend.backend_type,
            )

    def __repr__(self) -> str:
        return (
            f"KeyValueStore(backend={self._backend.backend_type!r}, serializer={self._codec.name!r}, "
            f"key_prefix={self._prefix!r}, default_ttl={self._default_ttl!r})"
        )

    @property
    def backend(self) -> StateBackend:
        """The backend this store writes to."""
        return self._backend

    @property
    def key_prefix(self) -> str:
        """Prefix prepended to every key in the backend."""
        return self._prefix

    @property
    def serializer(self) -> Serializer:
        """The codec turning values into bytes."""
        return self._codec

    @property
    def default_ttl(self) -> float | None:
        """TTL in seconds applied when a write gives none (None: keys never expire)."""
        return self._default_ttl

    # -- single keys ---------------------------------------------------------------------

    async def put(self, key: str, value: Any, ttl: TTL | None = None, *, fence: Fence | None = None) -> None:
        """Store ``value`` under ``key``. ``ttl`` (seconds or timedelta) overrides the default TTL.

        ``fence``: the :class:`~statekit.locks.Fence` of a lock this writer holds. The write is
        then refused with :class:`~statekit.errors.StaleFence` (nothing written) when a newer
        token of the same lock name has already written ``key``. Memory and SQLite backends.

        Raises SerializationFailed (nothing written) when the serializer cannot encode ``value``.
        """
        full_key = self._full_key(key)
        data = self._codec.encode(value, key=full_key)
        if fence is None:
            await self._backend.put(full_key, data, self._ttl(ttl))
            return
        fenced_put: Any = getattr(self._backend, "fenced_put", None)
        if fenced_put is None:
            fenced_put = self._fenced("put").fenced_put  # raises ConfigError
        await fenced_put(fence, full_key, data, self._ttl(ttl))

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` when it is missing or expired."""
        full_key = self._full_key(key)
        data = await self._backend.get(full_key)
        if data is None:
            return default
        return self._codec.decode(data, key=full_key)

    async def delete(self, key: str, *, fence: Fence | None = None) -> bool:
        """Remove ``key``; True when it existed. ``fence``: as in :meth:`put`."""
        if fence is None:
            return await self._backend.delete(self._full_key(key))
        removed: int = await self._fenced("delete").fenced_batch_delete(fence, [self._full_key(key)])
        return removed == 1

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds a live (unexpired) value."""
        return await self._backend.exists(self._full_key(key))

    async def get_counter(self, key: str) -> int | None:
        """The value of the ``incr`` counter ``key``, or None when missing; a pure read (no write)."""
        raw = await self._backend.get(self._full_key(key))
        return None if raw is None else parse_counter(raw, key, self._backend.backend_type)

    async def set_if_absent(self, key: str, value: Any, ttl: TTL | None = None) -> bool:
        """Store ``value`` only if ``key`` holds nothing live; True when it was stored. Atomic."""
        full_key = self._full_key(key)
        data = self._codec.encode(value, key=full_key)
        return await self._backend.set_if_not_exists(full_key, data, self._ttl(ttl))

    async def update(
        self, key: str, fn: Callable[[Any], Any], ttl: TTL | None = None, *, fence: Fence | None = None
    ) -> Any:
        """Atomically replace ``key``'s value by ``fn(current)`` and return the new value.

        ``current`` is None when the key holds nothing live. When ``fn`` returns ``current``
        itself (the same object), nothing is written. Lock-free: the new value is written with
        the backend's ``compare_and_set`` against the bytes that were read, and ``fn`` runs again
        when another writer got there first, so it must have no side effects. ``fence``: as in
        :meth:`put` (checked on the write).
        """
        full_key = self._full_key(key)
        backend, codec = self._backend, self._codec
        if fence is not None:
            fenced = self._fenced("update")
            while True:
                raw = await backend.get(full_key)
                current = None if raw is None else codec.decode(raw, key=full_key)
                new = fn(current)
                if new is current:
                    return current
                data = codec.encode(new, key=full_key)
                if await fenced.fenced_compare_and_set(fence, full_key, raw, data, self._ttl(ttl)):
                    return new
        while True:
            raw = await backend.get(full_key)
            current = None if raw is None else codec.decode(raw, key=full_key)
            new = fn(current)
            if new is current:
                return current
            if await backend.compare_and_set(full_key, raw, codec.encode(new, key=full_key), self._ttl(ttl)):
                return new

    async def pop(self, key: str, default: Any = None) -> Any:
        """Atomically remove ``key`` and return its value (``default`` when missing)."""
        full_key = self._full_key(key)
        data = await self._backend.get_and_delete(full_key)
        if data is None:
            return default
        return self._codec.decode(data, key=full_key)

    async def incr(self, key: str, amount: int = 1, ttl: TTL | None = None) -> int:
        """Atomically add ``amount`` to the counter ``key`` (missing counts as 0); return the new value.

        Counters are stored as ASCII decimal whatever the serializer, so read them back with
        ``get_counter(key)``. ``ttl`` (or the default TTL) applies when the counter is created.
        """
        full_key = self._full_key(key)
        return await self._backend.incr_by(full_key, check_amount(amount, key), self._ttl(ttl))

    # -- many keys -----------------------------------------------------------------------

    async def range_get(
        self, start_key: str, end_key: str | None = None, limit: int | None = None
    ) -> list[tuple[str, Any]]:
        """Sorted ``(key, value)`` pairs.

        Without ``end_key``: every key starting with ``start_key`` (``range_get("")`` lists the
        whole store). With ``end_key``: ``start_key <= key < end_key``. ``limit`` caps the count.
        """
        start_key = check_bound(start_key, "start_key")
        end_key = None if end_key is None else check_bound(end_key, "end_key")
        limit = check_limit(limit)
        prefix = self._prefix
        rows = await self._backend.range(
            prefix + start_key, None if end_key is None else prefix + end_key, limit
        )
        cut = len(prefix)
        decode = self._codec.decode
        return [(key[cut:], decode(data, key=key)) for key, data in rows]

    async def keys(self, prefix: str = "") -> list[str]:
        """Every live key starting with ``prefix``, sorted (without the store's key prefix)."""
        prefix = check_bound(prefix, "prefix")
        cut = len(self._prefix)
        return [key[cut:] for key in await self._backend.list_keys(self._prefix + prefix)]

    async def put_many(
        self,
        items: Mapping[str, Any] | Iterable[tuple[str, Any]],
        ttl: TTL | None = None,
        *,
        fence: Fence | None = None,
    ) -> None:
        """Store many values in one backend batch. Every value is encoded before anything is
        written, so a value that cannot be encoded leaves the store unchanged. ``fence``: as in
        :meth:`put`; one stale key refuses the whole batch."""
        pairs = items.items() if isinstance(items, Mapping) else items
        encode = self._codec.encode
        full_key = self._full_key
        full_keys_values = [(full_key(key), value) for key, value in pairs]
        if isinstance(self._codec, JsonSerializer):  # the default: the whole batch in one loop
            encoded = self._codec.encode_many(full_keys_values)
        else:
            encoded = [(key, encode(value, key=key)) for key, value in full_keys_values]
        if fence is None:
            await self._backend.batch_put(encoded, self._ttl(ttl))
        else:
            await self._fenced("put_many").fenced_batch_put(fence, encoded, self._ttl(ttl))

    async def get_many(self, keys: Sequence[str]) -> list[Any]:
        """Values aligned with ``keys``; None where a key is missing."""
        full_key = self._full_key
        full_keys = [full_key(key) for key in keys]
        raw = await self._backend.batch_get(full_keys)
        decode = self._codec.decode
        return [
            None if data is None else decode(data, key=key) for key, data in zip(full_keys, raw, strict=True)
        ]

    async def delete_many(self, keys: Sequence[str], *, fence: Fence | None = None) -> int:
        """Remove every key; return how many existed. ``fence``: as in :meth:`put` (all or nothing)."""
        full_key = self._full_key
        if fence is None:
            return await self._backend.batch_delete([full_key(key) for key in keys])
        removed: int = await self._fenced("delete_many").fenced_batch_delete(
            fence, [full_key(k) for k in keys]
        )
        return removed

    # -- expiry, clear and paged iteration -------------------------------------------------

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires (a float), or None when it never expires.

        Raises:
            KeyNotFound: ``key`` holds nothing live. A missing key is not None (which means "never
                expires"): the two answers redis-py gives as ``-2`` and ``-1`` stay apart.
        """
        try:
            return await self._backend.ttl(self._full_key(key))
        except KeyNotFound:
            raise KeyNotFound(key) from None

    async def expire(self, key: str, ttl: TTL) -> bool:
        """Make ``key`` expire ``ttl`` (seconds, timedelta or ``"90s"``) from now, keeping its value.

        True when the key exists; False (nothing written) when it holds nothing live.
        """
        seconds = ttl_seconds(ttl)
        if seconds is None:
            raise ConfigError("expire needs a ttl; use persist() to remove an expiry")
        return await self._backend.expire(self._full_key(key), seconds)

    async def persist(self, key: str) -> bool:
        """Remove ``key``'s expiry (it then never expires). True when it had one (as Redis
        ``PERSIST``); False when it is missing or already never expires."""
        return await self._backend.persist(self._full_key(key))

    async def touch(self, key: str, ttl: TTL | None = None) -> bool:
        """Restart ``key``'s TTL without rewriting its value; True when the key exists.

        The new expiry is ``ttl`` from now, else the store's ``default_ttl`` from now; with
        neither, the key is left to never expire (as a ``put`` without a TTL would).
        """
        return await self._backend.touch(self._full_key(key), self._ttl(ttl))

    async def clear(self) -> int:
        """Delete every key under this store's ``key_prefix``; return how many live keys went.

        Only this store's prefix is touched: other stores on the same backend keep their keys.
        A store without a ``key_prefix`` empties the whole backend (its statekit keys). On Redis
        the keys are found through the range index, never by ``KEYS``/``SCAN`` of the server;
        with ``range_index=False`` this raises ConfigError and deletes nothing.
        """
        return await self._backend.clear(self._prefix)

    async def iter_keys(
        self, prefix: str = "", limit: int | None = None, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[str]:
        """Every live key starting with ``prefix``, sorted, read ``page_size`` at a time.

        Like :meth:`keys` without building one list: a million keys cost one page of memory.
        ``limit`` stops after that many keys. Keys written or deleted while iterating may or may
        not be seen; no key is yielded twice and the order holds.
        """
        cut = len(self._prefix)
        async with aclosing(self._pages(prefix, None, limit, page_size)) as pages:
            async for rows in pages:
                for key, _ in rows:
                    yield key[cut:]

    async def iter_range(
        self,
        start_key: str,
        end_key: str | None = None,
        limit: int | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[tuple[str, Any]]:
        """The pairs of :meth:`range_get` (same bounds), yielded in pages of ``page_size``."""
        cut = len(self._prefix)
        decode = self._codec.decode
        async with aclosing(self._pages(start_key, end_key, limit, page_size)) as pages:
            async for rows in pages:
                for key, data in rows:
                    yield key[cut:], decode(data, key=key)

    async def _pages(
        self, start_key: str, end_key: str | None, limit: int | None, page_size: int
    ) -> AsyncGenerator[list[tuple[str, bytes]], None]:
        """The backend's ``(full key, raw value)`` rows of a range, a page (list) at a time."""
        start_key = check_bound(start_key, "start_key")
        end_key = None if end_key is None else check_bound(end_key, "end_key")
        left = check_limit(limit)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ConfigError(f"page_size must be an int >= 1, got {page_size!r}")
        prefix = self._prefix
        start = prefix + start_key
        end = prefix_upper_bound(start) if end_key is None else prefix + end_key
        while left is None or left > 0:
            want = page_size if left is None else min(page_size, left)
            rows = await self._backend.scan_range(start, end, want)
            if rows:
                yield rows
            if len(rows) < want:
                return
            if left is not None:
                left -= len(rows)
            start = rows[-1][0] + "\x00"  # the smallest key after the last one

    # -- lifecycle and stats -------------------------------------------------------------

    async def health_check(self) -> bool:
        """True when the backend can serve requests. Never raises."""
        return await self._backend.health_check()

    def get_stats(self) -> StoreStats:
        """Key counts (under this store's prefix), settings and backend counters.

        Has at least ``total_keys``, ``expiring_keys``, ``serializer``, ``default_ttl``,
        ``key_prefix`` and ``backend``. Use it directly or ``await`` it.
        """
        backend = self._backend
        nowait = getattr(backend, "stats_nowait", None)
        backend_stats: BackendStats = (
            nowait(self._prefix) if nowait is not None else BackendStats(backend_type=backend.backend_type)
        )
        stats = StoreStats(backend_stats.as_dict())
        stats.update(
            backend=self._backend.backend_type,
            serializer=self._codec.name,
            default_ttl=self._default_ttl,
            key_prefix=self._prefix,
        )
        prefix = self._prefix
        stats.refresh = lambda: backend.stats(prefix)
        return stats

    async def close(self) -> None:
        """Close the backend. Further operations raise NotInitialized."""
        await self._backend.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------------------

    def _full_key(self, key: str) -> str:
        # The backend checks the full key (UTF-8, reserved namespace); here only what the
        # prefix would hide: the type (bytes keys are decoded) and emptiness.
        if type(key) is not str or not key:
            if isinstance(key, bytes | bytearray | memoryview | str):
                key = check_bound(key, "key")
            if not isinstance(key, str) or not key:
                raise InvalidKey(f"keys must be non-empty str, got {key!r} ({type(key).__name__})", key=key)
        return self._prefix + key

    def _fenced(self, op: str) -> Any:
        """The backend, if it supports fenced writes; else ConfigError (nothing written)."""
        backend = self._backend
        if not hasattr(backend, "fenced_put"):
            raise ConfigError(
                f"{op}(..., fence=...) is not supported on the {backend.backend_type} backend yet; "
                "fenced writes work on the memory and sqlite backends"
            )
        return backend

    def _ttl(self, ttl: TTL | None) -> float | None:
        return self._default_ttl if ttl is None else ttl_seconds(ttl)
