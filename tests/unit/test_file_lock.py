"""``FileLock``: exclusion against real second processes, PID file, validity checks, monitor, fork."""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from statekit.errors import LockExistsError, LockLost, StateError
from statekit.locks import FileLock
from tests.ci import skip_or_fail

LOCKED_OUT = 3
WAIT = 60.0  # generous bound for cross-process hand-offs; never a speed assertion

_spawn = multiprocessing.get_context("spawn")


# -- subprocess targets (module level, so spawn can import them) ---------------------------


def _try_lock(path: str) -> None:
    """Exit 0 when the lock could be taken, LOCKED_OUT on LockExistsError (message on stderr)."""
    try:
        with FileLock(path):
            pass
    except LockExistsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(LOCKED_OUT)


def _hold_lock(path: str, acquired: Any, release: Any, crash: bool) -> None:
    lock = FileLock(path)
    lock.acquire()
    acquired.set()
    release.wait(WAIT)
    if crash:
        os._exit(0)  # no release, no cleanup: the kernel must drop the flock
    lock.release()


def _exclusive_increments(path: str, counter: str, wins: int) -> None:
    """Take the lock ``wins`` times; under it, do a deliberately racy read-modify-write of ``counter``."""
    done = 0
    while done < wins:
        try:
            with FileLock(path):
                value = int(Path(counter).read_text())
                time.sleep(0.0005)  # widen the window a second holder would need
                Path(counter).write_text(str(value + 1))
        except LockExistsError:
            time.sleep(0.0005)
            continue
        done += 1


def _run(target: Any, *args: Any) -> int:
    proc = _spawn.Process(target=target, args=args)
    proc.start()
    proc.join(WAIT)
    assert proc.exitcode is not None, "child process did not finish"
    return proc.exitcode


# -- basics --------------------------------------------------------------------------------


def test_acquire_creates_parents_writes_pid_and_releases(tmp_path: Path) -> None:
    path = tmp_path / "var" / "run" / "archiver.lock"
    lock = FileLock(path)
    assert not lock.locked
    with lock as held:
        assert held is lock
        assert lock.locked
        assert path.read_text().strip() == str(os.getpid())
        assert lock.is_lock_file_valid()
    assert not lock.locked
    assert path.exists()  # never deleted: see the module docstring
    with FileLock(path):  # free again
        pass


def test_get_pid_is_this_process(tmp_path: Path) -> None:
    assert FileLock(tmp_path / "x.lock").get_pid() == os.getpid()


def test_second_filelock_in_same_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    with FileLock(path):
        with pytest.raises(LockExistsError, match="another FileLock in this process") as info, FileLock(path):
            pytest.fail("entered a held lock")
        assert info.value.path == str(path)
        # Through another spelling of the same file, too.
        with pytest.raises(LockExistsError):
            FileLock(tmp_path / "." / "a.lock").acquire()
        assert path.read_text().strip() == str(os.getpid())


def test_lock_is_not_reentrant_and_release_is_idempotent(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "a.lock")
    with lock:
        with pytest.raises(LockExistsError, match="not re-entrant"):
            lock.acquire()
        assert lock.locked
    lock.release()
    lock.release()
    assert not lock.locked


def test_released_when_body_raises(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    lock = FileLock(path)
    with pytest.raises(RuntimeError, match="boom"), lock:
        raise RuntimeError("boom")
    assert not lock.locked
    assert _run(_try_lock, str(path)) == 0


def test_unusable_path_raises_lock_exists_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LockExistsError, match="cannot open lock file") as info:
        FileLock(blocker / "a.lock").acquire()
    assert isinstance(info.value, StateError)


# -- real second processes -----------------------------------------------------------------


