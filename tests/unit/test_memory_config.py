"""``MemoryStateBackend`` constructor: ``cleanup_interval`` must be a positive, finite duration."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from statekit import create_store
from statekit.backends.memory import MemoryStateBackend
from statekit.errors import ConfigError

BAD_INTERVALS = [
    0,
    0.0,
    -1,
    -0.5,
    math.nan,
    math.inf,
    -math.inf,
    timedelta(0),
    timedelta(seconds=-1),
    "1",
    None,
    True,
]


@pytest.mark.parametrize("interval", BAD_INTERVALS, ids=repr)
def test_bad_cleanup_interval_is_a_config_error(interval: object) -> None:
    with pytest.raises(ConfigError, match="cleanup_interval") as info:
        MemoryStateBackend(cleanup_interval=interval)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)  # `except ValueError` keeps working


@pytest.mark.parametrize("interval", [0, math.nan, -3, "0"], ids=repr)
def test_bad_cleanup_interval_through_create_store(interval: object) -> None:
    with pytest.raises(ConfigError, match="cleanup_interval"):
        create_store("memory", cleanup_interval=interval)
    with pytest.raises(ConfigError, match="cleanup_interval"):
        create_store(f"memory://?cleanup_interval={interval}")


@pytest.mark.parametrize(
    ("interval", "seconds"), [(0.25, 0.25), (2, 2.0), (timedelta(milliseconds=1500), 1.5), (1e9, 1e9)]
)
def test_valid_cleanup_interval_is_kept_in_seconds(interval: float | timedelta, seconds: float) -> None:
    backend = MemoryStateBackend(cleanup_interval=interval)
    assert backend._cleanup_interval == seconds
