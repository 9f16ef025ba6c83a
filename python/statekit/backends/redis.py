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

Every key statekit keeps for itself (the indexes above, the request records below) starts with
``{statekit-`` (:data:`~statekit.backends.base.RESERVED_KEY_PREFIX`); user keys starting with it
are refused with InvalidKey, as are keys that would reach it through the key prefix (prefix
``"{"``, key ``"statekit-..."``) and key prefixes starting with it. Keys (``str``, or UTF-8
``bytes`` as the same key) and TTLs are validated at every entry point, a batch whole, before
anything is sent.

Idempotent operations (``get``, ``exists``, ``put``, ``delete``, ``batch_get``, ``batch_put``,
ranges) go through redis-py's asyncio client (``Redis``/``RedisCluster``, hiredis parser, its
own retries disabled) or, for batches, :mod:`statekit.backends._redis_wire`. The others
(``incr_by``, ``compare_and_set``, ``get_and_delete``, ``set_if_not_exists``, ``batch_delete``)
are Lua scripts on the wire path that carry a random request id: the script first looks for the
id's record (``{statekit-r...}:req:<id>``, in the data key's cluster slot) and returns the result
remembered there, else applies the operation and records its result for
max(5 minutes, twice the retry budget), in one atomic call. A retry after a lost reply therefore
returns the first result instead of applying the operation again.

