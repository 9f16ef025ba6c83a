"""Bad input at the backend and store layers: a typed error before anything is written.

Every backend (memory, SQLite, Redis standalone and cluster) is driven with the keys, values,
TTLs and amounts a hostile or careless caller could pass, and must (a) raise a statekit error
that is also the matching builtin, and (b) leave what was stored before exactly as it was.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit import KeyValueStore
from statekit.backends import StateBackend
from statekit.backends.base import MAX_TTL_SECONDS, RESERVED_KEY_PREFIX, check_key, check_keys
from statekit.errors import ConfigError, InvalidKey, InvalidValue, StateError

BAD_KEYS: list[Any] = [
    "",
    b"",
    b"\xff\xfe",
    b"ok\x80",
    "\udc80",
    "a\ud800b",
    1,
    None,
    1.5,
    ("t",),
    RESERVED_KEY_PREFIX + "index:}:lex",
    "{statekit-index:}:lex",
]
BAD_TTLS: list[Any] = [
    float("nan"),
    float("inf"),
    -float("inf"),
    -1,
    0,
    1e300,
    MAX_TTL_SECONDS * 2,
    timedelta(days=-1),
    "10",
    True,
]


async def _seed(backend: StateBackend) -> dict[str, bytes]:
    before = {"a:1": b"one", "a:2": b"two", "b:1": b"three"}
    await backend.batch_put(list(before.items()))
    return before


async def _unchanged(backend: StateBackend, before: dict[str, bytes]) -> None:
    assert await backend.list_keys("") == sorted(before)
    assert await backend.range("a:") == [(k, v) for k, v in sorted(before.items()) if k.startswith("a:")]
    assert await backend.batch_get(sorted(before)) == [before[k] for k in sorted(before)]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
async def test_bad_keys_raise_invalid_key_and_write_nothing(backend: StateBackend, key: Any) -> None:
    before = await _seed(backend)
    calls = [
        lambda: backend.put(key, b"x"),
        lambda: backend.get(key),
        lambda: backend.exists(key),
        lambda: backend.delete(key),
        lambda: backend.set_if_not_exists(key, b"x"),
        lambda: backend.compare_and_set(key, None, b"x"),
        lambda: backend.get_and_delete(key),
        lambda: backend.incr_by(key, 1),
        lambda: backend.batch_put([("a:3", b"new"), (key, b"x"), ("a:4", b"new")]),
        lambda: backend.batch_get(["a:1", key]),
        lambda: backend.batch_delete(["a:1", key]),
    ]
    for call in calls:
        with pytest.raises(InvalidKey) as info:
            await call()
        assert isinstance(info.value, StateError)
        assert isinstance(info.value, ValueError)
    await _unchanged(backend, before)


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
async def test_bad_ttls_raise_config_error_and_write_nothing(backend: StateBackend, ttl: Any) -> None:
    before = await _seed(backend)
    calls = [
        lambda: backend.put("a:1", b"x", ttl),
        lambda: backend.set_if_not_exists("a:9", b"x", ttl),
        lambda: backend.compare_and_set("a:1", b"one", b"x", ttl),
        lambda: backend.incr_by("a:9", 1, ttl),
        lambda: backend.batch_put([("a:1", b"x"), ("a:9", b"y")], ttl),
    ]
    for call in calls:
        with pytest.raises(ConfigError) as info:
            await call()
        assert isinstance(info.value, ValueError)
    await _unchanged(backend, before)


@pytest.mark.parametrize("limit", [-1, "3", 2.0, True], ids=repr)
async def test_bad_range_limits_raise_config_error(backend: StateBackend, limit: Any) -> None:
    before = await _seed(backend)
    with pytest.raises(ConfigError):
        await backend.range("a:", limit=limit)
    with pytest.raises(ConfigError):
        await backend.range("a:", "b:", limit=limit)
    await _unchanged(backend, before)


@pytest.mark.parametrize("value", ["text", 1, None, ["b"], {"a": b"x"}], ids=repr)
async def test_non_bytes_values_raise_invalid_value(backend: StateBackend, value: Any) -> None:
    before = await _seed(backend)
    for call in (
        lambda: backend.put("a:1", value),
        lambda: backend.batch_put([("a:5", b"fine"), ("a:6", value)]),
        lambda: backend.set_if_not_exists("a:7", value),
        lambda: backend.compare_and_set("a:1", b"one", value),
    ):
        with pytest.raises(InvalidValue) as info:
            await call()
        assert isinstance(info.value, TypeError)
    await _unchanged(backend, before)


@pytest.mark.parametrize("amount", [1.0, "1", True, None, 2**63, -(2**63) - 1], ids=repr)
async def test_bad_amounts_raise_invalid_value(backend: StateBackend, amount: Any) -> None:
    await backend.incr_by("c", 5)
    with pytest.raises(InvalidValue):
        await backend.incr_by("c", amount)
    assert await backend.get("c") == b"5"


async def test_counter_overflow_is_a_storage_error_and_keeps_the_counter(backend: StateBackend) -> None:
    from statekit.errors import StorageError

    await backend.incr_by("c", 2**63 - 2)
    with pytest.raises(StorageError):
        await backend.incr_by("c", 5)
    assert await backend.get("c") == str(2**63 - 2).encode()


async def test_utf8_bytes_keys_reach_the_same_entry(backend: StateBackend) -> None:
    await backend.put(b"window:1", b"data")  # seed 004 writes bytes keys
    assert await backend.get("window:1") == b"data"
    assert await backend.get(b"window:1") == b"data"
    await backend.batch_put([(b"window:2", b"two")])
    assert await backend.list_keys(b"window:") == ["window:1", "window:2"]
    assert await backend.delete(b"window:2")


@pytest.mark.parametrize("default_ttl", [1e300, float("nan"), -5, 0])
def test_store_default_ttl_is_validated(backend: StateBackend, default_ttl: float) -> None:
    with pytest.raises(ConfigError):
        KeyValueStore(backend, default_ttl=default_ttl)


async def test_store_bad_ttl_writes_nothing(store: KeyValueStore) -> None:
    await store.put("k", 1)
    for ttl in BAD_TTLS:
        with pytest.raises(ConfigError):
            await store.put("k", 2, ttl=ttl)
        with pytest.raises(ConfigError):
            await store.put_many({"k": 3, "j": 4}, ttl=ttl)
    assert await store.get("k") == 1
    assert await store.keys() == ["k"]


async def test_reserved_key_with_empty_prefix_is_refused_and_ranges_keep_working(
    store: KeyValueStore,
) -> None:
    await store.put("a", 1)
    with pytest.raises(InvalidKey, match="reserved"):
        await store.put("{statekit-index:}:lex", "boom")
    with pytest.raises(InvalidKey, match="reserved"):
        await store.put_many({"b": 2, "{statekit-x": 3})
    await store.put("b", 2)
    assert await store.keys() == ["a", "b"]
    assert await store.range_get("") == [("a", 1), ("b", 2)]


# -- the fast batch path agrees with the per-key check ------------------------------------

_key_like = st.one_of(
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from([RESERVED_KEY_PREFIX, RESERVED_KEY_PREFIX + "x", "\udc80", "ok"]),
    st.integers(),
    st.none(),
)


def _reference(key: Any) -> str | type[InvalidKey]:
    try:
        return check_key(key)
    except InvalidKey:
        return InvalidKey


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_key_like, max_size=12))
def test_check_keys_agrees_with_check_key(keys: list[Any]) -> None:
    expected = [_reference(key) for key in keys]
    if InvalidKey in expected:
        with pytest.raises(InvalidKey):
            check_keys(keys)
    else:
        assert check_keys(keys) == expected


def test_max_ttl_is_representable_everywhere() -> None:
    # Absolute expiry in ms must fit a signed 64-bit integer (Redis PEXPIREAT, SQLite INTEGER).
    assert (2e9 + MAX_TTL_SECONDS) * 1000 < 2**63
    assert math.isfinite(MAX_TTL_SECONDS)


@pytest.mark.parametrize(
    "loose", [b" 7", b"0_7", b"07", b"-0", b"+7", b"7.0", b"9223372036854775808", b"1e3"]
)
async def test_only_canonical_decimal_is_a_counter_on_every_backend(
    backend: StateBackend, loose: bytes
) -> None:
    from statekit.errors import StorageError

    await backend.put("loose", loose)
    with pytest.raises(StorageError, match="not an integer"):
        await backend.incr_by("loose", 1)
    assert await backend.get("loose") == loose
