"""One parser for every duration option (TTLs, intervals, timeouts, retry delays)."""

from __future__ import annotations

import math
from datetime import timedelta

from statekit.errors import ConfigError

__all__ = ["to_seconds"]


def to_seconds(value: object, name: str, *, allow_zero: bool = False) -> float:
    """``value`` (seconds as int/float, or a timedelta) as finite float seconds.

    Positive, or zero too with ``allow_zero``; anything else raises ConfigError naming ``name``.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigError(f"{name} must be seconds (int or float) or a timedelta, got {type(value).__name__}")
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "positive"
        raise ConfigError(f"{name} must be a finite number of seconds, {bound}; got {value!r}")
    return seconds
