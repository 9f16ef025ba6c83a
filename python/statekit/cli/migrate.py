"""``statekit migrate SRC_URL DST_URL [--prefix P]``: copy keys, values and remaining TTLs.

How it works:

1. the source's keys under the prefix are exported at once (``export_items``: key, value, absolute
   expiry) and sorted;
2. they are written to the target in batches of ``--batch-size``: each batch first reads the same
   keys at the target (``batch_get``) and only writes those whose value differs, with
   ``batch_put`` (keys sharing one expiry go in one call, with the TTL left *at write time*);
3. both sides are exported again under the prefix and compared: key counts and a SHA-256 digest of
   the sorted ``(key, value)`` pairs. Exit status 0 when they match, 1 otherwise.

Resuming: there is no marker file. Running the same command again after an interruption skips
every key whose value is already identical at the target (counted as "unchanged") and writes the
rest, so a rerun is always safe and costs one read per key at the target. A key skipped that way
keeps the TTL it has at the target.

TTLs: an expiry is read on the source backend's clock (the server's, for Redis) and the time left
is computed on this machine's clock when the batch is written; keys that expire before that are
not copied. Clocks that disagree shift the TTLs by their difference.

Key prefixes in the URLs (``?key_prefix=a:``) are honoured on both sides: source keys under
``a:`` + ``--prefix`` are written under the target URL's key prefix instead of ``a:``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import defaultdict
from collections.abc import Sequence

from statekit._native import Sha256Hasher, encode_records
from statekit.backends.base import Item, StateBackend, item_columns
from statekit.cli._common import open_store, print_json, progress_bar, safe_url, show_progress
from statekit.errors import ConfigError

__all__ = ["add_parser", "digest_items"]

#: Records framed per digest update (about 1.3 MB of 100-byte values).
_DIGEST_CHUNK = 10_000

DEFAULT_BATCH_SIZE = 1_000


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate``."""
    parser = commands.add_parser(
        "migrate",
        help="copy keys, values and TTLs from one store to another, then verify",
        description=(
            "Copy every key under --prefix (with its value and remaining TTL) from SRC_URL to DST_URL in "
            "batches, then verify both sides (key counts and a SHA-256 digest). Resumable: run it again "
            "after an interruption; keys already identical at the target are skipped. Neither side may be "
            "memory:// (it would be an empty store of this process)."
        ),
    )
    parser.add_argument("src", metavar="SRC_URL", help="the store to copy from")
    parser.add_argument("dst", metavar="DST_URL", help="the store to copy to")
    parser.add_argument("--prefix", default="", help="only keys starting with this (default: all)")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"keys per batch ({DEFAULT_BATCH_SIZE})"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: for 2,000+ keys when stderr is a terminal)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    parser.set_defaults(run=run_migrate)


def digest_items(items: Sequence[Item], strip: int = 0) -> tuple[int, str]:
    """``(count, SHA-256 hex)`` of the items' ``(key, value)`` pairs sorted by key.

    ``strip`` characters are cut from the front of every key first (the side's key prefix), so two
    stores holding the same data under different prefixes have the same digest. TTLs are not part
    of the digest (they move as time passes).
    """
    columns = item_columns(items)
    keys, values = columns.keys, columns.values
    order = sorted(range(len(columns)), key=keys.__getitem__)
    # The digest is SHA-256 over record batches of the Rust framing (length-prefixed, so no
    # two different stores frame to the same bytes), a chunk at a time to bound the memory.
    digest = Sha256Hasher()
    for start in range(0, len(order), _DIGEST_CHUNK):
        chunk = order[start : start + _DIGEST_CHUNK]
        digest.update(encode_records([(keys[i][strip:].encode("utf-8"), values[i], None) for i in chunk]))
    return len(columns), digest.hexdigest()


