"""Bundle storage (seed 003): resources streamed to disk or S3, grouped in bundles named by BIDs.

::

    from statekit.storage import BundleRef, FileStorage, Recipe

    storage = FileStorage("captures")
    ctx = await storage.start_bundle(BundleRef(primary_url="https://example.com"), Recipe("fr"))
    await ctx.add_resource("https://example.com/page.html", "text/html", 200, stream)
    await ctx.complete({"source": "us-fl"})

:class:`FileStorage` writes ``captures/bundle_<bid>/``; :class:`PipelineStorage` writes S3
objects and publishes an SQS notice per completed bundle; :class:`UnzipResourceDecorator`
stores gzip/zip resources decompressed. S3 and SQS need ``pip install statekit[s3]``.
"""

from statekit.storage._bids import BID_PATTERN, bid_time, is_bid, new_bid
from statekit.storage.base import BundleRef, BundleStorageContext, BundleStream, Recipe, Storage
from statekit.storage.builder import StorageBuilder, create_storage_stack, storage_from_env
from statekit.storage.files import BundleInfo, FileStorage
from statekit.storage.s3 import PipelineStorage
from statekit.storage.sqs import SqsPublisher
from statekit.storage.unzip import UnzipResourceDecorator

__all__ = [
    "BID_PATTERN",
    "BundleInfo",
    "BundleRef",
    "BundleStorageContext",
    "BundleStream",
    "FileStorage",
    "PipelineStorage",
    "Recipe",
    "SqsPublisher",
    "Storage",
    "StorageBuilder",
    "UnzipResourceDecorator",
    "bid_time",
    "create_storage_stack",
    "is_bid",
    "new_bid",
    "storage_from_env",
]
