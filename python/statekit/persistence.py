"""Bookkeeping for incremental jobs on a :class:`~statekit.KeyValueStore`.

* :class:`PersistenceManager`: processed items, resumable state and failed items of one job;
* :class:`RetryManager`: retry counts with exponential backoff;
* :class:`StateTracker`: counters and processing-time statistics.

Keys follow ``{prefix}:{type}:{identifier}``, for example ``my_provider:processed_items:url1``,
``my_provider:state:current``, ``my_provider:errors:url7``, ``retry:url7`` and
``state_tracker:counter:api_calls``. Each kind of data has its own TTL, by default the ones
the persistence guide recommends: 24 hours for errors and retry data, 7 days for state and
processed items, 30 days for statistics. A TTL of ``None`` means the store's default TTL.

Nothing is lost under concurrency: counters are the backend's atomic increments, and the
minimum and maximum processing times are kept in write-once slots claimed with the backend's
atomic ``set_if_absent`` (see :class:`StateTracker`), so counts and timing statistics stay
exact with many tasks, and with many processes sharing one SQLite file or Redis server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypedDict

from statekit._factory import get_global_store
from statekit.backends.base import check_bound
from statekit.errors import ConfigError, CorruptData, InvalidKey, InvalidValue
from statekit.store import TTL, KeyValueStore, ttl_seconds

__all__ = [
    "DEFAULT_ERROR_TTL",
    "DEFAULT_PROCESSED_TTL",
    "DEFAULT_RETRY_TTL",
    "DEFAULT_STATE_TTL",
    "DEFAULT_STATS_TTL",
    "ErrorRecord",
    "PersistenceManager",
    "ProcessingStats",
    "RetryManager",
    "StateTracker",
    "create_persistence_manager",
    "create_retry_manager",
    "create_state_tracker",
]

logger = logging.getLogger(__name__)

#: Errors and retry data are short-lived.
DEFAULT_ERROR_TTL: Final = timedelta(hours=24)
DEFAULT_RETRY_TTL: Final = timedelta(hours=24)
#: State and processed items live for a week.
DEFAULT_STATE_TTL: Final = timedelta(days=7)
DEFAULT_PROCESSED_TTL: Final = timedelta(days=7)
#: Statistics live for a month.
DEFAULT_STATS_TTL: Final = timedelta(days=30)

DEFAULT_STATE_ID: Final = "current"
_NS_PER_SECOND: Final = 1_000_000_000
#: One recorded duration at most (a year): totals of many stay far inside a 64-bit nanosecond counter.
_MAX_RECORDED_SECONDS: Final = 365 * 86400.0


class ErrorRecord(TypedDict):
    """A failed item, as returned by :meth:`PersistenceManager.get_failed_items`."""

    item_id: str
    error: str
    retry_count: int
    timestamp: str


class ProcessingStats(TypedDict):
    """Timing statistics of one operation, as returned by :meth:`StateTracker.get_processing_stats`.

    Times are in seconds. With no recorded time, every number is 0 and ``last_updated`` is None.
    """

    count: int
    total_time: float
    min_time: float
    max_time: float
    avg_time: float
    last_updated: str | None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidKey(f"{what} must be a non-empty str, got {value!r} ({type(value).__name__})")
    return check_bound(value, what)  # no lone surrogates: every key built from it would be refused


def _check_ttl(ttl: TTL | None, what: str) -> TTL | None:
    ttl_seconds(ttl, name=what)  # validates: positive seconds or timedelta
    return ttl


def _error_text(error: str | BaseException) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return str(error)


async def _read_counter(store: KeyValueStore, key: str) -> int:
    """The value of an ``incr`` counter, 0 when missing, without creating it."""
    value = await store.get_counter(key)
    return 0 if value is None else value


# -- PersistenceManager --------------------------------------------------------------------


class PersistenceManager:
    """Processed items, resumable state and failed items of one job, under one key prefix.

    Usually made with :func:`create_persistence_manager`. Each processed item is its own key
    (``{prefix}:processed_items:{item}``), so :meth:`is_processed` and :meth:`mark_processed`
    cost one key operation however many items were processed.

    Args:
        store: the store to keep everything in.
        prefix: namespace of this job, e.g. ``"fr_siren_provider"``; use a unique one per job.
        processed_type: the ``{type}`` of processed-item keys (``"processed_urls"``, ...).
        processed_ttl: how long processed items are remembered.
        state_ttl: how long saved state is kept.
        error_ttl: how long error records are kept.
        clock: current time in seconds, for timestamps (inject a fake clock in tests).
    """

    def __init__(
        self,
        store: KeyValueStore,
        prefix: str,
        *,
        processed_type: str = "processed_items",
        processed_ttl: TTL | None = DEFAULT_PROCESSED_TTL,
        state_ttl: TTL | None = DEFAULT_STATE_TTL,
        error_ttl: TTL | None = DEFAULT_ERROR_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._prefix = _check_name(prefix, "prefix")
        self._processed = f"{prefix}:{_check_name(processed_type, 'processed_type')}:"
        self._state = f"{prefix}:state:"
        self._errors = f"{prefix}:errors:"
        self.processed_ttl = _check_ttl(processed_ttl, "processed_ttl")
        self.state_ttl = _check_ttl(state_ttl, "state_ttl")
        self.error_ttl = _check_ttl(error_ttl, "error_ttl")
        self._clock = clock

    def __repr__(self) -> str:
        return f"PersistenceManager(prefix={self._prefix!r}, store={self._store!r})"

    @property
    def prefix(self) -> str:
        """The namespace of this manager's keys."""
        return self._prefix

    @property
    def store(self) -> KeyValueStore:
        """The store this manager writes to."""
        return self._store

    # -- processed items -------------------------------------------------------------------

    async def save_processed_items(self, items: Iterable[str]) -> int:
        """Remember every item of ``items`` as processed, in one batch; return how many were given.

        Items already remembered are simply refreshed (their TTL restarts).
        """
        stamp = _iso(self._clock())
        keys = {self._processed + _check_name(item, "item"): stamp for item in items}
        if keys:
            await self._store.put_many(keys, ttl=self.processed_ttl)
        logger.debug("%s: saved %d processed item(s)", self._prefix, len(keys))
        return len(keys)

    async def load_processed_items(self) -> set[str]:
        """Every item remembered as processed (use :meth:`is_processed` to check a single one)."""
        cut = len(self._processed)
        items = {key[cut:] for key in await self._store.keys(self._processed)}
        logger.debug("%s: loaded %d processed item(s)", self._prefix, len(items))
        return items

    async def mark_processed(self, item: str) -> None:
        """Remember one item as processed (one key write)."""
        await self._store.put(
            self._processed + _check_name(item, "item"), _iso(self._clock()), self.processed_ttl
        )

    async def is_processed(self, item: str) -> bool:
        """Whether ``item`` was remembered as processed (one key read)."""
        return await self._store.exists(self._processed + _check_name(item, "item"))

    async def clear_processed_items(self) -> int:
        """Forget every processed item of this prefix; return how many there were."""
        keys = await self._store.keys(self._processed)
        return await self._store.delete_many(keys) if keys else 0

    # -- state -----------------------------------------------------------------------------

    async def save_state(self, state: Mapping[str, Any], state_id: str = DEFAULT_STATE_ID) -> None:
        """Save a state dict (cursor, current date, counts, ...) to resume from after a restart.

        ``last_updated`` is set to the time of saving. Several states can be kept side by side
        under different ``state_id`` values (the key is ``{prefix}:state:{state_id}``).

        Raises:
            SerializationFailed: the state cannot be encoded; nothing was written.
        """
        if not isinstance(state, Mapping):
            raise InvalidValue(f"state must be a mapping (a dict), got {type(state).__name__}")
        record = dict(state)
        record["last_updated"] = _iso(self._clock())
        await self._store.put(self._state + _check_name(state_id, "state_id"), record, self.state_ttl)
        logger.debug("%s: saved state %r (%d field(s))", self._prefix, state_id, len(record))

    async def load_state(self, state_id: str = DEFAULT_STATE_ID) -> dict[str, Any]:
        """The state saved under ``state_id``; ``{}`` when none was saved (or it expired).

        Raises:
            CorruptData: something other than a state dict is stored under the state key.
        """
        key = self._state + _check_name(state_id, "state_id")
        value = await self._store.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise CorruptData(
                f"key {key!r} holds a {type(value).__name__}, not a saved state dict; delete the key or "
                "use another prefix"
            )
        return value

    # -- errors ----------------------------------------------------------------------------

    async def save_error(self, item_id: str, error: str | BaseException, retry_count: int = 0) -> None:
        """Record that ``item_id`` failed with ``error`` after ``retry_count`` retries.

        A later record for the same item replaces the earlier one.
        """
        if isinstance(retry_count, bool) or not isinstance(retry_count, int) or retry_count < 0:
            raise ConfigError(f"retry_count must be a non-negative int, got {retry_count!r}")
        record: ErrorRecord = {
            "item_id": _check_name(item_id, "item_id"),
            "error": _error_text(error),
            "retry_count": retry_count,
            "timestamp": _iso(self._clock()),
        }
        await self._store.put(self._errors + item_id, record, self.error_ttl)
        logger.debug("%s: saved error for %r (retry %d)", self._prefix, item_id, retry_count)

    async def save_errors(self, errors: Mapping[str, str | BaseException], retry_count: int = 0) -> int:
        """Record several failed items at once: one ``put_many``, i.e. one transaction (one fsync
        on SQLite) however many there are. Returns how many were given."""
        if isinstance(retry_count, bool) or not isinstance(retry_count, int) or retry_count < 0:
            raise ConfigError(f"retry_count must be a non-negative int, got {retry_count!r}")
        stamp = _iso(self._clock())
        records = {
            self._errors + _check_name(item_id, "item_id"): ErrorRecord(
                item_id=item_id, error=_error_text(error), retry_count=retry_count, timestamp=stamp
            )
            for item_id, error in errors.items()
        }
        if records:
            await self._store.put_many(records, ttl=self.error_ttl)
        return len(records)

    async def get_failed_items(self, max_retries: int = 3) -> list[ErrorRecord]:
        """Error records whose ``retry_count`` is below ``max_retries``, ordered by item id."""
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be an int >= 0, got {max_retries!r}")
        rows = await self._store.range_get(self._errors)
        failed: list[ErrorRecord] = []
        for key, record in rows:
            count = record.get("retry_count") if isinstance(record, dict) else None
            if isinstance(count, int) and not isinstance(count, bool):
                if count < max_retries:
                    failed.append(record)
            else:
                logger.warning("%s: ignoring %r, which does not hold an error record", self._prefix, key)
        return failed

    async def clear_errors(self, item_id: str | None = None) -> int:
        """Delete the error record of ``item_id``, or every error record of this prefix when None.

        Returns:
            How many records were deleted.
        """
        if item_id is not None:
            return int(await self._store.delete(self._errors + _check_name(item_id, "item_id")))
        keys = await self._store.keys(self._errors)
        removed = await self._store.delete_many(keys) if keys else 0
        logger.debug("%s: cleared %d error record(s)", self._prefix, removed)
        return removed


