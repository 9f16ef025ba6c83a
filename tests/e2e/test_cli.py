"""The ``statekit`` command line, run for real: ``python -m statekit checkpoint list|verify|restore``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from statekit import _native, create_store
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


# -- issue 8: restore rules, dry run, memory refused, ids not paths, signing key -------------


async def _shared_store(url: str) -> None:
    """Another tenant ("other:") and stale keys of "job:" in the target store."""
    job = create_store(url, key_prefix="job:")
    other = create_store(url, key_prefix="other:")
    await job.put("stale", "removed by the restore")
    await other.put("x", "kept")
    await job.close()
    await other.close()


def test_restore_without_key_prefix_keeps_other_tenants(
    checkpoints: tuple[Path, list[str]], tmp_path: Path
) -> None:
    # The store URL has no key_prefix: this used to replace every key of the store.
    directory, (_, new) = checkpoints
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    asyncio.run(_shared_store(url))
    proc = statekit("checkpoint", "restore", directory, "--store", url)
    assert proc.returncode == 0, proc.stderr
    assert f"restored checkpoint {new} (50 entries)" in proc.stdout
    assert "under key prefix 'job:'" in proc.stdout
    restored = asyncio.run(_read_store(url))
    assert len(restored) == 50
    assert "stale" not in restored
    assert asyncio.run(_read_store(url, key_prefix="other:")) == {"x": "kept"}


def test_all_keys_replaces_every_key(checkpoints: tuple[Path, list[str]], tmp_path: Path) -> None:
    directory, _ = checkpoints
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    asyncio.run(_shared_store(url))
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--all-keys")
    assert proc.returncode == 0, proc.stderr
    assert "replacing every key" in proc.stdout
    assert asyncio.run(_read_store(url, key_prefix="other:")) == {}
    assert len(asyncio.run(_read_store(url))) == 50


def test_a_different_prefix_is_refused_unless_forced(
    checkpoints: tuple[Path, list[str]], tmp_path: Path
) -> None:
    directory, _ = checkpoints
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    asyncio.run(_shared_store(url))
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--key-prefix", "jo")
    assert_clean_failure(proc)
    assert "taken from key prefix 'job:'" in proc.stderr
    assert "--force-prefix" in proc.stderr
    assert asyncio.run(_read_store(url))["stale"] == "removed by the restore", "nothing changed"
    proc = statekit(
        "checkpoint", "restore", directory, "--store", url, "--key-prefix", "jo", "--force-prefix"
    )
    assert proc.returncode == 0, proc.stderr
    assert "stale" not in asyncio.run(_read_store(url))
    assert asyncio.run(_read_store(url, key_prefix="other:")) == {"x": "kept"}


def test_dry_run_prints_counts_and_changes_nothing(
    checkpoints: tuple[Path, list[str]], tmp_path: Path
) -> None:
    directory, (_, new) = checkpoints
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    asyncio.run(_shared_store(url))
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"dry run: checkpoint {new}" in proc.stdout
    assert "50 keys written, 1 keys deleted" in proc.stdout
    assert "nothing was changed" in proc.stdout
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--dry-run", "--all-keys")
    assert proc.returncode == 0, proc.stderr
    assert "every key of the store" in proc.stdout
    assert "50 keys written, 2 keys deleted" in proc.stdout
    assert asyncio.run(_read_store(url))["stale"] == "removed by the restore"
    assert asyncio.run(_read_store(url, key_prefix="other:")) == {"x": "kept"}
    assert sorted(p.name for p in directory.iterdir()) == [f"{i}.ckpt" for i in checkpoints[1]]


def test_a_whole_store_checkpoint_needs_all_keys(tmp_path: Path) -> None:
    async def make() -> None:
        store = create_store(f"sqlite:///{tmp_path / 'src.db'}")
        await store.put("a", 1)
        await CheckpointCoordinator(store, 60, CheckpointOptions(tmp_path / "ckpt")).create_checkpoint()
        await store.close()

    asyncio.run(make())
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    asyncio.run(_shared_store(url))
    proc = statekit("checkpoint", "restore", tmp_path / "ckpt", "--store", url)
    assert_clean_failure(proc)
    assert "--all-keys" in proc.stderr
    assert asyncio.run(_read_store(url, key_prefix="other:")) == {"x": "kept"}
    proc = statekit("checkpoint", "restore", tmp_path / "ckpt", "--store", url, "--key-prefix", "")
    assert_clean_failure(proc)
    assert "--all-keys" in proc.stderr
    proc = statekit("checkpoint", "restore", tmp_path / "ckpt", "--store", url, "--all-keys")
    assert proc.returncode == 0, proc.stderr
    assert "replacing every key" in proc.stdout
    assert asyncio.run(_read_store(url, key_prefix="")) == {"a": 1}


@pytest.mark.parametrize("url", ["memory://", "memory"])
def test_restore_into_memory_is_refused(checkpoints: tuple[Path, list[str]], url: str) -> None:
    directory, _ = checkpoints
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--key-prefix", "job:")
    assert_clean_failure(proc)
    assert "memory store" in proc.stderr
    assert "vanish" in proc.stderr


@pytest.mark.parametrize(
    "bad_id", ["../x", "../../etc/passwd", "/etc/passwd", "ckpt-20261399T000000.000000Z"]
)
def test_ids_are_never_paths(checkpoints: tuple[Path, list[str]], tmp_path: Path, bad_id: str) -> None:
    directory, _ = checkpoints
    (tmp_path / "x.ckpt").write_bytes(b"outside the directory")
    proc = statekit("checkpoint", "verify", directory, bad_id)
    assert_clean_failure(proc, code=2)
    assert "not a checkpoint id" in proc.stderr
    url = f"sqlite:///{tmp_path / 'r.db'}"
    proc = statekit("checkpoint", "restore", directory, "--store", url, "--id", bad_id)
    assert_clean_failure(proc, code=2)
    assert "not a checkpoint id" in proc.stderr


@pytest.mark.timeout(120)
def test_special_entries_are_listed_as_damaged(checkpoints: tuple[Path, list[str]]) -> None:
    directory, ids = checkpoints
    os.mkfifo(directory / "ckpt-20300101T000000.000000Z.ckpt")  # used to hang list/verify forever
    (directory / "ckpt-20261399T000000.000000Z.ckpt").write_bytes(b"x")
    (directory / "ckpt-20300101T000000.000001Z.ckpt").symlink_to("/dev/zero")
    proc = statekit("checkpoint", "list", directory)
    assert proc.returncode == 0, proc.stderr
    assert "ckpt-20300101T000000.000000Z.ckpt: DAMAGED" in proc.stdout
    assert "FIFO" in proc.stdout
    assert "ckpt-20261399T000000.000000Z.ckpt: DAMAGED" in proc.stdout
    assert "symbolic link" in proc.stdout
    document = json.loads(statekit("checkpoint", "list", directory, "--json").stdout)
    assert [c["id"] for c in document["checkpoints"]] == ids
    assert len(document["unreadable"]) == 3
    proc = statekit("checkpoint", "verify", directory)
    assert_clean_failure(proc)
    assert proc.stdout.count("CORRUPT") == 3
    assert proc.stdout.count("OK ") == 2


def test_signing_key_from_the_environment(tmp_path: Path) -> None:
    key = "a signing key of 16+ bytes"

    async def make() -> str:
        store = create_store(f"sqlite:///{tmp_path / 'src.db'}", key_prefix="job:")
        await store.put("k", "genuine")
        opts = CheckpointOptions(tmp_path / "ckpt", signing_key=key.encode())
        checkpoint_id = await CheckpointCoordinator(store, 60, opts).create_checkpoint()
        await store.close()
        return checkpoint_id

    genuine = asyncio.run(make())
    directory = tmp_path / "ckpt"
    env = {**os.environ, "CKPT_KEY": key, "SHORT_KEY": "short"}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "statekit", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    assert run("checkpoint", "verify", directory, "--signing-key-env", "CKPT_KEY").returncode == 0
    listing = run("checkpoint", "list", directory).stdout
    assert "yes" in listing
    assert "'job:'" in listing
    # A planted, valid but unsigned checkpoint, newer than the genuine one.
    planted = "ckpt-20991231T000000.000000Z"
    # (with another prefix: the restore follows the prefix of the checkpoint it restores)
    _native.snapshot_write(directory / f"{planted}.ckpt", [("evil:k", b'"planted"', None)], prefix="evil:")
    proc = run("checkpoint", "verify", directory, "--signing-key-env", "CKPT_KEY")
    assert_clean_failure(proc)
    assert f"CORRUPT  {planted}" in proc.stdout
    assert "not signed" in proc.stdout
    url = f"sqlite:///{tmp_path / 'r.db'}"
    proc = run("checkpoint", "restore", directory, "--store", url, "--signing-key-env", "CKPT_KEY")
    assert proc.returncode == 0, proc.stderr
    assert f"restored checkpoint {genuine}" in proc.stdout
    assert f"set aside {planted}" in proc.stderr
    assert asyncio.run(_read_store(url)) == {"k": "genuine"}
    for var, message in [("NO_SUCH_VAR", "not set"), ("SHORT_KEY", "at least 16 bytes")]:
        proc = run("checkpoint", "verify", directory, "--signing-key-env", var)
        assert_clean_failure(proc)
        assert message in proc.stderr
        assert "short" not in proc.stderr.replace("SHORT_KEY", "")
