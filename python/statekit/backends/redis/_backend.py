"""The Redis backend's façade: validation, operation plans and counters over one transport.

Keys are stored as ``key_prefix + key`` (plain strings, readable by any Redis client). The range
index (:mod:`._index`) makes ``range``/``list_keys`` cost O(log n + k) without ``KEYS`` or
``SCAN``. Consistency of the index:

* Where the topology lets one transaction span slots (one server), every single-key write updates
  the value and its index shard in one Lua call, and each batch chunk is one ``MULTI``/``EXEC``
  holding its writes and the index updates. The index never lacks a live key.
* Otherwise (a cluster: the shard is in another slot) writes add to the index *before* the value
  write and deletes remove from it *after*; a crash in between leaves a member without a value.
* Either way the index may hold members whose key has expired or was deleted by another client:
  reads drop them (``range`` reads the values and prunes the missing members, re-checking that
  they are still missing), and expired members are pruned before counting.

With ``range_index=False`` nothing of that is written and ``range``/``list_keys`` raise
ConfigError.

Every key statekit keeps for itself (the index, the request records below) starts with
``{statekit-`` (:data:`~statekit.backends.base.RESERVED_KEY_PREFIX`); user keys starting with it
are refused with InvalidKey, as are keys that would reach it through the key prefix (prefix
``"{"``, key ``"statekit-..."``) and key prefixes starting with it. Keys (``str``, or UTF-8
``bytes`` as the same key) and TTLs are validated at every entry point, a batch whole, before
anything is sent.

The operations that are not idempotent (``incr_by``, ``compare_and_set``, ``get_and_delete``,
``set_if_not_exists``, ``batch_delete``, the fenced writes) are Lua scripts that carry a random
request id: the script first looks for the id's record (``{statekit-r...}:req:<id>``, in the data
key's slot) and returns the result remembered there, else applies the operation and records its
result for max(5 minutes, twice the retry budget), in one atomic call. A retry after a lost reply therefore
returns the first result instead of applying the operation again.

Retries, timeouts and connection limits are the transport's (:mod:`._transport`), one policy
for everything; after the last retry a ``StorageError`` names the operation and the key, or, for
the non-idempotent operations when an attempt may have reached the server,
:class:`~statekit.errors.OutcomeUnknown`: statekit never guesses. A batch that fails part-way may
have applied part of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from statekit import _native
from statekit._fence import Fence, check_fence
from statekit.backends._fencing import stale_fence
from statekit.backends.base import (
    MAX_TTL_SECONDS,
    RESERVED_KEY_PREFIX,
    Item,
    ItemColumns,
    check_amount,
    check_item_prefix,
    check_key,
    check_keys,
    check_limit,
    check_pairs,
    check_ttl,
    check_value,
    item_columns,
    parse_counter,
    prefix_upper_bound,
)
from statekit.backends.redis import _scripts as lua
from statekit.backends.redis._config import RedisConfig, RedisStats
from statekit.backends.redis._index import RangeIndex
from statekit.backends.redis._topology import Block, make_topology
from statekit.backends.redis._transport import LATENCY_BUCKETS, Transport, check, check_exec
from statekit.errors import (
    ConfigError,
    CorruptData,
    InvalidKey,
    KeyNotFound,
    NotInitialized,
    StaleFence,
)

__all__ = ["RedisStateBackend"]

#: The shortest time a request record is kept (ms); longer when the retry budget is.
_RECORD_MIN_MS: Final = 300_000


def _request_id() -> str:
    # os.urandom, not the random module: forked workers share random's state and would repeat ids.
    return os.urandom(12).hex()


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


def _now_ms() -> int:
    # Expiry scores only order and count the TTL index; the server's own PX decides expiry.
    return int(time.time() * 1000)


class RedisStateBackend:
    """A :class:`~statekit.backends.StateBackend` on Redis (standalone or cluster).

    Connects lazily on the first operation. ``default_ttl`` of the config applies to writes
    that give no TTL. Requires the ``redis`` extra (``pip install statekit[redis]``).

    ``client``: a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` of your own; statekit
    then uses its connection pool(s) (its address, TLS, AUTH and db; ``max_connections`` of the
    config still bounds statekit's concurrent use) and does not close it. The config's other
    options (key prefix, timeouts, retries, index) apply as usual.

    Example::

        config = RedisConfig.builder().url("redis://localhost:6379").key_prefix("app:").build()
        backend = RedisStateBackend(config)
        await backend.put("item:3", b"...")   # stored as "app:item:3"
    """

    backend_type = "redis"
    persistent = True

    def __init__(self, config: RedisConfig | None = None, *, client: Any = None, **options: Any) -> None:
        if config is None:
            if client is not None and isinstance(client, aioredis.RedisCluster):
                options.setdefault("cluster_mode", True)
            config = RedisConfig(**options)
        elif options:
            raise ConfigError("pass either a RedisConfig or keyword options, not both")
        self.config = config
        self._prefix = config.key_prefix
        # A prefix such as "{" or "{state" would let a user key complete the reserved namespace
        # ("{" + "statekit-index:}:lex"): then the full key is checked too.
        self._prefix_can_reach_reserved = bool(self._prefix) and RESERVED_KEY_PREFIX.startswith(self._prefix)
        self._stats = RedisStats(backend_type=self.backend_type)
        self._counts: dict[str, tuple[int, int]] = {}
        self._transport = Transport(
            max_connections=config.max_connections,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            write_timeout=config.write_timeout,
            max_retries=config.max_retries,
            retry_base_delay=config.retry_base_delay,
            retry_max_delay=config.retry_max_delay,
            secret=config.password,
            on_retry=self._count_retry,
            on_error=self._count_error,
        )
        self._topology = make_topology(config, self._transport, client)
        self._transport.before_attempt = self._start
        shards = config.index_shards
        assert shards is not None  # resolved by RedisConfig
        self._index = (
            RangeIndex(config.key_prefix, shards, self._topology, config.index_layout)
            if config.range_index
            else None
        )
        self._checked_meta = False
        # A request record must outlive every retry of its call: the worst case of one call is
        # (1 + max_retries) attempts of (slot wait + connect + write + read) plus the backoffs.
        attempt = 2 * config.connect_timeout + config.write_timeout + config.read_timeout
        budget = (1 + config.max_retries) * attempt + config.max_retries * config.retry_max_delay
        self._record_ms = max(_RECORD_MIN_MS, math.ceil(2000 * budget))

    def __repr__(self) -> str:
        return f"RedisStateBackend({self.config!r})"

    def _count_retry(self) -> None:
        self._stats.retry_count += 1

    def _count_error(self) -> None:
        self._stats.error_count += 1

    @property
    def _closed(self) -> bool:
        return self._transport.closed

    def _open(self) -> None:
        if self._transport.closed:
            raise NotInitialized("the Redis backend is closed", backend_type=self.backend_type)

    async def _start(self) -> None:
        """Before each attempt, under the connection gate: connect, check the index settings."""
        await self._topology.start()
        if not self._checked_meta:
            await self._check_meta()

    async def _check_meta(self) -> None:
        """Check that this client's index settings match the ones recorded for its key prefix.

        The layout of earlier versions (one flat shard) is recorded by nothing, so a read-only
        client with it writes nothing; any other layout is recorded (``SET NX``) on first use. A
        record without ",paged" is a flat index: a paged client must not read it (it would see an
        empty index: ranges, exports and restores would miss every key), nor the other way round.
        """
        cfg = self.config
        legacy = RangeIndex(cfg.key_prefix, 1, self._topology)
        ours = "off"
        if cfg.range_index:
            ours = f"shards={cfg.index_shards}" + (",paged" if cfg.index_layout == "paged" else "")
        slot = self._topology.slot(legacy.meta)
        if ours == "shards=1":
            theirs = await self._topology.call(slot, ["GET", legacy.meta])
        else:
            theirs = await self._topology.call(slot, ["SET", legacy.meta, ours, "NX", "GET"])
            if theirs is None and await self._topology.call(slot, ["EXISTS", legacy.lex[0]]):
                await self._topology.call(slot, ["DEL", legacy.meta])
                theirs = b"shards=1"
        if theirs is not None and theirs.decode() != ours:
            raise ConfigError(
                f"the Redis index of key prefix {cfg.key_prefix!r} has the layout {theirs.decode()!r} and "
                f"this client asks for {ours!r}: every client of one key prefix must use the same "
                "range_index, index_shards and index_layout"
            )
        self._checked_meta = True

    # -- validation ----------------------------------------------------------------------

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

    def _range_index(self, op: str) -> RangeIndex:
        if self._index is None:
            raise ConfigError(
                f"redis {op}: this backend was configured with range_index=False, so it keeps no index "
                "of its keys and cannot list or range-query them; use range_index=True (the default)"
            )
        return self._index

    # -- one attempt of a command or a script ----------------------------------------------

    async def _command(self, full_key: str, command: list[Any]) -> Any:
        return await self._topology.call(self._topology.slot(full_key), command)

    async def _eval(self, script: lua.Script, keys: list[str], args: list[Any]) -> Any:
        """One attempt of ``script`` on the server of ``keys[0]`` (EVAL when it is not loaded)."""
        slot = self._topology.slot(keys[0])
        tail = [len(keys), *keys, *args]
        try:
            return await self._topology.call(slot, ["EVALSHA", script.sha, *tail])
        except NoScriptError:  # not loaded there yet (first use, restart, failover): nothing ran
            return await self._topology.call(slot, ["EVAL", script.body, *tail])

    def _index_keys(self, full: str) -> tuple[list[str], str]:
        """The index keys a script on ``full`` may update itself, and its "update the index" flag."""
        index = self._index
        if index is None or not index.together:
            return [], "0"
        shard = index.shard_of(full)
        return [index.root[shard], index.exp[shard]], "1"

    def _apart(self) -> RangeIndex | None:
        """The index, when it must be written by separate commands (another slot)."""
        index = self._index
        return index if index is not None and not index.together else None

    async def _index_add(self, names: list[str], px: int | None, op: str, key: str) -> None:
        """Add members to their shards; ``px`` > 0 sets their expiry, 0 clears it, None leaves it."""
        index = self._apart()
        if index is None:
            return
        size = self.config.pipeline_batch_size
        if px is None:
            blocks = index.member_blocks(names, size)
        else:
            blocks = index.add_blocks(names, _now_ms() + px if px else None, size)
        await self._topology.run(op, key, blocks)

    async def _index_remove(self, names: list[str], op: str, key: str) -> None:
        index = self._apart()
        if index is not None:
            await self._topology.run(op, key, index.remove_blocks(names, self.config.pipeline_batch_size))

    # -- single keys ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        key = self._key(key)
        self._open()
        full = self._prefix + key
        value: bytes | None = await self._transport.retry(
            "get", key, lambda: self._command(full, ["GET", full])
        )
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
        self._open()
        full = self._prefix + key
        return bool(await self._transport.retry("exists", key, lambda: self._command(full, ["EXISTS", full])))

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        key = self._key(key)
        value = check_value(value, key)
        px = _px(self._ttl(ttl))
        self._open()
        full = self._prefix + key
        index_keys, together = self._index_keys(full)
        set_cmd: list[Any] = ["SET", full, value, "PX", px] if px else ["SET", full, value]

        async def call() -> None:
            if together == "1":
                await self._eval(lua.PUT, [full, *index_keys], [value, px, key, _now_ms() + px])
                return
            await self._index_add([key], px, "put", key)  # the index first: it may lead, never lag
            await self._command(full, set_cmd)

        await self._transport.retry("put", key, call)
        self._stats.put_count += 1
        self._stats.bytes_written += len(value)

    # The next four are not idempotent: each call sends one request id with every attempt (see
    # _scripts.remembered), so a retry after a lost reply returns the first attempt's result.

    async def set_if_not_exists(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        key = self._key(key)
        value = check_value(value, key)
        px = _px(self._ttl(ttl))
        self._open()
        full = self._prefix + key
        record = self._topology.record_key(full, _request_id())
        index_keys, together = self._index_keys(full)

        async def call() -> bool:
            await self._index_add([key], None, "set_if_not_exists", key)
            args = [value, px, key, together, _now_ms() + px, self._record_ms]
            stored = bool(await self._eval(lua.PUT_NX, [full, *index_keys, record], args))
            if stored:
                await self._index_add([key], px, "set_if_not_exists", key)
            return stored

        stored = await self._transport.retry("set_if_not_exists", key, call, unsafe=True)
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
        self._open()
        full = self._prefix + key
        record = self._topology.record_key(full, _request_id())
        index_keys, together = self._index_keys(full)
        absent = "1" if expected is None else "0"
        head: list[Any] = [b"" if expected is None else expected, absent, value, px, key, together]

        async def call() -> bool:
            await self._index_add([key], None, "compare_and_set", key)
            args = [*head, _now_ms() + px, self._record_ms]
            stored = bool(await self._eval(lua.CAS, [full, *index_keys, record], args))
            if stored:
                await self._index_add([key], px, "compare_and_set", key)
            elif self._apart() is not None and not await self._command(full, ["EXISTS", full]):
                await self._prune([key])  # the member added above has no key behind it
            return stored

        stored = await self._transport.retry("compare_and_set", key, call, unsafe=True)
        if stored:
            self._stats.put_count += 1
            self._stats.bytes_written += len(value)
        return stored

    async def delete(self, key: str) -> bool:
        key = self._key(key)
        self._open()
        full = self._prefix + key
        index_keys, together = self._index_keys(full)

        async def call() -> int:
            if together == "1":
                return int(await self._eval(lua.DELETE, [full, *index_keys], [key]))
            n = int(await self._command(full, ["DEL", full]))
            await self._index_remove([key], "delete", key)  # after the value: it may lead, never lag
            return n

        removed = await self._transport.retry("delete", key, call)
        self._stats.delete_count += 1
        return bool(removed)

    async def get_and_delete(self, key: str) -> bytes | None:
        key = self._key(key)
        self._open()
        full = self._prefix + key
        record = self._topology.record_key(full, _request_id())
        index_keys, together = self._index_keys(full)

        async def call() -> bytes | None:
            value: bytes | None = await self._eval(
                lua.GETDEL, [full, *index_keys, record], [key, together, self._record_ms]
            )
            await self._index_remove([key], "get_and_delete", key)
            return value

        value = await self._transport.retry("get_and_delete", key, call, unsafe=True)
        self._stats.delete_count += 1
        return value

    async def incr_by(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        key = self._key(key)
        amount = check_amount(amount, key)
        px = _px(self._ttl(ttl))
        self._open()
        full = self._prefix + key
        record = self._topology.record_key(full, _request_id())
        index_keys, together = self._index_keys(full)

        async def call() -> bytes | None:
            await self._index_add([key], None, "incr_by", key)  # the index first: it may lead, never lag
            args = [amount, px, key, together, _now_ms() + px, self._record_ms]
            raw = await self._eval(lua.INCR, [full, *index_keys, record], args)
            if raw is None:  # the stored value is not an integer
                return None
            raw = bytes(raw)
            if raw.startswith(b"new:"):  # a fresh key: set or clear its expiry entry
                await self._index_add([key], px, "incr_by", key)
            return raw

        raw = await self._transport.retry("incr_by", key, call, unsafe=True)
        if raw is None:
            return parse_counter(b"not an integer", key, self.backend_type)
        return int(raw.removeprefix(b"new:"))

    # -- expiry ----------------------------------------------------------------------------

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires (``PTTL``), None when it never does; KeyNotFound when missing."""
        key = self._key(key)
        self._open()
        full = self._prefix + key
        ms = int(await self._transport.retry("ttl", key, lambda: self._command(full, ["PTTL", full])))
        if ms == -2:
            raise KeyNotFound(key)
        return None if ms == -1 else ms / 1000

    async def expire(self, key: str, ttl: float) -> bool:
        """``PEXPIRE`` plus the index's expiry entry (one script on one server); True when the key exists."""
        key = self._key(key)
        seconds = check_ttl(ttl)
        if seconds is None:
            raise ConfigError("expire needs a ttl; use persist() to remove an expiry")
        return (await self._change_expiry("expire", key, _px(seconds)))[0]

    async def persist(self, key: str) -> bool:
        """``PERSIST`` plus the index's expiry entry; True when the key had an expiry.

        A retry after a lost reply may report False for an expiry the first attempt removed.
        """
        key = self._key(key)
        return (await self._change_expiry("persist", key, 0))[1]

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        """Refresh ``key``'s expiry to ``ttl`` (None: the config's ``default_ttl``, else none)."""
        key = self._key(key)
        px = _px(self._ttl(ttl))
        return (await self._change_expiry("touch", key, px))[0]

    async def _change_expiry(self, op: str, key: str, px: int) -> tuple[bool, bool]:
        """Set (``px`` ms) or clear (0) an expiry: ``(exists, changed)``.

        On one server the value and the index's expiry entry change in one script. In a cluster
        the entry is changed after the value (a crash in between only skews ``expiring_keys``
        until the next prune; range reads never use it).
        """
        self._open()
        full = self._prefix + key
        index_keys, together = self._index_keys(full)

        async def call() -> tuple[bool, bool]:
            score = _now_ms() + px
            exists, changed = await self._eval(lua.EXPIRY, [full, *index_keys], [px, key, together, score])
            index = self._apart()
            if exists and index is not None:
                shard = index.shard_of(full)
                entry: list[Any] = (
                    ["ZADD", index.exp[shard], score, key] if px else ["ZREM", index.exp[shard], key]
                )
                await self._topology.call(index.slots[shard], entry)
            return bool(exists), bool(changed)

        return await self._transport.retry(op, key, call)

    async def clear(self, prefix: str = "") -> int:
        """Delete every key under ``prefix``, page by page through the range index.

        Never ``KEYS`` or ``SCAN`` of the server: only keys this backend's index knows are
        deleted (with their index members), so other key prefixes and other applications' keys
        on the same server are untouched. Not atomic: a key written under ``prefix`` while
        ``clear`` runs may survive it. With ``range_index=False`` there is no index to walk:
        ConfigError, and nothing is deleted.
        """
        prefix = _bound(prefix)
        self._open()
        index = self._index
        if index is None:
            raise ConfigError(
                "redis clear: this backend was configured with range_index=False, so it keeps no index "
                "of its keys and cannot find them without scanning the whole server (which statekit "
                "never does); nothing was deleted. Delete known keys with batch_delete, or use "
                "range_index=True (the default)"
            )
        upper = prefix_upper_bound(prefix)
        cursor: list[bytes | None] = [None] * index.shards
        removed = 0
        while names := await index.scan("clear", prefix, prefix, upper, None, cursor):
            removed += await self._delete_keys(names, "clear")
        return removed

    async def scan_range(
        self, start: str, end: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        """Live ``(key, value)`` pairs with ``start <= key < end`` (``end=None``: unbounded)."""
        return await self._ranged("scan_range", start, end, limit, bounded=True)

    # -- ranges --------------------------------------------------------------------------

    async def range(
        self, start: str, end: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        return await self._ranged("range", start, end, limit, bounded=False)

    async def _ranged(
        self, op: str, start: str, end: str | None, limit: int | None, *, bounded: bool
    ) -> list[tuple[str, bytes]]:
        """``range``/``scan_range``: arguments checked like every other backend's, then the index."""
        start = _bound(start)
        end = None if end is None else _bound(end)
        limit = check_limit(limit)
        self._open()
        index = self._range_index(op)
        if limit == 0:
            return []
        rows = await self._scan(index, op, start, end, limit, bounded=bounded)
        self._stats.bytes_read += sum(len(v) for _, v in rows)
        return rows

    async def list_keys(self, prefix: str = "") -> list[str]:
        prefix = _bound(prefix)
        self._open()
        index = self._range_index("list_keys")
        return [key for key, _ in await self._scan(index, "list_keys", prefix, None, None)]

    async def _scan(
        self,
        index: RangeIndex,
        op: str,
        start: str,
        end: str | None,
        limit: int | None,
        *,
        bounded: bool = False,
    ) -> list[tuple[str, bytes]]:
        """Live keys from the merged index shards, with their values; dead members are pruned.

        ``end=None`` is a prefix query, or no upper bound at all when ``bounded``.
        """
        upper = prefix_upper_bound(start) if end is None and not bounded else end
        cursor: list[bytes | None] = [None] * index.shards
        out: list[tuple[str, bytes]] = []
        while limit is None or len(out) < limit:
            names = await index.scan(
                op, start, start, upper, None if limit is None else limit - len(out), cursor
            )
            if not names:
                break
            values = await self._fetch([self._prefix + n for n in names], op)
            dead = [n for n, v in zip(names, values, strict=True) if v is None]
            out.extend((n, v) for n, v in zip(names, values, strict=True) if v is not None)
            if dead:
                await self._transport.retry(op, start, functools.partial(self._prune, dead))
        return out

    async def _fetch(self, full_keys: list[str], op: str) -> list[bytes | None]:
        """Values of prefixed keys, one MGET per slot group and chunk (no stats counted)."""
        if not full_keys:
            return []
        size = self.config.pipeline_batch_size
        groups = self._topology.by_slot(full_keys)
        order: list[list[int]] = []
        blocks: list[Block] = []
        for slot, idx in groups.items():
            for j in range(0, len(idx), size):
                chunk = idx[j : j + size]
                order.append(chunk)
                blocks.append((slot, [["MGET", *(full_keys[i] for i in chunk)]]))
        out: list[bytes | None] = [None] * len(full_keys)
        for chunk, reply in zip(order, await self._topology.run(op, full_keys[0], blocks), strict=True):
            for i, value in zip(chunk, reply[0], strict=True):
                out[i] = value
        return out

    async def _exists_many(self, full_keys: list[str], op: str) -> list[bool]:
        slots = self._topology.slots(full_keys)
        blocks: list[Block] = [(s, [["EXISTS", k]]) for s, k in zip(slots, full_keys, strict=True)]
        return [bool(r[0]) for r in await self._topology.run(op, full_keys[0], blocks)]

    async def _prune(self, members: list[str]) -> int:
        """One attempt: remove index members whose key does not exist; returns how many."""
        index = self._index
        if index is None:
            return 0
        removed = 0
        for shard, names in index.group(members).items():
            if index.together:  # re-checked and removed atomically by a script
                keys = [index.root[shard], index.exp[shard], *(self._prefix + m for m in names)]
                removed += int(await self._eval(lua.PRUNE, keys, names))
                continue
            # Another slot: remove, then re-add those whose key came back meanwhile.
            slot = index.slots[shard]
            for cmd in index.remove_cmds(shard, names):
                await self._topology.call(slot, cmd)
            back = await self._exists_many([self._prefix + m for m in names], "prune")
            revived = [m for m, alive in zip(names, back, strict=True) if alive]
            if revived:
                for cmd in index.add_cmds(shard, revived, False):
                    await self._topology.call(slot, cmd)
            removed += len(names) - len(revived)
        return removed

    async def _prune_expired(self, index: RangeIndex) -> None:
        now = _now_ms()
        for shard in range(index.shards):
            slot = index.slots[shard]
            if index.together:
                await self._eval(
                    lua.PRUNE_EXPIRED, [index.root[shard], index.exp[shard]], [self._prefix, now]
                )
                continue
            dead = [
                m.decode()
                for m in await self._topology.call(
                    slot, ["ZRANGEBYSCORE", index.exp[shard], "-inf", now, "LIMIT", 0, 10_000]
                )
            ]
            if dead:
                alive = await self._exists_many([self._prefix + m for m in dead], "stats")
                gone = [m for m, live in zip(dead, alive, strict=True) if not live]
                if gone:
                    await self._prune(gone)

    # -- batches -------------------------------------------------------------------------

    async def batch_get(self, keys: Sequence[str]) -> list[bytes | None]:
        keys = self._keys(keys)
        self._open()
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
        self._open()
        if not items:
            return
        await self._put_items(items, px, None, "batch_put")
        stats = self._stats
        stats.pipeline_count += 1
        stats.batch_count += 1
        stats.put_count += len(items)
        stats.bytes_written += sum(len(v) for _, v in items)

    async def _put_items(
        self, items: Sequence[tuple[str, bytes]], px: int, expires_at: list[int] | None, op: str
    ) -> None:
        """Write ``items`` (a relative TTL ``px``, or absolute expiries in unix ms) with their index."""
        size = self.config.pipeline_batch_size
        prefix = self._prefix
        index = self._index
        at: list[int] | int | None = (
            expires_at if expires_at is not None else (_now_ms() + px if px else None)
        )
        names = [k for k, _ in items]
        full = [prefix + k for k in names] if prefix else names
        together = index is not None and index.together
        if not together and expires_at is None and not px and not self._topology.spans_slots:
            # A cluster, plain values: the MSETs are grouped by slot and encoded in Rust, and sent
            # per node (per-slot blocks cost more client time than the commands themselves).
            if index is not None:  # the index first: it may lead the values, never lag
                await self._topology.run(op, names[0], index.add_blocks(names, at, size))
            values = [v for _, v in items]
            step = 16 * size  # bounds one payload per node to ~16 chunks of values
            for j in range(0, len(full), step):
                slots, ends, payload = _native.encode_msets_by_slot(
                    full[j : j + step], values[j : j + step], size
                )
                await self._topology.run_encoded(op, names[0], slots, ends, payload)
            return
        # Group by slot (one server: a single group), then chunk: one MULTI or one run of SETs each.
        groups = self._topology.by_slot(full)
        blocks: list[Block] = []
        for slot, idx in groups.items():
            for j in range(0, len(idx), size):
                chunk = idx[j : j + size]
                writes: list[list[Any]]
                if expires_at is not None:
                    writes = [["SET", full[i], items[i][1], "PXAT", expires_at[i]] for i in chunk]
                elif px:
                    writes = [["SET", full[i], items[i][1], "PX", px] for i in chunk]
                else:
                    mset: list[Any] = ["MSET"]
                    for i in chunk:
                        mset += (full[i], items[i][1])
                    writes = [mset]
                if together:
                    assert index is not None
                    chunk_names = [names[i] for i in chunk]
                    chunk_at = [expires_at[i] for i in chunk] if expires_at is not None else at
                    index_cmds = [
                        c for _, cmds in index.add_blocks(chunk_names, chunk_at, size) for c in cmds
                    ]
                    blocks.append((slot, [["MULTI"], *index_cmds, *writes, ["EXEC"]]))
                elif len(writes) == 1 or self._topology.spans_slots:
                    blocks.append((slot, writes))
                else:
                    blocks.extend((slot, [w]) for w in writes)
        if index is not None and not together:  # the index first: it may lead the values, never lag
            await self._topology.run(op, names[0], index.add_blocks(names, at, size))
        replies = await self._topology.run(op, names[0], blocks)
        if together:
            for reply in replies:
                check_exec(reply)

    async def batch_delete(self, keys: Sequence[str]) -> int:
        keys = self._keys(keys)
        self._open()
        return await self._delete_keys(keys)

    async def _delete_keys(self, keys: list[str], op: str = "batch_delete") -> int:
        if not keys:
            return 0
        rid = _request_id()  # one per call: a retried chunk is remembered, never counted twice
        prefix = self._prefix
        size = self.config.pipeline_batch_size
        index = self._index
        together = index is not None and index.together
        full = [prefix + k for k in keys]
        groups = self._topology.by_slot(full)
        blocks: list[Block] = []
        for slot, idx in groups.items():
            for n, j in enumerate(range(0, len(idx), size)):
                chunk = list(dict.fromkeys(idx[j : j + size]))
                data_keys = list(dict.fromkeys(full[i] for i in chunk))
                shard_keys: list[str] = []
                shard_args: list[Any] = []
                if together:
                    assert index is not None
                    by_shard = index.group(list(dict.fromkeys(keys[i] for i in chunk)))
                    for shard, members in by_shard.items():
                        shard_keys += (index.root[shard], index.exp[shard])
                        shard_args += (len(members), *members)
                record = self._topology.record_key(data_keys[0], f"{rid}:{slot}:{n}")
                cmd: list[Any] = ["EVAL", lua.DELETE_MANY.body, len(data_keys) + len(shard_keys) + 1]
                cmd += [*data_keys, *shard_keys, record, len(shard_keys) // 2, *shard_args, self._record_ms]
                blocks.append((slot, [cmd]))
        replies = await self._topology.run(op, keys[0], blocks, unsafe=True)
        removed = sum(int(check(r[0])) for r in replies)
        if index is not None and not together:  # the index after the values: it may lead, never lag
            await self._topology.run(op, keys[0], index.remove_blocks(keys, size))
        stats = self._stats
        stats.pipeline_count += 1
        stats.batch_count += 1
        stats.delete_count += len(keys)
        return removed

    # -- fenced writes (see backends/_fencing.py) ------------------------------------------
    #
    # The record of each (lock name, key) is a field ``<lock name>\0<full key>`` -> highest token
    # of a hash in the key's own hash slot, in the reserved namespace (``{statekit-r}:fence`` on
    # one server; ``{<the slot's record tag>}:fence`` per slot in a cluster). One Lua script
    # (_scripts.FENCED) checks the fields, records the token and writes (with the range index
    # where it is in the same slot), so the check and the write are atomic per slot. On a
    # standalone server the script also reads the lock's fence counter
    # (``{statekit-lock:<name>}:fence``, see statekit.locks.redis) and refuses when a newer token
    # of the lock has been issued at all, even if it has not written the key yet; in a cluster
    # that counter is in another slot, so only the per-key record applies there. Each script
    # carries a request record, like incr_by: a retry after a lost reply gets the first result,
    # and a retry that cannot be decided raises OutcomeUnknown.

    async def fenced_put(self, fence: Fence, key: str, value: bytes, ttl: float | None = None) -> None:
        """``put``, refused with StaleFence (nothing written) when a newer token of ``fence.name``
        wrote ``key`` or, on a standalone server, has been issued by ``RedisLock``."""
        fence = check_fence(fence)
        key = self._key(key)
        value = check_value(value, key)
        px = _px(self._ttl(ttl))
        self._open()
        if self._apart() is not None:
            await self._fence_precheck(fence, [key], "put")
            await self._index_add([key], px, "put", key)  # the index first: it may lead, never lag
        await self._fenced_run("put", "p", fence, [key], [value], px)
        self._stats.put_count += 1
        self._stats.bytes_written += len(value)

    async def fenced_batch_put(
        self, fence: Fence, pairs: Iterable[tuple[str, bytes]], ttl: float | None = None
    ) -> None:
        """``batch_put`` under a fence: refused whole (nothing written) when a key is stale.

        On one server the batch is one atomic script. In a cluster, a batch spanning several hash
        slots is checked in every slot first (read-only), then written by one atomic script per
        slot that checks again: it is atomic per slot, not as a whole (a newer holder writing
        between the two steps gets StaleFence raised here after other slots were written).
        """
        fence = check_fence(fence)
        items = check_pairs(pairs)  # the whole batch, before anything is sent
        px = _px(self._ttl(ttl))
        keys = [k for k, _ in items]
        if self._prefix_can_reach_reserved:
            self._keys(keys)
        self._open()
        if not items:
            return
        await self._fence_precheck(fence, keys, "batch_put")
        await self._index_add(keys, px, "batch_put", keys[0])  # apart only: it may lead, never lag
        await self._fenced_run("batch_put", "p", fence, keys, [v for _, v in items], px)
        stats = self._stats
        stats.batch_count += 1
        stats.put_count += len(items)
        stats.bytes_written += sum(len(v) for _, v in items)

    async def fenced_batch_delete(self, fence: Fence, keys: Sequence[str]) -> int:
        """``batch_delete`` under a fence (recorded like a write); atomic per slot as
        :meth:`fenced_batch_put`."""
        fence = check_fence(fence)
        keys = self._keys(keys)
        self._open()
        if not keys:
            return 0
        await self._fence_precheck(fence, keys, "batch_delete")
        removed = await self._fenced_run("batch_delete", "d", fence, keys, None, 0)
        await self._index_remove(keys, "batch_delete", keys[0])  # after the values (apart only)
        self._stats.batch_count += 1
        self._stats.delete_count += len(keys)
        return removed

    async def fenced_compare_and_set(
        self, fence: Fence, key: str, expected: bytes | None, value: bytes, ttl: float | None = None
    ) -> bool:
        """``compare_and_set`` under a fence (the fence is recorded even when the compare fails)."""
        fence = check_fence(fence)
        key = self._key(key)
        value = check_value(value, key)
        if expected is not None:
            expected = check_value(expected, key)
        px = _px(self._ttl(ttl))
        self._open()
        apart = self._apart() is not None
        if apart:
            await self._fence_precheck(fence, [key], "compare_and_set")
            await self._index_add([key], None, "compare_and_set", key)
        stored = bool(
            await self._fenced_run("compare_and_set", "c", fence, [key], [value], px, expected=expected)
        )
        if apart:
            if stored:
                await self._index_add([key], px, "compare_and_set", key)
            elif not await self._transport.retry(
                "compare_and_set",
                key,
                lambda: self._command(self._prefix + key, ["EXISTS", self._prefix + key]),
            ):
                await self._prune([key])  # the member added above has no key behind it
        if stored:
            self._stats.put_count += 1
            self._stats.bytes_written += len(value)
        return stored

    def _fence_fields(self, fence: Fence, full: list[str]) -> list[str]:
        name = fence.name
        return [f"{name}\0{k}" for k in full]

    async def _fence_precheck(self, fence: Fence, keys: list[str], op: str) -> None:
        """StaleFence when a key's record holds a newer token: a read-only check of every slot,
        needed only where the write takes more than one script (a cluster)."""
        if self._topology.spans_slots:
            return
        full = [self._prefix + k for k in keys]
        groups = self._topology.by_slot(full)
        if len(groups) < 2 and self._apart() is None:
            return
        fields = self._fence_fields(fence, full)
        blocks: list[Block] = [
            (slot, [["HMGET", self._topology.fence_key(slot), *(fields[i] for i in idx)]])
            for slot, idx in groups.items()
        ]
        replies = await self._topology.run(op, keys[0], blocks)
        for (_, idx), reply in zip(groups.items(), replies, strict=True):
            for i, seen in zip(idx, check(reply[0]), strict=True):
                if seen is not None and int(seen) > fence.token:
                    raise stale_fence(fence, keys[i], int(seen))

    async def _fenced_run(
        self,
        op: str,
        code: str,
        fence: Fence,
        keys: list[str],
        values: list[bytes] | None,
        px: int,
        *,
        expected: bytes | None = None,
    ) -> int:
        """Run _scripts.FENCED once per slot; StaleFence when a script refused; else the sum of
        the scripts' results."""
        topology = self._topology
        full = [self._prefix + k for k in keys]
        fields = self._fence_fields(fence, full)
        groups = topology.by_slot(full)
        index = self._index
        together = index is not None and index.together
        counter = f"{RESERVED_KEY_PREFIX}lock:{fence.name}}}:fence" if topology.spans_slots else None
        rid = _request_id()  # one per call: a retried script is remembered, never applied twice
        score = _now_ms() + px if px else 0
        head: list[Any] = [
            code,
            str(fence.token),
            "1" if counter is not None else "0",
            0,
            px,
            score,
            b"" if expected is None else expected,
            "1" if expected is None else "0",
        ]
        scripts: list[tuple[int, list[str], list[Any]]] = []
        for slot, idx in groups.items():
            n = len(idx)
            fence_key = topology.fence_key(slot)
            shard_keys: list[str] = []
            position: dict[int, int] = {}
            tail: list[Any] = []
            for i in idx:
                pos = 0
                if together:
                    assert index is not None
                    shard = index.shard_of(full[i])
                    pos = position.get(shard, 0)
                    if not pos:
                        pos = position[shard] = 3 + n + len(shard_keys)
                        shard_keys += (index.root[shard], index.exp[shard])
                tail += (fields[i], keys[i], values[i] if values is not None else b"", pos)
            record = topology.record_key(full[idx[0]], f"{rid}:{slot}")
            script_keys = [fence_key, counter or fence_key, *(full[i] for i in idx), *shard_keys, record]
            head[3] = n
            scripts.append((slot, script_keys, [*head, *tail, self._record_ms]))
        replies: list[list[Any]]
        if len(scripts) == 1:  # one slot (always on one server): EVALSHA, EVAL if not loaded
            _, script_keys, args = scripts[0]
            reply = await self._transport.retry(
                op, keys[0], lambda: self._eval(lua.FENCED, script_keys, args), unsafe=True
            )
            replies = [[reply]]
        else:
            body = lua.FENCED.body
            blocks: list[Block] = [
                (slot, [["EVAL", body, len(script_keys), *script_keys, *args]])
                for slot, script_keys, args in scripts
            ]
            replies = await topology.run(op, keys[0], blocks, unsafe=True)
        total = 0
        refused: StaleFence | None = None
        for (_, idx), reply in zip(groups.items(), replies, strict=True):
            result = check(reply[0])
            if isinstance(result, bytes | bytearray):
                _, at, newer = bytes(result).decode().split(":")
                if refused is None:
                    refused = self._refusal(
                        fence, keys[idx[int(at) - 1]] if int(at) else keys[0], int(at), int(newer)
                    )
            else:
                total += int(result)
        if refused is not None:
            raise refused
        return total

    @staticmethod
    def _refusal(fence: Fence, key: str, at: int, newer: int) -> StaleFence:
        if at:
            return stale_fence(fence, key, newer)
        return StaleFence(
            f"write refused: lock {fence.name!r} has issued fence token {newer}, newer than this "
            f"writer's {fence.token}; this holder lost the lock and must stop (key {key!r})",
            name=fence.name,
            key=key,
            token=fence.token,
            newer_token=newer,
        )

    # -- snapshots (statekit.checkpoint) ------------------------------------------------

    async def _index_names(self, index: RangeIndex, prefix: str, op: str) -> list[str]:
        """Every index member starting with ``prefix`` (live or not), sorted; values not read."""
        upper = prefix_upper_bound(prefix)
        cursor: list[bytes | None] = [None] * index.shards
        names: list[str] = []
        while page := await index.scan(op, prefix, prefix, upper, None, cursor):
            names += page
        return names

    async def export_items(self, prefix: str = "") -> ItemColumns:
        """Every live key under ``prefix`` with its absolute expiry (Redis server clock).

        Not a point-in-time snapshot (Redis offers none short of blocking the server): keys are
        listed from the index, then read in pipelined chunks. Where one transaction may span
        slots (one server) each chunk reads values and expiries in one ``MULTI``, so a key's
        value and expiry always belong together; in a cluster they are read per slot. A key
        written during the export may or may not be in it; a key deleted during it is left out.
        Needs Redis >= 7.0 (``PEXPIRETIME``).
        """
        prefix = _bound(prefix)
        self._open()
        index = self._range_index("export_items")
        names = await self._index_names(index, prefix, "export_items")
        full = [self._prefix + n for n in names]
        size = self.config.pipeline_batch_size
        groups = self._topology.by_slot(full)
        order: list[list[int]] = []
        blocks: list[Block] = []
        for slot, idx in groups.items():
            for j in range(0, len(idx), size):
                chunk = idx[j : j + size]
                order.append(chunk)
                cmds: list[list[Any]] = [["MULTI"], ["MGET", *(full[i] for i in chunk)]]
                cmds += [["PEXPIRETIME", full[i]] for i in chunk]
                blocks.append((slot, [*cmds, ["EXEC"]]))
        rows: list[tuple[bytes | None, int]] = [(None, -2)] * len(full)
        if blocks:
            for chunk, reply in zip(
                order, await self._topology.run("export_items", prefix, blocks), strict=True
            ):
                result = check_exec(reply)
                for i, value, expires_ms in zip(chunk, result[0], result[1:], strict=True):
                    rows[i] = (value, expires_ms)
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
        self._open()
        index = self._range_index("replace_prefix")
        now = time.time()
        forever: list[tuple[str, bytes]] = []
        expiring: list[tuple[str, bytes]] = []
        expiring_at: list[int] = []
        for key, value, expires_at in columns:
            if expires_at is None:
                forever.append((key, value))
                continue
            if not isinstance(expires_at, int | float) or not expires_at - now <= MAX_TTL_SECONDS:
                raise CorruptData(
                    f"item {key!r} has expires_at {expires_at!r}: not a unix time within 100 years"
                )
            if expires_at > now:
                expiring.append((key, value))
                expiring_at.append(int(expires_at * 1000))
        old = await self._index_names(index, prefix, "replace_prefix")
        if old:
            await self._delete_keys(old, "replace_prefix")  # index members as they are (not re-validated)
        if forever:
            await self.batch_put(forever)
        if expiring:
            await self._put_items(expiring, 0, expiring_at, "replace_prefix")
            self._stats.put_count += len(expiring)
            self._stats.bytes_written += sum(len(v) for _, v in expiring)

    # -- housekeeping --------------------------------------------------------------------

    async def health_check(self) -> bool:
        """True when the server answers PING within the timeouts. Never raises."""
        if self._closed:
            return False
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.connect_timeout + cfg.read_timeout):
                await self._transport.once(self._ping)  # one attempt: a probe, not an operation
        except (RedisError, RedisClusterException, OSError, TimeoutError, ConfigError):
            return False
        return True

    async def _ping(self) -> None:
        for endpoint in self._topology.primaries():
            [[reply]] = await self._transport.roundtrip(endpoint, [b"*1\r\n$4\r\nPING\r\n"], [1])
            check(reply)
        await self._refresh_info()

    async def _info(self, section: str) -> list[dict[str, str]]:
        """``INFO <section>`` of every primary, parsed."""
        out: list[dict[str, str]] = []
        payload = f"*2\r\n$4\r\nINFO\r\n${len(section)}\r\n{section}\r\n".encode()
        for endpoint in self._topology.primaries():
            [[reply]] = await self._transport.roundtrip(endpoint, [payload], [1])
            text = bytes(check(reply)).decode()
            out.append(
                dict(line.split(":", 1) for line in text.splitlines() if ":" in line and line[0] != "#")
            )
        return out

    async def _refresh_info(self) -> None:
        server = await self._info("server")
        self._stats.redis_version = server[0].get("redis_version") if server else None
        memory = await self._info("memory")
        used = sum(int(m.get("used_memory", 0)) for m in memory)
        self._stats.used_memory_human = (
            memory[0].get("used_memory_human") if len(memory) == 1 else _human(used)
        )

    async def memory_usage(self) -> int:
        """Bytes of memory the server uses (``INFO memory`` ``used_memory``; summed over a cluster)."""
        self._open()
        memory = await self._transport.retry("memory_usage", None, lambda: self._info("memory"))
        return sum(int(m.get("used_memory", 0)) for m in memory)

    async def stats(self, prefix: str = "") -> RedisStats:
        """Counters, plus the keys under ``prefix`` counted on the server, and its INFO.

        Prunes expired index members first. ``total_keys`` counts index members: keys deleted by
        another client without going through statekit stay counted until a read prunes them.
        With ``range_index=False`` nothing counts the keys: ``total_keys``/``expiring_keys`` are 0.
        """
        prefix = _bound(prefix)
        self._open()
        index = self._index
        total = expiring = 0
        if index is not None:
            await self._transport.retry("stats", None, functools.partial(self._prune_expired, index))
            total = await index.count("stats", prefix, prefix_upper_bound(prefix))
            expiring = await index.count_expiring("stats", prefix)
        self._counts[prefix] = (total, expiring)
        await self._transport.retry("stats", None, self._refresh_info)
        return self.stats_nowait(prefix)

    async def refresh_stats(self, prefix: str = "") -> RedisStats:
        """The same as :meth:`stats` (its name in earlier versions)."""
        return await self.stats(prefix)

    def stats_nowait(self, prefix: str = "") -> RedisStats:
        """The counters now, without I/O; key counts are those of the last ``await stats(prefix)``."""
        total, expiring = self._counts.get(prefix, (0, 0))
        transport = self._transport
        return dataclasses.replace(
            self._stats,
            total_keys=total,
            expiring_keys=expiring,
            avg_latency_us=transport.latency_total_us // transport.latency_count
            if transport.latency_count
            else 0,
            active_connections=self._topology.connections(),
        )

    def latency_histogram(self) -> tuple[tuple[float, ...], list[int], float]:
        """Operation latencies, first attempt to result (retries included), without I/O.

        ``(upper bounds in seconds, count per bucket, sum of seconds)``; the counts are not
        cumulative and have one more entry than the bounds (above the last bound).
        """
        transport = self._transport
        return LATENCY_BUCKETS, list(transport.latency_buckets), transport.latency_total_us / 1e6

    async def close(self) -> None:
        if self._transport.closed:
            return
        self._transport.closed = True
        await self._topology.close()


def _human(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.2f}{unit}" if unit != "B" else f"{n}B"
        n = n / 1024  # type: ignore[assignment]
    return f"{n:.2f}T"
