"""Shared fixtures: a controllable clock, real Redis servers, and one fixture per backend kind.

Every behavioural test that takes ``backend`` or ``store`` runs once per backend kind: memory,
SQLite, Redis and Redis Cluster (session-scoped real servers, emptied before each test; without
redis-server or redis-py the Redis cases skip loudly, or fail under ``CI=true``). Redis tests get
the ``redis`` marker automatically: ``pytest -m "not redis"`` leaves them out.

Memory and SQLite expire keys by the test's :class:`FakeClock`; Redis by the server's own clock,
which a test cannot move. So:

* ``elapse(seconds)`` lets time pass on the backend's TTL clock: it advances the FakeClock, or
  really sleeps on Redis. Tests written with short TTLs (``SHORT_TTL``, ``PAST_SHORT_TTL``) check
  expiry on every backend this way.
* ``@pytest.mark.fake_clock("see test_x")`` marks a test that expires keys by moving the FakeClock
  (exact boundaries, TTLs of days): its cases for the kinds in ``SERVER_CLOCK_KINDS`` are not
  generated (removed at collection, one summary line printed); its short-TTL twin runs there.

``@pytest.mark.backend_needs("method", ...)`` (or a module's entry in ``MODULE_BACKEND_NEEDS``)
skips the backend kinds whose class lacks one of those methods, naming it (a failure under
``CI=true``, like every skip: see tests/ci.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from statekit import KeyValueStore
from statekit.backends import MemoryStateBackend, SqliteStateBackend, StateBackend
from tests.ci import pytest_make_collect_report, pytest_runtest_makereport, skip_or_fail
from tests.servers.redis_servers import (
    RedisCluster,
    RedisServer,
    require_redis,
    start_cluster,
    start_standalone,
    start_tls,
)

# Hooks of tests/ci.py, registered by being names of this conftest: under CI=true a skip fails.
__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]


class FakeClock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


BackendFactory = Callable[[Path, FakeClock], StateBackend]

#: Backends whose TTLs run on the given clock.
BACKEND_FACTORIES: dict[str, BackendFactory] = {
    "memory": lambda tmp, clock: MemoryStateBackend(clock=clock),
    "sqlite": lambda tmp, clock: SqliteStateBackend(tmp / "state.db", clock=clock),
}
#: Redis kinds and the fixture giving their (emptied) server's URL.
REDIS_KINDS = {
    "redis": "redis_url",
    "redis-cluster": "cluster_url",
    "redis-paged": "redis_url",  # the same server, the paged index (index_layout="paged")
    "redis-tls": "tls_url",
}
#: RedisConfig options of a kind beyond its URL.
REDIS_KIND_OPTIONS: dict[str, dict[str, object]] = {"redis-paged": {"index_layout": "paged"}}
#: Backends whose TTLs run on a server's clock (a FakeClock cannot expire their keys).
SERVER_CLOCK_KINDS = frozenset(REDIS_KINDS)
BACKEND_KINDS = sorted([*BACKEND_FACTORIES, *REDIS_KINDS])

#: A TTL short enough to wait out for real on Redis, long enough to outlive many round trips.
SHORT_TTL = 0.4
#: How long to wait for SHORT_TTL keys to be gone. Only needs to exceed SHORT_TTL: a sleep never
#: ends early, and Redis checks a key's expiry (in ms) on every access.
PAST_SHORT_TTL = 0.45

#: Backend methods some test modules need, for modules that do not (yet) declare
#: ``pytestmark = pytest.mark.backend_needs(...)`` themselves.
MODULE_BACKEND_NEEDS: dict[str, tuple[str, ...]] = {
    "tests/acceptance/test_checkpoint.py": ("export_items", "replace_prefix"),
}

#: The behaviour suite's Redis key prefix (the integration tests use "t:").
REDIS_KEY_PREFIX = "suite:"
#: Small enough that the suite's batches and ranges span several pipelined chunks.
REDIS_PIPELINE_BATCH = 50


def backend_class(kind: str) -> type | None:
    """The backend class of a kind (None when it cannot be imported: its fixture skips)."""
    if kind == "memory":
        return MemoryStateBackend
    if kind == "sqlite":
        return SqliteStateBackend
    try:
        from statekit.backends.redis import RedisStateBackend
    except ImportError:
        return None
    return RedisStateBackend


#: How many FakeClock-only cases were not generated for server-clock kinds (summary line).
_FAKE_CLOCK_DESELECTED: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    redis_fixtures = {"redis_server", "redis_cluster", "redis_tls", "redis_auth"}
    kept: list[pytest.Item] = []
    removed: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("backend_kind") if callspec is not None else None
        if kind in SERVER_CLOCK_KINDS and item.get_closest_marker("fake_clock") is not None:
            # The FakeClock cannot move a server's clock: no case at all, rather than a skip.
            removed.append(item)
            continue
        kept.append(item)
        if kind in REDIS_KINDS or redis_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)
        if kind is None:
            continue
        needs = [name for mark in item.iter_markers("backend_needs") for name in mark.args]
        needs += MODULE_BACKEND_NEEDS.get(item.nodeid.split("::")[0], ())
        cls = backend_class(kind) if needs else None
        if cls is not None and (missing := [n for n in dict.fromkeys(needs) if not hasattr(cls, n)]):
            item.add_marker(pytest.mark.skip(reason=f"{cls.__name__} has no {'/'.join(missing)} (yet)"))
    if removed:
        config.hook.pytest_deselected(items=removed)
        items[:] = kept
        _FAKE_CLOCK_DESELECTED[:] = [item.nodeid for item in removed]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FAKE_CLOCK_DESELECTED:
        kinds = "/".join(sorted(SERVER_CLOCK_KINDS))
        terminalreporter.write_line(
            f"{len(_FAKE_CLOCK_DESELECTED)} FakeClock-only cases not generated for {kinds} "
            "(their real-time twins run there)"
        )


def require_redis_py() -> None:
    """Skip loudly (fail under CI=true) when redis-py, the Redis backend's client, is missing."""
    if importlib.util.find_spec("redis") is None:
        skip_or_fail("redis-py not installed: the Redis tests need it (pip install statekit[redis])")


