"""Backend, store, cache and checkpoint figures as Prometheus metrics and OpenTelemetry instruments.

Prometheus (``pip install statekit[metrics]``)::

    import prometheus_client
    from statekit.metrics import StatekitCollector

    collector = StatekitCollector()
    collector.add_store(store, name="jobs")            # a KeyValueStore or a statekit.sync SyncStore
    collector.add_checkpoints(coordinator, name="jobs")
    collector.register()                               # or prometheus_client.REGISTRY.register(collector)
    prometheus_client.start_http_server(9100)

OpenTelemetry (when ``opentelemetry-api`` is installed): ``collector.instrument()`` creates
observable instruments on the global meter provider (or the one given) that read the same figures
at each collection.

Nothing is counted twice: the collector reads the counters the backends and coordinators keep
anyway (``stats_nowait()``, ``cache_info()``, ``CheckpointCoordinator.stats()``), at scrape time,
synchronously and without I/O, except that a checkpoint source reads the headers of the
checkpoint files in its directory (to report the newest one's age and size even across restarts).

What each metric is (labels: ``store`` and ``backend`` on store metrics, ``checkpoint`` on
checkpoint metrics):

* ``statekit_backend_reads_total{result="hit"|"miss"}``, ``statekit_backend_operations_total{op}``
  (``get``, ``put``, ``delete``, ``batch``), ``statekit_backend_errors_total``,
  ``statekit_backend_retries_total`` (Redis), ``statekit_backend_read_bytes_total``,
  ``statekit_backend_written_bytes_total``: the backend's counters since it was opened. Stores that
  share one backend report the same figures (the counters are the backend's, not per prefix).
* ``statekit_store_keys``, ``statekit_store_expiring_keys``: keys under the store's prefix. Live on
  the memory backend; on SQLite and Redis, the figures of the last ``await store.get_stats()`` (or
  ``await collector.refresh()``, which counts them for every store): counting needs I/O, which a
  scrape must not do.
* ``statekit_backend_request_duration_seconds`` (histogram, Redis): each operation from its
  first attempt to its result, retries and backoff included; ``statekit_backend_connections``.
* ``statekit_cache_lookups_total{result}``, ``statekit_cache_evictions_total``,
  ``statekit_cache_entries``: a :class:`~statekit.backends.CachedStateBackend`'s own figures
  (the backend figures above are then those of the backend behind it).
* ``statekit_checkpoints_created_total``, ``statekit_checkpoint_failures_total``,
  ``statekit_checkpoint_restores_total``, ``statekit_checkpoint_restore_failures_total``,
  ``statekit_checkpoints_set_aside_total``, ``statekit_checkpoint_written_bytes_total``,
  ``statekit_checkpoint_last_duration_seconds`` (this process); ``statekit_checkpoint_files``,
  ``statekit_checkpoint_age_seconds`` and ``statekit_checkpoint_last_size_bytes`` (the newest
  readable checkpoint file in the directory; absent while there is none).
"""

from __future__ import annotations

import importlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from statekit.backends.base import BackendStats, StateBackend
from statekit.backends.cached import CachedStateBackend
from statekit.errors import ConfigError

if TYPE_CHECKING:
    from statekit.checkpoint import CheckpointCoordinator

__all__ = ["Metric", "StatekitCollector"]

Kind = Literal["counter", "gauge", "histogram"]
#: A histogram's value: upper bounds (seconds), counts per bucket (not cumulative; one more than
#: the bounds, the last for +Inf) and the sum.
Histogram = tuple[Sequence[float], Sequence[int], float]


@dataclass(slots=True)
class Metric:
    """One metric family read at collection time: name (without ``_total``), kind, help, unit and
    ``(labels, value)`` samples."""

    name: str
    kind: Kind
    doc: str
    unit: str = ""
    samples: list[tuple[dict[str, str], Any]] = field(default_factory=list)


class _HasStore(Protocol):
    @property
    def backend(self) -> StateBackend: ...

    @property
    def key_prefix(self) -> str: ...


