"""Redis fixtures for the Redis acceptance tests: TLS and AUTH servers, Redis backends on the suite's servers.

The standalone server and the cluster (``redis_server``/``redis_url``, ``redis_cluster``/``cluster_url``)
are session-scoped fixtures of tests/conftest.py, shared with the backend-parametrized tests.
"""

# ruff: noqa: E402 - the imports below need redis-py, checked first by require_module

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.ci import require_module
from tests.servers.redis_servers import RedisServer, require_redis, start_standalone

require_module("redis", "the Redis tests need redis-py: pip install statekit[redis]")

from statekit.backends import RedisConfig
from statekit.backends.redis import RedisStateBackend

AUTH_PASSWORD = "s3cret-Pa55-never-shown"
ACL_USER = "pipeline"
ACL_PASSWORD = "acl-Pa55-never-shown"


@pytest.fixture(scope="session")
def redis_auth() -> Iterator[RedisServer]:
    """A server with a default-user password and an ACL user limited to ``app:*`` keys, the indexes and
    the request records."""
    require_redis()
    server = start_standalone("--requirepass", AUTH_PASSWORD)
    server.cli(
        "ACL", "SETUSER", ACL_USER, "on", f">{ACL_PASSWORD}", "~app:*",
        "~{statekit-index:app:}*", "~{statekit-index:}*", "~{statekit-r*",
        "+@all", password=AUTH_PASSWORD,
    )  # fmt: skip
    yield server
    server.stop()


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
