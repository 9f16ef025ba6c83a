"""``RedisLock``: a lease on Redis (standalone or cluster) with renewal, loss reporting and fences.

Keys (one hash slot per lock name, so the scripts run on one cluster node)::

    {statekit-lock:<name>}:lease   the holder's random token, with a PX expiry of ``ttl``
    {statekit-lock:<name>}:fence   the fence counter; never expires

* acquire: one script does ``SET lease token NX PX ttl`` and, only when that succeeded,
  ``INCR fence``. The script is idempotent for its token (re-sent after a lost reply it returns
  the same fence), so an acquire whose reply was lost never leaves a lease nobody knows of.
  When the counter is missing (a fresh server, or one restarted without persistence) it is
  seeded from the server's clock in microseconds, so tokens keep increasing even then.
* renew / release: compare-and-``PEXPIRE`` / compare-and-``DEL`` scripts on the token.
* The client keeps a local deadline: the monotonic time at which the last successful acquire or
  renewal was *sent*, plus ``ttl``. The server's expiry is never earlier than that, so once the
  deadline passes without a confirmed renewal the lease is declared lost, whether or not the
  server is reachable (a process frozen by ``SIGSTOP`` sees it at once when it resumes).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from statekit._fence import Fence
from statekit._utils.durations import to_seconds
from statekit.backends import RedisConfig
from statekit.backends.base import RESERVED_KEY_PREFIX
from statekit.backends.redis._config import redact_url
from statekit.errors import ConfigError, StorageError
from statekit.locks._lease import LeaseLock, OnLost, logger

if TYPE_CHECKING:
    from statekit.locks._sync_redis import SyncRedisLock

__all__ = ["RedisLock", "client_options", "redis_config_of"]

#: ``redis.call('TIME')`` is [seconds, microseconds]; the seed is their concatenation, so no
#: float (Lua 5.1 numbers are doubles and ``tostring`` would round a 16-digit value).
ACQUIRE_SCRIPT: Final = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return {1, redis.call('GET', KEYS[2]) or '0'}
end
if current then
  return {0, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], t[1] .. string.format('%06d', tonumber(t[2])))
end
return {1, redis.call('INCR', KEYS[2])}
"""
RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
EXTEND_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

DEFAULT_TTL: Final = 30.0
#: Renewal attempts that fail to connect are retried after this long (doubling up to the max),
#: always within the remaining lease.
_RETRY_START: Final = 0.02
_RETRY_MAX: Final = 0.5


def redis_config_of(target: object) -> RedisConfig:
    """The :class:`RedisConfig` behind a URL, a config, a Redis backend or a store on Redis.

    Raises:
        ConfigError: ``target`` is none of those (a store on another backend, say).
    """
    if isinstance(target, str):
        return RedisConfig.from_url(target)
    if isinstance(target, RedisConfig):
        return target
    backend = getattr(target, "backend", target)  # a KeyValueStore exposes its backend
    config = getattr(backend, "config", None)
    if isinstance(config, RedisConfig):
        return config
    kind = getattr(backend, "backend_type", type(target).__name__)
    raise ConfigError(
        f"RedisLock needs a redis:// URL, a RedisConfig, a RedisStateBackend or a KeyValueStore on Redis; "
        f"got {kind!r}"
    )


