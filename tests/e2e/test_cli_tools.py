"""``statekit inspect | migrate | checkpoint create | runs``, run for real as subprocesses.

Against real SQLite files and the suite's real redis-server; a pseudo-terminal (``pty``) checks
that progress bars and tables are drawn on a terminal and that plain text is printed otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from statekit import create_store

ENV = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}


def statekit(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "statekit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin if stdin is not None else "",
        env=ENV,
    )


def statekit_in_terminal(*args: str | Path, typed: bytes | None = None) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; returns (exit status, everything shown).

    With ``typed``, stdin is the terminal too and ``typed`` is what the user types.
    """
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "statekit", *map(str, args)],
        stdin=subprocess.DEVNULL if typed is None else terminal,
        stdout=terminal,
        stderr=terminal,
        env=ENV,
        close_fds=True,
    )
    os.close(terminal)
    if typed is not None:
        os.write(controller, typed)
    shown = bytearray()
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return proc.wait(timeout=60), shown.decode("utf-8", "replace")


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def failed(proc: subprocess.CompletedProcess[str], code: int = 1) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


async def _fill(url: str, n: int, *, prefix: str = "job:", ttl_keys: int = 0) -> None:
    async with create_store(url) as store:
        await store.put_many({f"{prefix}k{i:05d}": {"i": i, "tags": ["a", "b"]} for i in range(n)})
        for i in range(ttl_keys):
            await store.put(f"{prefix}ttl{i}", i, ttl=3600)
        await store.put("other:x", "outside the prefix")


async def _dump(url: str, prefix: str = "") -> dict[str, object]:
    async with create_store(url) as store:
        return dict(await store.range_get(prefix))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    asyncio.run(_fill(url, 100, ttl_keys=2))
    return url


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_stats(sqlite_url: str) -> None:
    stats = json.loads(ok(statekit("inspect", sqlite_url, "--prefix", "job:", "stats", "--json")).stdout)
    assert stats["total_keys"] == 102
    assert stats["expiring_keys"] == 2
    assert stats["backend"] == "sqlite"
    plain = ok(statekit("inspect", sqlite_url, "stats")).stdout
    assert "total_keys\t103" in plain.splitlines()
    assert "─" not in plain  # no table drawing when stdout is not a terminal


def test_inspect_keys(sqlite_url: str) -> None:
    lines = ok(statekit("inspect", sqlite_url, "--prefix", "job:", "keys", "--limit", "3")).stdout.split()
    assert lines == ["k00000", "k00001", "k00002"]
    window = statekit("inspect", sqlite_url, "keys", "--start", "job:k00010", "--end", "job:k00013", "--json")
    assert json.loads(ok(window).stdout) == ["job:k00010", "job:k00011", "job:k00012"]
    starting = ok(statekit("inspect", sqlite_url, "--prefix", "job:", "keys", "--start", "ttl")).stdout
    assert starting.split() == ["ttl0", "ttl1"]


def test_inspect_get(sqlite_url: str) -> None:
    decoded = ok(statekit("inspect", sqlite_url, "--prefix", "job:", "get", "k00007")).stdout
    assert json.loads(decoded) == {"i": 7, "tags": ["a", "b"]}
    raw = subprocess.run(
        [sys.executable, "-m", "statekit", "inspect", sqlite_url, "get", "job:k00007", "--raw"],
        capture_output=True,
        timeout=60,
        env=ENV,
        check=True,
    ).stdout
    assert json.loads(raw) == {"i": 7, "tags": ["a", "b"]}  # the stored JSON bytes, as they are
    missing = failed(statekit("inspect", sqlite_url, "get", "job:nope"))
    assert "'job:nope' not found" in missing.stderr


def test_inspect_ttl(sqlite_url: str) -> None:
    left = float(ok(statekit("inspect", sqlite_url, "--prefix", "job:", "ttl", "ttl0")).stdout)
    assert 3500 < left <= 3600
    never = ok(statekit("inspect", sqlite_url, "--prefix", "job:", "ttl", "k00001")).stdout
    assert "never expires" in never
    assert json.loads(ok(statekit("inspect", sqlite_url, "ttl", "job:k00001", "--json")).stdout) == {
        "key": "job:k00001",
        "ttl": None,
    }
    failed(statekit("inspect", sqlite_url, "ttl", "job:nope"))


def test_inspect_del_asks_unless_yes(sqlite_url: str) -> None:
    refused = failed(statekit("inspect", sqlite_url, "--prefix", "job:", "del", "k00001"))
    assert "--yes" in refused.stderr
    assert "job:k00001" in asyncio.run(_dump(sqlite_url, "job:"))
    ok(statekit("inspect", sqlite_url, "--prefix", "job:", "del", "k00001", "--yes"))
    assert "job:k00001" not in asyncio.run(_dump(sqlite_url, "job:"))
    failed(statekit("inspect", sqlite_url, "--prefix", "job:", "del", "k00001", "--yes"))


