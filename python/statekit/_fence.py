"""``Fence``: the token a distributed lock hands out with each acquisition.

It lives below the store and the backends (which check it on fenced writes) and above nothing,
so every layer can name it; users import it from :mod:`statekit.locks`.
"""

from __future__ import annotations

from dataclasses import dataclass

from statekit.errors import InvalidValue

__all__ = ["Fence", "check_fence"]


@dataclass(frozen=True, slots=True)
class Fence:
    """A lock name and a fencing token.

    Every successful acquisition of a lock name returns a token strictly greater than every
    token ever returned for that name. A write made with ``fence=`` is refused with
    :class:`~statekit.errors.StaleFence` once a greater token of the same name has written the
    same key, so a holder that was paused past its lease cannot overwrite its successor's work.
    """

    name: str
    token: int

    def __str__(self) -> str:
        return f"{self.name}#{self.token}"


def check_fence(fence: object) -> Fence:
    """``fence`` if it is a :class:`Fence` with a ``str`` name and an ``int`` token, else InvalidValue."""
    if (
        not isinstance(fence, Fence)
        or not isinstance(fence.name, str)
        or not fence.name
        or isinstance(fence.token, bool)
        or not isinstance(fence.token, int)
    ):
        raise InvalidValue(f"fence must be a statekit.locks.Fence(name, token), got {fence!r}")
    return fence
