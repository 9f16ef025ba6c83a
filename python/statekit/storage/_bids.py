"""Bundle IDs (BIDs): time-ordered, unique, safe in paths and object keys.

A BID looks like a UUID, ``xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``, laid out so that sorting BIDs
as strings sorts them by creation time::

    17640000000000000000-...    13 decimal digits: milliseconds since the Unix epoch (UTC)
                                 7 hex digits: a per-process sequence within that millisecond
                                12 hex digits: random (48 bits), for uniqueness across processes

e.g. ``17645832-0153-1000-0000-3f9c0a1b2c4d``. The millisecond field is fixed-width decimal, so it
is readable and sorts lexicographically until the year 2286. Within one process the (millisecond,
sequence) pair never repeats and never goes backwards, even if the wall clock does; two processes
creating a BID in the same millisecond are told apart by the 48 random bits.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from datetime import UTC, datetime

from statekit.errors import InvalidBidError

__all__ = ["BID_PATTERN", "bid_time", "check_bid", "is_bid", "new_bid"]

#: The exact shape of a BID; a caller's BID must match it before it is used in a path or key.
BID_PATTERN = re.compile(r"\A[0-9]{8}-[0-9]{4}-[0-9][0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

_MS_DIGITS = 13
_SEQ_DIGITS = 7
_SEQ_LIMIT = 16**_SEQ_DIGITS
_MAX_MS = 10**_MS_DIGITS - 1

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def _after_fork() -> None:
    # A fork while another thread held the lock would leave the child's copy locked forever.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _next_stamp() -> tuple[int, int]:
    """The next (millisecond, sequence) pair of this process: strictly increasing."""
    global _last_ms, _seq
    now = time.time_ns() // 1_000_000
    with _lock:
        if now > _last_ms:
            _last_ms, _seq = now, 0
        else:
            # Same millisecond, or the wall clock went back: keep counting from the last stamp.
            _seq += 1
            if _seq >= _SEQ_LIMIT:
                _last_ms, _seq = _last_ms + 1, 0
        return _last_ms, _seq


def new_bid() -> str:
    """A new BID: sorts after every BID made earlier in this process, unique across processes."""
    ms, seq = _next_stamp()
    if ms > _MAX_MS:  # pragma: no cover - the year 2286
        raise OverflowError("the BID millisecond field is exhausted")
    digits = f"{ms:0{_MS_DIGITS}d}{seq:0{_SEQ_DIGITS}x}{secrets.token_hex(6)}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def is_bid(value: object) -> bool:
    """True when ``value`` is a ``str`` of the exact BID shape."""
    return isinstance(value, str) and BID_PATTERN.match(value) is not None


def check_bid(value: object) -> str:
    """Return ``value`` if it is a valid BID.

    Raises:
        InvalidBidError: it is not (also a ``ValueError``); nothing has used it yet.
    """
    if not is_bid(value):
        raise InvalidBidError(
            f"{value!r} is not a BID (expected 'dddddddd-dddd-dxxx-xxxx-xxxxxxxxxxxx' as made by new_bid())",
            bid=value,
        )
    assert isinstance(value, str)
    return value


def bid_time(bid: str) -> datetime:
    """The creation time of a BID (UTC, millisecond precision).

    Raises:
        InvalidBidError: ``bid`` is not a valid BID.
    """
    digits = check_bid(bid).replace("-", "")
    return datetime.fromtimestamp(int(digits[:_MS_DIGITS]) / 1000, tz=UTC)
