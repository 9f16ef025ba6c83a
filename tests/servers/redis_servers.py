"""Real redis-server processes for tests and benchmarks: standalone, 3-master cluster, TLS, AUTH.

Every server listens on 127.0.0.1 only, on a free port picked here, in its own temp directory,
without persistence; ``stop()`` kills it. ``require_redis()`` skips (or, with ``CI=true``, fails)
when ``redis-server``/``redis-cli`` are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.ci import skip_or_fail

INSTALL_HINT = "apt-get install redis-server redis-tools"
START_TIMEOUT = 10.0


def require_redis() -> tuple[str, str]:
    """Paths of redis-server and redis-cli; skip loudly (fail under CI=true) when missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli:
        return server, cli
    message = (
        "redis-server/redis-cli not found: the Redis tests need a real server. "
        f"Install it with `{INSTALL_HINT}`."
    )
    skip_or_fail(message)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


@dataclass
class RedisServer:
    """One redis-server process."""

    port: int
    directory: Path
    args: list[str]
    tls: bool = False
    ca_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        server, _ = require_redis()
        log = self.directory / f"redis-{self.port}.log"
        log.unlink(missing_ok=True)
        port_args = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            [
                server,
                *port_args,
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(log),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = log.read_text() if log.exists() else ""
                raise RuntimeError(f"redis-server exited early ({self.proc.returncode}): {text[-2000:]}")
            if log.exists() and "Ready to accept connections" in log.read_text():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} not ready after {START_TIMEOUT}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def flushall(self) -> None:
        """FLUSHALL, over a plain socket when possible (cheaper than a redis-cli process per test)."""
        if self.tls or "--requirepass" in self.args:
            self.cli("FLUSHALL")
            return
        reply = b""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            conn.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
            while not reply.endswith(b"\r\n"):
                chunk = conn.recv(256)
                if not chunk:
                    break
                reply += chunk
        if reply != b"+OK\r\n":
            raise RuntimeError(f"FLUSHALL on port {self.port} replied {reply!r}")

    def cli(self, *args: str, password: str | None = None) -> str:
        """Run redis-cli against this server and return its output."""
        _, cli = require_redis()
        cmd = [cli, "-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            cmd += ["--tls", "--cacert", str(self.ca_file)]
        env = dict(os.environ)
        if password is not None:
            env["REDISCLI_AUTH"] = password
        out = subprocess.run([*cmd, *args], capture_output=True, check=True, timeout=30, env=env)
        return out.stdout.decode()


def start_standalone(*args: str) -> RedisServer:
    server = RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="statekit-redis-")), list(args))
    server.start()
    return server


@dataclass
class RedisCluster:
    """Three masters, no replicas."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster() -> RedisCluster:
    directory = Path(tempfile.mkdtemp(prefix="statekit-cluster-"))
    nodes = []
    for _ in range(3):
        port = free_port()
        node = RedisServer(
            port,
            directory,
            ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"],
        )
        node.start()
        nodes.append(node)
    cluster = RedisCluster(nodes)
    try:
        _, cli = require_redis()
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in nodes):
                return cluster
            time.sleep(0.1)
        raise RuntimeError("the Redis cluster did not reach cluster_state:ok")
    except BaseException:
        cluster.stop()
        raise


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost, with openssl."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], capture_output=True, check=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
        "-days", "2", "-subj", "/CN=statekit-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca_crt, crt, key


def start_tls() -> RedisServer:
    if shutil.which("openssl") is None:
        skip_or_fail("openssl not found: needed to make the TLS test certificate")
    directory = Path(tempfile.mkdtemp(prefix="statekit-redis-tls-"))
    ca, crt, key = make_certificates(directory)
    server = RedisServer(
        free_port(),
        directory,
        [
            "--tls-cert-file",
            str(crt),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
        ],
        tls=True,
        ca_file=ca,
    )
    server.start()
    return server


def tls_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))
