"""The range index: sorted sets that make ``range``/``list_keys`` cost O(log n + k), sharded over slots.

Per key prefix, ``index_shards`` pairs of sorted sets hold every key (without the prefix):

* ``{<tag>}:lex``: score 0, read with ``ZRANGEBYLEX`` (byte order of UTF-8 = code point order);
* ``{<tag>}:exp``: the keys that have a TTL, scored by their expiry (unix ms, client clock).

With one shard the tag is ``statekit-index:<prefix>`` (the layout of earlier versions). With N
shards, a key goes to shard ``slot(key) * N // 16384`` and shard i's tag is the first
``statekit-index#<n>:<prefix>`` whose slot falls in the same i-th range of slots: in a cluster
whose masters own contiguous slot ranges, a key's shard usually lives on the key's own master,
and the index traffic spreads over the masters instead of landing on one node. Reads merge the
shards in key order (a k-way merge, with the limit pushed down to every shard).

Layouts (``index_layout``):

* ``"flat"``: ``{<tag>}:lex`` is one sorted set of every member (~126 B per member: a skiplist
  node and a dict entry each).
* ``"paged"``: a two-level B-tree of sorted sets per shard, all in the shard's slot: a directory
  ``{<tag>}:dir`` of page lower boundaries ("" is the first page's) and pages ``{<tag>}:p:<boundary>``
  of at most ``PAGE_MAX`` members, small enough to stay listpack-encoded (~25 B per member).
  The Lua functions of _scripts._LIB insert (splitting full pages), remove (dropping emptied
  pages from the directory) and walk pages; reads return up to ``want`` members per script.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any, Final

from statekit import _native
from statekit.backends.base import RESERVED_KEY_PREFIX
from statekit.backends.redis import _scripts as lua
from statekit.backends.redis._topology import SLOTS, Block, Topology

__all__ = ["PAGE", "RangeIndex"]

#: How many index members one range/list page reads from each shard.
PAGE: Final = 1000


def _shard_tags(prefix: str, shards: int) -> list[str]:
    stem = RESERVED_KEY_PREFIX[1:] + "index"
    if shards == 1:
        return [f"{stem}:{prefix}"]
    tags: list[str | None] = [None] * shards
    missing, start = shards, 0
    while missing:
        names = [f"{stem}#{n}:{prefix}" for n in range(start, start + 256)]
        for name, slot in zip(names, _native.hash_slots(names), strict=True):
            shard = slot * shards // SLOTS
            if tags[shard] is None:
                tags[shard] = name
                missing -= 1
        start += 256
    return [t for t in tags if t is not None]


class RangeIndex:
    """Names, shard choice, write commands and merged reads of one key prefix's index."""

    def __init__(self, key_prefix: str, shards: int, topology: Topology, layout: str = "flat") -> None:
        self.shards = shards
        self.paged = layout == "paged"
        self._prefix = key_prefix
        self._topology = topology
        tags = _shard_tags(key_prefix, shards)
        self.lex = ["{" + t + "}:lex" for t in tags]
        self.exp = ["{" + t + "}:exp" for t in tags]
        #: The key a script is given for the members: the lex set, or the paged directory (the
        #: scripts tell them apart by the name's ":dir" ending).
        self.root = ["{" + t + "}:dir" for t in tags] if self.paged else self.lex
        self.slots = _native.hash_slots(self.lex)
        #: Where the settings of this index are recorded (range_index, shards).
        self.meta = "{" + RESERVED_KEY_PREFIX[1:] + "index:" + key_prefix + "}:meta"
        #: The index shard is written in the same script/MULTI as the value (one server).
        self.together = topology.spans_slots

    def shard_of(self, full_key: str) -> int:
        if self.shards == 1:
            return 0
        return _native.hash_slot(full_key) * self.shards // SLOTS

    def shards_of(self, full_keys: Sequence[str]) -> list[int]:
        if self.shards == 1:
            return [0] * len(full_keys)
        n = self.shards
        return [slot * n // SLOTS for slot in _native.hash_slots(list(full_keys))]

    def group(self, names: Sequence[str]) -> dict[int, list[str]]:
        """Members (keys without the prefix) by shard."""
        if self.shards == 1:
            return {0: list(names)}
        prefix = self._prefix
        groups: dict[int, list[str]] = {}
        for shard, name in zip(self.shards_of([prefix + n for n in names]), names, strict=True):
            groups.setdefault(shard, []).append(name)
        return groups

    # -- writes --------------------------------------------------------------------------

    def add_cmds(
        self, shard: int, members: Sequence[str], at_ms: Sequence[int] | int | bool | None
    ) -> list[Any]:
        """Commands adding ``members`` to one shard; ``at_ms``: one score per member, or one for
        all, sets their expiry, None clears it, False leaves it."""
        if self.paged:
            # Sorted by code point = UTF-8 byte order, the order the script's page walk needs. EVAL,
            # not EVALSHA: inside a MULTI a NOSCRIPT reply would fail this command alone while the
            # values of the same transaction were written (an index lagging its values).
            if isinstance(at_ms, Sequence):
                pairs = sorted(dict(zip(members, at_ms, strict=True)).items())
                ordered = [m for m, _ in pairs]
                tail: list[Any] = [*ordered, *(a for _, a in pairs)]
                head: list[Any] = ["v", 0]
            else:
                ordered = sorted(set(members))
                tail = ordered
                head = ["k" if at_ms is False else "c" if at_ms is None else "s", at_ms or 0]
            keys = [self.root[shard], self.exp[shard]]
            return [["EVAL", lua.INDEX_ADD.body, 2, *keys, *head, len(ordered), *tail]]
        zlex: list[Any] = ["ZADD", self.lex[shard]]
        for m in members:
            zlex += (0, m)
        if at_ms is False:
            return [zlex]
        if at_ms is None:
            return [zlex, ["ZREM", self.exp[shard], *members]]
        zexp: list[Any] = ["ZADD", self.exp[shard]]
        if isinstance(at_ms, Sequence):
            for m, a in zip(members, at_ms, strict=True):
                zexp += (a, m)
        else:
            for m in members:
                zexp += (at_ms, m)
        return [zlex, zexp]

    def remove_cmds(self, shard: int, members: Sequence[str]) -> list[Any]:
        if self.paged:
            return [["EVAL", lua.INDEX_REMOVE.body, 2, self.root[shard], self.exp[shard], *members]]
        return [["ZREM", self.lex[shard], *members], ["ZREM", self.exp[shard], *members]]

    def add_blocks(self, names: Sequence[str], at_ms: Sequence[int] | int | None, size: int) -> list[Block]:
        """Blocks adding ``names`` to their shards; with ``at_ms`` (one score per name, or one for
        all) their expiry is set, without it cleared."""
        scores = dict(zip(names, at_ms, strict=True)) if isinstance(at_ms, Sequence) else None
        blocks: list[Block] = []
        for shard, members in self.group(names).items():
            for i in range(0, len(members), size):
                chunk = members[i : i + size]
                at = [scores[m] for m in chunk] if scores is not None else at_ms
                blocks.append((self.slots[shard], self.add_cmds(shard, chunk, at)))
        return blocks

    def member_blocks(self, names: Sequence[str], size: int) -> list[Block]:
        """Blocks adding ``names`` to the lex sets only (their expiry entries untouched)."""
        blocks: list[Block] = []
        for shard, members in self.group(names).items():
            for i in range(0, len(members), size):
                blocks.append((self.slots[shard], self.add_cmds(shard, members[i : i + size], False)))
        return blocks

    def remove_blocks(self, names: Sequence[str], size: int) -> list[Block]:
        blocks: list[Block] = []
        for shard, members in self.group(names).items():
            for i in range(0, len(members), size):
                blocks.append((self.slots[shard], self.remove_cmds(shard, members[i : i + size])))
        return blocks

    # -- reads ---------------------------------------------------------------------------

    async def scan(
        self, op: str, key: str, start: str, upper: str | None, want: int | None, cursor: list[bytes | None]
    ) -> list[str]:
        """The next members in key order from ``start`` (inclusive) to ``upper`` (exclusive).

        At most ``want`` (None: a page). ``cursor`` holds, per shard, the last member returned
        from it (None before the first call); the call advances it. An empty list: done.
        """
        high = "+" if upper is None else "(" + upper
        page = PAGE if want is None else min(PAGE, want)
        n = self.shards
        low = ["[" + start if c is None else b"(" + c for c in cursor]
        # One page from every shard that may still hold members, merged; a shard whose page was
        # full bounds how far the merge may go (its next page may hold smaller members).
        blocks: list[Block] = [(self.slots[i], [self._range_cmd(i, low[i], high, page)]) for i in range(n)]
        replies = await self._topology.run(op, key, blocks)
        pages: list[list[bytes]] = [r[0] for r in replies]
        bound: bytes | None = None
        for members in pages:
            if len(members) == page and (bound is None or members[-1] < bound):
                bound = members[-1]
        merged = heapq.merge(*pages)
        out: list[bytes] = []
        for member in merged:
            if bound is not None and member > bound:
                break
            out.append(member)
            if want is not None and len(out) >= want:
                break
        if out:
            last = out[-1]
            for i, members in enumerate(pages):
                # Advance each shard past what was taken from it (members <= last).
                taken = [m for m in members if m <= last]
                if taken:
                    cursor[i] = taken[-1]
        return [m.decode() for m in out]

    def _range_cmd(self, shard: int, low: str | bytes, high: str, page: int) -> list[Any]:
        if self.paged:  # one script walks the pages: one round trip per shard and call
            return ["EVAL", lua.INDEX_SCAN.body, 1, self.root[shard], low, high, page]
        return ["ZRANGEBYLEX", self.lex[shard], low, high, "LIMIT", 0, page]

    async def count(self, op: str, start: str, upper: str | None) -> int:
        high = "+" if upper is None else "(" + upper
        blocks: list[Block] = [
            (
                self.slots[i],
                [
                    ["EVAL", lua.INDEX_COUNT.body, 1, self.root[i], "[" + start, high]
                    if self.paged
                    else ["ZLEXCOUNT", self.lex[i], "[" + start, high]
                ],
            )
            for i in range(self.shards)
        ]
        return sum(int(r[0]) for r in await self._topology.run(op, None, blocks))

    async def count_expiring(self, op: str, prefix: str) -> int:
        if not prefix:
            blocks: list[Block] = [(self.slots[i], [["ZCARD", self.exp[i]]]) for i in range(self.shards)]
            return sum(int(r[0]) for r in await self._topology.run(op, None, blocks))
        blocks = [(self.slots[i], [["ZRANGE", self.exp[i], 0, -1]]) for i in range(self.shards)]
        encoded = prefix.encode()
        return sum(
            sum(1 for m in r[0] if m.startswith(encoded)) for r in await self._topology.run(op, None, blocks)
        )