class RedisLock(LeaseLock):
    """A distributed lock on Redis, standalone or cluster.

    Example::

        lock = RedisLock("redis://localhost:6379/0", "job-42", ttl=30)
        async with lock as fence:
            await store.put("report", data, fence=fence)

    Args:
        target: a ``redis://`` / ``rediss://`` / ``redis+cluster://`` URL, a
            :class:`~statekit.backends.RedisConfig`, a ``RedisStateBackend`` or a
            ``KeyValueStore`` on Redis. The lock opens its own small connection pool from that
            config (timeouts, TLS, credentials); it never borrows the backend's connections.
        name: the lock's name; every holder of the same name on the same server (database)
            excludes the others. Names are global to the server: a store's ``key_prefix`` does
            not apply.
        ttl: lease length in seconds (or timedelta). A holder that stops renewing (crashed,
            frozen, cut off) loses the lock at most ``ttl`` after its last renewal.
        renew_every: seconds between renewals (default ``ttl / 3``); must be below ``ttl``.
        on_lost: called once, with the lock, when a lease is lost (a coroutine function is
            scheduled as a task).

    A lost lease is reported four ways: ``on_lost``, :attr:`lost`, :meth:`ensure_held` and
    :class:`~statekit.errors.LockLost` raised when the ``async with`` block ends (or by
    :meth:`release`). Renewal that cannot reach the server within the remaining lease declares
    the lease lost; it never assumes the lease survived.
    """

    _kind = "Redis lock"

    def __init__(
        self,
        target: Any,
        name: str,
        ttl: float | timedelta = DEFAULT_TTL,
        renew_every: float | timedelta | None = None,
        on_lost: OnLost | None = None,
    ) -> None:
        super().__init__(name, on_lost)
        self._config = redis_config_of(target)
        self._ttl = to_seconds(ttl, "ttl")
        self._ttl_ms = max(1, math.ceil(self._ttl * 1000))
        self._renew_every = self._ttl / 3 if renew_every is None else to_seconds(renew_every, "renew_every")
        if self._renew_every >= self._ttl:
            raise ConfigError(f"renew_every ({self._renew_every}s) must be shorter than ttl ({self._ttl}s)")
        tag = f"{RESERVED_KEY_PREFIX}lock:{name}}}"
        self._lease_key = tag + ":lease"
        self._fence_key = tag + ":fence"
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._token = ""
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def ttl(self) -> float:
        """Lease length in seconds."""
        return self._ttl

    @property
    def renew_every(self) -> float:
        """Seconds between renewals."""
        return self._renew_every

    @property
    def keys(self) -> tuple[str, str]:
        """The lease key and the fence-counter key in Redis."""
        return self._lease_key, self._fence_key

    def sync(self) -> SyncRedisLock:  # type: ignore[override]
        """This lock for code that is not async: ``with RedisLock(...).sync() as fence: ...``.

        Returns a :class:`~statekit.locks.SyncRedisLock` on redis-py's blocking client: one
        round trip per acquire or release on the caller's thread, renewal on a daemon thread.
        """
        from statekit.locks._sync_redis import SyncRedisLock

        return SyncRedisLock(self)

    def __repr__(self) -> str:
        urls = ", ".join(redact_url(u) for u in self._config.urls)
        return f"{super().__repr__()[:-1]}, ttl={self._ttl}, urls=[{urls}])"

    # -- LeaseLock hooks -----------------------------------------------------------------

    def _lease_expired(self) -> bool:
        return time.monotonic() >= self._deadline

    async def _acquire_once(self) -> Fence | None:
        token = secrets.token_hex(16)
        sent = time.monotonic()
        reply = await self._run("acquire", [token, self._ttl_ms], retry_unknown=True)
        if int(reply[0]) != 1:
            return None
        self._token = token
        self._deadline = sent + self._ttl
        return Fence(self._name, int(reply[1]))

    async def _release_remote(self) -> None:
        # No client-side timeout here: a release that deletes our token proves the lease was
        # still ours; one that fails is judged by the clock (the socket timeout bounds the wait).
        try:
            released = await self._run("release", [self._token])
        except StorageError:
            if self._lease_expired():
                self._declare_lost("the lease ran out while the release could not reach the server")
                return
            raise  # still within the lease: the key expires by itself within ttl
        if int(released) != 1:
            self._declare_lost("its key no longer held this holder's token (expired or taken over)")

    async def _verify(self) -> None:
        await self._extend()

    # Renewal: a timer, and a task only while a renewal is in flight (a task per lease would
    # cost more than the acquire's round trip).

    def _start_keeper(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._renew_every, self._renew_due)

    def _renew_due(self) -> None:
        self._timer = None
        if self._held and not self._lost:
            self._keeper = asyncio.get_running_loop().create_task(
                self._keep(), name=f"statekit-lock-renewal-{self._name}"
            )

    async def _keep(self) -> None:
        if await self._extend() and self._held and not self._lost:
            self._timer = asyncio.get_running_loop().call_later(self._renew_every, self._renew_due)

    async def _stop_keeper(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        await super()._stop_keeper()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        self._scripts = {}
        if client is not None:
            await client.aclose()

    # -- internals -----------------------------------------------------------------------

    async def _extend(self) -> bool:
        """Renew the lease (retrying within the remaining lease); False once it is lost."""
        delay = _RETRY_START
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self._declare_lost("no renewal reached the server within the remaining lease")
                return False
            sent = time.monotonic()
            try:
                async with asyncio.timeout(remaining):
                    extended = await self._run("extend", [self._token, self._ttl_ms])
            except TimeoutError:
                self._declare_lost("no renewal reached the server within the remaining lease")
                return False
            except StorageError as exc:
                logger.info(
                    "renewal of Redis lock %r failed (%s); retrying within the lease", self._name, exc
                )
                await asyncio.sleep(min(delay, max(0.0, self._deadline - time.monotonic())))
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if not self._held or self._lost:
                return False
            if int(extended) != 1:
                self._declare_lost("its key no longer held this holder's token (expired or taken over)")
                return False
            self._deadline = sent + self._ttl
            return True

    def _redis(self) -> Any:
        if self._client is None:
            self._client = _make_client(self._config)
            register = self._client.register_script
            self._scripts = {
                "acquire": register(ACQUIRE_SCRIPT),
                "release": register(RELEASE_SCRIPT),
                "extend": register(EXTEND_SCRIPT),
            }
        return self._client

    async def _run(self, script: str, args: list[Any], *, retry_unknown: bool = False) -> Any:
        """Run one of the scripts on the lock's keys; StorageError when the server fails.

        ``retry_unknown``: the script is idempotent, so a request whose reply was lost is
        re-sent (up to ``max_retries`` times) instead of leaving its outcome unknown.
        """
        from redis.exceptions import NoScriptError, RedisError

        self._redis()
        keys = [self._lease_key, self._fence_key] if script == "acquire" else [self._lease_key]
        attempts = 1 + (self._config.max_retries if retry_unknown else 0)
        delay = self._config.retry_base_delay
        for attempt in range(attempts):
            try:
                return await self._scripts[script](keys=keys, args=args)
            except NoScriptError:  # pragma: no cover - redis-py reloads scripts itself
                continue
            except (RedisError, OSError) as exc:
                if attempt + 1 >= attempts:
                    raise StorageError(
                        f"Redis lock {self._name!r}: {script} failed: {type(exc).__name__}: {exc}",
                        backend_type="redis",
                        key=self._lease_key,
                    ) from None
                await asyncio.sleep(min(delay * 2**attempt, self._config.retry_max_delay))
        raise AssertionError("unreachable")  # pragma: no cover


def client_options(config: RedisConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The servers of ``config`` as redis-py address keywords (``host``/``port``, or
    ``unix_socket_path``) and the client options shared by every connection (no retries: the lock
    re-sends a request only when that is safe). Everything comes from the ``RedisConfig``, which
    parsed the URLs once."""
    try:
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise ConfigError("RedisLock needs redis-py: pip install 'statekit[redis]'") from exc
    addresses: list[dict[str, Any]] = [
        {"unix_socket_path": node.path} if node.path is not None else {"host": node.host, "port": node.port}
        for node in config.nodes
    ]
    common: dict[str, Any] = {
        "username": config.username,
        "password": config.password,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": max(config.read_timeout, config.write_timeout),
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max(2, min(config.max_connections, 4)),
        "decode_responses": True,
    }
    if config.tls and config.nodes[0].path is None:
        common.update(
            ssl=True,
            ssl_ca_certs=config.tls_ca_certs,
            ssl_cert_reqs="required" if config.tls_verify else "none",
            ssl_check_hostname=config.tls_verify,
        )
    return addresses, common


def _make_client(config: RedisConfig) -> Any:
    """A redis-py asyncio client (or cluster client) built from ``config`` alone."""
    addresses, common = client_options(config)
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode

    if config.cluster_mode:
        startup = [ClusterNode(a["host"], a["port"]) for a in addresses]
        return aioredis.RedisCluster(startup_nodes=startup, **common)
    return aioredis.Redis(**addresses[0], db=config.db or 0, **common)
