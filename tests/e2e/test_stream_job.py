"""The stream job demo ``demo/stream_job/``, run for real.

Most tests start it as a subprocess (``python -m demo.stream_job``) with a small stream, the way
a user (and ``make run``) does, including the hard crash; a few import it to check its building
blocks and that its verification does catch a wrong store.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from statekit import create_store
from statekit.checkpoint import CheckpointCoordinator, CheckpointOptions
from statekit.locks import FileLock

ROOT = Path(__file__).resolve().parents[2]
#: How the job is started: as a module, from the repository root (put on the path, since the
#: subprocesses run in a temporary directory).
COMMAND = [sys.executable, "-m", "demo.stream_job"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
EVENTS = 30_000
BATCH = 2_000
BATCHES = EVENTS // BATCH
KEYS = 500
SEED = 20240101  # the job's default
RATE = 50  # failing events per 10,000: about 10 per batch, so every batch has some
# 5 s windows: 6 windows of 5,000 events, so batches of 2,000 straddle window boundaries.
SMALL = [
    *("--events", str(EVENTS), "--keys", str(KEYS), "--batch-size", str(BATCH)),
    *("--window-seconds", "5", "--failure-rate", str(RATE)),
]
CRASH_CODE = 70
LOCKED_CODE = 75


@pytest.fixture(scope="module")
def job() -> ModuleType:
    """The demo package, imported (it re-exports the building blocks the tests use)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("demo.stream_job")


def run_job(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "--state-dir", str(state_dir), "--no-progress", *SMALL, *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=state_dir.parent,
        env=ENV,
        check=False,
    )


