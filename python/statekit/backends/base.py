"""The backend contract: async, ``str`` keys, ``bytes`` values.

A backend stores bytes under string keys and knows nothing of codecs, key prefixes or default
TTLs: those live once in :class:`statekit.KeyValueStore`. TTLs reach a backend as seconds
(``float``) and are turned into an absolute expiry with the backend's clock.

Range semantics shared by every backend (``range``):

* ``end is None``: every key that starts with ``start``;
* otherwise: ``start <= key < end``;

in both cases sorted by key (Unicode code point order, which is also the byte order of the
UTF-8 encoding) and cut to ``limit`` entries when ``limit`` is given.

Snapshots (``export_items`` / ``replace_prefix``, used by :mod:`statekit.checkpoint`) move
*items*: ``(key, value, expires_at)`` tuples where ``expires_at`` is an absolute unix time in
seconds on the backend's clock, or None for a key that never expires. A sequence of items may
be a plain ``list`` of tuples or an :class:`ItemColumns` (the same items held as three lists,
which avoids building a million tuples on the hot paths).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, Final, Protocol, overload, runtime_checkable

from statekit._utils.durations import to_seconds
from statekit.errors import ConfigError, InvalidKey, InvalidValue, StorageError

__all__ = [
    "COUNTER_PATTERN",
    "MAX_TTL_SECONDS",
    "RESERVED_KEY_PREFIX",
    "BackendStats",
    "Item",
    "ItemColumns",
    "StateBackend",
    "add_to_counter",
    "check_amount",
    "check_bound",
    "check_item_prefix",
    "check_items",
    "check_key",
    "check_keys",
    "check_limit",
    "check_pairs",
    "check_ttl",
    "check_value",
    "item_columns",
    "parse_counter",
    "prefix_upper_bound",
]

#: Every key statekit keeps for itself inside a backend (range indexes, request records, fences)
#: starts with this; no user key may, so the two namespaces are disjoint by construction.
RESERVED_KEY_PREFIX = "{statekit-"

#: The longest TTL accepted (100 years): far beyond any real use, and small enough that an
#: absolute expiry in milliseconds fits every backend's integer type.
MAX_TTL_SECONDS = 100 * 365.25 * 86400.0


def check_key(key: object) -> str:
    """``key`` as the ``str`` a backend stores, or InvalidKey (also ValueError) before any write.

    Accepts a non-empty ``str`` that encodes to UTF-8 (no lone surrogates), and ``bytes`` that
    are valid UTF-8 (seed 004 writes ``b"window:1"``: the same key as ``"window:1"``). Refuses
    keys in statekit's reserved namespace (:data:`RESERVED_KEY_PREFIX`).
    """
    if type(key) is not str:
        if isinstance(key, bytes | bytearray | memoryview):
            raw = bytes(key)
            try:
                key = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidKey(f"bytes key {raw!r} is not valid UTF-8", key=raw) from None
        elif isinstance(key, str):  # a str subclass: store the plain str
            key = str(key)
        else:
            raise InvalidKey(
                f"keys must be non-empty str (or UTF-8 bytes), got {type(key).__name__} {key!r}", key=key
            )
    if not key:
        raise InvalidKey("keys must be non-empty str, got ''", key=key)
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKey(
                f"key {key!r} holds a lone surrogate and cannot be stored as UTF-8", key=key
            ) from None
    if key.startswith(RESERVED_KEY_PREFIX):
        raise InvalidKey(
            f"key {key!r} is in statekit's reserved namespace ({RESERVED_KEY_PREFIX!r}...); choose another "
            "key or set a key_prefix",
            key=key,
        )
    return key


def check_keys(keys: Iterable[object]) -> list[str]:
    """Every key checked by :func:`check_key`, all before any is used (a batch is valid whole).

    The common case (plain ASCII or UTF-8 ``str`` keys) is checked with a few C-level passes
    over the list instead of one Python call per key; anything unusual takes the per-key path,
    which converts bytes keys and raises naming the first bad key.
    """
    checked: list[Any] = keys if type(keys) is list else list(keys)
    try:
        joined = "".join(checked)  # TypeError on anything that is not a str: the slow path handles it
    except TypeError:
        return [check_key(key) for key in checked]
    # A key that starts with the reserved prefix puts it in the joined text (the converse may
    # not hold: then the per-key path decides).
    if RESERVED_KEY_PREFIX in joined or "" in checked or not (joined.isascii() or _encodes(joined)):
        return [check_key(key) for key in checked]
    return checked


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_value(value: object, key: str | None = None) -> bytes:
    """A backend value as ``bytes`` (bytearray/memoryview copied), or InvalidValue."""
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise InvalidValue(
        f"backend values must be bytes, got {type(value).__name__} for key {key!r} "
        "(use a KeyValueStore to store Python objects)",
        key=key,
    )


def check_pairs(pairs: Iterable[tuple[object, object]]) -> list[tuple[str, bytes]]:
    """A batch of ``(key, value)`` pairs with every key and value checked, before any is written."""
    items: list[Any] = pairs if type(pairs) is list else list(pairs)
    try:
        keys = list(map(itemgetter(0), items))
        values = list(map(itemgetter(1), items))
        well_formed = not items or set(map(len, items)) == {2}
    except (TypeError, IndexError, KeyError):
        well_formed = False
    if not well_formed:
        raise InvalidValue("a batch must be an iterable of (key, value) pairs")
    checked_keys = check_keys(keys)
    if checked_keys is keys and all(map(isinstance, values, repeat(bytes))):
        return items
    checked_values = [check_value(value, key) for key, value in zip(checked_keys, values, strict=True)]
    return list(zip(checked_keys, checked_values, strict=True))


def check_items(items: Sequence[Item]) -> ItemColumns:
    """Snapshot items as columns, every key and value checked before any is written.

    An expiry must be None or a finite number: a NaN would never compare as expired.
    """
    columns = item_columns(items)
    keys = check_keys(columns.keys)
    values = columns.values
    if not all(map(isinstance, values, repeat(bytes))):
        values = [check_value(value, key) for key, value in zip(keys, values, strict=True)]
    expires = columns.expires_at
    if expires is not None:
        for key, at in zip(keys, expires, strict=True):
            if at is not None and (
                isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at)
            ):
                raise InvalidValue(f"item {key!r} has an invalid expiry {at!r}", key=key)
    if keys is columns.keys and values is columns.values:
        return columns
    return ItemColumns(keys, values, expires)


def check_bound(bound: object, name: str) -> str:
    """A range bound or key prefix: ``str`` (possibly empty) or UTF-8 ``bytes``, else InvalidKey."""
    if type(bound) is str:
        if bound.isascii() or _encodes(bound):
            return bound
        raise InvalidKey(f"{name} {bound!r} holds a lone surrogate", key=bound)
    if isinstance(bound, bytes | bytearray | memoryview):
        try:
            return bytes(bound).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidKey(f"{name} {bytes(bound)!r} is not valid UTF-8", key=bound) from None
    if isinstance(bound, str):
        return check_bound(str(bound), name)
    raise InvalidKey(f"{name} must be a str, got {type(bound).__name__} {bound!r}", key=bound)


def check_limit(limit: object) -> int | None:
    """A ``limit`` argument: None or a non-negative int, else ConfigError (also ValueError)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"limit must be a non-negative int or None, got {limit!r}")
    return limit


