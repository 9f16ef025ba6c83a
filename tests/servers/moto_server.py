"""A real S3 + SQS server (moto's server mode) on 127.0.0.1 and a free port, for tests and benches.

``require_moto()`` skips loudly when moto is not installed, and fails under ``CI=true``.
The server is a subprocess (``python -m moto.server``); ``stop()`` terminates it. Dummy
credentials only: nothing here can reach AWS.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.ci import skip_or_fail

INSTALL_HINT = "pip install 'moto[server]' (or: pip install -e '.[test]')"
START_TIMEOUT = 30.0
#: Environment every S3/SQS client in the tests runs with: dummy credentials, no instance metadata.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def require_moto() -> None:
    """Skip (fail under CI=true) when moto's server mode is not installed."""
    if importlib.util.find_spec("moto") is not None and importlib.util.find_spec("flask") is not None:
        return
    message = f"moto[server] not installed: the S3/SQS storage tests need a real local server. {INSTALL_HINT}"
    skip_or_fail(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoServer:
    """One moto server process serving S3 and SQS."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        require_moto()
        env = {**os.environ, **DUMMY_AWS_ENV}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server on port {self.port} did not start in {START_TIMEOUT}s")

    def reset(self) -> None:
        """Forget every bucket and queue."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def start_moto() -> MotoServer:
    server = MotoServer()
    server.start()
    return server


@contextmanager
def running_moto() -> Iterator[MotoServer]:
    """A moto server with the dummy AWS credentials in the environment; both undone on exit."""
    saved = {name: os.environ.get(name) for name in DUMMY_AWS_ENV}
    os.environ.update(DUMMY_AWS_ENV)
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
