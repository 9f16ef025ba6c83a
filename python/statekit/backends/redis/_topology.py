"""Where keys live: one standalone server, or the slots of a Redis Cluster, behind one interface.

A topology maps a key to its hash slot and a slot to an :class:`~._transport.Endpoint` (a
server's connection pool), runs *blocks* of commands on the right servers, and names the keys
statekit keeps beside a data key (request records). The backend never asks which topology it
has; it asks what a topology allows: :attr:`Topology.spans_slots` is True when one transaction
(MULTI or a Lua script) may touch keys of any slot, as on a single server.

* :class:`Standalone` uses one ``redis.asyncio.ConnectionPool`` (the backend's own, or the one of
  a user's ``redis.asyncio.Redis``). Every key is in "slot" 0: no hashing at all.
* :class:`Cluster` uses a ``redis.asyncio.RedisCluster`` for what redis-py does well: the slot
  map (``CLUSTER SLOTS``, refreshed after MOVED/ASK), and one connection pool per node
  (``ClusterNode``). Commands are grouped per node and the nodes run concurrently.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio import ConnectionPool, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection, Connection, UnixDomainSocketConnection
from redis.exceptions import AskError, MaxConnectionsError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from statekit import _native
from statekit.backends.base import RESERVED_KEY_PREFIX
from statekit.backends.redis._config import RedisConfig
from statekit.backends.redis._transport import NOT_RUN, Endpoint, Transport, check
from statekit.errors import ConfigError

__all__ = ["SLOTS", "Block", "Cluster", "Standalone", "Topology", "make_topology", "slot_tag"]

SLOTS: Final = 16384

#: One unit of work on one slot: commands sent together, in order, on one connection.
Block = tuple[int, list[list[Any]]]

#: Request records of a standalone server (any slot does): prefix + id.
_RECORD_PREFIX: Final = RESERVED_KEY_PREFIX + "r}:req:"
#: The fenced-write records of a standalone server: one hash (see RedisStateBackend.fenced_put).
_FENCE_KEY: Final = RESERVED_KEY_PREFIX + "r}:fence"
_slot_tags: dict[str, list[str]] = {}


def slot_tag(stem: str, slot: int) -> str:
    """A hash tag ``<stem><n>`` that lands in ``slot`` (a table of 16384 per stem, built on first use)."""
    tags = _slot_tags.get(stem)
    if tags is None:
        found: list[str | None] = [None] * SLOTS
        missing, start = SLOTS, 0
        while missing:  # about 160k candidate names: a few ms with the native CRC16
            names = [f"{stem}{n}" for n in range(start, start + SLOTS)]
            for name, slot_of in zip(names, _native.hash_slots(names), strict=True):
                if found[slot_of] is None:
                    found[slot_of] = name
                    missing -= 1
            start += SLOTS
        tags = _slot_tags[stem] = [t for t in found if t is not None]
    return tags[slot]


class _PoolEndpoint:
    """A standalone server: redis-py's ConnectionPool."""

    def __init__(self, pool: ConnectionPool, name: str) -> None:
        self.pool = pool
        self.name = name
        self.used: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()

    async def acquire(self) -> AbstractConnection:
        connection: AbstractConnection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        self.used.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        await self.pool.release(connection)