#: What a stored counter looks like: canonical ASCII decimal (no sign on zero, no leading zeros),
#: exactly what Redis' INCRBY reads and writes, so every backend agrees on what is a counter.
COUNTER_PATTERN: Final = re.compile(rb"0|-?[1-9][0-9]{0,18}")

#: Counters are signed 64-bit on every backend (Redis' INCRBY range), so they behave alike.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def check_amount(amount: object, key: str | None = None) -> int:
    """A counter increment: an ``int`` (not bool) in the signed 64-bit range, else InvalidValue."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidValue(f"amount must be an int, got {type(amount).__name__}", key=key)
    if not _INT64_MIN <= amount <= _INT64_MAX:
        raise InvalidValue(f"amount {amount} is outside the signed 64-bit range of counters", key=key)
    return int(amount)


def check_ttl(ttl: object, *, name: str = "ttl") -> float | None:
    """A TTL as positive finite seconds (None stays None), at most :data:`MAX_TTL_SECONDS`.

    Accepts int, float, ``timedelta`` and duration strings (``"90s"``, ``"2h"``, ``"1h30m"``);
    anything else, NaN, infinities, zero, negative and
    too-large values raise ConfigError (also ValueError) naming ``name``.
    """
    if ttl is None:
        return None
    seconds = to_seconds(ttl, name)
    if seconds > MAX_TTL_SECONDS:
        raise ConfigError(f"{name} must be at most {MAX_TTL_SECONDS:.0f} seconds (100 years), got {ttl!r}")
    return seconds


#: One stored entry: ``(key, value, expires_at)``; ``expires_at`` is absolute unix seconds or None.
Item = tuple[str, bytes, float | None]


@dataclass(slots=True)
class BackendStats:
    """Counters of one backend since it was opened, plus the key counts of one prefix."""

    backend_type: str
    total_keys: int = 0
    expiring_keys: int = 0
    get_count: int = 0
    put_count: int = 0
    delete_count: int = 0
    hit_count: int = 0
    miss_count: int = 0
    batch_count: int = 0
    error_count: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def hit_rate(self) -> float:
        """Fraction of reads that found their key (0.0 when nothing was read yet)."""
        reads = self.hit_count + self.miss_count
        return self.hit_count / reads if reads else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict, with ``hit_rate`` added."""
        data = asdict(self)
        data["hit_rate"] = self.hit_rate()
        return data


