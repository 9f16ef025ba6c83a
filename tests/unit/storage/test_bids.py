"""BIDs: exact shape, sortable by creation time (to the ms, and within one ms), unique, validated."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statekit.errors import InvalidBidError
from statekit.storage import BID_PATTERN, BundleRef, bid_time, is_bid, new_bid
from statekit.storage._bids import check_bid


def test_shape_and_time() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    bid = new_bid()
    after = datetime.now(UTC) + timedelta(milliseconds=1)
    assert BID_PATTERN.match(bid)
    assert [len(p) for p in bid.split("-")] == [8, 4, 4, 4, 12]
    assert before <= bid_time(bid) <= after


def test_sorted_bids_are_in_creation_order_even_within_one_millisecond() -> None:
    bids = [new_bid() for _ in range(20_000)]  # many share a millisecond
    assert len({bid_time(b) for b in bids}) < len(bids)
    assert bids == sorted(bids)
    assert len(set(bids)) == len(bids)


def test_bids_of_later_milliseconds_sort_later() -> None:
    first = new_bid()
    second = new_bid()
    while bid_time(second) == bid_time(first):  # until the next millisecond: no fixed sleep
        second = new_bid()
    assert bid_time(first) < bid_time(second)
    assert first < second


def test_unique_across_processes() -> None:
    code = "from statekit.storage import new_bid\nprint('\\n'.join(new_bid() for _ in range(2000)))"
    procs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(3)
    ]
    everything = [line for p in procs for line in p.stdout.split()]
    assert len(everything) == 6000
    assert len(set(everything)) == 6000
    assert all(is_bid(b) for b in everything)


@given(st.integers(min_value=0, max_value=10**13 - 1), st.integers(min_value=0, max_value=10**13 - 1))
def test_time_field_orders_lexicographically(a: int, b: int) -> None:
    bid_a = f"{a:013d}0000000" + "0" * 12
    bid_b = f"{b:013d}0000000" + "0" * 12
    fmt = lambda d: f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"  # noqa: E731
    assert (fmt(bid_a) < fmt(bid_b)) == (a < b)
    assert bid_time(fmt(bid_a)) == datetime.fromtimestamp(a / 1000, tz=UTC)


@given(st.text(max_size=60))
def test_anything_else_is_refused(text: str) -> None:
    if BID_PATTERN.match(text):
        return
    with pytest.raises(InvalidBidError):
        check_bid(text)
    with pytest.raises(ValueError, match="is not a BID"):
        BundleRef(bid=text)


@pytest.mark.parametrize(
    "bad",
    [
        "../../../etc/passwd",
        "17571960-2065-e0cd-cf71-8196d8577b7e",  # the seed's example: 13th digit is hex
        "17645832-0153-1000-0000-3F9C0A1B2C4D",  # upper case
        "17645832-0153-1000-0000-3f9c0a1b2c4d\n",
        "17645832015310000000 3f9c0a1b2c4d",
        "",
    ],
)
def test_refused_examples(bad: str) -> None:
    assert not is_bid(bad)
    with pytest.raises(InvalidBidError):
        bid_time(bad)


def test_bundle_ref_defaults_to_a_new_bid() -> None:
    ref = BundleRef(primary_url="https://example.com", resources_count=2, meta={})
    assert is_bid(ref.bid)
    assert BundleRef.from_dict(ref.to_dict()) == ref
