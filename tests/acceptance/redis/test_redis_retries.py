"""Retries of non-idempotent operations on a real redis-server that stalls (SIGSTOP/SIGCONT).

A stalled server accepts connections and requests into its socket buffers but answers nothing;
when it resumes it runs every request it buffered, including those the client gave up on. A
blind re-send then applies an ``incr`` twice or makes a ``pop`` return None for a value it
deleted. The backend must apply each call once and report what happened, or raise
OutcomeUnknown.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.exceptions import BusyLoadingError, MovedError, NoScriptError, ResponseError

from statekit import KeyValueStore, _native
from statekit.backends import RedisConfig
from statekit.backends.base import RESERVED_KEY_PREFIX
from statekit.backends.redis import RedisStateBackend
from statekit.backends.redis._topology import slot_tag
from statekit.backends.redis._transport import reply_error
from statekit.errors import OutcomeUnknown, StorageError
from tests.servers.redis_servers import (
    RedisCluster,
    RedisServer,
    free_port,
    require_redis,
    start_standalone,
)

#: Stalls per run, how long each lasts, and the traffic between two stalls (seconds).
STALLS = 20
STALL = 0.6
GAP = 0.2
#: Timeouts shorter than a stall, and a retry budget far longer than one.
TIMEOUT = 0.3
RETRIES = 30


def stall_config(url: str) -> RedisConfig:
    return RedisConfig.from_url(
        url,
        key_prefix="stall:",
        connect_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
        write_timeout=TIMEOUT,
        max_retries=RETRIES,
        retry_base_delay=0.02,
        retry_max_delay=0.2,
    )


class Tally:
    """What the workload saw, per operation."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.double_applied: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self.outcome_unknown: Counter[str] = Counter()
        self.other_errors: Counter[str] = Counter()

    def figures(self) -> dict[str, int]:
        return {
            "calls": sum(self.calls.values()),
            "double_applied": sum(self.double_applied.values()),
            "lost": sum(self.lost.values()),
            "outcome_unknown": sum(self.outcome_unknown.values()),
            "other_errors": sum(self.other_errors.values()),
        }

    def __repr__(self) -> str:
        return (
            f"calls={dict(self.calls)} double_applied={dict(self.double_applied)} lost={dict(self.lost)} "
            f"outcome_unknown={dict(self.outcome_unknown)} other_errors={dict(self.other_errors)}"
        )


async def _workload(store: KeyValueStore, stop: asyncio.Event, tally: Tally) -> None:
    """One task per operation, each checking every reply against what it alone wrote."""

    async def guarded(op: str, body: Callable[[], Awaitable[None]]) -> None:
        while not stop.is_set():
            tally.calls[op] += 1
            try:
                await body()
            except OutcomeUnknown:
                tally.outcome_unknown[op] += 1
            except StorageError:
                tally.other_errors[op] += 1

    counter = {"expected": 0}

    async def incr() -> None:
        got = await store.incr("counter")
        if got > counter["expected"] + 1:
            tally.double_applied["incr"] += 1
        counter["expected"] = got

    updated = {"expected": 0}

    async def update() -> None:
        got = await store.update("updated", lambda v: (v or 0) + 1)
        if got > updated["expected"] + 1:
            tally.double_applied["update"] += 1
        updated["expected"] = got

    popped = {"n": 0}

    async def pop() -> None:
        popped["n"] += 1
        n = popped["n"]
        await store.put("popped", n)
        got = await store.pop("popped")
        if got != n:
            tally.lost["pop"] += 1

    absent = {"n": 0}

    async def set_if_absent() -> None:
        absent["n"] += 1
        n = absent["n"]
        if not await store.set_if_absent(f"absent:{n}", n):  # a fresh key: must be stored
            tally.lost["set_if_absent"] += 1

    deleted = {"n": 0}

    async def delete_many() -> None:
        deleted["n"] += 1
        keys = [f"del:{deleted['n']}:{i}" for i in range(3)]
        await store.put_many(dict.fromkeys(keys, 1))
        if await store.delete_many(keys) != len(keys):
            tally.lost["delete_many"] += 1

    await asyncio.gather(
        guarded("incr", incr),
        guarded("update", update),
        guarded("pop", pop),
        guarded("set_if_absent", set_if_absent),
        guarded("delete_many", delete_many),
    )
    # What the server holds agrees with what the calls reported.
    if await store.get_counter("counter") != counter["expected"] and not tally.outcome_unknown["incr"]:
        tally.double_applied["incr"] += 1
    if await store.get("updated") != updated["expected"] and not tally.outcome_unknown["update"]:
        tally.double_applied["update"] += 1