def test_inspect_del_asks_on_a_terminal(sqlite_url: str) -> None:
    code, shown = statekit_in_terminal(
        "inspect", sqlite_url, "--prefix", "job:", "del", "k00002", typed=b"n\n"
    )
    assert code == 1
    assert "delete 'k00002'" in shown
    assert "not deleted" in shown
    assert "job:k00002" in asyncio.run(_dump(sqlite_url, "job:"))
    code, shown = statekit_in_terminal(
        "inspect", sqlite_url, "--prefix", "job:", "del", "k00002", typed=b"y\n"
    )
    assert code == 0, shown
    assert "deleted k00002" in shown
    assert "job:k00002" not in asyncio.run(_dump(sqlite_url, "job:"))


def test_memory_and_bad_urls_are_refused(tmp_path: Path, sqlite_url: str) -> None:
    assert "memory://" in failed(statekit("inspect", "memory://", "stats")).stderr
    assert "memory://" in failed(statekit("migrate", "memory://", sqlite_url)).stderr
    assert "memory://" in failed(statekit("migrate", sqlite_url, "memory://")).stderr
    assert "memory://" in failed(statekit("checkpoint", "create", "memory://", tmp_path / "c")).stderr
    failed(statekit("inspect", "ftp://x", "stats"))
    failed(statekit("migrate", sqlite_url, sqlite_url))


def test_passwords_are_never_printed(tmp_path: Path) -> None:
    url = "redis://:s3cret-pw@127.0.0.1:1/0?connect_timeout=0.2&max_retries=0"
    proc = failed(statekit("migrate", url, f"sqlite:///{tmp_path / 'x.db'}", "--json"))
    assert "s3cret-pw" not in proc.stdout + proc.stderr


# -- migrate ----------------------------------------------------------------------------------


def test_migrate_sqlite_to_redis_and_back(sqlite_url: str, redis_url: str, tmp_path: Path) -> None:
    proc = ok(statekit("migrate", sqlite_url, redis_url, "--prefix", "job:", "--batch-size", "7", "--json"))
    report = json.loads(proc.stdout)
    assert report["keys"] == report["written"] == 102
    assert report["verified"] is True
    assert report["source_sha256"] == report["target_sha256"]
    assert asyncio.run(_dump(redis_url)) == asyncio.run(_dump(sqlite_url, "job:"))  # not other:x
    left = float(ok(statekit("inspect", redis_url, "ttl", "job:ttl1")).stdout)
    assert 3500 < left <= 3600

    back = f"sqlite:///{tmp_path / 'back.db'}"
    plain = ok(statekit("migrate", redis_url, back))
    assert "verified: identical" in plain.stdout
    assert "keys/s" in plain.stderr  # the throughput line
    assert asyncio.run(_dump(back)) == asyncio.run(_dump(sqlite_url, "job:"))


def test_migrate_resumes_by_skipping_identical_keys(sqlite_url: str, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'target.db'}"

    async def interrupted_copy() -> None:
        # What an interrupted run leaves: the first batches written, the rest not.
        source = await _dump(sqlite_url, "job:")
        async with create_store(target) as store:
            await store.put_many(dict(list(source.items())[:60]))
            await store.put("job:k00003", "stale value")

    asyncio.run(interrupted_copy())
    report = json.loads(ok(statekit("migrate", sqlite_url, target, "--prefix", "job:", "--json")).stdout)
    assert report["unchanged"] == 59
    assert report["written"] == 102 - 59
    assert report["verified"] is True
    again = json.loads(ok(statekit("migrate", sqlite_url, target, "--prefix", "job:", "--json")).stdout)
    assert again["written"] == 0
    assert again["unchanged"] == 102


