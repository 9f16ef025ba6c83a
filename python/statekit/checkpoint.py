"""Checkpoints: SHA-256-validated snapshot files of a backend's state, with retention and restore.

A checkpoint is what you restore after losing a machine, so it is never torn (written to a
temporary file, fsynced, renamed, directory fsynced), never trusted without verification (the
SHA-256 over header and content is checked before anything is restored), and never deleted
before its successor is safe (retention runs only after a newer checkpoint was written and
verified).

Usage::

    from statekit import create_store
    from statekit.checkpoint import CheckpointCoordinator, CheckpointOptions

    store = create_store("sqlite:///var/lib/job/state.db", key_prefix="job:")
    coordinator = CheckpointCoordinator(store, 30.0, CheckpointOptions("/var/lib/job/checkpoints"))
    if coordinator.list_checkpoints():  # not the first run: back to the last good checkpoint
        await coordinator.restore_latest()  # RestoreFailed if none of them verifies
    async with coordinator:  # start(): a checkpoint every 30 s; on exit shutdown(): a final one
        ...  # run the job

From a shell: ``statekit checkpoint list | verify | restore`` (see :mod:`statekit.cli`).

What is checkpointed: every live key under the coordinator's prefix (a ``KeyValueStore``'s
``key_prefix``, or ``prefix=`` with a bare backend; empty: the whole backend), as raw bytes with
each key's absolute expiry. A restore replaces everything under that prefix with the snapshot's
content, minus the keys that have expired since; keys outside the prefix are untouched.

Consistency of a snapshot, per backend (``StateBackend.export_items``):

* memory: point in time. The export runs under the backend's lock without yielding, so it is
  exactly the state between two operations.
* SQLite: point in time. The export is one read transaction; writers (other tasks, threads or
  processes) carry on and are simply not seen.
* Redis: not point in time. Keys are read in batches while other clients may write, so a
  snapshot can hold a key's value from before a concurrent write and another key's from after.
  Quiesce writers (or checkpoint from the one process that writes) when you need a consistent
  cut.

Restores are atomic on memory (under its lock) and SQLite (one transaction); on Redis they are
not (the old keys are deleted, then the items written in pipelined chunks): a failed Redis
restore raises and leaves a partial state, so run it again.

Files, in ``options.checkpoint_dir`` (one coordinator per directory):

* ``ckpt-20261123T170820.123456Z.ckpt``: a checkpoint. The id is the UTC creation time to the
  microsecond, so ids sort by time; a new id is always later than every id already in the
  directory, even if the clock stepped back.
* ``<id>.ckpt.corrupt``: a checkpoint that failed verification, kept aside for inspection,
  never overwritten (a numbered suffix is added if needed) and never deleted by statekit.
* ``.<id>.ckpt.<pid>.<n>.tmp``: a checkpoint being written. A process killed mid-write leaves
  one behind; the next successful checkpoint deletes it.

File format (``statekit._native.snapshot_write``; version 1, little-endian): an 80-byte header
(magic ``b"SKSNAP\\r\\n"``, format version u16, compression u8 (0 none, 1 zstd), 5 reserved
bytes, created-at f64 unix seconds, entry count u64, uncompressed size u64, payload size u64,
SHA-256 of the payload followed by header bytes 0..48), then the payload: the record batch of
``statekit._native.encode_records`` (``(key, value, expires_at)`` records with a CRC-32), as is
or as one zstd frame. The id is the file name; timestamp, entry count, size, version and
checksum are all in the header, so there is no sidecar file to keep in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from statekit import _native
from statekit._utils.durations import to_seconds
from statekit.backends.base import ItemColumns, StateBackend
from statekit.errors import CheckpointFailed, ConfigError, CorruptData, RestoreFailed, StateError
from statekit.store import KeyValueStore

__all__ = [
    "CHECKPOINT_SUFFIX",
    "CheckpointCoordinator",
    "CheckpointInfo",
    "CheckpointOptions",
    "CheckpointStats",
    "ProgressCallback",
    "read_checkpoint_info",
    "scan_checkpoints",
    "verify_checkpoint",
]

logger = logging.getLogger("statekit.checkpoint")

CHECKPOINT_SUFFIX: Final = ".ckpt"
CORRUPT_SUFFIX: Final = ".corrupt"
_ID_PREFIX: Final = "ckpt-"
_ID_TIME_FORMAT: Final = "%Y%m%dT%H%M%S.%fZ"
_ID_RE: Final = re.compile(r"ckpt-(\d{8}T\d{6}\.\d{6}Z)")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# How many items a restore writes between two progress reports.
_PROGRESS_STEP: Final = 10_000

#: ``on_progress(done, total)``: items written so far during a restore, out of ``total``.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True, init=False)
class CheckpointOptions:
    """Where and how checkpoints are kept.

    Args:
        checkpoint_dir: the directory of the checkpoint files (created when missing).
        max_checkpoints: how many checkpoints to keep; older ones are deleted once a newer one
            has been written and verified.
        compress: zstd-compress the content (the header stays uncompressed).
        min_interval: the periodic task never checkpoints closer than this (seconds or
            timedelta; 0 for no minimum), even when ``interval`` is shorter.
        compression_level: zstd level, 1 (fastest regular level) to 22 (smallest); None (the
            default) uses level 1, or zstd's fast mode when a sample of the content barely
            compresses (random or already-compressed values), which is twice as fast there and
            no bigger.

    Example::

        CheckpointOptions("/var/lib/job/checkpoints", max_checkpoints=5, min_interval=timedelta(seconds=30))
    """

    checkpoint_dir: Path
    max_checkpoints: int
    compress: bool
    min_interval: float
    compression_level: int | None

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str],
        *,
        max_checkpoints: int = 10,
        compress: bool = True,
        min_interval: float | timedelta = 10.0,
        compression_level: int | None = None,
    ) -> None:
        if not isinstance(checkpoint_dir, str | os.PathLike) or str(checkpoint_dir) == "":
            raise ConfigError(f"checkpoint_dir must be a non-empty path, got {checkpoint_dir!r}")
        if isinstance(max_checkpoints, bool) or not isinstance(max_checkpoints, int) or max_checkpoints < 1:
            raise ConfigError(f"max_checkpoints must be an int of at least 1, got {max_checkpoints!r}")
        if not isinstance(compress, bool):
            raise ConfigError(f"compress must be True or False, got {compress!r}")
        if compression_level is not None and (
            isinstance(compression_level, bool)
            or not isinstance(compression_level, int)
            or not 1 <= compression_level <= 22
        ):
            raise ConfigError(
                f"compression_level must be None or an int from 1 to 22, got {compression_level!r}"
            )
        object.__setattr__(self, "checkpoint_dir", Path(checkpoint_dir))
        object.__setattr__(self, "max_checkpoints", max_checkpoints)
        object.__setattr__(self, "compress", compress)
        object.__setattr__(self, "min_interval", to_seconds(min_interval, "min_interval", allow_zero=True))
        object.__setattr__(self, "compression_level", compression_level)


@dataclass(frozen=True, slots=True)
class CheckpointStats:
    """Counters of one coordinator since it was created (seed 004's ``CheckpointStats``)."""

    checkpoints_created: int = 0
    checkpoint_failures: int = 0
    restores: int = 0
    restore_failures: int = 0
    #: When the last successful checkpoint was taken (UTC), None before the first.
    last_checkpoint_time: datetime | None = None
    #: How long the last successful checkpoint took, export to verification, in milliseconds.
    last_checkpoint_duration_ms: float | None = None
    #: Sum of the file sizes of every checkpoint written.
    total_bytes_checkpointed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One checkpoint file, as its header describes it (not verified: see ``verify``)."""

    id: str
    path: Path
    #: Creation time (UTC), from the header.
    timestamp: datetime
    entry_count: int
    #: Size of the file in bytes.
    size: int
    #: Format version of the file.
    version: int
    #: Lowercase hex SHA-256 recorded in the header.
    checksum: str
    #: ``"zstd"`` or ``"none"``.
    compression: str
    #: Size of the record batch before compression.
    uncompressed_size: int


def _id_to_micros(checkpoint_id: str) -> int:
    match = _ID_RE.fullmatch(checkpoint_id)
    if match is None:
        raise ValueError(f"{checkpoint_id!r} is not a checkpoint id (ckpt-YYYYmmddTHHMMSS.ffffffZ)")
    when = datetime.strptime(match.group(1), _ID_TIME_FORMAT).replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(microseconds=1)


def _micros_to_id(micros: int) -> str:
    return _ID_PREFIX + (_EPOCH + timedelta(microseconds=micros)).strftime(_ID_TIME_FORMAT)


def _checkpoint_ids(directory: Path) -> list[str]:
    """Ids of the checkpoint files in ``directory``, oldest first (empty if it does not exist)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    ids = [
        name.removesuffix(CHECKPOINT_SUFFIX)
        for name in names
        if name.endswith(CHECKPOINT_SUFFIX) and _ID_RE.fullmatch(name.removesuffix(CHECKPOINT_SUFFIX))
    ]
    return sorted(ids)


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Describe one checkpoint file from its header (checked for shape and size, not hashed).

    Raises:
        CorruptData: the file is not a checkpoint, or its header is damaged or its size wrong.
        OSError: the file cannot be read.
    """
    path = Path(path)
    info = _native.snapshot_info(path)
    return _info(path, info)


def verify_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Fully verify one checkpoint file (header, SHA-256, every record) without restoring it.

    Raises:
        CorruptData: the file is truncated, altered, or not a checkpoint (the message says which).
        OSError: the file cannot be read.
    """
    path = Path(path)
    return _info(path, _native.snapshot_verify(path, deep=True))


def _info(path: Path, info: _native.SnapshotInfo) -> CheckpointInfo:
    return CheckpointInfo(
        id=path.name.removesuffix(CHECKPOINT_SUFFIX),
        path=path,
        timestamp=datetime.fromtimestamp(info.created_at, UTC),
        entry_count=info.entry_count,
        size=info.file_size,
        version=info.version,
        checksum=info.checksum,
        compression=info.compression,
        uncompressed_size=info.uncompressed_size,
    )


def scan_checkpoints(
    directory: str | os.PathLike[str],
) -> tuple[list[CheckpointInfo], list[tuple[Path, StateError | OSError]]]:
    """Every checkpoint file in ``directory``, oldest first, read from the headers.

    Returns ``(readable, unreadable)``: the files whose header is sound, and the others with
    the error that describes them. Nothing is hashed (see ``CheckpointCoordinator.verify``).
    """
    directory = Path(directory)
    readable: list[CheckpointInfo] = []
    unreadable: list[tuple[Path, StateError | OSError]] = []
    for checkpoint_id in _checkpoint_ids(directory):
        path = directory / (checkpoint_id + CHECKPOINT_SUFFIX)
        try:
            readable.append(read_checkpoint_info(path))
        except (CorruptData, OSError) as exc:
            unreadable.append((path, exc))
    return readable, unreadable


class _ProgressColumns(ItemColumns):
    """Items that report how many of them were read, as a backend writes them."""

    __slots__ = ("_on_progress",)

    def __init__(self, columns: ItemColumns, on_progress: ProgressCallback) -> None:
        super().__init__(columns.keys, columns.values, columns.expires_at)
        self._on_progress = on_progress

    def __iter__(self) -> Iterator[tuple[str, bytes, float | None]]:
        total = len(self)
        for done, item in enumerate(super().__iter__(), start=1):
            yield item
            if done % _PROGRESS_STEP == 0:
                self._on_progress(done, total)


class CheckpointCoordinator:
    """Periodic, verified checkpoints of a backend (or a store's prefix), and restores.

    Args:
        backend: a :class:`~statekit.backends.StateBackend`, or a
            :class:`~statekit.KeyValueStore` (its backend is checkpointed, limited to the
            store's ``key_prefix``).
        interval: seconds (or a timedelta) between periodic checkpoints once ``start()`` ran;
            never closer than ``options.min_interval``.
        options: where and how to keep the files.
        prefix: only checkpoint and restore keys under this prefix (default: the store's
            ``key_prefix``, or everything for a bare backend).
        clock: returns the current unix time; used for ids and timestamps.

    One coordinator per checkpoint directory; it is meant to be used from one event loop.
    """

    def __init__(
        self,
        backend: StateBackend | KeyValueStore,
        interval: float | timedelta,
        options: CheckpointOptions,
        *,
        prefix: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(backend, KeyValueStore):
            self._backend: StateBackend = backend.backend
            default_prefix = backend.key_prefix
        else:
            self._backend = backend
            default_prefix = ""
        missing = [name for name in ("export_items", "replace_prefix") if not hasattr(self._backend, name)]
        if missing:
            raise ConfigError(
                f"{type(self._backend).__name__} cannot be checkpointed: it has no {' or '.join(missing)}"
            )
        if not isinstance(options, CheckpointOptions):
            raise ConfigError(f"options must be a CheckpointOptions, got {type(options).__name__}")
        if prefix is not None and not isinstance(prefix, str):
            raise ConfigError(f"prefix must be a str or None, got {type(prefix).__name__}")
        self._interval = to_seconds(interval, "interval")
        self._options = options
        self._prefix = default_prefix if prefix is None else prefix
        self._clock = clock
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._last_attempt: float | None = None  # time.monotonic() of the last checkpoint attempt
        self._created = 0
        self._failures = 0
        self._restores = 0
        self._restore_failures = 0
        self._last_time: datetime | None = None
        self._last_duration_ms: float | None = None
        self._total_bytes = 0

    def __repr__(self) -> str:
        return (
            f"CheckpointCoordinator(backend={self._backend.backend_type!r}, prefix={self._prefix!r}, "
            f"interval={self._interval!r}, checkpoint_dir={str(self.checkpoint_dir)!r})"
        )

    @property
    def checkpoint_dir(self) -> Path:
        """The directory holding the checkpoint files."""
        return self._options.checkpoint_dir

    @property
    def options(self) -> CheckpointOptions:
        """The options given at construction."""
        return self._options

    @property
    def prefix(self) -> str:
        """Only keys under this prefix are checkpointed and restored ("" for all)."""
        return self._prefix

    @property
    def interval(self) -> float:
        """Seconds between periodic checkpoints (before ``min_interval`` is applied)."""
        return self._interval

    # -- checkpoints ---------------------------------------------------------------------

    async def create_checkpoint(self) -> str:
        """Write a checkpoint of the current state, verify it, then apply retention.

        Returns:
            The new checkpoint's id.

        Raises:
            CheckpointFailed: the export, the write or the verification failed (disk full,
                permission, backend error). The failure is counted and logged, and the
                previous checkpoints are untouched.
        """
        async with self._lock:
            return await self._create()

    async def _create(self) -> str:
        self._last_attempt = time.monotonic()
        started = time.perf_counter()
        checkpoint_id, micros = self._next_id()
        path = self._path(checkpoint_id)
        options = self._options
        try:
            await asyncio.to_thread(self.checkpoint_dir.mkdir, parents=True, exist_ok=True)
            items = await self._backend.export_items(self._prefix)
            info = await asyncio.to_thread(
                _native.snapshot_write,
                path,
                items,
                compress=options.compress,
                level=options.compression_level,
                created_at=micros / 1_000_000,
            )
            del items
            # Read the file back: what is on disk must hash to what was written.
            await asyncio.to_thread(_native.snapshot_verify, path, deep=False)
        except (OSError, StateError, ValueError, TypeError) as exc:
            self._failures += 1
            if isinstance(exc, CorruptData):
                self._set_aside(path)
            logger.error("checkpoint %s in %s failed: %s", checkpoint_id, self.checkpoint_dir, exc)
            raise CheckpointFailed(
                f"checkpoint {checkpoint_id} in {str(self.checkpoint_dir)!r} failed: {exc}; "
                "the previous checkpoints are untouched",
                checkpoint_id=checkpoint_id,
            ) from exc
        self._created += 1
        self._last_time = _EPOCH + timedelta(microseconds=micros)
        self._last_duration_ms = (time.perf_counter() - started) * 1000.0
        self._total_bytes += info.file_size
        logger.info(
            "checkpoint %s: %d entries, %d bytes, %.1f ms",
            checkpoint_id,
            info.entry_count,
            info.file_size,
            self._last_duration_ms,
        )
        # Deleting large files takes a while: keep it off the event loop.
        await asyncio.to_thread(self._clean_up)
        return checkpoint_id

    def _clean_up(self) -> None:
        self._sweep_temp_files()
        self._apply_retention()

    def _next_id(self) -> tuple[str, int]:
        """A new id, later than every checkpoint (even a corrupt one) already in the directory."""
        micros = int(self._clock() * 1_000_000)
        latest = self._latest_micros()
        if latest is not None and micros <= latest:
            micros = latest + 1
        return _micros_to_id(micros), micros

    def _latest_micros(self) -> int | None:
        try:
            names = os.listdir(self.checkpoint_dir)
        except OSError:
            return None  # missing (created by the write) or unusable (the write will say why)
        latest: int | None = None
        for name in names:
            match = _ID_RE.match(name)
            if match is not None and name.startswith(_ID_PREFIX):
                micros = _id_to_micros(match.group(0))
                latest = micros if latest is None else max(latest, micros)
        return latest

    def _path(self, checkpoint_id: str) -> Path:
        return self.checkpoint_dir / (checkpoint_id + CHECKPOINT_SUFFIX)

    def _sweep_temp_files(self) -> None:
        """Delete temporary files left by writes that never finished (a killed process)."""
        try:
            names = os.listdir(self.checkpoint_dir)
        except OSError as exc:
            logger.warning("cannot list %s to remove stale temporary files: %s", self.checkpoint_dir, exc)
            return
        for name in names:
            if name.startswith("." + _ID_PREFIX) and name.endswith(".tmp"):
                try:
                    (self.checkpoint_dir / name).unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    logger.warning("cannot remove stale temporary file %s: %s", name, exc)
                else:
                    logger.info("removed stale temporary file %s", name)

    def _apply_retention(self) -> None:
        """Delete the oldest checkpoints beyond ``max_checkpoints`` (call after a verified write)."""
        try:
            ids = _checkpoint_ids(self.checkpoint_dir)
        except OSError as exc:
            logger.warning("cannot list %s to delete old checkpoints: %s", self.checkpoint_dir, exc)
            return
        for checkpoint_id in ids[: max(0, len(ids) - self._options.max_checkpoints)]:
            try:
                self._path(checkpoint_id).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot delete old checkpoint %s: %s", checkpoint_id, exc)
            else:
                logger.info(
                    "deleted old checkpoint %s (keeping %d)", checkpoint_id, self._options.max_checkpoints
                )

    def _set_aside(self, path: Path) -> Path | None:
        """Rename a corrupt checkpoint to ``<name>.corrupt`` (never overwriting one)."""
        target = path.with_name(path.name + CORRUPT_SUFFIX)
        n = 0
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{n}")
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.error("cannot set corrupt checkpoint %s aside: %s", path, exc)
            return None
        logger.warning("corrupt checkpoint %s kept aside as %s", path.name, target.name)
        return target

    # -- periodic task -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the periodic task: a checkpoint every ``interval`` (at least ``min_interval``
        apart). Calling it while the task runs does nothing."""
        if self._task is not None and not self._task.done():
            return
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            self._run_periodic(), name=f"statekit-checkpoints:{self.checkpoint_dir}"
        )

    def _delay(self) -> float:
        period = max(self._interval, self._options.min_interval)
        if self._last_attempt is None:
            self._last_attempt = time.monotonic()
        return max(0.0, self._last_attempt + period - time.monotonic())

    async def _run_periodic(self) -> None:
        while not self._stop.is_set():
            delay = self._delay()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                continue
            try:
                await self.create_checkpoint()
            except CheckpointFailed:
                pass  # counted and logged by create_checkpoint; try again next period
            except Exception:
                # Not a checkpoint failure we know of: keep the task alive, loudly.
                self._failures += 1
                logger.exception("periodic checkpoint in %s failed unexpectedly", self.checkpoint_dir)

    @property
    def running(self) -> bool:
        """Whether the periodic task is running."""
        return self._task is not None and not self._task.done()

    async def shutdown(self) -> str:
        """Stop the periodic task (letting a checkpoint in progress finish), then take a final
        checkpoint.

        Returns:
            The final checkpoint's id.

        Raises:
            CheckpointFailed: the final checkpoint failed (counted and logged).
        """
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            await task
        return await self.create_checkpoint()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.shutdown()
            return
        # Leaving on an error: still take the final checkpoint, but never hide the error.
        with contextlib.suppress(CheckpointFailed):
            await self.shutdown()

    # -- listing and verification --------------------------------------------------------

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """The checkpoints in the directory, oldest first, described by their headers.

        Files whose header is damaged are logged and left out (``verify()`` hashes a file;
        ``restore*()`` always does).
        """
        readable, unreadable = scan_checkpoints(self.checkpoint_dir)
        for path, exc in unreadable:
            logger.warning("skipping unreadable checkpoint %s: %s", path.name, exc)
        return readable

    async def verify(self, checkpoint_id: str) -> CheckpointInfo:
        """Fully verify one checkpoint (header, SHA-256, every record), without restoring it.

        Raises:
            CorruptData: the file is truncated, altered or not a checkpoint.
            FileNotFoundError: there is no such checkpoint.
        """
        return await asyncio.to_thread(verify_checkpoint, self._path(checkpoint_id))

    # -- restore -------------------------------------------------------------------------

    async def restore_latest(self, *, on_progress: ProgressCallback | None = None) -> str:
        """Restore the newest checkpoint that verifies.

        A corrupt checkpoint met on the way is logged, counted as a restore failure and
        renamed to ``*.corrupt``; the next older one is tried.

        Args:
            on_progress: called as ``on_progress(done, total)`` while items are written
                (by backends that write item by item; always once at the end).

        Returns:
            The id of the restored checkpoint.

        Raises:
            RestoreFailed: there is no checkpoint, none verifies, or the restore itself
                failed (unreadable file, keys outside the prefix, backend error). An empty
                directory is not counted as a restore failure (it is the first run).
        """
        async with self._lock:
            try:
                ids = _checkpoint_ids(self.checkpoint_dir)
            except OSError as exc:
                self._restore_failures += 1
                raise RestoreFailed(
                    f"cannot list checkpoints in {str(self.checkpoint_dir)!r}: {exc}"
                ) from exc
            if not ids:
                raise RestoreFailed(f"no checkpoint to restore in {str(self.checkpoint_dir)!r}")
            corrupt: list[str] = []
            for checkpoint_id in reversed(ids):
                try:
                    await self._restore(checkpoint_id, on_progress)
                except CorruptData as exc:
                    self._restore_failures += 1
                    corrupt.append(checkpoint_id)
                    logger.error("checkpoint %s is corrupt, trying an older one: %s", checkpoint_id, exc)
                    self._set_aside(self._path(checkpoint_id))
                    continue
                if corrupt:
                    logger.warning(
                        "restored %s after skipping %d corrupt newer checkpoint(s): %s",
                        checkpoint_id,
                        len(corrupt),
                        ", ".join(corrupt),
                    )
                return checkpoint_id
            raise RestoreFailed(
                f"no valid checkpoint in {str(self.checkpoint_dir)!r}: all {len(corrupt)} failed "
                f"verification and were kept aside as *{CORRUPT_SUFFIX}"
            )

    async def restore(self, checkpoint_id: str, *, on_progress: ProgressCallback | None = None) -> None:
        """Restore one checkpoint, after verifying it.

        A corrupt file is counted as a restore failure and renamed to ``*.corrupt``.

        Raises:
            RestoreFailed: no such checkpoint, it does not verify, or the restore failed.
        """
        async with self._lock:
            try:
                await self._restore(checkpoint_id, on_progress)
            except CorruptData as exc:
                self._restore_failures += 1
                logger.error("checkpoint %s is corrupt: %s", checkpoint_id, exc)
                self._set_aside(self._path(checkpoint_id))
                raise RestoreFailed(
                    f"checkpoint {checkpoint_id} is corrupt and was kept aside: {exc}",
                    checkpoint_id=checkpoint_id,
                ) from exc

    async def _restore(self, checkpoint_id: str, on_progress: ProgressCallback | None) -> None:
        """Verify and restore one checkpoint. CorruptData propagates; every other failure is
        counted and raised as RestoreFailed."""
        where = str(self.checkpoint_dir)
        try:
            _id_to_micros(checkpoint_id)
        except ValueError as exc:
            self._restore_failures += 1
            raise RestoreFailed(str(exc), checkpoint_id=checkpoint_id) from None
        path = self._path(checkpoint_id)
        try:
            info, keys, values, expires = await asyncio.to_thread(
                _native.snapshot_read, path, require_prefix=self._prefix or None
            )
        except CorruptData:
            raise
        except FileNotFoundError:
            self._restore_failures += 1
            raise RestoreFailed(
                f"no checkpoint {checkpoint_id} in {where!r}", checkpoint_id=checkpoint_id
            ) from None
        except (OSError, ValueError) as exc:
            self._restore_failures += 1
            raise RestoreFailed(
                f"cannot restore checkpoint {checkpoint_id} from {where!r}: {exc}",
                checkpoint_id=checkpoint_id,
            ) from exc
        columns = ItemColumns(keys, values, expires)
        total = len(columns)
        if on_progress is not None:
            columns = _ProgressColumns(columns, on_progress)
        try:
            await self._backend.replace_prefix(self._prefix, columns)
        except (StateError, ValueError) as exc:
            self._restore_failures += 1
            backend_type = self._backend.backend_type
            raise RestoreFailed(
                f"restoring checkpoint {checkpoint_id} into the {backend_type} backend failed: {exc}",
                checkpoint_id=checkpoint_id,
            ) from exc
        if on_progress is not None:
            on_progress(total, total)
        self._restores += 1
        logger.info("restored checkpoint %s: %d entries", checkpoint_id, info.entry_count)

    # -- stats ---------------------------------------------------------------------------

    def stats(self) -> CheckpointStats:
        """A snapshot of the counters."""
        return CheckpointStats(
            checkpoints_created=self._created,
            checkpoint_failures=self._failures,
            restores=self._restores,
            restore_failures=self._restore_failures,
            last_checkpoint_time=self._last_time,
            last_checkpoint_duration_ms=self._last_duration_ms,
            total_bytes_checkpointed=self._total_bytes,
        )
