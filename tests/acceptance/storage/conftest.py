"""Fixtures of the storage tests: a session-wide moto server (S3 + SQS), a bucket and a queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.servers.moto_server import MotoServer, running_moto
from tests.unit.storage.conftest import chunks

__all__ = ["AwsPlace", "chunks"]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@dataclass
class AwsPlace:
    """A fresh bucket and SQS queue on the moto server, with sync boto3 clients to inspect them."""

    endpoint_url: str
    bucket: str
    queue_url: str
    s3: Any
    sqs: Any

    def receive(self, wait: float = 1) -> list[dict[str, Any]]:
        reply = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=int(wait)
        )
        return list(reply.get("Messages", []))

    def object_keys(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket)
        return [o["Key"] for o in listing.get("Contents", [])]


@pytest.fixture
def aws(moto_server: MotoServer) -> AwsPlace:
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    return AwsPlace(moto_server.endpoint_url, name, queue_url, s3, sqs)
