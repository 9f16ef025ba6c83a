"""``statekit checkpoint create | list | verify | restore``: write, inspect, check and restore checkpoints."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

from tqdm import tqdm

from statekit._factory import create_store
from statekit.checkpoint import (
    MIN_SIGNING_KEY_LEN,
    CheckpointCoordinator,
    CheckpointInfo,
    CheckpointOptions,
    is_checkpoint_id,
    scan_checkpoints,
    verify_checkpoint,
)
from statekit.cli._common import open_store
from statekit.errors import ConfigError, CorruptData

__all__ = ["add_parser"]

#: With ``--progress`` left to its default, a bar is shown for restores at least this large
#: (and only when stderr is a terminal).
PROGRESS_THRESHOLD: Final = 10_000


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``checkpoint`` and its sub-commands."""
    parser = commands.add_parser(
        "checkpoint",
        help="create, list, verify or restore checkpoint files",
        description="Inspect, verify and restore the checkpoint files of a CheckpointCoordinator.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = sub.add_parser(
        "create",
        help="write a checkpoint of a store (the keys under --prefix) into a directory, then verify it",
        description=(
            "Write a checkpoint of the keys under --prefix (default: the URL's key_prefix, else every key) "
            "to DIR, verified after writing; older checkpoints beyond --keep are then deleted."
        ),
    )
    create.add_argument("store", metavar="STORE_URL", help="the store to checkpoint (not memory://)")
    create.add_argument("directory", metavar="DIR", type=Path, help="the checkpoint directory (created)")
    create.add_argument("--prefix", default=None, help="only keys under this prefix (recorded in the file)")
    create.add_argument("--keep", type=int, default=10, help="checkpoints to keep in DIR (default 10)")
    create.add_argument("--no-compress", action="store_true", help="store records without zstd")
    create.add_argument("--json", action="store_true", help="print the new checkpoint as JSON")
    _add_signing_key_env(create)
    create.set_defaults(run=run_create)

    listing = sub.add_parser("list", help="list the checkpoints of a directory (from their headers)")
    listing.add_argument("directory", type=Path, help="the checkpoint directory")
    listing.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    listing.set_defaults(run=run_list)

    verify = sub.add_parser(
        "verify",
        help="fully verify checkpoints (SHA-256, signature, every record); exit 1 if any is corrupt",
    )
    verify.add_argument("directory", type=Path, help="the checkpoint directory")
    verify.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        type=checkpoint_id_arg,
        help="checkpoint ids (ckpt-YYYYmmddTHHMMSS.ffffffZ, never paths) to verify (default: all)",
    )
    _add_signing_key_env(verify)
    verify.set_defaults(run=run_verify)

    restore = sub.add_parser(
        "restore",
        help="restore a checkpoint into a store (replaces the keys under the checkpoint's key prefix)",
        description=(
            "Verify and restore a checkpoint into a store: every key under the checkpoint's recorded key "
            "prefix is replaced by the checkpoint's content; keys outside it are untouched. Without --id, "
            "the newest checkpoint that verifies is used; unusable newer ones are renamed to *.corrupt. "
            "Replacing keys outside the prefix needs --all-keys; restoring under another prefix needs "
            "--force-prefix. --dry-run changes nothing."
        ),
    )
    restore.add_argument("directory", type=Path, help="the checkpoint directory")
    restore.add_argument(
        "--store",
        required=True,
        metavar="URL",
        help="the store to restore into, e.g. sqlite:///abs/state.db (not memory://: it would vanish)",
    )
    restore.add_argument(
        "--id",
        dest="checkpoint_id",
        metavar="ID",
        type=checkpoint_id_arg,
        help="the checkpoint (default: newest valid)",
    )
    restore.add_argument(
        "--key-prefix",
        metavar="PREFIX",
        help=(
            "only keys under this prefix are replaced (default: the URL's key_prefix, else the prefix "
            "recorded in the checkpoint); it must be the recorded one unless --force-prefix"
        ),
    )
    restore.add_argument(
        "--all-keys",
        action="store_true",
        help="replace EVERY key of the store, including keys outside the checkpoint's prefix",
    )
    restore.add_argument(
        "--force-prefix",
        action="store_true",
        help="restore under --key-prefix even though the checkpoint records another prefix",
    )
    restore.add_argument(
        "--dry-run",
        action="store_true",
        help="verify and print how many keys would be written and deleted; change nothing",
    )
    _add_signing_key_env(restore)
    restore.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"show a progress bar (default: for {PROGRESS_THRESHOLD:,}+ entries on a terminal)",
    )
    restore.set_defaults(run=run_restore)