class _NodeEndpoint:
    """A cluster node: redis-py's ClusterNode and its connections."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.name = node.name
        self.used: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()

    async def acquire(self) -> AbstractConnection:
        connection: Connection = self.node.acquire_connection()
        self.used.add(connection)
        try:
            should_reconnect = getattr(connection, "should_reconnect", None)  # redis-py >= 6.4
            if should_reconnect is not None and should_reconnect():  # after a slot map refresh
                await connection.disconnect()
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            self.node.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        assert isinstance(connection, Connection)
        self.node.release(connection)


class Topology:
    """What the backend needs to know about where keys live (see the module docstring)."""

    #: One MULTI or Lua script may touch keys of any slot.
    spans_slots: bool = True

    def __init__(self, transport: Transport, *, min_connections: int, batch_size: int) -> None:
        self.transport = transport
        self.min_connections = min_connections
        self.batch_size = batch_size

    def slots(self, keys: Sequence[str]) -> list[int]:
        """The hash slot of each key."""
        raise NotImplementedError

    def slot(self, key: str) -> int:
        raise NotImplementedError

    def by_slot(self, keys: Sequence[str]) -> dict[int, list[int]]:
        """The positions of ``keys`` grouped by hash slot."""
        groups: dict[int, list[int]] = {}
        for i, slot in enumerate(self.slots(keys)):
            groups.setdefault(slot, []).append(i)
        return groups

    def endpoint(self, slot: int) -> Endpoint:
        raise NotImplementedError

    def primaries(self) -> list[Endpoint]:
        """Every server that holds data (for INFO)."""
        raise NotImplementedError

    def record_key(self, full_key: str, request_id: str) -> str:
        """The key of a request record that one script can touch together with ``full_key``."""
        raise NotImplementedError

    def fence_key(self, slot: int) -> str:
        """The hash of fenced-write records (``<lock name>\\0<full key>`` -> token) for ``slot``."""
        raise NotImplementedError

    def connections(self) -> int:
        """Server connections open now (in use or idle)."""
        raise NotImplementedError

    async def start(self) -> None:
        """Connect lazily: called under the gate before each attempt."""

    def stale(self) -> None:
        """The slot map may be wrong (a MOVED/ASK reply): refresh it before the next attempt."""

    async def close(self) -> None:
        raise NotImplementedError

    # -- running commands (one attempt; the caller wraps it in Transport.retry) ----------

    async def call(self, slot: int, command: list[Any]) -> Any:
        """One command on the server of ``slot``; an error reply is raised."""
        [[reply]] = await self.transport.roundtrip(
            self.endpoint(slot), [_native.encode_commands([command])], [1]
        )
        if isinstance(reply, AskError):  # MOVED is an AskError
            self.stale()
        return check(reply)

    async def run(
        self, op: str, key: str | None, blocks: Sequence[Block], *, unsafe: bool = False
    ) -> list[list[Any]]:
        """Run every block on the server of its slot (servers concurrently), with retries.

        Returns each block's replies, aligned with ``blocks``; an error reply anywhere raises
        (inside the retry loop, so it becomes a StorageError naming ``op`` and ``key``). Blocks
        a server refused unexecuted (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, LOADING) are sent again,
        alone, after a slot map refresh; so are those of a server whose connection failed.
        """
        replies: list[list[Any] | None] = [None] * len(blocks)
        pending = list(range(len(blocks)))
        limit = 4 * self.batch_size  # arguments per payload: ~one chunk of SETs, or one MULTI chunk

        async def on_endpoint(endpoint: Endpoint, indices: list[int]) -> list[int]:
            payloads: list[bytes] = []
            counts: list[int] = []
            groups: list[list[int]] = []
            commands: list[list[Any]] = []
            members: list[int] = []
            weight = 0
            for i in indices:
                block = blocks[i][1]
                commands += block
                members.append(i)
                weight += sum(map(len, block))
                if weight >= limit:  # about one chunk of keys per payload
                    weight = 0
                    payloads.append(_native.encode_commands(commands))
                    counts.append(len(commands))
                    groups.append(members)
                    commands, members = [], []
            if commands:
                payloads.append(_native.encode_commands(commands))
                counts.append(len(commands))
                groups.append(members)
            results = await self.transport.roundtrip(endpoint, payloads, counts)
            redo: list[int] = []
            for group, result in zip(groups, results, strict=True):
                bad = [r for r in result if isinstance(r, RedisError)]
                at = 0
                for i in group:
                    n = len(blocks[i][1])
                    part = result[at : at + n]
                    at += n
                    refused = next((r for r in part if isinstance(r, NOT_RUN)), None) if bad else None
                    if refused is not None:  # e.g. LOADING inside a MULTI: the block is sent again
                        redo.append(i)
                        refusals.append(refused)
                    else:
                        replies[i] = part
                        if bad:
                            errors.extend(r for r in part if isinstance(r, RedisError))
            return redo

        refusals: list[RedisError] = []
        errors: list[RedisError] = []

        async def attempt() -> None:
            nonlocal pending
            refusals.clear()
            errors.clear()
            by_slot: dict[int, Endpoint] = {}
            by_endpoint: dict[str, tuple[Endpoint, list[int]]] = {}
            for i in pending:
                slot = blocks[i][0]
                endpoint = by_slot.get(slot)
                if endpoint is None:
                    endpoint = by_slot[slot] = self.endpoint(slot)
                by_endpoint.setdefault(endpoint.name, (endpoint, []))[1].append(i)
            groups = list(by_endpoint.values())
            outcomes: list[list[int] | BaseException]
            if len(groups) == 1:  # a failure leaves every pending block pending: let it propagate
                outcomes = [await on_endpoint(*groups[0])]
            else:
                outcomes = await asyncio.gather(
                    *(on_endpoint(e, idx) for e, idx in groups), return_exceptions=True
                )
            redo: list[int] = []
            failure: BaseException | None = None
            for (_, indices), outcome in zip(groups, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    redo.extend(indices)
                    failure = outcome
                else:
                    redo.extend(outcome)
            if redo:
                if refusals and any(isinstance(r, AskError) for r in refusals):
                    self.stale()
                if failure is not None:
                    pending = redo
                    raise failure
                if len(redo) < len(pending) or len(pending) < len(blocks):  # part of it ran
                    pending = redo
                    raise _PartlyRefused(
                        f"a server refused part of a pipeline ({refusals[0]}); sending it again"
                    )
                raise refusals[0]  # none of it ran
            if errors:  # an error reply becomes a StorageError inside the retry loop
                raise errors[0]

        await self.transport.retry(op, key, attempt, unsafe=unsafe)
        return [r if r is not None else [] for r in replies]

    async def run_encoded(
        self, op: str, key: str | None, slots: Sequence[int], ends: Sequence[int], payload: bytes
    ) -> None:
        """Run pre-encoded single-slot commands, servers concurrently, with retries.

        Command ``i`` is ``payload[ends[i - 1]:ends[i]]`` on the server of ``slots[i]``; each must
        reply with a success. For idempotent commands only (``MSET`` of given values): when a
        server refuses any of them (MOVED, ASK, TRYAGAIN, ...) or a connection fails, the whole
        set is sent again after a slot map refresh, grouped by the servers that own the slots
        then. Per-node grouping in one pass over the commands, no per-command Python objects:
        the batch path of a cluster, where per-slot blocks cost more than the commands.
        """
        view = memoryview(payload)

        async def on_endpoint(endpoint: Endpoint, pieces: list[memoryview], count: int) -> list[Any]:
            [replies] = await self.transport.roundtrip(endpoint, [b"".join(pieces)], [count])
            return replies

        async def attempt() -> None:
            groups: dict[str, tuple[Endpoint, list[memoryview], list[int]]] = {}
            endpoint_of = self.endpoint
            run_endpoint: Endpoint | None = None
            run_start = start = 0
            count = 0
            for slot, end in zip(slots, ends, strict=True):
                endpoint = endpoint_of(slot)
                if endpoint is not run_endpoint:  # a run of commands for one server ends here
                    if run_endpoint is not None:
                        group = groups.setdefault(run_endpoint.name, (run_endpoint, [], [0]))
                        group[1].append(view[run_start:start])
                        group[2][0] += count
                    run_endpoint, run_start, count = endpoint, start, 0
                count += 1
                start = end
            if run_endpoint is not None:
                group = groups.setdefault(run_endpoint.name, (run_endpoint, [], [0]))
                group[1].append(view[run_start:start])
                group[2][0] += count
            outcomes = await asyncio.gather(
                *(on_endpoint(e, pieces, n[0]) for e, pieces, n in groups.values()), return_exceptions=True
            )
            failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failure is not None:
                raise failure
            refused: RedisError | None = None
            error: RedisError | None = None
            for replies in outcomes:
                assert not isinstance(replies, BaseException)
                for reply in replies:
                    if isinstance(reply, NOT_RUN):
                        refused = refused or reply
                    elif isinstance(reply, RedisError):
                        error = error or reply
            if refused is not None:
                if isinstance(refused, AskError):
                    self.stale()
                raise _PartlyRefused(f"a server refused part of a pipeline ({refused}); sending it again")
            if error is not None:  # an error reply becomes a StorageError inside the retry loop
                raise error

        await self.transport.retry(op, key, attempt)


class _PartlyRefused(RedisConnectionError):
    """Part of a pipeline ran, part was refused unexecuted: retried (the rest is sent again), and
    a request that is not idempotent counts as possibly applied."""


class Standalone(Topology):
    """One server (or a user's ``redis.asyncio.Redis``): one connection pool."""

    spans_slots = True

    def __init__(
        self,
        transport: Transport,
        pool: ConnectionPool,
        name: str,
        *,
        owned: bool,
        min_connections: int,
        batch_size: int,
    ) -> None:
        super().__init__(transport, min_connections=min_connections, batch_size=batch_size)
        self._pool = pool
        self._owned = owned
        self._endpoint = _PoolEndpoint(pool, name)
        self._started = False
        self._seen: set[int] = set()

    def slots(self, keys: Sequence[str]) -> list[int]:
        return [0] * len(keys)

    def slot(self, key: str) -> int:
        return 0

    def by_slot(self, keys: Sequence[str]) -> dict[int, list[int]]:
        return {0: list(range(len(keys)))}

    def endpoint(self, slot: int) -> Endpoint:
        return self._endpoint

    def primaries(self) -> list[Endpoint]:
        return [self._endpoint]

    def record_key(self, full_key: str, request_id: str) -> str:
        return _RECORD_PREFIX + request_id

    def fence_key(self, slot: int) -> str:
        return _FENCE_KEY

    def connections(self) -> int:
        return sum(1 for c in self._endpoint.used if c.is_connected)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await _pre_open(self._endpoint, self.min_connections)

    async def close(self) -> None:
        if self._owned:
            await self._pool.aclose()


class Cluster(Topology):
    """A Redis Cluster through a ``redis.asyncio.RedisCluster`` (its slot map and node pools)."""

    spans_slots = False

    def __init__(
        self,
        transport: Transport,
        client: RedisCluster,
        *,
        owned: bool,
        min_connections: int,
        batch_size: int,
    ) -> None:
        super().__init__(transport, min_connections=min_connections, batch_size=batch_size)
        self._client = client
        self._owned = owned
        self._started = False
        self._stale = False
        self._endpoints: dict[str, _NodeEndpoint] = {}
        self._lock = asyncio.Lock()
        # slot -> endpoint, filled on use: a 10,000-key batch asks for ~7,600 slots. Valid while
        # redis-py's slot map is the same object (a refresh builds a new one) and no MOVED/ASK
        # was seen since.
        self._slot_endpoints: list[_NodeEndpoint | None] = [None] * SLOTS
        self._slot_map: object = None

    def slots(self, keys: Sequence[str]) -> list[int]:
        return _native.hash_slots(list(keys))

    def slot(self, key: str) -> int:
        return _native.hash_slot(key)

    def endpoint(self, slot: int) -> Endpoint:
        manager = self._client.nodes_manager
        if manager.slots_cache is not self._slot_map:
            self._slot_endpoints = [None] * SLOTS
            self._slot_map = manager.slots_cache
        endpoint = self._slot_endpoints[slot]
        if endpoint is None:
            endpoint = self._slot_endpoints[slot] = self._endpoint_of(manager.get_node_from_slot(slot))
        return endpoint

    def _endpoint_of(self, node: ClusterNode) -> _NodeEndpoint:
        endpoint = self._endpoints.get(node.name)
        if endpoint is None or endpoint.node is not node:
            endpoint = self._endpoints[node.name] = _NodeEndpoint(node)
        return endpoint

    def primaries(self) -> list[Endpoint]:
        return [self._endpoint_of(node) for node in self._client.get_primaries()]

    def record_key(self, full_key: str, request_id: str) -> str:
        return (
            "{" + slot_tag(RESERVED_KEY_PREFIX[1:] + "r", _native.hash_slot(full_key)) + "}:req:" + request_id
        )

    def fence_key(self, slot: int) -> str:
        return "{" + slot_tag(RESERVED_KEY_PREFIX[1:] + "r", slot) + "}:fence"

    def connections(self) -> int:
        return sum(1 for e in self._endpoints.values() for c in e.used if c.is_connected)

    def stale(self) -> None:
        self._stale = True
        self._slot_map = None  # redis-py may also patch its map in place: forget every answer

    async def start(self) -> None:
        if self._started and not self._stale:
            return
        async with self._lock:
            if not self._started:
                # redis-py's RedisCluster starts lazily; start it before any command runs.
                await self._client.initialize()
                self._started = True
                for endpoint in self.primaries():
                    await _pre_open(endpoint, self.min_connections)
            elif self._stale:
                self._stale = False
                await self._client.nodes_manager.initialize()
            await self._close_startup_connections()

    async def _close_startup_connections(self) -> None:
        """Close what asking a startup node for the slot map opened (redis-py keeps a separate
        ClusterNode for it), so that ``max_connections`` per node holds for every node."""
        manager = self._client.nodes_manager
        serving = {id(node) for node in manager.nodes_cache.values()}
        for node in list(manager.startup_nodes.values()):
            if id(node) not in serving:
                await node.disconnect()

    async def close(self) -> None:
        if self._owned:
            await self._client.aclose()


async def _pre_open(endpoint: Endpoint, count: int) -> None:
    """Open ``count`` connections now (``min_connections``) and leave them idle in the pool."""
    held: list[AbstractConnection] = []
    try:
        for _ in range(count):
            held.append(await endpoint.acquire())
    except MaxConnectionsError:
        pass  # other calls hold the rest: the pool is as full as it may be
    finally:
        for connection in held:
            await endpoint.release(connection)


def make_topology(config: RedisConfig, transport: Transport, client: Any = None) -> Topology:
    """The topology of ``config``, on the user's ``client`` when given."""
    common = {"min_connections": config.min_connections, "batch_size": config.pipeline_batch_size}
    if client is not None:
        if isinstance(client, aioredis.RedisCluster):
            return Cluster(transport, client, owned=False, **common)
        if isinstance(client, aioredis.Redis):
            pool = client.connection_pool
            name = ", ".join(
                f"{k}={v}" for k, v in pool.connection_kwargs.items() if k in ("host", "port", "path")
            )
            return Standalone(transport, pool, name or "redis", owned=False, **common)
        raise ConfigError(
            f"client must be a redis.asyncio.Redis or redis.asyncio.RedisCluster, got {type(client).__name__}"
        )
    kwargs: dict[str, Any] = {
        "username": config.username,
        "password": config.password,
        "socket_connect_timeout": config.connect_timeout,
        # No socket_timeout: the transport bounds every read and write itself (one set of
        # timeouts); redis-py's would wrap each write in a task.
        "max_connections": config.max_connections,
        "decode_responses": False,
    }
    if config.tls:
        kwargs.update(
            ssl=True,
            ssl_ca_certs=config.tls_ca_certs,
            ssl_cert_reqs="required" if config.tls_verify else "none",
            ssl_check_hostname=config.tls_verify,
        )
    if config.cluster_mode:
        nodes = [ClusterNode(n.host, n.port) for n in config.nodes]
        cluster = aioredis.RedisCluster(startup_nodes=nodes, **kwargs)
        return Cluster(transport, cluster, owned=True, **common)
    node = config.nodes[0]
    del kwargs["max_connections"]
    if node.path is not None:
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("ssl")}
        kwargs.update(connection_class=UnixDomainSocketConnection, path=node.path)
    else:
        if kwargs.pop("ssl", False):
            kwargs["connection_class"] = aioredis.SSLConnection
        kwargs.update(host=node.host, port=node.port)
    pool = aioredis.ConnectionPool(db=config.db, max_connections=config.max_connections, **kwargs)
    return Standalone(transport, pool, node.name, owned=True, **common)