# -- RetryManager --------------------------------------------------------------------------


class RetryManager:
    """Retry counts per item, with capped exponential backoff.

    Usually made with :func:`create_retry_manager`. The count of an item is an atomic counter
    (``retry:{item}``, or ``{prefix}:retry:{item}`` with a prefix), so several workers retrying
    the same item never lose a count; the last error is kept under ``retry_errors``.

    The delay before retry number ``n`` (``n`` = the current count, at least 1) is
    ``min(max_delay, base_delay * backoff_factor ** (n - 1))``; with ``jitter`` it is then
    multiplied by a random factor in ``[0.5, 1.0)`` so that many workers don't retry in step.

    Args:
        store: where counts live.
        max_retries: how many retries an item gets.
        backoff_factor: growth of the delay per retry (>= 1).
        base_delay: seconds before the first retry.
        max_delay: cap on the delay, in seconds.
        jitter: randomise delays as described above.
        prefix: optional namespace (``None`` gives keys ``retry:{item}``).
        ttl: how long retry data is kept, from the first retry of an item.
        clock: current time in seconds, for timestamps.
        rng: random source for jitter (inject a seeded one for reproducible delays).
    """

    def __init__(
        self,
        store: KeyValueStore,
        *,
        max_retries: int = 3,
        backoff_factor: float = 2.0,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        jitter: bool = True,
        prefix: str | None = None,
        ttl: TTL | None = DEFAULT_RETRY_TTL,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be a non-negative int, got {max_retries!r}")
        if not (
            isinstance(backoff_factor, int | float) and math.isfinite(backoff_factor) and backoff_factor >= 1
        ):
            raise ConfigError(f"backoff_factor must be a finite number >= 1, got {backoff_factor!r}")
        if not (isinstance(base_delay, int | float) and math.isfinite(base_delay) and base_delay >= 0):
            raise ConfigError(f"base_delay must be a finite number of seconds >= 0, got {base_delay!r}")
        if not (isinstance(max_delay, int | float) and max_delay >= base_delay):
            raise ConfigError(f"max_delay must be a number >= base_delay ({base_delay}), got {max_delay!r}")
        self._store = store
        self.max_retries = max_retries
        self.backoff_factor = float(backoff_factor)
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.jitter = jitter
        head = "" if prefix is None else _check_name(prefix, "prefix") + ":"
        self._counts = f"{head}retry:"
        self._errors = f"{head}retry_errors:"
        self.ttl = _check_ttl(ttl, "ttl")
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()

    def __repr__(self) -> str:
        return (
            f"RetryManager(max_retries={self.max_retries}, backoff_factor={self.backoff_factor}, "
            f"base_delay={self.base_delay}, max_delay={self.max_delay}, jitter={self.jitter})"
        )

    async def should_retry(self, item: str) -> bool:
        """Whether ``item`` has been retried fewer than ``max_retries`` times."""
        return await self.get_retry_count(item) < self.max_retries

    async def record_retry(self, item: str, error: str | BaseException) -> int:
        """Count one more retry of ``item`` (atomically) and remember ``error``; return the new count.

        The returned count is authoritative when several workers race on one item: a worker
        that gets a count above ``max_retries`` should not retry.
        """
        count = await self._store.incr(self._counts + _check_name(item, "item"), 1, ttl=self.ttl)
        record: ErrorRecord = {
            "item_id": item,
            "error": _error_text(error),
            "retry_count": count,
            "timestamp": _iso(self._clock()),
        }
        await self._store.put(self._errors + item, record, self.ttl)
        logger.debug("retry %d of %r: %s", count, item, record["error"])
        return count

    async def get_retry_count(self, item: str) -> int:
        """How many retries of ``item`` were recorded (0 when none)."""
        return await _read_counter(self._store, self._counts + _check_name(item, "item"))

    async def get_last_error(self, item: str) -> ErrorRecord | None:
        """The error passed to the latest :meth:`record_retry` of ``item``, or None."""
        record: ErrorRecord | None = await self._store.get(self._errors + _check_name(item, "item"))
        return record

    async def get_retry_delay(self, item: str) -> float:
        """Seconds to wait before the next retry of ``item`` (see the class docstring)."""
        return self.compute_delay(await self.get_retry_count(item))

    def compute_delay(self, retry_count: int) -> float:
        """The delay for a given retry count (what :meth:`get_retry_delay` uses)."""
        exponent = max(retry_count, 1) - 1
        try:
            delay = min(self.max_delay, self.base_delay * self.backoff_factor**exponent)
        except OverflowError:
            delay = self.max_delay
        if self.jitter:
            delay *= 0.5 + self._rng.random() / 2
        return delay

    async def clear_retry_data(self, item: str) -> bool:
        """Forget the retries of ``item`` (call it once the item succeeded); True when there were any."""
        key = _check_name(item, "item")
        return await self._store.delete_many([self._counts + key, self._errors + key]) > 0


# -- StateTracker --------------------------------------------------------------------------


class _ExtremeRegister:
    """The smallest or largest integer ever offered, exact under concurrent writers.

    One key, updated with :meth:`KeyValueStore.update` (a compare-and-set loop): a writer whose
    value is not better writes nothing; of two racing writers the loser re-reads and retries.
    """

    def __init__(self, store: KeyValueStore, key: str, *, keep_larger: bool, ttl: TTL | None) -> None:
        self._store = store
        self._key = key
        self._keep_larger = keep_larger
        self._ttl = ttl

    async def get(self) -> int | None:
        """The current value, or None when nothing was offered (or it expired)."""
        value = await self._store.get(self._key)
        return value if type(value) is int else None

    async def offer(self, value: int) -> None:
        """Make the register's value ``value`` if that is better than the current one."""

        def better(current: Any) -> Any:
            if type(current) is not int:
                return value
            return value if (value > current if self._keep_larger else value < current) else current

        await self._store.update(self._key, better, self._ttl)


class StateTracker:
    """Counters and processing-time statistics, exact under concurrent tasks and processes.

    Usually made with :func:`create_state_tracker`. Keys live under ``{name}:``:

    * ``{name}:counter:{counter}``: an atomic counter;
    * ``{name}:timing_count:{op}``, ``{name}:timing_total_ns:{op}``: atomic counters of the
      number of recorded times and their sum in integer nanoseconds (so sums are exact);
    * ``{name}:timing_min:{op}``, ``{name}:timing_max:{op}``: the extremes, updated with a
      compare-and-set loop (:meth:`KeyValueStore.update`: lock-free, no lost update);
    * ``{name}:timing_updated:{op}``: when a time was last recorded.

    A counter or statistic expires ``ttl`` after it was created (later updates do not extend
    it, as with Redis ``INCR`` + ``EXPIRE``).

    Reads are not a snapshot: while writers are active, ``count`` may already include a time
    that ``total_time`` does not yet. Once writers are done, every figure is exact.

    Args:
        store: where counters and statistics live.
        name: namespace of this tracker.
        ttl: lifetime of counters and statistics.
        clock: current time in seconds, for ``last_updated``.
    """

    def __init__(
        self,
        store: KeyValueStore,
        name: str = "state_tracker",
        *,
        ttl: TTL | None = DEFAULT_STATS_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._name = _check_name(name, "name")
        self.ttl = _check_ttl(ttl, "ttl")
        self._clock = clock
        self._counter = f"{name}:counter:"

    def __repr__(self) -> str:
        return f"StateTracker(name={self._name!r}, store={self._store!r})"

    @property
    def name(self) -> str:
        """The namespace of this tracker's keys."""
        return self._name

    async def increment_counter(self, name: str, amount: int = 1) -> int:
        """Atomically add ``amount`` (may be negative) to counter ``name``; return the new value."""
        return await self._store.incr(self._counter + _check_name(name, "counter name"), amount, ttl=self.ttl)

    async def get_counter(self, name: str) -> int:
        """The value of counter ``name``; 0 when it was never incremented (nothing is created)."""
        return await _read_counter(self._store, self._counter + _check_name(name, "counter name"))

    async def get_counters(self) -> dict[str, int]:
        """Every counter of this tracker, by name."""
        cut = len(self._counter)
        keys = await self._store.keys(self._counter)
        values = await asyncio.gather(*(self._store.get_counter(key) for key in keys))
        return {key[cut:]: value for key, value in zip(keys, values, strict=True) if value is not None}

    async def reset_counter(self, name: str) -> bool:
        """Delete counter ``name``; True when it existed."""
        return await self._store.delete(self._counter + _check_name(name, "counter name"))

    async def record_processing_time(self, operation: str, seconds: float) -> None:
        """Record that ``operation`` took ``seconds`` (a finite number >= 0).

        Times are kept to the nanosecond.
        """
        _check_name(operation, "operation")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
            raise ConfigError(f"seconds must be a finite number, got {seconds!r}")
        if seconds < 0:
            raise ConfigError(f"seconds must be >= 0, got {seconds!r}; pass a duration, not a timestamp")
        if seconds > _MAX_RECORDED_SECONDS:  # nanosecond totals are 64-bit counters
            raise ConfigError(
                f"seconds must be at most {_MAX_RECORDED_SECONDS:.0f} (a year), got {seconds!r}"
            )
        ns = round(seconds * _NS_PER_SECOND)
        store = self._store
        await asyncio.gather(
            store.incr(f"{self._name}:timing_count:{operation}", 1, ttl=self.ttl),
            store.incr(f"{self._name}:timing_total_ns:{operation}", ns, ttl=self.ttl),
            self._register(operation, "min").offer(ns),
            self._register(operation, "max").offer(ns),
            store.put(f"{self._name}:timing_updated:{operation}", self._clock(), self.ttl),
        )

    @asynccontextmanager
    async def timed(self, operation: str) -> AsyncIterator[None]:
        """``async with tracker.timed("api_request"): ...`` records how long the body took.

        The time is recorded when the body raises, too.
        """
        start = time.perf_counter()
        try:
            yield
        finally:
            await self.record_processing_time(operation, time.perf_counter() - start)

    async def get_processing_stats(self, operation: str) -> ProcessingStats:
        """``count``, ``total_time``, ``min_time``, ``max_time``, ``avg_time`` (seconds) and
        ``last_updated`` (ISO 8601 UTC) of ``operation``; zeros and None when nothing was recorded.
        """
        _check_name(operation, "operation")
        store = self._store
        count, total_ns, min_ns, max_ns, updated = await asyncio.gather(
            _read_counter(store, f"{self._name}:timing_count:{operation}"),
            _read_counter(store, f"{self._name}:timing_total_ns:{operation}"),
            self._register(operation, "min").get(),
            self._register(operation, "max").get(),
            store.get(f"{self._name}:timing_updated:{operation}"),
        )
        if count == 0:
            return ProcessingStats(
                count=0, total_time=0.0, min_time=0.0, max_time=0.0, avg_time=0.0, last_updated=None
            )
        return ProcessingStats(
            count=count,
            total_time=total_ns / _NS_PER_SECOND,
            min_time=(min_ns or 0) / _NS_PER_SECOND,
            max_time=(max_ns or 0) / _NS_PER_SECOND,
            avg_time=total_ns / count / _NS_PER_SECOND,
            last_updated=_iso(updated) if isinstance(updated, int | float) else None,
        )

    def _register(self, operation: str, which: str) -> _ExtremeRegister:
        return _ExtremeRegister(
            self._store, f"{self._name}:timing_{which}:{operation}", keep_larger=which == "max", ttl=self.ttl
        )


# -- factories -----------------------------------------------------------------------------


async def create_persistence_manager(
    prefix: str,
    store: KeyValueStore | None = None,
    *,
    processed_type: str = "processed_items",
    processed_ttl: TTL | None = DEFAULT_PROCESSED_TTL,
    state_ttl: TTL | None = DEFAULT_STATE_TTL,
    error_ttl: TTL | None = DEFAULT_ERROR_TTL,
) -> PersistenceManager:
    """A :class:`PersistenceManager` for ``prefix`` on ``store`` (the global store when None).

    Example::

        persistence = await create_persistence_manager("my_provider")
        await persistence.save_processed_items({"url1", "url2"})
        if not await persistence.is_processed("url3"):
            ...
    """
    return PersistenceManager(
        get_global_store() if store is None else store,
        prefix,
        processed_type=processed_type,
        processed_ttl=processed_ttl,
        state_ttl=state_ttl,
        error_ttl=error_ttl,
    )


async def create_retry_manager(
    max_retries: int = 3,
    backoff_factor: float = 2.0,
    base_delay: float = 1.0,
    max_delay: float = 300.0,
    jitter: bool = True,
    store: KeyValueStore | None = None,
    *,
    prefix: str | None = None,
    ttl: TTL | None = DEFAULT_RETRY_TTL,
) -> RetryManager:
    """A :class:`RetryManager` on ``store`` (the global store when None).

    Example::

        retry_manager = await create_retry_manager(max_retries=3, backoff_factor=2.0)
        if await retry_manager.should_retry(url):
            await retry_manager.record_retry(url, "timeout")
            await asyncio.sleep(await retry_manager.get_retry_delay(url))
    """
    return RetryManager(
        get_global_store() if store is None else store,
        max_retries=max_retries,
        backoff_factor=backoff_factor,
        base_delay=base_delay,
        max_delay=max_delay,
        jitter=jitter,
        prefix=prefix,
        ttl=ttl,
    )


async def create_state_tracker(
    name: str = "state_tracker",
    store: KeyValueStore | None = None,
    *,
    ttl: TTL | None = DEFAULT_STATS_TTL,
) -> StateTracker:
    """A :class:`StateTracker` named ``name`` on ``store`` (the global store when None).

    Example::

        tracker = await create_state_tracker("my_tracker")
        await tracker.increment_counter("api_calls", 5)
        await tracker.record_processing_time("api_request", 1.5)
        stats = await tracker.get_processing_stats("api_request")
    """
    return StateTracker(get_global_store() if store is None else store, name, ttl=ttl)
