"""Run-state files and failure logs for incremental jobs that process numbered runs.

A run-state file is a JSON object holding two watermarks (plus any other fields you keep
there, which every function here preserves)::

    {"last_contiguous_run": 19500, "last_attempted_run": 19550, "timestamp": "2025-10-24T10:30:00+00:00"}

* ``last_contiguous_run``: every run up to here succeeded (no gaps);
* ``last_attempted_run``: the highest run ever attempted, successful or not.

A failure log is a text file with one run number per line.

Guarantees beyond the plain read/compute/write:

* :func:`write_state` is atomic and durable (temporary file in the same directory, fsync,
  rename, fsync of the directory): a crash leaves the old state or the new, never a torn file.
* A corrupt state file is never overwritten: :func:`read_state` moves it aside to
  ``<name>.corrupt-<UTC timestamp>``, logs a warning and returns ``{}``.
* The update functions hold an exclusive ``flock`` on the state file's directory while they
  read, compute and write, so updates from several processes are never lost. The watermark
  arithmetic runs in Rust (``statekit._native``), so millions of run numbers take well under
  a second.
* :func:`append_to_failure_log` appends from several processes never interleave: each call
  writes its lines with one ``O_APPEND`` write under an exclusive ``flock``.

Everything here is synchronous, as run-state files are used from plain scripts and CLIs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from statekit import _native
from statekit._utils.atomic import atomic_write_bytes, fsync_directory
from statekit.errors import CorruptData, StorageError

__all__ = [
    "append_to_failure_log",
    "get_incremental_start_run",
    "parse_run_records_from_file",
    "read_state",
    "update_attempted_run_state",
    "update_contiguous_run_state",
    "write_failure_log",
    "write_state",
]

logger = logging.getLogger(__name__)

LAST_CONTIGUOUS: Final = "last_contiguous_run"
LAST_ATTEMPTED: Final = "last_attempted_run"
TIMESTAMP: Final = "timestamp"

_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
_RUN_LINE: Final = re.compile(r"[+-]?[0-9]+")

PathLike = str | os.PathLike[str]


# -- state files ---------------------------------------------------------------------------


def read_state(state_file: PathLike) -> dict[str, Any]:
    """Read a run-state file.

    Args:
        state_file: path to the JSON state file.

    Returns:
        The JSON object in the file, or ``{}`` when the file does not exist, cannot be read
        (logged as an error) or is corrupt. A corrupt file (not UTF-8 JSON, or not a JSON
        object) is first moved aside to ``<name>.corrupt-<timestamp>`` next to it, with a
        warning, so its content is never lost.

    Example::

        state = read_state(Path("/var/run_record_archiver/import_state.json"))
        # {'last_contiguous_run': 19500, 'last_attempted_run': 19550}
    """
    state = _load_state(Path(state_file), dir_locked=False)
    return {} if state is None else state


def write_state(state_file: PathLike, state: dict[str, Any]) -> bool:
    """Write ``state`` to ``state_file`` as JSON, atomically; parent directories are created.

    Args:
        state_file: path to the JSON state file.
        state: a JSON-serialisable dict.

    Returns:
        True when the new state is on disk. False when it could not be written (the reason is
        logged as an error); the previous file, if any, is then left untouched and no
        temporary file remains.
    """
    path = Path(state_file)
    try:
        data = _encode_state(state)
    except (TypeError, ValueError) as exc:
        logger.error("cannot write state file %s: the state is not JSON-serialisable (%s)", path, exc)
        return False
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        logger.error(
            "cannot write state file %s: %s; check that the directory exists, is writable and has free space",
            path,
            exc,
        )
        return False
    return True


def update_contiguous_run_state(state_file: PathLike, successful_runs: Iterable[int]) -> None:
    """Advance ``last_contiguous_run`` through the runs that extend it without a gap.

    The watermark moves from its current value ``c`` (0 when absent) to ``c + k`` where
    ``c + 1 .. c + k`` all appear in ``successful_runs`` (any order, duplicates allowed) and
    ``c + k + 1`` does not. Runs beyond the first gap are not remembered: report them again
    once the gap is filled. Every other field of the file is kept; ``timestamp`` is set when
    the watermark changes. The file is only written when the watermark changes.

    Args:
        state_file: path to the JSON state file.
        successful_runs: run numbers (ints) that succeeded.

    Raises:
        CorruptData: the file's ``last_contiguous_run`` is not an integer.
        StorageError: the new state could not be written.

    Example::

        # last_contiguous_run = 103
        update_contiguous_run_state(state_file, [104, 106, 107])
        # last_contiguous_run = 104 (stops at the gap before 106)
    """
    runs = _as_run_list(successful_runs, "successful_runs")
    _update_watermark(
        Path(state_file), LAST_CONTIGUOUS, lambda current: _native.last_contiguous_run(current, runs)
    )


def update_attempted_run_state(state_file: PathLike, attempted_runs: Iterable[int]) -> None:
    """Raise ``last_attempted_run`` to the highest run in ``attempted_runs``; it never decreases.

    Every other field of the file is kept; ``timestamp`` is set when the value changes. An
    empty list, or runs all at or below the current value, leave the file untouched.

    Args:
        state_file: path to the JSON state file.
        attempted_runs: run numbers (ints) attempted, successfully or not.

    Raises:
        CorruptData: the file's ``last_attempted_run`` is not an integer.
        StorageError: the new state could not be written.
    """
    runs = _as_run_list(attempted_runs, "attempted_runs")
    _update_watermark(
        Path(state_file), LAST_ATTEMPTED, lambda current: _native.max_attempted_run(current, runs)
    )


def get_incremental_start_run(state_file: PathLike) -> int:
    """The run an incremental pass starts from: ``max(last_contiguous_run, last_attempted_run)``.

    Missing fields count as 0, so a missing state file gives 0.

    Raises:
        CorruptData: a watermark in the file is not an integer.
    """
    path = Path(state_file)
    state = read_state(path)
    return max(_watermark(state, LAST_CONTIGUOUS, path), _watermark(state, LAST_ATTEMPTED, path))


# -- failure logs --------------------------------------------------------------------------


def parse_run_records_from_file(run_records_file: PathLike) -> list[int]:
    """Run numbers from a text file with one per line, in file order.

    Blank lines are skipped; lines that are not a (64-bit) integer are ignored with a
    warning that names the first of them. A missing file gives ``[]``.

    Raises:
        StorageError: the file exists but cannot be read.
    """
    path = Path(run_records_file)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        logger.debug("run records file %s does not exist; no runs", path)
        return []
    except OSError as exc:
        raise StorageError(
            f"cannot read run records file {str(path)!r}: {exc}; check its permissions",
            path=str(path),
        ) from exc
    runs: list[int] = []
    invalid: list[tuple[int, str]] = []
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        if _RUN_LINE.fullmatch(text):
            value = int(text)
            if _I64_MIN <= value <= _I64_MAX:
                runs.append(value)
                continue
        invalid.append((lineno, text))
    if invalid:
        lineno, text = invalid[0]
        logger.warning(
            "ignored %d invalid line(s) in %s (first: line %d: %r); each line must hold one run number",
            len(invalid),
            path,
            lineno,
            text[:80],
        )
    return runs


def append_to_failure_log(failure_log: PathLike, failed_runs: Iterable[int]) -> None:
    """Append run numbers to a failure log, one per line; the file and its parents are created.

    Safe from several processes and threads at once: each call takes an exclusive ``flock``
    on the log and writes all its lines with ``O_APPEND``, so lines of concurrent callers
    never interleave, and an append never lands in a log that :func:`write_failure_log` is
    replacing. If the log does not end with a newline (edited by hand), one is added first.
    The data is fsynced before returning. An empty ``failed_runs`` does nothing.

    Raises:
        StorageError: the log could not be written.
    """
    count, payload = _format_runs(failed_runs, "failed_runs")
    if not count:
        return
    path = Path(failure_log)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked_log(path, os.O_RDWR | os.O_APPEND | os.O_CREAT) as fd:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                payload = b"\n" + payload
            _write_all(fd, payload)
            os.fsync(fd)
    except OSError as exc:
        raise StorageError(
            f"cannot append {count} run(s) to failure log {str(path)!r}: {exc}; check that the "
            "directory is writable and has free space",
            path=str(path),
        ) from exc
    logger.info("appended %d run(s) to failure log %s", count, path)


def write_failure_log(failure_log: PathLike, failed_runs: Iterable[int]) -> None:
    """Replace a failure log's content with ``failed_runs``, one per line (used in recovery).

    The file is replaced atomically (never half-written), while holding the log's ``flock``
    so that concurrent :func:`append_to_failure_log` calls land either before the
    replacement (and are overwritten, as asked) or in the new file.

    Raises:
        StorageError: the log could not be written; its previous content is untouched.
    """
    count, payload = _format_runs(failed_runs, "failed_runs")
    path = Path(failure_log)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked_log(path, os.O_RDONLY | os.O_CREAT):
            atomic_write_bytes(path, payload)
    except OSError as exc:
        raise StorageError(
            f"cannot write failure log {str(path)!r}: {exc}; check that the directory is writable and has "
            "free space",
            path=str(path),
        ) from exc
    logger.info("wrote %d run(s) to failure log %s", count, path)


# -- internals -----------------------------------------------------------------------------


def _as_run_list(runs: Iterable[int], what: str) -> list[int] | tuple[int, ...]:
    """The runs as a list or tuple; the Rust kernel checks that each is a 64-bit int."""
    if isinstance(runs, str | bytes):
        raise TypeError(f"{what} must be a list of ints, got {type(runs).__name__}")
    return runs if isinstance(runs, list | tuple) else list(runs)


def _format_runs(runs: Iterable[int], what: str) -> tuple[int, bytes]:
    """``(count, b"run\\n" * count)`` for a failure log; every run must be an int."""
    lines = []
    for index, run in enumerate(_as_run_list(runs, what)):
        if isinstance(run, bool) or not isinstance(run, int):
            raise TypeError(f"{what}[{index}] must be an int, got {type(run).__name__}")
        lines.append(f"{run}\n")
    return len(lines), "".join(lines).encode("ascii")


def _encode_state(state: dict[str, Any]) -> bytes:
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    return (json.dumps(state, indent=2, allow_nan=False) + "\n").encode("utf-8")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _watermark(state: dict[str, Any], field: str, path: Path) -> int:
    value = state.get(field, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CorruptData(
            f"state file {str(path)!r} has {field}={value!r}, which is not an integer run number; "
            f"fix or remove that field"
        )
    return value


def _update_watermark(path: Path, field: str, compute: Callable[[int], int]) -> None:
    """Read, compute the new watermark with ``compute(current)``, write if it changed; under the dir lock."""
    with _directory_lock(path.parent):
        loaded = _load_state(path, dir_locked=True, strict=True)
        state = {} if loaded is None else loaded
        current = _watermark(state, field, path)
        new = compute(current)
        if new == current:
            return
        state[field] = new
        state[TIMESTAMP] = _now_iso()
        try:
            atomic_write_bytes(path, _encode_state(state))
        except OSError as exc:
            raise StorageError(
                f"cannot write state file {str(path)!r} ({field} {current} -> {new}): {exc}; check that "
                "the directory is writable and has free space",
                path=str(path),
            ) from exc
    logger.info("%s: %s %d -> %d", path, field, current, new)


def _load_state(path: Path, *, dir_locked: bool, strict: bool = False) -> dict[str, Any] | None:
    """The state in ``path``; None when missing or corrupt (a corrupt file is moved aside).

    An unreadable file gives None with an error logged, or, with ``strict`` (the update
    functions, which must not replace a file they could not read), a StorageError.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if strict:
            raise StorageError(
                f"cannot read state file {str(path)!r}: {exc}; it was left untouched. Check its permissions",
                path=str(path),
            ) from exc
        logger.error("cannot read state file %s: %s; check its permissions", path, exc)
        return None
    state = _decode_state(raw)
    if state is not None:
        return state
    if dir_locked:
        _move_aside(path, raw)
        return None
    # Re-check under the directory lock: a concurrent writer may have replaced the file already.
    with _directory_lock(path.parent):
        return _load_state(path, dir_locked=True)