class ItemColumns(Sequence[Item]):
    """A read-only sequence of ``(key, value, expires_at)`` items stored as parallel lists.

    ``keys[i]``, ``values[i]`` and ``expires_at[i]`` make item ``i``; ``expires_at`` is None when
    no item expires (the common case, which then costs nothing). Iterating yields tuples like a
    list of items would, so any code written for ``Sequence[Item]`` accepts it; code on a hot
    path (the snapshot reader and writer, the memory backend) reads the columns directly.

    The lists are used as given, not copied: don't change them afterwards.
    """

    __slots__ = ("expires_at", "keys", "values")

    def __init__(
        self, keys: list[str], values: list[bytes], expires_at: list[float | None] | None = None
    ) -> None:
        if len(values) != len(keys) or (expires_at is not None and len(expires_at) != len(keys)):
            lengths = f"{len(keys)} keys, {len(values)} values"
            if expires_at is not None:
                lengths += f", {len(expires_at)} expiries"
            raise ValueError(f"ItemColumns needs columns of one length, got {lengths}")
        self.keys = keys
        self.values = values
        self.expires_at = expires_at

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> Item: ...

    @overload
    def __getitem__(self, index: slice) -> ItemColumns: ...

    def __getitem__(self, index: int | slice) -> Item | ItemColumns:
        if isinstance(index, slice):
            expires = None if self.expires_at is None else self.expires_at[index]
            return ItemColumns(self.keys[index], self.values[index], expires)
        expiry = None if self.expires_at is None else self.expires_at[index]
        return (self.keys[index], self.values[index], expiry)

    def __iter__(self) -> Iterator[Item]:
        expires: Iterable[float | None] = repeat(None) if self.expires_at is None else self.expires_at
        return zip(self.keys, self.values, expires, strict=False)

    def __repr__(self) -> str:
        return f"ItemColumns(<{len(self.keys)} items>)"


def item_columns(items: Sequence[Item]) -> ItemColumns:
    """``items`` as an :class:`ItemColumns` (itself when it already is one)."""
    if isinstance(items, ItemColumns):
        return items
    keys = [item[0] for item in items]
    values = [item[1] for item in items]
    expires = [item[2] for item in items]
    return ItemColumns(keys, values, None if expires.count(None) == len(expires) else expires)


