"""PipelineStorage: bundles in S3 (obstore), completion notices on SQS, crash-safe completion.

Object layout under ``{prefix}/bundles/{bid}/``::

    resources/<name>     each resource, streamed as its own object (multipart past part_size),
                         with Content-Type and user metadata url, status_code, bid, name
    bundle.json          the manifest (resources with size and SHA-256), written last

``complete()`` then runs the completion protocol (seed 003):

1. a pending-completion record is put in the store (with the exact SQS message body);
2. the recipe's completion callbacks run (loader, then locators); the record notes they ran;
3. the notice is published to SQS;
4. the record is removed.

A crash, or an SQS failure, anywhere after step 1 leaves the record; ``on_run_start`` finishes
every record of that recipe: callbacks not yet run, then the same message body. Pass a
persistent ``store`` (SQLite, Redis) for this to survive a process restart; the default memory
store only covers failures within one process.

Retries: every S3 request is retried with exponential backoff by obstore (5xx, connection
errors, timeouts); an S3 PUT of a part or of the manifest is idempotent, so this is safe. A
resource's stream is consumed once, so a failure that outlasts the retries aborts the multipart
upload (nothing of the resource is kept) and raises :class:`~statekit.errors.StorageError`.
SQS publishing is not idempotent: see :mod:`statekit.storage.sqs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from statekit._native import Sha256Hasher
from statekit.errors import ConfigError, StorageError
from statekit.storage._bids import check_bid
from statekit.storage._deps import require
from statekit.storage._names import MANIFEST_NAME, NameAllocator, member_name, url_name
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
from statekit.storage.sqs import SqsPublisher, completion_message, resolve_region
from statekit.store import KeyValueStore

__all__ = ["PENDING_KEY_TYPE", "PipelineStorage"]

log = logging.getLogger("statekit.storage")

#: Key naming follows seed 000: ``storage:pending_completion:{bucket}:{prefix}:{bid}``.
PENDING_KEY_TYPE = "storage:pending_completion"
DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
DEFAULT_CONCURRENCY = 4
#: Chunks at least this big are hashed in a worker thread (the Rust hasher releases the GIL).
HASH_IN_THREAD = 1 << 20
_URL_SAFE = ":/?#[]@!$&'()*+,;=%-._~"
_BAD_PREFIX = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True, slots=True)
class S3Resource:
    """What was stored for one resource."""

    name: str
    key: str
    url: str
    content_type: str | None
    status_code: int
    size: int
    sha256: str
    stored_at: str
    e_tag: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "url": self.url,
            "content_type": self.content_type,
            "status_code": self.status_code,
            "size": self.size,
            "sha256": self.sha256,
            "stored_at": self.stored_at,
            "e_tag": self.e_tag,
        }


def _clean_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    segments = prefix.split("/") if prefix else []
    if _BAD_PREFIX.search(prefix) or any(s in ("", ".", "..") for s in segments):
        raise ConfigError(
            f"invalid S3 prefix {prefix!r}: no empty, '.' or '..' segments, no control characters"
        )
    return prefix


class _Hashing:
    """Counts and hashes a stream as it passes to the uploader."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.size = 0
        self.hasher = Sha256Hasher()

    async def feed(self, chunk: object) -> bytes:
        if isinstance(chunk, bytearray | memoryview):
            chunk = bytes(chunk)
        if not isinstance(chunk, bytes):
            raise StorageError(
                f"resource {self.url!r}: the stream yielded {type(chunk).__name__}, expected bytes",
                key=self.url,
            )
        self.size += len(chunk)
        if len(chunk) >= HASH_IN_THREAD:
            await asyncio.to_thread(self.hasher.update, chunk)
        else:
            self.hasher.update(chunk)
        return chunk


