"""Checkpoints: the backend snapshot contract, CheckpointCoordinator, retention, corruption, crashes.

The snapshot contract (``export_items`` / ``replace_prefix``) and the create → restore round trip
run on every backend kind; the coordinator's bookkeeping runs on the memory backend. The crash
test SIGKILLs a subprocess (``tests/acceptance/_checkpoint_writer.py``) that writes checkpoints in a
loop, 50 times at random moments, and restores after each kill.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import random
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from statekit import KeyValueStore, _native
from statekit.backends import MemoryStateBackend, StateBackend
from statekit.backends.base import ItemColumns, item_columns
from statekit.checkpoint import (
    CheckpointCoordinator,
    CheckpointInfo,
    CheckpointOptions,
    CheckpointStats,
    read_checkpoint_info,
    scan_checkpoints,
    verify_checkpoint,
)
from statekit.errors import CheckpointFailed, ConfigError, CorruptData, RestoreFailed
from tests.conftest import PAST_SHORT_TTL, SHORT_TTL, FakeClock

Elapse = Callable[[float], Awaitable[None]]
WRITER = Path(__file__).with_name("_checkpoint_writer.py")


def options(directory: Path, **kwargs: object) -> CheckpointOptions:
    return CheckpointOptions(directory, **kwargs)  # type: ignore[arg-type]


def corrupt_file(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


async def contents(backend: StateBackend, prefix: str = "") -> dict[str, bytes]:
    return {key: value for key, value, _ in await backend.export_items(prefix)}


# -- options --------------------------------------------------------------------------------


def test_options_defaults_and_normalisation(tmp_path: Path) -> None:
    opts = CheckpointOptions(str(tmp_path))
    assert opts.checkpoint_dir == tmp_path
    assert (opts.max_checkpoints, opts.compress, opts.min_interval, opts.compression_level) == (
        10,
        True,
        10.0,
        None,
    )
    opts = CheckpointOptions(
        tmp_path, max_checkpoints=3, compress=False, min_interval=timedelta(minutes=1), compression_level=9
    )
    assert (opts.max_checkpoints, opts.compress, opts.min_interval, opts.compression_level) == (
        3,
        False,
        60.0,
        9,
    )
    assert opts == CheckpointOptions(
        tmp_path, max_checkpoints=3, compress=False, min_interval=60, compression_level=9
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.max_checkpoints = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_checkpoints": 0}, "max_checkpoints"),
        ({"max_checkpoints": True}, "max_checkpoints"),
        ({"max_checkpoints": 2.0}, "max_checkpoints"),
        ({"compress": "yes"}, "compress"),
        ({"min_interval": -1}, "min_interval"),
        ({"min_interval": "10"}, "min_interval"),
        ({"min_interval": float("inf")}, "min_interval"),
        ({"compression_level": 0}, "compression_level"),
        ({"compression_level": 23}, "compression_level"),
        ({"compression_level": True}, "compression_level"),
    ],
)
def test_options_validation(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        options(tmp_path, **kwargs)


def test_options_need_a_directory() -> None:
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        CheckpointOptions("")
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        CheckpointOptions(None)  # type: ignore[arg-type]


async def test_coordinator_validation(tmp_path: Path) -> None:
    backend = MemoryStateBackend()
    with pytest.raises(ConfigError, match="interval"):
        CheckpointCoordinator(backend, 0, options(tmp_path))
    with pytest.raises(ConfigError, match="interval"):
        CheckpointCoordinator(backend, "5", options(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="options"):
        CheckpointCoordinator(backend, 5, str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot be checkpointed"):
        CheckpointCoordinator(object(), 5, options(tmp_path))  # type: ignore[arg-type]
    coordinator = CheckpointCoordinator(backend, timedelta(seconds=30), options(tmp_path))
    assert coordinator.interval == 30.0
    assert coordinator.prefix == ""
    assert coordinator.checkpoint_dir == tmp_path
    assert "memory" in repr(coordinator)
    store = KeyValueStore(backend, key_prefix="job:")
    assert CheckpointCoordinator(store, 5, options(tmp_path)).prefix == "job:"
    assert CheckpointCoordinator(store, 5, options(tmp_path), prefix="").prefix == ""


# -- the backend snapshot contract (every backend) ------------------------------------------


def test_item_columns_is_a_sequence_of_items() -> None:
    columns = ItemColumns(["a", "b"], [b"1", b"2"], [None, 5.0])
    assert list(columns) == [("a", b"1", None), ("b", b"2", 5.0)]
    assert len(columns) == 2
    assert columns[1] == ("b", b"2", 5.0)
    assert list(columns[1:]) == [("b", b"2", 5.0)]
    assert ("a", b"1", None) in columns
    assert list(ItemColumns(["x"], [b"y"])) == [("x", b"y", None)]
    assert item_columns(columns) is columns
    rebuilt = item_columns([("a", b"1", None), ("b", b"2", None)])
    assert (rebuilt.keys, rebuilt.values, rebuilt.expires_at) == (["a", "b"], [b"1", b"2"], None)
    with pytest.raises(ValueError, match="one length"):
        ItemColumns(["a"], [])


async def test_export_items_is_the_live_content_under_a_prefix(backend: StateBackend) -> None:
    await backend.batch_put([("a:1", b"one"), ("a:2", b"two"), ("b:1", b"other")])
    await backend.put("a:3", b"three", ttl=3600)
    items = await backend.export_items("a:")
    by_key = {key: (value, expires_at) for key, value, expires_at in items}
    assert sorted(by_key) == ["a:1", "a:2", "a:3"]
    assert by_key["a:1"] == (b"one", None)
    value, expires_at = by_key["a:3"]
    assert value == b"three"
    assert expires_at is not None
    assert sorted(key for key, _, _ in await backend.export_items("")) == ["a:1", "a:2", "a:3", "b:1"]
    assert list(await backend.export_items("zzz")) == []


async def test_export_items_leaves_expired_keys_out(backend: StateBackend, elapse: Elapse) -> None:
    await backend.put("k:short", b"x", ttl=SHORT_TTL)
    await backend.put("k:long", b"y")
    await elapse(PAST_SHORT_TTL)
    assert [key for key, _, _ in await backend.export_items("k:")] == ["k:long"]


async def test_replace_prefix_replaces_only_that_prefix(backend: StateBackend) -> None:
    await backend.batch_put([("a:1", b"old"), ("a:gone", b"old"), ("b:1", b"keep")])
    await backend.replace_prefix("a:", [("a:1", b"new", None), ("a:2", b"added", None)])
    assert await contents(backend) == {"a:1": b"new", "a:2": b"added", "b:1": b"keep"}
    await backend.replace_prefix("a:", ItemColumns(["a:9"], [b"nine"]))
    assert await contents(backend) == {"a:9": b"nine", "b:1": b"keep"}
    await backend.replace_prefix("a:", [])
    assert await contents(backend) == {"b:1": b"keep"}


async def test_replace_prefix_empty_prefix_replaces_everything(backend: StateBackend) -> None:
    await backend.batch_put([("x", b"1"), ("y", b"2")])
    await backend.replace_prefix("", [("z", b"3", None), ("z", b"last wins", None)])
    assert await contents(backend) == {"z": b"last wins"}
    assert await backend.get("x") is None


async def test_replace_prefix_rejects_keys_outside_the_prefix(backend: StateBackend) -> None:
    await backend.put("a:1", b"old")
    with pytest.raises(ValueError, match="'b:1'"):
        await backend.replace_prefix("a:", [("a:2", b"x", None), ("b:1", b"y", None)])
    assert await contents(backend) == {"a:1": b"old"}


async def test_replace_prefix_keeps_absolute_expiries(backend: StateBackend) -> None:
    ((_, _, soon),) = await _probe_expiry(backend)
    assert soon is not None
    later = soon + 3600.0
    await backend.replace_prefix("t:", [("t:1", b"v", later), ("t:2", b"w", None)])
    exported = {key: at for key, _, at in await backend.export_items("t:")}
    assert exported["t:2"] is None
    assert exported["t:1"] == pytest.approx(later, abs=0.01)
    assert await backend.get("t:1") == b"v"


async def _probe_expiry(backend: StateBackend) -> list[tuple[str, bytes, float | None]]:
    """An expiry one minute ahead on the backend's own clock."""
    await backend.put("probe", b"p", ttl=60)
    items = list(await backend.export_items("probe"))
    await backend.delete("probe")
    return items