def _decode_state(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _move_aside(path: Path, raw: bytes) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    suffix = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{suffix}")
        suffix += 1
    try:
        os.rename(path, aside)
        fsync_directory(path.parent)
    except OSError as exc:
        logger.error(
            "state file %s is corrupt (%d bytes) and could not be moved aside to %s: %s; treating it as "
            "empty, but the next write will replace it; copy it away by hand if its content matters",
            path,
            len(raw),
            aside,
            exc,
        )
        return
    logger.warning(
        "state file %s is corrupt (%d bytes, not a JSON object); kept it as %s and started from an empty "
        "state",
        path,
        len(raw),
        aside,
    )


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Exclusive flock on ``directory`` (created if missing): serialises read-modify-write of files in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise StorageError(
            f"cannot create or open directory {str(directory)!r} to lock it: {exc}; check the path and its "
            "permissions",
            path=str(directory),
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


@contextlib.contextmanager
def _locked_log(path: Path, flags: int) -> Iterator[int]:
    """Open ``path`` and hold an exclusive flock on the file currently at ``path``.

    :func:`write_failure_log` replaces the file by rename while holding the old file's lock, so
    after the lock is granted we check that the descriptor is still the file at ``path`` and
    reopen if it was replaced meanwhile.
    """
    while True:
        fd = os.open(path, flags, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                yield fd
                return
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