class S3BundleContext(BundleStorageContext):
    """An open bundle of a :class:`PipelineStorage`."""

    def __init__(self, storage: PipelineStorage, bundle_ref: BundleRef, recipe: RecipeLike) -> None:
        self.storage = storage
        self.bundle_ref = bundle_ref
        self.recipe = recipe
        self.root = storage.bundle_root(bundle_ref.bid)
        self._names = NameAllocator()
        self._pending_uploads: set[str] = set()
        self._completed_uploads: set[str] = set()
        self._resources: list[S3Resource] = []
        self._completed = False

    @property
    def storage_key(self) -> str:
        """``{prefix}/bundles/{bid}/resources``: what the SQS notice names."""
        return f"{self.root}/resources"

    @property
    def resources(self) -> list[S3Resource]:
        """The resources stored so far, in the order they finished."""
        return list(self._resources)

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
            raise StorageError(f"bundle {self.bundle_ref.bid} is already complete")
        safe = self._names.allocate(member_name(name) if name is not None else url_name(url))
        key = f"{self.storage_key}/{safe}"
        attributes: dict[str, str] = {
            # S3 metadata is ASCII: the URL goes percent-encoded.
            "url": quote(url, safe=_URL_SAFE),
            "status_code": str(int(status_code)),
            "bid": self.bundle_ref.bid,
            "name": safe,
        }
        if content_type:
            attributes["Content-Type"] = content_type
        self._pending_uploads.add(safe)
        try:
            hashing = _Hashing(url)
            e_tag = await self.storage._upload(key, stream, hashing, attributes)
        except BaseException:
            self._names.release(safe)
            raise
        finally:
            self._pending_uploads.discard(safe)
        self._completed_uploads.add(safe)
        self._resources.append(
            S3Resource(
                name=safe,
                key=key,
                url=url,
                content_type=content_type,
                status_code=int(status_code),
                size=hashing.size,
                sha256=hashing.hasher.hexdigest(),
                stored_at=utc_timestamp(),
                e_tag=e_tag,
            )
        )

    async def complete(self, metadata: Mapping[str, Any]) -> None:
        if self._completed:
            raise StorageError(f"bundle {self.bundle_ref.bid} is already complete")
        if self._pending_uploads:
            raise StorageError(
                f"bundle {self.bundle_ref.bid}: complete() while resources are still being added "
                f"({sorted(self._pending_uploads)})"
            )
        await self.storage.complete_bundle_with_callbacks_hook(
            self.bundle_ref, self.recipe, metadata, context=self
        )

    def manifest(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest object's content."""
        return {
            **self.bundle_ref.to_dict(),
            "recipe_id": str(getattr(self.recipe, "recipe_id", "")),
            "storage_key": self.storage_key,
            "completed_at": utc_timestamp(),
            "metadata": metadata_json(metadata),
            "resources": [r.to_dict() for r in self._resources],
        }


class PipelineStorage:
    """Bundles in S3, one object per resource, with SQS completion notices.

    Args:
        bucket_name: the S3 bucket.
        sqs_publisher: publishes the completion notices (mandatory, as in seed 003).
        prefix: key prefix (``"captures/2024/"``); leading/trailing slashes are ignored.
        region: AWS region (default: ``AWS_REGION``, ``AWS_DEFAULT_REGION``, us-east-1).
        endpoint_url: an S3-compatible endpoint (default: ``AWS_ENDPOINT_URL``); ``http://``
            endpoints are allowed and addressed path-style.
        store: where pending completions are recorded (default: a new memory store).
        part_size: multipart part size in bytes (at least 5 MiB); smaller resources are one PUT.
        max_concurrency: parts uploaded at once per resource (memory use is about
            ``part_size * (max_concurrency + 1)`` per resource being uploaded).
        max_retries: retries of each S3 request, with exponential backoff.
        s3_config: extra obstore ``S3Store`` options (credentials, ``client_options``...).

    Credentials come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``...) unless given in ``s3_config``.

    Raises:
        ConfigError: a bad option, or the s3 extra is not installed.
    """

    def __init__(
        self,
        bucket_name: str,
        sqs_publisher: SqsPublisher,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        store: KeyValueStore | None = None,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        max_retries: int = 5,
        s3_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not bucket_name:
            raise ConfigError("PipelineStorage needs a bucket_name (or STATEKIT_S3_BUCKET)")
        if sqs_publisher is None or isinstance(sqs_publisher, str):
            raise ConfigError(
                "PipelineStorage needs an SqsPublisher as its second argument: completion notices are "
                "mandatory (a key prefix goes in prefix=...)"
            )
        if part_size < MIN_PART_SIZE:
            raise ConfigError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part size)")
        if max_concurrency < 1 or max_retries < 0:
            raise ConfigError("max_concurrency must be >= 1 and max_retries >= 0")
        obstore_store = require("obstore.store")
        self._obstore = require("obstore")
        self.bucket_name = bucket_name
        self.prefix = _clean_prefix(prefix)
        self.region = resolve_region(region)
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.sqs_publisher = sqs_publisher
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        if store is None:
            from statekit import create_store

            store = create_store("memory")
        self.store = store
        self._active_bundles: dict[str, S3BundleContext] = {}
        options: dict[str, Any] = {"region": self.region}
        client_options: dict[str, Any] = {}
        if self.endpoint_url:
            options["endpoint"] = self.endpoint_url
            # S3-compatible servers (MinIO, moto, Ceph) are usually addressed path-style.
            options["virtual_hosted_style_request"] = False
            if self.endpoint_url.startswith("http://"):
                client_options["allow_http"] = True
        extra = dict(s3_config or {})
        client_options.update(extra.pop("client_options", {}) or {})
        options.update(extra)
        retry = {
            "max_retries": max_retries,
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=15),
                "base": 2,
            },
            "retry_timeout": timedelta(minutes=3),
        }
        try:
            self._s3 = obstore_store.S3Store(
                bucket_name, client_options=client_options or None, retry_config=retry, **options
            )
        except Exception as exc:  # obstore raises its own config errors (and ValueError)
            raise ConfigError(f"invalid S3 configuration for bucket {bucket_name!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"PipelineStorage({self.bucket_name!r}, prefix={self.prefix!r})"

    def bundle_root(self, bid: str) -> str:
        """``{prefix}/bundles/{bid}`` (the BID validated first)."""
        check_bid(bid)
        return f"{self.prefix}/bundles/{bid}" if self.prefix else f"bundles/{bid}"

    def _pending_key(self, bid: str = "") -> str:
        return f"{PENDING_KEY_TYPE}:{self.bucket_name}:{self.prefix}:{bid}"

    async def start_bundle(self, bundle_ref: BundleRef, recipe: RecipeLike) -> S3BundleContext:
        """Open a bundle; nothing is written to S3 until its first resource.

        Raises:
            InvalidBidError: the ref's BID is not valid.
        """
        context = S3BundleContext(self, bundle_ref, recipe)
        self._active_bundles[bundle_ref.bid] = context
        return context

    def open_bundle(
        self, bundle_id: str, metadata: Mapping[str, Any]
    ) -> contextlib.AbstractAsyncContextManager[BundleStream]:
        """The seed's writer form: one resource written with ``await bundle.write(data)``."""
        return open_bundle(self, bundle_id, metadata)

    # --- S3 -----------------------------------------------------------------------------------

    async def _upload(
        self, key: str, stream: AsyncIterator[bytes], hashing: _Hashing, attributes: dict[str, str]
    ) -> str | None:
        """Stream ``stream`` to ``key``: one PUT if it fits in a part, else a multipart upload."""
        iterator = stream.__aiter__()
        head: list[bytes] = []
        buffered = 0
        exhausted = False
        # Read up to one part: a small resource is one PUT instead of three multipart requests.
        while buffered < self.part_size:
            try:
                chunk = await hashing.feed(await iterator.__anext__())
            except StopAsyncIteration:
                exhausted = True
                break
            head.append(chunk)
            buffered += len(chunk)
        # The source's own errors (a dropped download, a bomb) pass through unchanged; only
        # what obstore raises (its errors, or builtins like FileNotFoundError) becomes StorageError.
        source_error: list[BaseException] = []

        async def parts() -> AsyncIterator[bytes]:
            for chunk in head:
                yield chunk
            head.clear()  # let the first part's chunks go once handed over
            try:
                async for chunk in iterator:
                    yield await hashing.feed(chunk)
            except BaseException as exc:
                source_error.append(exc)
                raise

        try:
            if exhausted:
                result = await self._obstore.put_async(
                    self._s3, key, b"".join(head), attributes=attributes, use_multipart=False
                )
            else:
                result = await self._obstore.put_async(
                    self._s3,
                    key,
                    parts(),
                    attributes=attributes,
                    use_multipart=True,
                    chunk_size=self.part_size,
                    max_concurrency=self.max_concurrency,
                )
        except Exception as exc:
            if source_error:
                raise source_error[0] from None
            raise StorageError(
                f"S3 upload of s3://{self.bucket_name}/{key} failed: {type(exc).__name__}: {exc}",
                backend_type="s3",
                key=key,
            ) from exc
        e_tag = result.get("e_tag") if isinstance(result, Mapping) else None
        return str(e_tag) if e_tag is not None else None

    async def _put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        try:
            await self._obstore.put_async(
                self._s3, key, data, attributes={"Content-Type": content_type}, use_multipart=False
            )
        except Exception as exc:  # obstore's errors, and the builtins it maps some of them to
            raise StorageError(
                f"S3 PUT of s3://{self.bucket_name}/{key} failed: {type(exc).__name__}: {exc}",
                backend_type="s3",
                key=key,
            ) from exc

    # --- completion -----------------------------------------------------------------------------

    async def complete_bundle_with_callbacks_hook(
        self,
        bundle_ref: BundleRef,
        recipe: RecipeLike,
        metadata: Mapping[str, Any],
        *,
        context: S3BundleContext | None = None,
    ) -> None:
        """Write the manifest object, then record → callbacks → SQS notice → record removed.

        Raises:
            StorageError: the manifest could not be written (nothing else happened), a callback
                failed, or SQS did not take the notice (``OutcomeUnknown`` if it may have); in
                the last two cases the pending record stays and ``on_run_start`` finishes it.
        """
        context = context or self._active_bundles.get(bundle_ref.bid)
        if context is None:
            raise StorageError(f"bundle {bundle_ref.bid} was not started by this storage")
        manifest = context.manifest(metadata)
        await self._put_bytes(
            f"{context.root}/{MANIFEST_NAME}", json.dumps(manifest, indent=2).encode(), "application/json"
        )
        context._completed = True
        self._active_bundles.pop(bundle_ref.bid, None)

        recipe_id = str(getattr(recipe, "recipe_id", ""))
        message_metadata = {**manifest["metadata"]}
        message_metadata.setdefault("resources_count", len(manifest["resources"]))
        body = completion_message(bundle_ref, message_metadata, recipe_id, storage_key=context.storage_key)
        record = {
            "bundle_ref": bundle_ref.to_dict(),
            "recipe_id": recipe_id,
            "storage_key": context.storage_key,
            "message": json.dumps(body),
            "callbacks_done": False,
            "recorded_at": utc_timestamp(),
        }
        key = self._pending_key(bundle_ref.bid)
        try:
            await self.store.put(key, record)
        except BaseException:
            # Nothing but the (idempotent) manifest PUT happened: complete() may be called again.
            context._completed = False
            self._active_bundles[bundle_ref.bid] = context
            raise
        await self._finish_pending(key, record, recipe)

    async def _finish_pending(self, key: str, record: dict[str, Any], recipe: object) -> None:
        bundle_ref = BundleRef.from_dict(record["bundle_ref"])
        if not record.get("callbacks_done"):
            await self._execute_completion_callbacks(bundle_ref, recipe)
            record = {**record, "callbacks_done": True}
            await self.store.put(key, record)
        await self.sqs_publisher.send_raw(record["message"], bid=bundle_ref.bid, group=record["recipe_id"])
        await self.store.delete(key)

    async def _execute_completion_callbacks(self, bundle_ref: BundleRef, recipe: object) -> None:
        await execute_completion_callbacks(bundle_ref, recipe)

    async def on_run_start(self, context: object, recipe: RecipeLike) -> int:
        """Finish the completions a previous run left pending (crash, SQS down). Call it first.

        Returns:
            How many pending completions were finished. Those that fail again stay pending
            (logged as warnings) for the next run.
        """
        return await self._process_pending_completions(context, recipe)

    async def _process_pending_completions(self, context: object, recipe: RecipeLike) -> int:
        recipe_id = str(getattr(recipe, "recipe_id", ""))
        finished = 0
        for key, record in await self.store.range_get(self._pending_key()):
            if not isinstance(record, dict) or record.get("recipe_id") != recipe_id:
                continue
            try:
                await self._finish_pending(key, record, recipe)
            except StorageError as exc:
                log.warning("pending completion %s is still pending: %s", key, exc)
                continue
            finished += 1
        return finished

    async def pending_completions(self) -> list[dict[str, Any]]:
        """Every pending-completion record of this storage (all recipes)."""
        return [record for _, record in await self.store.range_get(self._pending_key())]
