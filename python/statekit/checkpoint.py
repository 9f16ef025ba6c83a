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
        for bad in coordinator.last_restore.set_aside:  # newer ones that failed, kept as *.corrupt
            print("set aside", bad.checkpoint_id, bad.reason)
    async with coordinator:  # start(): a checkpoint every 30 s; on exit shutdown(): a final one
        ...  # run the job

From a shell: ``statekit checkpoint list | verify | restore`` (see :mod:`statekit.cli`).

What is checkpointed: every live key under the coordinator's prefix (a ``KeyValueStore``'s
``key_prefix``, or ``prefix=`` with a bare backend; empty: the whole backend), as raw bytes with
each key's absolute expiry. The file records that prefix. A restore replaces everything under
that prefix with the snapshot's content, minus the keys that have expired since; keys outside
the prefix are untouched.

Restore rules (they protect the other tenants of a shared store):

* The checkpoint's recorded prefix must be the coordinator's prefix. Restoring it under another
  prefix is refused unless ``force_prefix=True`` (every key must then be under the coordinator's
  prefix, which is what gets replaced).
* ``all_keys=True`` replaces every key of the backend, whatever the prefixes: the explicit
  opt-in for wiping keys outside the checkpoint's prefix.
* ``recorded_prefix=True`` replaces the keys under whatever prefix each checkpoint records (the
  CLI's default); a checkpoint that records none (or an empty one) then needs ``all_keys=True``.
* A checkpoint written by statekit 0.1 (format version 1) records no prefix: it is restored
  under the coordinator's prefix, and a coordinator without one (the whole backend) needs
  ``all_keys=True``.
* ``plan_restore()`` is a dry run: what a restore would write and delete, nothing changed.
* Before anything is written, the whole file is verified (header, SHA-256, signature, every
  record) and every key must be a valid statekit key (non-empty UTF-8, outside the reserved
  ``{statekit-`` namespace): a file that fails is never partially restored.

Integrity and authenticity: the SHA-256 in each file only detects accidents (a flipped bit, a
truncated write); anyone who can write the directory can recompute it. Set
``CheckpointOptions(signing_key=...)`` (16 bytes or more, kept secret) to sign every checkpoint
with HMAC-SHA256: files not signed with that key -- planted, altered, or unsigned -- are then
refused (and set aside like corrupt ones).

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

File format (``statekit._native.snapshot_write``; version 2, little-endian): an 80-byte header
(magic ``b"SKSNAP\\r\\n"``, format version u16, compression u8 (0 none, 1 zstd), flags u8 (bit
0: signed), extension length u32, created-at f64 unix seconds, entry count u64, uncompressed
size u64, payload size u64, SHA-256 of the payload, header bytes 0..48 and the extension), an
extension (the key prefix, and the HMAC-SHA256 tag when signed), then the payload: the record
batch (``(key, value, expires_at)`` records with a CRC-32; the layout is in
``statekit._native.snapshot_write``), as is or as one zstd frame. The id is the file name;
timestamp, entry count, size, version, prefix and checksum are all in the header, so there is
no sidecar file to keep in step. Version-1 files (no extension) are still read.

Only regular files named exactly ``ckpt-<valid UTC time>.ckpt`` are checkpoints: symlinks,
FIFOs, directories and names with an impossible date are ignored by restores and retention and
reported by ``scan_checkpoints`` (and ``statekit checkpoint list``) as unreadable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from statekit import _native
from statekit._utils.durations import to_seconds
from statekit.backends.base import RESERVED_KEY_PREFIX, ItemColumns, StateBackend
from statekit.backends.memory import MemoryStateBackend
from statekit.errors import CheckpointFailed, ConfigError, CorruptData, RestoreFailed, StateError
from statekit.store import KeyValueStore

__all__ = [
    "CHECKPOINT_SUFFIX",
    "CheckpointCoordinator",
    "CheckpointInfo",
    "CheckpointOptions",
    "CheckpointStats",
    "ProgressCallback",
    "RestorePlan",
    "RestoreResult",
    "SetAside",
    "is_checkpoint_id",
    "read_checkpoint_info",
    "scan_checkpoints",
    "verify_checkpoint",
]

logger = logging.getLogger("statekit.checkpoint")

CHECKPOINT_SUFFIX: Final = ".ckpt"
CORRUPT_SUFFIX: Final = ".corrupt"
_ID_PREFIX: Final = "ckpt-"
_ID_TIME_FORMAT: Final = "%Y%m%dT%H%M%S.%fZ"
# ASCII digits only (\d would also match other scripts' digits), the whole name.
_ID_RE: Final = re.compile(r"ckpt-([0-9]{8}T[0-9]{6}\.[0-9]{6}Z)")
#: Shortest ``signing_key`` accepted, in bytes.
MIN_SIGNING_KEY_LEN: Final = 16
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
        signing_key: a secret of at least 16 bytes: every checkpoint is signed with
            HMAC-SHA256 under it, and restores and verifications refuse any file that is not
            (unsigned, altered, planted by someone who can write the directory but does not
            hold the key). Without it, the SHA-256 in each file only detects accidents. Never
            shown in ``repr``.

    Example::

        CheckpointOptions("/var/lib/job/checkpoints", max_checkpoints=5, min_interval=timedelta(seconds=30))
    """

    checkpoint_dir: Path
    max_checkpoints: int
    compress: bool
    min_interval: float
    compression_level: int | None
    signing_key: bytes | None = field(default=None, repr=False)

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str],
        *,
        max_checkpoints: int = 10,
        compress: bool = True,
        min_interval: float | timedelta = 10.0,
        compression_level: int | None = None,
        signing_key: bytes | None = None,
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
        if signing_key is not None and (
            not isinstance(signing_key, bytes) or len(signing_key) < MIN_SIGNING_KEY_LEN
        ):
            # The message never shows the key itself.
            raise ConfigError(
                f"signing_key must be None or bytes of at least {MIN_SIGNING_KEY_LEN} bytes, got "
                + (
                    f"{len(signing_key)} bytes"
                    if isinstance(signing_key, bytes)
                    else type(signing_key).__name__
                )
            )
        object.__setattr__(self, "compression_level", compression_level)
        object.__setattr__(self, "signing_key", signing_key)


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
    #: Checkpoint files found unusable by restores and renamed to ``*.corrupt``.
    checkpoints_set_aside: int = 0

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
    #: The key prefix the checkpoint was taken from; None for a version-1 file (not recorded).
    prefix: str | None = None
    #: Whether the file carries an HMAC-SHA256 signature (checked when a signing key is set).
    signed: bool = False
    #: Why the file is not usable (``list_checkpoints(include_damaged=True)``); None when sound.
    damaged: str | None = None


@dataclass(frozen=True, slots=True)
class SetAside:
    """A checkpoint a restore found unusable and renamed to ``*.corrupt``."""

    checkpoint_id: str
    #: Where the file is now; None if it could not be renamed (the error was logged).
    path: Path | None
    #: Why it was unusable.
    reason: str


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What the last ``restore`` / ``restore_latest`` did (``CheckpointCoordinator.last_restore``)."""

    #: The checkpoint restored; None if none could be.
    checkpoint_id: str | None
    #: Newer checkpoints that failed (any failure: checksum, signature, header, decoding, invalid
    #: key, truncation, unreadable file), newest first, each renamed to ``*.corrupt``.
    set_aside: tuple[SetAside, ...] = ()
    #: The prefix whose keys were replaced ("" = every key); None if nothing was restored.
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What a restore would do (``CheckpointCoordinator.plan_restore``); nothing was changed."""

    checkpoint_id: str
    #: The prefix recorded in the checkpoint; None for a version-1 file.
    recorded_prefix: str | None
    #: Every key under this prefix would be replaced ("" = every key of the backend).
    scope: str
    #: Entries that would be written (those not expired yet).
    to_write: int
    #: Keys under ``scope`` that exist now and are not in the checkpoint: they would be deleted.
    to_delete: int
    #: Entries of the checkpoint that have expired since, and would be skipped.
    expired: int
    #: Newer checkpoints that a real restore would set aside, newest first (nothing was renamed).
    unusable: tuple[SetAside, ...] = ()


def is_checkpoint_id(value: object) -> bool:
    """Whether ``value`` is exactly a checkpoint id (``ckpt-YYYYmmddTHHMMSS.ffffffZ``, a real
    UTC time): never a path, never ``..``."""
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        return False
    try:
        _id_to_micros(value)
    except ValueError:
        return False
    return True


def _id_to_micros(checkpoint_id: str) -> int:
    match = _ID_RE.fullmatch(checkpoint_id)
    if match is None:
        raise ValueError(f"{checkpoint_id!r} is not a checkpoint id (ckpt-YYYYmmddTHHMMSS.ffffffZ)")
    when = datetime.strptime(match.group(1), _ID_TIME_FORMAT).replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(microseconds=1)


def _micros_to_id(micros: int) -> str:
    return _ID_PREFIX + (_EPOCH + timedelta(microseconds=micros)).strftime(_ID_TIME_FORMAT)


def _list_directory(directory: Path) -> tuple[list[str], list[tuple[Path, CorruptData]]]:
    """``(ids, ignored)``: the ids of the checkpoint files in ``directory``, oldest first (none
    if it does not exist), and the entries named like checkpoints that are not: a symlink, FIFO,
    directory..., or an impossible date (``ckpt-20261399T...``), each with the reason.

    Only ``lstat`` is used (``DirEntry.is_file(follow_symlinks=False)``): nothing is opened, so
    a FIFO cannot block and a symlink cannot lead outside the directory.
    """
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return [], []
    ids: list[str] = []
    ignored: list[tuple[Path, CorruptData]] = []
    for entry in entries:
        if not entry.name.endswith(CHECKPOINT_SUFFIX):
            continue
        checkpoint_id = entry.name.removesuffix(CHECKPOINT_SUFFIX)
        if _ID_RE.fullmatch(checkpoint_id) is None:
            continue  # not named like a checkpoint at all: not ours to report
        path = Path(entry.path)
        if not is_checkpoint_id(checkpoint_id):
            ignored.append((path, CorruptData(f"{entry.name}: not a valid checkpoint id (impossible date)")))
            continue
        try:
            regular = entry.is_file(follow_symlinks=False)
        except OSError as exc:  # vanished or unreadable entry
            ignored.append((path, CorruptData(f"{entry.name}: cannot stat it: {exc}")))
            continue
        if not regular:
            ignored.append((path, CorruptData(f"{entry.name}: {_kind(path)}, not a regular file; ignored")))
            continue
        ids.append(checkpoint_id)
    return sorted(ids), sorted(ignored, key=lambda item: item[0].name)


def _kind(path: Path) -> str:
    try:
        mode = path.lstat().st_mode
    except OSError:
        return "unknown"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a special file"


def _checkpoint_ids(directory: Path) -> list[str]:
    """Ids of the checkpoint files in ``directory``, oldest first (empty if it does not exist):
    regular files named exactly ``<id>.ckpt`` with a valid id, nothing else."""
    return _list_directory(directory)[0]


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Describe one checkpoint file from its header (checked for shape and size, not hashed).

    Raises:
        CorruptData: the file is not a checkpoint (or not a regular file), or its header is
            damaged or its size wrong.
        OSError: the file cannot be read.
    """
    path = Path(path)
    info = _native.snapshot_info(path)
    return _info(path, info)


def verify_checkpoint(path: str | os.PathLike[str], *, signing_key: bytes | None = None) -> CheckpointInfo:
    """Fully verify one checkpoint file (header, SHA-256, every record) without restoring it.

    The SHA-256 only detects accidents. With ``signing_key``, the HMAC-SHA256 signature is
    verified too, which detects tampering: an unsigned file, or one signed with another key,
    is refused.

    Raises:
        CorruptData: the file is truncated, altered, not signed with ``signing_key``, or not a
            checkpoint (the message says which).
        ConfigError: ``signing_key`` is shorter than 16 bytes.
        OSError: the file cannot be read.
    """
    path = Path(path)
    _check_signing_key(signing_key)
    return _info(path, _native.snapshot_verify(path, deep=True, signing_key=signing_key))


def _check_signing_key(signing_key: bytes | None) -> None:
    if signing_key is not None and (
        not isinstance(signing_key, bytes) or len(signing_key) < MIN_SIGNING_KEY_LEN
    ):
        raise ConfigError(f"signing_key must be None or bytes of at least {MIN_SIGNING_KEY_LEN} bytes")


def _info(path: Path, info: _native.SnapshotInfo) -> CheckpointInfo:
    try:
        timestamp = datetime.fromtimestamp(info.created_at, UTC)
    except (OverflowError, OSError, ValueError) as exc:  # the Rust reader already range-checks it
        raise CorruptData(f"{path}: creation time {info.created_at!r} is out of range") from exc
    return CheckpointInfo(
        id=path.name.removesuffix(CHECKPOINT_SUFFIX),
        path=path,
        timestamp=timestamp,
        entry_count=info.entry_count,
        size=info.file_size,
        version=info.version,
        checksum=info.checksum,
        compression=info.compression,
        uncompressed_size=info.uncompressed_size,
        prefix=info.prefix,
        signed=info.signed,
    )


def scan_checkpoints(
    directory: str | os.PathLike[str],
) -> tuple[list[CheckpointInfo], list[tuple[Path, StateError | OSError]]]:
    """Every checkpoint file in ``directory``, oldest first, read from the headers.

    Returns ``(readable, unreadable)``: the files whose header is sound, and the damaged ones
    with the error that describes them (``CorruptData`` or ``OSError``): a damaged header, and
    entries named like checkpoints that are not regular files or whose id is an impossible
    date (those are never opened). Nothing is hashed (see ``CheckpointCoordinator.verify``);
    nothing raises for a damaged file.
    """
    directory = Path(directory)
    readable: list[CheckpointInfo] = []
    ids, ignored = _list_directory(directory)
    unreadable: list[tuple[Path, StateError | OSError]] = list(ignored)
    for checkpoint_id in ids:
        path = directory / (checkpoint_id + CHECKPOINT_SUFFIX)
        try:
            readable.append(read_checkpoint_info(path))
        except (CorruptData, OSError) as exc:
            unreadable.append((path, exc))
    unreadable.sort(key=lambda item: item[0].name)
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
        self._set_aside_count = 0
        self._last_restore: RestoreResult | None = None

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
        options = self._options
        try:
            checkpoint_id, micros = self._next_id()
        except (OverflowError, ValueError) as exc:
            # A file named like a checkpoint of year 9999 leaves no later id to take.
            self._failures += 1
            raise CheckpointFailed(
                f"no checkpoint id is left after the newest one in {str(self.checkpoint_dir)!r}: {exc}"
            ) from exc
        path = self._path(checkpoint_id)
        try:
            await asyncio.to_thread(self.checkpoint_dir.mkdir, parents=True, exist_ok=True)
            items = await self._backend.export_items(self._prefix)
            # Columns go over as three explicit lists, read by index; other items as tuples.
            records = (
                (items.keys, items.values, items.expires_at) if isinstance(items, ItemColumns) else items
            )
            info = await asyncio.to_thread(
                _native.snapshot_write,
                path,
                records,
                compress=options.compress,
                level=options.compression_level,
                created_at=micros / 1_000_000,
                prefix=self._prefix,
                signing_key=options.signing_key,
                # Read the file back before it replaces anything: what is on disk must hash
                # (and be signed) as written.
                verify=True,
            )
            del items, records
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
        """The newest id in the directory, of any file whose name starts with one (corrupt
        ones included, so an id is never reused); names with an impossible date are skipped."""
        try:
            names = os.listdir(self.checkpoint_dir)
        except OSError:
            return None  # missing (created by the write) or unusable (the write will say why)
        latest: int | None = None
        for name in names:
            match = _ID_RE.match(name)
            if match is None:
                continue
            try:
                micros = _id_to_micros(match.group(0))
            except ValueError:
                continue  # ckpt-20261399T...: not an id
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
        while os.path.lexists(target):  # lexists: a dangling symlink is not overwritten either
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

    def list_checkpoints(self, *, include_damaged: bool = False) -> list[CheckpointInfo]:
        """The checkpoints in the directory, oldest first, described by their headers.

        Only regular files named exactly ``<id>.ckpt`` are checkpoints. Files whose header is
        damaged, and entries named like checkpoints that are not (a symlink, FIFO, directory,
        an impossible date), never raise: they are logged (a warning each) and left out, or with
        ``include_damaged=True`` listed, without a log, as ``CheckpointInfo(damaged=<why>)``
        (their other fields zero, the timestamp from the id when it has one): the caller has the
        reason. ``verify()`` hashes a file; ``restore*()`` always does.
        """
        readable, unreadable = scan_checkpoints(self.checkpoint_dir)
        if not include_damaged:
            for path, exc in unreadable:
                logger.warning("skipping unreadable checkpoint %s: %s", path.name, exc)
            return readable
        damaged = [_damaged_info(path, exc) for path, exc in unreadable]
        return sorted([*readable, *damaged], key=lambda info: info.path.name)

    async def verify(self, checkpoint_id: str) -> CheckpointInfo:
        """Fully verify one checkpoint (header, SHA-256, every record, and the signature when
        ``options.signing_key`` is set), without restoring it.

        Raises:
            ConfigError: ``checkpoint_id`` is not a checkpoint id (a path, ``..``...).
            CorruptData: the file is truncated, altered, not signed with the key, or not a
                checkpoint.
            FileNotFoundError: there is no such checkpoint.
        """
        if not is_checkpoint_id(checkpoint_id):
            raise ConfigError(f"{checkpoint_id!r} is not a checkpoint id (ckpt-YYYYmmddTHHMMSS.ffffffZ)")
        return await asyncio.to_thread(
            verify_checkpoint, self._path(checkpoint_id), signing_key=self._options.signing_key
        )

    # -- restore -------------------------------------------------------------------------

    @property
    def last_restore(self) -> RestoreResult | None:
        """What the last ``restore`` / ``restore_latest`` did: the checkpoint restored (None if
        none could be) and the checkpoints set aside on the way. None before the first."""
        return self._last_restore

    async def restore_latest(
        self,
        *,
        on_progress: ProgressCallback | None = None,
        all_keys: bool = False,
        force_prefix: bool = False,
        recorded_prefix: bool = False,
    ) -> str:
        """Restore the newest checkpoint that verifies.

        A newer checkpoint that fails for any reason tied to its file -- checksum or signature
        mismatch, damaged header, truncation, undecodable records, an invalid key, an unreadable
        file -- is logged, counted as a restore failure, renamed to ``*.corrupt``, and the next
        older one is tried. Nothing is written until a checkpoint has fully verified. The ones
        set aside are reported in ``last_restore.set_aside`` (and counted in
        ``stats().checkpoints_set_aside``).

        A refusal by the restore rules (a different recorded prefix, see the module docs) or a
        backend failure is not a fault of the file: it is raised at once, nothing set aside.

        Args:
            on_progress: called as ``on_progress(done, total)`` while items are written
                (by backends that write item by item; always once at the end).
            all_keys: replace every key of the backend, not only those under the prefix.
            force_prefix: restore a checkpoint taken from another prefix under this
                coordinator's prefix (every key must be under it).
            recorded_prefix: replace the keys under the prefix each checkpoint records,
                whatever the coordinator's prefix (what ``statekit checkpoint restore`` does
                without ``--key-prefix``); a checkpoint that records none, or an empty one,
                then needs ``all_keys=True``.

        Returns:
            The id of the restored checkpoint.

        Raises:
            RestoreFailed: there is no checkpoint, none verifies, the restore rules refuse it,
                or the restore itself failed (backend error). An empty directory is not counted
                as a restore failure (it is the first run).
        """
        async with self._lock:
            try:
                ids = await asyncio.to_thread(_checkpoint_ids, self.checkpoint_dir)
            except OSError as exc:
                self._restore_failures += 1
                raise RestoreFailed(
                    f"cannot list checkpoints in {str(self.checkpoint_dir)!r}: {exc}"
                ) from exc
            if not ids:
                raise RestoreFailed(f"no checkpoint to restore in {str(self.checkpoint_dir)!r}")
            set_aside: list[SetAside] = []
            self._last_restore = RestoreResult(None)
            for checkpoint_id in reversed(ids):
                try:
                    loaded = await self._load(
                        checkpoint_id,
                        _Rules(all_keys, force_prefix, recorded_prefix),
                        bulk=self._bulk(on_progress),
                    )
                except _Unusable as bad:
                    set_aside.append(self._put_aside(checkpoint_id, bad.error))
                    self._last_restore = RestoreResult(None, tuple(set_aside))
                    logger.error(
                        "checkpoint %s is unusable, trying an older one: %s", checkpoint_id, bad.error
                    )
                    continue
                await self._apply(loaded, on_progress)
                self._last_restore = RestoreResult(checkpoint_id, tuple(set_aside), loaded.scope)
                if set_aside:
                    logger.warning(
                        "restored %s after setting aside %d unusable newer checkpoint(s): %s",
                        checkpoint_id,
                        len(set_aside),
                        ", ".join(item.checkpoint_id for item in set_aside),
                    )
                return checkpoint_id
            raise RestoreFailed(
                f"no valid checkpoint in {str(self.checkpoint_dir)!r}: all {len(set_aside)} failed "
                f"verification and were kept aside as *{CORRUPT_SUFFIX}"
            )

    async def restore(
        self,
        checkpoint_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        all_keys: bool = False,
        force_prefix: bool = False,
        recorded_prefix: bool = False,
    ) -> None:
        """Restore one checkpoint, after verifying it completely (see ``restore_latest`` for
        ``all_keys``, ``force_prefix`` and ``recorded_prefix``, and the module docs for the rules).

        A file that fails (checksum, signature, header, records, invalid key) is counted as a
        restore failure and renamed to ``*.corrupt`` (``last_restore.set_aside``); nothing is
        written.

        Raises:
            RestoreFailed: not a checkpoint id, no such checkpoint, it does not verify, the
                restore rules refuse it, or the restore failed.
        """
        async with self._lock:
            self._last_restore = RestoreResult(None)
            try:
                loaded = await self._load(
                    checkpoint_id,
                    _Rules(all_keys, force_prefix, recorded_prefix),
                    bulk=self._bulk(on_progress),
                )
            except _Unusable as bad:
                aside = self._put_aside(checkpoint_id, bad.error)
                self._last_restore = RestoreResult(None, (aside,))
                logger.error("checkpoint %s is unusable: %s", checkpoint_id, bad.error)
                kept = f" as {aside.path.name}" if aside.path is not None else ""
                raise RestoreFailed(
                    f"checkpoint {checkpoint_id} is corrupt and was kept aside{kept}: {bad.error}",
                    checkpoint_id=checkpoint_id,
                ) from bad.error
            await self._apply(loaded, on_progress)
            self._last_restore = RestoreResult(checkpoint_id, (), loaded.scope)

    async def plan_restore(
        self,
        checkpoint_id: str | None = None,
        *,
        all_keys: bool = False,
        force_prefix: bool = False,
        recorded_prefix: bool = False,
    ) -> RestorePlan:
        """A dry run of ``restore(checkpoint_id)`` (or of ``restore_latest()`` when None): the
        checkpoint is fully verified and the restore rules applied, then the keys that would be
        written and deleted are counted. Nothing is written, deleted or renamed.

        Raises:
            RestoreFailed: as the real restore would (unusable checkpoints are only reported,
                in ``RestorePlan.unusable``, when looking for the newest valid one).
        """
        async with self._lock:
            if checkpoint_id is not None:
                candidates = [checkpoint_id]
            else:
                try:
                    candidates = list(reversed(await asyncio.to_thread(_checkpoint_ids, self.checkpoint_dir)))
                except OSError as exc:
                    raise RestoreFailed(
                        f"cannot list checkpoints in {str(self.checkpoint_dir)!r}: {exc}"
                    ) from exc
                if not candidates:
                    raise RestoreFailed(f"no checkpoint to restore in {str(self.checkpoint_dir)!r}")
            unusable: list[SetAside] = []
            for candidate in candidates:
                try:
                    loaded = await self._load(
                        candidate, _Rules(all_keys, force_prefix, recorded_prefix), counted=False
                    )
                except _Unusable as bad:
                    if checkpoint_id is not None:
                        raise RestoreFailed(
                            f"checkpoint {candidate} is unusable: {bad.error}", checkpoint_id=candidate
                        ) from bad.error
                    unusable.append(SetAside(candidate, None, str(bad.error)))
                    continue
                return await self._plan(loaded, tuple(unusable))
            raise RestoreFailed(
                f"no valid checkpoint in {str(self.checkpoint_dir)!r}: "
                f"all {len(unusable)} failed verification"
            )

    def _bulk(self, on_progress: ProgressCallback | None) -> bool:
        """Whether a restore hands the backend a dict for a bulk load: the memory backend
        can (``_replace_prefix_loaded``), when no progress is reported item by item."""
        return on_progress is None and isinstance(self._backend, MemoryStateBackend)

    async def _plan(self, loaded: _Loaded, unusable: tuple[SetAside, ...]) -> RestorePlan:
        assert isinstance(loaded.columns, ItemColumns)  # plan_restore never loads in bulk
        now = time.time()
        expires = loaded.columns.expires_at
        if expires is None:
            live = set(loaded.columns.keys)
            expired = 0
        else:
            live = {
                key for key, at in zip(loaded.columns.keys, expires, strict=True) if at is None or at > now
            }
            expired = len(loaded.columns) - len(live)
        try:
            existing = await self._backend.list_keys(loaded.scope)
        except (StateError, ValueError) as exc:
            raise RestoreFailed(
                f"cannot list the keys under {loaded.scope!r} of the "
                f"{self._backend.backend_type} backend: {exc}",
                checkpoint_id=loaded.checkpoint_id,
            ) from exc
        to_delete = sum(1 for key in existing if key not in live)
        return RestorePlan(
            checkpoint_id=loaded.checkpoint_id,
            recorded_prefix=loaded.info.prefix,
            scope=loaded.scope,
            to_write=len(live),
            to_delete=to_delete,
            expired=expired,
            unusable=unusable,
        )

    def _put_aside(self, checkpoint_id: str, error: BaseException) -> SetAside:
        """Count a checkpoint's failure and rename it to ``*.corrupt``."""
        self._restore_failures += 1
        target = self._set_aside(self._path(checkpoint_id))
        if target is not None:
            self._set_aside_count += 1
        return SetAside(checkpoint_id, target, str(error))

    def _scope(self, checkpoint_id: str, recorded: str | None, rules: _Rules) -> str:
        """The prefix a restore replaces, or RestoreFailed when the rules refuse it."""
        if rules.all_keys:
            return ""
        if rules.recorded_prefix:
            if not recorded:
                what = (
                    "does not record its key prefix (statekit 0.1)"
                    if recorded is None
                    else "records no key prefix"
                )
                raise RestoreFailed(
                    f"checkpoint {checkpoint_id} {what}: it holds every key of the store it was taken from, "
                    "and restoring it would replace EVERY key of the target. Pass all_keys=True (CLI: "
                    "--all-keys) to confirm, or a prefix to replace only the keys under it "
                    "(CLI: --key-prefix)",
                    checkpoint_id=checkpoint_id,
                )
            return recorded
        prefix = self._prefix
        if recorded is None:
            if prefix == "":
                raise RestoreFailed(
                    f"checkpoint {checkpoint_id} was written by statekit 0.1 and does not record its key "
                    "prefix, and this coordinator has none: restoring it would replace every key of the "
                    "backend. Restore it through a store with a key_prefix (or prefix=), or pass "
                    "all_keys=True (CLI: --all-keys) to replace every key",
                    checkpoint_id=checkpoint_id,
                )
            return prefix
        if recorded != prefix and not rules.force_prefix:
            raise RestoreFailed(
                f"checkpoint {checkpoint_id} was taken from key prefix {recorded!r}, but this coordinator "
                f"restores key prefix {prefix!r}: refusing to replace another prefix's keys. Use a "
                f"coordinator (or store) with prefix {recorded!r}, or pass force_prefix=True to restore "
                f"it under {prefix!r} anyway (CLI: --force-prefix), or all_keys=True to replace every key of "
                "the backend (CLI: --all-keys)",
                checkpoint_id=checkpoint_id,
            )
        return prefix

    async def _load(
        self, checkpoint_id: str, rules: _Rules, *, counted: bool = True, bulk: bool = False
    ) -> _Loaded:
        """Verify one checkpoint completely and decide what it replaces; writes nothing.

        With ``bulk``, the content is read as a dict for the backend's bulk load (see
        :meth:`_bulk`); the checks are the same.

        Raises:
            _Unusable: the file itself failed (CorruptData: checksum, signature, header,
                records, invalid key, not a regular file; or OSError reading it).
            RestoreFailed: not an id, no such file, or refused by the rules (counted as a
                restore failure when ``counted``).
        """

        def refuse(message: str, cause: BaseException | None = None) -> RestoreFailed:
            if counted:
                self._restore_failures += 1
            error = RestoreFailed(message, checkpoint_id=checkpoint_id)
            error.__cause__ = cause
            return error

        where = str(self.checkpoint_dir)
        if not is_checkpoint_id(checkpoint_id):
            raise refuse(f"{checkpoint_id!r} is not a checkpoint id (ckpt-YYYYmmddTHHMMSS.ffffffZ)")
        path = self._path(checkpoint_id)
        key = self._options.signing_key
        try:
            header = await asyncio.to_thread(_native.snapshot_info, path)
        except FileNotFoundError:
            raise refuse(f"no checkpoint {checkpoint_id} in {where!r}") from None
        except (CorruptData, OSError) as exc:
            raise _Unusable(exc) from exc
        try:
            scope = self._scope(checkpoint_id, header.prefix, rules)
        except RestoreFailed as exc:
            raise refuse(str(exc)) from None
        try:
            # Everything is checked before a single key is written: header, SHA-256, signature,
            # every record, and every key (valid statekit key, under the scope).
            if bulk:
                info, items, expiries, value_bytes = await asyncio.to_thread(
                    _native.snapshot_load,
                    path,
                    require_prefix=scope or None,
                    reserved_prefix=RESERVED_KEY_PREFIX,
                    signing_key=key,
                )
                content: ItemColumns | _Mapping = _Mapping(items, expiries, value_bytes)
            else:
                info, keys, values, expires = await asyncio.to_thread(
                    _native.snapshot_read,
                    path,
                    require_prefix=scope or None,
                    reserved_prefix=RESERVED_KEY_PREFIX,
                    signing_key=key,
                )
                content = ItemColumns(keys, values, expires)
        except FileNotFoundError:
            raise refuse(f"no checkpoint {checkpoint_id} in {where!r}") from None
        except (CorruptData, OSError) as exc:
            raise _Unusable(exc) from exc
        except ValueError as exc:
            # Keys outside the scope: only possible when forcing another prefix or for a
            # version-1 file; the file is sound, the request is not.
            raise refuse(f"cannot restore checkpoint {checkpoint_id} from {where!r}: {exc}", exc) from exc
        if info.checksum != header.checksum:
            # Replaced between the two reads: treat the newer content as unverified.
            raise _Unusable(CorruptData(f"checkpoint {checkpoint_id} changed while it was being read"))
        return _Loaded(checkpoint_id, info, scope, content)

    async def _apply(self, loaded: _Loaded, on_progress: ProgressCallback | None) -> None:
        """Write a verified checkpoint into the backend."""
        content = loaded.columns
        try:
            if isinstance(content, _Mapping):
                total = len(content.items)
                load = self._backend._replace_prefix_loaded  # type: ignore[attr-defined]
                await load(loaded.scope, content.items, content.expires, content.value_bytes)
            else:
                total = len(content)
                columns = content if on_progress is None else _ProgressColumns(content, on_progress)
                await self._backend.replace_prefix(loaded.scope, columns)
        except (StateError, ValueError) as exc:
            self._restore_failures += 1
            backend_type = self._backend.backend_type
            raise RestoreFailed(
                f"restoring checkpoint {loaded.checkpoint_id} into the {backend_type} backend failed: {exc}",
                checkpoint_id=loaded.checkpoint_id,
            ) from exc
        if on_progress is not None:
            on_progress(total, total)
        self._restores += 1
        logger.info(
            "restored checkpoint %s: %d entries under %r",
            loaded.checkpoint_id,
            loaded.info.entry_count,
            loaded.scope,
        )

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
            checkpoints_set_aside=self._set_aside_count,
        )


@dataclass(frozen=True, slots=True)
class _Rules:
    """The restore options that decide what a restore may replace (see ``restore_latest``)."""

    all_keys: bool
    force_prefix: bool
    recorded_prefix: bool


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A fully verified checkpoint, ready to be written."""

    checkpoint_id: str
    info: _native.SnapshotInfo
    scope: str
    columns: ItemColumns | _Mapping


@dataclass(frozen=True, slots=True)
class _Mapping:
    """A verified checkpoint's content read for a bulk load (``_native.snapshot_load``)."""

    items: dict[str, bytes]
    expires: dict[str, float] | None
    value_bytes: int


class _Unusable(Exception):  # an internal signal: never escapes the coordinator
    """The checkpoint file itself failed: set it aside and try an older one."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _damaged_info(path: Path, error: BaseException) -> CheckpointInfo:
    """A ``CheckpointInfo`` for a damaged file: what the name and ``lstat`` tell, and why."""
    checkpoint_id = path.name.removesuffix(CHECKPOINT_SUFFIX)
    try:
        timestamp = _EPOCH + timedelta(microseconds=_id_to_micros(checkpoint_id))
    except ValueError:
        timestamp = _EPOCH
    try:
        size = path.lstat().st_size
    except OSError:
        size = 0
    return CheckpointInfo(
        id=checkpoint_id,
        path=path,
        timestamp=timestamp,
        entry_count=0,
        size=size,
        version=0,
        checksum="",
        compression="",
        uncompressed_size=0,
        damaged=str(error),
    )