def run_migrate(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    src = open_store(args.src, what="migrate from")
    try:
        dst = open_store(args.dst, what="migrate to")
    except BaseException:
        asyncio.run(src.close())
        raise

    async def run() -> int:
        try:
            return await _migrate(src.backend, dst.backend, src.key_prefix, dst.key_prefix, args.prefix, args)
        finally:
            await src.close()
            await dst.close()

    return asyncio.run(run())


async def _migrate(
    src: StateBackend,
    dst: StateBackend,
    src_root: str,
    dst_root: str,
    prefix: str,
    args: argparse.Namespace,
) -> int:
    if args.src == args.dst:
        raise ConfigError("the source and the target are the same store: nothing to migrate")
    started = time.perf_counter()
    exported = item_columns(await src.export_items(src_root + prefix))
    order = sorted(range(len(exported)), key=exported.keys.__getitem__)
    total = len(order)
    strip = len(src_root)
    written = unchanged = expired = 0
    enabled = show_progress(args.progress, total)
    with progress_bar(enabled) as bar:
        task = bar.add_task("migrating", total=total, rate="")
        for first in range(0, total, args.batch_size):
            batch = order[first : first + args.batch_size]
            keys = [dst_root + exported.keys[i][strip:] for i in batch]
            current = await dst.batch_get(keys)
            forever: list[tuple[str, bytes]] = []
            by_expiry: defaultdict[float, list[tuple[str, bytes]]] = defaultdict(list)
            for key, index, old in zip(keys, batch, current, strict=True):
                value = exported.values[index]
                if old == value:
                    unchanged += 1
                    continue
                expires_at = None if exported.expires_at is None else exported.expires_at[index]
                if expires_at is None:
                    forever.append((key, value))
                else:
                    by_expiry[expires_at].append((key, value))
            if forever:
                await dst.batch_put(forever)
                written += len(forever)
            now = time.time()
            for expires_at, pairs in by_expiry.items():
                left = expires_at - now
                if left <= 0:
                    expired += len(pairs)
                    continue
                await dst.batch_put(pairs, ttl=left)
                written += len(pairs)
            done = first + len(batch)
            elapsed = time.perf_counter() - started
            bar.update(task, completed=done, rate=f"{done / elapsed:,.0f} keys/s" if elapsed > 0 else "")
    copy_seconds = time.perf_counter() - started

    source_count, source_digest = digest_items(await src.export_items(src_root + prefix), strip)
    target_count, target_digest = digest_items(await dst.export_items(dst_root + prefix), len(dst_root))
    verified = source_count == target_count and source_digest == target_digest
    rate = total / copy_seconds if copy_seconds > 0 else 0.0
    if args.json:
        print_json(
            {
                "source": safe_url(args.src),
                "target": safe_url(args.dst),
                "prefix": prefix,
                "keys": total,
                "written": written,
                "unchanged": unchanged,
                "expired": expired,
                "seconds": round(copy_seconds, 3),
                "keys_per_second": round(rate, 1),
                "source_count": source_count,
                "source_sha256": source_digest,
                "target_count": target_count,
                "target_sha256": target_digest,
                "verified": verified,
            }
        )
    else:
        print(
            f"copied {total:,} keys in {copy_seconds:.2f} s ({rate:,.0f} keys/s): {written:,} written, "
            f"{unchanged:,} already identical, {expired:,} expired before they could be written",
            file=sys.stderr,
        )
        print(f"source: {source_count:,} keys  sha256 {source_digest}")
        print(f"target: {target_count:,} keys  sha256 {target_digest}")
        print("verified: identical" if verified else "NOT VERIFIED: the two sides differ")
    if not verified:
        if source_count != target_count:
            what = f"{source_count:,} keys at the source, {target_count:,} at the target"
        else:
            what = "same key count, different content"
        print(
            f"statekit: error: migration not verified ({what}); keys may have been written at either side "
            "meanwhile, or the target held other keys under the prefix: run the command again to copy "
            "what changed",
            file=sys.stderr,
        )
        return 1
    return 0
