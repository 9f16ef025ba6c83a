"""Resource names from URLs and zip members: always one safe path component; collisions resolved
deterministically."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statekit.storage._names import MAX_NAME_LENGTH, NameAllocator, member_name, url_name

SAFE = re.compile(r"\A[A-Za-z0-9_-][A-Za-z0-9._-]*\Z")


def assert_safe(name: str, tmp: Path) -> None:
    assert SAFE.match(name), name
    assert 0 < len(name) <= MAX_NAME_LENGTH
    assert name not in (".", "..")
    assert name.lower() != "bundle.json"
    assert not name.lower().endswith(".meta")
    target = (tmp / name).resolve()
    assert target.parent == tmp.resolve()


@given(st.text(max_size=400))
def test_any_url_gives_a_safe_component(url: str) -> None:
    assert_safe(url_name(url), Path("/bundle"))
    assert url_name(url) == url_name(url)  # deterministic


@given(st.text(max_size=400))
def test_any_member_name_gives_a_safe_component(member: str) -> None:
    assert_safe(member_name(member), Path("/bundle"))


@given(
    st.lists(
        st.sampled_from(["..", ".", "", "etc", "passwd", "%2e%2e", "a b", "C:", "\\", "\x00", "é"]),
        max_size=8,
    )
)
def test_traversal_pieces_never_escape(parts: list[str]) -> None:
    for text in ("/".join(parts), "https://h/" + "/".join(parts), "\\".join(parts)):
        assert_safe(url_name(text), Path("/bundle"))
        assert_safe(member_name(text), Path("/bundle"))


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://example.com/a/page.html?x=1#frag", "page.html"),
        ("https://example.com/", "example.com"),
        ("https://example.com/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "passwd"),
        ("../../etc/passwd", "passwd"),
        ("https://h/bundle.json", "bundle.json_"),
        ("https://h/x.meta", "x.meta_"),
        ("https://h/r%C3%A9sum%C3%A9.pdf", "resume.pdf"),
        ("", "resource"),
    ],
)
def test_url_examples(url: str, name: str) -> None:
    assert url_name(url) == name


def test_member_examples() -> None:
    assert member_name("../../etc/passwd") == "etc_passwd"
    assert member_name("/abs/x.txt") == "abs_x.txt"
    assert member_name("a\\b\\c.txt") == "a_b_c.txt"


def test_long_names_are_cut_keeping_suffix_and_stay_distinct() -> None:
    a = url_name("https://h/" + "a" * 300 + "1.json")
    b = url_name("https://h/" + "a" * 300 + "2.json")
    assert len(a) <= MAX_NAME_LENGTH
    assert a.endswith(".json")
    assert a != b


@given(st.lists(st.text(max_size=30), max_size=30))
def test_allocator_is_deterministic_and_distinct(urls: list[str]) -> None:
    def run() -> list[str]:
        names = NameAllocator()
        return [names.allocate(url_name(u)) for u in urls]

    first = run()
    assert first == run()
    assert len({n.lower() for n in first}) == len(first)
    for name in first:
        assert_safe(name, Path("/bundle"))


def test_collisions_numbered_in_call_order() -> None:
    names = NameAllocator()
    got = [names.allocate(url_name(u)) for u in ["https://a/x.json", "https://b/x.json", "https://c/X.JSON"]]
    assert got == ["x.json", "x-2.json", "X-3.JSON"]
    names.release("x-2.json")
    assert names.allocate("x.json") == "x-2.json"
