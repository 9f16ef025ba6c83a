"""Helpers of the storage tests that need no server (the S3 ones reuse them)."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    """``data`` as an async stream of ``size``-byte chunks."""
    for i in range(0, len(data), size):
        yield data[i : i + size]