async def test_replace_prefix_skips_items_already_expired(backend: StateBackend) -> None:
    ((_, _, soon),) = await _probe_expiry(backend)
    assert soon is not None
    past = soon - 3600.0
    await backend.replace_prefix("t:", [("t:old", b"x", past), ("t:live", b"y", soon)])
    assert await contents(backend, "t:") == {"t:live": b"y"}
    assert await backend.get("t:old") is None


@pytest.mark.fake_clock("see test_expired_keys_are_not_restored")
async def test_restored_expiries_run_out_on_the_backend_clock(
    backend: StateBackend, clock: FakeClock
) -> None:
    await backend.replace_prefix("", [("k", b"v", clock.now + 10.0)])
    assert await backend.get("k") == b"v"
    clock.advance(10.0)
    assert await backend.get("k") is None
    assert list(await backend.export_items("")) == []


@pytest.mark.fake_clock("see test_replace_prefix_keeps_absolute_expiries")
async def test_replace_prefix_overwrites_old_expiries(backend: StateBackend, clock: FakeClock) -> None:
    await backend.put("a:1", b"old", ttl=5)
    await backend.put("b:1", b"keep", ttl=5)
    await backend.replace_prefix("a:", [("a:1", b"new", None)])
    clock.advance(6)
    assert await backend.get("a:1") == b"new"
    assert await backend.get("b:1") is None


# -- create and restore (every backend) -----------------------------------------------------


async def test_checkpoint_then_restore_round_trip(backend: StateBackend, tmp_path: Path) -> None:
    store = KeyValueStore(backend, key_prefix="job:")
    await store.put_many({f"item:{i}": {"n": i} for i in range(50)})
    await store.put("ttl", "kept", ttl=3600)
    neighbour = KeyValueStore(backend, key_prefix="other:")
    await neighbour.put("x", 1)
    coordinator = CheckpointCoordinator(store, 60, options(tmp_path / "ckpt"))
    checkpoint_id = await coordinator.create_checkpoint()
    before = await contents(backend, "job:")

    await store.put("item:0", "changed")
    await store.delete("item:1")
    await store.put("new", True)
    await neighbour.put("x", 2)
    assert await coordinator.restore_latest() == checkpoint_id

    assert await contents(backend, "job:") == before
    assert await store.get("item:0") == {"n": 0}
    assert await store.get("new") is None
    assert await store.get("ttl") == "kept"
    assert await neighbour.get("x") == 2, "keys outside the prefix are untouched"
    stats = coordinator.stats()
    assert (stats.checkpoints_created, stats.restores, stats.checkpoint_failures, stats.restore_failures) == (
        1,
        1,
        0,
        0,
    )


