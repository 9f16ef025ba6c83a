"""The storage contract: :class:`Storage`, :class:`BundleStorageContext`, :class:`BundleRef`, :class:`Recipe`.

A *bundle* is a set of resources fetched together (a page and its attachments, one API sweep).
A storage starts a bundle, streams each resource into it, and completes it: completion writes
the bundle's manifest last (a bundle without one is incomplete) and runs the recipe's completion
callbacks. ``open_bundle`` is the seed's writer form: one resource written with ``write()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from statekit.errors import SerializationFailed, StorageError
from statekit.storage._bids import check_bid, is_bid, new_bid

__all__ = [
    "BundleRef",
    "BundleStorageContext",
    "BundleStream",
    "CompletionHook",
    "Recipe",
    "RecipeLike",
    "Storage",
    "execute_completion_callbacks",
    "metadata_json",
    "open_bundle",
    "utc_timestamp",
]


@dataclass(frozen=True, slots=True)
class BundleRef:
    """What identifies a bundle: its BID, the URL it started from, and free-form meta.

    Args:
        primary_url: the URL the bundle was fetched from.
        resources_count: how many resources the caller expects to add.
        meta: JSON-serialisable extra information, stored in the manifest.
        bid: the bundle ID; a new one by default. A given one must be a valid BID.

    Raises:
        InvalidBidError: ``bid`` is not of the exact BID shape.
    """

    primary_url: str = ""
    resources_count: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)
    bid: str = field(default_factory=new_bid)

    def __post_init__(self) -> None:
        check_bid(self.bid)

    def to_dict(self) -> dict[str, Any]:
        """The ref as a JSON-ready dict (also what the pending-completion record holds)."""
        return {
            "bid": self.bid,
            "primary_url": self.primary_url,
            "resources_count": self.resources_count,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundleRef:
        """Inverse of :meth:`to_dict` (validates the BID)."""
        return cls(
            primary_url=str(data.get("primary_url", "")),
            resources_count=int(data.get("resources_count", 0)),
            meta=dict(data.get("meta") or {}),
            bid=data["bid"],
        )


class CompletionHook(Protocol):
    """A loader or locator that wants to hear about completed bundles."""

    async def on_bundle_complete_hook(self, bundle_ref: BundleRef) -> None: ...


@runtime_checkable
class RecipeLike(Protocol):
    """Anything with a ``recipe_id``; ``loader`` and ``locators`` are looked up if present."""

    @property
    def recipe_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Recipe:
    """A minimal recipe: its id, plus the loader and locators whose completion hooks run.

    Any object with a ``recipe_id`` attribute can be used instead; ``loader`` and each of
    ``locators`` may define ``async def on_bundle_complete_hook(bundle_ref)``.
    """

    recipe_id: str
    loader: object | None = None
    locators: tuple[object, ...] = ()


class BundleStorageContext(ABC):
    """One open bundle: add resources, then complete it once.

    Resources may be added concurrently; :meth:`complete` must come after every
    :meth:`add_resource` has returned.
    """

    bundle_ref: BundleRef
    recipe: RecipeLike

    @abstractmethod
    async def add_resource(
        self,
        url: str,
        content_type: str | None,
        status_code: int,
        stream: AsyncIterator[bytes],
        *,
        name: str | None = None,
    ) -> None:
        """Stream one resource into the bundle.

        Args:
            url: where the resource came from; its last path segment names it.
            content_type: its MIME type, if known.
            status_code: the HTTP status it was fetched with.
            stream: its bytes, chunk by chunk (never held whole in memory).
            name: a name to use instead of the one derived from ``url`` (sanitised the same
                way; zip members use it).

        Raises:
            StorageError: the resource could not be stored; nothing of it is kept.
        """

    @abstractmethod
    async def complete(self, metadata: Mapping[str, Any]) -> None:
        """Write the manifest (last) and run the completion protocol.

        Raises:
            SerializationFailed: ``metadata`` is not JSON-serialisable; nothing was written.
            StorageError: the manifest could not be written, or a completion step failed.
        """


@runtime_checkable
class Storage(Protocol):
    """Where bundles go. Implemented by FileStorage, PipelineStorage and the decorators."""

    async def start_bundle(self, bundle_ref: BundleRef, recipe: RecipeLike) -> BundleStorageContext:
        """Open a new bundle and return the context that fills it."""
        ...


async def execute_completion_callbacks(bundle_ref: BundleRef, recipe: object) -> None:
    """Run ``recipe.loader`` and each of ``recipe.locators``' ``on_bundle_complete_hook``, in order.

    Raises:
        StorageError: a hook failed (the original error is its ``__cause__``).
    """
    hooks: list[object] = []
    loader = getattr(recipe, "loader", None)
    if loader is not None:
        hooks.append(loader)
    hooks.extend(getattr(recipe, "locators", None) or ())
    for hook_owner in hooks:
        hook = getattr(hook_owner, "on_bundle_complete_hook", None)
        if hook is None:
            continue
        try:
            await hook(bundle_ref)
        except Exception as exc:
            raise StorageError(
                f"completion callback {type(hook_owner).__name__}.on_bundle_complete_hook failed "
                f"for bundle {bundle_ref.bid}: {exc}"
            ) from exc


def metadata_json(value: Mapping[str, Any], *, what: str = "metadata") -> dict[str, Any]:
    """A JSON-round-trippable copy of ``value``; SerializationFailed if it is not JSON data."""
    try:
        result: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SerializationFailed(f"{what} must be JSON-serialisable: {exc}") from exc
    return result


def utc_timestamp(moment: datetime | None = None) -> str:
    """``2024-01-15T10:30:00Z``: UTC, seconds precision (the seed's SQS format)."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_END = object()


class BundleStream:
    """The seed's writer form: ``async with storage.open_bundle(name, metadata) as bundle``.

    The bytes given to :meth:`write` become one resource of a new bundle, streamed through a
    small bounded queue (a slow storage slows the writer down; nothing piles up in memory).
    Leaving the block normally completes the bundle with ``metadata``; leaving it with an
    exception discards the resource and leaves the bundle incomplete.
    """

    _QUEUE_CHUNKS = 4

    def __init__(self, storage: Storage, bundle_id: str, metadata: Mapping[str, Any]) -> None:
        self._storage = storage
        self._bundle_id = bundle_id
        self._metadata = dict(metadata)
        self._queue: asyncio.Queue[bytes | object] = asyncio.Queue(self._QUEUE_CHUNKS)
        self._context: BundleStorageContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._ref: BundleRef | None = None
        self._closed = False

    async def _open(self) -> None:
        # A caller's name is never used as a path: a valid BID is the bundle's ID, anything
        # else is kept as a label in the bundle's meta and names its one resource.
        bid = self._bundle_id if is_bid(self._bundle_id) else new_bid()
        self._ref = BundleRef(
            primary_url="", resources_count=1, meta={"bundle_name": self._bundle_id}, bid=bid
        )
        recipe = Recipe(recipe_id=str(self._metadata.get("recipe_id", "open_bundle")))
        self._context = await self._storage.start_bundle(self._ref, recipe)
        self._task = asyncio.ensure_future(
            self._context.add_resource(f"bundle:{self._bundle_id}", None, 200, self._chunks())
        )

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            assert isinstance(item, bytes)
            yield item

    async def _put(self, item: bytes | object) -> None:
        """Queue ``item`` once there is room; if the storage fails or stops reading first,
        raise its error instead of waiting forever."""
        assert self._task is not None
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if put.done():
            return
        put.cancel()
        await self._task  # re-raises the storage's error
        raise StorageError(f"bundle {self._bundle_id!r}: the storage stopped reading the stream")

    async def write(self, data: bytes) -> None:
        """Append ``data`` to the bundle's resource (waits while the storage catches up).

        Raises:
            StorageError: the stream is closed, or the storage failed (its error, e.g.
                ``DecompressionBombError``, is raised as is).
        """
        if self._closed or self._task is None:
            raise StorageError(f"bundle {self._bundle_id!r}: write() on a closed bundle stream")
        await self._put(bytes(data))

    async def close(self) -> None:
        """Finish the resource and complete the bundle."""
        if self._closed:
            return
        self._closed = True
        assert self._task is not None
        assert self._context is not None
        if not self._task.done():
            await self._put(_END)
        await self._task
        await self._context.complete(self._metadata)

    async def _abort(self) -> None:
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def get_bundle_ref(self) -> BundleRef:
        """The ref of the bundle being written."""
        if self._ref is None:
            raise StorageError("the bundle stream is not open yet")
        return self._ref

    def get_metadata(self) -> dict[str, Any]:
        """The metadata the bundle will be completed with."""
        return dict(self._metadata)


@contextlib.asynccontextmanager
async def open_bundle(
    storage: Storage, bundle_id: str, metadata: Mapping[str, Any]
) -> AsyncIterator[BundleStream]:
    """Implementation of ``Storage.open_bundle`` shared by every storage."""
    stream = BundleStream(storage, bundle_id, metadata)
    await stream._open()
    try:
        yield stream
    except BaseException:
        await stream._abort()
        raise
    await stream.close()
