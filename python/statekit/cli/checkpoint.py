"""``statekit checkpoint list | verify | restore``: inspect, check and restore checkpoint files."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Final

from tqdm import tqdm

from statekit._factory import create_store
from statekit.checkpoint import (
    CheckpointCoordinator,
    CheckpointInfo,
    CheckpointOptions,
    scan_checkpoints,
    verify_checkpoint,
)
from statekit.errors import CorruptData

__all__ = ["add_parser"]

#: With ``--progress`` left to its default, a bar is shown for restores at least this large
#: (and only when stderr is a terminal).
PROGRESS_THRESHOLD: Final = 10_000


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``checkpoint`` and its sub-commands."""
    parser = commands.add_parser(
        "checkpoint",
        help="list, verify or restore checkpoint files",
        description="Inspect, verify and restore the checkpoint files of a CheckpointCoordinator.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = sub.add_parser("list", help="list the checkpoints of a directory (from their headers)")
    listing.add_argument("directory", type=Path, help="the checkpoint directory")
    listing.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    listing.set_defaults(run=run_list)

    verify = sub.add_parser(
        "verify", help="fully verify checkpoints (SHA-256 and every record); exit 1 if any is corrupt"
    )
    verify.add_argument("directory", type=Path, help="the checkpoint directory")
    verify.add_argument("ids", nargs="*", metavar="ID", help="checkpoints to verify (default: all)")
    verify.set_defaults(run=run_verify)

    restore = sub.add_parser(
        "restore",
        help="restore a checkpoint into a store (replaces everything under the key prefix)",
        description=(
            "Verify and restore a checkpoint into a store: every key under the key prefix is replaced "
            "by the checkpoint's content. Without --id, the newest checkpoint that verifies is used; "
            "corrupt newer ones are renamed to *.corrupt."
        ),
    )
    restore.add_argument("directory", type=Path, help="the checkpoint directory")
    restore.add_argument(
        "--store", required=True, metavar="URL", help="the store to restore into, e.g. sqlite:///abs/state.db"
    )
    restore.add_argument(
        "--id", dest="checkpoint_id", metavar="ID", help="the checkpoint (default: newest valid)"
    )
    restore.add_argument(
        "--key-prefix",
        metavar="PREFIX",
        help="the store's key prefix: only keys under it are replaced (default: the URL's, else all keys)",
    )
    restore.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"show a progress bar (default: for {PROGRESS_THRESHOLD:,}+ entries on a terminal)",
    )
    restore.set_defaults(run=run_restore)


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # not reached


def _as_json(info: CheckpointInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "path": str(info.path),
        "timestamp": info.timestamp.isoformat(),
        "entry_count": info.entry_count,
        "size": info.size,
        "version": info.version,
        "checksum": info.checksum,
        "compression": info.compression,
        "uncompressed_size": info.uncompressed_size,
    }


def _require_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(2, "no such checkpoint directory", str(directory))


def run_list(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    _require_directory(directory)
    readable, unreadable = scan_checkpoints(directory)
    if args.json:
        document = {
            "directory": str(directory),
            "checkpoints": [_as_json(info) for info in readable],
            "unreadable": [{"path": str(path), "error": str(exc)} for path, exc in unreadable],
        }
        print(json.dumps(document, indent=2))
        return 0
    if not readable and not unreadable:
        print(f"no checkpoints in {directory}")
        return 0
    rows = [("ID", "CREATED (UTC)", "ENTRIES", "SIZE", "COMPRESSION", "VERSION", "SHA-256")]
    rows += [
        (
            info.id,
            info.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
            f"{info.entry_count:,}",
            _human_size(info.size),
            info.compression,
            str(info.version),
            info.checksum,
        )
        for info in readable
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for path, exc in unreadable:
        print(f"{path.name}: UNREADABLE: {exc}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    _require_directory(directory)
    if args.ids:
        paths = [directory / f"{checkpoint_id}.ckpt" for checkpoint_id in args.ids]
    else:
        readable, unreadable = scan_checkpoints(directory)
        paths = sorted([info.path for info in readable] + [path for path, _ in unreadable])
    if not paths:
        print(f"statekit: error: no checkpoints to verify in {directory}", file=sys.stderr)
        return 1
    failures = 0
    for path in paths:
        checkpoint_id = path.name.removesuffix(".ckpt")
        try:
            info = verify_checkpoint(path)
        except (CorruptData, OSError) as exc:
            failures += 1
            print(f"CORRUPT  {checkpoint_id}  {exc}")
            continue
        size = _human_size(info.size)
        print(f"OK       {checkpoint_id}  {info.entry_count:,} entries  {size}  sha256 {info.checksum}")
    total = len(paths)
    summary = f"{total - failures} of {total} checkpoint(s) verified"
    print(summary + (f", {failures} corrupt" if failures else ""), file=sys.stderr)
    return 1 if failures else 0


def run_restore(args: argparse.Namespace) -> int:
    return asyncio.run(_restore(args))


async def _restore(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    _require_directory(directory)
    options: dict[str, Any] = {}
    if args.key_prefix is not None:
        options["key_prefix"] = args.key_prefix
    store = create_store(args.store, **options)
    bar: tqdm[Any] | None = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        show = (
            args.progress
            if args.progress is not None
            else sys.stderr.isatty() and total >= PROGRESS_THRESHOLD
        )
        if not show:
            return
        if bar is None:
            bar = tqdm(total=total, unit=" entries", unit_scale=True, desc="restoring", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        coordinator = CheckpointCoordinator(store, 3600.0, CheckpointOptions(directory))
        if args.checkpoint_id is None:
            checkpoint_id = await coordinator.restore_latest(on_progress=on_progress)
        else:
            checkpoint_id = args.checkpoint_id
            await coordinator.restore(checkpoint_id, on_progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
        await store.close()
    entries = next((c.entry_count for c in coordinator.list_checkpoints() if c.id == checkpoint_id), None)
    restored = f"{entries:,} entries" if entries is not None else "its entries"
    where = f" under key prefix {coordinator.prefix!r}" if coordinator.prefix else ""
    # The URL is not echoed: it may hold a password.
    print(
        f"restored checkpoint {checkpoint_id} ({restored}) into the {store.backend.backend_type} store{where}"
    )
    return 0
