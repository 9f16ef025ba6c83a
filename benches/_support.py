"""Data builders and the round runner shared by the ``bench_*.py`` files."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

#: Size of every value, in bytes.
VALUE_SIZE = 100
SEED = 20261123


def make_key(i: int) -> str:
    """16-byte keys: ``key:000000000042``."""
    return f"key:{i:012d}"


def make_values(n: int, size: int = VALUE_SIZE, seed: int = SEED) -> list[bytes]:
    """``n`` pseudo-random values of ``size`` bytes (deterministic)."""
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


def shuffled(items: Iterable[T], seed: int = SEED) -> list[T]:
    """A shuffled copy of ``items`` (the same objects, in a deterministic random order)."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


class LoopRunner:
    """One event loop per benchmark: each round calls :meth:`run`, without any loop setup."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


def describe(
    benchmark: Any,
    *,
    ops: int,
    unit: str = "ops",
    targets: dict[str, float] | None = None,
    note: str = "",
) -> None:
    """Record what one round does, for ``report.py`` (see the conventions in conftest.py)."""
    benchmark.extra_info["ops"] = ops
    benchmark.extra_info["unit"] = unit
    if targets:
        benchmark.extra_info["targets"] = targets
    if note:
        benchmark.extra_info["note"] = note


def bench_async(
    benchmark: Any,
    runner: LoopRunner,
    work: Callable[[], Awaitable[object]],
    *,
    rounds: int,
    warmup_rounds: int = 1,
) -> None:
    """Time ``runner.run(work())``: one coroutine doing many operations per round."""
    benchmark.pedantic(lambda: runner.run(work()), rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
