"""``FileLock``: one instance of a job per machine, with ``fcntl.flock``.

The kernel releases an ``flock`` when its holder exits, however it exits, so a crashed job
never leaves a stale lock behind. The lock file holds the holder's PID for humans and for
:meth:`FileLock.is_lock_file_valid`; it is never deleted (deleting a lock file while another
process has it open is how two processes end up "holding" the same lock).

A lock path is a place where statekit writes, so a mistyped one must not destroy anything: the
path is opened without following symbolic links and without blocking, and only a regular file
that is empty or holds one PID line (a *lock record*) is ever rewritten. Anything else (a
symlink, a FIFO, a device, a directory, a file with other content) is refused with
``LockExistsError(held=False)`` and left exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from statekit.errors import LockExistsError, LockLost

__all__ = ["FileLock", "LockMonitor"]

logger = logging.getLogger(__name__)

DEFAULT_MONITOR_INTERVAL = 60.0

# A lock record is at most one PID line; anything longer is someone's data.
_MAX_RECORD_BYTES = 64
_MAX_PID_DIGITS = 20
# No symlink is followed (O_NOFOLLOW) and a FIFO or device never blocks the open (O_NONBLOCK).
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

# (st_dev, st_ino) of every lock file a FileLock of this process holds -> that FileLock.
_held: dict[tuple[int, int], FileLock] = {}
_held_guard = threading.Lock()


class FileLock:
    """An exclusive, non-blocking lock on a file, used as a context manager.

    Example::

        try:
            with FileLock(Path("/var/run/archiver.lock")) as lock:
                lock.start_monitor(interval=60, on_lost=lambda err: shutdown.set())
                run_archiver()
        except LockExistsError as exc:
            sys.exit(f"Another instance is running: {exc}")

    Acquiring (``__enter__`` or :meth:`acquire`) creates the parent directories, opens the
    file (without truncating it, so a failed attempt never wipes the holder's PID), takes
    ``flock(LOCK_EX | LOCK_NB)`` and writes this process's PID. It raises
    :class:`~statekit.errors.LockExistsError` when the lock is held by another process, by
    another ``FileLock`` on the same file in this process, or cannot be taken at all
    (permissions, I/O errors; ``held`` is then False). Leaving the ``with`` block releases
    it, even when the body raises.

    Only a lock file is ever written: the path must not be a symbolic link, and must be
    missing or a regular file that is empty or holds one PID line (what a previous holder,
    even a dead one, left there). A symlink, FIFO, device, directory or a file with any other
    content raises ``LockExistsError(held=False)`` and is left untouched.

    A child created by ``fork()`` does not inherit the lock: its copy of the ``FileLock``
    counts as released (the parent keeps holding it).

    Args:
        lock_file: path of the lock file.
    """

    def __init__(self, lock_file: str | os.PathLike[str]) -> None:
        self.lock_file = Path(lock_file)
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._monitor: LockMonitor | None = None
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        state = "held" if self.locked else "released"
        return f"FileLock({str(self.lock_file)!r}, {state})"

    @property
    def locked(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock now or raise :class:`~statekit.errors.LockExistsError`; never waits."""
        with self._guard:
            if self._fd is not None:
                raise LockExistsError(
                    f"this FileLock already holds {str(self.lock_file)!r}; a FileLock is not re-entrant, "
                    "use one `with` block",
                    path=str(self.lock_file),
                )
            fd = self._open()
            try:
                identity = self._register(fd)
            except BaseException:
                os.close(fd)
                raise
            try:
                self._flock(fd)
                # Checked again under the flock: no other FileLock writes now, so what we see is final.
                self._check_lock_record(fd)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
                os.fsync(fd)
            except BaseException as exc:
                os.close(fd)  # closing the only descriptor also drops the flock if we got it
                _unregister(identity)
                if isinstance(exc, OSError):
                    raise LockExistsError(
                        f"cannot write the PID to lock file {str(self.lock_file)!r}: {exc}; check the "
                        "file system (free space, permissions)",
                        path=str(self.lock_file),
                        held=False,
                    ) from exc
                raise
            self._fd = fd
            self._identity = identity
        logger.debug("acquired file lock %s (pid %d)", self.lock_file, os.getpid())

    def release(self) -> None:
        """Release the lock (``LOCK_UN``, close) and stop its monitor. Releasing twice is harmless."""
        monitor = self._monitor
        self._monitor = None
        if monitor is not None:
            monitor.stop()
        with self._guard:
            fd, identity = self._fd, self._identity
            self._fd = self._identity = None
            if fd is None:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
                if identity is not None:
                    _unregister(identity)
        logger.debug("released file lock %s", self.lock_file)

    def is_lock_file_valid(self) -> bool:
        """Whether the lock file exists and holds this process's PID.

        While the lock is held, the file at the path must also still be the very file that was
        locked: a lock file deleted and re-created, even with the right PID in it, is no longer
        protected by our ``flock``, so it is reported as invalid.
        """
        try:
            fd = os.open(self.lock_file, os.O_RDONLY | _OPEN_FLAGS)
        except OSError:
            return False  # missing, or a symlink swapped in
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return False  # never read a FIFO or device: it could block the monitor forever
            content = os.pread(fd, _MAX_RECORD_BYTES, 0)
            identity = _identity_of(st)
        except OSError:
            return False
        finally:
            os.close(fd)
        if self._identity is not None and identity != self._identity:
            return False
        return content.strip() == str(os.getpid()).encode("ascii")

    def get_pid(self) -> int:
        """The PID this process writes to the lock file (``os.getpid()``)."""
        return os.getpid()

    def start_monitor(
        self,
        interval: float = DEFAULT_MONITOR_INTERVAL,
        on_lost: Callable[[LockLost], object] | None = None,
    ) -> LockMonitor:
        """Check :meth:`is_lock_file_valid` every ``interval`` seconds in a daemon thread.

        When the lock file was deleted or rewritten, ``on_lost`` is called once (in the
        monitor thread) with a :class:`~statekit.errors.LockLost` describing what happened, and
        the monitor ends; typically the callback asks the job to shut down. Without a
        callback the loss is logged as an error. The monitor stops when the lock is released.

        Args:
            interval: seconds between checks (> 0).
            on_lost: called with the LockLost error when the lock file is no longer valid.

        Returns:
            The running :class:`LockMonitor` (call ``stop()`` to end it early).

        Raises:
            RuntimeError: the lock is not held, or a monitor is already running.
            ValueError: ``interval`` is not positive.
        """
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        if not self.locked:
            raise RuntimeError(f"cannot monitor {str(self.lock_file)!r}: acquire the lock first")
        if self._monitor is not None and self._monitor.is_alive():
            raise RuntimeError(f"a monitor is already running for {str(self.lock_file)!r}")
        monitor = LockMonitor(self, interval, on_lost)
        self._monitor = monitor
        monitor.start()
        return monitor

    # -- internals -----------------------------------------------------------------------

    def _open(self) -> int:
        """Open (or create) the lock file; refuse whatever is at the path if it is not a lock file."""
        path = str(self.lock_file)
        try:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
            # Look before opening: opening some devices has side effects even without I/O.
            with contextlib.suppress(FileNotFoundError):
                _refuse_non_regular(path, os.lstat(path).st_mode)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW: a symlink appeared after the lstat
                try:
                    _refuse_non_regular(path, stat.S_IFLNK)
                except LockExistsError as refused:
                    raise refused from exc
            raise LockExistsError(
                f"cannot open lock file {path!r}: {exc}; check that its directory exists and is writable",
                path=path,
                held=False,
            ) from exc
        try:
            # Again on the descriptor: the path may have been replaced between lstat and open.
            _refuse_non_regular(path, os.fstat(fd).st_mode)
            self._check_lock_record(fd)  # early, clear refusal; re-checked under the flock
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_lock_record(self, fd: int) -> None:
        """Raise LockExistsError(held=False) unless the file is empty or holds one PID line."""
        path = str(self.lock_file)
        try:
            size = os.fstat(fd).st_size
            raw = os.pread(fd, _MAX_RECORD_BYTES + 1, 0) if size <= _MAX_RECORD_BYTES else b""
        except OSError as exc:
            raise LockExistsError(
                f"cannot read lock file {path!r}: {exc}; check the file system and its permissions",
                path=path,
                held=False,
            ) from exc
        if size <= _MAX_RECORD_BYTES and _is_lock_record(raw):
            return
        held = f"{raw[:40]!r}" if raw else f"{size} bytes"
        raise LockExistsError(
            f"{path!r} is not a lock file (it holds {held}, not a PID line); it was left untouched. "
            "Give FileLock a path of its own (e.g. ending in .lock), or remove that file if it is "
            "really an old lock file",
            path=path,
            held=False,
        )

    def _register(self, fd: int) -> tuple[int, int]:
        identity = _identity_of(os.fstat(fd))
        with _held_guard:
            if identity in _held:
                raise LockExistsError(
                    f"lock file {str(self.lock_file)!r} is already held by another FileLock in this process "
                    f"(pid {os.getpid()}); use one FileLock per lock file",
                    path=str(self.lock_file),
                )
            _held[identity] = self
        return identity

    def _flock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                holder = _read_pid(fd)
                who = f"process {holder}" if holder is not None else "another process"
                raise LockExistsError(
                    f"lock file {str(self.lock_file)!r} is held by {who}; another instance is running. "
                    "Wait for it to finish or stop it (the lock is freed as soon as that process exits)",
                    path=str(self.lock_file),
                    holder_pid=holder,
                ) from exc
            raise LockExistsError(
                f"cannot lock {str(self.lock_file)!r}: {exc}; the file system may not support flock",
                path=str(self.lock_file),
                held=False,
            ) from exc

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the inherited descriptor without unlocking (the parent holds it)."""
        fd = self._fd
        self._fd = self._identity = None
        self._monitor = None
        self._guard = threading.Lock()
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                logger.debug("closing inherited lock descriptor %d after fork failed: %s", fd, exc)


class LockMonitor:
    """A daemon thread that checks a :class:`FileLock`'s file every ``interval`` seconds.

    Made by :meth:`FileLock.start_monitor`. ``lost`` holds the LockLost error once the lock
    file was found deleted or rewritten.
    """

    def __init__(self, lock: FileLock, interval: float, on_lost: Callable[[LockLost], object] | None) -> None:
        self._lock = lock
        self.interval = interval
        self._on_lost = on_lost
        self._stop = threading.Event()
        self.lost: LockLost | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"statekit-lock-monitor:{lock.lock_file.name}", daemon=True
        )

    def start(self) -> None:
        """Start the thread (done by :meth:`FileLock.start_monitor`)."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop checking and wait for the thread to end (not when called from the monitor itself)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        """Whether the monitor thread is still running."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._lock.is_lock_file_valid():
                continue
            if self._stop.is_set():  # released while we were checking
                return
            self.lost = LockLost(_describe_loss(self._lock))
            logger.error("%s", self.lost)
            if self._on_lost is not None:
                try:
                    self._on_lost(self.lost)
                except Exception:
                    logger.exception("the on_lost callback of the monitor of %s raised", self._lock.lock_file)
            return


def _describe_loss(lock: FileLock) -> str:
    path = str(lock.lock_file)
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        return f"lock file {path!r} was deleted while pid {os.getpid()} held the lock; stop this job"
    except OSError as exc:
        return f"lock file {path!r} can no longer be read ({exc}); stop this job"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"lock file {path!r} was replaced by something that is not a regular file; stop this job"
        content = os.pread(fd, _MAX_RECORD_BYTES, 0).strip().decode("ascii", errors="replace")
    except OSError as exc:
        return f"lock file {path!r} can no longer be read ({exc}); stop this job"
    finally:
        os.close(fd)
    return (
        f"lock file {path!r} was rewritten or replaced while pid {os.getpid()} held the lock (it now "
        f"holds {content!r}); another instance may be running: stop this job"
    )


def _refuse_non_regular(path: str, mode: int) -> None:
    """Raise LockExistsError(held=False) unless ``mode`` is a regular file's."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISLNK(mode):
        what = "a symbolic link (never followed, so its target cannot be overwritten)"
    elif stat.S_ISDIR(mode):
        what = "a directory"
    elif stat.S_ISFIFO(mode):
        what = "a FIFO"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "a device"
    else:
        what = "a special file"
    raise LockExistsError(
        f"lock path {path!r} is {what}, not a regular file; refused and left untouched. Point FileLock "
        "at a path of its own, e.g. /var/lock/<job>.lock",
        path=path,
        held=False,
    )


def _is_lock_record(raw: bytes) -> bool:
    """Empty, or one PID line: what FileLock writes (a partial write is a prefix of it, still a record)."""
    text = raw.strip(b" \t\r\n")
    return not text or (text.isdigit() and len(text) <= _MAX_PID_DIGITS)


def _identity_of(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 64, 0)
    except OSError:
        return None
    text = raw.strip()
    return int(text) if text.isdigit() else None


def _unregister(identity: tuple[int, int]) -> None:
    with _held_guard:
        _held.pop(identity, None)


def _after_fork_in_child() -> None:
    global _held_guard
    _held_guard = threading.Lock()
    locks = list(_held.values())
    _held.clear()
    for lock in locks:
        lock._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
