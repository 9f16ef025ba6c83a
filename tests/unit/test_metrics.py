"""``statekit.metrics``: real operations, then the Prometheus text format scraped and read back, and
the same figures through OpenTelemetry instruments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci import require_module

prometheus_client = require_module("prometheus_client", "pip install statekit[metrics]")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from statekit import KeyValueStore  # noqa: E402
from statekit.backends import CachedStateBackend, MemoryStateBackend, SqliteStateBackend  # noqa: E402
from statekit.checkpoint import CheckpointCoordinator, CheckpointOptions  # noqa: E402
from statekit.errors import ConfigError  # noqa: E402
from statekit.metrics import StatekitCollector  # noqa: E402

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(collector: StatekitCollector) -> Samples:
    registry = prometheus_client.CollectorRegistry()
    collector.register(registry)
    text = prometheus_client.generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_store_figures_after_real_operations(tmp_path: Path) -> None:
    mem = KeyValueStore(MemoryStateBackend(), key_prefix="jobs:")
    sql = KeyValueStore(SqliteStateBackend(tmp_path / "s.db"))
    try:
        await mem.put("a", "xyz")  # '"xyz"': 5 bytes of JSON
        await mem.put("b", 1, ttl=600)
        assert await mem.get("a") == "xyz"
        assert await mem.get("missing") is None
        await mem.put_many({"c": 2, "d": 3})
        await sql.put("k", [1, 2])
        await sql.get("k")
        await sql.get_stats()  # SQLite counts keys on an awaited call (no I/O at scrape time)
        collector = StatekitCollector().add_store(mem, name="mem").add_store(sql)
        samples = scrape(collector)
    finally:
        await mem.close()
        await sql.close()
    m = {"store": "mem", "backend": "memory"}
    assert value(samples, "statekit_backend_reads_total", result="hit", **m) == 1
    assert value(samples, "statekit_backend_reads_total", result="miss", **m) == 1
    assert value(samples, "statekit_backend_operations_total", op="put", **m) == 4
    assert value(samples, "statekit_backend_operations_total", op="get", **m) == 2
    assert value(samples, "statekit_backend_operations_total", op="batch", **m) == 1
    assert value(samples, "statekit_backend_read_bytes_total", **m) == 5
    assert value(samples, "statekit_backend_written_bytes_total", **m) == 5 + 1 + 1 + 1
    assert value(samples, "statekit_backend_errors_total", **m) == 0
    assert value(samples, "statekit_store_keys", **m) == 4
    assert value(samples, "statekit_store_expiring_keys", **m) == 1
    s = {"store": "sqlite", "backend": "sqlite"}  # unnamed: labelled by its backend type
    assert value(samples, "statekit_backend_reads_total", result="hit", **s) == 1
    assert value(samples, "statekit_store_keys", **s) == 1
    assert ("statekit_backend_retries_total", frozenset(m.items())) not in samples  # Redis only


async def test_cache_figures_and_refresh(tmp_path: Path) -> None:
    cached = CachedStateBackend(SqliteStateBackend(tmp_path / "c.db"), max_entries=2)
    store = KeyValueStore(cached)
    collector = StatekitCollector().add_store(store, name="cached")
    try:
        await store.put_many({"a": 1, "b": 2, "c": 3})  # 3 entries into a cache of 2: one evicted
        for _ in range(3):
            await store.get("c")
        await store.get("a")  # evicted: a miss, read through
        await collector.refresh()
        samples = scrape(collector)
    finally:
        await store.close()
    labels = {"store": "cached", "backend": "sqlite"}
    assert value(samples, "statekit_cache_lookups_total", result="hit", **labels) == 3
    assert value(samples, "statekit_cache_lookups_total", result="miss", **labels) == 1
    assert value(samples, "statekit_cache_evictions_total", **labels) >= 1
    assert value(samples, "statekit_cache_entries", **labels) == 2
    assert value(samples, "statekit_store_keys", **labels) == 3  # counted by refresh()
    assert value(samples, "statekit_backend_reads_total", result="hit", **labels) == 1  # the miss


async def test_checkpoint_figures(tmp_path: Path) -> None:
    store = KeyValueStore(MemoryStateBackend())
    await store.put_many({f"k{i}": i for i in range(100)})
    coordinator = CheckpointCoordinator(store, 3600, CheckpointOptions(tmp_path / "ckpt"))
    collector = StatekitCollector().add_checkpoints(coordinator, name="job")
    before = scrape(collector)
    assert value(before, "statekit_checkpoint_files", checkpoint="job") == 0
    assert ("statekit_checkpoint_age_seconds", frozenset({("checkpoint", "job")})) not in before
    checkpoint_id = await coordinator.create_checkpoint()
    size = (tmp_path / "ckpt" / f"{checkpoint_id}.ckpt").stat().st_size
    after = scrape(StatekitCollector().add_checkpoints(coordinator, name="job"))
    await store.close()
    assert value(after, "statekit_checkpoints_created_total", checkpoint="job") == 1
    assert value(after, "statekit_checkpoint_failures_total", checkpoint="job") == 0
    assert value(after, "statekit_checkpoint_written_bytes_total", checkpoint="job") == size
    assert value(after, "statekit_checkpoint_last_size_bytes", checkpoint="job") == size
    assert value(after, "statekit_checkpoint_files", checkpoint="job") == 1
    assert 0 <= value(after, "statekit_checkpoint_age_seconds", checkpoint="job") < 3600
    assert value(after, "statekit_checkpoint_last_duration_seconds", checkpoint="job") > 0


async def test_opentelemetry_instruments_read_the_same_figures() -> None:
    require_module("opentelemetry.sdk.metrics", "pip install opentelemetry-sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    store = KeyValueStore(MemoryStateBackend())
    await store.put("a", 1)
    await store.get("a")
    await store.get("b")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    StatekitCollector().add_store(store, name="otel").instrument(provider)
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[tuple[str, frozenset[tuple[str, object]]], float] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    points[(metric.name, frozenset((point.attributes or {}).items()))] = point.value
    provider.shutdown()
    await store.close()
    labels = {"store": "otel", "backend": "memory"}
    assert points[("statekit_backend_reads", frozenset({**labels, "result": "hit"}.items()))] == 1
    assert points[("statekit_backend_reads", frozenset({**labels, "result": "miss"}.items()))] == 1
    assert points[("statekit_store_keys", frozenset(labels.items()))] == 1


def test_missing_prometheus_client_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with pytest.raises(ConfigError, match=r"pip install statekit\[metrics\]"):
        StatekitCollector().register()
    with pytest.raises(ConfigError, match=r"pip install statekit\[metrics\]"):
        list(StatekitCollector().add_store(KeyValueStore(MemoryStateBackend())).collect())


def test_names_must_be_unique() -> None:
    collector = StatekitCollector().add_store(KeyValueStore(MemoryStateBackend()), name="a")
    with pytest.raises(ConfigError, match="already reported"):
        collector.add_store(KeyValueStore(MemoryStateBackend()), name="a")


def test_importing_statekit_metrics_needs_neither_prometheus_nor_opentelemetry() -> None:
    code = (
        "import sys, statekit.metrics; "
        "assert 'prometheus_client' not in sys.modules and 'opentelemetry' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
