"""CPU time per key of ``batch_put``: client process and Redis servers, standalone vs cluster.

Usage (redis-server and redis-cli on PATH; prints a Markdown table)::

    PYTHONPATH=python .venv/bin/python benches/redis_cpu_budget.py [--keys 500000] [--batch 10000] [--tasks 4]

Why CPU time and not only keys/s: on a machine with C cores, one client process and its servers
can at best keep C cores busy, so ``keys/s <= C / (client + server CPU seconds per key)``. The
CPU seconds per key hardly depend on what else runs on the machine (unlike wall time), so this
bound says how far a layout can go here, whatever the noise: a cluster can only beat one server
on throughput if it costs fewer CPU seconds per key, or if the standalone run leaves cores idle.

Measured per layout: the client's own CPU time (``resource.getrusage``), each server's CPU time
(utime + stime of ``/proc/<pid>/stat``), the wall time, and from them the busy cores during the
run and the bound above.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers.redis_servers import RedisServer, start_cluster, start_standalone

from _support import make_key, make_values
from statekit.backends import RedisConfig
from statekit.backends.redis import RedisStateBackend

TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(nodes: list[RedisServer]) -> float:
    """CPU seconds (user + system) the servers have used so far."""
    total = 0.0
    for node in nodes:
        assert node.proc is not None
        fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)
    return total


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    url: str, nodes: list[RedisServer], n: int, batch: int, tasks: int, **options: Any
) -> dict[str, float]:
    backend = RedisStateBackend(RedisConfig.from_url(url, max_connections=tasks, **options))
    values = make_values(batch)
    await backend.put("warm", b"x")  # connect outside the measurement
    await backend.delete("warm")
    batches = [
        [(make_key(i), values[i - start]) for i in range(start, min(n, start + batch))]
        for start in range(0, n, batch)
    ]

    async def worker(mine: list[list[tuple[str, bytes]]]) -> None:
        for pairs in mine:
            await backend.batch_put(pairs)

    client0, server0, wall0 = client_cpu(), server_cpu(nodes), time.perf_counter()
    await asyncio.gather(*(worker(batches[t::tasks]) for t in range(tasks)))
    wall = time.perf_counter() - wall0
    client, server = client_cpu() - client0, server_cpu(nodes) - server0
    assert await backend.batch_get([make_key(0), make_key(n - 1)]) == [values[0], values[(n - 1) % batch]]
    await backend.close()
    for node in nodes:
        node.flushall()
    return {"wall": wall, "client": client, "server": server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=4)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    standalone = start_standalone()
    cluster = start_cluster()
    try:
        layouts = [
            ("standalone, index", standalone.url, [standalone], {}),
            ("standalone, range_index=False", standalone.url, [standalone], {"range_index": False}),
            ("cluster 3 masters, index", cluster.url, cluster.nodes, {}),
            ("cluster 3 masters, range_index=False", cluster.url, cluster.nodes, {"range_index": False}),
        ]
        print(f"{args.keys:,} keys of 16 B, 100 B values, batches of {args.batch:,}, ", end="")
        print(f"{args.tasks} tasks, {cores} cores\n")
        print("| layout | keys/s | client µs/key | servers µs/key | busy cores | bound keys/s |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, url, nodes, options in layouts:
            m = asyncio.run(measure(url, nodes, args.keys, args.batch, args.tasks, **options))
            per_key = (m["client"] + m["server"]) / args.keys
            print(
                f"| {name} | {args.keys / m['wall']:,.0f} | {m['client'] / args.keys * 1e6:.2f} "
                f"| {m['server'] / args.keys * 1e6:.2f} | {(m['client'] + m['server']) / m['wall']:.2f} "
                f"| {cores / per_key:,.0f} |",
                flush=True,
            )
    finally:
        standalone.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
