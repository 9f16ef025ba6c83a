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
* A corrupt state file is never overwritten: every function here moves it aside to
  ``<name>.corrupt-<UTC timestamp>`` (a rename, so its bytes are kept exactly), logs a warning
  naming that file and the reason, and goes on from an empty state. *Corrupt* means anything
  that is not a valid run-state file: larger than :data:`MAX_STATE_FILE_BYTES`, not UTF-8,
  not strict JSON (``NaN``, ``Infinity``, numbers out of range, integers over 4,300 digits,
  a key given twice), nested deeper than :data:`MAX_STATE_DEPTH` levels, not a JSON object,
  or a watermark that is not an integer run number in ``0 .. 2**63 - 1`` (a string, a bool,
  a float, a negative number). :func:`write_state` refuses to write such a state, so a file
  it wrote always reads back. If the file cannot be moved aside, the update functions raise
  :class:`~statekit.errors.StorageError` rather than overwrite it.
* The update functions hold an exclusive ``flock`` on the state file's directory while they
  read, compute and write, so updates from several processes are never lost. The watermark
  arithmetic runs in Rust (``statekit._native``), so millions of run numbers take well under
  a second.
* :func:`append_to_failure_log` appends from several processes never interleave: each call
  writes its lines with one ``O_APPEND`` write under an exclusive ``flock``.
* A run-records file or failure log must be UTF-8 text of at most
  :data:`MAX_RUN_RECORDS_BYTES`: :func:`parse_run_records_from_file` raises
  :class:`~statekit.errors.CorruptData` for anything else (binary data, invalid UTF-8, NUL
  bytes, too large), and :func:`write_failure_log` refuses to replace such a file, so a data
  file given as a failure log by mistake is never lost.
* Only regular files are read: a FIFO or device at one of these paths raises
  :class:`~statekit.errors.StorageError` (or is logged by :func:`read_state`) instead of
  blocking forever.

Everything here is synchronous, as run-state files are used from plain scripts and CLIs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from statekit import _native
from statekit._utils.atomic import atomic_write_bytes, fsync_directory
from statekit.errors import CorruptData, StorageError

