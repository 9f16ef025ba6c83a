"""The same Rust-encoded pipelines over three reply readers (the measurement behind the Redis transport).

Usage (a redis-server binary on PATH; prints a Markdown table)::

    PYTHONPATH=python .venv/bin/python benches/redis_transport_compare.py [--old-wire PATH]

* ``statekit transport``: ``statekit.backends.redis._transport.Transport.roundtrip`` on a redis-py
  ``ConnectionPool`` connection: payloads written with ``send_packed_command``, replies parsed by
  a ``hiredis.Reader`` fed from the connection's stream.
* ``redis-py read_response``: the same connection and payloads, each reply read with redis-py's
  public ``Connection.read_response()`` (what redis-py's own pipelines do).
* ``old wire`` (optional): the hand-written asyncio Protocol + pool that statekit used before
  (``python/statekit/backends/_redis_wire.py`` at commit a678b32); ``--old-wire`` names a copy of
  that file (``git show a678b32:python/statekit/backends/_redis_wire.py > /tmp/_redis_wire_old.py``).

Four command shapes, 100k keys of 16 B with 100 B values, 1000 keys per payload and 10 payloads
per round trip: the standalone ``batch_put`` chunk (MULTI, ZADD, ZREM, MSET, EXEC: 5 replies per
1000 keys), the cluster ``batch_put`` shape (1000 SETs: 1000 replies), ``MGET`` (1 reply), and
1000 GETs. Rounds are interleaved (every reader once per round) so that the machine's noise hits
them alike; medians of 14 rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from tests.servers.redis_servers import start_standalone

from _support import make_key, make_values
from statekit import _native
from statekit.backends.redis._topology import _PoolEndpoint
from statekit.backends.redis._transport import Transport

N = 100_000
CHUNK = 1000
PER_TRIP = 10
ROUNDS = 15

Reader = Callable[[list[bytes], list[int]], Awaitable[object]]


def shapes() -> dict[str, tuple[list[bytes], list[int]]]:
    keys = [make_key(i) for i in range(N)]
    values = make_values(N)
    out: dict[str, list[tuple[list[list[Any]], int]]] = {
        "MULTI/ZADD/ZREM/MSET/EXEC": [],
        "1000 SETs": [],
        "MGET": [],
        "1000 GETs": [],
    }
    for i in range(0, N, CHUNK):
        ks, vs = keys[i : i + CHUNK], values[i : i + CHUNK]
        zadd: list[Any] = ["ZADD", "{statekit-index:}:lex"]
        mset: list[Any] = ["MSET"]
        for k, v in zip(ks, vs, strict=True):
            zadd += (0, k)
            mset += (k, v)
        out["MULTI/ZADD/ZREM/MSET/EXEC"].append(
            ([["MULTI"], zadd, ["ZREM", "{statekit-index:}:exp", *ks], mset, ["EXEC"]], 5)
        )
        out["1000 SETs"].append(([["SET", k, v] for k, v in zip(ks, vs, strict=True)], CHUNK))
        out["MGET"].append(([["MGET", *ks]], 1))
        out["1000 GETs"].append(([["GET", k] for k in ks], CHUNK))
    return {
        name: ([_native.encode_commands(c) for c, _ in shape], [n for _, n in shape])
        for name, shape in out.items()
    }


async def main(old_wire: str | None) -> None:
    server = start_standalone()
    try:
        transport = Transport(
            max_connections=1,
            connect_timeout=5,
            read_timeout=5,
            write_timeout=5,
            max_retries=0,
            retry_base_delay=0.1,
            retry_max_delay=1,
            secret=None,
            on_retry=lambda: None,
            on_error=lambda: None,
        )
        endpoint = _PoolEndpoint(aioredis.ConnectionPool(port=server.port, max_connections=1), "local")
        plain = aioredis.ConnectionPool(port=server.port, max_connections=1, socket_timeout=5)

        async def statekit_reader(payloads: list[bytes], counts: list[int]) -> object:
            return await transport.roundtrip(endpoint, payloads, counts)

        async def redispy_reader(payloads: list[bytes], counts: list[int]) -> object:
            conn = await plain.get_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command(payloads, check_health=False)
                out = []
                for count in counts:
                    replies = []
                    for _ in range(count):
                        try:
                            replies.append(await conn.read_response())
                        except ResponseError as exc:
                            replies.append(exc)
                    out.append(replies)
                return out
            finally:
                await plain.release(conn)

        readers: dict[str, Reader] = {
            "statekit transport": statekit_reader,
            "redis-py read_response": redispy_reader,
        }
        if old_wire:
            spec = importlib.util.spec_from_file_location("_redis_wire_old", old_wire)
            assert spec is not None
            assert spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            pool = module.WirePool(
                "127.0.0.1",
                server.port,
                ssl_context=None,
                username=None,
                password=None,
                db=0,
                connect_timeout=5,
                read_timeout=5,
                write_timeout=5,
                max_connections=1,
            )
            readers["old wire"] = pool.pipeline
        names = list(readers)
        print(
            f"| shape (100k keys) | {' | '.join(names)} | statekit / "
            + " | statekit / ".join(names[1:])
            + " |"
        )
        print("|---" * (1 + 2 * len(names) - 1) + "|")
        for shape, (payloads, counts) in shapes().items():
            times: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(ROUNDS):
                for name, reader in readers.items():
                    started = time.perf_counter()
                    for j in range(0, len(payloads), PER_TRIP):
                        await reader(payloads[j : j + PER_TRIP], counts[j : j + PER_TRIP])
                    times[name].append(time.perf_counter() - started)
            median = {name: statistics.median(t[1:]) for name, t in times.items()}
            rates = " | ".join(f"{N / median[name] / 1e3:,.0f}k ops/s" for name in names)
            ratios = " | ".join(f"{median[name] / median[names[0]]:.2f}x" for name in names[1:])
            print(f"| {shape} | {rates} | {ratios} |")
        await plain.aclose()
        await endpoint.pool.aclose()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-wire", help="a copy of _redis_wire.py from commit a678b32")
    asyncio.run(main(parser.parse_args().old_wire))
