"""``statekit runs show | set | gaps STATE_FILE``: read or set the watermarks of a run-state file,
or list the runs missing below its ``last_attempted_run``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from statekit import _native
from statekit.cli._common import print_json, stdout_console
from statekit.errors import ConfigError, StorageError
from statekit.runs import (
    LAST_ATTEMPTED,
    LAST_CONTIGUOUS,
    TIMESTAMP,
    _directory_lock,
    _load_state,
    _now_iso,
    _watermark,
    parse_run_records_from_file,
    read_state,
)
from statekit.runs import write_state as _write_state

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``runs`` and its actions."""
    parser = commands.add_parser(
        "runs",
        help="show or set a run-state file (last_contiguous_run, last_attempted_run)",
        description="Read or set the watermarks of a run-state file (statekit.runs).",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="print the state (a missing file shows as empty)")
    show.add_argument("state_file", metavar="STATE_FILE", type=Path)
    show.add_argument("--json", action="store_true", help="print the JSON object")
    show.set_defaults(run=run_show)

    set_ = sub.add_parser(
        "set",
        help="set watermarks (atomic write, under the same lock as the update functions)",
        description=(
            "Set last_contiguous_run and/or last_attempted_run (e.g. to re-process runs after a fix); other "
            "fields are kept and timestamp is set to now. The file is created when missing."
        ),
    )
    set_.add_argument("state_file", metavar="STATE_FILE", type=Path)
    set_.add_argument("--last-contiguous", type=int, metavar="RUN", help="new last_contiguous_run")
    set_.add_argument("--last-attempted", type=int, metavar="RUN", help="new last_attempted_run")
    set_.add_argument("--json", action="store_true", help="print the new state as JSON")
    set_.set_defaults(run=run_set)

    gaps = sub.add_parser(
        "gaps",
        help="list the runs missing after last_contiguous_run, up to last_attempted_run",
        description=(
            "Print the runs after last_contiguous_run, up to last_attempted_run, that are not in "
            "RUN_RECORDS_FILE (the successful runs, one per line, as update_contiguous_run_state takes "
            "them): the runs to process again, one per line. At most 1,000,000 missing runs in a window "
            "of at most 10**9 runs."
        ),
    )
    gaps.add_argument("state_file", metavar="STATE_FILE", type=Path)
    gaps.add_argument("run_records", metavar="RUN_RECORDS_FILE", type=Path, help="the successful runs")
    gaps.add_argument(
        "--limit",
        type=int,
        default=1000,
        metavar="N",
        help="print at most N runs (default 1000; all are counted)",
    )
    gaps.add_argument("--json", action="store_true", help="print one JSON object")
    gaps.set_defaults(run=run_gaps)


def _print_state(path: Path, state: dict[str, object], as_json: bool) -> None:
    if as_json:
        print_json(state)
        return
    if not state:
        print(f"{path}: no state (missing or empty)")
        return
    if sys.stdout.isatty():
        table = Table("field", "value", title=str(path))
        for name, value in state.items():
            table.add_row(name, str(value))
        stdout_console().print(table)
    else:
        for name, value in state.items():
            print(f"{name}\t{value}")


def run_show(args: argparse.Namespace) -> int:
    path: Path = args.state_file
    _print_state(path, read_state(path), args.json)
    return 0


def run_set(args: argparse.Namespace) -> int:
    path: Path = args.state_file
    if args.last_contiguous is None and args.last_attempted is None:
        raise ConfigError("nothing to set: give --last-contiguous RUN and/or --last-attempted RUN")
    with _directory_lock(path.parent):
        # (read_state would take the directory lock again: flock is per open file, so it would wait
        # for us.) A corrupt file is moved aside first, as every update function does.
        state = _load_state(path, dir_locked=True, strict=True) or {}
        if args.last_contiguous is not None:
            state[LAST_CONTIGUOUS] = args.last_contiguous
        if args.last_attempted is not None:
            state[LAST_ATTEMPTED] = args.last_attempted
        state[TIMESTAMP] = _now_iso()
        if not _write_state(path, state):
            raise StorageError(f"could not write {str(path)!r} (the reason is logged above)", path=str(path))
    _print_state(path, state, args.json)
    return 0


def run_gaps(args: argparse.Namespace) -> int:
    path: Path = args.state_file
    if args.limit < 0:
        raise ConfigError(f"--limit must be 0 or more, got {args.limit}")
    state = read_state(path)
    last = _watermark(state, LAST_CONTIGUOUS, path)
    bound = _watermark(state, LAST_ATTEMPTED, path)
    successful = parse_run_records_from_file(args.run_records)
    try:
        missing = _native.run_gaps(last, successful, bound)
    except ValueError as exc:  # a window or a result too large to list
        raise ConfigError(f"{path}: {exc}") from exc
    shown = missing[: args.limit]
    if args.json:
        print_json({LAST_CONTIGUOUS: last, LAST_ATTEMPTED: bound, "missing": len(missing), "runs": shown})
        return 0
    for run in shown:
        print(run)
    summary = f"{len(missing):,} runs missing after {LAST_CONTIGUOUS}={last} up to {LAST_ATTEMPTED}={bound}"
    if len(shown) < len(missing):
        summary += f" ({len(shown):,} shown: --limit)"
    print(summary, file=sys.stderr)
    return 0
