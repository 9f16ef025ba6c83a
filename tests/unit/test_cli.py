"""The ``statekit`` command line, run for real: ``python -m statekit checkpoint list|verify|restore``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from statekit import create_store
from statekit.checkpoint import CheckpointCoordinator, CheckpointOptions


def statekit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "statekit", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int = 1) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


async def _make_checkpoints(db: Path, directory: Path, n: int) -> list[str]:
    """Two checkpoints of a SQLite store with prefix "job:": values 0.. then "changed" for k1."""
    store = create_store(f"sqlite:///{db}", key_prefix="job:")
    await store.put_many({f"k{i}": i for i in range(n)})
    coordinator = CheckpointCoordinator(store, 60, CheckpointOptions(directory))
    first = await coordinator.create_checkpoint()
    await store.put("k1", "changed")
    second = await coordinator.create_checkpoint()
    await store.close()
    return [first, second]


@pytest.fixture
def checkpoints(tmp_path: Path) -> tuple[Path, list[str]]:
    directory = tmp_path / "ckpt"
    ids = asyncio.run(_make_checkpoints(tmp_path / "source.db", directory, 50))
    return directory, ids


async def _read_store(url: str, key_prefix: str = "job:") -> dict[str, object]:
    store = create_store(url, key_prefix=key_prefix)
    try:
        return dict(await store.range_get(""))
    finally:
        await store.close()


def test_list(checkpoints: tuple[Path, list[str]]) -> None:
    directory, ids = checkpoints
    proc = statekit("checkpoint", "list", directory)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "CREATED", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == ids
    assert all(" 50 " in line and "zstd" in line for line in lines[1:])


def test_list_json(checkpoints: tuple[Path, list[str]]) -> None:
    directory, ids = checkpoints
    proc = statekit("checkpoint", "list", directory, "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert [c["id"] for c in document["checkpoints"]] == ids
    first = document["checkpoints"][0]
    assert first["entry_count"] == 50
    assert first["version"] == 2
    assert len(first["checksum"]) == 64
    assert first["size"] == (directory / f"{ids[0]}.ckpt").stat().st_size
    assert document["unreadable"] == []


def test_list_empty_and_missing_directories(tmp_path: Path) -> None:
    proc = statekit("checkpoint", "list", tmp_path)
    assert proc.returncode == 0
    assert "no checkpoints" in proc.stdout
    assert_clean_failure(statekit("checkpoint", "list", tmp_path / "missing"))


def test_verify_all_then_one_corrupt(checkpoints: tuple[Path, list[str]]) -> None:
    directory, (old, new) = checkpoints
    proc = statekit("checkpoint", "verify", directory)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[:2] for line in proc.stdout.splitlines()] == [["OK", old], ["OK", new]]
    assert "2 of 2" in proc.stderr

    path = directory / f"{new}.ckpt"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x10
    path.write_bytes(bytes(data))
    proc = statekit("checkpoint", "verify", directory)
    assert_clean_failure(proc)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"OK       {old}")
    assert lines[1].startswith(f"CORRUPT  {new}")
    assert "checksum mismatch" in lines[1]
    assert path.exists(), "verify only reads: the file is not set aside"
    assert statekit("checkpoint", "verify", directory, old).returncode == 0
    assert_clean_failure(statekit("checkpoint", "verify", directory, new))
    assert_clean_failure(statekit("checkpoint", "verify", directory, "ckpt-20000101T000000.000000Z"))


def test_verify_nothing_to_verify(tmp_path: Path) -> None:
    proc = statekit("checkpoint", "verify", tmp_path)
    assert_clean_failure(proc)
    assert "no checkpoints" in proc.stderr


def test_restore_latest_into_a_new_store(checkpoints: tuple[Path, list[str]], tmp_path: Path) -> None:
    directory, (_, new) = checkpoints
    url = f"sqlite:///{tmp_path / 'restored.db'}"
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--key-prefix", "job:")
    assert proc.returncode == 0, proc.stderr
    assert f"restored checkpoint {new} (50 entries)" in proc.stdout
    restored = asyncio.run(_read_store(url))
    assert len(restored) == 50
    assert restored["k1"] == "changed"


def test_restore_by_id_replaces_only_the_prefix(checkpoints: tuple[Path, list[str]], tmp_path: Path) -> None:
    directory, (old, _) = checkpoints
    url = f"sqlite:///{tmp_path / 'target.db'}"

    async def prepare() -> None:
        store = create_store(url, key_prefix="job:")
        await store.put("stale", "removed by the restore")
        other = create_store(url, key_prefix="other:")
        await other.put("x", "kept")
        await store.close()
        await other.close()

    asyncio.run(prepare())
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--id", old, "--key-prefix", "job:")
    assert proc.returncode == 0, proc.stderr
    restored = asyncio.run(_read_store(url))
    assert restored["k1"] == 1
    assert "stale" not in restored
    assert asyncio.run(_read_store(url, key_prefix="other:")) == {"x": "kept"}


def test_restore_skips_a_corrupt_newest(checkpoints: tuple[Path, list[str]], tmp_path: Path) -> None:
    directory, (old, new) = checkpoints
    path = directory / f"{new}.ckpt"
    path.write_bytes(path.read_bytes()[:-3])
    url = f"sqlite:///{tmp_path / 'restored.db'}"
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--key-prefix", "job:")
    assert proc.returncode == 0, proc.stderr
    assert f"restored checkpoint {old}" in proc.stdout
    assert "corrupt" in proc.stderr
    assert (directory / f"{new}.ckpt.corrupt").exists()
    assert asyncio.run(_read_store(url))["k1"] == 1


def test_restore_shows_progress(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    asyncio.run(_make_checkpoints(tmp_path / "big.db", directory, 25_000))
    url = f"sqlite:///{tmp_path / 'restored.db'}"
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--key-prefix", "job:", "--progress")
    assert proc.returncode == 0, proc.stderr
    assert "restoring" in proc.stderr
    assert "100%" in proc.stderr
    assert "25.0k/25.0k" in proc.stderr
    quiet = statekit(
        "checkpoint", "restore", directory, "--store", url, "--key-prefix", "job:", "--no-progress"
    )
    assert quiet.returncode == 0
    assert "restoring" not in quiet.stderr


def test_restore_failures_are_clean(checkpoints: tuple[Path, list[str]], tmp_path: Path) -> None:
    directory, _ = checkpoints
    url = f"sqlite:///{tmp_path / 'restored.db'}"
    proc = statekit("checkpoint", "restore", tmp_path / "empty", "--store", url)
    assert_clean_failure(proc)
    assert "no such checkpoint directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = statekit("checkpoint", "restore", tmp_path / "empty", "--store", url)
    assert_clean_failure(proc)
    assert "no checkpoint to restore" in proc.stderr
    proc = statekit("checkpoint", "restore", directory, "--store", "nosuch://x")
    assert_clean_failure(proc)
    assert "unsupported store URL scheme" in proc.stderr
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--key-prefix", "elsewhere:")
    assert_clean_failure(proc)
    assert "prefix" in proc.stderr


def test_usage_errors_exit_2() -> None:
    assert_clean_failure(statekit(), code=2)
    assert_clean_failure(statekit("checkpoint"), code=2)
    assert_clean_failure(statekit("checkpoint", "restore", "dir"), code=2)  # --store is required
    proc = statekit("--help")
    assert proc.returncode == 0
    assert "checkpoint" in proc.stdout
