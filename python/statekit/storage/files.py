"""FileStorage: each bundle is a directory ``output_dir/bundle_<bid>/``.

Layout of a bundle directory::

    page.html            a resource, byte for byte as streamed
    page.html.meta       JSON: url, content_type, status_code, size, sha256, stored_at (and name, bid)
    bundle.json          the manifest, written last by complete(): a bundle without it is incomplete

Every file is written atomically (a hidden temp file in the same directory, fsync, rename), so a
reader sees a whole resource or none. Resources are streamed to disk chunk by chunk; size and
SHA-256 (Rust, GIL released) are computed on the way through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statekit._native import Sha256Hasher, sha256_file
from statekit._utils.atomic import atomic_write_bytes, fsync_directory
from statekit.errors import ConfigError, StorageError
from statekit.storage._bids import check_bid, is_bid
from statekit.storage._names import (
    MANIFEST_NAME,
    META_SUFFIX,
    NameAllocator,
    is_safe_name,
    member_name,
    url_name,
)
from statekit.storage.base import (
    BundleRef,
    BundleStorageContext,
    BundleStream,
    RecipeLike,
    execute_completion_callbacks,
    metadata_json,
    open_bundle,
    utc_timestamp,
)

__all__ = ["BundleInfo", "FileStorage"]

#: Small chunks are gathered up to this size before one write (one thread hop per MiB).
WRITE_BUFFER = 1 << 20
BUNDLE_DIR_PREFIX = "bundle_"


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """A bundle found on disk by :meth:`FileStorage.list_bundles`."""

    bid: str
    path: Path
    complete: bool


@dataclass(frozen=True, slots=True)
class StoredResource:
    """What the storage recorded about one resource (the ``.meta`` content)."""

    name: str
    url: str
    content_type: str | None
    status_code: int
    size: int
    sha256: str
    stored_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "content_type": self.content_type,
            "status_code": self.status_code,
            "size": self.size,
            "sha256": self.sha256,
            "stored_at": self.stored_at,
        }


def _check_chunk(chunk: object, url: str) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, bytearray | memoryview):
        return bytes(chunk)
    raise StorageError(
        f"resource {url!r}: the stream yielded {type(chunk).__name__}, expected bytes", key=url
    )


class FileBundleContext(BundleStorageContext):
    """An open bundle of a :class:`FileStorage`."""

    def __init__(
        self, storage: FileStorage, bundle_ref: BundleRef, recipe: RecipeLike, directory: Path
    ) -> None:
        self.storage = storage
        self.bundle_ref = bundle_ref
        self.recipe = recipe
        self.directory = directory
        self._names = NameAllocator()
        self._pending_uploads: set[str] = set()
        self._completed_uploads: set[str] = set()
        self._resources: list[StoredResource] = []
        self._completed = False

    async def add_resource(
        self,
        url: str,
        content_type: str | None,
        status_code: int,
        stream: AsyncIterator[bytes],
        *,
        name: str | None = None,
    ) -> None:
        if self._completed:
            raise StorageError(f"bundle {self.bundle_ref.bid} is already complete", path=str(self.directory))
        # Allocated before the first await, so names follow the order of the calls.
        safe = self._names.allocate(member_name(name) if name is not None else url_name(url))
        self._pending_uploads.add(safe)
        try:
            size, digest = await self._stream_to_file(safe, url, stream)
            record = StoredResource(
                name=safe,
                url=url,
                content_type=content_type,
                status_code=int(status_code),
                size=size,
                sha256=digest,
                stored_at=utc_timestamp(),
            )
            meta = {**record.to_dict(), "bid": self.bundle_ref.bid}
            await asyncio.to_thread(
                atomic_write_bytes, self.directory / (safe + META_SUFFIX), json.dumps(meta, indent=2).encode()
            )
        except BaseException:
            self._names.release(safe)
            raise
        finally:
            self._pending_uploads.discard(safe)
        self._completed_uploads.add(safe)
        self._resources.append(record)

    @property
    def resources(self) -> list[StoredResource]:
        """The resources stored so far, in the order they finished."""
        return list(self._resources)

    async def _stream_to_file(self, name: str, url: str, stream: AsyncIterator[bytes]) -> tuple[int, str]:
        target = self.directory / name
        tmp = self.directory / f".{name}.{secrets.token_hex(4)}.tmp"
        hasher = Sha256Hasher()
        size = 0
        try:
            # Not in a thread: a cancelled to_thread would still create the file, unseen.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise StorageError(f"cannot create {tmp}: {exc}", path=str(tmp)) from exc
        # Double buffering: while one chunk is hashed and written (two worker threads, both
        # without the GIL), the next one is gathered from the stream.
        in_flight: asyncio.Future[None] | None = None
        try:
            try:
                buffer = bytearray()
                async for chunk in stream:
                    data = _check_chunk(chunk, url)
                    size += len(data)
                    if len(data) >= WRITE_BUFFER and not buffer:
                        ready = data
                    else:
                        buffer += data
                        if len(buffer) < WRITE_BUFFER:
                            continue
                        ready, buffer = bytes(buffer), bytearray()
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.ensure_future(_hash_and_write(target, fd, hasher, ready))
                if in_flight is not None:
                    await in_flight
                    in_flight = None
                if buffer:
                    await _hash_and_write(target, fd, hasher, bytes(buffer))
                await _disk(target, os.fsync, fd)
            finally:
                if in_flight is not None:
                    # Never close the descriptor under a write still running in a thread.
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(in_flight)
                os.close(fd)
            try:
                os.replace(tmp, target)  # a rename is quick, and must not outlive a cancel
            except OSError as exc:
                raise StorageError(f"cannot write {target}: {exc}", path=str(target)) from exc
        except BaseException:
            # Whatever failed (the stream, the disk, a cancel), no partial resource is left.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return size, hasher.hexdigest()

    async def complete(self, metadata: Mapping[str, Any]) -> None:
        if self._completed:
            raise StorageError(f"bundle {self.bundle_ref.bid} is already complete", path=str(self.directory))
        if self._pending_uploads:
            raise StorageError(
                f"bundle {self.bundle_ref.bid}: complete() while resources are still being added "
                f"({sorted(self._pending_uploads)})",
                path=str(self.directory),
            )
        await self.storage.complete_bundle_with_callbacks_hook(
            self.bundle_ref, self.recipe, metadata, context=self
        )

    def manifest(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest this bundle gets on completion."""
        return {
            **self.bundle_ref.to_dict(),
            "recipe_id": str(getattr(self.recipe, "recipe_id", "")),
            "storage_key": str(self.directory),
            "completed_at": utc_timestamp(),
            "metadata": metadata_json(metadata),
            "resources": [r.to_dict() for r in self._resources],
        }