async def test_expired_keys_are_not_restored(backend: StateBackend, tmp_path: Path, elapse: Elapse) -> None:
    await backend.put("k:short", b"x", ttl=SHORT_TTL)
    await backend.put("k:long", b"y")
    coordinator = CheckpointCoordinator(backend, 60, options(tmp_path), prefix="k:")
    await coordinator.create_checkpoint()
    assert coordinator.list_checkpoints()[0].entry_count == 2
    await elapse(PAST_SHORT_TTL)
    await backend.delete("k:long")
    await coordinator.restore_latest()
    assert await contents(backend, "k:") == {"k:long": b"y"}


async def test_restore_into_another_backend_with_progress(backend: StateBackend, tmp_path: Path) -> None:
    source = MemoryStateBackend()
    await source.batch_put([(f"k:{i:05d}", str(i).encode()) for i in range(25_000)])
    await CheckpointCoordinator(source, 60, options(tmp_path), prefix="k:").create_checkpoint()
    seen: list[tuple[int, int]] = []
    coordinator = CheckpointCoordinator(backend, 60, options(tmp_path), prefix="k:")
    await coordinator.restore_latest(on_progress=lambda done, total: seen.append((done, total)))
    assert await contents(backend, "k:") == await contents(source)
    assert seen[-1] == (25_000, 25_000)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


# -- ids, listing, stats --------------------------------------------------------------------


