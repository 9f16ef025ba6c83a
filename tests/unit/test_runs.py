"""Run-state files and failure logs (``statekit.runs``): atomicity, corruption, watermarks, concurrency."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from statekit import runs
from statekit._utils.atomic import atomic_write_bytes
from statekit.errors import CorruptData, StorageError
from statekit.runs import (
    append_to_failure_log,
    get_incremental_start_run,
    parse_run_records_from_file,
    read_state,
    update_attempted_run_state,
    update_contiguous_run_state,
    write_failure_log,
    write_state,
)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def contiguous_model(last: int, successful: list[int]) -> int:
    done = set(successful)
    while last + 1 in done:
        last += 1
    return last


# -- read_state / write_state --------------------------------------------------------------


def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_state(tmp_path / "nope.json") == {}
    assert get_incremental_start_run(tmp_path / "nope.json") == 0


def test_write_then_read_round_trips_and_creates_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.json"
    state = {"last_contiguous_run": 19500, "last_attempted_run": 19550, "note": "é", "nested": {"x": [1, 2]}}
    assert write_state(path, state) is True
    assert read_state(path) == state
    assert json.loads(path.read_text("utf-8")) == state
    assert _leftovers(path.parent) == []


def test_write_keeps_permission_bits_of_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert write_state(path, {"a": 1})
    path.chmod(0o640)
    assert write_state(path, {"a": 2})
    assert path.stat().st_mode & 0o777 == 0o640


def test_write_failure_returns_false_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("i am a file, not a directory")
    with caplog.at_level(logging.ERROR, logger="statekit"):
        assert write_state(blocker / "state.json", {"a": 1}) is False
    assert "cannot write state file" in caplog.text


def test_unserialisable_state_returns_false_and_keeps_old_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    assert write_state(path, {"last_contiguous_run": 1})
    with caplog.at_level(logging.ERROR, logger="statekit"):
        assert write_state(path, {"bad": object()}) is False
        assert write_state(path, {"nan": float("nan")}) is False
    assert "not JSON-serialisable" in caplog.text
    assert read_state(path) == {"last_contiguous_run": 1}
    assert _leftovers(tmp_path) == []


def test_failure_midway_leaves_old_content_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    assert write_state(path, {"v": 1})

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    assert write_state(path, {"v": 2}) is False
    monkeypatch.undo()
    assert read_state(path) == {"v": 1}
    assert _leftovers(tmp_path) == []


CORRUPT_STATES = {
    "syntax": b"{not json",
    "empty": b"",
    "list": b"[1, 2, 3]",
    "string": b'"a string"',
    "binary": b"\xff\xfe\x00garbage",
    "truncated": b'{"a": 1',
    "deep-arrays": b"[" * 100_000 + b"]" * 100_000,
    "deep-objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deeper-than-limit": b'{"a":' * (runs.MAX_STATE_DEPTH + 1) + b"1" + b"}" * (runs.MAX_STATE_DEPTH + 1),
    "huge-int": b'{"last_contiguous_run": ' + b"7" * 5000 + b"}",
    "huge-int-elsewhere": b'{"other": -' + b"7" * 5000 + b"}",
    "1e400": b'{"last_contiguous_run": 1e400}',
    "nan": b'{"last_contiguous_run": NaN}',
    "nan-elsewhere": b'{"other": [NaN]}',
    "infinity": b'{"other": -Infinity}',
    "duplicate-key": b'{"last_contiguous_run": 5, "last_contiguous_run": 9}',
    "watermark-list": b'{"last_contiguous_run": [1]}',
    "watermark-string": b'{"last_contiguous_run": "100"}',
    "watermark-bool": b'{"last_attempted_run": true}',
    "watermark-float": b'{"last_attempted_run": 1.5}',
    "watermark-null": b'{"last_attempted_run": null}',
    "watermark-negative": b'{"last_contiguous_run": -5}',
    "watermark-over-i64": b'{"last_attempted_run": 9223372036854775808}',
    "bom": b'\xef\xbb\xbf{"a": 1}',
}


@pytest.mark.parametrize("content", list(CORRUPT_STATES.values()), ids=list(CORRUPT_STATES))
def test_corrupt_file_is_kept_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    path = tmp_path / "import_state.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="statekit"):
        assert read_state(path) == {}
    assert not path.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("import_state.json.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    assert "corrupt" in caplog.text
    assert aside[0].name in caplog.text
    # A second corrupt file gets its own name; nothing is overwritten.
    path.write_bytes(b"{again")
    assert read_state(path) == {}
    assert len([p for p in tmp_path.iterdir() if ".corrupt-" in p.name]) == 2


def test_update_after_corruption_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"\x00\x00 torn")
    update_contiguous_run_state(path, [1, 2, 3])
    assert read_state(path)["last_contiguous_run"] == 3
    assert any(".corrupt-" in p.name for p in tmp_path.iterdir())


def _aside(directory: Path, name: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(f"{name}.corrupt-"))


@pytest.mark.parametrize("call", ["contiguous", "attempted", "start"])
@pytest.mark.parametrize("content", list(CORRUPT_STATES.values()), ids=list(CORRUPT_STATES))
def test_every_function_keeps_a_corrupt_file_aside_and_starts_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, call: str
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="statekit"):
        if call == "contiguous":
            update_contiguous_run_state(path, [1, 2])
            assert read_state(path)["last_contiguous_run"] == 2
        elif call == "attempted":
            update_attempted_run_state(path, [7])
            assert read_state(path)["last_attempted_run"] == 7
        else:
            assert get_incremental_start_run(path) == 0
    aside = _aside(tmp_path, "state.json")
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    assert aside[0].name in caplog.text


@pytest.mark.parametrize("bad", ["100", 1.5, True, None, [1], -1, 2**63])
def test_non_integer_watermark_is_never_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: object
) -> None:
    # A file write_state wrote always reads back: it refuses what a read would move aside.
    path = tmp_path / "state.json"
    assert write_state(path, {"last_contiguous_run": 3})
    with caplog.at_level(logging.ERROR, logger="statekit"):
        assert write_state(path, {"last_contiguous_run": bad}) is False
        assert write_state(path, {"last_attempted_run": bad}) is False
    assert "not an integer run number" in caplog.text
    assert read_state(path) == {"last_contiguous_run": 3}


def test_write_state_refuses_deep_or_oversized_states(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5_000):  # json.dumps alone raises RecursionError on this
        node["a"] = {}
        node = node["a"]
    with caplog.at_level(logging.ERROR, logger="statekit"):
        assert write_state(path, deep) is False
        assert write_state(path, {"a": [[[]]] * 2, "b": {"c": [{"d": [[]]}]}})  # shallow: fine
        assert write_state(path, {"blob": "x" * runs.MAX_STATE_FILE_BYTES}) is False
    assert "nested too deeply" in caplog.text
    assert "larger than" in caplog.text
    assert read_state(path) == {"a": [[[]]] * 2, "b": {"c": [{"d": [[]]}]}}


def test_state_file_over_the_size_limit_is_kept_aside_unread(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    content = b'{"pad": "' + b"x" * runs.MAX_STATE_FILE_BYTES + b'"}'
    path.write_bytes(content)
    assert read_state(path) == {}
    (aside,) = _aside(tmp_path, "state.json")
    assert aside.read_bytes() == content


def test_update_never_overwrites_a_corrupt_file_it_cannot_move_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"{torn")

    def no_rename(src: object, dst: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "rename", no_rename)
    with pytest.raises(StorageError, match="could not be moved aside") as info:
        update_contiguous_run_state(path, [1])
    assert info.value.path == str(path)
    with pytest.raises(StorageError, match="could not be moved aside"):
        update_attempted_run_state(path, [1])
    with caplog.at_level(logging.ERROR, logger="statekit"):
        assert read_state(path) == {}  # a plain read reports it and writes nothing
    assert "could not be moved aside" in caplog.text
    assert path.read_bytes() == b"{torn"


def _in_thread(call: Any) -> list[BaseException]:
    """Run ``call`` in a daemon thread (a hang cannot block the run); the exceptions it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the call hung"
    return errors