def check_item_prefix(keys: Iterable[str], prefix: str) -> None:
    """Raise ValueError naming the first key that does not start with ``prefix``."""
    if not prefix:
        return
    for key in keys:
        if not key.startswith(prefix):
            raise ValueError(f"item key {key!r} does not start with the prefix {prefix!r} being replaced")


@runtime_checkable
class StateBackend(Protocol):
    """What every statekit backend implements. All I/O methods are coroutines."""

    #: Short name used in stats and error messages ("memory", "sqlite", "redis", ...).
    backend_type: str
    #: Whether data survives the process (drives the unsigned-pickle warning).
    persistent: bool

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when missing or expired."""
        ...

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``; ``ttl`` seconds from now it expires (None: never)."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True when it existed."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an unexpired value."""
        ...

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Every live key starting with ``prefix``, sorted."""
        ...

    async def range(
        self, start: str, end: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        """Sorted ``(key, value)`` pairs; see the module docstring for the bounds."""
        ...

    async def batch_get(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values aligned with ``keys``; None where a key is missing."""
        ...

    async def batch_put(self, pairs: Iterable[tuple[str, bytes]], ttl: float | None = None) -> None:
        """Store every pair, all or nothing where the backend allows it."""
        ...

    async def batch_delete(self, keys: Sequence[str]) -> int:
        """Remove every key; return how many existed."""
        ...

    async def set_if_not_exists(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store ``value`` only when ``key`` holds nothing live; True when stored."""
        ...

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None
    ) -> bool:
        """Atomically store ``value`` (with ``ttl``, as ``put``) only if ``key`` holds ``expected``.

        ``expected=None`` means "holds nothing live". True when stored. The building block of
        lock-free read-modify-write loops (e.g. the running min/max of a StateTracker).
        """
        ...

    async def get_and_delete(self, key: str) -> bytes | None:
        """Atomically remove ``key`` and return what it held (None when missing)."""
        ...

    async def incr_by(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add ``amount`` to the integer stored (as ASCII decimal) under ``key``.

        A missing key counts as 0. ``ttl`` applies only when the key is created.
        Raises StorageError when the stored value is not an integer.
        """
        ...

    async def health_check(self) -> bool:
        """True when the backend can serve requests. Never raises."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires (a float > 0), or None when it never expires.

        Raises:
            KeyNotFound: ``key`` holds nothing live (Redis' ``PTTL`` -2). "Never expires" (None,
                Redis' -1) and "missing" are kept apart, as redis-py and cashews users expect.
        """
        ...

    async def expire(self, key: str, ttl: float) -> bool:
        """Make ``key`` expire ``ttl`` seconds from now; True when it exists (and was changed),
        False when it holds nothing live (nothing is written). Like Redis ``PEXPIRE``."""
        ...

    async def persist(self, key: str) -> bool:
        """Remove ``key``'s expiry; True when it had one (Redis ``PERSIST``), False when the key
        is missing or already never expires."""
        ...

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        """Refresh ``key``'s expiry to ``ttl`` seconds from now without rewriting its value.

        ``ttl=None`` applies what a ``put`` without a TTL would: the backend's own default TTL
        when it has one (Redis ``default_ttl``), else "never expires". True when the key exists.
        """
        ...

    async def clear(self, prefix: str = "") -> int:
        """Delete every key that starts with ``prefix``; return how many live keys were deleted.

        Keys outside ``prefix`` are untouched; ``prefix=""`` empties the backend (its user keys).
        """
        ...

    async def scan_range(
        self, start: str, end: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        """Sorted ``(key, value)`` pairs with ``start <= key`` and, when ``end`` is given,
        ``key < end``; ``end=None`` means no upper bound (not a prefix query, unlike ``range``).

        The building block of paged iteration (``KeyValueStore.iter_range``): the next page
        starts at ``last_key + "\\x00"``, the smallest key after ``last_key``.
        """
        ...

    async def export_items(self, prefix: str = "") -> Sequence[Item]:
        """Every live key starting with ``prefix`` as ``(key, value, expires_at)`` items.

        ``expires_at`` is the key's absolute expiry (unix seconds on the backend's clock) or
        None. Keys that have already expired are left out. The order of the items is
        unspecified. ``prefix=""`` exports the whole backend.

        The result is fully materialised when the call returns (no lazy reads later): a
        ``list`` of tuples or an :class:`ItemColumns`. It should be a point-in-time snapshot,
        i.e. exactly the state at one instant, with no concurrent write half-seen; a backend
        that cannot promise that says what it does promise in its docstring:

        * memory: point in time (read under the backend's lock without yielding);
        * SQLite: point in time (one read transaction);
        * Redis: see that backend's docstring.
        """
        ...

    async def replace_prefix(self, prefix: str, items: Sequence[Item]) -> None:
        """Make ``items`` the whole content under ``prefix``, atomically.

        Deletes every key that starts with ``prefix`` (live or expired), then writes each
        ``(key, value, expires_at)`` item with that absolute expiry. Items whose ``expires_at``
        is at or before the backend's current time are skipped (they would be expired at once).
        Keys outside ``prefix`` are untouched; ``prefix=""`` replaces the whole backend. When a
        key appears twice, the last item wins.

        ``items`` is a ``list`` of tuples or an :class:`ItemColumns` (use
        :func:`item_columns` to get columns from either). Every key must start with
        ``prefix``: otherwise ValueError is raised before anything changes.

        Atomic: a reader sees the old content under ``prefix`` or the new, never a mix, and a
        failure leaves the old content. Memory does it under its lock, SQLite in one
        transaction; a backend that cannot promise that says what it does promise.

        Raises:
            ValueError: a key does not start with ``prefix`` (nothing was changed).
            StorageError: the backend failed (nothing was changed where the backend is atomic).
        """
        ...

    async def stats(self, prefix: str = "") -> BackendStats:
        """Counters, with ``total_keys``/``expiring_keys`` counted under ``prefix`` now.

        Async: counting may need the disk (SQLite, off the event-loop thread) or the server (Redis).
        """
        ...

    def stats_nowait(self, prefix: str = "") -> BackendStats:
        """The counters now, without I/O. Key counts are whatever is known without asking: live on
        the memory backend, the figures of the last ``await stats(prefix)`` on SQLite and Redis."""
        ...

    async def close(self) -> None:
        """Release resources. Further calls raise NotInitialized. Closing twice is harmless."""
        ...


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    None when there is none (empty prefix, or a prefix made only of U+10FFFF). Used to turn a
    prefix query into a ``start <= key < end`` range on ordered storage.
    """
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    last = ord(stripped[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:  # surrogates cannot be encoded; jump past them
        last = 0xE000
    return stripped[:-1] + chr(last)


def parse_counter(raw: bytes, key: str, backend_type: str) -> int:
    """Read an ``incr_by`` counter; a non-integer value is a StorageError naming the key."""
    # Counters are ASCII decimal; int() would also take b" 7", b"1_0" or 4,300 digits.
    if COUNTER_PATTERN.fullmatch(raw):
        value = int(raw)
        if _INT64_MIN <= value <= _INT64_MAX:
            return value
    raise StorageError(
        f"cannot read key {key!r} as a counter: it holds a value that is not an integer "
        "(canonical ASCII decimal, 64-bit)",
        backend_type=backend_type,
        key=key,
    )


def add_to_counter(current: int, amount: int, key: str, backend_type: str) -> int:
    """``current + amount``, or StorageError when it leaves the signed 64-bit range (as Redis does)."""
    new = current + amount
    if not _INT64_MIN <= new <= _INT64_MAX:
        raise StorageError(
            f"incrementing key {key!r} by {amount} would overflow a 64-bit counter",
            backend_type=backend_type,
            key=key,
        )
    return new
