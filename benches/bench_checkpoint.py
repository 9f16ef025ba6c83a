"""Checkpoints of 1,000,000 entries: statekit's coordinator vs the best plain-Python equivalent.

Every implementation moves the same state, a memory backend holding 10^6 keys (16 bytes) with
100-byte pseudo-random values and no TTLs, to a file and back, in the same run:

* ``statekit_checkpoint_create``: ``await CheckpointCoordinator.create_checkpoint()``: export
  from the backend, framing, zstd (level chosen by sampling: the random values make it zstd's
  fast mode), SHA-256, atomic write (temp file, fsync, rename, fsync of the directory), then the
  file is read back and its SHA-256 checked, then retention.
* ``baseline_python_checkpoint_create``: the same job in plain Python, with the fastest parts
  a user has: the same export (``backend.export_items``), ``msgspec.msgpack`` of the three
  columns, ``zstandard`` level 1 with ``threads=2``, ``hashlib.sha256``, ``atomic_write_bytes``
  (same temp/fsync/rename/fsync recipe), then the file read back and hashed (statekit's
  guarantee: what is on disk verifies).
* restore, both ways, into a new empty memory backend (as after losing the machine; made
  outside the timed code): read, check the SHA-256 before decompressing, decompress, decode,
  then the backend's ``replace_prefix`` (the baseline hands it the decoded columns, the cheapest
  input it takes). statekit also checks every key (as ``replace_prefix`` does), the batch's
  CRC-32 and, with a signing key, the HMAC.

The ``checkpoint file`` groups time the file part alone (no backend): the items are exported
once, outside the timed code, and the read side stops at Python objects. The ``SQLite
backend`` groups run the same create and restore on a SQLite file (``durability="full"``).

The target is a ratio (>= 2x) with the checkpoint file within 10% of the baseline's size; the
sizes are in each row's note.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard

from _support import LoopRunner, bench_async, describe, make_key, make_values
from statekit import _native
from statekit._utils.atomic import atomic_write_bytes
from statekit.backends.base import ItemColumns
from statekit.backends.memory import MemoryStateBackend
from statekit.backends.sqlite import SqliteStateBackend
from statekit.checkpoint import CheckpointCoordinator, CheckpointOptions

N_ENTRIES = 1_000_000
ROUNDS = 3
PYTHON_ROUNDS = 2
KEYS = [make_key(i) for i in range(N_ENTRIES)]
VALUES = make_values(N_ENTRIES)
DIGEST_LEN = 32

create_group = pytest.mark.benchmark(group="checkpoint: create, 1M entries, 100 B values")
restore_group = pytest.mark.benchmark(group="checkpoint: restore, 1M entries, 100 B values")
write_group = pytest.mark.benchmark(group="checkpoint file: write only, 1M entries")
read_group = pytest.mark.benchmark(group="checkpoint file: read only, 1M entries")


# -- the plain-Python equivalent -----------------------------------------------------------

MSGPACK_ENCODER = msgspec.msgpack.Encoder()
MSGPACK_DECODER = msgspec.msgpack.Decoder(tuple[list[str], list[bytes], list[float | None] | None])


def python_dump(items: ItemColumns) -> bytes:
    """msgspec.msgpack of the three columns, zstd level 1 on two threads, SHA-256 in front."""
    payload = MSGPACK_ENCODER.encode((items.keys, items.values, items.expires_at))
    compressed = zstandard.ZstdCompressor(level=1, threads=2).compress(payload)
    return hashlib.sha256(compressed).digest() + compressed


def python_load(data: bytes) -> ItemColumns:
    """The reverse of :func:`python_dump`: check the SHA-256 (before decompressing), decompress, decode."""
    digest, payload = data[:DIGEST_LEN], data[DIGEST_LEN:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("checksum mismatch")
    keys, values, expires = MSGPACK_DECODER.decode(zstandard.ZstdDecompressor().decompress(payload))
    return ItemColumns(keys, values, expires)


def python_write(path: Path, data: bytes) -> None:
    """Atomic write (temp file, fsync, rename, fsync dir), then read the file back and check
    its SHA-256, as statekit does."""
    atomic_write_bytes(path, data)
    if hashlib.sha256(path.read_bytes()[DIGEST_LEN:]).digest() != data[:DIGEST_LEN]:
        raise ValueError("written file does not verify")


async def python_create(backend: MemoryStateBackend, path: Path) -> None:
    items = await backend.export_items("")
    data = python_dump(items)
    del items
    python_write(path, data)


async def python_restore(backend: MemoryStateBackend, path: Path) -> None:
    await backend.replace_prefix("", python_load(read_file(path)))


def read_file(path: Path) -> bytes:
    return path.read_bytes()


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def filled_backend(aloop: LoopRunner) -> MemoryStateBackend:
    backend = MemoryStateBackend()
    aloop.run(backend.batch_put(zip(KEYS, VALUES, strict=True)))
    return backend


def check_restored(aloop: LoopRunner, backend: MemoryStateBackend) -> None:
    assert backend.stats_nowait().total_keys == N_ENTRIES
    for i in (0, 1, N_ENTRIES // 2, N_ENTRIES - 1):
        assert aloop.run(backend.get(KEYS[i])) == VALUES[i]


def size_note(path: Path) -> str:
    return f"file {path.stat().st_size / 1e6:.1f} MB"


# -- create ---------------------------------------------------------------------------------


@create_group
def test_statekit_checkpoint_create(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    backend = filled_backend(aloop)
    coordinator = CheckpointCoordinator(backend, 60.0, CheckpointOptions(workdir, max_checkpoints=1))
    describe(benchmark, ops=N_ENTRIES, unit="entries", targets={"baseline_python_checkpoint_create": 2.0})
    bench_async(benchmark, aloop, coordinator.create_checkpoint, rounds=ROUNDS)
    (latest,) = coordinator.list_checkpoints()
    assert latest.entry_count == N_ENTRIES
    assert aloop.run(coordinator.verify(latest.id)).checksum == latest.checksum
    benchmark.extra_info["file_bytes"] = latest.size
    benchmark.extra_info["note"] = size_note(latest.path) + ", zstd level chosen by sampling"
    aloop.run(backend.close())


@create_group
def test_baseline_python_checkpoint_create(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    backend = filled_backend(aloop)
    path = workdir / "state.msgpack.zst"
    describe(benchmark, ops=N_ENTRIES, unit="entries")
    bench_async(benchmark, aloop, lambda: python_create(backend, path), rounds=PYTHON_ROUNDS, warmup_rounds=0)
    assert len(python_load(path.read_bytes())) == N_ENTRIES
    benchmark.extra_info["file_bytes"] = path.stat().st_size
    benchmark.extra_info["note"] = size_note(path) + ", msgspec + zstd level 1 (threads=2) + sha256"
    aloop.run(backend.close())


# -- restore --------------------------------------------------------------------------------


@restore_group
def test_statekit_checkpoint_restore(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    source = filled_backend(aloop)
    checkpoint_id = aloop.run(
        CheckpointCoordinator(source, 60.0, CheckpointOptions(workdir)).create_checkpoint()
    )
    aloop.run(source.close())
    del source
    restored: list[MemoryStateBackend] = []

    def fresh() -> tuple[tuple[CheckpointCoordinator], dict[str, Any]]:
        restored.clear()  # the previous round's state is freed here, untimed
        restored.append(MemoryStateBackend())
        return (CheckpointCoordinator(restored[0], 60.0, CheckpointOptions(workdir)),), {}

    describe(
        benchmark,
        ops=N_ENTRIES,
        unit="entries",
        targets={"baseline_python_checkpoint_restore": 2.0},
        note="into an empty backend, as after losing the machine",
    )
    benchmark.pedantic(
        lambda c: aloop.run(c.restore(checkpoint_id)), setup=fresh, rounds=ROUNDS, warmup_rounds=1
    )
    check_restored(aloop, restored[0])


@restore_group
def test_baseline_python_checkpoint_restore(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    source = filled_backend(aloop)
    path = workdir / "state.msgpack.zst"
    aloop.run(python_create(source, path))
    del source
    restored: list[MemoryStateBackend] = []

    def fresh() -> tuple[tuple[MemoryStateBackend], dict[str, Any]]:
        restored.clear()
        restored.append(MemoryStateBackend())
        return (restored[0],), {}

    describe(benchmark, ops=N_ENTRIES, unit="entries")
    benchmark.pedantic(
        lambda b: aloop.run(python_restore(b, path)), setup=fresh, rounds=PYTHON_ROUNDS, warmup_rounds=0
    )
    check_restored(aloop, restored[0])


# -- the file part alone --------------------------------------------------------------------


@write_group
def test_statekit_snapshot_write(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    items = aloop.run(filled_backend(aloop).export_items(""))
    columns = (items.keys, items.values, items.expires_at)  # as the coordinator hands them over
    path = workdir / "state.ckpt"
    describe(
        benchmark, ops=N_ENTRIES, unit="entries", note="snapshot_write(verify=True): read back and hashed"
    )

    def write() -> None:
        _native.snapshot_write(path, columns, verify=True)

    benchmark.pedantic(write, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert _native.snapshot_verify(path).entry_count == N_ENTRIES


@write_group
def test_baseline_msgspec_zstd_write(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    items = aloop.run(filled_backend(aloop).export_items(""))
    path = workdir / "state.msgpack.zst"
    describe(benchmark, ops=N_ENTRIES, unit="entries", note="dump + atomic_write_bytes + read back and hash")

    def write() -> None:
        python_write(path, python_dump(items))

    benchmark.pedantic(write, rounds=PYTHON_ROUNDS, iterations=1, warmup_rounds=0)


@read_group
def test_statekit_snapshot_read(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    path = workdir / "state.ckpt"
    _native.snapshot_write(path, aloop.run(filled_backend(aloop).export_items("")))
    describe(benchmark, ops=N_ENTRIES, unit="entries", note="snapshot_read to key/value lists")
    result = benchmark.pedantic(
        lambda: _native.snapshot_read(path), rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    assert len(result[1]) == N_ENTRIES


@read_group
def test_baseline_msgspec_zstd_read(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    path = workdir / "state.msgpack.zst"
    atomic_write_bytes(path, python_dump(aloop.run(filled_backend(aloop).export_items(""))))
    describe(
        benchmark, ops=N_ENTRIES, unit="entries", note="read + sha256 + zstd + msgspec to key/value lists"
    )
    result = benchmark.pedantic(
        lambda: python_load(path.read_bytes()), rounds=PYTHON_ROUNDS, iterations=1, warmup_rounds=0
    )
    assert len(result) == N_ENTRIES


# -- the same on SQLite (informative: the backend's own reads and writes dominate) ----------

SQLITE_ROUNDS = 2
sqlite_create_group = pytest.mark.benchmark(group="checkpoint: create, 1M entries, SQLite backend")
sqlite_restore_group = pytest.mark.benchmark(group="checkpoint: restore, 1M entries, SQLite backend")


def sqlite_backend(aloop: LoopRunner, path: Path, *, filled: bool) -> SqliteStateBackend:
    backend = SqliteStateBackend(path)
    if filled:
        aloop.run(backend.batch_put(zip(KEYS, VALUES, strict=True)))
    return backend


def python_dump_items(items: list[tuple[str, bytes, float | None]]) -> bytes:
    """:func:`python_dump` of the list of tuples the SQLite backend exports (msgspec takes it as is)."""
    compressed = zstandard.ZstdCompressor(level=1, threads=2).compress(MSGPACK_ITEMS_ENCODER.encode(items))
    return hashlib.sha256(compressed).digest() + compressed


def python_load_items(data: bytes) -> list[tuple[str, bytes, float | None]]:
    digest, payload = data[:DIGEST_LEN], data[DIGEST_LEN:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("checksum mismatch")
    return MSGPACK_ITEMS_DECODER.decode(zstandard.ZstdDecompressor().decompress(payload))


MSGPACK_ITEMS_ENCODER = msgspec.msgpack.Encoder()
MSGPACK_ITEMS_DECODER = msgspec.msgpack.Decoder(list[tuple[str, bytes, float | None]])


@sqlite_create_group
def test_statekit_checkpoint_create_sqlite(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    backend = sqlite_backend(aloop, workdir / "state.db", filled=True)
    coordinator = CheckpointCoordinator(backend, 60.0, CheckpointOptions(workdir / "ckpt", max_checkpoints=1))
    describe(benchmark, ops=N_ENTRIES, unit="entries")
    bench_async(benchmark, aloop, coordinator.create_checkpoint, rounds=SQLITE_ROUNDS, warmup_rounds=0)
    (latest,) = coordinator.list_checkpoints()
    assert latest.entry_count == N_ENTRIES
    benchmark.extra_info["note"] = size_note(latest.path)
    aloop.run(backend.close())


@sqlite_create_group
def test_baseline_python_checkpoint_create_sqlite(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    backend = sqlite_backend(aloop, workdir / "state.db", filled=True)
    path = workdir / "state.msgpack.zst"

    async def create() -> None:
        python_write(path, python_dump_items(await backend.export_items("")))

    describe(benchmark, ops=N_ENTRIES, unit="entries")
    bench_async(benchmark, aloop, create, rounds=SQLITE_ROUNDS, warmup_rounds=0)
    benchmark.extra_info["note"] = size_note(path)
    aloop.run(backend.close())


@sqlite_restore_group
def test_statekit_checkpoint_restore_sqlite(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    source = filled_backend(aloop)
    checkpoint_id = aloop.run(
        CheckpointCoordinator(source, 60.0, CheckpointOptions(workdir / "ckpt")).create_checkpoint()
    )
    aloop.run(source.close())
    del source
    counter = iter(range(100))

    def fresh() -> tuple[tuple[CheckpointCoordinator], dict[str, Any]]:
        backend = sqlite_backend(aloop, workdir / f"restored-{next(counter)}.db", filled=False)
        return (CheckpointCoordinator(backend, 60.0, CheckpointOptions(workdir / "ckpt")),), {}

    describe(benchmark, ops=N_ENTRIES, unit="entries", note="into an empty database")
    benchmark.pedantic(
        lambda c: aloop.run(c.restore(checkpoint_id)), setup=fresh, rounds=SQLITE_ROUNDS, warmup_rounds=0
    )


@sqlite_restore_group
def test_baseline_python_checkpoint_restore_sqlite(benchmark: Any, aloop: LoopRunner, workdir: Path) -> None:
    path = workdir / "state.msgpack.zst"
    source = filled_backend(aloop)
    atomic_write_bytes(path, python_dump_items(list(aloop.run(source.export_items("")))))
    del source
    counter = iter(range(100))

    def fresh() -> tuple[tuple[SqliteStateBackend], dict[str, Any]]:
        return (sqlite_backend(aloop, workdir / f"restored-{next(counter)}.db", filled=False),), {}

    async def restore(backend: SqliteStateBackend) -> None:
        await backend.replace_prefix("", python_load_items(read_file(path)))

    describe(benchmark, ops=N_ENTRIES, unit="entries", note="into an empty database")
    benchmark.pedantic(lambda b: aloop.run(restore(b)), setup=fresh, rounds=SQLITE_ROUNDS, warmup_rounds=0)