One retry loop wraps everything: exponential backoff with full jitter on connection errors,
timeouts, and replies that prove the command did not run (``LOADING`` after a restart, ``MOVED``,
``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``); never on other error replies such as ``WRONGTYPE``.
Errors are classified by type (redis-py's exception classes; error replies of the wire path are
mapped to them by redis-py's own table), never by message text. A call that finds all
``max_connections`` slots busy for ``connect_timeout`` fails at once (StorageError, or
OutcomeUnknown after an earlier attempt that may have been applied); each attempt waits at most
``connect_timeout`` to connect and ``write_timeout``/``read_timeout`` for each write/read to
make progress. After the last retry a
``StorageError`` names the operation and the key; for the non-idempotent operations, when an
attempt may have reached the server, it is :class:`~statekit.errors.OutcomeUnknown` (a
StorageError): statekit never guesses. A batch that fails part-way may have applied part of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import math
import os
import random
import ssl
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, Final, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis._parsers import BaseParser
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from statekit import _native
from statekit.backends._redis_config import RedisConfig, RedisStats, parse_redis_url
from statekit.backends._redis_wire import AuthError, WireError, WireNotSent, WirePool
from statekit.backends.base import (
    MAX_TTL_SECONDS,
    RESERVED_KEY_PREFIX,
    Item,
    ItemColumns,
    check_amount,
    check_item_prefix,
    check_key,
    check_keys,
    check_pairs,
    check_ttl,
    check_value,
    item_columns,
    parse_counter,
    prefix_upper_bound,
)
from statekit.errors import ConfigError, CorruptData, InvalidKey, NotInitialized, OutcomeUnknown, StorageError

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


def _remembered(body: str) -> str:
    """Lua: run ``body`` (which ends in ``return``) at most once per request id.

    A call that is not idempotent (``incr_by``, ``compare_and_set``, ...) may reach the server
    and lose its reply; re-sending it would apply it twice. So each call carries a random request
    id: KEYS[#KEYS] is its record key, ARGV[#ARGV] the record's TTL in ms. The first execution
    stores its result there; a retry of the same call finds the record and gets the same result
    without applying anything again. Results are nil, an integer or a string ("n", "i<int>",
    "s<bytes>" in the record).
    """
    return f"""
local seen = redis.call('GET', KEYS[#KEYS])
if seen then
  local kind = string.sub(seen, 1, 1)
  if kind == 'n' then return false end
  if kind == 'i' then return tonumber(string.sub(seen, 2)) end
  return string.sub(seen, 2)
end
local function apply()
{body}
end
local result = apply()
local saved
if not result then saved = 'n'
elseif type(result) == 'number' then saved = 'i' .. result
else saved = 's' .. result end
redis.call('SET', KEYS[#KEYS], saved, 'PX', ARGV[#ARGV])
return result
"""


# Like _PUT but only when the key holds nothing (SET NX). KEYS: key (, lex, exp), record.
# ARGV: value, ttl ms ("0": none), member, "1" to update the index (standalone), record TTL.
_PUT_NX_BODY = f"""
local ok
{_lua_set("ARGV[1]", "ARGV[2]", extra=", 'NX'", into="ok")}
if not ok then return 0 end
if ARGV[4] == '1' then
{_lua_index("ARGV[2]", "ARGV[3]")}
end
return 1
"""
# Compare-and-set. KEYS: key (, lex, exp), record. ARGV: expected, "1" when the key must be
# absent, value, ttl ms ("0": none), member, "1" to update the index (standalone), record TTL.
_CAS_BODY = f"""
local cur = redis.call('GET', KEYS[1])
if ARGV[2] == '1' then
  if cur then return 0 end
elseif cur ~= ARGV[1] then
  return 0
end
{_lua_set("ARGV[3]", "ARGV[4]")}
if ARGV[6] == '1' then
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
# KEYS: key (, lex, exp), record. ARGV: member, "1" to update the index (standalone), record TTL.
_GETDEL_BODY = """
local v = redis.call('GETDEL', KEYS[1])
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return v
"""
# KEYS: n keys (, lex, exp), record. ARGV: "1" to update the index (standalone), the n members
# (with the index only), record TTL. Returns how many keys existed. DEL/ZREM take at most 1000
# arguments each (Lua's unpack has a stack limit).
_DELETE_MANY_BODY = """
local n = #KEYS - 1
if ARGV[1] == '1' then n = n - 2 end
local removed = 0
for i = 1, n, 1000 do
  removed = removed + redis.call('DEL', unpack(KEYS, i, math.min(i + 999, n)))
end
if ARGV[1] == '1' then
  for i = 2, #ARGV - 1, 1000 do
    local last = math.min(i + 999, #ARGV - 1)
    redis.call('ZREM', KEYS[n + 1], unpack(ARGV, i, last))
    redis.call('ZREM', KEYS[n + 2], unpack(ARGV, i, last))
  end
end
return removed
"""
# KEYS: key (, lex, exp), record. ARGV: amount, ttl ms ("0": none), member, "1" to update the
# index (standalone; a cluster keeps the index in another slot), record TTL. A counter is
# canonical ASCII decimal (base.COUNTER_PATTERN), as on every backend; INCRBY keeps the key's
# TTL and refuses to overflow 64 bits. "new:" marks a created key; nil means the value is not a
# counter (a reply, not an error: nothing to parse). The result is read back with GET: Lua
# numbers are doubles, and tostring() would round them.
_INCR_BODY = f"""
local v = redis.call('GET', KEYS[1])
if not v then
  {_lua_set("ARGV[1]", "ARGV[2]")}
  if ARGV[4] == '1' then
{_lua_index("ARGV[2]", "ARGV[3]")}
  end
  return 'new:' .. ARGV[1]
end
if #v > 20 or not (v == '0' or string.match(v, '^%-?[1-9]%d*$')) then
  return false
end
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1])
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


class _Script:
    """A Lua script sent by EVALSHA on the wire path (EVAL when the node does not have it yet)."""

    __slots__ = ("body", "sha")

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()


# The operations that are not idempotent, each remembered by request id.
_PUT_NX = _Script(_remembered(_PUT_NX_BODY))
_CAS = _Script(_remembered(_CAS_BODY))
_GETDEL = _Script(_remembered(_GETDEL_BODY))
_INCR = _Script(_remembered(_INCR_BODY))
_DELETE_MANY = _Script(_remembered(_DELETE_MANY_BODY))