def checkpoint_id_arg(value: str) -> str:
    """An argparse type: a checkpoint id, exactly (never a path: ``../x`` is refused)."""
    if not is_checkpoint_id(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a checkpoint id (ckpt-YYYYmmddTHHMMSS.ffffffZ, as `statekit checkpoint list` "
            "shows them); give ids, not paths"
        )
    return value


def _add_signing_key_env(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--signing-key-env",
        metavar="VAR",
        help=(
            "name of an environment variable holding the checkpoints' signing key (UTF-8, at least "
            f"{MIN_SIGNING_KEY_LEN} bytes): unsigned or wrongly signed files are refused. The key itself "
            "is never taken on the command line (it would show in ps and shell history)"
        ),
    )


def _signing_key(args: argparse.Namespace) -> bytes | None:
    name: str | None = args.signing_key_env
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"--signing-key-env {name}: the environment variable {name} is not set or empty")
    key = value.encode("utf-8", "surrogateescape")
    if len(key) < MIN_SIGNING_KEY_LEN:
        raise ConfigError(
            f"--signing-key-env {name}: the key must be at least {MIN_SIGNING_KEY_LEN} bytes, got {len(key)}"
        )
    return key


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
        "prefix": info.prefix,
        "signed": info.signed,
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
    rows = [
        ("ID", "CREATED (UTC)", "ENTRIES", "SIZE", "COMPRESSION", "VERSION", "SIGNED", "PREFIX", "SHA-256")
    ]
    rows += [
        (
            info.id,
            info.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
            f"{info.entry_count:,}",
            _human_size(info.size),
            info.compression,
            str(info.version),
            "yes" if info.signed else "no",
            "(not recorded)" if info.prefix is None else repr(info.prefix),
            info.checksum,
        )
        for info in readable
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for path, exc in unreadable:
        print(f"{path.name}: DAMAGED: {exc}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    _require_directory(directory)
    signing_key = _signing_key(args)
    if args.ids:
        # Ids were validated by argparse (checkpoint_id_arg): these paths stay inside directory.
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
            info = verify_checkpoint(path, signing_key=signing_key)
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


def run_create(args: argparse.Namespace) -> int:
    return asyncio.run(_create(args))


async def _create(args: argparse.Namespace) -> int:

    signing_key = _signing_key(args)
    store = open_store(args.store, what="checkpoint")
    try:
        options = CheckpointOptions(
            args.directory,
            max_checkpoints=args.keep,
            compress=not args.no_compress,
            min_interval=0.0,
            signing_key=signing_key,
        )
        coordinator = CheckpointCoordinator(store, 3600.0, options, prefix=args.prefix)
        checkpoint_id = await coordinator.create_checkpoint()
    finally:
        await store.close()
    info = next(c for c in coordinator.list_checkpoints() if c.id == checkpoint_id)
    if args.json:
        print(json.dumps(_as_json(info), indent=2))
    else:
        prefix = "every key" if not info.prefix else f"key prefix {info.prefix!r}"
        print(
            f"created checkpoint {checkpoint_id}: {info.entry_count:,} entries ({prefix}), "
            f"{_human_size(info.size)}, sha256 {info.checksum}, in {args.directory}"
        )
    return 0


def run_restore(args: argparse.Namespace) -> int:
    return asyncio.run(_restore(args))


async def _restore(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    _require_directory(directory)
    signing_key = _signing_key(args)
    options: dict[str, Any] = {}
    if args.key_prefix is not None:
        options["key_prefix"] = args.key_prefix
    store = create_store(args.store, **options)
    if store.backend.backend_type == "memory":
        await store.close()
        raise ConfigError(
            "refusing to restore into a memory store: it lives in this process and the restored keys would "
            "vanish when the command exits; restore into a persistent store (sqlite:///..., redis://...)"
        )
    # Which keys are replaced: --key-prefix, else the URL's key_prefix, else the prefix each
    # checkpoint records (so a restore never touches other tenants' keys by default, and
    # replacing every key always takes --all-keys).
    follow_recorded = args.key_prefix is None and not store.key_prefix
    if args.key_prefix == "" and not store.key_prefix and not args.all_keys:
        await store.close()
        raise ConfigError("--key-prefix '' would replace every key of the store: say so with --all-keys")
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

    rules = {"all_keys": args.all_keys, "force_prefix": args.force_prefix, "recorded_prefix": follow_recorded}
    try:
        coordinator = CheckpointCoordinator(
            store, 3600.0, CheckpointOptions(directory, signing_key=signing_key), prefix=store.key_prefix
        )
        if args.dry_run:
            plan = await coordinator.plan_restore(args.checkpoint_id, **rules)
            for item in plan.unusable:
                print(f"would set aside {item.checkpoint_id}: {item.reason}", file=sys.stderr)
            replaced = "every key of the store" if plan.scope == "" else f"the keys under {plan.scope!r}"
            recorded = "not recorded" if plan.recorded_prefix is None else repr(plan.recorded_prefix)
            kind = store.backend.backend_type
            print(
                f"dry run: checkpoint {plan.checkpoint_id} (prefix {recorded}) would replace {replaced} "
                f"of the {kind} store: {plan.to_write:,} keys written, {plan.to_delete:,} keys deleted, "
                f"{plan.expired:,} expired entries skipped; nothing was changed"
            )
            return 0
        if args.checkpoint_id is None:
            checkpoint_id = await coordinator.restore_latest(on_progress=on_progress, **rules)
        else:
            checkpoint_id = args.checkpoint_id
            await coordinator.restore(checkpoint_id, on_progress=on_progress, **rules)
    finally:
        if bar is not None:
            bar.close()
        await store.close()
    result = coordinator.last_restore
    for item in result.set_aside if result is not None else ():
        where = item.path.name if item.path is not None else "(could not be renamed)"
        print(f"set aside {item.checkpoint_id} as {where}: {item.reason}", file=sys.stderr)
    entries = next((c.entry_count for c in coordinator.list_checkpoints() if c.id == checkpoint_id), None)
    restored = f"{entries:,} entries" if entries is not None else "its entries"
    restored_scope = result.scope if result is not None else None
    where = " replacing every key" if restored_scope == "" else f" under key prefix {restored_scope!r}"
    # The URL is not echoed: it may hold a password.
    print(
        f"restored checkpoint {checkpoint_id} ({restored}) into the {store.backend.backend_type} store{where}"
    )
    return 0