async def test_ids_sort_by_time_even_when_the_clock_steps_back(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    coordinator = CheckpointCoordinator(
        MemoryStateBackend(), 60, options(tmp_path, max_checkpoints=50), clock=lambda: now[0]
    )
    ids = [await coordinator.create_checkpoint()]
    now[0] -= 3600  # NTP stepped the clock back
    ids.append(await coordinator.create_checkpoint())
    ids.append(await coordinator.create_checkpoint())  # same instant
    now[0] += 7200
    ids.append(await coordinator.create_checkpoint())
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    assert ids[0] == "ckpt-20270115T080000.000000Z"
    assert [info.id for info in coordinator.list_checkpoints()] == ids
    # A fresh coordinator on the same directory continues after the newest id.
    fresh = CheckpointCoordinator(MemoryStateBackend(), 60, options(tmp_path), clock=lambda: 0.0)
    assert await fresh.create_checkpoint() > ids[-1]


async def test_list_checkpoints_describes_each_file(tmp_path: Path) -> None:
    backend = MemoryStateBackend()
    await backend.batch_put([("a", b"1"), ("b", b"2"), ("c", b"3")])
    now = 1_800_000_000.5
    coordinator = CheckpointCoordinator(backend, 60, options(tmp_path, compress=False), clock=lambda: now)
    checkpoint_id = await coordinator.create_checkpoint()
    (info,) = coordinator.list_checkpoints()
    path = tmp_path / f"{checkpoint_id}.ckpt"
    data = path.read_bytes()
    assert info == CheckpointInfo(
        id=checkpoint_id,
        path=path,
        timestamp=datetime.fromtimestamp(now, UTC),
        entry_count=3,
        size=len(data),
        version=2,
        checksum=hashlib.sha256(data[82:] + data[:48] + data[80:82]).hexdigest(),
        compression="none",
        uncompressed_size=len(data) - 82,
        prefix="",
        signed=False,
    )
    assert read_checkpoint_info(path) == info
    assert verify_checkpoint(path) == info
    assert await coordinator.verify(checkpoint_id) == info


async def test_stats_follow_checkpoints_and_restores(tmp_path: Path) -> None:
    backend = MemoryStateBackend()
    await backend.put("k", b"v" * 1000)
    coordinator = CheckpointCoordinator(backend, 60, options(tmp_path))
    assert coordinator.stats() == CheckpointStats()
    first = await coordinator.create_checkpoint()
    await coordinator.create_checkpoint()
    await coordinator.restore(first)
    stats = coordinator.stats()
    assert stats.checkpoints_created == 2
    assert stats.restores == 1
    assert stats.total_bytes_checkpointed == sum(info.size for info in coordinator.list_checkpoints())
    assert stats.last_checkpoint_time is not None
    assert stats.last_checkpoint_time.tzinfo is UTC
    assert stats.last_checkpoint_duration_ms is not None
    assert stats.last_checkpoint_duration_ms >= 0
    assert stats.as_dict()["checkpoints_created"] == 2


# -- retention ------------------------------------------------------------------------------


async def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    coordinator = CheckpointCoordinator(MemoryStateBackend(), 60, options(tmp_path, max_checkpoints=3))
    ids = [await coordinator.create_checkpoint() for _ in range(5)]
    assert [info.id for info in coordinator.list_checkpoints()] == ids[-3:]
    assert files(tmp_path) == [f"{i}.ckpt" for i in ids[-3:]]


async def test_a_failed_checkpoint_deletes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryStateBackend()
    await backend.put("k", b"v")
    coordinator = CheckpointCoordinator(backend, 60, options(tmp_path, max_checkpoints=2))
    kept = [await coordinator.create_checkpoint() for _ in range(2)]
    await backend.close()  # the export now fails
    with caplog.at_level(logging.ERROR, "statekit.checkpoint"), pytest.raises(CheckpointFailed) as info:
        await coordinator.create_checkpoint()
    assert info.value.checkpoint_id is not None
    assert "previous checkpoints are untouched" in str(info.value)
    assert "failed" in caplog.text
    assert files(tmp_path) == [f"{i}.ckpt" for i in kept]
    assert coordinator.stats().checkpoint_failures == 1


async def test_an_unwritable_directory_is_a_counted_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    coordinator = CheckpointCoordinator(MemoryStateBackend(), 60, options(blocker / "ckpt"))
    for _ in range(2):
        with pytest.raises(CheckpointFailed):
            await coordinator.create_checkpoint()
    assert coordinator.stats().checkpoint_failures == 2
    assert coordinator.stats().checkpoints_created == 0


async def test_stale_temporary_files_are_swept(tmp_path: Path) -> None:
    stale = tmp_path / ".ckpt-20200101T000000.000000Z.ckpt.4242.17.tmp"
    stale.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("not ours")
    coordinator = CheckpointCoordinator(MemoryStateBackend(), 60, options(tmp_path))
    checkpoint_id = await coordinator.create_checkpoint()
    assert files(tmp_path) == [f"{checkpoint_id}.ckpt", "notes.tmp"]


# -- corruption -----------------------------------------------------------------------------


async def _two_generations(tmp_path: Path) -> tuple[MemoryStateBackend, CheckpointCoordinator, list[str]]:
    backend = MemoryStateBackend()
    coordinator = CheckpointCoordinator(backend, 60, options(tmp_path))
    ids = []
    for generation in (b"old", b"new"):
        await backend.batch_put([(f"k{i}", generation) for i in range(10)])
        ids.append(await coordinator.create_checkpoint())
    await backend.replace_prefix("", [("scratch", b"x", None)])
    return backend, coordinator, ids


async def test_corrupt_newest_is_kept_aside_and_the_previous_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend, coordinator, (old, new) = await _two_generations(tmp_path)
    corrupt_file(tmp_path / f"{new}.ckpt")
    with caplog.at_level(logging.WARNING, "statekit.checkpoint"):
        assert await coordinator.restore_latest() == old
    assert await contents(backend) == {f"k{i}": b"old" for i in range(10)}
    assert files(tmp_path) == [f"{old}.ckpt", f"{new}.ckpt.corrupt"]
    assert coordinator.stats().restore_failures == 1
    assert coordinator.stats().restores == 1
    assert "corrupt" in caplog.text
    assert new in caplog.text


async def test_truncated_newest_is_skipped(tmp_path: Path) -> None:
    _, coordinator, (old, new) = await _two_generations(tmp_path)
    path = tmp_path / f"{new}.ckpt"
    path.write_bytes(path.read_bytes()[:-7])
    assert coordinator.list_checkpoints()[-1].id == old  # the header no longer matches the size
    assert await coordinator.restore_latest() == old
    assert (tmp_path / f"{new}.ckpt.corrupt").exists()


async def test_none_valid_raises_restore_failed(tmp_path: Path) -> None:
    backend, coordinator, ids = await _two_generations(tmp_path)
    for checkpoint_id in ids:
        corrupt_file(tmp_path / f"{checkpoint_id}.ckpt", offset=100)
    with pytest.raises(RestoreFailed, match="no valid checkpoint"):
        await coordinator.restore_latest()
    assert files(tmp_path) == [f"{i}.ckpt.corrupt" for i in ids]
    assert coordinator.stats().restore_failures == 2
    assert await contents(backend) == {"scratch": b"x"}, "nothing was restored"


async def test_no_checkpoint_at_all_raises_restore_failed(tmp_path: Path) -> None:
    coordinator = CheckpointCoordinator(MemoryStateBackend(), 60, options(tmp_path / "empty"))
    with pytest.raises(RestoreFailed, match="no checkpoint to restore"):
        await coordinator.restore_latest()
    assert coordinator.list_checkpoints() == []


async def test_restore_by_id(tmp_path: Path) -> None:
    backend, coordinator, (old, new) = await _two_generations(tmp_path)
    await coordinator.restore(old)
    assert await contents(backend) == {f"k{i}": b"old" for i in range(10)}
    with pytest.raises(RestoreFailed, match="no checkpoint"):
        await coordinator.restore("ckpt-20000101T000000.000000Z")
    with pytest.raises(RestoreFailed, match="not a checkpoint id"):
        await coordinator.restore("../../etc/passwd")
    corrupt_file(tmp_path / f"{new}.ckpt")
    with pytest.raises(RestoreFailed, match="corrupt") as info:
        await coordinator.restore(new)
    assert isinstance(info.value.__cause__, CorruptData)
    assert info.value.checkpoint_id == new
    assert (tmp_path / f"{new}.ckpt.corrupt").exists()
    assert coordinator.stats().restore_failures == 3
    with pytest.raises(CorruptData):
        verify_checkpoint(tmp_path / f"{new}.ckpt.corrupt")


async def test_corrupt_files_are_never_overwritten(tmp_path: Path) -> None:
    _, coordinator, (old, new) = await _two_generations(tmp_path)
    (tmp_path / f"{new}.ckpt.corrupt").write_bytes(b"an earlier corrupt copy")
    corrupt_file(tmp_path / f"{new}.ckpt")
    assert await coordinator.restore_latest() == old
    assert (tmp_path / f"{new}.ckpt.corrupt").read_bytes() == b"an earlier corrupt copy"
    assert (tmp_path / f"{new}.ckpt.corrupt.1").exists()


async def test_a_checkpoint_of_another_prefix_is_refused(tmp_path: Path) -> None:
    backend = MemoryStateBackend()
    await backend.batch_put([("a:1", b"x"), ("b:1", b"y")])
    await CheckpointCoordinator(backend, 60, options(tmp_path)).create_checkpoint()
    narrow = CheckpointCoordinator(backend, 60, options(tmp_path), prefix="a:")
    with pytest.raises(RestoreFailed, match="prefix"):
        await narrow.restore_latest()
    assert files(tmp_path)[0].endswith(".ckpt"), "a sound file is not set aside"
    assert await contents(backend) == {"a:1": b"x", "b:1": b"y"}


def test_scan_reports_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "ckpt-20260101T000000.000000Z.ckpt").write_bytes(b"garbage")
    (tmp_path / "unrelated.txt").write_text("ignored")
    readable, unreadable = scan_checkpoints(tmp_path)
    assert readable == []
    assert [path.name for path, _ in unreadable] == ["ckpt-20260101T000000.000000Z.ckpt"]
    assert isinstance(unreadable[0][1], CorruptData)
    assert scan_checkpoints(tmp_path / "missing") == ([], [])