def test_fifo_at_the_state_path_never_blocks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    os.mkfifo(path)
    with caplog.at_level(logging.ERROR, logger="statekit"):
        assert _in_thread(lambda: read_state(path)) == []
    assert "not a regular file" in caplog.text
    for update in (update_contiguous_run_state, update_attempted_run_state):
        (error,) = _in_thread(lambda update=update: update(path, [1]))
        assert isinstance(error, StorageError)
        assert "not a regular file" in str(error)
    assert path.is_fifo()


@pytest.mark.parametrize("runs_arg", [["1"], [1.0], [None], "123", b"1", [2**63]])
def test_non_integer_runs_are_rejected(tmp_path: Path, runs_arg: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        update_contiguous_run_state(tmp_path / "s.json", runs_arg)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        update_attempted_run_state(tmp_path / "s.json", runs_arg)  # type: ignore[arg-type]
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("runs_arg", [["1"], [1.0], [True], "123"])
def test_failure_logs_reject_non_integer_runs(tmp_path: Path, runs_arg: object) -> None:
    with pytest.raises(TypeError, match="must be"):
        append_to_failure_log(tmp_path / "log", runs_arg)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be"):
        write_failure_log(tmp_path / "log", runs_arg)  # type: ignore[arg-type]
    assert not (tmp_path / "log").exists()


# -- watermarks ----------------------------------------------------------------------------


def test_update_never_replaces_a_state_file_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # unreadable as a file (permissions would not stop root)
    with pytest.raises(StorageError, match="cannot read state file") as info:
        update_attempted_run_state(path, [5])
    assert info.value.path == str(path)
    assert path.is_dir()
    assert read_state(path) == {}  # plain reads just report it and return {}


def test_update_that_cannot_write_raises_and_keeps_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    assert write_state(path, {"last_contiguous_run": 7, "other": 1})

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageError, match="last_contiguous_run 7 -> 9"):
        update_contiguous_run_state(path, [8, 9])
    monkeypatch.undo()
    assert read_state(path) == {"last_contiguous_run": 7, "other": 1}
    assert _leftovers(tmp_path) == []


