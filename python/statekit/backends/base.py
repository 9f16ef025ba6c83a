"""The backend contract: async, ``str`` keys, ``bytes`` values.

A backend stores bytes under string keys and knows nothing of codecs, key prefixes or default
TTLs: those live once in :class:`statekit.KeyValueStore`. TTLs reach a backend as seconds
(``float``) and are turned into an absolute expiry with the backend's clock.

Range semantics shared by every backend (``range``):

* ``end is None``: every key that starts with ``start``;
* otherwise: ``start <= key < end``;

in both cases sorted by key (Unicode code point order, which is also the byte order of the
UTF-8 encoding) and cut to ``limit`` entries when ``limit`` is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from statekit.errors import StorageError

__all__ = ["BackendStats", "StateBackend", "parse_counter", "prefix_upper_bound"]


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

    def stats(self, prefix: str = "") -> BackendStats:
        """Counters, with ``total_keys``/``expiring_keys`` counted under ``prefix``."""
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
    try:
        return int(raw)
    except ValueError:
        raise StorageError(
            f"cannot increment key {key!r}: it holds a value that is not an integer",
            backend_type=backend_type,
            key=key,
        ) from None