# -- real Redis servers (session-scoped; tests/servers/redis_servers.py) -----------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    require_redis()
    server = start_standalone()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    require_redis()
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The standalone server's URL, emptied first."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a fault test may have killed it
    redis_server.resume()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_tls() -> Iterator[RedisServer]:
    require_redis()
    server = start_tls()
    yield server
    server.stop()


@pytest.fixture
def tls_url(redis_tls: RedisServer) -> str:
    """The TLS server's ``rediss://`` URL (trusting its test CA), emptied first."""
    redis_tls.flushall()
    return f"{redis_tls.url}?tls_ca_certs={redis_tls.ca_file}"


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """The cluster's URL, every node emptied first."""
    redis_cluster.flushall()
    return redis_cluster.url


# -- one backend per kind -------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKEND_KINDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def backend_factory(backend_kind: str, request: pytest.FixtureRequest) -> BackendFactory:
    if backend_kind not in REDIS_KINDS:
        return BACKEND_FACTORIES[backend_kind]
    require_redis_py()
    url: str = request.getfixturevalue(REDIS_KINDS[backend_kind])
    from statekit.backends import RedisConfig
    from statekit.backends.redis import RedisStateBackend

    config = RedisConfig.from_url(
        url,
        key_prefix=REDIS_KEY_PREFIX,
        pipeline_batch_size=REDIS_PIPELINE_BATCH,
        **REDIS_KIND_OPTIONS.get(backend_kind, {}),  # type: ignore[arg-type]
    )
    return lambda tmp, clock: RedisStateBackend(config)


@pytest.fixture
async def backend(
    backend_factory: BackendFactory, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StateBackend]:
    be = backend_factory(tmp_path, clock)
    yield be
    await be.close()


@pytest.fixture
async def store(backend: StateBackend) -> AsyncIterator[KeyValueStore]:
    kv = KeyValueStore(backend)
    yield kv
    await kv.close()


@pytest.fixture
def elapse(backend_kind: str, clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    """Let ``seconds`` pass on the backend's TTL clock: advance the FakeClock, or really sleep."""

    async def elapse(seconds: float) -> None:
        if backend_kind in SERVER_CLOCK_KINDS:
            await asyncio.sleep(seconds)
        else:
            clock.advance(seconds)

    return elapse