async def _disk(target: Path, fn: Callable[..., object], *args: object) -> None:
    """Run a blocking file operation in a worker thread; OSError becomes StorageError."""
    try:
        await asyncio.to_thread(fn, *args)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc}", path=str(target)) from exc


_FADVISE = getattr(os, "posix_fadvise", None)
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", 0)


def _write_all(fd: int, data: bytes) -> None:
    start = os.lseek(fd, 0, os.SEEK_CUR)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    if _FADVISE is not None:
        # Start writing this chunk back now (Linux starts writeback for DONTNEED), so the
        # final fsync has little left to do and a large stream does not fill the page cache.
        _FADVISE(fd, start, len(data), _DONTNEED)


async def _hash_and_write(target: Path, fd: int, hasher: Sha256Hasher, data: bytes) -> None:
    """Hash and write one chunk at the same time, in two worker threads."""
    hashed, written = await asyncio.gather(
        asyncio.to_thread(hasher.update, data), _disk(target, _write_all, fd, data), return_exceptions=True
    )
    for outcome in (written, hashed):
        if isinstance(outcome, BaseException):
            raise outcome


class FileStorage:
    """Bundles as directories on local disk.

    Args:
        output_dir: where ``bundle_<bid>/`` directories are created.
        create_dirs: create ``output_dir`` if it is missing (otherwise it must exist).

    Example::

        storage = FileStorage("captures")
        ctx = await storage.start_bundle(BundleRef(primary_url="https://example.com"), Recipe("fr"))
        await ctx.add_resource("https://example.com/page.html", "text/html", 200, stream)
        await ctx.complete({"source": "us-fl"})
    """

    def __init__(self, output_dir: str | os.PathLike[str], create_dirs: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.create_dirs = create_dirs
        self._active_bundles: dict[str, FileBundleContext] = {}

    def __repr__(self) -> str:
        return f"FileStorage({str(self.output_dir)!r})"

    def bundle_path(self, bid: str) -> Path:
        """The directory of bundle ``bid`` (validated first: never a path from an arbitrary string)."""
        return self.output_dir / f"{BUNDLE_DIR_PREFIX}{check_bid(bid)}"

    async def start_bundle(self, bundle_ref: BundleRef, recipe: RecipeLike) -> FileBundleContext:
        """Create ``output_dir/bundle_<bid>/`` and return its context.

        Raises:
            InvalidBidError: the ref's BID is not valid.
            ConfigError: ``output_dir`` is missing and ``create_dirs`` is False.
            StorageError: the directory cannot be created, or the bundle is already complete.
        """
        directory = self.bundle_path(bundle_ref.bid)
        if not self.output_dir.is_dir() and not self.create_dirs:
            raise ConfigError(
                f"output directory {self.output_dir} does not exist (pass create_dirs=True to create it)"
            )
        try:
            await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create bundle directory {directory}: {exc}", path=str(directory)
            ) from exc
        if (directory / MANIFEST_NAME).exists():
            raise StorageError(
                f"bundle {bundle_ref.bid} is already complete at {directory}", path=str(directory)
            )
        context = FileBundleContext(self, bundle_ref, recipe, directory)
        self._active_bundles[bundle_ref.bid] = context
        return context

    def open_bundle(
        self, bundle_id: str, metadata: Mapping[str, Any]
    ) -> contextlib.AbstractAsyncContextManager[BundleStream]:
        """The seed's writer form: one resource written with ``await bundle.write(data)``."""
        return open_bundle(self, bundle_id, metadata)

    async def complete_bundle_with_callbacks_hook(
        self,
        bundle_ref: BundleRef,
        recipe: RecipeLike,
        metadata: Mapping[str, Any],
        *,
        context: FileBundleContext | None = None,
    ) -> None:
        """Write the manifest (last, atomically), then run the recipe's completion callbacks."""
        context = context or self._active_bundles.get(bundle_ref.bid)
        if context is None:
            raise StorageError(f"bundle {bundle_ref.bid} was not started by this storage")
        manifest = context.manifest(metadata)
        path = context.directory / MANIFEST_NAME
        try:
            await asyncio.to_thread(fsync_directory, context.directory)
            await asyncio.to_thread(atomic_write_bytes, path, json.dumps(manifest, indent=2).encode())
        except OSError as exc:
            raise StorageError(f"cannot write manifest {path}: {exc}", path=str(path)) from exc
        context._completed = True
        self._active_bundles.pop(bundle_ref.bid, None)
        await self._execute_completion_callbacks(bundle_ref, recipe)

    async def _execute_completion_callbacks(self, bundle_ref: BundleRef, recipe: RecipeLike) -> None:
        await execute_completion_callbacks(bundle_ref, recipe)

    def list_bundles(self) -> list[BundleInfo]:
        """Every bundle directory under ``output_dir``, oldest first; ``complete`` tells whether
        its manifest exists (a bundle without one was interrupted)."""
        found: list[BundleInfo] = []
        if not self.output_dir.is_dir():
            return found
        for entry in self.output_dir.iterdir():
            bid = entry.name.removeprefix(BUNDLE_DIR_PREFIX)
            if entry.name.startswith(BUNDLE_DIR_PREFIX) and is_bid(bid) and entry.is_dir():
                found.append(BundleInfo(bid=bid, path=entry, complete=(entry / MANIFEST_NAME).is_file()))
        return sorted(found, key=lambda b: b.bid)

    async def verify_bundle(self, bid: str) -> list[str]:
        """Check every resource of complete bundle ``bid`` against its manifest: the file exists
        and has the recorded size and SHA-256 (hashed in Rust, streamed, GIL released). Returns
        one line per problem; an empty list means the bundle is intact.

        Raises:
            InvalidBidError: ``bid`` is not a valid BID.
            StorageError: the bundle has no manifest (incomplete or missing) or it cannot be read.
        """
        directory = self.bundle_path(bid)
        try:
            manifest = await asyncio.to_thread(self.read_manifest, bid)
        except (OSError, ValueError) as exc:
            raise StorageError(f"bundle {bid}: cannot read its manifest: {exc}", path=str(directory)) from exc
        if manifest is None:
            raise StorageError(
                f"bundle {bid} has no manifest (incomplete or missing): nothing to verify against",
                path=str(directory),
            )
        resources = manifest.get("resources")
        if not isinstance(resources, list):
            return ["the manifest has no resource list"]
        problems: list[str] = []
        for entry in resources:
            if not isinstance(entry, dict):
                problems.append(f"{entry!r}: not a resource record")
                continue
            name = entry.get("name")
            if not is_safe_name(name):  # an edited manifest never names a path outside the bundle
                problems.append(f"{name!r}: not a resource name statekit writes")
                continue
            path = directory / name
            try:
                size = path.lstat().st_size
                if not path.is_file() or path.is_symlink():
                    problems.append(f"{name}: not a regular file")
                    continue
                digest = await asyncio.to_thread(sha256_file, path)
            except FileNotFoundError:
                problems.append(f"{name}: missing")
                continue
            except OSError as exc:
                problems.append(f"{name}: unreadable ({exc.strerror or exc})")
                continue
            if size != entry.get("size"):
                problems.append(f"{name}: {size} bytes, the manifest says {entry.get('size')}")
            elif digest != entry.get("sha256"):
                problems.append(f"{name}: SHA-256 {digest} differs from the manifest's {entry.get('sha256')}")
        return problems

    def read_manifest(self, bid: str) -> dict[str, Any] | None:
        """The manifest of bundle ``bid``, or None while it is incomplete."""
        path = self.bundle_path(bid) / MANIFEST_NAME
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return data
