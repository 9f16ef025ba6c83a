"""The digest ``statekit migrate`` compares source and target with: SHA-256 over framed records."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from statekit.cli.migrate import digest_items
from tests.unit.native import reference

items_strategy = st.dictionaries(st.text(min_size=1, max_size=12), st.binary(max_size=40), max_size=60).map(
    lambda d: [(k, v, None) for k, v in d.items()]
)


def python_digest(items: list[tuple[str, bytes, None]], strip: int = 0) -> str:
    """The plain-Python reference: the records sorted by key, framed in chunks, hashed."""
    ordered = sorted(items, key=lambda item: item[0])
    digest = hashlib.sha256()
    for start in range(0, len(ordered), 10_000):
        chunk = ordered[start : start + 10_000]
        digest.update(reference.encode_records([(k[strip:].encode(), v, None) for k, v, _ in chunk]))
    return digest.hexdigest()


@settings(max_examples=60, deadline=None)
@given(items_strategy)
def test_digest_matches_the_python_reference_in_any_order(items: list[tuple[str, bytes, None]]) -> None:
    count, digest = digest_items(items)
    assert count == len(items)
    assert digest == python_digest(items)
    assert digest_items(list(reversed(items))) == (count, digest)


def test_digest_ignores_the_stripped_prefix_and_sees_every_byte() -> None:
    base = [("a:1", b"x", None), ("a:2", b"yy", None)]
    moved = [("bb:1", b"x", None), ("bb:2", b"yy", None)]
    assert digest_items(base, 2) == digest_items(moved, 3)
    assert digest_items(base)[1] != digest_items([("a:1", b"x", None), ("a:2", b"yz", None)])[1]
    # A key/value boundary that moves is a different store (length-prefixed records).
    assert digest_items([("ab", b"c", None)])[1] != digest_items([("a", b"bc", None)])[1]


def test_digest_over_several_chunks() -> None:
    items = [(f"k{i:06d}", i.to_bytes(4, "big"), None) for i in range(25_000)]
    assert digest_items(items) == (25_000, python_digest(items))
