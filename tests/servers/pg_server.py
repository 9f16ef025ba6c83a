"""A real PostgreSQL server for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a temp dir.

It listens on 127.0.0.1 only, on a free port, with ``trust`` authentication for the
``postgres`` role; ``stop()`` shuts it down (``-m immediate``) and removes the directory.
PostgreSQL refuses to run as root, so when the tests run as root (CI) the server runs as the
``postgres`` system user (created here if missing) through ``runuser``.
``require_postgres()`` skips (or, with ``CI=true``, fails) when the binaries are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.ci import skip_or_fail

INSTALL_HINT = "apt-get install postgresql"
SERVER_USER = "postgres"


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (PATH first, then Debian's layout)."""
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            directory = Path(os.path.realpath(found)).parent
            if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
                return directory
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    for candidate in candidates:
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    return None


def require_postgres() -> Path:
    """The binaries' directory; skip loudly (fail under CI=true) when PostgreSQL is missing."""
    directory = find_bin_dir()
    if directory is not None:
        return directory
    message = (
        f"PostgreSQL (initdb/pg_ctl) not found: the PostgresLock tests need a real server. Install it with "
        f"`{INSTALL_HINT}`."
    )
    skip_or_fail(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    """The user to run the server as (None: the current user, when not root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return SERVER_USER


@dataclass
class PostgresServer:
    bin_dir: Path
    directory: Path
    port: int
    user: str | None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(
            cmd, check=True, capture_output=True, text=True, timeout=timeout, cwd=self.directory
        )

    def start(self) -> None:
        data = self.directory / "data"
        if not data.exists():
            self._run(
                str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
            )
        options = f"-p {self.port} -h 127.0.0.1 -c unix_socket_directories={self.directory} -c fsync=off"
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.directory / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        data = self.directory / "data"
        if (data / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres() -> PostgresServer:
    bin_dir = require_postgres()
    user = _server_user()
    directory = Path(tempfile.mkdtemp(prefix="statekit-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(bin_dir, directory, _free_port(), user)
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        log = directory / "log"
        detail = log.read_text()[-2000:] if log.exists() else ""
        server.remove()
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}{detail}") from exc
    return server
