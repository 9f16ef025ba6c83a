"""Lock holders run as separate processes by the lock tests (``python -m tests.acceptance.locks._child``)."""

from __future__ import annotations

import asyncio
import json
import sys

from statekit import create_store
from statekit.errors import LockLost, StaleFence
from statekit.locks import RedisLock


async def contend(url: str, name: str, rounds: int, counter: str) -> None:
    """Increment a plain Redis counter ``rounds`` times, read-modify-write, under the lock."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    tokens = []
    lock = RedisLock(url, name, ttl=30)
    for _ in range(rounds):
        async with lock as fence:
            value = int(await client.get(counter) or 0)
            await asyncio.sleep(0)  # let the other process try its luck meanwhile
            await client.set(counter, value + 1)
            tokens.append(fence.token)
    await lock.aclose()
    await client.aclose()
    print(json.dumps(tokens), flush=True)


async def paused(url: str, name: str, db_path: str) -> None:
    """Hold the lock, write fenced, wait (the test freezes us past the TTL), then report."""
    lost_calls: list[object] = []
    lock = RedisLock(url, name, ttl=1.0, renew_every=0.2, on_lost=lost_calls.append)
    store = create_store(f"sqlite:///{db_path}")
    fence = await lock.acquire()
    await store.put("report", "first holder", fence=fence)
    print(f"ACQUIRED {fence.token}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # frozen here
    result: dict[str, object] = {}
    try:
        await store.put("report", "stale holder", fence=fence)
        result["write"] = "written"
    except StaleFence as exc:
        result["write"] = f"StaleFence newer={exc.newer_token}"
    result["lost"] = lock.lost
    try:
        await lock.ensure_held()
        result["ensure_held"] = "held"
    except LockLost:
        result["ensure_held"] = "LockLost"
    try:
        await lock.release()
        result["release"] = "released"
    except LockLost:
        result["release"] = "LockLost"
    await asyncio.sleep(0)
    result["on_lost_calls"] = len(lost_calls)
    await lock.aclose()
    await store.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "contend":
        asyncio.run(contend(args[0], args[1], int(args[2]), args[3]))
    elif mode == "paused":
        asyncio.run(paused(args[0], args[1], args[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
