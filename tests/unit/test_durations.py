"""Duration strings ("90s", "2h", "1h30m") wherever a TTL or interval is accepted, env vars included."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statekit import create_store
from statekit._factory import configure_global_store, reset_global_store
from statekit.backends import MemoryStateBackend
from statekit.errors import ConfigError
from statekit.store import KeyValueStore
from tests.conftest import FakeClock


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("2h", 7200),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5d", 129600),
        ("1w", 604800),
        (" 2 H ", 7200),
    ],
)
def test_duration_strings_are_seconds(text: str, seconds: float) -> None:
    store = KeyValueStore(MemoryStateBackend(), default_ttl=text)
    assert store.default_ttl == seconds


@pytest.mark.parametrize("text", ["10", "h", "1x", "-5s", "1e3s", "", "0s", "2h-", "s2", "9" * 100 + "s"])
def test_bad_duration_strings_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        KeyValueStore(MemoryStateBackend(), default_ttl=text)


@given(st.integers(0, 1000), st.integers(0, 59), st.integers(1, 59))
def test_compound_durations_add_up(hours: int, minutes: int, seconds: int) -> None:
    store = KeyValueStore(MemoryStateBackend(), default_ttl=f"{hours}h{minutes}m{seconds}s")
    assert store.default_ttl == hours * 3600 + minutes * 60 + seconds


async def test_a_put_with_a_duration_string_expires_then() -> None:
    clock = FakeClock()
    async with KeyValueStore(MemoryStateBackend(clock=clock)) as store:
        await store.put("k", 1, ttl="90s")
        await store.put_many({"j": 2}, ttl=timedelta(minutes=2))
        clock.advance(89)
        assert await store.get("k") == 1
        clock.advance(2)
        assert await store.get("k") is None
        assert await store.get("j") == 2


async def test_duration_strings_from_urls_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    store = create_store("memory://?default_ttl=2h&cleanup_interval=500ms")
    assert store.default_ttl == 7200
    await store.close()
    monkeypatch.setenv("STATEKIT_STORE_TYPE", "memory")
    monkeypatch.setenv("STATEKIT_STORE_DEFAULT_TTL", "1h30m")
    reset_global_store()
    try:
        assert configure_global_store().default_ttl == 5400
    finally:
        reset_global_store()
