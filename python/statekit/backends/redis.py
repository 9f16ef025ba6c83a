"""Redis backend: standalone or cluster, TLS and AUTH, with Rust-encoded pipelined batches.

Keys are stored as ``key_prefix + key`` (plain strings, readable by any Redis client). Two sorted
sets per key prefix make ``range``/``list_keys`` cost O(log n + k) without ``KEYS`` or ``SCAN``:

* ``{statekit-index:<prefix>}:lex`` — every key (without the prefix), score 0, read with
  ``ZRANGEBYLEX`` (byte order of UTF-8 = code point order);
* ``{statekit-index:<prefix>}:exp`` — the keys that have a TTL, scored by their expiry (ms).

Both share a hash tag, so in a cluster they live in one slot. Consistency:

* Standalone: every single-key write updates the value and the index in one Lua call; each batch
  chunk is one ``MULTI``/``EXEC`` holding its writes and the index updates. The index never lacks
  a live key. It may hold members whose key has expired or was deleted by another client: reads
  drop them (``range`` fetches the values with ``MGET`` and prunes missing ones with a Lua call
  that re-checks ``EXISTS`` atomically), and expired members are pruned before counting.
* Cluster: the index slot differs from the keys' slots, so writes add to the index *before* the
  value write and deletes remove from it *after*; a crash in between leaves a member without a
  value, which reads prune. A prune racing a concurrent re-creation of the same key re-checks the
  key after removing it and re-adds it if it came back (a small window remains; documented).

Single operations go through redis-py's asyncio client (``Redis``/``RedisCluster``, hiredis
parser, its own retries disabled); batches through :mod:`statekit.backends._redis_wire`. Both are
wrapped in one retry loop: exponential backoff with full jitter on connection errors and timeouts
only, never on error replies such as ``WRONGTYPE``; after the last retry a ``StorageError`` names
the operation and the key. A retried batch chunk may apply twice, which is harmless for
``SET``/``MSET``/``GET``; a retried ``batch_delete`` may under-count keys it had already deleted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import re
import ssl
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, Final, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from statekit import _native
from statekit.backends._redis_config import RedisConfig, RedisStats, parse_redis_url
from statekit.backends._redis_wire import AuthError, WireError, WirePool
from statekit.backends.base import (
    Item,
    ItemColumns,
    check_item_prefix,
    item_columns,
    parse_counter,
    prefix_upper_bound,
)
from statekit.errors import ConfigError, NotInitialized, StorageError

__all__ = ["RedisConfig", "RedisStateBackend", "RedisStats"]

T = TypeVar("T")

#: How many index members one range/list page reads.
_PAGE: Final = 1000
_SLOTS: Final = 16384


def _lua_set(value: str, ttl_ms: str, extra: str = "", into: str = "") -> str:
    """Lua: ``SET KEYS[1] value [extra] [PX ttl_ms]`` (ttl "0": no expiry), reply assigned to ``into``."""
    assign = f"{into} = " if into else ""
    return (
        f"if {ttl_ms} == '0' then {assign}redis.call('SET', KEYS[1], {value}{extra}) "
        f"else {assign}redis.call('SET', KEYS[1], {value}{extra}, 'PX', {ttl_ms}) end"
    )


def _lua_index(ttl_ms: str, member: str) -> str:
    """Lua: add ``member`` to the lex index (KEYS[2]) and set or clear its expiry (KEYS[3])."""
    return f"""redis.call('ZADD', KEYS[2], 0, {member})
if {ttl_ms} == '0' then redis.call('ZREM', KEYS[3], {member})
else
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[3], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber({ttl_ms}), {member})
end"""


# KEYS: key, lex, exp. ARGV: value, ttl ms ("0": none), member. SET plus index, in one call.
_PUT = f"""
{_lua_set("ARGV[1]", "ARGV[2]")}
{_lua_index("ARGV[2]", "ARGV[3]")}
return 1
"""
# Like _PUT but only when the key holds nothing (SET NX).
_PUT_NX = f"""
local ok
{_lua_set("ARGV[1]", "ARGV[2]", extra=", 'NX'", into="ok")}
if not ok then return 0 end
{_lua_index("ARGV[2]", "ARGV[3]")}
return 1
"""
# Compare-and-set. KEYS: key [, lex, exp]. ARGV: expected, "1" when the key must be absent,
# value, ttl ms ("0": none), member. With the index keys (standalone), updates the index too.
_CAS = f"""
local cur = redis.call('GET', KEYS[1])
if ARGV[2] == '1' then
  if cur then return 0 end
elseif cur ~= ARGV[1] then
  return 0