@dataclass(slots=True)
class _StoreSource:
    name: str
    backend: StateBackend
    prefix: str


@dataclass(slots=True)
class _CheckpointSource:
    name: str
    coordinator: CheckpointCoordinator


def _require(module: str, install: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"statekit.metrics needs {module.split('.')[0]}: {install}") from None


class StatekitCollector:
    """A Prometheus collector (and OpenTelemetry instrument source) over statekit objects.

    Add stores, backends and checkpoint coordinators, then register it with a Prometheus registry
    (:meth:`register`) and/or OpenTelemetry (:meth:`instrument`). Collection is synchronous and
    does no backend I/O (see the module docstring for what each metric means).

    Args:
        namespace: prefix of every metric name.
        clock: seconds since the epoch (for checkpoint ages).
    """

    def __init__(self, *, namespace: str = "statekit", clock: Callable[[], float] = time.time) -> None:
        self._namespace = namespace
        self._clock = clock
        self._stores: list[_StoreSource] = []
        self._checkpoints: list[_CheckpointSource] = []
        self._recent: tuple[float, list[Metric]] | None = None

    def add_store(self, store: _HasStore, *, name: str | None = None) -> StatekitCollector:
        """Report ``store`` (a ``KeyValueStore`` or ``SyncStore``) under the label ``store=name``
        (default: its key prefix, else its backend type). Returns the collector."""
        label = name if name is not None else (store.key_prefix or store.backend.backend_type)
        return self._add(_StoreSource(label, store.backend, store.key_prefix))

    def add_backend(
        self, backend: StateBackend, *, name: str | None = None, prefix: str = ""
    ) -> StatekitCollector:
        """Report a backend directly (key counts under ``prefix``). Returns the collector."""
        return self._add(_StoreSource(name if name is not None else backend.backend_type, backend, prefix))

    def add_checkpoints(
        self, coordinator: CheckpointCoordinator, *, name: str | None = None
    ) -> StatekitCollector:
        """Report a checkpoint coordinator under ``checkpoint=name`` (default: its directory)."""
        label = name if name is not None else str(coordinator.checkpoint_dir)
        if any(source.name == label for source in self._checkpoints):
            raise ConfigError(f"a checkpoint source named {label!r} is already reported")
        self._checkpoints.append(_CheckpointSource(label, coordinator))
        return self

    def _add(self, source: _StoreSource) -> StatekitCollector:
        if any(s.name == source.name for s in self._stores):
            raise ConfigError(f"a store named {source.name!r} is already reported: give another name=")
        self._stores.append(source)
        return self

    async def refresh(self) -> None:
        """Count the keys of every store now (SQLite and Redis need I/O for it; see the module
        docstring). Call it from the stores' event loop, e.g. periodically."""
        for source in self._stores:
            await source.backend.stats(source.prefix)

    # -- the figures -----------------------------------------------------------------------

    def metrics(self) -> list[Metric]:
        """Every metric with its samples, read now."""
        ns = self._namespace
        out: dict[str, Metric] = {}

        def add(name: str, kind: Kind, doc: str, labels: dict[str, str], value: Any, unit: str = "") -> None:
            metric = out.get(name)
            if metric is None:
                metric = out[name] = Metric(f"{ns}_{name}", kind, doc, unit)
            metric.samples.append((labels, value))

        for source in self._stores:
            self._store_metrics(source, add)
        for checkpoints in self._checkpoints:
            self._checkpoint_metrics(checkpoints, add)
        return list(out.values())

    def _recent_metrics(self) -> list[Metric]:
        """:meth:`metrics`, read at most once per second (one OpenTelemetry collection calls every
        instrument's callback in turn)."""
        now = time.monotonic()
        if self._recent is None or now - self._recent[0] > 1.0:
            self._recent = (now, self.metrics())
        return self._recent[1]

    def _store_metrics(self, source: _StoreSource, add: Callable[..., None]) -> None:
        backend = source.backend
        cache: CachedStateBackend | None = None
        if isinstance(backend, CachedStateBackend):
            cache, backend = backend, backend.backend
        stats: BackendStats = backend.stats_nowait(source.prefix)
        labels = {"store": source.name, "backend": backend.backend_type}
        for result, value in (("hit", stats.hit_count), ("miss", stats.miss_count)):
            add("backend_reads", "counter", "Backend reads by result", {**labels, "result": result}, value)
        for op, value in (
            ("get", stats.get_count),
            ("put", stats.put_count),
            ("delete", stats.delete_count),
            ("batch", stats.batch_count),
        ):
            add("backend_operations", "counter", "Backend operations by kind", {**labels, "op": op}, value)
        add("backend_errors", "counter", "Backend operations that failed", labels, stats.error_count)
        retries = getattr(stats, "retry_count", None)
        if retries is not None:
            add(
                "backend_retries", "counter", "Attempts sent again after a transient failure", labels, retries
            )
        add("backend_read_bytes", "counter", "Value bytes read", labels, stats.bytes_read, "bytes")
        add("backend_written_bytes", "counter", "Value bytes written", labels, stats.bytes_written, "bytes")
        add(
            "store_keys",
            "gauge",
            "Keys under the store's prefix (see statekit.metrics)",
            labels,
            stats.total_keys,
        )
        add(
            "store_expiring_keys",
            "gauge",
            "Keys with a TTL under the store's prefix",
            labels,
            stats.expiring_keys,
        )
        connections = getattr(stats, "active_connections", None)
        if connections is not None:
            add("backend_connections", "gauge", "Open connections to the server", labels, connections)
        histogram = getattr(backend, "latency_histogram", None)
        if histogram is not None:
            add(
                "backend_request_duration_seconds",
                "histogram",
                "Backend operations from first attempt to result (retries included)",
                labels,
                histogram(),
                "seconds",
            )
        if cache is not None:
            info = cache.cache_info()
            for result, key in (("hit", "hits"), ("miss", "misses")):
                add(
                    "cache_lookups",
                    "counter",
                    "Read-through cache lookups by result",
                    {**labels, "result": result},
                    info[key],
                )
            add(
                "cache_evictions",
                "counter",
                "Entries evicted from the cache (LRU)",
                labels,
                info["evictions"],
            )
            add("cache_entries", "gauge", "Entries held by the cache", labels, info["entries"])

    def _checkpoint_metrics(self, source: _CheckpointSource, add: Callable[..., None]) -> None:
        stats = source.coordinator.stats()
        labels = {"checkpoint": source.name}
        for name, doc, value in (
            ("checkpoints_created", "Checkpoints written and verified", stats.checkpoints_created),
            ("checkpoint_failures", "Checkpoints that failed", stats.checkpoint_failures),
            ("checkpoint_restores", "Successful restores", stats.restores),
            ("checkpoint_restore_failures", "Restores that failed", stats.restore_failures),
            (
                "checkpoints_set_aside",
                "Unusable checkpoint files renamed *.corrupt",
                stats.checkpoints_set_aside,
            ),
        ):
            add(name, "counter", doc, labels, value)
        add(
            "checkpoint_written_bytes",
            "counter",
            "Bytes of checkpoint files written",
            labels,
            stats.total_bytes_checkpointed,
            "bytes",
        )
        if stats.last_checkpoint_duration_ms is not None:
            add(
                "checkpoint_last_duration_seconds",
                "gauge",
                "How long the last checkpoint of this process took",
                labels,
                stats.last_checkpoint_duration_ms / 1000,
                "seconds",
            )
        try:
            files = source.coordinator.list_checkpoints()
        except OSError:
            files = []
        add("checkpoint_files", "gauge", "Readable checkpoint files in the directory", labels, len(files))
        if files:
            newest = files[-1]
            age = self._clock() - newest.timestamp.timestamp()
            add(
                "checkpoint_age_seconds", "gauge", "Age of the newest checkpoint file", labels, age, "seconds"
            )
            add(
                "checkpoint_last_size_bytes",
                "gauge",
                "Size of the newest checkpoint file",
                labels,
                newest.size,
                "bytes",
            )

    # -- Prometheus ------------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """The metric families (``prometheus_client`` collector protocol)."""
        core = _require("prometheus_client.core", "pip install statekit[metrics]")
        for metric in self.metrics():
            label_names = list(metric.samples[0][0]) if metric.samples else []
            family: Any
            if metric.kind == "counter":
                family = core.CounterMetricFamily(metric.name, metric.doc, labels=label_names)
                for labels, value in metric.samples:
                    family.add_metric(list(labels.values()), value)
            elif metric.kind == "gauge":
                family = core.GaugeMetricFamily(metric.name, metric.doc, labels=label_names)
                for labels, value in metric.samples:
                    family.add_metric(list(labels.values()), value)
            else:
                family = core.HistogramMetricFamily(metric.name, metric.doc, labels=label_names)
                for labels, (bounds, counts, total) in metric.samples:
                    cumulative = list(itertools.accumulate(counts))
                    buckets = [(_le(b), c) for b, c in zip(bounds, cumulative, strict=False)]
                    buckets.append(("+Inf", cumulative[-1]))
                    family.add_metric(list(labels.values()), buckets, total)
            yield family

    def register(self, registry: Any = None) -> StatekitCollector:
        """Register with ``registry`` (default: ``prometheus_client.REGISTRY``). Returns the collector.

        Raises:
            ConfigError: prometheus_client is not installed (``pip install statekit[metrics]``).
        """
        if registry is None:
            registry = _require("prometheus_client", "pip install statekit[metrics]").REGISTRY
        registry.register(self)
        return self

    # -- OpenTelemetry -----------------------------------------------------------------------

    def instrument(self, meter_provider: Any = None) -> list[Any]:
        """Create OpenTelemetry observable instruments reading these figures; returns them.

        Counters become ``ObservableCounter``, gauges ``ObservableGauge``. OpenTelemetry has no
        asynchronous histogram, so a latency histogram is reported as two observable counters,
        ``<name>.count`` and ``<name>.sum``. Names are the Prometheus ones without ``_total``.
        Instruments are made for the metrics the sources have now: add every store and
        coordinator first (a source added later is only reported under instrument names that
        already exist).

        Raises:
            ConfigError: the OpenTelemetry API is not installed (``pip install opentelemetry-api``).
        """
        otel = _require("opentelemetry.metrics", "pip install opentelemetry-api")
        from statekit import __version__

        provider = meter_provider if meter_provider is not None else otel.get_meter_provider()
        meter = provider.get_meter("statekit", __version__)
        instruments: list[Any] = []
        for metric in self.metrics():
            if metric.kind == "histogram":
                for part, pick in (("count", _hist_count), ("sum", _hist_sum)):
                    instruments.append(
                        meter.create_observable_counter(
                            f"{metric.name}.{part}",
                            callbacks=[self._callback(otel, metric.name, pick)],
                            unit=metric.unit if part == "sum" else "",
                            description=metric.doc,
                        )
                    )
                continue
            create = (
                meter.create_observable_counter if metric.kind == "counter" else meter.create_observable_gauge
            )
            instruments.append(
                create(
                    metric.name,
                    callbacks=[self._callback(otel, metric.name, lambda v: v)],
                    unit=metric.unit,
                    description=metric.doc,
                )
            )
        return instruments

    def _callback(self, otel: Any, name: str, pick: Callable[[Any], float]) -> Callable[[Any], Iterable[Any]]:
        def observe(options: Any) -> Iterable[Any]:
            for metric in self._recent_metrics():
                if metric.name == name:
                    return [otel.Observation(pick(value), labels) for labels, value in metric.samples]
            return []

        return observe


def _le(bound: float) -> str:
    return repr(float(bound))


def _hist_count(value: Histogram) -> float:
    return float(sum(value[1]))


def _hist_sum(value: Histogram) -> float:
    return float(value[2])
