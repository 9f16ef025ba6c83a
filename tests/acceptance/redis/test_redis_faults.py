"""TLS, AUTH/ACL and faults (restart mid-batch, SIGSTOP, unreachable server) on real servers."""

from __future__ import annotations

import asyncio
import logging

import pytest

from statekit import create_store
from statekit.backends import RedisConfig
from statekit.backends.redis import RedisStateBackend
from statekit.errors import StateError, StorageError
from tests.acceptance.redis.conftest import ACL_PASSWORD, ACL_USER, AUTH_PASSWORD
from tests.servers.redis_servers import RedisServer, free_port


async def test_tls_connect(redis_tls: RedisServer) -> None:
    config = RedisConfig.builder().url(redis_tls.url).tls(True, ca_certs=str(redis_tls.ca_file)).build()
    b = RedisStateBackend(config)
    try:
        await b.put("k", b"v")
        await b.batch_put([(f"b{i}", b"x") for i in range(10)])
        assert await b.get("k") == b"v"
        assert await b.batch_get(["b0", "b9"]) == [b"x", b"x"]
        assert await b.health_check()
    finally:
        await b.close()


async def test_tls_with_untrusted_certificate_fails(redis_tls: RedisServer) -> None:
    b = RedisStateBackend(RedisConfig.from_url(redis_tls.url, max_retries=0))
    try:
        with pytest.raises(StorageError):
            await b.get("k")
        assert not await b.health_check()
    finally:
        await b.close()


async def test_password_and_acl_user(redis_auth: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://:{AUTH_PASSWORD}@127.0.0.1:{redis_auth.port}"
    async with create_store(url, key_prefix="app:") as store:
        await store.put_many({"a": 1})
        await store.put("b", 2)
        assert await store.get_many(["a", "b"]) == [1, 2]
        assert AUTH_PASSWORD not in repr(store.backend)
    acl = RedisStateBackend(
        RedisConfig.from_url(
            f"redis://127.0.0.1:{redis_auth.port}",
            username=ACL_USER,
            password=ACL_PASSWORD,
            key_prefix="app:",
        )
    )
    try:
        assert await acl.batch_get(["a"]) == [b"1"]
        await acl.put("c", b"3")
        assert await acl.list_keys() == ["c"]  # its own index: the store above keeps the prefix itself
        assert await acl.incr_by("n", 2) == 2  # request records: "{statekit-r...}:req:<id>"
        assert await acl.get_and_delete("c") == b"3"
        assert ACL_PASSWORD not in repr(acl)
        assert ACL_PASSWORD not in repr(acl.config)
    finally:
        await acl.close()
    assert AUTH_PASSWORD not in caplog.text
    assert ACL_PASSWORD not in caplog.text


@pytest.mark.parametrize("batch", [False, True])
async def test_wrong_password_is_a_state_error_without_the_password(
    redis_auth: RedisServer, batch: bool
) -> None:
    wrong = "wrong-Pa55word-xyz"
    b = RedisStateBackend(
        RedisConfig.from_url(f"redis://{ACL_USER}:{wrong}@127.0.0.1:{redis_auth.port}", key_prefix="app:")
    )
    try:
        with pytest.raises(StateError) as info:
            await (b.batch_get(["a"]) if batch else b.get("a"))
        assert wrong not in str(info.value)
        assert wrong not in repr(info.value)
        assert "authentication" in str(info.value)
        assert b.stats_nowait().retry_count == 0
        assert not await b.health_check()
    finally:
        await b.close()


async def test_unreachable_server() -> None:
    port = free_port()
    b = RedisStateBackend(
        RedisConfig.from_url(f"redis://:pw-not-shown@127.0.0.1:{port}", max_retries=2, retry_base_delay=0.01)
    )
    try:
        with pytest.raises(StorageError) as info:
            await b.put("k", b"v")
        assert "put" in str(info.value)
        assert "'k'" in str(info.value)
        assert "pw-not-shown" not in str(info.value)
        with pytest.raises(StorageError, match="batch_put"):
            await b.batch_put([("k", b"v")])
        assert not await b.health_check()
        stats = b.stats_nowait()
        assert stats.retry_count == 4
        assert stats.error_count == 2
    finally:
        await b.close()


async def test_unreachable_cluster() -> None:
    b = RedisStateBackend(
        RedisConfig.from_url(f"redis+cluster://127.0.0.1:{free_port()}", max_retries=1, retry_base_delay=0.01)
    )
    try:
        with pytest.raises(StorageError, match=r"put key 'k'.*2 attempt"):
            await b.put("k", b"v")
        with pytest.raises(StorageError, match="batch_put"):
            await b.batch_put([("k", b"v")])
        with pytest.raises(StorageError, match="get"):
            await b.get("k")
        assert not await b.health_check()
        assert b.stats_nowait().error_count == 3
    finally:
        await b.close()


async def test_server_restarted_mid_batch(redis_url: str, redis_server: RedisServer) -> None:
    config = RedisConfig.from_url(redis_url, max_retries=20, retry_base_delay=0.05, retry_max_delay=0.2,
                                  pipeline_batch_size=100)  # fmt: skip
    b = RedisStateBackend(config)
    pairs = [(f"k{i}", b"x" * 100) for i in range(200_000)]
    try:
        await b.put("warm", b"1")
        task = asyncio.create_task(b.batch_put(pairs))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(redis_server.restart)  # data is lost: no persistence
        try:
            await task
        except StorageError:
            pass  # allowed: the batch was not reported as applied
        else:
            assert await b.batch_get([pairs[0][0], pairs[-1][0]]) == [b"x" * 100, b"x" * 100]
        await b.put("after", b"2")
        assert await b.get("after") == b"2"
        assert await b.health_check()
    finally:
        await b.close()


@pytest.mark.timeout(60)  # a hang guard only (the timeouts below never fired): never a speed check
@pytest.mark.parametrize("batch", [False, True])
async def test_paused_server_fails_after_its_retries(
    redis_url: str, redis_server: RedisServer, batch: bool
) -> None:
    # How long giving up takes is measured, not asserted: benches/bench_redis.py, "a paused server".
    config = RedisConfig.from_url(redis_url, max_retries=1, retry_base_delay=0.05, retry_max_delay=0.05,
                                  connect_timeout=0.3, read_timeout=0.3, write_timeout=0.3)  # fmt: skip
    b = RedisStateBackend(config)
    try:
        await b.put("k", b"v")
        await b.batch_get(["k"])
        before = b.stats_nowait()
        redis_server.pause()
        with pytest.raises(StorageError, match=r"failed after 2 attempt\(s\)"):
            await (b.batch_get(["k"]) if batch else b.get("k"))
        after = b.stats_nowait()
        # Every attempt timed out and was counted: 1 + max_retries attempts, so one retry, one error.
        assert after.retry_count - before.retry_count == 1
        assert after.error_count - before.error_count == 1
    finally:
        redis_server.resume()
        await b.close()
    b2 = RedisStateBackend(config)
    try:
        assert await b2.get("k") == b"v"
    finally:
        await b2.close()
