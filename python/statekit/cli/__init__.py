"""The ``statekit`` command line (``statekit ...`` or ``python -m statekit ...``).

Commands::

    statekit inspect STORE_URL [--prefix P] stats | keys [--start S] [--end E] [--limit N]
        | get KEY [--raw] | ttl KEY | del KEY [--yes]          (each with --json)
    statekit migrate SRC_URL DST_URL [--prefix P] [--batch-size N] [--progress | --no-progress] [--json]
    statekit runs show STATE_FILE [--json]
    statekit runs set STATE_FILE [--last-contiguous RUN] [--last-attempted RUN]
    statekit checkpoint create STORE_URL DIR [--prefix P] [--keep N] [--signing-key-env VAR]
    statekit checkpoint list DIR [--json]
    statekit checkpoint verify DIR [ID ...] [--signing-key-env VAR]
    statekit checkpoint restore DIR --store URL [--id ID] [--key-prefix PREFIX] [--all-keys]
        [--force-prefix] [--dry-run] [--signing-key-env VAR] [--progress | --no-progress]

Exit status: 0 on success; 1 when a key is missing, a checkpoint is corrupt, nothing could be
restored, a migration does not verify, or another expected error happened (one line on stderr, no
traceback); 2 for bad usage. Store URLs are never echoed with their password.

Output: tables on a terminal, plain tab- or line-separated text when stdout is not a terminal,
``--json`` for scripts; progress bars go to stderr, only when it is a terminal (or ``--progress``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from statekit import __version__
from statekit.cli import checkpoint, inspect, migrate, runs
from statekit.errors import StateError

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``statekit`` command."""
    parser = argparse.ArgumentParser(
        prog="statekit", description="State persistence for data pipelines: command-line tools."
    )
    parser.add_argument("--version", action="version", version=f"statekit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect.add_parser(commands)
    migrate.add_parser(commands)
    checkpoint.add_parser(commands)
    runs.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="statekit: %(levelname)s: %(message)s", stream=sys.stderr
    )
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (StateError, OSError) as exc:
        print(f"statekit: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("statekit: interrupted", file=sys.stderr)
        return 130