end
{_lua_set("ARGV[3]", "ARGV[4]")}
if #KEYS == 3 then
{_lua_index("ARGV[4]", "ARGV[5]")}
end
return 1
"""
# KEYS: key, lex, exp. ARGV: member. Returns the number of keys deleted.
_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
"""
_GETDEL = """
local v = redis.call('GETDEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return v
"""
# KEYS: key (, lex, exp). ARGV: amount, ttl ms ("0": none), member, "1" to update the index
# (standalone; a cluster keeps the index in another slot). Python int() syntax for the stored
# value (surrounding ASCII whitespace, a sign, digit-group underscores), like the other backends;
# the value is normalised before INCRBY, which keeps the key's TTL. "new:" marks a created key.
_INCR = f"""
local v = redis.call('GET', KEYS[1])
if not v then
  {_lua_set("ARGV[1]", "ARGV[2]")}
  if ARGV[4] == '1' then
{_lua_index("ARGV[2]", "ARGV[3]")}
  end
  return 'new:' .. ARGV[1]
end
local s = string.match(v, '^%s*(.-)%s*$')
local sign, digits = string.match(s, '^([+-]?)([%d_]+)$')
if not digits or string.find(digits, '__', 1, true) or string.sub(digits, 1, 1) == '_'
   or string.sub(digits, -1) == '_' then
  return redis.error_reply('NOTINT value is not an integer')
end
digits = string.gsub(digits, '_', '')
digits = string.gsub(digits, '^0+', '')
if digits == '' then digits = '0' end
if sign == '-' and digits ~= '0' then digits = '-' .. digits end
if digits ~= v then redis.call('SET', KEYS[1], digits, 'KEEPTTL') end
return tostring(redis.call('INCRBY', KEYS[1], ARGV[1]))
"""
# KEYS: lex, exp, key of every member. ARGV: members. Drop members whose key does not exist.
_PRUNE = """
local removed = 0
for i, member in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 2]) == 0 then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    removed = removed + 1
  end
end
return removed
"""
# KEYS: lex, exp. ARGV: key prefix. Drops expired members whose key is gone (standalone only).
_PRUNE_EXPIRED = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 10000)
for _, member in ipairs(dead) do
  if redis.call('EXISTS', ARGV[1] .. member) == 0 then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
  end