#: Request records: KEY_PREFIX + id (standalone) or "{statekit-r<n>}:req:" + id (cluster, where
#: "statekit-r<n>" is a hash tag of the data key's slot, so that one script can touch both).
_RECORD_PREFIX: Final = RESERVED_KEY_PREFIX + "r}:req:"
#: The shortest time a request record is kept (ms); longer when the retry budget is.
_RECORD_MIN_MS: Final = 300_000
_record_tags: list[str] = []


def _record_tag(slot: int) -> str:
    """A hash tag ``statekit-r<n>`` that lands in ``slot`` (a table of 16384, built on first use)."""
    if not _record_tags:
        tags: list[str | None] = [None] * _SLOTS
        missing, start = _SLOTS, 0
        while missing:  # about 160k candidate names: a few ms with the native CRC16
            names = [f"{RESERVED_KEY_PREFIX[1:]}r{n}" for n in range(start, start + _SLOTS)]
            for name, slot_of in zip(names, _native.hash_slots(names), strict=True):
                if tags[slot_of] is None:
                    tags[slot_of] = name
                    missing -= 1
            start += _SLOTS
        _record_tags[:] = [t for t in tags if t is not None]
    return _record_tags[slot]


def _request_id() -> str:
    # os.urandom, not the random module: forked workers share random's state and would repeat ids.
    return os.urandom(12).hex()


# The connection gate the current task holds, so that nested calls do not take a second slot.
_HELD_GATE: ContextVar[asyncio.Semaphore | None] = ContextVar("statekit_redis_held_gate", default=None)
# For a call that is not idempotent, set by _retry: [True] once the current attempt started to
# write its request (errors before that prove it was not applied).
_SENDING: ContextVar[list[bool] | None] = ContextVar("statekit_redis_sending", default=None)


class _NoFreeSlot(WireNotSent):
    """Every connection slot stayed busy for ``connect_timeout``: the request was not sent."""


def _sending() -> None:
    """Note that the current attempt is about to write its request."""
    flag = _SENDING.get()
    if flag is not None:
        flag[0] = True


# Failures that prove the command was not executed, whatever it was: retried like any other
# (LOADING: the server is loading its dataset after a restart; MOVED/ASK/TRYAGAIN/CLUSTERDOWN: a
# cluster node refused it; WireNotSent: nothing was written). BusyLoadingError is a redis-py
# ConnectionError, MOVED & co are ResponseErrors: this tuple is checked before both.
_NOT_RUN: Final = (WireNotSent, BusyLoadingError, AskError, TryAgainError, ClusterDownError)
# Failures after which the request may or may not have been applied: retried, and a request that
# is not idempotent counts as possibly applied. RedisClusterException (not a RedisError):
# "Redis Cluster cannot be connected" when no node answers.
_RETRYABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisClusterException,
    WireError,
    OSError,
    TimeoutError,
)