async def _run_with_stalls(
    store: KeyValueStore, pause: Callable[[], None], resume: Callable[[], None]
) -> Tally:
    tally = Tally()
    stop = asyncio.Event()
    await store.put("warm", 1)
    work = asyncio.create_task(_workload(store, stop, tally))
    try:
        for _ in range(STALLS):
            await asyncio.sleep(GAP)
            pause()
            try:
                await asyncio.sleep(STALL)
            finally:
                resume()
        await asyncio.sleep(GAP)
    finally:
        stop.set()
        await work
    print(f"\nstall figures ({STALLS} stalls of {STALL}s): {tally.figures()}\n{tally!r}")
    return tally


@pytest.fixture
async def stall_store(redis_url: str) -> AsyncIterator[KeyValueStore]:
    store = KeyValueStore(RedisStateBackend(stall_config(redis_url)))
    yield store
    await store.close()


@pytest.mark.timeout(180)
async def test_stalls_neither_double_apply_nor_lose_results(
    stall_store: KeyValueStore, redis_server: RedisServer
) -> None:
    tally = await _run_with_stalls(stall_store, redis_server.pause, redis_server.resume)
    figures = tally.figures()
    assert figures["calls"] > 5 * STALLS
    assert (figures["double_applied"], figures["lost"]) == (0, 0), tally
    # The server always came back well within the retry budget: nothing is left unknown.
    assert (figures["outcome_unknown"], figures["other_errors"]) == (0, 0), tally