# -- the periodic task ----------------------------------------------------------------------


async def until(condition: Callable[[], bool]) -> None:
    """Wait (polling) until ``condition()`` holds; the suite's timeout bounds the wait."""
    while not condition():  # noqa: ASYNC110 - the coordinator has no event to wait on
        await asyncio.sleep(0.01)


async def test_shutdown_takes_a_final_checkpoint(tmp_path: Path) -> None:
    backend = MemoryStateBackend()
    await backend.put("k", b"v")
    # min_interval (an hour) wins over interval: no periodic checkpoint can happen here.
    coordinator = CheckpointCoordinator(backend, 0.001, options(tmp_path, min_interval=3600))
    await coordinator.start()
    await coordinator.start()  # idempotent
    assert coordinator.running
    await asyncio.sleep(0.05)
    final = await coordinator.shutdown()
    assert not coordinator.running
    assert [info.id for info in coordinator.list_checkpoints()] == [final]
    assert coordinator.stats().checkpoints_created == 1


async def test_periodic_checkpoints_continue_after_failures(tmp_path: Path) -> None:
    blocker = tmp_path / "ckpt"
    blocker.write_text("a file: every checkpoint fails until it is removed")
    backend = MemoryStateBackend()
    await backend.put("k", b"v")
    coordinator = CheckpointCoordinator(backend, 0.01, options(blocker, min_interval=0))
    async with coordinator:
        await until(lambda: coordinator.stats().checkpoint_failures >= 2)
        blocker.unlink()
        await until(lambda: coordinator.stats().checkpoints_created >= 2)
        assert coordinator.running, "the task survived the failures"
    stats = coordinator.stats()
    assert stats.checkpoint_failures >= 2
    assert stats.checkpoints_created >= 3  # two periodic ones and the final one
    assert not coordinator.running


async def test_context_manager_keeps_the_body_error(tmp_path: Path) -> None:
    blocker = tmp_path / "ckpt"
    blocker.write_text("a file")
    coordinator = CheckpointCoordinator(MemoryStateBackend(), 60, options(blocker))
    with pytest.raises(KeyError, match="from the body"):
        async with coordinator:
            raise KeyError("from the body")
    assert coordinator.stats().checkpoint_failures == 1  # the final checkpoint was attempted


# -- crash safety ---------------------------------------------------------------------------