end
return #dead
"""

# The connection gate the current task holds, so that nested calls do not take a second slot.
_HELD_GATE: ContextVar[asyncio.Semaphore | None] = ContextVar("statekit_redis_held_gate", default=None)

# RedisClusterException (not a RedisError): "Redis Cluster cannot be connected" when no node answers.
_RETRYABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisClusterException,
    WireError,
    OSError,
    TimeoutError,
)
_MOVED = re.compile(r"^(MOVED|ASK|TRYAGAIN|CLUSTERDOWN)\b")


def _px(ttl: float | None) -> int:
    """A TTL as Redis milliseconds (0: none); at least 1 ms."""
    return 0 if ttl is None else max(1, round(ttl * 1000))


class RedisStateBackend:
    """A :class:`~statekit.backends.StateBackend` on Redis (standalone or cluster).

    Connects lazily on the first operation. ``default_ttl`` of the config applies to writes
    that give no TTL. Requires the ``redis`` extra (``pip install statekit[redis]``).

    Example::

        config = RedisConfig.builder().url("redis://localhost:6379").key_prefix("app:").build()
        backend = RedisStateBackend(config)
        await backend.put("item:3", b"...")   # stored as "app:item:3"
    """

    backend_type = "redis"
    persistent = True

    def __init__(self, config: RedisConfig | None = None, **options: Any) -> None:
        if config is None:
            config = RedisConfig(**options)
        elif options:
            raise ConfigError("pass either a RedisConfig or keyword options, not both")
        self.config = config
        self._prefix = config.key_prefix
        tag = "{statekit-index:" + config.key_prefix + "}"
        self._lex = tag + ":lex"
        self._exp = tag + ":exp"
        self._cluster = config.cluster_mode
        self._nodes = [parse_redis_url(url) for url in config.urls]
        first = self._nodes[0]
        self._username = config.username if config.username is not None else first["username"]
        self._password = config.password if config.password is not None else first["password"]
        self._db = config.db or first["db"]
        self._tls = config.tls or first["tls"]
        self._client: Any = None
        self._pools: dict[tuple[str, int], WirePool] = {}
        self._slot_map: list[tuple[str, int]] | None = None
        self._shas: dict[str, str] = {}
        self._closed = False
        self._stats = RedisStats(backend_type=self.backend_type)
        self._latency_total_us = 0
        self._latency_count = 0
        self._counts: dict[str, tuple[int, int]] = {}
        # redis-py's pools fail at once ("Too many connections", MaxConnectionsError) when every
        # connection is busy; operations beyond max_connections wait here for a free one instead.
        self._gate = asyncio.Semaphore(config.max_connections)
        self._cluster_started = False

    def __repr__(self) -> str:
        return f"RedisStateBackend({self.config!r})"

    # -- connection set-up ---------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self._tls:
            return None
        ctx = ssl.create_default_context(cafile=self.config.tls_ca_certs)
        if not self.config.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _redis(self) -> Any:
        if self._closed:
            raise NotInitialized("the Redis backend is closed", backend_type=self.backend_type)
        if self._client is None:
            cfg = self.config
            common: dict[str, Any] = {
                "username": self._username,
                "password": self._password,
                "socket_connect_timeout": cfg.connect_timeout,
                "socket_timeout": max(cfg.read_timeout, cfg.write_timeout),
                "retry": Retry(NoBackoff(), 0),
                "max_connections": cfg.max_connections,
                "decode_responses": False,
            }
            if self._tls:
                common.update(
                    ssl=True,
                    ssl_ca_certs=cfg.tls_ca_certs,
                    ssl_cert_reqs="required" if cfg.tls_verify else "none",
                    ssl_check_hostname=cfg.tls_verify,
                )
            if self._cluster:
                nodes = [ClusterNode(n["host"], n["port"]) for n in self._nodes]
                self._client = aioredis.RedisCluster(startup_nodes=nodes, **common)
            else:
                node = self._nodes[0]
                self._client = aioredis.Redis(host=node["host"], port=node["port"], db=self._db, **common)
        return self._client

    def _pool(self, host: str, port: int) -> WirePool:
        pool = self._pools.get((host, port))
        if pool is None:
            cfg = self.config
            pool = WirePool(
                host,
                port,
                ssl_context=self._ssl_context(),
                username=self._username,
                password=self._password,
                db=self._db,
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                write_timeout=cfg.write_timeout,
                max_connections=cfg.max_connections,
            )
            self._pools[(host, port)] = pool
        return pool

    # -- the retry loop ------------------------------------------------------------------

    async def _retry(self, op: str, key: str | None, call: Callable[[], Awaitable[T]]) -> T:
        if self._closed:
            raise NotInitialized("the Redis backend is closed", backend_type=self.backend_type)
        cfg = self.config
        attempt = 0
        started = time.perf_counter()
        while True:
            try:
                result = await self._gated(call)
            except (AuthenticationError, AuthorizationError, AuthError) as exc:
                self._stats.error_count += 1
                raise self._error(op, key, f"authentication failed ({_safe(exc, self._password)})") from None
            except ResponseError as exc:
                self._stats.error_count += 1
                raise self._error(
                    op, key, f"Redis replied with an error: {_safe(exc, self._password)}"
                ) from None
            except _RETRYABLE as exc:
                if attempt >= cfg.max_retries:
                    self._stats.error_count += 1
                    raise self._error(
                        op,
                        key,
                        f"failed after {attempt + 1} attempt(s): {_safe(exc, self._password)}; "
                        "check that the server is up and reachable",
                    ) from None
                delay = min(cfg.retry_max_delay, cfg.retry_base_delay * (2**attempt))
                attempt += 1
                self._stats.retry_count += 1
                await asyncio.sleep(random.uniform(0, delay))
                continue
            except RedisError as exc:
                self._stats.error_count += 1
                raise self._error(op, key, _safe(exc, self._password)) from None
            self._latency_total_us += int((time.perf_counter() - started) * 1e6)
            self._latency_count += 1
            return result

    async def _gated(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` holding one of the ``max_connections`` slots (once per task: re-entrant)."""
        if _HELD_GATE.get() is self._gate:
            return await call()
        async with self._gate:
            if self._cluster and not self._cluster_started:
                # redis-py's RedisCluster starts lazily, and commands sent concurrently while it does
                # can run on connections it is recycling ("Connection closed by server"): start it
                # first (its initialize() is idempotent and locked).
                await self._redis().initialize()
                self._cluster_started = True
            token = _HELD_GATE.set(self._gate)
            try:
                return await call()
            finally:
                _HELD_GATE.reset(token)

    def _error(self, op: str, key: str | None, detail: str) -> StorageError:
        where = f" key {key!r}" if key is not None else ""
        return StorageError(f"redis {op}{where}: {detail}", backend_type=self.backend_type, key=key)

    async def _script(self, name: str, body: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self._redis()
        if self._cluster:
            return await client.eval(body, len(keys), *keys, *args)
        sha = self._shas.get(name)
        if sha is not None:
            try:
                return await client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                pass
        self._shas[name] = await client.script_load(body)
        return await client.evalsha(self._shas[name], len(keys), *keys, *args)

    def _ttl(self, ttl: float | None) -> float | None:
        return self.config.default_ttl if ttl is None else ttl

    # -- single keys ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        client = self._redis()
        full = self._prefix + key
        value: bytes | None = await self._retry("get", key, lambda: client.get(full))
        stats = self._stats
        stats.get_count += 1
        if value is None:
            stats.miss_count += 1
        else:
            stats.hit_count += 1
            stats.bytes_read += len(value)
        return value

    async def exists(self, key: str) -> bool:
        client = self._redis()
        full = self._prefix + key
        return bool(await self._retry("exists", key, lambda: client.exists(full)))

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        px = _px(self._ttl(ttl))
        full = self._prefix + key
        if self._cluster:
            client = self._redis()

            async def call() -> None:
                await self._index_add([key], px)
                if px:
                    await client.set(full, value, px=px)
                else:
                    await client.set(full, value)

            await self._retry("put", key, call)
        else:
            keys = (full, self._lex, self._exp)
            await self._retry("put", key, lambda: self._script("put", _PUT, keys, (value, px, key)))
        self._stats.put_count += 1
        self._stats.bytes_written += len(value)

    async def set_if_not_exists(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        px = _px(self._ttl(ttl))
        full = self._prefix + key
        if self._cluster:
            client = self._redis()

            async def call() -> bool:
                await self._index_add([key], 0, touch_exp=False)
                stored = bool(await client.set(full, value, nx=True, px=px or None))
                if stored:
                    await self._index_add([key], px)
                return stored

            stored = await self._retry("set_if_not_exists", key, call)
        else:
            keys = (full, self._lex, self._exp)
            stored = bool(
                await self._retry(
                    "set_if_not_exists", key, lambda: self._script("put_nx", _PUT_NX, keys, (value, px, key))
                )
            )
        if stored:
            self._stats.put_count += 1
            self._stats.bytes_written += len(value)
        return stored

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None
    ) -> bool:
        px = _px(self._ttl(ttl))
        full = self._prefix + key
        args = (b"" if expected is None else expected, "1" if expected is None else "0", value, px, key)
        if self._cluster:
            client = self._redis()

            async def call() -> bool:
                # The index lives in another slot: add the member first (it may lead, never lag).
                await self._index_add([key], 0, touch_exp=False)
                stored = bool(await self._script("cas", _CAS, (full,), args))
                if stored:
                    await self._index_add([key], px)
                elif not await client.exists(full):
                    await self._prune([key])  # the member added above has no key behind it
                return stored

            stored = await self._retry("compare_and_set", key, call)
        else:
            keys = (full, self._lex, self._exp)
            stored = bool(
                await self._retry("compare_and_set", key, lambda: self._script("cas", _CAS, keys, args))
            )
        if stored:
            self._stats.put_count += 1
            self._stats.bytes_written += len(value)
        return stored

    async def delete(self, key: str) -> bool:
        full = self._prefix + key
        if self._cluster:
            client = self._redis()

            async def call() -> int:
                n = int(await client.delete(full))
                await self._index_remove([key])
                return n

            removed = await self._retry("delete", key, call)
        else:
            keys = (full, self._lex, self._exp)
            removed = await self._retry("delete", key, lambda: self._script("delete", _DELETE, keys, (key,)))
        self._stats.delete_count += 1
        return bool(removed)

    async def get_and_delete(self, key: str) -> bytes | None:
        full = self._prefix + key
        if self._cluster:
            client = self._redis()

            async def call() -> bytes | None:
                value: bytes | None = await client.getdel(full)
                await self._index_remove([key])
                return value

            value = await self._retry("get_and_delete", key, call)
        else:
            keys = (full, self._lex, self._exp)
            value = await self._retry(
                "get_and_delete", key, lambda: self._script("getdel", _GETDEL, keys, (key,))
            )
        self._stats.delete_count += 1
        return value

    async def incr_by(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        px = _px(self._ttl(ttl))
        full = self._prefix + key
        cluster = self._cluster

        async def call() -> bytes:
            if cluster:  # the index first: it may lead the value, never lag
                await self._index_add([key], 0, touch_exp=False)
                raw = await self._script("incr", _INCR, (full,), (amount, px, key, "0"))
            else:
                keys = (full, self._lex, self._exp)
                raw = await self._script("incr", _INCR, keys, (amount, px, key, "1"))
            raw = bytes(raw)
            if cluster and raw.startswith(b"new:"):  # a fresh key: set or clear its expiry entry
                await self._index_add([key], px)
            return raw

        try:
            raw = await self._retry("incr_by", key, call)
        except StorageError as exc:
            if "NOTINT" in str(exc):
                return parse_counter(b"not an integer", key, self.backend_type)
            raise
        return int(raw.removeprefix(b"new:"))

    # -- ranges --------------------------------------------------------------------------

    async def range(
        self, start: str, end: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        if limit is not None and limit <= 0:
            self._redis()
            return []
        rows = await self._scan_index("range", start, end, limit)
        self._stats.bytes_read += sum(len(v) for _, v in rows)
        return rows

    async def list_keys(self, prefix: str = "") -> list[str]:
        return [key for key, _ in await self._scan_index("list_keys", prefix, None, None)]

    async def _scan_index(
        self, op: str, start: str, end: str | None, limit: int | None
    ) -> list[tuple[str, bytes]]:
        client = self._redis()
        upper = prefix_upper_bound(start) if end is None else end
        low = "[" + start
        high = "+" if upper is None else "(" + upper
        out: list[tuple[str, bytes]] = []
        offset = 0
        while limit is None or len(out) < limit:
            page = _PAGE if limit is None else min(_PAGE, limit - len(out))
            members: list[bytes] = await self._retry(
                op, start, functools.partial(client.zrangebylex, self._lex, low, high, start=offset, num=page)
            )
            if not members:
                break
            names = [m.decode() for m in members]
            values = await self._fetch([self._prefix + n for n in names], op)
            dead = [n for n, v in zip(names, values, strict=True) if v is None]
            out.extend((n, v) for n, v in zip(names, values, strict=True) if v is not None)
            if dead:
                removed = await self._retry(op, start, functools.partial(self._prune, dead))
                offset += len(members) - removed
            else:
                offset += len(members)
            if len(members) < page:
                break
        return out

    async def _fetch(self, full_keys: list[str], op: str) -> list[bytes | None]:
        """Values of prefixed keys, through the pipelined path (no stats counted)."""
        if not full_keys:
            return []
        if self._cluster:
            return await self._cluster_mget(full_keys, op)
        size = self.config.pipeline_batch_size
        chunks = [full_keys[i : i + size] for i in range(0, len(full_keys), size)]
        payloads = [_native.encode_commands([["MGET", *chunk]]) for chunk in chunks]
        replies = await self._standalone_pipeline(op, full_keys[0], payloads, [1] * len(payloads))
        out: list[bytes | None] = []
        for reply in replies:
            out.extend(_check(reply[0]))
        return out

    async def _prune(self, members: list[str]) -> int:
        """Remove index members whose key does not exist; returns how many were removed."""
        if not self._cluster:
            keys = [self._lex, self._exp, *(self._prefix + m for m in members)]
            return int(await self._script("prune", _PRUNE, keys, members))
        client = self._redis()
        await self._index_remove(members)
        back = await self._cluster_exists([self._prefix + m for m in members])
        revived = [m for m, alive in zip(members, back, strict=True) if alive]
        if revived:
            await client.zadd(self._lex, dict.fromkeys(revived, 0))
        return len(members) - len(revived)

    async def _prune_expired(self) -> None:
        if not self._cluster:
            await self._script("prune_expired", _PRUNE_EXPIRED, (self._lex, self._exp), (self._prefix,))
            return
        client = self._redis()
        now_ms = int(time.time() * 1000)
        dead = [
            m.decode() for m in await client.zrangebyscore(self._exp, "-inf", now_ms, start=0, num=10_000)
        ]
        if dead:
            alive = await self._cluster_exists([self._prefix + m for m in dead])
            gone = [m for m, live in zip(dead, alive, strict=True) if not live]
            if gone:
                await self._index_remove(gone)

    # -- index helpers (cluster mode, where writes and index live in different slots) -----

    async def _index_add(self, members: list[str], px: int, *, touch_exp: bool = True) -> None:
        """Add members to the lex index; with ``touch_exp``, also set (px) or clear their expiry."""
        client = self._redis()
        if px:
            await self._script("index_add", _INDEX_ADD_TTL, (self._lex, self._exp), (px, *members))
        elif touch_exp:
            pipe = client.pipeline(transaction=False)
            pipe.zadd(self._lex, dict.fromkeys(members, 0))
            pipe.zrem(self._exp, *members)
            await pipe.execute()
        else:
            await client.zadd(self._lex, dict.fromkeys(members, 0))

    async def _index_remove(self, members: list[str]) -> None:
        client = self._redis()
        pipe = client.pipeline(transaction=False)
        pipe.zrem(self._lex, *members)
        pipe.zrem(self._exp, *members)
        await pipe.execute()

    # -- batches -------------------------------------------------------------------------

    async def batch_get(self, keys: Sequence[str]) -> list[bytes | None]:
        self._redis()
        keys = list(keys)
        if not keys:
            return []
        prefix = self._prefix
        full = [prefix + k for k in keys] if prefix else keys
        values = await self._fetch(full, "batch_get")
        stats = self._stats
        hits = [v for v in values if v is not None]
        stats.pipeline_count += 1
        stats.batch_count += 1
        stats.get_count += len(values)
        stats.hit_count += len(hits)
        stats.miss_count += len(values) - len(hits)
        stats.bytes_read += sum(map(len, hits))
        return values

    async def batch_put(self, pairs: Iterable[tuple[str, bytes]], ttl: float | None = None) -> None:
        self._redis()
        items = pairs if isinstance(pairs, list) else list(pairs)
        if not items:
            return
        px = _px(self._ttl(ttl))
        if self._cluster:
            await self._cluster_put(items, px)
        else:
            await self._standalone_put(items, px)
        stats = self._stats
        stats.pipeline_count += 1
        stats.batch_count += 1
        stats.put_count += len(items)
        stats.bytes_written += sum(len(v) for _, v in items)

    async def _standalone_put(self, items: list[tuple[str, bytes]], px: int) -> None:
        size = self.config.pipeline_batch_size
        prefix, lex, exp = self._prefix, self._lex, self._exp
        payloads: list[bytes] = []
        counts: list[int] = []
        encode = _native.encode_commands
        for i in range(0, len(items), size):
            chunk = items[i : i + size]
            names = [k for k, _ in chunk]
            zadd: list[Any] = ["ZADD", lex]
            for name in names:
                zadd += (0, name)
            if px:
                expires = self._server_ms() + px
                zexp: list[Any] = ["ZADD", exp]
                for name in names:
                    zexp += (expires, name)
                cmds: list[list[Any]] = [["MULTI"], zadd, zexp]
                cmds += [["SET", prefix + k, v, "PX", px] for k, v in chunk]
            else:
                mset: list[Any] = ["MSET"]
                for k, v in chunk:
                    mset += (prefix + k, v)
                cmds = [["MULTI"], zadd, ["ZREM", exp, *names], mset]
            cmds.append(["EXEC"])
            payloads.append(encode(cmds))
            counts.append(len(cmds))
        replies = await self._standalone_pipeline("batch_put", items[0][0], payloads, counts)
        for reply in replies:
            _check_exec(reply)

    async def batch_delete(self, keys: Sequence[str]) -> int:
        self._redis()
        keys = list(keys)
        if not keys:
            return 0
        if self._cluster:
            removed = await self._cluster_delete(keys)
        else:
            size = self.config.pipeline_batch_size
            payloads, counts = [], []
            for i in range(0, len(keys), size):
                chunk = keys[i : i + size]
                cmds: list[list[Any]] = [
                    ["MULTI"],
                    ["DEL", *(self._prefix + k for k in chunk)],
                    ["ZREM", self._lex, *chunk],
                    ["ZREM", self._exp, *chunk],
                    ["EXEC"],
                ]
                payloads.append(_native.encode_commands(cmds))
                counts.append(len(cmds))
            replies = await self._standalone_pipeline("batch_delete", keys[0], payloads, counts)
            removed = sum(int(_check_exec(reply)[0]) for reply in replies)
        stats = self._stats
        stats.pipeline_count += 1
        stats.batch_count += 1
        stats.delete_count += len(keys)
        return removed

    async def _standalone_pipeline(
        self, op: str, key: str, payloads: list[bytes], counts: list[int]
    ) -> list[list[Any]]:
        node = self._nodes[0]
        pool = self._pool(node["host"], node["port"])
        return await self._retry(op, key, lambda: pool.pipeline(payloads, counts))

    def _server_ms(self) -> int:
        # Expiry scores only order and count the TTL index; the server's own PX decides expiry.
        return int(time.time() * 1000)

    # -- cluster batches -----------------------------------------------------------------

    async def _refresh_slots(self) -> list[tuple[str, int]]:
        last: BaseException | None = None
        for node in self._nodes + [{"host": h, "port": p} for h, p in self._pools]:
            pool = self._pool(node["host"], node["port"])
            try:
                (reply,) = (await pool.pipeline([_native.encode_commands([["CLUSTER", "SLOTS"]])], [1]))[0]
            except (WireError, OSError) as exc:
                last = exc
                continue
            slots: list[tuple[str, int]] = [("", 0)] * _SLOTS
            for entry in _check(reply):
                owner = (entry[2][0].decode() or node["host"], int(entry[2][1]))
                for slot in range(int(entry[0]), int(entry[1]) + 1):
                    slots[slot] = owner
            self._slot_map = slots
            return slots
        raise WireError(f"no cluster node answered CLUSTER SLOTS: {last}")

    async def _cluster_run(self, op: str, key: str, commands: list[tuple[int, list[Any]]]) -> list[Any]:
        """Run single-slot commands on their nodes, concurrently; replies aligned with ``commands``."""
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        size = self.config.pipeline_batch_size

        async def attempt() -> None:
            nonlocal pending
            slots = self._slot_map or await self._refresh_slots()
            by_node: dict[tuple[str, int], list[int]] = defaultdict(list)
            for i in pending:
                by_node[slots[commands[i][0]]].append(i)

            async def run_node(node: tuple[str, int], indices: list[int]) -> list[int]:
                chunks = [indices[j : j + size] for j in range(0, len(indices), size)]
                payloads = [_native.encode_commands([commands[i][1] for i in c]) for c in chunks]
                results = await self._pool(*node).pipeline(payloads, [len(c) for c in chunks])
                redo = []
                for chunk, result in zip(chunks, results, strict=True):
                    for i, reply in zip(chunk, result, strict=True):
                        if isinstance(reply, hiredis.ReplyError) and _MOVED.match(str(reply)):
                            redo.append(i)
                        else:
                            replies[i] = reply
                return redo

            outcomes = await asyncio.gather(
                *(run_node(node, idx) for node, idx in by_node.items()), return_exceptions=True
            )
            redo: list[int] = []
            failure: BaseException | None = None
            for (_, indices), outcome in zip(by_node.items(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    redo.extend(indices)
                    failure = outcome
                else:
                    redo.extend(outcome)
            pending = redo
            if redo:
                self._slot_map = None
                if failure is not None:
                    raise failure
                raise WireError("cluster topology changed (MOVED); retrying with a fresh slot map")

        await self._retry(op, key, attempt)
        return replies

    async def _cluster_mget(self, full_keys: list[str], op: str) -> list[bytes | None]:
        groups: dict[int, list[int]] = defaultdict(list)
        for i, slot in enumerate(_native.hash_slots(full_keys)):
            groups[slot].append(i)
        order = list(groups.items())
        commands = [(slot, ["MGET", *(full_keys[i] for i in idx)]) for slot, idx in order]
        replies = await self._cluster_run(op, full_keys[0], commands)
        out: list[bytes | None] = [None] * len(full_keys)
        for (_, idx), reply in zip(order, replies, strict=True):
            for i, value in zip(idx, _check(reply), strict=True):
                out[i] = value
        return out

    async def _cluster_exists(self, full_keys: list[str]) -> list[bool]:
        commands = [
            (slot, ["EXISTS", k]) for slot, k in zip(_native.hash_slots(full_keys), full_keys, strict=True)
        ]
        replies = await self._cluster_run("exists", full_keys[0], commands)
        return [bool(_check(r)) for r in replies]

    async def _cluster_put(self, items: list[tuple[str, bytes]], px: int) -> None:
        names = [k for k, _ in items]
        size = self.config.pipeline_batch_size
        for i in range(0, len(names), size):  # the index first: it may lead the values, never lag
            chunk = names[i : i + size]
            await self._retry("batch_put", chunk[0], functools.partial(self._index_add, chunk, px))
        full = [self._prefix + k for k in names]
        if px:
            cmds = [["SET", f, v, "PX", px] for f, (_, v) in zip(full, items, strict=True)]
        else:
            cmds = [["SET", f, v] for f, (_, v) in zip(full, items, strict=True)]
        replies = await self._cluster_run(
            "batch_put", names[0], list(zip(_native.hash_slots(full), cmds, strict=True))
        )
        for reply in replies:
            _check(reply)

    async def _cluster_delete(self, keys: list[str]) -> int:
        full = [self._prefix + k for k in keys]
        groups: dict[int, list[str]] = defaultdict(list)
        for slot, f in zip(_native.hash_slots(full), full, strict=True):
            groups[slot].append(f)
        commands = [(slot, ["DEL", *dict.fromkeys(fs)]) for slot, fs in groups.items()]
        replies = await self._cluster_run("batch_delete", keys[0], commands)
        removed = sum(int(_check(r)) for r in replies)
        size = self.config.pipeline_batch_size
        for i in range(0, len(keys), size):  # the index after the values: it may lead, never lag
            chunk = keys[i : i + size]
            await self._retry("batch_delete", chunk[0], functools.partial(self._index_remove, chunk))
        return removed

    # -- snapshots (statekit.checkpoint) ------------------------------------------------

    async def _index_names(self, prefix: str) -> list[str]:
        """Every index member starting with ``prefix`` (live or not), sorted; values not read."""
        client = self._redis()
        upper = prefix_upper_bound(prefix)
        low, high = "[" + prefix, "+" if upper is None else "(" + upper
        names: list[str] = []
        while True:
            page: list[bytes] = await self._retry(
                "export_items",
                prefix,
                functools.partial(client.zrangebylex, self._lex, low, high, start=len(names), num=_PAGE),
            )
            names += (m.decode() for m in page)
            if len(page) < _PAGE:
                return names

    async def export_items(self, prefix: str = "") -> ItemColumns:
        """Every live key under ``prefix`` with its absolute expiry (Redis server clock).

        Not a point-in-time snapshot (Redis offers none short of blocking the server): keys are
        listed from the index, then read in pipelined chunks. On a standalone server each chunk
        reads values and expiries in one ``MULTI``, so a key's value and expiry always belong
        together; in a cluster they are read by two commands. A key written during the export
        may or may not be in it; a key deleted during it is left out. Needs Redis >= 7.0
        (``PEXPIRETIME``).
        """
        names = await self._index_names(prefix)
        full = [self._prefix + n for n in names]
        rows: list[tuple[bytes | None, int]] = []
        if full and not self._cluster:
            size = self.config.pipeline_batch_size
            payloads: list[bytes] = []
            counts: list[int] = []
            for i in range(0, len(full), size):
                chunk = full[i : i + size]
                cmds: list[list[Any]] = [["MULTI"], ["MGET", *chunk], *(["PEXPIRETIME", k] for k in chunk)]
                cmds.append(["EXEC"])
                payloads.append(_native.encode_commands(cmds))
                counts.append(len(cmds))
            for reply in await self._standalone_pipeline("export_items", names[0], payloads, counts):
                result = _check_exec(reply)
                rows.extend(zip(result[0], result[1:], strict=True))
        elif full:
            slots = _native.hash_slots(full)
            commands = [(slot, ["GET", f]) for slot, f in zip(slots, full, strict=True)]
            commands += [(slot, ["PEXPIRETIME", f]) for slot, f in zip(slots, full, strict=True)]
            replies = [_check(r) for r in await self._cluster_run("export_items", names[0], commands)]
            rows = list(zip(replies[: len(full)], replies[len(full) :], strict=True))
        keys: list[str] = []
        values: list[bytes] = []
        expires: list[float | None] = []
        for name, (value, expires_ms) in zip(names, rows, strict=True):
            if value is None or expires_ms == -2:  # gone since it was indexed
                continue
            keys.append(name)
            values.append(value)
            expires.append(None if expires_ms < 0 else expires_ms / 1000)
        self._stats.bytes_read += sum(map(len, values))
        return ItemColumns(keys, values, expires if any(e is not None for e in expires) else None)

    async def replace_prefix(self, prefix: str, items: Sequence[Item]) -> None:
        """Make ``items`` the whole content under ``prefix``.

        Not atomic on Redis: the old keys are deleted first, then the items written in
        pipelined chunks (each chunk one ``MULTI`` on a standalone server). A failure part-way
        raises StorageError and leaves a partial state; run the restore again. Items whose
        absolute expiry has passed (by this machine's clock) are skipped.
        """
        columns = item_columns(items)
        check_item_prefix(columns.keys, prefix)
        old = await self._index_names(prefix)
        if old:
            await self.batch_delete(old)
        now = time.time()
        forever: list[tuple[str, bytes]] = []
        expiring: list[tuple[str, bytes, int]] = []
        for key, value, expires_at in columns:
            if expires_at is None:
                forever.append((key, value))
            elif expires_at > now:
                expiring.append((key, value, int(expires_at * 1000)))
        if forever:
            await self.batch_put(forever)
        if expiring:
            await self._put_expiring_at(expiring)

    async def _put_expiring_at(self, items: list[tuple[str, bytes, int]]) -> None:
        """Write items with absolute expiries (unix ms), index included."""
        size = self.config.pipeline_batch_size
        prefix, lex, exp = self._prefix, self._lex, self._exp
        if self._cluster:
            client = self._redis()
            for i in range(0, len(items), size):  # the index first: it may lead the values, never lag
                chunk = items[i : i + size]
                pipe = client.pipeline(transaction=False)
                pipe.zadd(lex, {name: 0 for name, _, _ in chunk})
                pipe.zadd(exp, {name: at for name, _, at in chunk})
                await self._retry("replace_prefix", chunk[0][0], pipe.execute)
            full = [prefix + name for name, _, _ in items]
            commands = [
                (slot, ["SET", f, value, "PXAT", at])
                for slot, f, (_, value, at) in zip(_native.hash_slots(full), full, items, strict=True)
            ]
            for reply in await self._cluster_run("replace_prefix", items[0][0], commands):
                _check(reply)
        else:
            payloads: list[bytes] = []
            counts: list[int] = []
            for i in range(0, len(items), size):
                chunk = items[i : i + size]
                zlex: list[Any] = ["ZADD", lex]
                zexp: list[Any] = ["ZADD", exp]
                for name, _, at in chunk:
                    zlex += (0, name)
                    zexp += (at, name)
                cmds: list[list[Any]] = [["MULTI"], zlex, zexp]
                cmds += [["SET", prefix + name, value, "PXAT", at] for name, value, at in chunk]
                cmds.append(["EXEC"])
                payloads.append(_native.encode_commands(cmds))
                counts.append(len(cmds))
            for reply in await self._standalone_pipeline("replace_prefix", items[0][0], payloads, counts):
                _check_exec(reply)
        self._stats.put_count += len(items)
        self._stats.bytes_written += sum(len(v) for _, v, _ in items)

    # -- housekeeping --------------------------------------------------------------------

    async def health_check(self) -> bool:
        """True when the server answers PING within the timeouts. Never raises."""
        if self._closed:
            return False
        try:
            client = self._redis()

            async def ping() -> None:
                await client.ping()
                await self._refresh_info()

            async with asyncio.timeout(self.config.connect_timeout + self.config.read_timeout):
                await self._gated(ping)
        except (RedisError, RedisClusterException, OSError, TimeoutError, WireError):
            return False
        return True

    async def _refresh_info(self) -> None:
        client = self._redis()
        info = await client.info("server")
        memory = await client.info("memory")
        if self._cluster:  # RedisCluster answers per node: {node_name: info}
            info = next(iter(info.values())) if info and "redis_version" not in info else info
            memory = next(iter(memory.values())) if memory and "used_memory" not in memory else memory
        self._stats.redis_version = str(info.get("redis_version"))
        self._stats.used_memory_human = str(memory.get("used_memory_human"))
        self._used_memory = int(memory.get("used_memory", 0))

    async def memory_usage(self) -> int:
        """Bytes of memory the server uses (``INFO memory`` ``used_memory``; summed over a cluster)."""
        client = self._redis()
        memory = await self._retry("memory_usage", None, lambda: client.info("memory"))
        if self._cluster and "used_memory" not in memory:
            return sum(int(m.get("used_memory", 0)) for m in memory.values())
        return int(memory.get("used_memory", 0))

    async def refresh_stats(self, prefix: str = "") -> RedisStats:
        """Prune expired index members, count the keys under ``prefix`` and run INFO.

        ``stats(prefix)`` is synchronous (it cannot ask the server), so it reports the counts of
        the last ``refresh_stats(prefix)``. ``total_keys`` counts index members: keys deleted by
        another client without going through statekit stay counted until a read prunes them.
        """
        client = self._redis()
        await self._retry("stats", None, self._prune_expired)
        upper = prefix_upper_bound(prefix)
        total = int(
            await self._retry(
                "stats",
                None,
                lambda: client.zlexcount(self._lex, "[" + prefix, "+" if upper is None else "(" + upper),
            )
        )
        if prefix:
            members = await self._retry("stats", None, lambda: client.zrange(self._exp, 0, -1))
            expiring = sum(1 for m in members if m.decode().startswith(prefix))
        else:
            expiring = int(await self._retry("stats", None, lambda: client.zcard(self._exp)))
        self._counts[prefix] = (total, expiring)
        await self._retry("stats", None, self._refresh_info)
        return self.stats(prefix)

    def stats(self, prefix: str = "") -> RedisStats:
        total, expiring = self._counts.get(prefix, (0, 0))
        return dataclasses.replace(
            self._stats,
            total_keys=total,
            expiring_keys=expiring,
            avg_latency_us=self._latency_total_us // self._latency_count if self._latency_count else 0,
            active_connections=sum(p.connections for p in self._pools.values()) + self._redis_connections(),
        )

    def _redis_connections(self) -> int:
        pool = getattr(self._client, "connection_pool", None)
        if pool is None:
            return 0
        in_use = getattr(pool, "_in_use_connections", ())
        available = getattr(pool, "_available_connections", ())
        return len(in_use) + len(available)

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        if client is not None:
            await client.aclose()


# Cluster: the index update with a TTL score (server time), on the index's slot.
_INDEX_ADD_TTL = """
local t = redis.call('TIME')
local at = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 0, ARGV[i])
  redis.call('ZADD', KEYS[2], at, ARGV[i])
end
return 1
"""


def _check(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise ResponseError(str(reply))
    return reply


def _check_exec(replies: list[Any]) -> list[Any]:
    """The EXEC result of a MULTI ... EXEC reply list; raises on any error inside."""
    for reply in replies[:-1]:
        _check(reply)
    result = _check(replies[-1])
    if result is None:
        raise ResponseError("EXEC aborted the transaction")
    for item in result:
        _check(item)
    return list(result)


def _safe(exc: BaseException, password: str | None) -> str:
    text = str(exc) or type(exc).__name__
    if password:
        text = text.replace(password, "***")
    return text
