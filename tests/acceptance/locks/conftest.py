"""Lock-test fixtures: a real PostgreSQL server, lock holders run as separate processes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ci import skip_or_fail
from tests.servers.pg_server import PostgresServer, start_postgres

ROOT = Path(__file__).resolve().parents[3]


def child(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    """Start ``python -m tests.acceptance.locks._child ARGS`` with this interpreter and this statekit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.acceptance.locks._child", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL for the session (tests/servers/pg_server.py), stopped at the end."""
    if importlib.util.find_spec("psycopg") is None:
        skip_or_fail("psycopg not installed: the PostgresLock tests need it (pip install statekit[postgres])")
    server = start_postgres()
    yield server
    server.stop()
    server.remove()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.dsn