def _bound(value: object) -> str:
    """A range bound or key prefix, checked like a key (InvalidKey) but possibly empty or reserved.

    The index holds user keys only, so a bound inside the reserved namespace is harmless.
    """
    if isinstance(value, bytes | bytearray | memoryview) and not value:
        return ""
    if isinstance(value, str) and (not value or value.startswith(RESERVED_KEY_PREFIX)):
        return check_key("k" + value)[1:]  # the type and UTF-8 checks of a key, on a key-like text
    return check_key(value)


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
        # A prefix such as "{" or "{state" would let a user key complete the reserved namespace
        # ("{" + "statekit-index:}:lex"): then the full key is checked too.
        self._prefix_can_reach_reserved = bool(self._prefix) and RESERVED_KEY_PREFIX.startswith(self._prefix)
        tag = RESERVED_KEY_PREFIX + "index:" + config.key_prefix + "}"
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
        # A request record must outlive every retry of its call: the worst case of one call is
        # (1 + max_retries) attempts of (slot wait + connect + write + read) plus the backoffs.
        attempt = 2 * config.connect_timeout + config.write_timeout + config.read_timeout
        budget = (1 + config.max_retries) * attempt + config.max_retries * config.retry_max_delay
        self._record_ms = max(_RECORD_MIN_MS, math.ceil(2000 * budget))

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

    async def _retry(
        self, op: str, key: str | None, call: Callable[[], Awaitable[T]], *, unsafe: bool = False
    ) -> T:
        """Run ``call`` until it succeeds, retrying connection failures with backoff.

        ``unsafe``: the call is not idempotent (it is protected by a request record, see
        :func:`_remembered`). Retrying it is then safe, but when the retries run out after an
        attempt that may have reached the server, the result is OutcomeUnknown, never a guess.
        """
        if self._closed:
            raise NotInitialized("the Redis backend is closed", backend_type=self.backend_type)
        cfg = self.config
        attempt = 0
        started = time.perf_counter()
        sent = [False]
        token = _SENDING.set(sent if unsafe else None)
        maybe_applied = False
        try:
            while True:
                sent[0] = False
                failure: BaseException
                final = attempt >= cfg.max_retries
                try:
                    result = await self._gated(call)
                except (AuthenticationError, AuthorizationError, AuthError) as exc:
                    self._stats.error_count += 1
                    raise self._error(
                        op, key, f"authentication failed ({_safe(exc, self._password)})"
                    ) from None
                except _NoFreeSlot as exc:
                    failure = exc
                    final = True  # waiting for a slot again would only prolong the wait
                except _NOT_RUN as exc:
                    failure = exc  # not executed: safe to send again
                except ResponseError as exc:
                    self._stats.error_count += 1
                    raise self._error(
                        op, key, f"Redis replied with an error: {_safe(exc, self._password)}"
                    ) from None
                except _RETRYABLE as exc:
                    failure = exc
                    maybe_applied = maybe_applied or sent[0]
                except RedisError as exc:
                    self._stats.error_count += 1
                    raise self._error(op, key, _safe(exc, self._password)) from None
                else:
                    self._latency_total_us += int((time.perf_counter() - started) * 1e6)
                    self._latency_count += 1
                    return result
                if final:
                    self._stats.error_count += 1
                    detail = f"failed after {attempt + 1} attempt(s): {_safe(failure, self._password)}"
                    if maybe_applied:
                        where = f" key {key!r}" if key is not None else ""
                        raise OutcomeUnknown(
                            f"redis {op}{where}: {detail}; the request may or may not have been "
                            "applied (it is not safe to repeat blindly): read the key to find out",
                            backend_type=self.backend_type,
                            key=key,
                        ) from None
                    raise self._error(
                        op, key, f"{detail}; check that the server is up and reachable"
                    ) from None
                delay = min(cfg.retry_max_delay, cfg.retry_base_delay * (2**attempt))
                attempt += 1
                self._stats.retry_count += 1
                await asyncio.sleep(random.uniform(0, delay))
        finally:
            _SENDING.reset(token)

    async def _gated(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` holding one of the ``max_connections`` slots (once per task: re-entrant).

        Waiting for a slot is bounded by ``connect_timeout``: when every connection is stuck on
        a stalled server, later callers fail instead of queueing behind them (not retried: a
        second wait would only make the caller wait longer for the same stalled server).
        """
        if _HELD_GATE.get() is self._gate:
            return await call()
        timeout = self.config.connect_timeout
        try:
            await asyncio.wait_for(self._gate.acquire(), timeout)
        except TimeoutError:
            raise _NoFreeSlot(
                f"no free connection slot within {timeout}s (all {self.config.max_connections} busy: "
                "the server is stalled or overloaded)"
            ) from None
        try:
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
        finally:
            self._gate.release()

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

    def _ttl(self, ttl: object) -> float | None:
        """A validated TTL (ConfigError before anything is sent), or the default one."""
        return self.config.default_ttl if ttl is None else check_ttl(ttl)

    def _key(self, key: object) -> str:
        """A validated key (InvalidKey before anything is sent); UTF-8 bytes become str."""
        key = check_key(key)
        if self._prefix_can_reach_reserved and (self._prefix + key).startswith(RESERVED_KEY_PREFIX):
            raise InvalidKey(
                f"key {key!r} with the key prefix {self._prefix!r} is in statekit's reserved namespace "
                f"({RESERVED_KEY_PREFIX!r}...)",
                key=key,
            )
        return key

    def _keys(self, keys: Iterable[object]) -> list[str]:
        """Every key validated, all before any is used (a batch is valid whole)."""
        checked = check_keys(keys)
        if self._prefix_can_reach_reserved:
            for key in checked:
                self._key(key)
        return checked

    def _record(self, full_key: str, rid: str) -> str:
        """The request record key of one call on ``full_key`` (in its slot, in a cluster)."""
        if self._cluster:
            return "{" + _record_tag(_native.hash_slot(full_key)) + "}:req:" + rid
        return _RECORD_PREFIX + rid

    async def _node_pool(self, full_key: str) -> WirePool:
        """The wire pool of the node that serves ``full_key``."""
        if self._cluster:
            slots = self._slot_map or await self._refresh_slots()
            return self._pool(*slots[_native.hash_slot(full_key)])
        node = self._nodes[0]
        return self._pool(node["host"], node["port"])

    async def _eval(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        """One attempt of ``script`` on the node serving ``keys[0]``, through the wire path.

        The wire path tells "never sent" (WireNotSent) from "sent, no reply" (WireError), which
        redis-py does not by type; error replies come back as redis-py's typed exceptions.
        """
        pool = await self._node_pool(keys[0])
        tail = [len(keys), *keys, *args]
        _sending()
        [[reply]] = await pool.pipeline([_native.encode_commands([["EVALSHA", script.sha, *tail]])], [1])
        if isinstance(reply, hiredis.ReplyError) and isinstance(_reply_error(reply), NoScriptError):
            # Not loaded on this node yet (first use, restart, failover, SCRIPT FLUSH): nothing ran.
            [[reply]] = await pool.pipeline([_native.encode_commands([["EVAL", script.body, *tail]])], [1])
        if isinstance(reply, hiredis.ReplyError):
            error = _reply_error(reply)
            if isinstance(error, AskError):  # MOVED or ASK: the slot map is stale
                self._slot_map = None
            raise error
        return reply

    # -- single keys ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        key = self._key(key)
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
        key = self._key(key)
        client = self._redis()
        full = self._prefix + key
        return bool(await self._retry("exists", key, lambda: client.exists(full)))

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        key = self._key(key)
        value = check_value(value, key)
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

    # The next four are not idempotent: each call sends one request id with every attempt (see
    # _remembered), so a retry after a lost reply returns the first attempt's result.

    async def set_if_not_exists(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        key = self._key(key)
        value = check_value(value, key)
        px = _px(self._ttl(ttl))
        full = self._prefix + key
        record = self._record(full, _request_id())
        if self._cluster:

            async def call() -> bool:
                await self._index_add([key], 0, touch_exp=False)
                stored = bool(
                    await self._eval(_PUT_NX, [full, record], [value, px, key, "0", self._record_ms])
                )
                if stored:
                    await self._index_add([key], px)
                return stored

        else:
            keys = [full, self._lex, self._exp, record]

            async def call() -> bool:
                return bool(await self._eval(_PUT_NX, keys, [value, px, key, "1", self._record_ms]))

        stored = await self._retry("set_if_not_exists", key, call, unsafe=True)
        if stored:
            self._stats.put_count += 1
            self._stats.bytes_written += len(value)
        return stored

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None
    ) -> bool:
        key = self._key(key)
        value = check_value(value, key)
        if expected is not None:
            expected = check_value(expected, key)
        px = _px(self._ttl(ttl))
        full = self._prefix + key
        record = self._record(full, _request_id())
        args: list[Any] = [
            b"" if expected is None else expected,
            "1" if expected is None else "0",
            value,
            px,
            key,
        ]
        if self._cluster:
            client = self._redis()

            async def call() -> bool:
                # The index lives in another slot: add the member first (it may lead, never lag).
                await self._index_add([key], 0, touch_exp=False)
                stored = bool(await self._eval(_CAS, [full, record], [*args, "0", self._record_ms]))
                if stored:
                    await self._index_add([key], px)
                elif not await client.exists(full):
                    await self._prune([key])  # the member added above has no key behind it
                return stored

        else:
            keys = [full, self._lex, self._exp, record]

            async def call() -> bool:
                return bool(await self._eval(_CAS, keys, [*args, "1", self._record_ms]))

        stored = await self._retry("compare_and_set", key, call, unsafe=True)
        if stored:
            self._stats.put_count += 1
            self._stats.bytes_written += len(value)
        return stored

    async def delete(self, key: str) -> bool:
        key = self._key(key)
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
        key = self._key(key)
        full = self._prefix + key
        record = self._record(full, _request_id())
        if self._cluster:

            async def call() -> bytes | None:
                value: bytes | None = await self._eval(_GETDEL, [full, record], [key, "0", self._record_ms])
                await self._index_remove([key])
                return value

        else:
            keys = [full, self._lex, self._exp, record]

            async def call() -> bytes | None:
                value: bytes | None = await self._eval(_GETDEL, keys, [key, "1", self._record_ms])
                return value

        value = await self._retry("get_and_delete", key, call, unsafe=True)
        self._stats.delete_count += 1
        return value

    async def incr_by(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        key = self._key(key)
        amount = check_amount(amount, key)
        px = _px(self._ttl(ttl))
        full = self._prefix + key
        record = self._record(full, _request_id())
        cluster = self._cluster

        async def call() -> bytes | None:
            if cluster:  # the index first: it may lead the value, never lag
                await self._index_add([key], 0, touch_exp=False)
                raw = await self._eval(_INCR, [full, record], [amount, px, key, "0", self._record_ms])
            else:
                keys = [full, self._lex, self._exp, record]
                raw = await self._eval(_INCR, keys, [amount, px, key, "1", self._record_ms])
            if raw is None:  # the stored value is not an integer
                return None
            raw = bytes(raw)
            if cluster and raw.startswith(b"new:"):  # a fresh key: set or clear its expiry entry
                await self._index_add([key], px)
            return raw

        raw = await self._retry("incr_by", key, call, unsafe=True)
        if raw is None:
            return parse_counter(b"not an integer", key, self.backend_type)
        return int(raw.removeprefix(b"new:"))

    # -- ranges --------------------------------------------------------------------------

    async def range(
        self, start: str, end: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        start = _bound(start)
        end = None if end is None else _bound(end)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
        if limit is not None and limit <= 0:
            self._redis()
            return []
        rows = await self._scan_index("range", start, end, limit)
        self._stats.bytes_read += sum(len(v) for _, v in rows)
        return rows

    async def list_keys(self, prefix: str = "") -> list[str]:
        return [key for key, _ in await self._scan_index("list_keys", _bound(prefix), None, None)]

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
        keys = self._keys(keys)
        self._redis()
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
        items = check_pairs(pairs)  # the whole batch, before anything is sent
        px = _px(self._ttl(ttl))
        if self._prefix_can_reach_reserved:
            self._keys([k for k, _ in items])
        self._redis()
        if not items:
            return
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
        replies = await self._standalone_pipeline(
            "batch_put", items[0][0], payloads, counts, check=_check_exec
        )
        for reply in replies:
            _check_exec(reply)

    async def batch_delete(self, keys: Sequence[str]) -> int:
        return await self._delete_keys(self._keys(keys))

    async def _delete_keys(self, keys: list[str]) -> int:
        self._redis()
        if not keys:
            return 0
        rid = _request_id()  # one per call: a retried chunk is remembered, never counted twice
        if self._cluster:
            removed = await self._cluster_delete(keys, rid)
        else:
            size = self.config.pipeline_batch_size
            payloads, counts = [], []
            for n, i in enumerate(range(0, len(keys), size)):
                chunk = keys[i : i + size]
                cmd: list[Any] = ["EVAL", _DELETE_MANY.body, len(chunk) + 3]
                cmd += [self._prefix + k for k in chunk]
                cmd += [self._lex, self._exp, f"{_RECORD_PREFIX}{rid}:{n}", "1", *chunk, self._record_ms]
                payloads.append(_native.encode_commands([cmd]))
                counts.append(1)
            replies = await self._standalone_pipeline("batch_delete", keys[0], payloads, counts, unsafe=True)
            removed = sum(int(_check(reply[0])) for reply in replies)
        stats = self._stats
        stats.pipeline_count += 1
        stats.batch_count += 1
        stats.delete_count += len(keys)
        return removed

    async def _standalone_pipeline(
        self,
        op: str,
        key: str,
        payloads: list[bytes],
        counts: list[int],
        *,
        unsafe: bool = False,
        check: Callable[[list[Any]], object] | None = None,
    ) -> list[list[Any]]:
        """Send ``payloads`` in one round trip; each payload's replies are checked by ``check``.

        The check runs inside the retry loop, so an error reply becomes a StorageError naming
        ``op`` and ``key`` (never a redis-py exception escaping to the caller).
        """
        node = self._nodes[0]
        pool = self._pool(node["host"], node["port"])
        check_payload = _check_all if check is None else check

        async def attempt() -> list[list[Any]]:
            _sending()
            replies = await pool.pipeline(payloads, counts)
            _raise_if_not_run(replies)  # e.g. LOADING after a restart: send again
            for reply in replies:
                check_payload(reply)
            return replies

        return await self._retry(op, key, attempt, unsafe=unsafe)

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
        raise WireNotSent(f"no cluster node answered CLUSTER SLOTS: {last}")

    async def _cluster_run(
        self, op: str, key: str, commands: list[tuple[int, list[Any]]], *, unsafe: bool = False
    ) -> list[Any]:
        """Run single-slot commands on their nodes, concurrently; replies aligned with ``commands``.

        Commands a node refused unexecuted (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, LOADING) are sent
        again, alone, with a fresh slot map; so are those of a node whose connection failed.
        """
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        size = self.config.pipeline_batch_size

        async def attempt() -> None:
            nonlocal pending
            refusals: list[RedisError] = []
            slots = self._slot_map or await self._refresh_slots()
            by_node: dict[tuple[str, int], list[int]] = defaultdict(list)
            for i in pending:
                by_node[slots[commands[i][0]]].append(i)
            _sending()

            async def run_node(node: tuple[str, int], indices: list[int]) -> list[int]:
                chunks = [indices[j : j + size] for j in range(0, len(indices), size)]
                payloads = [_native.encode_commands([commands[i][1] for i in c]) for c in chunks]
                results = await self._pool(*node).pipeline(payloads, [len(c) for c in chunks])
                redo = []
                for chunk, result in zip(chunks, results, strict=True):
                    for i, reply in zip(chunk, result, strict=True):
                        if isinstance(reply, hiredis.ReplyError) and isinstance(
                            _reply_error(reply), _NOT_RUN
                        ):
                            redo.append(i)
                            refusals.append(_reply_error(reply))
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
            if redo:
                self._slot_map = None
                if failure is not None:
                    pending = redo
                    raise failure
                if len(redo) < len(pending) or len(pending) < len(commands):  # part of it ran
                    pending = redo
                    raise WireError(
                        f"a cluster node refused part of a pipeline ({refusals[0]}); sending it again"
                    )
                raise refusals[0]  # none of it ran
            for reply in replies:  # inside the retry loop: an error reply becomes a StorageError
                _check(reply)

        await self._retry(op, key, attempt, unsafe=unsafe)
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

    async def _cluster_delete(self, keys: list[str], rid: str) -> int:
        full = [self._prefix + k for k in keys]
        groups: dict[int, list[str]] = defaultdict(list)
        for slot, f in zip(_native.hash_slots(full), full, strict=True):
            groups[slot].append(f)
        commands: list[tuple[int, list[Any]]] = []
        for slot, fs in groups.items():  # one remembered script per slot, its record in that slot
            record = "{" + _record_tag(slot) + "}:req:" + rid
            unique = list(dict.fromkeys(fs))
            commands.append(
                (slot, ["EVAL", _DELETE_MANY.body, len(unique) + 1, *unique, record, "0", self._record_ms])
            )
        replies = await self._cluster_run("batch_delete", keys[0], commands, unsafe=True)
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
        prefix = _bound(prefix)
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
            replies = await self._standalone_pipeline(
                "export_items", names[0], payloads, counts, check=_check_exec
            )
            for reply in replies:
                result = _check_exec(reply)
                rows.extend(zip(result[0], result[1:], strict=True))
        elif full:
            slots = _native.hash_slots(full)
            commands = [(slot, ["GET", f]) for slot, f in zip(slots, full, strict=True)]
            commands += [(slot, ["PEXPIRETIME", f]) for slot, f in zip(slots, full, strict=True)]
            values_then_expiries = await self._cluster_run("export_items", names[0], commands)
            rows = list(
                zip(values_then_expiries[: len(full)], values_then_expiries[len(full) :], strict=True)
            )
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
        prefix = _bound(prefix)
        columns = item_columns(items)
        keys = self._keys(columns.keys)  # everything is checked before the old keys go
        if any(k is not c for k, c in zip(columns.keys, keys, strict=True)):
            columns = ItemColumns(keys, columns.values, columns.expires_at)
        check_item_prefix(columns.keys, prefix)
        now = time.time()
        forever: list[tuple[str, bytes]] = []
        expiring: list[tuple[str, bytes, int]] = []
        for key, value, expires_at in columns:
            if expires_at is None:
                forever.append((key, value))
                continue
            if not isinstance(expires_at, int | float) or not expires_at - now <= MAX_TTL_SECONDS:
                raise CorruptData(
                    f"item {key!r} has expires_at {expires_at!r}: not a unix time within 100 years"
                )
            if expires_at > now:
                expiring.append((key, value, int(expires_at * 1000)))
        old = await self._index_names(prefix)
        if old:
            await self._delete_keys(old)  # index members as they are (not re-validated)
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
            replies = await self._standalone_pipeline(
                "replace_prefix", items[0][0], payloads, counts, check=_check_exec
            )
            for reply in replies:
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
        prefix = _bound(prefix)
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


def _reply_error(reply: hiredis.ReplyError) -> RedisError:
    """An error reply of the wire path as the typed redis-py exception (BusyLoadingError, MovedError, ...).

    redis-py's own parser table maps the reply's error code (its first word, as RESP defines it)
    to the class, so both paths classify errors the same way and by type.
    """
    error: RedisError = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return error


def _check(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise _reply_error(reply)
    return reply


def _raise_if_not_run(replies: list[list[Any]]) -> None:
    """Raise when a server refused a payload of a pipeline unexecuted (LOADING, ...).

    When no payload ran, the refusal itself (one of ``_NOT_RUN``: sending again is always safe);
    when some did, a WireError (retried too, but a request that is not idempotent may have been
    applied in part). Other error replies are left to the caller.
    """
    refused: RedisError | None = None
    ran = False
    for payload in replies:
        errors = (_reply_error(r) for r in payload if isinstance(r, hiredis.ReplyError))
        not_run = next((e for e in errors if isinstance(e, _NOT_RUN)), None)
        if not_run is None:
            ran = True
        elif refused is None:
            refused = not_run
    if refused is None:
        return
    if ran:
        raise WireError(f"Redis refused part of a pipeline ({refused}); sending it again")
    raise refused


def _check_all(replies: list[Any]) -> None:
    for reply in replies:
        _check(reply)


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
