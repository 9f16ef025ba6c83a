"""Safe resource names: one path component, derived from a URL or a zip member name.

Whatever the input (``../../etc/passwd``, ``C:\\x``, ``%2e%2e%2f``, NUL bytes, 10 000 characters),
the result is a single file-name component made of ``[A-Za-z0-9._-]`` that does not start with a
dot, is at most ``MAX_NAME_LENGTH`` characters long, and is not one of the names a bundle keeps
for itself (``bundle.json``, ``*.meta``). Collisions inside one bundle are resolved by
:class:`NameAllocator` in call order: ``data.json``, ``data-2.json``, ``data-3.json``...
Comparison is case-insensitive, so names stay distinct on case-insensitive file systems too.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TypeGuard
from urllib.parse import unquote, urlsplit

from statekit import _native

__all__ = [
    "MANIFEST_NAME",
    "MAX_NAME_LENGTH",
    "META_SUFFIX",
    "NameAllocator",
    "is_safe_name",
    "member_name",
    "url_name",
]

MANIFEST_NAME = "bundle.json"
META_SUFFIX = ".meta"
MAX_NAME_LENGTH = 120
_FALLBACK = "resource"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SUFFIX = 16


def is_safe_name(name: object) -> TypeGuard[str]:
    """Whether ``name`` is a name this module could have made: one ``[A-Za-z0-9._-]`` component,
    not starting with a dot, at most ``MAX_NAME_LENGTH`` long, not a name a bundle reserves.
    Used on names read back from files (a manifest may have been edited), never trusted as paths."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH or name.startswith("."):
        return False
    lowered = name.lower()
    if lowered == MANIFEST_NAME or lowered.endswith(META_SUFFIX):
        return False
    return _UNSAFE.search(name) is None


def _clean(text: str) -> str:
    """Reduce ``text`` to a safe component (possibly empty)."""
    # NFKD then ASCII: "résumé" -> "resume" rather than "r_sum_".
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = _UNSAFE.sub("_", text)
    # No leading dots ("..", ".hidden", our own ".x.tmp" files) and no trailing dots/spaces.
    return text.lstrip("._").rstrip(".")


def _bounded(name: str, original: str) -> str:
    """Cut ``name`` to MAX_NAME_LENGTH, keeping its suffix and a short hash of ``original``
    so two long names that share a prefix stay apart."""
    if len(name) <= MAX_NAME_LENGTH:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem or len(suffix) > _MAX_SUFFIX:
        stem, suffix = name, ""
    tag = _native.sha256(original.encode("utf-8", "surrogatepass"))[:8]
    tail = f"-{tag}" + (f".{suffix}" if suffix else "")
    return stem[: MAX_NAME_LENGTH - len(tail)].rstrip("._-") + tail


def _finish(name: str, original: str) -> str:
    name = _bounded(name or _FALLBACK, original)
    lowered = name.lower()
    if lowered == MANIFEST_NAME or lowered.endswith(META_SUFFIX):
        # Reserved for the bundle's own files.
        name = _bounded(name + "_", original)
    return name


def url_name(url: str) -> str:
    """A safe name for the resource at ``url``: its last path segment, percent-decoded.

    Falls back to the host name, then to ``"resource"``.
    """
    try:
        parts = urlsplit(url)
        path, host = parts.path, parts.hostname or ""
    except ValueError:  # malformed (e.g. an invalid IPv6 host): use the raw text
        path, host = url, ""
    # Decode first, then split: "%2F" must not smuggle a separator past the split.
    segments = [s for s in re.split(r"[/\\]", unquote(path)) if s not in ("", ".", "..")]
    for candidate in (segments[-1] if segments else "", host):
        cleaned = _clean(candidate)
        if cleaned:
            return _finish(cleaned, url)
    return _finish("", url)


def member_name(member: str) -> str:
    """A safe, flat name for a zip member: its path segments joined with ``_``.

    ``../../etc/passwd`` becomes ``etc_passwd``; ``a/b/c.txt`` becomes ``a_b_c.txt``.
    """
    segments = [s for s in re.split(r"[/\\]", member) if s not in ("", ".", "..")]
    cleaned = "_".join(c for c in (_clean(s) for s in segments) if c)
    return _finish(_clean(cleaned), member)


class NameAllocator:
    """Hands out distinct names inside one bundle, deterministically in call order."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def allocate(self, name: str) -> str:
        """Reserve ``name`` (already safe), or ``stem-N.suffix`` with the smallest free N >= 2."""
        if name.lower() not in self._taken:
            self._taken.add(name.lower())
            return name
        stem, dot, suffix = name.rpartition(".")
        if not dot or not stem:
            stem, suffix = name, ""
        n = 2
        while True:
            tail = f"-{n}" + (f".{suffix}" if suffix else "")
            candidate = stem[: MAX_NAME_LENGTH - len(tail)] + tail
            if candidate.lower() not in self._taken:
                self._taken.add(candidate.lower())
                return candidate
            n += 1

    def release(self, name: str) -> None:
        """Give ``name`` back (its resource failed), so a retry of the same URL gets it again."""
        self._taken.discard(name.lower())
