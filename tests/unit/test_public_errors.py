"""Every public entry point, driven with the bad inputs a careless or hostile caller passes.

The rule under test: a bad argument raises a statekit error (``StateError``), which for
wrong-argument errors is also the matching builtin (``ValueError``/``TypeError``), never an
untyped ``TypeError``, ``OverflowError`` or ``UnicodeEncodeError`` from deep inside. Specific
expectations are asserted where the right error is obvious (a bad key is ``InvalidKey``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from statekit import KeyValueStore, create_store
from statekit.errors import ConfigError, InvalidKey, StateError
from statekit.persistence import create_persistence_manager, create_retry_manager, create_state_tracker

BAD: list[Any] = ["", b"\xff", "\udc80", 1, None, float("nan"), -1, 1e300, [], {}, "{statekit-x", True]
BAD_KEYS: list[Any] = ["", b"\xff", "\udc80", 1, None, [], "{statekit-x"]
#: Bookkeeping identifiers sit behind a prefix, so a reserved-looking one is a fine identifier.
BAD_NAMES: list[Any] = ["", b"\xff", "\udc80", 1, None, []]

Call = Callable[[Any], Awaitable[Any]]


@pytest.fixture
async def kit() -> AsyncIterator[dict[str, Call]]:
    store = create_store("memory")
    pm = await create_persistence_manager("p", store)
    rm = await create_retry_manager(store=store)
    st = await create_state_tracker("t", store)
    yield {
        "store.put(key)": lambda b: store.put(b, 1),
        "store.put(ttl)": lambda b: store.put("k", 1, ttl=b),
        "store.get": store.get,
        "store.delete": store.delete,
        "store.exists": store.exists,
        "store.incr(key)": lambda b: store.incr(b),
        "store.incr(amount)": lambda b: store.incr("c", b),
        "store.set_if_absent": lambda b: store.set_if_absent(b, 1),
        "store.update": lambda b: store.update(b, lambda current: 1),
        "store.pop": store.pop,
        "store.range_get(start)": store.range_get,
        "store.range_get(end)": lambda b: store.range_get("", b),
        "store.range_get(limit)": lambda b: store.range_get("", limit=b),
        "store.keys": store.keys,
        "store.put_many": lambda b: store.put_many([("ok", 1), (b, 2)]),
        "store.put_many(ttl)": lambda b: store.put_many({"ok": 1}, ttl=b),
        "store.get_many": lambda b: store.get_many(["ok", b]),
        "store.delete_many": lambda b: store.delete_many(["ok", b]),
        "pm.mark_processed": pm.mark_processed,
        "pm.is_processed": pm.is_processed,
        "pm.save_processed_items": lambda b: pm.save_processed_items(["ok", b]),
        "pm.save_state(state)": pm.save_state,
        "pm.save_state(state_id)": lambda b: pm.save_state({"a": 1}, b),
        "pm.load_state": pm.load_state,
        "pm.save_error(item)": lambda b: pm.save_error(b, "boom"),
        "pm.save_error(retry_count)": lambda b: pm.save_error("x", "boom", b),
        "pm.get_failed_items": pm.get_failed_items,
        "rm.should_retry": rm.should_retry,
        "rm.record_retry": lambda b: rm.record_retry(b, "boom"),
        "rm.get_retry_delay": rm.get_retry_delay,
        "st.increment_counter(name)": st.increment_counter,
        "st.increment_counter(amount)": lambda b: st.increment_counter("c", b),
        "st.record_processing_time(op)": lambda b: st.record_processing_time(b, 1.0),
        "st.record_processing_time(seconds)": lambda b: st.record_processing_time("op", b),
    }
    await store.close()


ENTRY_POINTS = [
    "store.put(key)", "store.put(ttl)", "store.get", "store.delete", "store.exists", "store.incr(key)",
    "store.incr(amount)", "store.set_if_absent", "store.update", "store.pop", "store.range_get(start)",
    "store.range_get(end)", "store.range_get(limit)", "store.keys", "store.put_many", "store.put_many(ttl)",
    "store.get_many", "store.delete_many", "pm.mark_processed", "pm.is_processed", "pm.save_processed_items",
    "pm.save_state(state)", "pm.save_state(state_id)", "pm.load_state", "pm.save_error(item)",
    "pm.save_error(retry_count)", "pm.get_failed_items", "rm.should_retry", "rm.record_retry",
    "rm.get_retry_delay", "st.increment_counter(name)", "st.increment_counter(amount)",
    "st.record_processing_time(op)", "st.record_processing_time(seconds)",
]  # fmt: skip


@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_bad_arguments_raise_only_statekit_errors(kit: dict[str, Call], entry: str) -> None:
    untyped = []
    for bad in BAD:
        try:
            await kit[entry](bad)
        except (ConfigError, InvalidKey) as exc:
            if not isinstance(exc, ValueError):
                untyped.append(f"{bad!r}: {type(exc).__name__} is not a ValueError")
        except StateError:
            pass
        except Exception as exc:
            untyped.append(f"{bad!r}: {type(exc).__name__}: {exc}")
    assert not untyped, f"{entry} raised untyped errors:\n" + "\n".join(untyped)


@pytest.mark.parametrize(
    "entry",
    ["store.put(key)", "store.get", "store.delete", "store.incr(key)", "store.pop", "store.put_many",
     "store.get_many", "store.delete_many", "pm.mark_processed", "pm.is_processed", "rm.record_retry",
     "st.increment_counter(name)"],
)  # fmt: skip
async def test_bad_keys_are_invalid_key(kit: dict[str, Call], entry: str) -> None:
    for bad in BAD_KEYS if entry.startswith("store.") else BAD_NAMES:
        with pytest.raises(InvalidKey):
            await kit[entry](bad)


@pytest.mark.parametrize("option", ["default_ttl", "key_prefix", "serializer", "signing_key"])
def test_create_store_bad_options_are_config_errors(option: str) -> None:
    for bad in BAD:
        if bad is None and option != "key_prefix":
            continue  # None is the default: no TTL, the default codec, no signing key
        if option == "default_ttl" and bad in (1, True):
            continue  # one second is a fine TTL (True is refused, but 1 == True in the list check)
        if option == "key_prefix" and isinstance(bad, str) and bad != "\udc80":
            continue  # any other str is a fine prefix
        with pytest.raises(StateError) as info:
            create_store("memory", **{option: bad})
        assert isinstance(info.value, ValueError | TypeError)


async def test_bad_names_for_the_bookkeeping_factories() -> None:
    store = KeyValueStore(create_store("memory").backend)
    for factory in (create_persistence_manager, create_state_tracker):
        for bad in BAD_NAMES:
            with pytest.raises(StateError):
                await factory(bad, store)
    for bad in ["", b"\xff", float("nan"), -1, [], {}, "{statekit-x"]:
        for option in ("max_retries", "backoff_factor", "base_delay"):
            with pytest.raises(ConfigError):
                await create_retry_manager(**{option: bad}, store=store)