def test_update_in_an_impossible_directory_raises_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot create or open directory"):
        update_contiguous_run_state(blocker / "state.json", [1])


def test_updates_keep_other_fields_and_stamp_time(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    extra = {
        "owner": "archiver",
        "nested": {"k": [1, 2]},
        "last_contiguous_run": 100,
        "last_attempted_run": 100,
    }
    assert write_state(path, extra)
    update_contiguous_run_state(path, [101, 102])
    update_attempted_run_state(path, [101, 102, 110])
    state = read_state(path)
    assert state["owner"] == "archiver"
    assert state["nested"] == {"k": [1, 2]}
    assert state["last_contiguous_run"] == 102
    assert state["last_attempted_run"] == 110
    assert "T" in state["timestamp"]


def test_unchanged_watermark_does_not_touch_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    update_contiguous_run_state(path, [5, 6])  # 0 -> 0: no gap filled from 1
    update_attempted_run_state(path, [])
    assert not path.exists()
    assert write_state(path, {"last_contiguous_run": 10, "last_attempted_run": 20, "timestamp": "t0"})
    before = path.read_bytes()
    update_contiguous_run_state(path, [12, 13])
    update_attempted_run_state(path, [15, 20])
    assert path.read_bytes() == before


def test_accepts_any_iterable_of_ints(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    update_contiguous_run_state(path, {3, 1, 2})
    update_attempted_run_state(path, (r for r in [7, 3]))
    update_contiguous_run_state(path, range(4, 6))
    assert read_state(path) | {"timestamp": None} == {
        "last_contiguous_run": 5,
        "last_attempted_run": 7,
        "timestamp": None,
    }


def test_millions_of_runs(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    n = 1_000_000
    # Every run 1..n once, in a scrambled order (7919 is prime, so i -> i * 7919 mod n is a permutation).
    successful = [(i * 7919) % n + 1 for i in range(n)]
    gap = 765_432
    successful[successful.index(gap)] = successful[-1]
    successful.pop()
    update_contiguous_run_state(path, successful)
    update_attempted_run_state(path, successful)
    assert read_state(path)["last_contiguous_run"] == gap - 1
    assert get_incremental_start_run(path) == n
    update_contiguous_run_state(path, [*successful, gap])
    assert read_state(path)["last_contiguous_run"] == n


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, 50),  # a watermark is a run number >= 0; a negative one is a corrupt file
    attempted_start=st.integers(0, 50),
    batches=st.lists(st.lists(st.integers(-60, 120), max_size=40), max_size=6),
)
def test_watermarks_match_a_plain_model(
    tmp_path: Path, start: int, attempted_start: int, batches: list[list[int]]
) -> None:
    path = tmp_path / "state.json"
    assert write_state(path, {"last_contiguous_run": start, "last_attempted_run": attempted_start, "k": "v"})
    contiguous, attempted = start, attempted_start
    for batch in batches:
        update_contiguous_run_state(path, batch)
        update_attempted_run_state(path, batch)
        contiguous = contiguous_model(contiguous, batch)
        attempted = max([attempted, *batch])
        state = read_state(path)
        assert state["last_contiguous_run"] == contiguous
        assert state["last_attempted_run"] == attempted
        assert state["k"] == "v"
        assert get_incremental_start_run(path) == max(contiguous, attempted)


class RunStateMachine(RuleBasedStateMachine):
    """A state file driven by random updates, writes and corruption, against a dict model."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        self.path = Path(self._dir.name) / "state.json"
        self.model: dict[str, object] = {}

    def teardown(self) -> None:
        self._dir.cleanup()

    @rule(batch=st.lists(st.integers(0, 40), max_size=15))
    def contiguous(self, batch: list[int]) -> None:
        update_contiguous_run_state(self.path, batch)
        current = self.model.get("last_contiguous_run", 0)
        assert isinstance(current, int)
        new = contiguous_model(current, batch)
        if new != current:
            self.model["last_contiguous_run"] = new

    @rule(batch=st.lists(st.integers(0, 40), max_size=15))
    def attempted(self, batch: list[int]) -> None:
        update_attempted_run_state(self.path, batch)
        current = self.model.get("last_attempted_run", 0)
        assert isinstance(current, int)
        new = max([current, *batch])
        if new != current:
            self.model["last_attempted_run"] = new

    @rule(value=st.text(max_size=5))
    def set_other_field(self, value: str) -> None:
        state = read_state(self.path)
        state["other"] = value
        assert write_state(self.path, state)
        self.model["other"] = value

    @precondition(lambda self: self.path.exists())
    @rule()
    def corrupt(self) -> None:
        self.path.write_bytes(b"{torn")
        self.model.clear()

    @invariant()
    def matches_model(self) -> None:
        state = read_state(self.path)
        state.pop("timestamp", None)
        assert state == self.model
        expected = max(
            int(self.model.get("last_contiguous_run", 0)),  # type: ignore[call-overload]
            int(self.model.get("last_attempted_run", 0)),  # type: ignore[call-overload]
        )
        assert get_incremental_start_run(self.path) == expected


TestRunStateMachine = RunStateMachine.TestCase
TestRunStateMachine.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)


def _attempted_worker(path: str, worker: int, workers: int, rounds: int, start: Any) -> None:
    start.wait(120)  # all workers begin together, so their read-modify-writes really overlap
    for i in range(rounds):
        update_attempted_run_state(path, [worker + workers * i])


def test_updates_from_several_processes_are_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert write_state(path, {"keep": "me"})
    ctx = multiprocessing.get_context("spawn")
    workers, rounds = 4, 25
    start = ctx.Barrier(workers)
    procs = [
        ctx.Process(target=_attempted_worker, args=(str(path), w, workers, rounds, start))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    state = read_state(path)
    assert state["last_attempted_run"] == workers * rounds - 1
    assert state["keep"] == "me"
    assert _leftovers(tmp_path) == []


# -- run record files ----------------------------------------------------------------------


def test_parse_ignores_invalid_lines_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "runs.txt"
    path.write_bytes(
        b"100\n200\ninvalid\n  300  \n\n-5\n+7\n1_000\n12.5\n1e3\n\xc3\xa9\n99999999999999999999\n\r\n400\r\n"
        + b"7" * 10_000  # int() alone raises ValueError on this many digits
        + b"\n"
    )
    with caplog.at_level(logging.WARNING, logger="statekit"):
        assert parse_run_records_from_file(path) == [100, 200, 300, -5, 7, 400]
    assert "ignored 7 invalid line(s)" in caplog.text
    assert "line 3" in caplog.text


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"1\n2\n\xff\xfe\n3\n", "not UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"),
        ("1\n2\n".encode("utf-16-le"), "NUL byte"),
        (b"1\n2\n\x00\x00\x00\x00", "NUL byte"),
    ],
    ids=["invalid-utf8", "png", "utf16", "nul-tail"],
)
def test_run_records_that_are_not_text_raise_corrupt_data(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "failure_log"
    path.write_bytes(content)
    with pytest.raises(CorruptData, match=reason):
        parse_run_records_from_file(path)
    # A data file given as a failure log by mistake is not replaced either.
    with pytest.raises(CorruptData, match=reason):
        write_failure_log(path, [1])
    assert path.read_bytes() == content


def test_run_records_over_the_size_limit_raise_corrupt_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "MAX_RUN_RECORDS_BYTES", 1_000)
    path = tmp_path / "failure_log"
    path.write_bytes(b"12345\n" * 200)
    with pytest.raises(CorruptData, match="larger than 1000 bytes"):
        parse_run_records_from_file(path)
    with pytest.raises(CorruptData, match="larger than 1000 bytes"):
        write_failure_log(path, [1])
    assert path.read_bytes() == b"12345\n" * 200
    path.write_bytes(b"12345\n" * 100)  # under the limit: fine
    assert parse_run_records_from_file(path) == [12345] * 100


def test_fifo_as_run_records_or_failure_log_never_blocks(tmp_path: Path) -> None:
    path = tmp_path / "failure_log"
    os.mkfifo(path)
    for call in (
        lambda: parse_run_records_from_file(path),
        lambda: append_to_failure_log(path, [1]),
        lambda: write_failure_log(path, [1]),
    ):
        (error,) = _in_thread(call)
        assert isinstance(error, StorageError)
        assert "not a regular file" in str(error)
    assert path.is_fifo()


def test_parse_missing_file_is_empty_and_unreadable_raises(tmp_path: Path) -> None:
    assert parse_run_records_from_file(tmp_path / "missing") == []
    with pytest.raises(StorageError, match="cannot read run records file"):
        parse_run_records_from_file(tmp_path)  # a directory


def test_append_creates_file_and_parents_and_appends(tmp_path: Path) -> None:
    log = tmp_path / "var" / "archiver" / "import_failure_log"
    append_to_failure_log(log, [105])
    append_to_failure_log(log, [106, 107])
    append_to_failure_log(log, [])
    assert log.read_text() == "105\n106\n107\n"
    assert parse_run_records_from_file(log) == [105, 106, 107]


def test_append_repairs_missing_final_newline(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("1\n2")  # edited by hand, no newline at the end
    append_to_failure_log(log, [3])
    assert parse_run_records_from_file(log) == [1, 2, 3]


def test_append_failure_raises_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot append 1 run") as info:
        append_to_failure_log(blocker / "log", [1])
    assert info.value.path == str(blocker / "log")


def test_write_failure_log_replaces_content(tmp_path: Path) -> None:
    log = tmp_path / "log"
    append_to_failure_log(log, [1, 2, 3])
    write_failure_log(log, [105, 110, 115])
    assert log.read_text() == "105\n110\n115\n"
    write_failure_log(log, [])
    assert log.read_text() == ""
    assert _leftovers(tmp_path) == []


def test_append_waiting_on_a_replaced_log_lands_in_the_new_file(tmp_path: Path) -> None:
    import fcntl

    log = tmp_path / "log"
    append_to_failure_log(log, [1])
    # Do what write_failure_log does, by hand: hold the old file's lock while replacing it.
    fd = os.open(log, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    appender = threading.Thread(target=append_to_failure_log, args=(log, [99]))
    appender.start()
    atomic_write_bytes(log, b"2\n")
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    appender.join(30)
    assert not appender.is_alive()
    assert parse_run_records_from_file(log) == [2, 99]


def _append_worker(path: str, worker: int, calls: int, per_call: int, start: Any) -> None:
    start.wait(120)
    for call in range(calls):
        base = worker * 1_000_000 + call * 1_000
        append_to_failure_log(path, [base + j for j in range(per_call)])


def test_appends_from_several_processes_never_interleave(tmp_path: Path) -> None:
    log = tmp_path / "failure_log"
    ctx = multiprocessing.get_context("spawn")
    workers, calls, per_call = 4, 80, 7
    start = ctx.Barrier(workers)
    procs = [
        ctx.Process(target=_append_worker, args=(str(log), w, calls, per_call, start)) for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = log.read_text().split("\n")
    assert lines[-1] == ""
    values = [int(line) for line in lines[:-1]]  # every line is a whole number: nothing torn
    assert len(values) == workers * calls * per_call
    # Each call's lines are consecutive and in order.
    for first in range(0, len(values), per_call):
        group = values[first : first + per_call]
        assert group == list(range(group[0], group[0] + per_call))
        assert group[0] % 1_000 == 0
    assert sorted(values) == sorted(
        w * 1_000_000 + c * 1_000 + j for w in range(workers) for c in range(calls) for j in range(per_call)
    )


def test_module_exports() -> None:
    assert sorted(runs.__all__) == runs.__all__
    for name in runs.__all__:
        assert getattr(runs, name).__doc__


# -- arbitrary bytes -----------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
_watermark_values = st.one_of(
    st.integers(-(2**64), 2**64), st.floats(), st.booleans(), st.none(), st.text(max_size=4), _json_values
)
_state_like = st.fixed_dictionaries(
    {},
    optional={
        "last_contiguous_run": _watermark_values,
        "last_attempted_run": _watermark_values,
        "other": _json_values,
    },
)


@st.composite
def _mutated(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> bytes:
    """Bytes from ``source`` with a few random cuts, insertions and flips (torn or tampered files)."""
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["cut", "insert", "flip"]))
        at = draw(st.integers(0, len(data)))
        if op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif data:
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
    return bytes(data)


_state_file_bytes = st.one_of(
    st.binary(max_size=200),
    _state_like.map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass")),
    _mutated(_state_like.map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass"))),
    st.sampled_from(list(CORRUPT_STATES.values())),
)


def _valid_watermark(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**63


@settings(max_examples=300, deadline=None)
@given(content=_state_file_bytes, call=st.sampled_from(["read", "contiguous", "attempted", "start"]))
def test_any_bytes_as_a_state_file_never_raise_and_are_kept_if_corrupt(content: bytes, call: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.json"
        path.write_bytes(content)
        # No exception at all: a corrupt file is the documented fallback (kept aside, empty state).
        if call == "read":
            result: object = read_state(path)
        elif call == "contiguous":
            result = update_contiguous_run_state(path, [1])
        elif call == "attempted":
            result = update_attempted_run_state(path, [1])
        else:
            result = get_incremental_start_run(path)
        aside = _aside(Path(directory), "state.json")
        assert len(aside) <= 1
        if aside:
            assert aside[0].read_bytes() == content  # the original bytes, exactly
            if call in ("read", "start"):
                assert not path.exists()
            return
        # Kept in place: so it really is a state file, with watermarks that are run numbers.
        state = json.loads(content)
        assert isinstance(state, dict)
        for field in ("last_contiguous_run", "last_attempted_run"):
            assert field not in state or _valid_watermark(state[field])
        if call == "read":
            assert result == state
        if call in ("read", "start"):
            assert path.read_bytes() == content


@settings(max_examples=300, deadline=None)
@given(
    content=st.one_of(
        st.binary(max_size=200),
        _mutated(
            st.lists(st.integers(-(2**70), 2**70), max_size=20).map(lambda r: "\n".join(map(str, r)).encode())
        ),
        st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.integers(4_000, 6_000).map(lambda digits: b"1\n" + b"7" * digits + b"\n2\n"),
    )
)
def test_any_bytes_as_run_records_give_runs_or_corrupt_data(content: bytes) -> None:
    import tempfile

    try:
        is_text = "\0" not in content.decode("utf-8")
    except UnicodeDecodeError:
        is_text = False
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "failure_log"
        path.write_bytes(content)
        try:
            parsed = parse_run_records_from_file(path)
        except CorruptData:
            assert not is_text
            with pytest.raises(CorruptData):  # and it is not replaced either
                write_failure_log(path, [1])
            assert path.read_bytes() == content
            return
        assert is_text
        assert all(type(run) is int and -(2**63) <= run < 2**63 for run in parsed)
        assert path.read_bytes() == content