def test_migrate_resumes_after_being_killed(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'big.db'}"
    target = f"sqlite:///{tmp_path / 'target.db'}"
    asyncio.run(_fill(source, 20_000))
    proc = subprocess.Popen(
        [sys.executable, "-m", "statekit", "migrate", source, target, "--batch-size", "20", "--progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert proc.stderr is not None
    shown = b""
    while chunk := os.read(proc.stderr.fileno(), 4096):  # until the bar shows batches written
        shown += chunk
        if re.search(rb"[1-9][0-9]*/20001", shown):
            break
    proc.kill()  # a hard crash in the middle of the copy (or just after it, on a fast machine)
    proc.wait(timeout=60)
    proc.stderr.close()
    report = json.loads(ok(statekit("migrate", source, target, "--json")).stdout)
    assert report["verified"] is True
    assert report["written"] + report["unchanged"] == report["keys"] == 20_001
    assert asyncio.run(_dump(target)) == asyncio.run(_dump(source))


def test_migrate_reports_a_target_that_differs(sqlite_url: str, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'target.db'}"

    async def extra() -> None:
        async with create_store(target) as store:
            await store.put("job:zzz-not-in-source", 1)

    asyncio.run(extra())
    proc = failed(statekit("migrate", sqlite_url, target, "--prefix", "job:"))
    assert "NOT VERIFIED" in proc.stdout
    assert "102 keys at the source, 103 at the target" in proc.stderr


def test_migrate_between_key_prefixes(sqlite_url: str, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'target.db'}?key_prefix=v2:"
    ok(statekit("migrate", f"{sqlite_url}?key_prefix=job:", target))
    copied = asyncio.run(_dump(f"sqlite:///{tmp_path / 'target.db'}"))
    assert len(copied) == 102
    assert all(key.startswith("v2:") for key in copied)


# -- progress bars and tables on a terminal (pty) ----------------------------------------------


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'big.db'}"
    asyncio.run(_fill(source, 5_000))
    code, shown = statekit_in_terminal("migrate", source, f"sqlite:///{tmp_path / 'a.db'}")
    assert code == 0, shown
    assert "migrating" in shown
    assert "━" in shown  # rich's bar
    assert "5001/5001" in shown  # 5,000 keys + other:x
    assert "verified: identical" in shown

    piped = ok(statekit("migrate", source, f"sqlite:///{tmp_path / 'b.db'}"))
    assert "migrating" not in piped.stderr
    assert "━" not in piped.stderr
    assert "\x1b[" not in piped.stdout + piped.stderr  # no terminal control codes in plain output
    assert "verified: identical" in piped.stdout

    forced = ok(statekit("migrate", source, f"sqlite:///{tmp_path / 'c.db'}", "--progress"))
    assert "migrating" in forced.stderr


def test_tables_on_a_terminal_plain_text_otherwise(sqlite_url: str) -> None:
    code, shown = statekit_in_terminal("inspect", sqlite_url, "stats")
    assert code == 0, shown
    assert "│" in shown  # a rich table
    assert "total_keys" in shown
    assert "│" not in ok(statekit("inspect", sqlite_url, "stats")).stdout


# -- checkpoint create, runs --------------------------------------------------------------------


def test_checkpoint_create_then_restore(redis_url: str, sqlite_url: str, tmp_path: Path) -> None:
    ok(statekit("migrate", sqlite_url, redis_url))
    directory = tmp_path / "ckpt"
    created = json.loads(
        ok(statekit("checkpoint", "create", redis_url, directory, "--prefix", "job:", "--json")).stdout
    )
    assert created["entry_count"] == 102
    assert created["prefix"] == "job:"
    listing = json.loads(ok(statekit("checkpoint", "list", directory, "--json")).stdout)
    assert [c["id"] for c in listing["checkpoints"]] == [created["id"]]
    ok(statekit("checkpoint", "verify", directory))
    restored = f"sqlite:///{tmp_path / 'restored.db'}"
    ok(statekit("checkpoint", "restore", directory, "--store", restored))
    assert asyncio.run(_dump(restored)) == asyncio.run(_dump(sqlite_url, "job:"))


def test_runs_show_and_set(tmp_path: Path) -> None:
    state_file = tmp_path / "state" / "import_state.json"
    assert "no state" in ok(statekit("runs", "show", state_file)).stdout
    ok(statekit("runs", "set", state_file, "--last-contiguous", "19500", "--last-attempted", "19550"))
    state = json.loads(ok(statekit("runs", "show", state_file, "--json")).stdout)
    assert state["last_contiguous_run"] == 19500
    assert state["last_attempted_run"] == 19550
    assert "timestamp" in state
    ok(statekit("runs", "set", state_file, "--last-contiguous", "100"))
    shown = ok(statekit("runs", "show", state_file)).stdout.splitlines()
    assert "last_contiguous_run\t100" in shown
    assert "last_attempted_run\t19550" in shown
    failed(statekit("runs", "set", state_file))
    failed(statekit("runs", "set", state_file, "--last-contiguous", "-1"))
    assert json.loads(state_file.read_text())["last_contiguous_run"] == 100


def test_runs_gaps_lists_the_missing_runs(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    done = tmp_path / "done.txt"
    assert ok(statekit("runs", "gaps", state_file, done)).stdout == ""  # no state: nothing missing
    ok(statekit("runs", "set", state_file, "--last-contiguous", "100", "--last-attempted", "110"))
    done.write_text("\n".join(map(str, [101, 103, 104, 106, 107, 108, 110, 99, 250])) + "\n")
    shown = ok(statekit("runs", "gaps", state_file, done))
    assert shown.stdout.split() == ["102", "105", "109"]
    assert "3 runs missing after last_contiguous_run=100 up to last_attempted_run=110" in shown.stderr
    limited = json.loads(ok(statekit("runs", "gaps", state_file, done, "--limit", "2", "--json")).stdout)
    assert limited == {
        "last_contiguous_run": 100,
        "last_attempted_run": 110,
        "missing": 3,
        "runs": [102, 105],
    }
    assert "2 shown" in ok(statekit("runs", "gaps", state_file, done, "--limit", "2")).stderr
    # A window too wide to list is an error naming the limit, not a traceback.
    ok(statekit("runs", "set", state_file, "--last-attempted", str(100 + 2 * 10**9)))
    assert "too large" in failed(statekit("runs", "gaps", state_file, done)).stderr
    failed(statekit("runs", "gaps", state_file, done, "--limit", "-1"))
