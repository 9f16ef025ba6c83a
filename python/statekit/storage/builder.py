"""StorageBuilder, create_storage_stack and configuration from the environment.

Environment variables (read by :meth:`StorageBuilder.from_env` / :func:`storage_from_env`):

=============================  ==================================================================
``STATEKIT_STORAGE_TYPE``      ``file`` (default) or ``s3``
``STATEKIT_STORAGE_FILE_PATH`` FileStorage's output directory (default ``.statekit/bundles``)
``STATEKIT_S3_BUCKET``         PipelineStorage's bucket (required for ``s3``)
``STATEKIT_S3_PREFIX``         key prefix (default empty)
``STATEKIT_SQS_QUEUE_URL``     completion-notice queue (required for ``s3``)
``STATEKIT_STORAGE_USE_UNZIP`` ``true``/``false`` (default ``true``): wrap in UnzipResourceDecorator
``AWS_REGION``                 region for S3 and SQS
``AWS_ENDPOINT_URL``           an S3/SQS-compatible endpoint instead of AWS
=============================  ==================================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from statekit.errors import ConfigError
from statekit.storage.base import Storage
from statekit.store import KeyValueStore

__all__ = ["DEFAULT_FILE_PATH", "StorageBuilder", "create_storage_stack", "storage_from_env"]

DEFAULT_FILE_PATH = ".statekit/bundles"
STORAGE_TYPES = ("file", "s3")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; valid values: true, false, 1, 0, yes, no, on, off")


def create_storage_stack(
    base_storage: Storage, unzip_resources: bool = True, **unzip_options: Any
) -> Storage:
    """Wrap ``base_storage`` in the decorators asked for.

    Args:
        base_storage: a FileStorage, PipelineStorage or any other Storage.
        unzip_resources: store gzip/zip resources decompressed (UnzipResourceDecorator).
        unzip_options: ``max_ratio``, ``max_size``, ``max_members``, ``spool_dir`` for the decorator.

    Raises:
        ConfigError: an option the seed names but statekit does not have (``bundle_resources``:
            statekit stores each resource as its own file or object, never zipped).
    """
    if unzip_options.pop("bundle_resources", False):
        raise ConfigError("bundle_resources is not supported: statekit stores each resource individually")
    if not unzip_resources:
        if unzip_options:
            raise ConfigError(f"unzip options {sorted(unzip_options)} given with unzip_resources=False")
        return base_storage
    from statekit.storage.unzip import UnzipResourceDecorator

    return UnzipResourceDecorator(base_storage, **unzip_options)


class StorageBuilder:
    """Fluent construction of a storage stack.

    Example::

        storage = StorageBuilder().file_storage("captures").unzip().build()
        storage = (StorageBuilder()
                   .pipeline_storage("my-bucket", sqs_queue_url=queue_url, prefix="captures/2024/")
                   .build())
    """

    def __init__(self) -> None:
        self._base: Storage | None = None
        self._unzip = False
        self._unzip_options: dict[str, Any] = {}

    def file_storage(self, path: str | os.PathLike[str], *, create_dirs: bool = True) -> StorageBuilder:
        """Store bundles under ``path`` on local disk."""
        from statekit.storage.files import FileStorage

        self._base = FileStorage(path, create_dirs=create_dirs)
        return self

    def pipeline_storage(
        self,
        bucket: str,
        *,
        sqs_queue_url: str | None = None,
        sqs_publisher: Any = None,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        store: KeyValueStore | None = None,
        **options: Any,
    ) -> StorageBuilder:
        """Store bundles in S3 bucket ``bucket``, with completion notices on SQS.

        Give either ``sqs_publisher`` or ``sqs_queue_url`` (default ``STATEKIT_SQS_QUEUE_URL``).

        Raises:
            ConfigError: no SQS queue, or the s3 extra is missing.
        """
        from statekit.storage.s3 import PipelineStorage
        from statekit.storage.sqs import SqsPublisher

        if sqs_publisher is None:
            queue_url = sqs_queue_url or os.environ.get("STATEKIT_SQS_QUEUE_URL", "")
            if not queue_url:
                raise ConfigError(
                    "PipelineStorage needs an SQS queue: pass sqs_queue_url= or set STATEKIT_SQS_QUEUE_URL"
                )
            sqs_publisher = SqsPublisher(queue_url, region=region, endpoint_url=endpoint_url)
        self._base = PipelineStorage(
            bucket,
            sqs_publisher,
            prefix=prefix,
            region=region,
            endpoint_url=endpoint_url,
            store=store,
            **options,
        )
        return self

    def unzip(self, enabled: bool = True, **options: Any) -> StorageBuilder:
        """Decompress gzip/zip resources (``max_ratio``, ``max_size``... as for the decorator)."""
        self._unzip = enabled
        self._unzip_options = options
        return self

    def build(self) -> Storage:
        """The storage stack.

        Raises:
            ConfigError: no base storage was chosen.
        """
        if self._base is None:
            raise ConfigError(
                "StorageBuilder: choose file_storage(...) or pipeline_storage(...) before build()"
            )
        return create_storage_stack(self._base, unzip_resources=self._unzip, **self._unzip_options)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, store: KeyValueStore | None = None
    ) -> StorageBuilder:
        """A builder configured from the ``STATEKIT_STORAGE_*`` / ``STATEKIT_S3_*`` variables.

        Raises:
            ConfigError: an unknown storage type, a bad boolean, or a missing bucket or queue.
        """
        env = os.environ if environ is None else environ
        kind = env.get("STATEKIT_STORAGE_TYPE", "file").strip().lower() or "file"
        builder = cls()
        if kind == "file":
            builder.file_storage(Path(env.get("STATEKIT_STORAGE_FILE_PATH") or DEFAULT_FILE_PATH))
        elif kind == "s3":
            bucket = env.get("STATEKIT_S3_BUCKET", "")
            if not bucket:
                raise ConfigError("STATEKIT_STORAGE_TYPE=s3 needs STATEKIT_S3_BUCKET")
            queue = env.get("STATEKIT_SQS_QUEUE_URL", "")
            if not queue:
                raise ConfigError("STATEKIT_STORAGE_TYPE=s3 needs STATEKIT_SQS_QUEUE_URL")
            builder.pipeline_storage(
                bucket,
                sqs_queue_url=queue,
                prefix=env.get("STATEKIT_S3_PREFIX", ""),
                region=env.get("AWS_REGION") or None,
                endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
                store=store,
            )
        else:
            raise ConfigError(
                f"STATEKIT_STORAGE_TYPE={kind!r} is not a storage type; "
                f"valid choices: {', '.join(STORAGE_TYPES)}"
            )
        builder.unzip(_flag("STATEKIT_STORAGE_USE_UNZIP", env.get("STATEKIT_STORAGE_USE_UNZIP", "true")))
        return builder


def storage_from_env(
    environ: Mapping[str, str] | None = None, *, store: KeyValueStore | None = None
) -> Storage:
    """``StorageBuilder.from_env(environ, store=store).build()``."""
    return StorageBuilder.from_env(environ, store=store).build()