def test_another_process_is_locked_out_while_held(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    with FileLock(path):
        assert _run(_try_lock, str(path)) == LOCKED_OUT
        assert path.read_text().strip() == str(os.getpid())  # the failed attempt did not wipe our PID
    assert _run(_try_lock, str(path)) == 0


def test_this_process_is_locked_out_by_another_and_told_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    acquired, release = _spawn.Event(), _spawn.Event()
    holder = _spawn.Process(target=_hold_lock, args=(str(path), acquired, release, False))
    holder.start()
    try:
        assert acquired.wait(WAIT)
        with pytest.raises(LockExistsError, match=f"held by process {holder.pid}"), FileLock(path):
            pytest.fail("entered a lock held by another process")
        assert not FileLock(path).is_lock_file_valid()  # the file holds the other PID
    finally:
        release.set()
        holder.join(WAIT)
    assert holder.exitcode == 0
    with FileLock(path) as lock:
        assert lock.is_lock_file_valid()


def test_lock_of_a_crashed_process_is_free(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    acquired, release = _spawn.Event(), _spawn.Event()
    holder = _spawn.Process(target=_hold_lock, args=(str(path), acquired, release, True))
    holder.start()
    assert acquired.wait(WAIT)
    with pytest.raises(LockExistsError):
        FileLock(path).acquire()
    release.set()
    holder.join(WAIT)
    with FileLock(path):
        assert path.read_text().strip() == str(os.getpid())


def test_mutual_exclusion_across_processes(tmp_path: Path) -> None:
    path, counter = tmp_path / "a.lock", tmp_path / "counter"
    counter.write_text("0")
    workers, wins = 4, 25
    procs = [
        _spawn.Process(target=_exclusive_increments, args=(str(path), str(counter), wins)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(WAIT * 2)
        assert p.exitcode == 0
    assert int(counter.read_text()) == workers * wins


#: Exit codes of _fork_while_holding (0: all well).
FORK_FAILURES = {
    10: "the forked child thinks it holds the lock",
    11: "the forked child could take the lock the parent holds",
    20: "the parent lost the lock when its child exited",
    21: "the lock file is no longer valid after the fork",
    22: "another process could take the lock after the fork",
    30: "other threads run in the spawned process: fork() would be unsafe",
}


def _fork_while_holding(path: str) -> None:
    """Hold the lock, fork(), check both sides; exit with a FORK_FAILURES code (0: all well)."""
    if threading.active_count() != 1:
        sys.exit(30)
    with FileLock(path) as lock:
        pid = os.fork()
        if pid == 0:  # child: must not think it holds the lock, and must not release the parent's
            code = 0
            try:
                if lock.locked:
                    code = 10
                lock.release()
                try:
                    FileLock(path).acquire()
                    code = 11
                except LockExistsError:
                    pass
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if (child := os.waitstatus_to_exitcode(status)) != 0:
            sys.exit(child)
        if not lock.locked:
            sys.exit(20)
        if not lock.is_lock_file_valid():
            sys.exit(21)
        if _run(_try_lock, path) != LOCKED_OUT:
            sys.exit(22)


def test_forked_child_does_not_inherit_the_lock(tmp_path: Path) -> None:
    # fork() is only safe in a single-threaded process, and earlier tests may leave threads in this
    # one (the sync store's loop thread): the fork happens in a freshly spawned process instead,
    # so the test runs (never skips) whatever ran before it.
    code = _run(_fork_while_holding, str(tmp_path / "a.lock"))
    assert code == 0, FORK_FAILURES.get(code, f"exit code {code}")


# -- validity and monitoring ---------------------------------------------------------------


def test_is_lock_file_valid_detects_deletion_and_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    path.write_text(f"{os.getpid()}\n")
    assert FileLock(path).is_lock_file_valid()  # not held: the PID alone decides
    with FileLock(path) as lock:
        assert lock.is_lock_file_valid()
        path.write_text("12345\n")
        assert not lock.is_lock_file_valid()
        path.write_text(f"{os.getpid()}\n")  # same inode, our PID again
        assert lock.is_lock_file_valid()
        path.unlink()
        assert not lock.is_lock_file_valid()
        path.write_text(f"{os.getpid()}\n")  # a new file with our PID is not the file we locked
        assert not lock.is_lock_file_valid()


@pytest.mark.parametrize("tamper", ["delete", "rewrite"])
def test_monitor_calls_back_when_lock_file_is_tampered_with(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "a.lock"
    lost: list[LockLost] = []
    called = threading.Event()

    def on_lost(err: LockLost) -> None:
        lost.append(err)
        called.set()

    with FileLock(path) as lock:
        monitor = lock.start_monitor(interval=0.02, on_lost=on_lost)
        assert monitor.is_alive()
        if tamper == "delete":
            path.unlink()
        else:
            path.write_text("99999\n")
        assert called.wait(WAIT)
        monitor.stop(WAIT)
        assert not monitor.is_alive()
    assert len(lost) == 1
    assert isinstance(lost[0], LockLost)
    assert monitor.lost is lost[0]
    assert ("deleted" if tamper == "delete" else "rewritten") in str(lost[0])


def test_monitor_stays_quiet_while_valid_and_stops_on_release(tmp_path: Path) -> None:
    called = threading.Event()
    checks = threading.Semaphore(0)
    lock = FileLock(tmp_path / "a.lock")
    with lock:
        original = lock.is_lock_file_valid

        def counting() -> bool:
            checks.release()
            return original()

        lock.is_lock_file_valid = counting  # type: ignore[method-assign]
        monitor = lock.start_monitor(interval=0.01, on_lost=lambda err: called.set())
        for _ in range(5):  # several checks happen and all pass
            assert checks.acquire(timeout=WAIT)
        with pytest.raises(RuntimeError, match="already running"):
            lock.start_monitor(interval=1)
    assert not monitor.is_alive()
    assert not called.is_set()


def test_monitor_without_callback_logs_and_a_failing_callback_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.lock"
    with caplog.at_level(logging.ERROR, logger="statekit"), FileLock(path) as lock:
        monitor = lock.start_monitor(interval=0.01)
        path.unlink()
        monitor._thread.join(WAIT)
        assert monitor.lost is not None

        def broken(err: LockLost) -> None:
            raise ValueError("callback bug")

        path.write_text("1\n")
        monitor = lock.start_monitor(interval=0.01, on_lost=broken)
        monitor._thread.join(WAIT)
    assert "was deleted" in caplog.text
    assert "on_lost callback" in caplog.text
    assert "callback bug" in caplog.text


def test_monitor_requires_a_held_lock_and_a_positive_interval(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "a.lock")
    with pytest.raises(RuntimeError, match="acquire the lock first"):
        lock.start_monitor()
    with lock, pytest.raises(ValueError, match="positive"):
        lock.start_monitor(interval=0)


# -- what is at the lock path -------------------------------------------------------------

DATA = b"precious data, not a lock\n" * 10


def test_symlink_at_lock_path_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_bytes(DATA)
    path = tmp_path / "a.lock"
    path.symlink_to(data)
    with pytest.raises(LockExistsError, match="symbolic link") as info:
        FileLock(path).acquire()
    assert info.value.held is False
    assert data.read_bytes() == DATA
    assert path.is_symlink()


def test_dangling_symlink_at_lock_path_is_refused_and_nothing_created(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LockExistsError, match="symbolic link") as info:
        FileLock(path).acquire()
    assert info.value.held is False
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    "content",
    [DATA, b"1234 is not alone\n", b"12\n34\n", b"\x00\x00", b"9" * 200, b"-5\n"],
    ids=["text", "pid-and-words", "two-lines", "nul", "too-long", "negative"],
)
def test_existing_data_file_as_lock_path_is_refused_and_kept(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    lock = FileLock(path)
    with pytest.raises(LockExistsError, match="not a lock file") as info:
        lock.acquire()
    assert info.value.held is False
    assert not lock.locked
    assert path.read_bytes() == content
    with pytest.raises(LockExistsError, match="not a lock file"):  # nothing left registered or locked
        lock.acquire()


def test_hard_link_to_a_data_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_bytes(DATA)
    path = tmp_path / "a.lock"
    os.link(data, path)
    with pytest.raises(LockExistsError, match="not a lock file"):
        FileLock(path).acquire()
    assert data.read_bytes() == DATA


def _acquire_in_thread(lock: FileLock) -> list[BaseException]:
    """Acquire in a daemon thread (so a hang cannot block the test run); the errors it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            lock.acquire()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "acquire() hung"
    return errors


def test_fifo_at_lock_path_is_refused_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    os.mkfifo(path)
    errors = _acquire_in_thread(FileLock(path))
    assert len(errors) == 1, errors
    assert isinstance(errors[0], LockExistsError)
    assert "not a regular file" in str(errors[0])
    assert errors[0].held is False
    assert path.is_fifo()


def test_directory_at_lock_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    path.mkdir()
    (path / "keep").write_bytes(DATA)
    with pytest.raises(LockExistsError, match="not a regular file") as info:
        FileLock(path).acquire()
    assert info.value.held is False
    assert (path / "keep").read_bytes() == DATA


@pytest.mark.parametrize("content", [b"", b"4242\n", b"4242", b"  4242  \n", b"\n"])
def test_lock_records_and_stale_lock_files_are_taken_over(tmp_path: Path, content: bytes) -> None:
    # An empty file or a PID line, e.g. left by a process that died: ours to rewrite.
    path = tmp_path / "a.lock"
    path.write_bytes(content)
    with FileLock(path) as lock:
        assert path.read_text() == f"{os.getpid()}\n"
        assert lock.is_lock_file_valid()


def test_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    acquired, release = _spawn.Event(), _spawn.Event()
    holder = _spawn.Process(target=_hold_lock, args=(str(path), acquired, release, True))
    holder.start()
    assert acquired.wait(WAIT)
    release.set()
    holder.join(WAIT)
    assert path.read_text().strip() == str(holder.pid)  # the dead holder's PID is still there
    with FileLock(path) as lock:
        assert path.read_text() == f"{os.getpid()}\n"
        assert lock.is_lock_file_valid()


def test_validity_check_does_not_hang_on_a_fifo_swapped_in(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    with FileLock(path) as lock:
        path.unlink()
        os.mkfifo(path)
        result: list[bool] = []
        thread = threading.Thread(target=lambda: result.append(lock.is_lock_file_valid()), daemon=True)
        thread.start()
        thread.join(WAIT)
        assert not thread.is_alive(), "is_lock_file_valid() hung on a FIFO"
        assert result == [False]


def test_device_at_lock_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    except OSError as exc:
        skip_or_fail(f"cannot create a device node here: {exc}")
    with pytest.raises(LockExistsError, match="is a device") as info:
        FileLock(path).acquire()
    assert info.value.held is False
    assert path.is_char_device()
