"""The backend dict-model (``make_backend_machine``) against real Redis: standalone and cluster.

Redis expires keys by the server's clock, which the machine's FakeClock cannot move, so here the
clock never advances and every TTL is stretched to at least 1000 s (nothing expires during a run,
in the model or in Redis, while TTL bookkeeping — expiring key counts — is still checked). Key
counts come from ``refresh_stats()``, the backend's async path to the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant

from tests.acceptance.redis.test_redis_paged_index import small_pages
from tests.acceptance.stateful.test_backend_model import make_backend_machine
from tests.ci import require_module
from tests.conftest import FakeClock
from tests.servers.redis_servers import RedisCluster, RedisServer

redis = require_module("redis", "the Redis tests need redis-py: pip install statekit[redis]")

from statekit.backends import RedisConfig  # noqa: E402
from statekit.backends.redis import RedisStateBackend  # noqa: E402

TTL_STRETCH = 1000.0


class LongTTL:
    """Passes every call through to a RedisStateBackend, with TTLs multiplied by TTL_STRETCH."""

    def __init__(self, backend: RedisStateBackend) -> None:
        self.inner = backend
        self.backend_type = backend.backend_type
        self.persistent = backend.persistent

    @staticmethod
    def _ttl(ttl: float | None) -> float | None:
        return None if ttl is None else ttl * TTL_STRETCH

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await self.inner.put(key, value, self._ttl(ttl))

    async def batch_put(self, pairs: Iterable[tuple[str, bytes]], ttl: float | None = None) -> None:
        await self.inner.batch_put(pairs, self._ttl(ttl))

    async def set_if_not_exists(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        return await self.inner.set_if_not_exists(key, value, self._ttl(ttl))

    async def incr_by(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        return await self.inner.incr_by(key, amount, self._ttl(ttl))

    async def expire(self, key: str, ttl: float) -> bool:
        return await self.inner.expire(key, ttl * TTL_STRETCH)

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        return await self.inner.touch(key, self._ttl(ttl))

    async def ttl(self, key: str) -> float | None:
        left = await self.inner.ttl(key)
        return None if left is None else left / TTL_STRETCH

    async def batch_get(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self.inner.batch_get(keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def redis_machine(
    url_holder: dict[str, Any], flush: Any, layout: str = "flat"
) -> type[RuleBasedStateMachine]:
    def factory(tmp: Path, clock: FakeClock) -> Any:
        config = RedisConfig.from_url(
            url_holder["url"], key_prefix="m:", pipeline_batch_size=3, index_layout=layout
        )
        return LongTTL(RedisStateBackend(config))

    base = make_backend_machine(factory)

    class RedisMachine(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            flush()
            super().__init__()

        # Redis TTLs run on the server's clock: the fake clock must not move.
        def advance_clock(self, seconds: float) -> None:
            raise AssertionError("not a rule here")

        @invariant()
        def key_counts_match(self) -> None:
            stats = self.run(self.backend.refresh_stats())
            items = self.live_items()
            assert stats.total_keys == len(items)
            assert stats.expiring_keys == sum(1 for k, _ in items if self.model[k][1] is not None)

    return RedisMachine


_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# The servers are the suite's session-scoped ones (tests/conftest.py); each machine run flushes them.


# The paged layout runs with pages of PAGE_MAX_SMALL members (a patched constant of the Lua
# library), so that the machine's few dozen keys split pages, empty them and read across them.
PAGE_MAX_SMALL = 3


@pytest.fixture(params=["flat", "paged"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "paged":
        small_pages(monkeypatch, PAGE_MAX_SMALL)
    return str(request.param)


def test_redis_standalone_model(redis_url: str, redis_server: RedisServer, layout: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        machine = redis_machine({"url": redis_url}, client.flushall, layout)
        machine.TestCase.settings = _SETTINGS
        machine.TestCase("runTest").runTest()
    finally:
        client.close()


def test_redis_cluster_model(cluster_url: str, redis_cluster: RedisCluster, layout: str) -> None:
    clients = [redis.Redis(host="127.0.0.1", port=n.port) for n in redis_cluster.nodes]

    def flush() -> None:
        for client in clients:
            client.flushall()

    try:
        machine = redis_machine({"url": cluster_url}, flush, layout)
        machine.TestCase.settings = _SETTINGS
        machine.TestCase("runTest").runTest()
    finally:
        for client in clients:
            client.close()