__all__ = [
    "MAX_RUN_RECORDS_BYTES",
    "MAX_STATE_DEPTH",
    "MAX_STATE_FILE_BYTES",
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
_RUN_LINE: Final = re.compile(r"[+-]?[0-9]{1,19}")  # longer cannot be a 64-bit run; int() stays cheap

#: A run-state file holds two watermarks and a few fields: anything larger is not one, and
#: reading it must not cost unbounded memory.
MAX_STATE_FILE_BYTES: Final = 4 * 1024 * 1024
#: JSON nesting a run-state file may have (the top-level object is level 1).
MAX_STATE_DEPTH: Final = 64
#: Largest run-records file / failure log read (about 8 million run lines).
MAX_RUN_RECORDS_BYTES: Final = 64 * 1024 * 1024
# Longest JSON integer accepted: CPython's default int/str limit, fixed here so the verdict on a
# file never depends on the interpreter's sys.set_int_max_str_digits setting.
_MAX_INT_DIGITS: Final = 4300
_OPEN_FLAGS: Final = os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # a FIFO must not block open()

PathLike = str | os.PathLike[str]


# -- state files ---------------------------------------------------------------------------


def read_state(state_file: PathLike) -> dict[str, Any]:
    """Read a run-state file.

    Args:
        state_file: path to the JSON state file.

    Returns:
        The JSON object in the file, or ``{}`` when the file does not exist, cannot be read
        or is not a regular file (logged as an error), or is corrupt (see the module
        docstring). A corrupt file is first moved aside to ``<name>.corrupt-<timestamp>``
        next to it, with a warning, so its content is never lost.

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
        state: a JSON-serialisable dict that reads back as a valid run-state (watermarks, when
            present, are ints in ``0 .. 2**63 - 1``; no NaN or infinity; within the size and
            depth limits).

    Returns:
        True when the new state is on disk. False when it could not be written or is not a
        valid run-state (the reason is logged as an error); the previous file, if any, is
        then left untouched and no temporary file remains.
    """
    path = Path(state_file)
    try:
        data = _encode_state(state)
    except (TypeError, ValueError) as exc:
        logger.error("cannot write state file %s: %s", path, exc)
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

    A corrupt state file is moved aside (never overwritten) and counts as empty.

    Raises:
        StorageError: the state file could not be read, moved aside or written.

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

    A corrupt state file is moved aside (never overwritten) and counts as empty.

    Raises:
        StorageError: the state file could not be read, moved aside or written.
    """
    runs = _as_run_list(attempted_runs, "attempted_runs")
    _update_watermark(
        Path(state_file), LAST_ATTEMPTED, lambda current: _native.max_attempted_run(current, runs)
    )


def get_incremental_start_run(state_file: PathLike) -> int:
    """The run an incremental pass starts from: ``max(last_contiguous_run, last_attempted_run)``.

    Missing fields count as 0, so a missing (or corrupt, hence moved aside) state file gives 0.
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
        StorageError: the file exists but cannot be read, or is not a regular file.
        CorruptData: the file is not text (invalid UTF-8 or NUL bytes) or is larger than
            :data:`MAX_RUN_RECORDS_BYTES`; the file is left untouched.
    """
    path = Path(run_records_file)
    raw: bytes | None
    try:
        raw = _read_regular_file(path, MAX_RUN_RECORDS_BYTES)
    except _TooLarge:
        raw = None
    except FileNotFoundError:
        logger.debug("run records file %s does not exist; no runs", path)
        return []
    except OSError as exc:
        raise StorageError(
            f"cannot read run records file {str(path)!r}: {exc}; check its permissions",
            path=str(path),
        ) from exc
    text_content = _run_records_text(path, raw, "run records file")
    runs: list[int] = []
    invalid: list[tuple[int, str]] = []
    for lineno, line in enumerate(text_content.splitlines(), start=1):
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
    replacement (and are overwritten, as asked) or in the new file. An existing file that is
    not a failure log (not UTF-8 text, or larger than :data:`MAX_RUN_RECORDS_BYTES`) is not
    replaced.

    Raises:
        StorageError: the log could not be written; its previous content is untouched.
        CorruptData: the existing file is not a failure log; it is left untouched.
    """
    count, payload = _format_runs(failed_runs, "failed_runs")
    path = Path(failure_log)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked_log(path, os.O_RDONLY | os.O_CREAT) as fd:
            # What we replace must be a failure log: a data file given by mistake is kept.
            try:
                existing: bytes | None = _read_fd(fd, MAX_RUN_RECORDS_BYTES)
            except _TooLarge:
                existing = None
            _run_records_text(path, existing, "failure log")
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
    """The file content for ``state``; ValueError/TypeError when it would not read back as valid."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    try:
        data = (json.dumps(state, indent=2, allow_nan=False) + "\n").encode("utf-8")
    except RecursionError as exc:
        raise ValueError(f"the state is nested too deeply ({exc})") from exc
    except TypeError as exc:
        raise TypeError(f"the state is not JSON-serialisable ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"the state is not JSON-serialisable ({exc})") from exc
    # Never write a file that a later read would judge corrupt and move aside.
    if len(data) > MAX_STATE_FILE_BYTES:
        raise ValueError(
            f"the state would be larger than {MAX_STATE_FILE_BYTES} bytes, the most a state file may hold"
        )
    _, problem = _decode_state(data)
    if problem:
        raise ValueError(f"the state would not read back as a valid run-state file: {problem}")
    return data


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _watermark(state: dict[str, Any], field: str, path: Path) -> int:
    value = state.get(field, 0)
    if _watermark_problem(field, value) or not isinstance(value, int):
        # Unreachable for a dict from _load_state, which moves such a file aside.
        raise CorruptData(f"state file {str(path)!r}: {_watermark_problem(field, value)}; fix that field")
    return value


def _watermark_problem(field: str, value: object) -> str:
    """Why ``value`` is not a valid watermark ('' when it is)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _I64_MAX:
        shown = repr(value) if not isinstance(value, int) or value.bit_length() < 128 else "a huge integer"
        return f"{field}={shown[:60]} is not an integer run number in 0 .. 2**63 - 1"
    return ""


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
            data = _encode_state(state)
        except (TypeError, ValueError) as exc:  # e.g. the new timestamp pushes it past the size limit
            raise StorageError(
                f"cannot write state file {str(path)!r} ({field} {current} -> {new}): {exc}",
                path=str(path),
            ) from exc
        try:
            atomic_write_bytes(path, data)
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
    functions, which must not replace a file they could not read or move aside), a StorageError.
    """
    raw: bytes | None
    try:
        raw = _read_regular_file(path, MAX_STATE_FILE_BYTES)
    except _TooLarge:
        raw = None
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
    if raw is None:
        state, problem = None, f"larger than {MAX_STATE_FILE_BYTES} bytes"
    else:
        state, problem = _decode_state(raw)
    if state is not None:
        return state
    if dir_locked:
        _move_aside(path, problem, strict=strict)
        return None
    # Re-check under the directory lock: a concurrent writer may have replaced the file already.
    with _directory_lock(path.parent):
        return _load_state(path, dir_locked=True, strict=strict)


def _decode_state(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """``(state, "")`` for a valid run-state file's bytes, else ``(None, why it is corrupt)``.

    Strict and bounded: whatever the bytes, only ``(None, reason)`` comes back, never an
    exception (size is checked by the caller, nesting here and by the recursion guard).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte {exc.start})"
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        return None, f"nested deeper than {MAX_STATE_DEPTH} levels"
    except ValueError as exc:  # JSONDecodeError and our hooks' refusals
        return None, f"not valid JSON ({str(exc)[:200]})"
    if not isinstance(value, dict):
        return None, f"not a JSON object (a JSON {type(value).__name__})"
    if _depth(value) > MAX_STATE_DEPTH:
        return None, f"nested deeper than {MAX_STATE_DEPTH} levels"
    for field in (LAST_CONTIGUOUS, LAST_ATTEMPTED):
        if field in value:
            problem = _watermark_problem(field, value[field])
            if problem:
                return None, problem
    return value, ""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf, which JSON cannot hold
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is too long")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:  # which of the two values was meant is unknown: keep the file as it is
            raise ValueError(f"key {key[:60]!r} appears twice")
        value[key] = item
    return value