@pytest.mark.timeout(180)
async def test_cluster_stalls_neither_double_apply_nor_lose_results(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    def pause() -> None:
        for node in redis_cluster.nodes:
            node.pause()

    def resume() -> None:
        for node in redis_cluster.nodes:
            node.resume()

    store = KeyValueStore(RedisStateBackend(stall_config(cluster_url)))
    try:
        tally = await _run_with_stalls(store, pause, resume)
    finally:
        resume()
        await store.close()
    figures = tally.figures()
    assert figures["calls"] > 5 * STALLS
    assert (figures["double_applied"], figures["lost"]) == (0, 0), tally
    assert (figures["outcome_unknown"], figures["other_errors"]) == (0, 0), tally


# -- outcome unknown -----------------------------------------------------------------------------


def short_config(url: str, **options: Any) -> RedisConfig:
    defaults: dict[str, Any] = {
        "connect_timeout": 0.2,
        "read_timeout": 0.2,
        "write_timeout": 0.2,
        "max_retries": 1,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.02,
    }
    return RedisConfig.from_url(url, **{**defaults, **options})


UNSAFE_CALLS: list[tuple[str, Callable[[RedisStateBackend], Awaitable[object]]]] = [
    ("incr_by", lambda b: b.incr_by("n", 1)),
    ("compare_and_set", lambda b: b.compare_and_set("n", None, b"1")),
    ("get_and_delete", lambda b: b.get_and_delete("n")),
    ("set_if_not_exists", lambda b: b.set_if_not_exists("n", b"1")),
    ("batch_delete", lambda b: b.batch_delete(["n", "m"])),
]


@pytest.mark.parametrize(("op", "call"), UNSAFE_CALLS, ids=[op for op, _ in UNSAFE_CALLS])
@pytest.mark.timeout(60)
async def test_no_reply_within_the_retries_is_outcome_unknown(
    redis_url: str, redis_server: RedisServer, op: str, call: Callable[[RedisStateBackend], Awaitable[object]]
) -> None:
    b = RedisStateBackend(short_config(redis_url))
    try:
        await b.put("warm", b"1")
        redis_server.pause()
        try:
            with pytest.raises(OutcomeUnknown) as info:
                await call(b)
        finally:
            redis_server.resume()
        assert isinstance(info.value, StorageError)
        assert op in str(info.value)
        assert info.value.key in ("n", "m")
        assert repr(info.value.key) in str(info.value)
        # Both attempts carried one request id: whatever ran, ran once.
        assert await b.get("n") in (None, b"1")
    finally:
        await b.close()


@pytest.mark.parametrize(("op", "call"), UNSAFE_CALLS, ids=[op for op, _ in UNSAFE_CALLS])
async def test_refused_connections_are_a_plain_storage_error(
    op: str, call: Callable[[RedisStateBackend], Awaitable[object]]
) -> None:
    """Nothing listens: the request was provably never sent, so the outcome is known (not applied)."""
    b = RedisStateBackend(short_config(f"redis://127.0.0.1:{free_port()}", max_retries=2))
    try:
        with pytest.raises(StorageError, match=op) as info:
            await call(b)
        assert not isinstance(info.value, OutcomeUnknown)
        assert b.stats_nowait().retry_count == 2
    finally:
        await b.close()


# -- bounded waits -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_waiting_for_a_connection_slot_is_bounded(redis_url: str, redis_server: RedisServer) -> None:
    # One slot; the call holding it waits for a reply far longer than a waiter may wait for the slot.
    b = RedisStateBackend(short_config(redis_url, max_connections=1, max_retries=0, read_timeout=5.0))
    try:
        await b.put("k", b"v")
        redis_server.pause()
        try:
            holder = asyncio.create_task(b.get("k"))
            while not b._transport.gate.locked():  # noqa: ASYNC110 (the holder took the only slot, waits for a reply)
                await asyncio.sleep(0.01)
            waiter = asyncio.create_task(b.get("other"))
            done, _ = await asyncio.wait({holder, waiter}, return_when=asyncio.FIRST_COMPLETED)
            assert done == {waiter}, "the waiter queued behind the stalled call"
            error = waiter.exception()
            assert isinstance(error, StorageError)
            assert not isinstance(error, OutcomeUnknown)
            assert "connection slot" in str(error)
        finally:
            redis_server.resume()
        assert await holder == b"v"
    finally:
        await b.close()


@pytest.mark.timeout(120)
async def test_many_callers_on_a_stalled_server_all_get_a_storage_error(
    redis_url: str, redis_server: RedisServer
) -> None:
    b = RedisStateBackend(short_config(redis_url, max_connections=4))
    try:
        await b.put("k", b"v")
        redis_server.pause()
        try:
            calls = [b.get(f"k{i}") for i in range(30)]
            calls += [b.incr_by(f"n{i}") for i in range(30)]
            calls += [b.batch_get([f"k{i}", "k"]) for i in range(30)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            redis_server.resume()
        assert all(isinstance(o, StorageError) for o in outcomes), outcomes
    finally:
        await b.close()


@pytest.mark.timeout(60)
async def test_max_connections_bounds_the_server_connections(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Single operations and batches share one pool: max_connections=2 means 2 server connections."""
    before = _client_count(redis_server)
    b = RedisStateBackend(RedisConfig.from_url(redis_url, key_prefix="conns:", max_connections=2))
    try:
        pairs = [(f"k{i}", b"v") for i in range(200)]
        calls = [b.batch_put(pairs), b.batch_get([k for k, _ in pairs]), b.incr_by("n")]
        calls += [b.get(f"k{i}") for i in range(20)] + [b.range("k", limit=5), b.batch_delete(["k1"])]
        await asyncio.gather(*calls)
        assert _client_count(redis_server) - before <= 2
        assert b.stats_nowait().active_connections <= 2
    finally:
        await b.close()


@pytest.mark.timeout(60)
async def test_max_connections_bounds_the_connections_of_every_cluster_node(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    before = [_client_count(node) for node in redis_cluster.nodes]
    b = RedisStateBackend(RedisConfig.from_url(cluster_url, key_prefix="conns:", max_connections=2))
    try:
        pairs = [(f"k{i}", b"v") for i in range(500)]
        calls = [b.batch_put(pairs), b.batch_get([k for k, _ in pairs]), b.range("k", limit=5)]
        calls += [b.get(f"k{i}") for i in range(20)] + [b.incr_by(f"n{i}") for i in range(10)]
        await asyncio.gather(*calls)
        after = [_client_count(node) for node in redis_cluster.nodes]
        assert all(a - b <= 2 for a, b in zip(after, before, strict=True)), (before, after)
    finally:
        await b.close()


def _client_count(server: RedisServer) -> int:
    return sum(1 for line in server.cli("CLIENT", "LIST").splitlines() if "cmd=client" not in line)


# -- LOADING after a restart ---------------------------------------------------------------------

#: Keys in the RDB file, and the delay per key while loading it (µs): about a second of LOADING.
LOAD_KEYS = 20_000
KEY_LOAD_DELAY_US = 50


@pytest.fixture
def loading_server() -> Iterator[RedisServer]:
    """A server whose restart spends about a second loading its RDB file, answering LOADING meanwhile."""
    require_redis()
    server = start_standalone()
    try:
        fill = "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'k' .. i, 'v') end return 1"
        server.cli("EVAL", fill, "0", str(LOAD_KEYS))
        server.cli("SAVE")
        # Debug settings of redis-server: slow the load down, and answer clients every 1 KB of it.
        server.args += [
            "--key-load-delay",
            str(KEY_LOAD_DELAY_US),
            "--loading-process-events-interval-bytes",
            "1024",
        ]
        yield server
    finally:
        server.stop()


def _replies_loading(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n")
            return conn.recv(64).startswith(b"-LOADING")
    except OSError:
        return False


@pytest.mark.timeout(120)
async def test_loading_after_a_restart_is_retried(loading_server: RedisServer) -> None:
    b = RedisStateBackend(
        RedisConfig.from_url(loading_server.url, max_retries=100, retry_base_delay=0.02, retry_max_delay=0.1)
    )
    try:
        await b.put("warm", b"1")
        assert await b.batch_get(["k1"]) == [b"v"]
        loading_server.stop()
        starting = asyncio.create_task(asyncio.to_thread(loading_server.start))
        while not await asyncio.to_thread(_replies_loading, loading_server.port):
            assert not starting.done(), "the server finished loading before a LOADING reply was seen"
            await asyncio.sleep(0.01)
        retries = b.stats_nowait().retry_count
        results = await asyncio.gather(
            b.get("k1"),
            b.batch_get(["k2", "k3"]),
            b.batch_put([("a", b"1"), ("b", b"2")]),
            b.put("c", b"3"),
            b.exists("k7"),
            b.incr_by("n", 5),
            b.set_if_not_exists("s", b"x"),
            b.compare_and_set("cas", None, b"y"),
            b.get_and_delete("k4"),
            b.batch_delete(["k5", "k6", "missing"]),
        )
        await starting
        assert results == [b"v", [b"v", b"v"], None, None, True, 5, True, True, b"v", 2]
        assert b.stats_nowait().retry_count > retries  # LOADING was met, and retried
        assert await b.batch_get(["a", "b", "c", "n", "s", "cas", "k4"]) == [
            b"1",
            b"2",
            b"3",
            b"5",
            b"x",
            b"y",
            None,
        ]
    finally:
        await b.close()


# -- building blocks -----------------------------------------------------------------------------


def test_error_replies_become_redis_py_exception_types() -> None:
    """The wire path classifies error replies by the types redis-py gives them, never by message text."""
    assert isinstance(reply_error("LOADING Redis is loading the dataset in memory"), BusyLoadingError)
    moved = reply_error("MOVED 3999 127.0.0.1:6381")
    assert isinstance(moved, MovedError)
    assert (moved.slot_id, moved.port) == (3999, 6381)
    assert isinstance(reply_error("NOSCRIPT No matching script."), NoScriptError)
    wrongtype = reply_error("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert type(wrongtype) is ResponseError
    # A message that merely mentions a code is not that error: only the first word counts.
    assert type(reply_error("ERR LOADING is not the code here")) is ResponseError


def test_request_records_live_in_the_slot_of_their_key() -> None:
    for slot in range(16384):
        tag = slot_tag(RESERVED_KEY_PREFIX[1:] + "r", slot)
        record = "{" + tag + "}:req:0123abcd"
        assert record.startswith(RESERVED_KEY_PREFIX)
        assert _native.hash_slot(record) == slot
