"""SqsPublisher: the bundle-completion notice, in the seed's exact JSON format.

Sending a message is not idempotent, so a failed send is never retried blindly:

* on a FIFO queue (URL ending in ``.fifo``) the message carries ``MessageDeduplicationId = bid``,
  which makes a resend within SQS's 5-minute window harmless, so transient errors are retried;
* on a standard queue there is no such guard: botocore's retries are off, an error before the
  request was sent raises :class:`~statekit.errors.StorageError`, and a lost reply raises
  :class:`~statekit.errors.OutcomeUnknown` (the message may or may not be on the queue;
  consumers should treat ``bundle_id`` as the deduplication key).

Either way :class:`~statekit.storage.PipelineStorage` keeps its pending-completion record, and
``on_run_start`` sends the notice again later.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from statekit.errors import ConfigError, OutcomeUnknown, StorageError
from statekit.storage._deps import require
from statekit.storage.base import BundleRef, metadata_json, utc_timestamp

__all__ = ["SqsPublisher", "completion_message"]

_REGION_IN_URL = re.compile(r"sqs[.-]([a-z0-9-]+)\.amazonaws\.com")
DEFAULT_REGION = "us-east-1"


def completion_message(
    bundle_ref: BundleRef,
    metadata: Mapping[str, Any],
    recipe_id: str,
    *,
    storage_key: str,
    completion_timestamp: str | None = None,
) -> dict[str, Any]:
    """The seed's SQS message body for a completed bundle (as a dict; send it as JSON)."""
    return {
        "bundle_id": bundle_ref.bid,
        "recipe_id": recipe_id,
        "primary_url": bundle_ref.primary_url,
        "resources_count": bundle_ref.resources_count,
        "storage_key": storage_key,
        "completion_timestamp": completion_timestamp or utc_timestamp(),
        "metadata": metadata_json(metadata),
    }


def resolve_region(region: str | None, queue_url: str = "") -> str:
    """Explicit region > ``AWS_REGION`` > ``AWS_DEFAULT_REGION`` > the queue URL's > us-east-1."""
    if region:
        return region
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            return os.environ[name]
    match = _REGION_IN_URL.search(queue_url)
    return match.group(1) if match else DEFAULT_REGION


class SqsPublisher:
    """Publishes bundle-completion notices to an SQS queue (aiobotocore, from the s3 extra).

    Args:
        queue_url: the queue's URL.
        region: AWS region (default: ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the URL's, us-east-1).
        endpoint_url: an SQS-compatible endpoint instead of AWS (default: ``AWS_ENDPOINT_URL``).
        connect_timeout: seconds to wait for a connection.
        read_timeout: seconds to wait for the reply.

    Credentials come from the usual AWS sources (environment, profile). A short-lived client is
    used per notice, so one publisher works from any event loop.

    Raises:
        ConfigError: ``queue_url`` is empty, or aiobotocore is not installed.
    """

    def __init__(
        self,
        queue_url: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
    ) -> None:
        if not queue_url:
            raise ConfigError("SqsPublisher needs a queue_url (or STATEKIT_SQS_QUEUE_URL)")
        require("aiobotocore.session")
        self.queue_url = queue_url
        self.region = resolve_region(region, queue_url)
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.fifo = queue_url.endswith(".fifo")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def __repr__(self) -> str:
        return f"SqsPublisher({self.queue_url!r}, region={self.region!r})"

    async def publish_bundle_completion(
        self,
        bundle_ref: BundleRef,
        metadata: Mapping[str, Any],
        recipe_id: str,
        *,
        storage_key: str | None = None,
    ) -> str:
        """Send the completion notice of ``bundle_ref``; returns the SQS message id.

        Raises:
            StorageError: the message was not accepted (queue missing, access denied, no connection).
            OutcomeUnknown: the request was sent but no reply came: the message may be on the queue.
        """
        body = completion_message(
            bundle_ref, metadata, recipe_id, storage_key=storage_key or f"bundles/{bundle_ref.bid}/resources"
        )
        return await self.send_raw(json.dumps(body), bid=bundle_ref.bid, group=recipe_id)

    async def send_raw(self, body: str, *, bid: str, group: str) -> str:
        """Send an already-encoded notice (PipelineStorage replays the stored body verbatim)."""
        session_mod = require("aiobotocore.session")
        config_mod = require("aiobotocore.config")
        exceptions = require("botocore.exceptions")
        config = config_mod.AioConfig(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            # Only a FIFO queue's deduplication id makes a resend safe.
            retries={"max_attempts": 3 if self.fifo else 1, "mode": "standard"},
        )
        kwargs: dict[str, Any] = {"QueueUrl": self.queue_url, "MessageBody": body}
        if self.fifo:
            kwargs["MessageGroupId"] = group or "statekit"
            kwargs["MessageDeduplicationId"] = bid
        session = session_mod.get_session()
        try:
            async with session.create_client(
                "sqs", region_name=self.region, endpoint_url=self.endpoint_url, config=config
            ) as client:
                reply = await client.send_message(**kwargs)
        except (exceptions.ReadTimeoutError, exceptions.ConnectionClosedError) as exc:
            raise OutcomeUnknown(
                f"SQS send_message for bundle {bid} to {self.queue_url} got no reply ({exc}); "
                "the notice may or may not have been queued",
                backend_type="sqs",
                key=bid,
            ) from exc
        except (exceptions.BotoCoreError, exceptions.ClientError) as exc:
            raise StorageError(
                f"SQS send_message for bundle {bid} to {self.queue_url} failed: {exc}",
                backend_type="sqs",
                key=bid,
            ) from exc
        return str(reply.get("MessageId", ""))