def _depth(value: object) -> int:
    """Nesting depth of a decoded JSON value, without recursion (a scalar is 0)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Iterable[object] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_STATE_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


class _TooLarge(Exception):
    """A file is larger than the limit its reader accepts (never read whole)."""


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The content of ``path``, read only when it is a regular file of at most ``limit`` bytes.

    Raises FileNotFoundError when missing, OSError when unreadable or not a regular file (a
    FIFO or device is refused without blocking), _TooLarge above ``limit``.
    """
    fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int) -> bytes:
    """A regular file's content; _TooLarge when it is (or grows while read) over ``limit`` bytes."""
    if os.fstat(fd).st_size > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    offset = 0
    while offset <= limit:
        chunk = os.pread(fd, min(limit + 1 - offset, 1 << 20), offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)
    raise _TooLarge


def _run_records_text(path: Path, raw: bytes | None, what: str) -> str:
    """``raw`` as text; CorruptData when it is not run records (None: too large; binary; not UTF-8)."""
    if raw is None:
        problem = f"larger than {MAX_RUN_RECORDS_BYTES} bytes"
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text (invalid byte at offset {exc.start})"
        else:
            nul = text.find("\0")
            if nul < 0:
                return text
            problem = f"binary, not text (a NUL byte at offset {len(text[:nul].encode())})"
    raise CorruptData(
        f"{what} {str(path)!r} is {problem}; it was left untouched. A {what} holds one run number per "
        "line: check that the path is right, then fix or move that file"
    )


def _move_aside(path: Path, problem: str, *, strict: bool) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    suffix = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{suffix}")
        suffix += 1
    try:
        os.rename(path, aside)
    except OSError as exc:
        if strict:  # the caller would write next: it must not replace a file we could not keep
            raise StorageError(
                f"state file {str(path)!r} is corrupt ({problem}) and could not be moved aside to "
                f"{str(aside)!r}: {exc}; it was left untouched. Move it away by hand, then run again",
                path=str(path),
            ) from exc
        logger.error(
            "state file %s is corrupt (%s) and could not be moved aside to %s: %s; treating it as empty. "
            "Move it away by hand (the update functions will not overwrite it)",
            path,
            problem,
            aside,
            exc,
        )
        return
    try:
        fsync_directory(path.parent)
    except OSError as exc:  # the rename happened; only its durability is in doubt
        logger.error("cannot fsync directory %s after moving %s aside: %s", path.parent, path, exc)
    logger.warning(
        "state file %s is corrupt (%s); kept it as %s and started from an empty state",
        path,
        problem,
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
        fd = os.open(path, flags | _OPEN_FLAGS, 0o666)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device: refuse, never block on it
                raise OSError(errno.EINVAL, "not a regular file")
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
