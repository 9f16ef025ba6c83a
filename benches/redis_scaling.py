"""Cluster vs standalone: batch put throughput and the memory the range index costs (INFO memory).

Usage (redis-server and redis-cli on PATH; prints Markdown tables)::

    PYTHONPATH=python .venv/bin/python benches/redis_scaling.py [--keys 1000000] [--batch 10000] [--tasks 4]

Starts a fresh standalone server and a fresh local 3-master cluster (the test fixtures' servers,
no persistence), then for each layout writes ``--keys`` keys of 16 B with 100 B values through
``RedisStateBackend.batch_put`` in batches of ``--batch`` keys from ``--tasks`` concurrent tasks,
and reads ``used_memory`` of ``INFO memory`` (summed over the cluster's masters) before and after.
Layouts: standalone with the flat index (1 shard), with the paged index (``index_layout="paged"``),
with ``range_index=False``; the same three on the cluster (16 shards). Memory per key = (after -
before) / keys; the index's cost = layout with index - the same topology without. ``--only`` runs
the layouts whose name contains one of its words (``--only paged,False``); ``--shuffle`` writes the
keys in random order (each batch scattered over the whole key range) instead of ascending.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
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


def used_memory(nodes: list[RedisServer]) -> int:
    total = 0
    for node in nodes:
        for line in node.cli("INFO", "memory").splitlines():
            if line.startswith("used_memory:"):
                total += int(line.split(":", 1)[1])
    return total


async def fill(url: str, n: int, batch: int, tasks: int, shuffle: bool, **options: Any) -> float:
    backend = RedisStateBackend(RedisConfig.from_url(url, max_connections=tasks, **options))
    values = make_values(batch)
    await backend.put("warm", b"x")  # connect and start the cluster client outside the timing
    await backend.delete("warm")
    starts = list(range(0, n, batch))
    order = list(range(n))
    if shuffle:  # scattered keys: every batch spreads over the whole key range
        random.Random(42).shuffle(order)

    async def worker(mine: list[int]) -> None:
        for start in mine:
            pairs = [(make_key(order[i]), values[i - start]) for i in range(start, min(n, start + batch))]
            await backend.batch_put(pairs)

    began = time.perf_counter()
    await asyncio.gather(*(worker(starts[t::tasks]) for t in range(tasks)))
    elapsed = time.perf_counter() - began
    ends = [order[0], order[n - 1]]
    assert await backend.batch_get([make_key(e) for e in ends]) == [values[0], values[(n - 1) % batch]]
    await backend.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--shuffle", action="store_true", help="keys in random order (default: ascending)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per layout, interleaved")
    parser.add_argument("--only", default="", help="comma-separated words: run the layouts naming one")
    args = parser.parse_args()
    standalone = start_standalone()
    cluster = start_cluster()
    try:
        paged = {"index_layout": "paged"}
        layouts = [
            ("standalone, index (1 shard)", standalone.url, [standalone], {}),
            ("standalone, paged index (1 shard)", standalone.url, [standalone], paged),
            ("standalone, range_index=False", standalone.url, [standalone], {"range_index": False}),
            ("cluster 3 masters, index (16 shards)", cluster.url, cluster.nodes, {}),
            ("cluster 3 masters, paged index (16 shards)", cluster.url, cluster.nodes, paged),
            ("cluster 3 masters, range_index=False", cluster.url, cluster.nodes, {"range_index": False}),
        ]
        words = [w for w in args.only.split(",") if w]
        chosen = [layout for layout in layouts if not words or any(w in layout[0] for w in words)]
        # Interleaved repeats: the machines this runs on are shared, their speed drifts by the minute.
        rates: dict[str, list[float]] = {}
        memory: dict[str, float] = {}
        for name, url, nodes, options in chosen * args.repeat:
            for node in nodes:
                node.flushall()
            before = used_memory(nodes)
            rate = asyncio.run(fill(url, args.keys, args.batch, args.tasks, args.shuffle, **options))
            per_key = (used_memory(nodes) - before) / args.keys
            rates.setdefault(name, []).append(rate)
            memory.setdefault(name, per_key)
            print(f"{name}: {rate:,.0f} keys/s, {per_key:.1f} B/key", file=sys.stderr)
        rows = [(name, statistics.median(rates[name]), memory[name]) for name, *_ in chosen]
    finally:
        standalone.stop()
        cluster.stop()
    plain = {r[0].split(",")[0]: r[2] for r in rows if "False" in r[0]}
    order = "random" if args.shuffle else "ascending"
    print(
        f"\n{args.keys:,} keys ({order} order), 16 B keys, 100 B values, batches of {args.batch:,}, "
        f"{args.tasks} tasks, median of {args.repeat} run(s)\n"
    )
    print("| layout | batch put | memory per key | index overhead |")
    print("|---|---:|---:|---:|")
    for name, rate, per_key in rows:
        base = plain.get(name.split(",")[0])
        if "False" in name or base is None:
            overhead = "—"
        else:
            overhead = f"+{per_key - base:.1f} B (+{(per_key / base - 1) * 100:.0f}%)"
        print(f"| {name} | {rate / 1e3:,.0f}k keys/s | {per_key:.1f} B | {overhead} |")

    def ratio(a: str, b: str) -> str:
        """Median of the ratios of runs side by side (same minute), and each of them."""
        if a not in rates or b not in rates:
            return "(not run)"
        each = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        return f"{statistics.median(each):.2f}x ({', '.join(f'{r:.2f}' for r in each)})"

    print(
        "\ncluster / standalone batch put: flat index "
        + ratio("cluster 3 masters, index (16 shards)", "standalone, index (1 shard)")
        + ", without index "
        + ratio("cluster 3 masters, range_index=False", "standalone, range_index=False")
    )
    print(
        "paged / flat batch put: standalone "
        + ratio("standalone, paged index (1 shard)", "standalone, index (1 shard)")
        + ", cluster "
        + ratio("cluster 3 masters, paged index (16 shards)", "cluster 3 masters, index (16 shards)")
    )


if __name__ == "__main__":
    main()
