"""``statekit inspect STORE_URL [--prefix P] stats | keys | get | ttl | del``: look into a store.

``--prefix P`` makes the command see the store as ``create_store(url, key_prefix=P)`` does: keys
are listed and given without ``P`` (``inspect URL --prefix job: get user:1`` reads the backend key
``job:user:1``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from rich.table import Table

from statekit.cli._common import open_store, print_json, stdout_console
from statekit.errors import ConfigError, KeyNotFound
from statekit.store import KeyValueStore

__all__ = ["add_parser", "remaining_ttl"]

_MISSING = object()


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``inspect`` and its actions."""
    parser = commands.add_parser(
        "inspect",
        help="look into a store: stats, keys, get, ttl, del",
        description=(
            "Look into a persistent store. --prefix P sees the store as create_store(URL, key_prefix=P): "
            "keys are shown and given without P. Values are decoded with the store's serializer "
            "(?serializer=... in the URL or --serializer; default json)."
        ),
    )
    parser.add_argument("url", metavar="STORE_URL", help="sqlite:///abs/path.db, redis://host:6379/0, ...")
    _add_common(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    stats = sub.add_parser("stats", help="key counts and backend counters")
    _add_common(stats)
    stats.set_defaults(run=run_inspect, inspect=_stats)

    keys = sub.add_parser("keys", help="list keys in order (start inclusive, end exclusive)")
    _add_common(keys)
    keys.add_argument("--start", default="", help="first key (without --end: keys starting with it)")
    keys.add_argument("--end", default=None, help="stop before this key")
    keys.add_argument("--limit", type=int, default=None, help="at most this many keys")
    keys.set_defaults(run=run_inspect, inspect=_keys)

    get = sub.add_parser("get", help="print a value (decoded as JSON text, or --raw bytes)")
    _add_common(get)
    get.add_argument("key", metavar="KEY")
    get.add_argument("--raw", action="store_true", help="write the stored bytes as they are")
    get.set_defaults(run=run_inspect, inspect=_get)

    ttl = sub.add_parser("ttl", help="remaining time to live of a key, in seconds")
    _add_common(ttl)
    ttl.add_argument("key", metavar="KEY")
    ttl.set_defaults(run=run_inspect, inspect=_ttl)

    delete = sub.add_parser("del", help="delete a key (asks first unless --yes)")
    _add_common(delete)
    delete.add_argument("key", metavar="KEY")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask")
    delete.set_defaults(run=run_inspect, inspect=_delete)


def _add_common(parser: argparse.ArgumentParser) -> None:
    # Accepted before and after the action (``inspect URL --prefix p keys`` and ``... keys --prefix p``).
    parser.add_argument("--prefix", default=argparse.SUPPRESS, help="the store's key prefix (default: none)")
    parser.add_argument(
        "--serializer", default=argparse.SUPPRESS, help="json (default), msgpack or pickle (needs a key)"
    )
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def run_inspect(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {}
    prefix = getattr(args, "prefix", None)
    if prefix is not None:
        options["key_prefix"] = prefix
    serializer = getattr(args, "serializer", None)
    if serializer is not None:
        options["serializer"] = serializer
    store = open_store(args.url, what="inspect", **options)

    async def run() -> int:
        try:
            code: int = await args.inspect(store, args)
            return code
        finally:
            await store.close()

    return asyncio.run(run())


async def _stats(store: KeyValueStore, args: argparse.Namespace) -> int:
    stats = dict(await store.get_stats())
    if getattr(args, "json", False):
        print_json(stats)
        return 0
    console = stdout_console()
    if sys.stdout.isatty():
        table = Table("stat", "value", title=f"{stats.get('backend')} store")
        for name, value in stats.items():
            table.add_row(name, _fmt(value))
        console.print(table)
    else:
        for name, value in stats.items():
            print(f"{name}\t{_fmt(value)}")
    return 0


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if sys.stdout.isatty() else str(value)
    return "" if value is None else str(value)


async def _keys(store: KeyValueStore, args: argparse.Namespace) -> int:
    prefix = store.key_prefix
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {args.limit}")
    end = None if args.end is None else prefix + args.end
    if end is None and args.limit is None:
        names = await store.backend.list_keys(prefix + args.start)
    else:  # a range read stops at the limit instead of listing every key
        pairs = await store.backend.range(prefix + args.start, end, args.limit)
        names = [name for name, _ in pairs]
    names = [name[len(prefix) :] for name in names]
    if getattr(args, "json", False):
        print_json(names)
    else:
        out = sys.stdout
        for name in names:
            out.write(name + "\n")
        if sys.stdout.isatty():
            print(f"({len(names):,} keys)", file=sys.stderr)
    return 0


async def _get(store: KeyValueStore, args: argparse.Namespace) -> int:
    if args.raw:
        raw = await store.backend.get(store.key_prefix + args.key)
        if raw is None:
            raise KeyNotFound(args.key)
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return 0
    value = await store.get(args.key, _MISSING)
    if value is _MISSING:
        raise KeyNotFound(args.key)
    if getattr(args, "json", False) or not sys.stdout.isatty():
        print(json.dumps(value, indent=2, default=repr, ensure_ascii=False))
    else:
        stdout_console().print_json(data=value, default=repr)
    return 0


async def remaining_ttl(store: KeyValueStore, key: str) -> tuple[bool, float | None]:
    """``(exists, seconds left or None when the key never expires)`` for a store key.

    Reads the backend's ``export_items`` filtered to the key: its absolute expiry on the backend's
    clock (the server's, for Redis), compared with this machine's clock.
    """
    full = store.key_prefix + key
    items = await store.backend.export_items(full)
    for name, _value, expires_at in items:
        if name == full:
            return True, None if expires_at is None else max(0.0, expires_at - time.time())
    return False, None


async def _ttl(store: KeyValueStore, args: argparse.Namespace) -> int:
    if not hasattr(store.backend, "export_items"):
        raise ConfigError(f"the {store.backend.backend_type} backend cannot report TTLs")
    exists, seconds = await remaining_ttl(store, args.key)
    if not exists:
        raise KeyNotFound(args.key)
    if getattr(args, "json", False):
        print_json({"key": args.key, "ttl": seconds})
    elif seconds is None:
        print("none (the key never expires)")
    else:
        print(f"{seconds:.3f}")
    return 0


async def _delete(store: KeyValueStore, args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"not deleting {args.key!r} without confirmation: add --yes")
        answer = await asyncio.to_thread(
            input, f"delete {args.key!r} from the {store.backend.backend_type} store? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted", file=sys.stderr)
            return 1
    if not await store.delete(args.key):
        raise KeyNotFound(args.key)
    if getattr(args, "json", False):
        print_json({"key": args.key, "deleted": True})
    else:
        print(f"deleted {args.key}")
    return 0
