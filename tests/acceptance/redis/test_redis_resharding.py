"""A slot moves to another master while a client holds the old slot map: nothing is lost.

A real resharding on a cluster of its own (the session cluster stays untouched): ``CLUSTER SETSLOT
... IMPORTING/MIGRATING``, ``MIGRATE`` of the slot's keys, ``SETSLOT ... NODE`` on every master.
A backend that loaded its slot map before the move then gets ``MOVED`` (after the move) or ``ASK``/
``TRYAGAIN`` (during it) for that slot. What must hold: every write either lands where later reads
find it or raises ``StorageError``, and the values and the range index agree with a dict model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.ci import require_module
from tests.servers.redis_servers import RedisCluster, start_cluster

redis = require_module("redis", "the Redis tests need redis-py: pip install statekit[redis]")

from statekit import _native  # noqa: E402
from statekit.backends import RedisConfig  # noqa: E402
from statekit.backends.redis import RedisStateBackend  # noqa: E402
from statekit.errors import StorageError  # noqa: E402

#: Spread over the slots, plus 200 keys sharing one hash tag: the slot that moves holds many keys.
KEYS = [f"item:{i:05d}" for i in range(3000)] + [f"item:{{hot}}:{i:03d}" for i in range(200)]


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[RedisCluster]:
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
async def backend(own_cluster: RedisCluster) -> AsyncIterator[RedisStateBackend]:
    own_cluster.flushall()
    be = RedisStateBackend(RedisConfig.from_url(own_cluster.url, max_retries=4, retry_base_delay=0.05))
    yield be
    await be.close()


def _admin(cluster: RedisCluster) -> list[redis.Redis]:
    return [redis.Redis(port=node.port) for node in cluster.nodes]


def _owner(clients: list[redis.Redis], slot: int) -> int:
    """Index of the master that owns ``slot``."""
    for start, end, master, *_ in clients[0].execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            port = master[1]
            return next(
                i for i, c in enumerate(clients) if c.connection_pool.connection_kwargs["port"] == port
            )
    raise AssertionError(f"no master owns slot {slot}")


def _begin_move(clients: list[redis.Redis], slot: int, source: int, target: int) -> None:
    source_id = clients[source].execute_command("CLUSTER", "MYID").decode()
    target_id = clients[target].execute_command("CLUSTER", "MYID").decode()
    clients[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    clients[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)


def _migrate_keys(clients: list[redis.Redis], slot: int, source: int, target: int, limit: int) -> int:
    """MIGRATE up to ``limit`` keys of ``slot`` from source to target; returns how many moved."""
    keys = clients[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, limit)
    if keys:
        port = clients[target].connection_pool.connection_kwargs["port"]
        clients[source].execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
    return len(keys)


def _finish_move(clients: list[redis.Redis], slot: int, target: int) -> None:
    target_id = clients[target].execute_command("CLUSTER", "MYID").decode()
    for client in clients:
        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def _busiest_slot() -> int:
    return int(_native.hash_slot("{hot}"))


async def _check(backend: RedisStateBackend, model: dict[str, bytes]) -> None:
    assert await backend.batch_get(KEYS) == [model.get(k) for k in KEYS]
    assert await backend.list_keys("item:") == sorted(model)
    # A fresh client (fresh slot map) sees the same.
    fresh = RedisStateBackend(backend.config)
    try:
        assert await fresh.batch_get(KEYS) == [model.get(k) for k in KEYS]
        assert [k for k, _ in await fresh.range("item:")] == sorted(model)
    finally:
        await fresh.close()


async def test_writes_after_a_slot_moved_follow_it(
    own_cluster: RedisCluster, backend: RedisStateBackend
) -> None:
    model = {k: b"v1-" + k.encode() for k in KEYS}
    await backend.batch_put(list(model.items()))  # the backend now holds the slot map
    clients = _admin(own_cluster)
    slot = _busiest_slot()
    source = _owner(clients, slot)
    target = (source + 1) % len(clients)
    _begin_move(clients, slot, source, target)
    while _migrate_keys(clients, slot, source, target, 100):
        pass
    _finish_move(clients, slot, target)
    assert _owner(clients, slot) == target

    # Every kind of write, with the stale map: MOVED for the moved slot, then a refresh.
    model.update({k: b"v2-" + k.encode() for k in KEYS[::2]})
    await backend.batch_put([(k, model[k]) for k in KEYS[::2]])
    moved_keys = [k for k in KEYS if _native.hash_slot(k) == slot]
    assert moved_keys
    await backend.put(moved_keys[0], b"single")
    model[moved_keys[0]] = b"single"
    assert await backend.batch_delete(moved_keys[1:3]) == 2
    for k in moved_keys[1:3]:
        del model[k]
    assert await backend.incr_by("item:counter-x", 5) == 5  # a counter, wherever it lands
    await backend.delete("item:counter-x")
    await _check(backend, model)


async def test_writes_during_a_migration_land_or_raise(
    own_cluster: RedisCluster, backend: RedisStateBackend
) -> None:
    model = {k: b"v1-" + k.encode() for k in KEYS}
    await backend.batch_put(list(model.items()))
    clients = _admin(own_cluster)
    slot = _busiest_slot()
    source = _owner(clients, slot)
    target = (source + 2) % len(clients)
    _begin_move(clients, slot, source, target)
    _migrate_keys(clients, slot, source, target, 1)  # the slot is split: one key already moved
    in_slot = [k for k in KEYS if _native.hash_slot(k) == slot]
    refused: list[str] = []
    try:
        for round_ in range(3):
            pairs = [(k, f"v{round_ + 2}-{k}".encode()) for k in KEYS[round_::3]]
            try:
                await backend.batch_put(pairs)
            except StorageError as exc:
                refused.append(str(exc))
                # Refused (ASK/TRYAGAIN until the move ends): the keys of this batch may hold the
                # old or the new value, both are allowed; take what the cluster says after the move.
                continue
            model.update(pairs)
    finally:
        while _migrate_keys(clients, slot, source, target, 100):
            pass
        _finish_move(clients, slot, target)
    # Keys of batches that raised: read them back and accept either value per key.
    fresh = RedisStateBackend(backend.config)
    try:
        got = dict(zip(KEYS, await fresh.batch_get(KEYS), strict=True))
    finally:
        await fresh.close()
    for key in KEYS:
        assert got[key] is not None, f"{key} was lost"
        if got[key] != model[key]:  # only a key of a refused batch may differ, and only to a value sent
            assert got[key].startswith(b"v"), (key, got[key])
            assert got[key].endswith(key.encode()), (key, got[key])
            model[key] = got[key]
    assert in_slot
    # Exactly one round sends the moved key together with keys still on the source: Redis answers
    # TRYAGAIN to such a multi-key command until the move ends, the retries run out, StorageError.
    assert len(refused) == 1, refused
    assert "TRYAGAIN" in refused[0]
    await _check(backend, model)
