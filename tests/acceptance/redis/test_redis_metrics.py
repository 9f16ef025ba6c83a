"""``statekit.metrics`` on a real Redis backend: the request-latency histogram and the retry counter.

The Prometheus helpers and the memory/SQLite figures are in tests/unit/test_metrics.py.
"""

# ruff: noqa: E402 - the imports below need redis-py and prometheus_client, checked first

from __future__ import annotations

from tests.ci import require_module

require_module("redis", "the Redis tests need redis-py: pip install statekit[redis]")
require_module("prometheus_client", "pip install statekit[metrics]")

from statekit import create_store
from statekit.metrics import StatekitCollector
from tests.unit.test_metrics import scrape, value


async def test_redis_latency_histogram_and_retries(redis_url: str) -> None:
    store = create_store(redis_url, key_prefix="m:")
    try:
        for i in range(5):
            await store.put(f"k{i}", i)
        assert await store.get("k1") == 1
        collector = StatekitCollector().add_store(store, name="r")
        await collector.refresh()
        samples = scrape(collector)
        operations = store.backend.stats_nowait().get_count + store.backend.stats_nowait().put_count
    finally:
        await store.close()
    labels = {"store": "r", "backend": "redis"}
    count = value(samples, "statekit_backend_request_duration_seconds_count", **labels)
    assert count >= operations == 6  # refresh() adds its own requests
    assert value(samples, "statekit_backend_request_duration_seconds_bucket", le="+Inf", **labels) == count
    assert value(samples, "statekit_backend_request_duration_seconds_sum", **labels) > 0
    buckets = sorted(
        (float(dict(k[1])["le"]), v)
        for k, v in samples.items()
        if k[0] == "statekit_backend_request_duration_seconds_bucket"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert value(samples, "statekit_backend_retries_total", **labels) == 0
    assert value(samples, "statekit_store_keys", **labels) == 5
