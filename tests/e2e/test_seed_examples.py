"""Every example of seed 001 (the key-value store document), as written, with statekit's imports.

Snippets that use top-level ``await`` are wrapped in ``async def``; snippets that call the
removed module-level helpers (``put(...)``) get ``put = store.put`` first. Output the seed
documents in comments is asserted.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from statekit.errors import SerializationFailed
from tests.conftest import FakeClock


async def test_quick_start_basic_usage(capsys: pytest.CaptureFixture[str]) -> None:
    from statekit import create_store

    # Create a store instance
    store = create_store(store_type="memory")

    # Store and retrieve state data
    await store.put("user:123", {"name": "John Doe", "email": "john@example.com"})
    user_data = await store.get("user:123")
    print(user_data)  # {"name": "John Doe", "email": "john@example.com"}

    # Check if state key exists
    if await store.exists("user:123"):
        print("User state data found")

    # Delete state data
    await store.delete("user:123")

    assert user_data == {"name": "John Doe", "email": "john@example.com"}
    assert "User state data found" in capsys.readouterr().out
    assert not await store.exists("user:123")


async def test_range_operations() -> None:
    from statekit import create_store

    # Create a store instance
    store = create_store(store_type="memory")

    # Store multiple items
    for i in range(10):
        await store.put(f"item:{i}", f"value_{i}")

    # Get range of items
    results = await store.range_get("item:3", "item:7")
    # Returns: [("item:3", "value_3"), ("item:4", "value_4"), ...]

    # Get all items with prefix
    all_items = await store.range_get("item:")
    # Returns all items starting with "item:"

    # Get limited results
    limited_results = await store.range_get("item:", limit=5)
    # Returns first 5 items

    assert results[:2] == [("item:3", "value_3"), ("item:4", "value_4")]
    assert [k for k, _ in results] == ["item:3", "item:4", "item:5", "item:6"]
    assert all_items == [(f"item:{i}", f"value_{i}") for i in range(10)]
    assert limited_results == all_items[:5]


async def test_in_memory_store_example() -> None:
    from statekit import create_store

    # Create an in-memory store
    store = create_store(
        store_type="memory",
        serializer="json",
        default_ttl=3600,  # 1 hour default TTL
    )

    # Use the store
    await store.put("key", "value")
    value = await store.get("key")
    await store.close()

    assert value == "value"


async def test_ttl_examples() -> None:
    from statekit import create_store

    store = create_store(store_type="memory")
    put = store.put

    # TTL in seconds
    await put("temp_data", "value", ttl=300)  # 5 minutes

    # TTL using timedelta
    await put("session_data", "value", ttl=timedelta(hours=2))

    # No TTL (uses default or never expires)
    await put("permanent_data", "value")

    stats = store.get_stats()
    assert (stats["total_keys"], stats["expiring_keys"]) == (3, 2)


async def test_serialization_options() -> None:
    from statekit import create_store

    # JSON serialization (default, human-readable)
    store = create_store(
        store_type="memory",
        serializer="json",
    )

    # Pickle serialization (supports more Python types)
    store = create_store(
        store_type="memory",
        serializer="pickle",
    )

    # Store complex objects
    # As written, the seed's value holds a lambda, which no pickle can encode: statekit
    # raises SerializationFailed naming the key (and writes nothing) instead of failing later.
    with pytest.raises(SerializationFailed, match="complex_data"):
        await store.put(
            "complex_data",
            {
                "datetime": datetime.now(),
                "set_data": {1, 2, 3},
                "function": lambda x: x * 2,
            },
        )
    assert not await store.exists("complex_data")

    # Without the lambda, datetimes and sets round-trip.
    value = {"datetime": datetime.now(), "set_data": {1, 2, 3}}
    await store.put("complex_data", value)
    assert await store.get("complex_data") == value


async def test_context_manager_usage() -> None:
    from statekit import get_store_context

    async with get_store_context("memory", serializer="json") as store:
        await store.put("key", "value")
        result = await store.get("key")
        # Store automatically closed when exiting context

    assert result == "value"
    assert not await store.health_check()


async def test_store_management(capsys: pytest.CaptureFixture[str]) -> None:
    from statekit import create_store

    # Create a store instance
    store = create_store(store_type="memory")

    # Use store methods directly
    await store.put("key", "value")
    value = await store.get("key")

    # Get store statistics
    if hasattr(store, "get_stats"):
        stats = store.get_stats()
        print(f"Total keys: {stats['total_keys']}")

    assert value == "value"
    assert "Total keys: 1" in capsys.readouterr().out


async def test_in_memory_store_stats_monitoring(capsys: pytest.CaptureFixture[str]) -> None:
    from statekit import create_store

    store = create_store(store_type="memory")
    await store.put("a", 1, ttl=60)
    await store.put("b", 2)

    # In-memory store stats
    if hasattr(store, "get_stats"):
        stats = store.get_stats()
        print(f"Total keys: {stats['total_keys']}")
        print(f"Expiring keys: {stats['expiring_keys']}")

    out = capsys.readouterr().out
    assert "Total keys: 2" in out
    assert "Expiring keys: 1" in out


async def test_switching_between_stores_code_remains_the_same() -> None:
    from statekit import create_store

    # Development (in-memory)
    store = create_store(store_type="memory")

    # Code remains the same
    await store.put("key", "value")
    value = await store.get("key")
    assert value == "value"


async def test_serialization_errors_troubleshooting() -> None:
    from statekit import create_store

    # Use pickle for complex objects
    store = create_store(store_type="memory", serializer="pickle")

    # Or handle serialization manually
    store = create_store(store_type="memory")
    data = {"complex": object}
    try:
        await store.put("key", data)
    except Exception:
        # Fallback to JSON-safe data
        await store.put("key", json.loads(json.dumps(data, default=str)))

    assert await store.get("key") == {"complex": "<class 'object'>"}


async def test_ttl_issues_troubleshooting(capsys: pytest.CaptureFixture[str]) -> None:
    import statekit

    # Stand-ins: the snippet sleeps 2 s to watch a 1 s TTL run out; here its sleep moves the store's
    # clock instead, so the same lines run without waiting on the wall clock.
    clock = FakeClock()

    def create_store(**options: Any) -> statekit.KeyValueStore:
        return statekit.create_store(clock=clock, **options)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    asyncio = SimpleNamespace(sleep=sleep)

    store = create_store(store_type="memory")

    # Check if TTL is working
    await store.put("test", "value", ttl=1)
    print(f"Exists: {await store.exists('test')}")
    await asyncio.sleep(2)
    print(f"Exists after TTL: {await store.exists('test')}")

    out = capsys.readouterr().out
    assert "Exists: True" in out
    assert "Exists after TTL: False" in out


async def test_frontier_provider_caching_integration_example() -> None:
    from statekit import create_store

    store = create_store(store_type="memory")

    class CachingFrontierProvider:
        def __init__(self, base_url: str):
            self.base_url = base_url

        async def get_next_urls(self, ctx: object) -> list[dict[str, str]]:
            # Check if we've already processed this recently
            cache_key = f"processed:{self.base_url}"
            if await store.exists(cache_key):
                return []  # Already processed

            # Mark as processed with 1-hour TTL
            await store.put(cache_key, True, ttl=3600)

            # Return URLs to process
            return [{"url": f"{self.base_url}/page1"}]

        async def handle_url_processed(
            self, request: dict[str, str], bundle_refs: list[object], ctx: object
        ) -> None:
            # Store processing results
            result_key = f"result:{request['url']}"
            await store.put(
                result_key,
                {
                    "url": request["url"],
                    "bundle_count": len(bundle_refs),
                    "timestamp": datetime.now().isoformat(),
                },
                ttl=timedelta(hours=24),
            )

    provider = CachingFrontierProvider("https://example.com")
    assert await provider.get_next_urls(None) == [{"url": "https://example.com/page1"}]
    assert await provider.get_next_urls(None) == []
    await provider.handle_url_processed({"url": "https://example.com/page1"}, [1, 2], None)
    result = await store.get("result:https://example.com/page1")
    assert result["bundle_count"] == 2
