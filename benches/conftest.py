"""Shared fixtures and conventions of the benchmark suite (see benches/README.md).

Conventions that ``benches/report.py`` relies on:

* Every benchmark sets ``benchmark.extra_info["ops"]``: operations done in one round, so the
  report can print ops/s whatever the round size.
* Benchmark names say what a row is: ``test_statekit_*`` measures statekit, ``test_baseline_*``
  measures a peer of the same group; every statekit row is compared with every baseline row.
* A statekit row that has a target sets ``benchmark.extra_info["targets"]`` to
  ``{"baseline_<name>": minimum ratio}``, the ratio being statekit ops/s / baseline ops/s.

Benchmarks only report: nothing here asserts a timing. They do check that each implementation
computed the right thing, outside the timed code.

Files are named ``bench_*.py``; the hook below collects them (the project's pytest
configuration only collects ``test_*.py``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.ci import pytest_make_collect_report, pytest_runtest_makereport

from _support import LoopRunner

# tests/ci.py's hooks, registered by being names of this conftest: CI runs every bench once
# (--benchmark-disable), and under CI=true a bench that would skip (a missing server, redis-benchmark
# or extra) fails instead, so it cannot rot unseen.
__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # A file named on the command line is already collected by pytest's own hook.
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
        return module
    return None


@pytest.fixture
def aloop() -> Iterator[LoopRunner]:
    runner = LoopRunner()
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(autouse=True)
def _collect_garbage() -> None:
    """Start every benchmark from a clean heap, so one bench's garbage does not bill the next."""
    gc.collect()
