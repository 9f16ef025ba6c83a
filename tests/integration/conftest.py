"""Session-scoped Redis servers (started once, flushed between tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.integration.redis_servers import (
    RedisCluster,
    RedisServer,
    require_redis,
    start_cluster,
    start_standalone,
    start_tls,
)

pytest.importorskip("redis", reason="the Redis tests need redis-py: pip install statekit[redis]")

from statekit.backends import RedisConfig
from statekit.backends.redis import RedisStateBackend

AUTH_PASSWORD = "s3cret-Pa55-never-shown"
ACL_USER = "pipeline"
ACL_PASSWORD = "acl-Pa55-never-shown"


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


@pytest.fixture(scope="session")
def redis_tls() -> Iterator[RedisServer]:
    require_redis()
    server = start_tls()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_auth() -> Iterator[RedisServer]:
    """A server with a default-user password and an ACL user limited to ``app:*`` keys and the indexes."""
    require_redis()
    server = start_standalone("--requirepass", AUTH_PASSWORD)
    server.cli(
        "ACL", "SETUSER", ACL_USER, "on", f">{ACL_PASSWORD}", "~app:*",
        "~{statekit-index:app:}*", "~{statekit-index:}*",
        "+@all", password=AUTH_PASSWORD,
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The standalone server's URL, emptied first."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a fault test may have killed it
    redis_server.resume()
    redis_server.cli("FLUSHALL")
    return redis_server.url


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisStateBackend]:
    b = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="t:", pipeline_batch_size=50))
    yield b
    await b.close()


@pytest.fixture
async def cluster_backend(cluster_url: str) -> AsyncIterator[RedisStateBackend]:
    b = RedisStateBackend(RedisConfig.from_url(cluster_url, key_prefix="t:", pipeline_batch_size=50))
    yield b
    await b.close()
