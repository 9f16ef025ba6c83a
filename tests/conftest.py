"""Shared fixtures: a controllable clock and one fixture per backend kind.

Every behavioural test that takes ``backend`` or ``store`` runs once per backend kind; the
Redis backend joins the list when it exists (its fixture starts a real redis-server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from statekit import KeyValueStore
from statekit.backends import MemoryStateBackend, SqliteStateBackend, StateBackend


class FakeClock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


BackendFactory = Callable[[Path, FakeClock], StateBackend]

BACKEND_FACTORIES: dict[str, BackendFactory] = {
    "memory": lambda tmp, clock: MemoryStateBackend(clock=clock),
    "sqlite": lambda tmp, clock: SqliteStateBackend(tmp / "state.db", clock=clock),
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=sorted(BACKEND_FACTORIES))
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def backend_factory(backend_kind: str) -> BackendFactory:
    return BACKEND_FACTORIES[backend_kind]


@pytest.fixture
async def backend(
    backend_factory: BackendFactory, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StateBackend]:
    be = backend_factory(tmp_path, clock)
    yield be
    await be.close()


@pytest.fixture
async def store(backend: StateBackend) -> AsyncIterator[KeyValueStore]:
    kv = KeyValueStore(backend)
    yield kv
    await kv.close()