def test_sigkill_at_random_moments_never_leaves_a_broken_checkpoint(tmp_path: Path) -> None:
    """A writer is killed 50 times mid-loop; each time a fresh coordinator restores a complete
    checkpoint, and the next successful checkpoint leaves no temporary file behind."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    directory = tmp_path / "ckpt"
    n_keys = 2000
    for round_no in range(50):
        start = (round_no + 1) * 1_000_000
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(directory), str(start), str(n_keys)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until one checkpoint is complete
        assert first.strip() == str(start), f"writer failed to start (seed {seed})"
        proc.stdout.close()  # the writer never blocks on a full pipe: it ignores EPIPE
        # Kill at a random moment: mid-export, mid-write, mid-rename, mid-retention...
        try:
            proc.wait(timeout=rng.uniform(0.0, 0.2))
        except subprocess.TimeoutExpired:
            proc.kill()
        assert proc.wait() == -9, f"the writer died on its own (seed {seed})"

        backend = MemoryStateBackend()
        coordinator = CheckpointCoordinator(backend, 60, options(directory, max_checkpoints=3))
        restored = asyncio.run(coordinator.restore_latest())
        items = asyncio.run(backend.export_items(""))
        assert len(items) == n_keys, f"round {round_no}: incomplete checkpoint {restored} (seed {seed})"
        generations = {value.split(b":")[0] for _, value, _ in items}
        assert len(generations) == 1, f"round {round_no}: a mix of generations (seed {seed})"
        (generation,) = generations
        assert int(generation) >= start, f"round {round_no}: restored an older run's state (seed {seed})"
        assert coordinator.stats().restore_failures == 0, f"round {round_no}: corrupt file (seed {seed})"

        asyncio.run(coordinator.create_checkpoint())
        leftovers = [name for name in files(directory) if not name.endswith(".ckpt")]
        assert leftovers == [], f"round {round_no}: {leftovers} survived a checkpoint (seed {seed})"


# -- issue 8: restore rules, fallback on any failure, signatures, untrusted directories ----

SIGNING_KEY = b"a secret of 16 bytes or more!"


def _new_id(tmp_path: Path) -> str:
    """An id later than every checkpoint in ``tmp_path`` (to plant a newest file)."""
    return CheckpointCoordinator(MemoryStateBackend(), 60, options(tmp_path))._next_id()[0]


async def _tenants(tmp_path: Path) -> tuple[MemoryStateBackend, str]:
    """A shared backend: tenant "a:" checkpointed, tenant "b:" never."""
    backend = MemoryStateBackend()
    await backend.batch_put([("a:1", b"a1"), ("a:2", b"a2"), ("b:1", b"b1")])
    checkpoint_id = await CheckpointCoordinator(
        backend, 60, options(tmp_path), prefix="a:"
    ).create_checkpoint()
    await backend.batch_put([("a:1", b"changed"), ("a:3", b"new"), ("b:2", b"b2")])
    return backend, checkpoint_id


async def test_a_checkpoint_records_its_prefix(tmp_path: Path) -> None:
    store = KeyValueStore(MemoryStateBackend(), key_prefix="job:")
    await store.put("k", 1)
    await CheckpointCoordinator(store, 60, options(tmp_path)).create_checkpoint()
    (info,) = CheckpointCoordinator(MemoryStateBackend(), 60, options(tmp_path)).list_checkpoints()
    assert (info.version, info.prefix, info.signed) == (2, "job:", False)


async def test_restore_replaces_only_the_recorded_prefix_and_refuses_another(tmp_path: Path) -> None:
    backend, checkpoint_id = await _tenants(tmp_path)
    # A coordinator without a prefix (the whole backend) used to replace every key: tenant b:
    # was wiped. The recorded prefix "a:" differs from "": refused, nothing written.
    whole = CheckpointCoordinator(backend, 60, options(tmp_path))
    with pytest.raises(RestoreFailed, match="taken from key prefix 'a:'") as info:
        await whole.restore_latest()
    assert "force_prefix" in str(info.value)
    assert "all_keys" in str(info.value)
    assert await contents(backend, "b:") == {"b:1": b"b1", "b:2": b"b2"}
    assert await contents(backend, "a:") == {"a:1": b"changed", "a:2": b"a2", "a:3": b"new"}
    assert files(tmp_path) == [f"{checkpoint_id}.ckpt"], "a refusal sets nothing aside"
    # Under its own prefix: tenant a: is back, tenant b: untouched.
    same = CheckpointCoordinator(backend, 60, options(tmp_path), prefix="a:")
    assert await same.restore_latest() == checkpoint_id
    assert await contents(backend) == {"a:1": b"a1", "a:2": b"a2", "b:1": b"b1", "b:2": b"b2"}


async def test_all_keys_is_the_explicit_opt_in_to_replace_everything(tmp_path: Path) -> None:
    backend, checkpoint_id = await _tenants(tmp_path)
    coordinator = CheckpointCoordinator(backend, 60, options(tmp_path), prefix="a:")
    await coordinator.restore(checkpoint_id, all_keys=True)
    assert await contents(backend) == {"a:1": b"a1", "a:2": b"a2"}


async def test_force_prefix_restores_under_another_prefix_only_if_every_key_fits(tmp_path: Path) -> None:
    backend, checkpoint_id = await _tenants(tmp_path)
    narrower = CheckpointCoordinator(backend, 60, options(tmp_path), prefix="a:1")
    with pytest.raises(RestoreFailed, match="taken from key prefix"):
        await narrower.restore(checkpoint_id)
    with pytest.raises(RestoreFailed, match="required prefix"):
        await narrower.restore(checkpoint_id, force_prefix=True)  # a:2 is outside a:1
    wider = CheckpointCoordinator(backend, 60, options(tmp_path), prefix="a")
    await wider.restore(checkpoint_id, force_prefix=True)
    assert await contents(backend) == {"a:1": b"a1", "a:2": b"a2", "b:1": b"b1", "b:2": b"b2"}


async def test_recorded_prefix_follows_each_checkpoint(tmp_path: Path) -> None:
    backend, checkpoint_id = await _tenants(tmp_path)
    anywhere = CheckpointCoordinator(backend, 60, options(tmp_path), prefix="unrelated:")
    assert await anywhere.restore_latest(recorded_prefix=True) == checkpoint_id
    assert anywhere.last_restore is not None
    assert anywhere.last_restore.scope == "a:"
    assert await contents(backend) == {"a:1": b"a1", "a:2": b"a2", "b:1": b"b1", "b:2": b"b2"}
    # A checkpoint of the whole backend (or a version-1 file) needs all_keys in this mode.
    await CheckpointCoordinator(backend, 60, options(tmp_path)).create_checkpoint()
    with pytest.raises(RestoreFailed, match="records no key prefix"):
        await anywhere.restore_latest(recorded_prefix=True)
    await anywhere.restore_latest(recorded_prefix=True, all_keys=True)
    assert anywhere.last_restore.scope == ""


async def test_plan_restore_counts_and_changes_nothing(tmp_path: Path) -> None:
    backend, checkpoint_id = await _tenants(tmp_path)
    before = await contents(backend)
    coordinator = CheckpointCoordinator(backend, 60, options(tmp_path), prefix="a:")
    plan = await coordinator.plan_restore()
    assert (plan.checkpoint_id, plan.recorded_prefix, plan.scope) == (checkpoint_id, "a:", "a:")
    assert (plan.to_write, plan.to_delete, plan.expired, plan.unusable) == (2, 1, 0, ())  # a:3 goes
    everything = await coordinator.plan_restore(checkpoint_id, all_keys=True)
    assert (everything.scope, everything.to_write, everything.to_delete) == ("", 2, 3)  # a:3, b:1, b:2
    assert await contents(backend) == before
    with pytest.raises(RestoreFailed, match="taken from key prefix"):
        await CheckpointCoordinator(backend, 60, options(tmp_path)).plan_restore()
    assert coordinator.stats().restores == 0


def _write_v1(tmp_path: Path, records: list[tuple[bytes, bytes, float | None]]) -> str:
    from tests.unit.native import reference

    checkpoint_id = _new_id(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{checkpoint_id}.ckpt").write_bytes(reference.snapshot_v1(records))
    return checkpoint_id


async def test_version_1_checkpoints_need_a_prefix_or_all_keys(tmp_path: Path) -> None:
    checkpoint_id = _write_v1(tmp_path, [(b"a:1", b"v1", None)])
    backend = MemoryStateBackend()
    await backend.batch_put([("a:1", b"x"), ("b:1", b"b1")])
    (info,) = CheckpointCoordinator(backend, 60, options(tmp_path)).list_checkpoints()
    assert (info.version, info.prefix) == (1, None)
    whole = CheckpointCoordinator(backend, 60, options(tmp_path))
    with pytest.raises(RestoreFailed, match="does not record its key prefix"):
        await whole.restore_latest()
    assert await contents(backend) == {"a:1": b"x", "b:1": b"b1"}
    await CheckpointCoordinator(backend, 60, options(tmp_path), prefix="a:").restore(checkpoint_id)
    assert await contents(backend) == {"a:1": b"v1", "b:1": b"b1"}
    await whole.restore(checkpoint_id, all_keys=True)
    assert await contents(backend) == {"a:1": b"v1"}


def _plant(tmp_path: Path, kind: str) -> str:
    """A newest checkpoint file in ``tmp_path``, unusable in the way ``kind`` says."""
    checkpoint_id = _new_id(tmp_path)
    path = tmp_path / f"{checkpoint_id}.ckpt"
    if kind == "checksum":
        _native.snapshot_write(path, [("k0", b"planted", None)])
        corrupt_file(path)
    elif kind == "truncated":
        _native.snapshot_write(path, [("k0", b"planted", None)])
        path.write_bytes(path.read_bytes()[:-5])
    elif kind == "header":
        path.write_bytes(b"SKSNAP\r\n" + bytes(200))
    elif kind == "not a snapshot":
        path.write_bytes(b"hello")
    elif kind in ("reserved key", "empty key", "bytes key", "nan expiry"):
        key: str | bytes = {
            "reserved key": "{statekit-index:}:lex",
            "empty key": "",
            "bytes key": b"\xff",
            "nan expiry": "k0",
        }[kind]
        expiry = float("nan") if kind == "nan expiry" else None
        # Valid records first: a partial restore would show.
        _native.snapshot_write(path, [("k0", b"planted", None), (key, b"x", expiry)])
    elif kind == "created_at":
        _native.snapshot_write(path, [("k0", b"planted", None)], compress=False)
        data = bytearray(path.read_bytes())
        data[16:24] = struct.pack("<d", 1e300)
        data[48:80] = hashlib.sha256(bytes(data[82:]) + bytes(data[:48]) + bytes(data[80:82])).digest()
        path.write_bytes(bytes(data))
    elif kind == "zstd bomb":
        _native.snapshot_write(path, [("k0", bytes(64 << 20), None)], level=19)
        data = bytearray(path.read_bytes())
        data[48] ^= 1
        path.write_bytes(bytes(data))
    else:
        raise AssertionError(kind)
    return checkpoint_id


DAMAGE = [
    "checksum",
    "truncated",
    "header",
    "not a snapshot",
    "reserved key",
    "empty key",
    "bytes key",
    "nan expiry",
    "created_at",
    "zstd bomb",
]


@pytest.mark.parametrize("kind", DAMAGE)
async def test_restore_latest_falls_back_on_any_failure_of_the_newest(tmp_path: Path, kind: str) -> None:
    backend, coordinator, (_, new) = await _two_generations(tmp_path)
    planted = _plant(tmp_path, kind)
    assert await coordinator.restore_latest() == new
    assert await contents(backend) == {f"k{i}": b"new" for i in range(10)}, "nothing of the bad file"
    result = coordinator.last_restore
    assert result is not None
    assert result.checkpoint_id == new
    assert [item.checkpoint_id for item in result.set_aside] == [planted]
    (aside,) = result.set_aside
    assert aside.path == tmp_path / f"{planted}.ckpt.corrupt"
    assert aside.path.exists()
    assert aside.reason
    stats = coordinator.stats()
    assert (stats.restores, stats.restore_failures, stats.checkpoints_set_aside) == (1, 1, 1)


@pytest.mark.parametrize("kind", ["reserved key", "empty key", "bytes key", "nan expiry"])
async def test_invalid_keys_fail_before_anything_is_written(tmp_path: Path, kind: str) -> None:
    backend = MemoryStateBackend()
    await backend.put("k0", b"before")
    coordinator = CheckpointCoordinator(backend, 60, options(tmp_path))
    planted = _plant(tmp_path, kind)
    with pytest.raises(RestoreFailed, match="kept aside") as info:
        await coordinator.restore(planted)
    assert isinstance(info.value.__cause__, CorruptData)
    assert await contents(backend) == {"k0": b"before"}
    with pytest.raises(RestoreFailed, match="no checkpoint"):
        await coordinator.restore_latest()  # the only one was set aside
    assert await contents(backend) == {"k0": b"before"}


def test_signing_key_is_validated_and_never_shown(tmp_path: Path) -> None:
    opts = options(tmp_path, signing_key=SIGNING_KEY)
    assert opts.signing_key == SIGNING_KEY
    assert SIGNING_KEY.decode() not in repr(opts)
    for bad in (b"short", "a str key of 16+ chars", 12345):
        with pytest.raises(ConfigError, match="signing_key") as info:
            options(tmp_path, signing_key=bad)
        assert "short" not in str(info.value)
    with pytest.raises(ConfigError):
        verify_checkpoint(tmp_path / "x.ckpt", signing_key=b"short")


async def test_signed_checkpoints_refuse_planted_files(tmp_path: Path) -> None:
    backend = MemoryStateBackend()
    coordinator = CheckpointCoordinator(backend, 60, options(tmp_path, signing_key=SIGNING_KEY))
    await backend.put("k", b"genuine")
    genuine = await coordinator.create_checkpoint()
    assert coordinator.list_checkpoints()[0].signed
    assert (await coordinator.verify(genuine)).signed
    # Someone who can write the directory plants a newer, perfectly valid but unsigned file...
    unsigned = _new_id(tmp_path)
    _native.snapshot_write(tmp_path / f"{unsigned}.ckpt", [("k", b"planted", None)])
    with pytest.raises(CorruptData, match="not signed"):
        await coordinator.verify(unsigned)
    # ...and one signed with a key of their own.
    forged = _new_id(tmp_path)
    _native.snapshot_write(tmp_path / f"{forged}.ckpt", [("k", b"planted", None)], signing_key=b"x" * 32)
    assert await coordinator.restore_latest() == genuine
    assert await backend.get("k") == b"genuine"
    assert coordinator.last_restore is not None
    set_aside = coordinator.last_restore.set_aside
    assert [item.checkpoint_id for item in set_aside] == [forged, unsigned]
    assert "signature does not verify" in set_aside[0].reason
    assert "not signed" in set_aside[1].reason
    # Without the key, the genuine file still reads (its SHA-256 checks accidents).
    assert await CheckpointCoordinator(backend, 60, options(tmp_path)).verify(genuine)


def _special_entries(tmp_path: Path) -> list[str]:
    """Entries named like checkpoints that are not checkpoint files."""
    names = []
    base = _new_id(tmp_path)
    fifo = f"{base[:-7]}000001Z.ckpt"
    os.mkfifo(tmp_path / fifo)
    names.append(fifo)
    directory = f"{base[:-7]}000002Z.ckpt"
    (tmp_path / directory).mkdir()
    names.append(directory)
    link = f"{base[:-7]}000003Z.ckpt"
    (tmp_path / link).symlink_to("/dev/zero")
    names.append(link)
    bad_date = "ckpt-20261399T000000.000000Z.ckpt"
    (tmp_path / bad_date).write_bytes(b"not a real date")
    names.append(bad_date)
    (tmp_path / "ckpt-20260101T000000.000000Z.ckpt.bak").write_bytes(b"not named like a checkpoint")
    return names


@pytest.mark.timeout(60)
async def test_special_entries_never_hang_or_raise(tmp_path: Path) -> None:
    _, coordinator, (old, new) = await _two_generations(tmp_path)
    damaged = _new_id(tmp_path)
    _native.snapshot_write(tmp_path / f"{damaged}.ckpt", [("k0", b"x", None)], compress=False)
    data = bytearray((tmp_path / f"{damaged}.ckpt").read_bytes())
    data[16:24] = struct.pack("<d", float("nan"))  # created_at: header damaged
    (tmp_path / f"{damaged}.ckpt").write_bytes(bytes(data))
    specials = _special_entries(tmp_path)
    # list: the sound ones, or every one with the damaged ones marked.
    assert [info.id for info in coordinator.list_checkpoints()] == [old, new]
    listed = coordinator.list_checkpoints(include_damaged=True)
    marked = {info.path.name: info.damaged for info in listed if info.damaged is not None}
    assert set(marked) == {*specials, f"{damaged}.ckpt"}
    assert "FIFO" in marked[specials[0]]
    assert "directory" in marked[specials[1]]
    assert "symbolic link" in marked[specials[2]]
    assert "not a valid checkpoint id" in marked[specials[3]]
    assert "creation time" in marked[f"{damaged}.ckpt"]
    readable, unreadable = scan_checkpoints(tmp_path)
    assert len(readable) == 2
    assert all(isinstance(exc, CorruptData) for _, exc in unreadable)
    # verify by id: typed errors, no hang.
    for name in specials[:3]:
        with pytest.raises(CorruptData, match="not a regular file"):
            await coordinator.verify(name.removesuffix(".ckpt"))
    with pytest.raises(ConfigError, match="not a checkpoint id"):
        await coordinator.verify(specials[3].removesuffix(".ckpt"))
    # create: the ids stay valid and later than everything.
    newest = await coordinator.create_checkpoint()
    assert newest > max(name.removesuffix(".ckpt") for name in specials[:3])
    # restore_latest: the special entries are not candidates (left alone, not renamed).
    assert await coordinator.restore_latest() == newest
    assert coordinator.last_restore is not None
    assert coordinator.last_restore.set_aside == ()
    left = set(os.listdir(tmp_path))
    assert all(name in left for name in specials), "not renamed"


async def test_damaged_files_are_logged_only_when_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, coordinator, (old, new) = await _two_generations(tmp_path)
    damaged = _new_id(tmp_path)
    (tmp_path / f"{damaged}.ckpt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, "statekit.checkpoint"):
        listed = coordinator.list_checkpoints(include_damaged=True)
    assert [(info.id, info.damaged is not None) for info in listed] == [
        (old, False),
        (new, False),
        (damaged, True),
    ]
    assert caplog.records == []  # listed with its reason: nothing skipped, nothing to warn about
    with caplog.at_level(logging.WARNING, "statekit.checkpoint"):
        assert [info.id for info in coordinator.list_checkpoints()] == [old, new]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping unreadable checkpoint {damaged}.ckpt: {listed[2].damaged}"
    ]


@pytest.mark.parametrize("bad_id", ["../x", "../../etc/passwd", "ckpt-20261399T000000.000000Z", "", "/tmp/x"])
async def test_ids_are_never_paths(tmp_path: Path, bad_id: str) -> None:
    coordinator = CheckpointCoordinator(MemoryStateBackend(), 60, options(tmp_path))
    with pytest.raises(ConfigError, match="not a checkpoint id"):
        await coordinator.verify(bad_id)
    with pytest.raises(RestoreFailed, match="not a checkpoint id"):
        await coordinator.restore(bad_id)
    with pytest.raises(RestoreFailed, match="not a checkpoint id"):
        await coordinator.plan_restore(bad_id)


async def test_no_id_left_after_year_9999_is_a_checkpoint_failure(tmp_path: Path) -> None:
    (tmp_path / "ckpt-99991231T235959.999999Z.ckpt").write_bytes(b"x")
    coordinator = CheckpointCoordinator(MemoryStateBackend(), 60, options(tmp_path))
    with pytest.raises(CheckpointFailed, match="no checkpoint id is left"):
        await coordinator.create_checkpoint()
    assert coordinator.stats().checkpoint_failures == 1
