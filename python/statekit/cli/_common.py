"""What every ``statekit`` sub-command shares: opening stores, output modes, progress bars."""

from __future__ import annotations

import json
import sys
from typing import Any, Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from statekit._factory import create_store, parse_store_url
from statekit.backends.redis._config import redact_url
from statekit.errors import ConfigError
from statekit.store import KeyValueStore

__all__ = [
    "PROGRESS_THRESHOLD",
    "open_store",
    "print_json",
    "progress_bar",
    "show_progress",
    "stderr_console",
    "stdout_console",
]

#: With ``--progress`` left to its default, a bar is shown for work on at least this many keys
#: (and only when stderr is a terminal).
PROGRESS_THRESHOLD: Final = 2_000


def open_store(url: str, *, what: str, **options: Any) -> KeyValueStore:
    """A store for ``url``; ``memory://`` is refused (it would be empty: it lives in this process).

    ``what`` names the role in the error message ("inspect", "migrate from", ...).
    """
    store_type, _ = parse_store_url(url) if "://" in url else (url.lower(), {})
    if store_type == "memory":
        raise ConfigError(
            f"cannot {what} a memory:// store: it lives inside one process, so this command would only "
            "ever see an empty store of its own; use a persistent store (sqlite:///..., redis://...)"
        )
    if "://" not in url:
        raise ConfigError(f"expected a store URL (sqlite:///abs/path.db, redis://host:6379/0), got {url!r}")
    return create_store(url, **options)


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    return redact_url(url)


def stdout_console() -> Console:
    """Rich output on stdout: tables on a terminal, plain text (no colour, no wrapping) otherwise."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(no_color=True, highlight=False, soft_wrap=True, width=10_000)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())


def show_progress(choice: bool | None, total: int) -> bool:
    """Whether to draw a bar: ``--progress``/``--no-progress``, else big jobs on a terminal."""
    if choice is not None:
        return choice
    return sys.stderr.isatty() and total >= PROGRESS_THRESHOLD


def progress_bar(enabled: bool) -> Progress:
    """A rich progress bar on stderr (``disable=True`` draws nothing)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True, force_terminal=enabled or None),
        disable=not enabled,
        transient=False,
    )


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str, ensure_ascii=False))
