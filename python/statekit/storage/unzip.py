"""UnzipResourceDecorator: gzip and zip resources are stored decompressed.

The format is told by magic bytes (``1f 8b`` for gzip, ``PK\\x03\\x04``/``PK\\x05\\x06`` for zip),
never by name or content type; anything else passes through unchanged.

* gzip is inflated as a stream (multi-member files included) and stored as one resource, its
  name without ``.gz``.
* a zip is spooled to a temporary file (a zip's directory is at its end, so it cannot be read
  front to back), then each member is streamed out as its own resource of the bundle, named
  by its path flattened and sanitised like a URL (``../../etc/passwd`` -> ``etc_passwd``).

Bombs are bounded: a resource that would expand beyond ``max_size`` bytes, or beyond
``max_ratio`` times its compressed size (once past ``RATIO_GRACE`` bytes, so tiny files with
high ratios are fine), raises :class:`~statekit.errors.DecompressionBombError` and nothing of it
is stored. A zip's declared member sizes are checked before anything is stored (Python's
``zipfile`` never yields more than the declared size and checks each member's CRC); gzip is
checked while inflating, and the storage discards the half-written resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import tempfile
import zipfile
import zlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any

from statekit.errors import ConfigError, CorruptData, DecompressionBombError, StorageError
from statekit.storage._names import url_name
from statekit.storage.base import (
    BundleRef,
    BundleStorageContext,
    BundleStream,
    RecipeLike,
    Storage,
    open_bundle,
)

__all__ = ["RATIO_GRACE", "UnzipResourceDecorator"]

DEFAULT_MAX_RATIO = 100.0
DEFAULT_MAX_SIZE = 8 << 30
#: Output below this size is never called a bomb, whatever its ratio (a 1 KiB file of zeros).
RATIO_GRACE = 1 << 20
DEFAULT_MAX_MEMBERS = 10_000
CHUNK = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_COMPRESSED_TYPES = {
    "application/gzip",
    "application/x-gzip",
    "application/zip",
    "application/x-zip-compressed",
}


async def _prepend(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def _peek(stream: AsyncIterator[bytes], size: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first ``size`` bytes (fewer if the stream is shorter) and a stream of everything."""
    head = b""
    iterator = stream.__aiter__()
    while len(head) < size:
        try:
            chunk = await iterator.__anext__()
        except StopAsyncIteration:
            break
        head += bytes(chunk)
    return head, _prepend(head, iterator)


