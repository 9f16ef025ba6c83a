"""One parser for every duration option (TTLs, intervals, timeouts, retry delays)."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Final

from statekit.errors import ConfigError

__all__ = ["parse_duration", "to_seconds"]

_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
# One or more "<number><unit>" parts, e.g. "90s", "2h", "1h30m", "1.5d", "250ms". A unit is
# required: a bare "10" is refused rather than guessed (seconds? minutes?).
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION: Final = re.compile(rf"(?:{_PART.pattern})+")


def parse_duration(text: str, name: str) -> float:
    """Seconds in a duration string such as ``"90s"``, ``"2h"``, ``"1h30m"`` or ``"250ms"``.

    Raises ConfigError naming ``name`` for anything else (a bare number included: say ``"10s"``).
    """
    compact = text.strip().lower().replace(" ", "")
    if len(compact) > 64 or not _DURATION.fullmatch(compact):
        raise ConfigError(
            f"{name} must be a duration such as '90s', '2h', '1h30m' or '250ms' (units ms, s, m, h, d, w), "
            f"got {text!r}"
        )
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(compact))


def to_seconds(value: object, name: str, *, allow_zero: bool = False) -> float:
    """``value`` (seconds as int/float, a timedelta, or a duration string like ``"2h"``) as finite
    float seconds.

    Positive, or zero too with ``allow_zero``; anything else raises ConfigError naming ``name``.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_duration(value, name)
    else:
        raise ConfigError(
            f"{name} must be seconds (int or float), a timedelta or a duration string like '2h', "
            f"got {type(value).__name__}"
        )
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "positive"
        raise ConfigError(f"{name} must be a finite number of seconds, {bound}; got {value!r}")
    return seconds