def await_(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def assert_match(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, describe(proc)
    assert re.search(r"^MATCH: all [\d,]+ stored aggregates", proc.stdout, re.MULTILINE), describe(proc)
    assert "MISMATCH" not in proc.stdout


def processed(proc: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"^processed ([\d,]+) events", proc.stdout, re.MULTILINE)
    assert found, describe(proc)
    return int(found.group(1).replace(",", ""))


def stored(db: Path) -> tuple[Any, int]:
    """The offset record and the number of aggregates in a job's SQLite file."""

    async def read() -> tuple[Any, int]:
        async with create_store(f"sqlite://{db}") as store:
            return await store.get("job:offset"), len(await store.keys("job:agg:"))

    return asyncio.run(read())


def run_state(state_dir: Path) -> tuple[int, int]:
    """``(last_contiguous_run, last_attempted_run)`` of the job's run-state file."""
    state = json.loads((state_dir / "run_state.json").read_text())
    return state["last_contiguous_run"], state["last_attempted_run"]


def failure_log(state_dir: Path) -> list[int]:
    """The lines of the job's failure log, as ints, in file order."""
    return [int(line) for line in (state_dir / "failures.log").read_text().splitlines()]


def expected_failures(job: ModuleType, start: int = 0, stop: int = EVENTS) -> list[int]:
    """Offsets of the events of ``[start, stop)`` that fail, by the plain per-event rule."""
    return [offset for offset in range(start, stop) if job.event_at(SEED, offset, KEYS, RATE).fails]


def counters(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The tracker counters the summary prints: ``{"batches": .., "events_processed": .., ...}``."""
    found = re.search(r"^tracker 'stream_job'.*: (batches .*)$", proc.stdout, re.MULTILINE)
    assert found, describe(proc)
    return {
        name: int(value.replace(",", "")) for name, value in re.findall(r"(\w+) ([\d,]+)", found.group(1))
    }


def phase_counts(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """How many times each batch phase was timed, from the summary's timing lines."""
    return {
        phase: int(count.replace(",", ""))
        for phase, count in re.findall(r"^  (\w+) +count +([\d,]+) +avg", proc.stdout, re.MULTILINE)
    }


def checkpoint_stats(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The counters of the summary's checkpoint line: ``{"created": .., "restores": .., ...}``."""
    found = re.search(r"^checkpoints in .*: (created .*?);", proc.stdout, re.MULTILINE)
    assert found, describe(proc)
    return {
        name.replace(" ", "_"): int(value)
        for name, value in re.findall(r"(\w[a-z ]*?) (\d+)", found.group(1))
    }


def checkpoint_files(state_dir: Path) -> list[Path]:
    """The job's checkpoint files, oldest first."""
    return sorted((state_dir / "checkpoints").glob("ckpt-*.ckpt"))


def restored_offset(proc: subprocess.CompletedProcess[str]) -> tuple[str, int]:
    """``(checkpoint id, offset)`` of the restore the job reports."""
    found = re.search(
        r"^restored checkpoint (ckpt-\S+): the store is now at offset ([\d,]+)", proc.stdout, re.MULTILINE
    )
    assert found, describe(proc)
    return found.group(1), int(found.group(2).replace(",", ""))


# -- the example as a program -------------------------------------------------------------------


def test_clean_run_verifies(tmp_path: Path, job: ModuleType) -> None:
    state = tmp_path / "state"
    proc = run_job(state)
    assert_match(proc)
    assert processed(proc) == EVENTS
    assert "resuming" not in proc.stdout
    record, aggregates = stored(state / "stream.db")
    assert record["offset"] == EVENTS
    assert aggregates > 0

    # The bookkeeping: one run per batch, one failure-log line per failing event, the summary.
    failures = expected_failures(job)
    assert 100 < len(failures) < 200  # ~0.5 % of 30,000
    assert record["run"] == BATCHES
    assert record["failed"] == len(failures)
    assert run_state(state) == (BATCHES, BATCHES)
    assert failure_log(state) == failures
    assert f"all list the {len(failures):,}" in proc.stdout
    assert f"{len(failures):,} failed events left out" in proc.stdout
    assert counters(proc) == {"batches": BATCHES, "events_processed": EVENTS, "events_failed": len(failures)}
    assert "redone work: 0 batch(es), 0 events" in proc.stdout
    assert phase_counts(proc) == {"fold": BATCHES, "read": BATCHES, "put_many": BATCHES}
    assert (state / "stream_job.lock").exists()  # never deleted; it only holds the last PID
    # A clean finish takes a final checkpoint (and the periodic ones, if the run is slow).
    assert checkpoint_stats(proc)["created"] >= 1
    assert checkpoint_stats(proc)["restores"] == 0
    assert len(checkpoint_files(state)) == min(checkpoint_stats(proc)["created"], job.MAX_CHECKPOINTS)

    # A second run finds everything committed, processes nothing and verifies again.
    again = run_job(state)
    assert_match(again)
    assert processed(again) == 0
    assert "nothing to process" in again.stdout
    assert "restored checkpoint" not in again.stdout  # a finished stream is never rolled back
    assert f"the store has committed run {BATCHES}: they agree" in again.stdout
    assert counters(again)["batches"] == BATCHES  # nothing was redone
    assert run_state(state) == (BATCHES, BATCHES)
    assert failure_log(state) == failures


def test_crash_then_resume(tmp_path: Path, job: ModuleType) -> None:
    state = tmp_path / "state"
    crashed = run_job(state, "--crash-after", "10000")
    assert crashed.returncode == CRASH_CODE, describe(crashed)
    assert "simulating a crash" in crashed.stdout
    assert "MATCH" not in crashed.stdout

    # The batch that reached 10,000 events was computed but never written.
    record, aggregates = stored(state / "stream.db")
    assert record["offset"] == 10_000 - BATCH
    assert aggregates > 0
    # The run-state file says 4 batches, like the store; the failure log already holds the lines
    # of the uncommitted fifth batch (they are written before the commit, so never lost).
    assert record["run"] == 4
    assert run_state(state) == (4, 4)
    redone = expected_failures(job, 10_000 - BATCH, 10_000)
    assert redone
    assert failure_log(state) == expected_failures(job, 0, 10_000)
    # The crash left the lock file, with the dead process's PID in it; the kernel dropped the flock.
    pid = re.search(r"held by pid (\d+)", crashed.stdout)
    assert pid, describe(crashed)
    assert (state / "stream_job.lock").read_text().strip() == pid.group(1)

    # Without checkpoints the resume starts exactly at the last commit (test_crash_resume_restores_*
    # cover the default, which first goes back to the newest checkpoint).
    resumed = run_job(state, "--no-checkpoints")
    assert_match(resumed)
    assert "restored checkpoint" not in resumed.stdout
    assert "checkpoints: off (--no-checkpoints)" in resumed.stdout
    assert f"resuming at offset {10_000 - BATCH:,}" in resumed.stdout
    assert processed(resumed) == EVENTS - (10_000 - BATCH)
    assert stored(state / "stream.db")[0]["offset"] == EVENTS
    assert "the store has committed run 4: they agree" in resumed.stdout
    assert f"failure log: dropped {len(redone)} line(s) of the uncommitted batch" in resumed.stdout
    # Exactly once where it matters, at least once where it is labelled so.
    assert run_state(state) == (BATCHES, BATCHES)
    assert failure_log(state) == expected_failures(job)  # unique, in order, none missing
    assert counters(resumed) == {
        "batches": BATCHES + 1,
        "events_processed": EVENTS + BATCH,
        "events_failed": len(expected_failures(job)) + len(redone),
    }
    assert f"redone work: 1 batch(es), {BATCH:,} events" in resumed.stdout
    assert phase_counts(resumed) == {"fold": BATCHES + 1, "read": BATCHES + 1, "put_many": BATCHES}
    assert (state / "stream_job.lock").read_text().strip() != pid.group(1)


def test_two_crashes_then_resume(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = run_job(state, "--crash-after", "7000", "--no-checkpoints")
    assert first.returncode == CRASH_CODE, describe(first)
    offset_after_first = stored(state / "stream.db")[0]["offset"]
    assert offset_after_first == 6_000

    # --crash-after counts the events of this run: the second crash is further along.
    second = run_job(state, "--crash-after", "9000", "--no-checkpoints")
    assert second.returncode == CRASH_CODE, describe(second)
    assert f"resuming at offset {offset_after_first:,}" in second.stdout
    offset_after_second = stored(state / "stream.db")[0]["offset"]
    assert offset_after_second == 14_000

    final = run_job(state, "--no-checkpoints")
    assert_match(final)
    assert f"resuming at offset {offset_after_second:,}" in final.stdout
    assert processed(final) == EVENTS - offset_after_second
    assert run_state(state) == (BATCHES, BATCHES)
    assert counters(final)["batches"] == BATCHES + 2


# -- checkpoints -------------------------------------------------------------------------------

#: Checkpoints every 10 ms, so that a run of a fraction of a second takes several.
FAST_CHECKPOINTS = ("--checkpoint-interval", "0.01")


def crash_with_checkpoints(state: Path, *args: str, at: int, at_least: int) -> int:
    """Crash a run that takes checkpoints often; return the last committed offset."""
    crashed = run_job(state, "--crash-after", str(at), *FAST_CHECKPOINTS, *args)
    assert crashed.returncode == CRASH_CODE, describe(crashed)
    assert len(checkpoint_files(state)) >= at_least, describe(crashed)
    return at - BATCH


async def checkpoint_content(path: Path) -> dict[str, Any]:
    """What a checkpoint file holds, restored into a memory store (``require_prefix`` "job:")."""
    async with create_store("memory://") as memory:
        coordinator = CheckpointCoordinator(memory, 60, CheckpointOptions(path.parent), prefix="job:")
        await coordinator.restore(path.name.removesuffix(".ckpt"))
        return dict(await memory.range_get(""))


def test_crash_resume_restores_a_checkpoint(tmp_path: Path, job: ModuleType) -> None:
    state = tmp_path / "state"
    crashed_at = crash_with_checkpoints(state, at=20_000, at_least=2)
    assert stored(state / "stream.db")[0]["offset"] == crashed_at
    newest = checkpoint_files(state)[-1]
    # A checkpoint holds the committed state: aggregates, offset record and error records, all
    # under "job:" (restoring it with require_prefix "job:" succeeds), and not the tracker.
    content = await_(checkpoint_content(newest))
    offset = content["job:offset"]["offset"]
    assert 0 < offset <= crashed_at
    assert offset % BATCH == 0  # the state after a whole batch
    assert sum(agg["count"] for key, agg in content.items() if key.startswith("job:agg:")) == (
        offset - content["job:offset"]["failed"]
    )
    errors = sorted(int(key.rsplit(":", 1)[1]) for key in content if key.startswith("job:errors:"))
    assert errors[: content["job:offset"]["failed"]] == expected_failures(job, 0, offset)

    resumed = run_job(state)
    assert_match(resumed)
    assert restored_offset(resumed) == (newest.name.removesuffix(".ckpt"), offset)
    assert resumed.stdout.index("restored checkpoint") < resumed.stdout.index("resuming at offset")
    assert f"resuming at offset {offset:,}" in resumed.stdout
    assert processed(resumed) == EVENTS - offset
    if offset < crashed_at:  # the watermarks went back with the store
        assert f"AHEAD of the store, which has committed run {offset // BATCH}" in resumed.stdout
    assert checkpoint_stats(resumed)["restores"] == 1
    assert checkpoint_stats(resumed)["restore_failures"] == 0
    assert checkpoint_stats(resumed)["created"] >= 1  # at least the final one
    assert run_state(state) == (BATCHES, BATCHES)
    assert failure_log(state) == expected_failures(job)
    # The tracker is not rolled back: the batches after the checkpoint count as redone work.
    redone = (crashed_at - offset) // BATCH + 1
    assert counters(resumed)["batches"] == BATCHES + redone
    assert f"redone work: {redone} batch(es)" in resumed.stdout


def test_a_crash_always_leaves_a_checkpoint_that_the_next_run_restores(tmp_path: Path) -> None:
    """What ``make run`` shows, scaled down: with the default cadence (every 5 committed batches,
    and every 2 s), a crash after 10 batches leaves a checkpoint however fast the run was."""
    state = tmp_path / "state"
    crashed = run_job(state, "--crash-after", "20000")
    assert crashed.returncode == CRASH_CODE, describe(crashed)
    found = re.search(r"the newest checkpoint of this run is (ckpt-\S+) \(offset ([\d,]+)\)", crashed.stdout)
    assert found, describe(crashed)
    assert int(found.group(2).replace(",", "")) == 5 * BATCH
    left = [path.name.removesuffix(".ckpt") for path in checkpoint_files(state)]
    assert found.group(1) in left  # (a slow run may also have left newer, periodic ones)

    resumed = run_job(state)
    assert_match(resumed)
    restored_id, offset = restored_offset(resumed)
    assert restored_id == left[-1]
    assert offset >= 5 * BATCH
    assert offset % BATCH == 0
    assert checkpoint_stats(resumed)["restores"] == 1


def test_batch_checkpoints_do_not_depend_on_timing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # No periodic checkpoint can happen within the run: only the batch ones.
    crashed = run_job(
        state, "--crash-after", "20000", "--checkpoint-interval", "3600", "--checkpoint-every", "3"
    )
    assert crashed.returncode == CRASH_CODE, describe(crashed)
    # 9 batches committed (the 10th reached 20,000 events and crashed): checkpoints after 3, 6 and 9.
    files = checkpoint_files(state)
    assert len(files) == 3, describe(crashed)
    newest_id = files[-1].name.removesuffix(".ckpt")
    assert f"the newest checkpoint of this run is {newest_id} (offset {9 * BATCH:,})" in crashed.stdout
    resumed = run_job(state, "--checkpoint-interval", "3600")
    assert_match(resumed)
    assert restored_offset(resumed) == (newest_id, 9 * BATCH)
    assert "every 5 batches and every 3600 s" in resumed.stdout


def test_a_corrupt_newest_checkpoint_is_kept_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    crash_with_checkpoints(state, at=20_000, at_least=2)
    *_, older, newest = checkpoint_files(state)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit, in the payload
    newest.write_bytes(data)

    resumed = run_job(state)
    assert_match(resumed)
    newest_id = newest.name.removesuffix(".ckpt")
    assert (
        f"checkpoint {newest_id} failed verification: kept aside as {newest.name}.corrupt" in resumed.stdout
    )
    assert restored_offset(resumed)[0] == older.name.removesuffix(".ckpt")
    assert (newest.parent / f"{newest.name}.corrupt").read_bytes() == data  # kept for inspection
    assert newest not in checkpoint_files(state)
    assert checkpoint_stats(resumed)["restores"] == 1
    assert checkpoint_stats(resumed)["restore_failures"] == 1


def test_no_checkpoints_resumes_from_the_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    crashed_at = crash_with_checkpoints(state, at=10_000, at_least=1)
    before = checkpoint_files(state)

    resumed = run_job(state, "--no-checkpoints")
    assert_match(resumed)
    assert "restored checkpoint" not in resumed.stdout
    assert f"resuming at offset {crashed_at:,}" in resumed.stdout
    assert processed(resumed) == EVENTS - crashed_at
    assert "checkpoints: off (--no-checkpoints)" in resumed.stdout
    assert checkpoint_files(state) == before  # none taken, none restored or set aside

    # --reset deletes the checkpoints with the rest of the job's state.
    fresh = run_job(state, "--reset", "--no-checkpoints")
    assert "and removed run_state.json, failures.log" in fresh.stdout
    assert_match(fresh)


def test_memory_store_resumes_from_its_checkpoints(tmp_path: Path) -> None:
    """A memory store dies with the process; with checkpoints a crash loses only the recent work."""
    state = tmp_path / "state"
    # A memory store answers without suspending, so its runs are quick: a longer stream leaves
    # the periodic task time for a few checkpoints before the crash.
    memory = ("--store", "memory://", "--events", "250000")
    crash_with_checkpoints(state, *memory, at=240_000, at_least=1)
    resumed = run_job(state, *memory, *FAST_CHECKPOINTS)
    assert_match(resumed)  # the error records and the tracker came back with the aggregates
    _, offset = restored_offset(resumed)
    assert "the store is empty" in resumed.stdout
    assert processed(resumed) == 250_000 - offset


def test_resume_with_another_batch_size(tmp_path: Path) -> None:
    """Batching is not part of the result: a resumed run may commit in other batch sizes."""
    state = tmp_path / "state"
    assert run_job(state, "--crash-after", "5000", "--no-checkpoints").returncode == CRASH_CODE
    assert_match(run_job(state, "--batch-size", "1234", "--no-checkpoints"))
    # Runs are counted in the offset record, not derived from offsets: 2 of 2,000, then 22 of 1,234.
    assert run_state(state) == (2 + 22, 2 + 22)


def test_memory_store_verifies(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = run_job(state, "--store", "memory://")
    assert_match(proc)
    assert processed(proc) == EVENTS
    assert "store memory://" in proc.stdout
    assert "no lock, run-state file or failure log" in proc.stdout
    assert (
        "checkpoints: off (a memory store takes checkpoints only with --checkpoint-interval or "
        "--checkpoint-every)" in proc.stdout
    )
    assert f"batches {BATCHES}" in proc.stdout  # the tracker lives in the (memory) store
    assert not state.exists()  # nothing was written to disk


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--seed", "7"),
        ("--events", "20000"),
        ("--keys", "400"),
        ("--window-seconds", "10"),
        ("--failure-rate", "7"),
    ],
)
def test_resume_with_other_parameters_is_refused(tmp_path: Path, option: str, value: str) -> None:
    state = tmp_path / "state"
    assert run_job(state, "--crash-after", "4000").returncode == CRASH_CODE
    before = stored(state / "stream.db")

    refused = run_job(state, option, value)  # argparse keeps the last occurrence of an option
    assert refused.returncode == 2, describe(refused)
    assert "refusing to resume" in refused.stderr
    assert option in refused.stderr
    assert "--reset" in refused.stderr
    assert "MATCH" not in refused.stdout
    assert stored(state / "stream.db") == before  # the refused run changed nothing

    # --reset discards the old state; the job then starts over with the new parameters.
    fresh = run_job(state, option, value, "--reset")
    assert_match(fresh)
    assert "--reset: deleted" in fresh.stdout
    assert "and removed run_state.json, failures.log" in fresh.stdout
    assert "resuming" not in fresh.stdout
    assert "redone work: 0 batch(es)" in fresh.stdout  # the tracker was reset too
    record = stored(state / "stream.db")[0]
    assert run_state(state) == (record["run"], record["run"])
    assert len(failure_log(state)) == record["failed"]


def test_aggregates_without_offset_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert_match(run_job(state))

    async def drop_offset() -> None:
        async with create_store(f"sqlite://{state / 'stream.db'}") as store:
            assert await store.delete("job:offset")

    asyncio.run(drop_offset())
    refused = run_job(state)
    assert refused.returncode == 2, describe(refused)
    assert "no 'job:offset' record" in refused.stderr


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    for args in (["--events", "0"], ["--keys", "200000"], ["--batch-size", "x"]):
        proc = run_job(tmp_path / "state", *args)
        assert proc.returncode == 2, describe(proc)
        assert "usage:" in proc.stderr
    proc = run_job(tmp_path / "state", "--store", "redis-ish://localhost")
    assert proc.returncode == 2, describe(proc)
    assert "unsupported store URL scheme" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--failure-rate", "-1"],
        ["--failure-rate", "10001"],
        ["--lock-check-interval", "0"],
        ["--checkpoint-interval", "0"],
        ["--no-checkpoints", "--checkpoint-interval", "1"],
        ["--checkpoint-every", "0"],
        ["--no-checkpoints", "--checkpoint-every", "1"],
    ],
)
def test_bad_bookkeeping_options(
    job: ModuleType, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        job.parse_args(args)
    assert exit_info.value.code == 2
    assert args[0] in capsys.readouterr().err


def test_unusable_store_is_a_clean_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "state" / "stream.db"
    not_a_db.parent.mkdir()
    not_a_db.write_text("this is not a SQLite database, and it is long enough to have a header" * 20)
    proc = run_job(tmp_path / "state")
    assert proc.returncode == 3, describe(proc)
    assert "StorageError" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not_a_db.read_text().startswith("this is not")  # left untouched


# -- the lock ------------------------------------------------------------------------------------


def test_second_instance_is_locked_out(
    tmp_path: Path, job: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert run_job(state, "--crash-after", "6000").returncode == CRASH_CODE
    before = stored(state / "stream.db")
    files_before = (run_state(state), failure_log(state))

    # This test process plays the running instance: it holds the job's lock.
    with FileLock(state / "stream_job.lock"):
        locked_out = run_job(state)
        assert locked_out.returncode == LOCKED_CODE, describe(locked_out)
        assert "another instance of the stream job is running" in locked_out.stderr
        assert f"held by process {os.getpid()}" in locked_out.stderr
        assert "Traceback" not in locked_out.stderr
        assert "processed" not in locked_out.stdout
        # In the same process (another FileLock on the same file), too.
        argv = ["--state-dir", str(state), "--no-progress", *SMALL]
        assert job.main(argv) == LOCKED_CODE
        assert "another instance of the stream job is running" in capsys.readouterr().err
    assert stored(state / "stream.db") == before  # the locked-out runs touched nothing
    assert (run_state(state), failure_log(state)) == files_before

    # Once the holder is gone the job resumes (the crash's stale lock file was no obstacle either).
    resumed = run_job(state, "--no-checkpoints")
    assert_match(resumed)
    assert "resuming at offset 4,000" in resumed.stdout


def test_a_data_file_at_the_lock_path_is_refused_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    data = b"id,amount\n1,42\n" * 100
    (state / "stream_job.lock").write_bytes(data)
    proc = run_job(state)
    assert proc.returncode == 3, describe(proc)  # not 75: nobody holds it, it cannot be taken
    assert "is not a lock file" in proc.stderr
    assert "another instance" not in proc.stderr
    assert (state / "stream_job.lock").read_bytes() == data


def test_lost_lock_stops_before_the_next_commit(tmp_path: Path) -> None:
    """Deleting the lock file under a running job: its monitor notices and the job stops cleanly."""
    state = tmp_path / "state"
    events = 100_000  # seconds of work: plenty of time to pull the lock file from under it
    args = [*SMALL, "--events", str(events), "--lock-check-interval", "0.02"]
    with subprocess.Popen(
        [*COMMAND, "--state-dir", str(state), "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=ENV,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("lock "):  # printed once the lock is held, before any batch
                break
        deadline = time.monotonic() + 60
        while not (state / "run_state.json").exists():  # written after the first commit
            assert proc.poll() is None, "the job ended before the lock could be pulled"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        (state / "stream_job.lock").unlink()
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == LOCKED_CODE, f"{out}\n{err}"
    assert "was deleted" in err
    assert "Stopped before committing another batch" in err
    assert "MATCH" not in out

    # What was committed is whole: the offset record, the aggregates and the watermarks agree.
    record, _ = stored(state / "stream.db")
    assert 0 < record["offset"] < events
    assert record["offset"] == record["run"] * BATCH
    assert run_state(state) == (record["run"], record["run"])

    async def folded() -> int:
        async with create_store(f"sqlite://{state / 'stream.db'}") as store:
            return sum(agg["count"] for _, agg in await store.range_get("job:agg:"))

    assert asyncio.run(folded()) == record["offset"] - record["failed"]


# -- run-state file and failure log kept consistent with the store -------------------------------


def test_run_state_and_failure_log_are_reconciled_with_the_store(
    tmp_path: Path, job: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert_match(run_job(state))
    failures = expected_failures(job)
    path = state / "run_state.json"

    # Behind the store (a crash between a commit and the watermark update): caught up.
    path.write_text(json.dumps({"last_contiguous_run": 9, "last_attempted_run": 11, "owner": "ops"}))
    with (state / "failures.log").open("a") as log:  # and a duplicated line, say from a bad restore
        log.write(f"{failures[3]}\n")
    argv = ["--state-dir", str(state), "--no-progress", *SMALL]
    assert job.main(argv) == 0
    behind = capsys.readouterr().out
    assert "incremental start run 11 (contiguous 9, attempted 11) lags the store" in behind
    assert f"caught up to {BATCHES}" in behind
    assert run_state(state) == (BATCHES, BATCHES)
    assert json.loads(path.read_text())["owner"] == "ops"  # other fields are kept
    assert "failure log: dropped 1 line(s)" in behind
    assert failure_log(state) == failures

    # Ahead of the store (say, the database was restored from an older copy): set back.
    path.write_text(json.dumps({"last_contiguous_run": 40, "last_attempted_run": 41}))
    assert job.main(argv) == 0
    assert "is AHEAD of the store" in capsys.readouterr().out
    assert run_state(state) == (BATCHES, BATCHES)


# -- verification can fail ----------------------------------------------------------------------


async def _corrupt(db: Path, how: str) -> str:
    """Damage the store behind the job's back; return the key concerned."""
    async with create_store(f"sqlite://{db}") as store:
        aggregates = dict(await store.range_get("job:agg:"))
        if how == "wrong value":  # one event's worth of amount too much
            key = sorted(aggregates)[len(aggregates) // 2]
            await store.put(key, {**aggregates[key], "sum": aggregates[key]["sum"] + 1})
        elif how == "missing":
            key = sorted(aggregates)[-1]
            assert await store.delete(key)
        else:  # an aggregate for a key id that never occurs in the stream
            key = "job:agg:000002:00777"
            assert key not in aggregates
            await store.put(key, {"count": 1, "sum": 5, "min": 5, "max": 5})
        return key


def test_verification_detects_wrong_failure_records(
    tmp_path: Path, job: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    argv = ["--state-dir", str(state), "--no-progress", *SMALL]
    assert job.main(argv) == 0
    capsys.readouterr()
    failures = expected_failures(job)
    not_failing = next(offset for offset in range(EVENTS) if offset not in failures)

    # One of each kind of damage; the aggregates stay right.
    lines = sorted([*failures[1:], not_failing])  # one failed event missing, one unexpected
    (state / "failures.log").write_text("".join(f"{offset}\n" for offset in lines))

    async def damage() -> None:
        async with create_store(f"sqlite://{state / 'stream.db'}") as store:
            assert await store.delete(f"job:errors:{failures[2]:012d}")
            key = f"job:errors:{failures[3]:012d}"
            await store.put(key, {**await store.get(key), "error": "something else"})
            record = await store.get("job:offset")
            await store.put("job:offset", {**record, "failed": record["failed"] + 1})

    asyncio.run(damage())
    assert job.main(argv) == 1
    out = capsys.readouterr().out
    for expected in (
        "failure log failures.log: 1 failed event(s) missing",
        "failure log failures.log: 1 unexpected event(s)",
        "error records: 1 failed event(s) missing",
        "error records: 1 with a wrong id or text",
        f"offset record: counts {len(failures) + 1} failed events",
    ):
        assert f"wrong: {expected}" in out
    assert "MISMATCH: the aggregates are right, but 5 check(s) of the failure records fail" in out


@pytest.mark.parametrize("how", ["wrong value", "missing", "unexpected"])
def test_verification_detects_a_corrupted_store(
    tmp_path: Path, job: ModuleType, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    state = tmp_path / "state"
    argv = ["--state-dir", str(state), "--no-progress", *SMALL]
    assert job.main(argv) == 0
    assert "MATCH: all" in capsys.readouterr().out

    key = asyncio.run(_corrupt(state / "stream.db", how))
    assert job.main(argv) == 1  # nothing left to process: it only verifies, and fails
    out = capsys.readouterr().out
    assert "MISMATCH: 1 of" in out
    assert f"wrong: {key}" in out


# -- building blocks -----------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "seed"), [(0, 99), (300, 99), (300, -(2**70) + 5)])
def test_fold_batch_agrees_with_event_at(job: ModuleType, rate: int, seed: int) -> None:
    params = job.JobParams(events=12_000, keys=37, seed=seed, window_seconds=4, failure_rate=rate)
    expected: dict[str, list[int]] = {}
    failed: list[int] = []
    for offset in range(3_500, 9_100):  # straddles the windows starting at 4,000 and 8,000
        event = job.event_at(params.seed, offset, params.keys, rate)
        assert event.time_ms == job.EPOCH_MS + offset
        if event.fails:
            failed.append(offset)
            continue
        key = job.agg_key((event.time_ms - job.EPOCH_MS) // params.window_ms, event.key)
        agg = expected.setdefault(key, [0, 0, event.amount, event.amount])
        agg[0] += 1
        agg[1] += event.amount
        agg[2] = min(agg[2], event.amount)
        agg[3] = max(agg[3], event.amount)
    deltas, batch_failed = job.fold_batch(params, 3_500, 9_100)
    assert {key: list(delta) for key, delta in deltas.items()} == expected
    assert {key[:14] for key in deltas} == {"job:agg:000000", "job:agg:000001", "job:agg:000002"}
    assert batch_failed == failed
    assert (len(failed) > 100) == (rate > 0)  # 3 % of 5,600 events


@pytest.mark.parametrize("first_stop", [5_300, 8_000])
def test_process_resumed_in_a_window_merges_into_what_the_earlier_run_stored(
    job: ModuleType, first_stop: int
) -> None:
    """A run that starts in the middle of a window (5,300) reads that window's stored aggregates
    once, and keeps what it commits itself: the result equals the recomputation either way."""
    from statekit.persistence import create_persistence_manager, create_state_tracker

    bookkeeping = importlib.import_module("demo.stream_job.bookkeeping")
    verify = importlib.import_module("demo.stream_job.verify")
    loop = importlib.import_module("demo.stream_job.job")
    params = job.JobParams(events=13_000, keys=40, seed=11, window_seconds=4, failure_rate=200)
    failed: list[int] = []
    expected = {
        key: agg for _, window in verify.expected_windows(params, failed) for key, agg in window.items()
    }

    async def run() -> tuple[Any, dict[str, Any]]:
        async with create_store("memory://") as store:
            tracker = await create_state_tracker("t", store, ttl=None)
            errors = await create_persistence_manager("job", store, error_ttl=None)
            book = bookkeeping.Bookkeeping(params, tracker, errors, None, None)
            first_params = job.JobParams(**{**params.__dict__, "events": first_stop})
            nothing = loop.Committed(0, 0, 0)
            first = await loop.process(
                store, first_params, nothing, book, batch_size=700, crash_after=None, progress=False
            )
            assert first.offset == first_stop
            final = await loop.process(
                store, params, first, book, batch_size=1_100, crash_after=None, progress=False
            )
            return final, dict(await store.range_get(loop.AGG_PREFIX))

    final, stored = await_(run())
    assert final.offset == params.events
    assert final.failed == len(failed) > 0
    assert stored == expected


def test_failure_rule(job: ModuleType) -> None:
    assert job.failure_threshold(0) == 0
    assert job.failure_threshold(10_000) == 65_536  # every event fails
    assert job.failure_threshold(5) == 33  # 33 / 65,536 = 5.04 per 10,000
    fails = [job.event_at(3, offset, 10, 5).fails for offset in range(200_000)]
    assert 60 < sum(fails) < 140  # ~100 expected
    assert not any(job.event_at(3, offset, 10, 0).fails for offset in range(10_000))
    assert all(job.event_at(3, offset, 10, 10_000).fails for offset in range(1_000))
    # Whether an event fails does not change what it is.
    assert job.event_at(3, 77, 10, 10_000)[:4] == job.event_at(3, 77, 10, 0)[:4]


def test_events_are_deterministic_and_random_access(job: ModuleType) -> None:
    first = [job.event_at(5, offset, 100) for offset in range(1_000)]
    assert first == [job.event_at(5, offset, 100) for offset in range(1_000)]
    assert job.event_at(5, 123_456_789, 100) == job.event_at(5, 123_456_789, 100)
    assert [e.key for e in first] != [e.key for e in (job.event_at(6, o, 100) for o in range(1_000))]
    assert {e.key for e in first} == set(range(100))
    amounts = [e.amount for e in first]
    assert min(amounts) >= -100
    assert max(amounts) < 900
    assert min(amounts) < 0 < max(amounts)


def test_merge_and_key_order(job: ModuleType) -> None:
    assert job.CRASH_EXIT_CODE == CRASH_CODE
    assert job.EXIT_LOCKED == LOCKED_CODE
    first = job.merge(None, (2, 10, 3, 7))
    assert first == {"count": 2, "sum": 10, "min": 3, "max": 7}
    assert job.merge(first, (1, -4, -4, -4)) == {"count": 3, "sum": 6, "min": -4, "max": 7}
    keys = [job.agg_key(w, k) for w in (0, 1, 10, 100) for k in (0, 9, 10, 99_999)]
    assert sorted(keys) == keys