def detect_format(head: bytes) -> str | None:
    """``"gzip"``, ``"zip"`` or None, from a resource's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head[:4] in ZIP_MAGICS:
        return "zip"
    return None


class _Limits:
    """Running bomb check for one compressed resource."""

    def __init__(self, url: str, max_size: int, max_ratio: float) -> None:
        self.url, self.max_size, self.max_ratio = url, max_size, max_ratio
        self.consumed = 0
        self.produced = 0

    def check(self, *, declared: bool = False) -> None:
        what = "declares" if declared else "expands to"
        if self.produced > self.max_size:
            raise DecompressionBombError(
                f"{self.url!r} {what} more than max_size={self.max_size} bytes; nothing of it was stored",
                url=self.url,
                limit="max_size",
            )
        if self.produced > max(self.max_ratio * self.consumed, RATIO_GRACE):
            raise DecompressionBombError(
                f"{self.url!r} {what} {self.produced} bytes from {self.consumed} compressed bytes, more than "
                f"max_ratio={self.max_ratio:g}; nothing of it was stored",
                url=self.url,
                limit="max_ratio",
            )


class UnzipBundleContext(BundleStorageContext):
    """Wraps the base storage's context; decompresses resources on their way in."""

    def __init__(self, decorator: UnzipResourceDecorator, inner: BundleStorageContext) -> None:
        self.decorator = decorator
        self.inner = inner
        self.bundle_ref = inner.bundle_ref
        self.recipe = inner.recipe

    async def add_resource(
        self,
        url: str,
        content_type: str | None,
        status_code: int,
        stream: AsyncIterator[bytes],
        *,
        name: str | None = None,
    ) -> None:
        head, stream = await _peek(stream, 4)
        kind = detect_format(head)
        if kind == "gzip":
            base = name if name is not None else url_name(url)
            plain = _strip_gzip_suffix(base)
            await self.inner.add_resource(
                url, _plain_type(content_type, plain), status_code, self._gunzip(url, stream), name=plain
            )
        elif kind == "zip":
            await self._unzip(url, status_code, stream)
        elif name is not None:
            await self.inner.add_resource(url, content_type, status_code, stream, name=name)
        else:
            await self.inner.add_resource(url, content_type, status_code, stream)

    async def _gunzip(self, url: str, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        limits = _Limits(url, self.decorator.max_size, self.decorator.max_ratio)
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            async for chunk in stream:
                limits.consumed += len(chunk)
                data = bytes(chunk)
                while data:
                    # max_length bounds each piece, so a bomb is caught one chunk past the limit.
                    out = inflater.decompress(data, CHUNK)
                    data = inflater.unconsumed_tail
                    if inflater.eof:
                        rest = inflater.unused_data
                        if rest.startswith(GZIP_MAGIC[:1]) and rest.strip(b"\x00"):
                            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # next gzip member
                            data = rest
                        elif rest.strip(b"\x00"):
                            raise CorruptData(f"{url!r}: data after the end of the gzip stream")
                    if out:
                        limits.produced += len(out)
                        limits.check()
                        yield out
            if not inflater.eof:
                raise CorruptData(f"{url!r}: truncated gzip stream")
        except zlib.error as exc:
            raise CorruptData(f"{url!r}: not a valid gzip stream: {exc}") from exc

    async def _unzip(self, url: str, status_code: int, stream: AsyncIterator[bytes]) -> None:
        decorator = self.decorator
        limits = _Limits(url, decorator.max_size, decorator.max_ratio)
        spool: IO[bytes] = await asyncio.to_thread(_spool_file, decorator.spool_dir)
        try:
            async for chunk in stream:
                limits.consumed += len(chunk)
                if limits.consumed > decorator.max_size:
                    raise DecompressionBombError(
                        f"{url!r} is larger than max_size={decorator.max_size} bytes; "
                        "nothing of it was stored",
                        url=url,
                        limit="max_size",
                    )
                await asyncio.to_thread(spool.write, chunk)
            try:
                archive = await asyncio.to_thread(zipfile.ZipFile, spool, "r")
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise CorruptData(f"{url!r}: not a valid zip archive: {exc}") from exc
            with archive:
                # Not info.is_dir(): it fails on an empty name (a member called "\x00" is cut
                # to "" by zipfile), which a hostile archive can contain.
                members = [info for info in archive.infolist() if not info.filename.endswith("/")]
                if len(members) > decorator.max_members:
                    raise DecompressionBombError(
                        f"{url!r} has {len(members)} members, more than max_members={decorator.max_members}; "
                        "nothing of it was stored",
                        url=url,
                        limit="max_members",
                    )
                limits.produced = sum(info.file_size for info in members)
                limits.check(declared=True)
                for info in members:
                    await self.inner.add_resource(
                        f"{url}#{info.filename}",
                        mimetypes.guess_type(info.filename)[0],
                        status_code,
                        _read_member(url, archive, info),
                        name=info.filename,
                    )
        finally:
            await asyncio.to_thread(spool.close)

    async def complete(self, metadata: Mapping[str, Any]) -> None:
        await self.inner.complete(metadata)

    def __getattr__(self, name: str) -> Any:
        # Anything else (resources, directory, ...) is the base context's.
        return getattr(self.inner, name)


async def _read_member(url: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> AsyncIterator[bytes]:
    try:
        handle: IO[bytes] = await asyncio.to_thread(archive.open, info)
    except (RuntimeError, NotImplementedError) as exc:  # encrypted, unsupported compression
        raise StorageError(f"{url!r}: cannot read zip member {info.filename!r}: {exc}", key=url) from exc
    try:
        while True:
            try:
                chunk = await asyncio.to_thread(handle.read, CHUNK)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise CorruptData(f"{url!r}: zip member {info.filename!r} is corrupt: {exc}") from exc
            if not chunk:
                return
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


def _spool_file(directory: Path | None) -> IO[bytes]:
    return tempfile.TemporaryFile(dir=directory)


def _strip_gzip_suffix(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith(".tgz"):
        return name[:-4] + ".tar"
    for suffix in (".gz", ".gzip"):
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _plain_type(content_type: str | None, plain_name: str) -> str | None:
    if content_type is None or content_type.split(";")[0].strip().lower() in _COMPRESSED_TYPES:
        return mimetypes.guess_type(plain_name)[0]
    return content_type


class UnzipResourceDecorator:
    """Stores gzip and zip resources decompressed; wraps any :class:`Storage`.

    Args:
        storage: the storage that receives the decompressed resources.
        max_ratio: largest allowed decompressed/compressed size ratio (default 100).
        max_size: largest allowed decompressed size of one resource, in bytes (default 8 GiB);
            also bounds the size of a zip spooled to disk.
        max_members: largest number of members of one zip (default 10 000).
        spool_dir: where zips are spooled (default: the system's temp directory).

    Raises:
        ConfigError: a bound is not positive.
    """

    supported_formats = ("gzip", "zip")

    def __init__(
        self,
        storage: Storage,
        *,
        max_ratio: float = DEFAULT_MAX_RATIO,
        max_size: int = DEFAULT_MAX_SIZE,
        max_members: int = DEFAULT_MAX_MEMBERS,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not max_ratio > 0 or max_size <= 0 or max_members <= 0:
            raise ConfigError(
                "max_ratio, max_size and max_members must be positive "
                f"(got {max_ratio}, {max_size}, {max_members})"
            )
        self.base_storage = storage
        self.max_ratio = float(max_ratio)
        self.max_size = int(max_size)
        self.max_members = int(max_members)
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None

    def __repr__(self) -> str:
        return f"UnzipResourceDecorator({self.base_storage!r})"

    async def start_bundle(self, bundle_ref: BundleRef, recipe: RecipeLike) -> UnzipBundleContext:
        """Start the bundle in the base storage; its context decompresses what it is given."""
        return UnzipBundleContext(self, await self.base_storage.start_bundle(bundle_ref, recipe))

    def open_bundle(
        self, bundle_id: str, metadata: Mapping[str, Any]
    ) -> contextlib.AbstractAsyncContextManager[BundleStream]:
        """The seed's writer form; what is written is decompressed if it is gzip or zip."""
        return open_bundle(self, bundle_id, metadata)

    def __getattr__(self, name: str) -> Any:
        # on_run_start, list_bundles, ... belong to the base storage.
        return getattr(self.base_storage, name)
