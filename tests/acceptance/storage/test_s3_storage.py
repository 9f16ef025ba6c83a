"""PipelineStorage and SqsPublisher against a real S3/SQS server (moto, over HTTP on loopback).

Covered: one object per resource with metadata, multipart upload past the part size, manifest
written last, the seed's SQS message received and checked, a crash between callbacks and the
SQS publish replayed by on_run_start (in a real subprocess killed with os._exit), SQS down ->
record kept, failed streams leave no object, bombs store nothing, the builder from env.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statekit import create_store
from statekit.errors import ConfigError, DecompressionBombError, InvalidBidError, NotInitialized, StorageError
from statekit.storage import (
    BundleRef,
    PipelineStorage,
    Recipe,
    SqsPublisher,
    StorageBuilder,
    UnzipResourceDecorator,
)
from statekit.storage.s3 import MIN_PART_SIZE
from tests.acceptance.storage.conftest import AwsPlace, chunks

pytestmark = pytest.mark.timeout(120)


class Hook:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def on_bundle_complete_hook(self, bundle_ref: BundleRef) -> None:
        self.calls.append(bundle_ref.bid)


def pipeline(aws: AwsPlace, **kwargs: object) -> PipelineStorage:
    publisher = SqsPublisher(aws.queue_url, region="us-east-1", endpoint_url=aws.endpoint_url)
    options: dict[str, object] = {"prefix": "data", "region": "us-east-1", "endpoint_url": aws.endpoint_url}
    options.update(kwargs)
    return PipelineStorage(aws.bucket, publisher, **options)  # type: ignore[arg-type]


async def big_stream(size: int, seed: bytes = b"x") -> AsyncIterator[bytes]:
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece


def expected_digest(size: int, seed: bytes = b"x") -> str:
    block = hashlib.sha256(seed).digest() * 2048
    h = hashlib.sha256()
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        h.update(piece)
    return h.hexdigest()


async def test_seed_usage_one_object_per_resource_manifest_and_sqs(aws: AwsPlace) -> None:
    loader, locator = Hook(), Hook()
    storage = pipeline(aws)
    recipe = Recipe("fr", loader=loader, locators=(locator,))
    bundle_ref = BundleRef(primary_url="https://example.com", resources_count=2)
    ctx = await storage.start_bundle(bundle_ref, recipe)
    await ctx.add_resource("https://example.com/page.html", "text/html", 200, chunks(b"<html></html>"))
    await ctx.add_resource("https://example.com/da%C3%BFa.json?q=1", "application/json", 201, chunks(b"{}"))
    assert f"data/bundles/{bundle_ref.bid}/bundle.json" not in aws.object_keys()  # manifest only on complete
    await ctx.complete({"source": "us-fl", "run_id": "run_123"})

    root = f"data/bundles/{bundle_ref.bid}"
    assert sorted(aws.object_keys()) == sorted(
        [f"{root}/bundle.json", f"{root}/resources/page.html", f"{root}/resources/daya.json"]
    )
    head = aws.s3.head_object(Bucket=aws.bucket, Key=f"{root}/resources/daya.json")
    assert head["ContentType"] == "application/json"
    assert head["Metadata"] == {
        "url": "https://example.com/da%C3%BFa.json?q=1",
        "status_code": "201",
        "bid": bundle_ref.bid,
        "name": "daya.json",
    }
    manifest = json.loads(aws.s3.get_object(Bucket=aws.bucket, Key=f"{root}/bundle.json")["Body"].read())
    assert [r["sha256"] for r in manifest["resources"]] == [
        hashlib.sha256(b"<html></html>").hexdigest(),
        hashlib.sha256(b"{}").hexdigest(),
    ]
    assert manifest["metadata"] == {"source": "us-fl", "run_id": "run_123"}

    [message] = aws.receive()
    body = json.loads(message["Body"])
    assert list(body) == [
        "bundle_id",
        "recipe_id",
        "primary_url",
        "resources_count",
        "storage_key",
        "completion_timestamp",
        "metadata",
    ]
    assert body["bundle_id"] == bundle_ref.bid
    assert body["recipe_id"] == "fr"
    assert body["primary_url"] == "https://example.com"
    assert body["resources_count"] == 2
    assert body["storage_key"] == f"{root}/resources"
    assert body["metadata"] == {"source": "us-fl", "run_id": "run_123", "resources_count": 2}
    assert len(body["completion_timestamp"]) == 20
    assert body["completion_timestamp"].endswith("Z")
    assert loader.calls == [bundle_ref.bid]
    assert locator.calls == [bundle_ref.bid]
    assert await storage.pending_completions() == []


async def test_multipart_upload_of_a_resource_larger_than_the_part_size(aws: AwsPlace) -> None:
    storage = pipeline(aws, part_size=MIN_PART_SIZE)
    size = 2 * MIN_PART_SIZE + 12345
    ctx = await storage.start_bundle(BundleRef(), Recipe("r"))
    await ctx.add_resource("https://h/big.bin", "application/octet-stream", 200, big_stream(size))
    [resource] = ctx.resources
    assert resource.size == size
    assert resource.sha256 == expected_digest(size)
    assert resource.e_tag is not None
    assert resource.e_tag.strip('"').endswith("-3")  # three parts: a multipart upload
    head = aws.s3.head_object(Bucket=aws.bucket, Key=resource.key)
    assert head["ContentLength"] == size
    assert head["Metadata"]["url"] == "https://h/big.bin"
    got = hashlib.sha256(aws.s3.get_object(Bucket=aws.bucket, Key=resource.key)["Body"].read()).hexdigest()
    assert got == resource.sha256


async def test_failed_stream_leaves_no_object_and_no_upload(aws: AwsPlace) -> None:
    async def broken() -> AsyncIterator[bytes]:
        async for chunk in big_stream(MIN_PART_SIZE + 1000):
            yield chunk
        raise ConnectionError("peer went away")

    storage = pipeline(aws, part_size=MIN_PART_SIZE)
    ctx = await storage.start_bundle(BundleRef(), Recipe("r"))
    with pytest.raises(ConnectionError):
        await ctx.add_resource("https://h/big.bin", None, 200, broken())
    assert aws.object_keys() == []
    assert not aws.s3.list_multipart_uploads(Bucket=aws.bucket).get("Uploads")


async def test_bomb_through_the_decorator_stores_nothing(aws: AwsPlace) -> None:
    import gzip

    storage = UnzipResourceDecorator(pipeline(aws, part_size=MIN_PART_SIZE))
    ctx = await storage.start_bundle(BundleRef(), Recipe("r"))
    with pytest.raises(DecompressionBombError):
        await ctx.add_resource(
            "https://h/b.gz", None, 200, chunks(gzip.compress(b"\0" * (64 << 20)), 1 << 16)
        )
    await ctx.add_resource("https://h/ok.txt.gz", None, 200, chunks(gzip.compress(b"fine")))
    assert [k.rsplit("/", 1)[1] for k in aws.object_keys()] == ["ok.txt"]
    assert not aws.s3.list_multipart_uploads(Bucket=aws.bucket).get("Uploads")


async def test_sqs_down_keeps_the_record_and_on_run_start_finishes_it(aws: AwsPlace, tmp_path: Path) -> None:
    store = create_store("sqlite", path=str(tmp_path / "state.db"))
    loader = Hook()
    recipe = Recipe("fr", loader=loader)
    missing = aws.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    down = PipelineStorage(
        aws.bucket,
        SqsPublisher(missing, region="us-east-1", endpoint_url=aws.endpoint_url),
        region="us-east-1",
        endpoint_url=aws.endpoint_url,
        store=store,
    )
    ctx = await down.start_bundle(BundleRef(primary_url="https://p"), recipe)
    await ctx.add_resource("https://h/a", None, 200, chunks(b"a"))
    with pytest.raises(StorageError, match="SQS send_message"):
        await ctx.complete({"k": "v"})
    [record] = await down.pending_completions()
    assert record["callbacks_done"] is True
    assert loader.calls == [ctx.bundle_ref.bid]
    assert aws.receive(wait=0) == []
    # Still down: on_run_start keeps the record.
    assert await down.on_run_start(None, recipe) == 0
    assert len(await down.pending_completions()) == 1

    up = PipelineStorage(
        aws.bucket,
        SqsPublisher(aws.queue_url, region="us-east-1", endpoint_url=aws.endpoint_url),
        region="us-east-1",
        endpoint_url=aws.endpoint_url,
        store=store,
    )
    assert await up.on_run_start(None, Recipe("other-recipe")) == 0  # not its record
    assert await up.on_run_start(None, recipe) == 1
    assert loader.calls == [ctx.bundle_ref.bid]  # callbacks are not run twice
    [message] = aws.receive()
    assert json.loads(message["Body"])["bundle_id"] == ctx.bundle_ref.bid
    assert await up.pending_completions() == []
    await store.close()


CRASHING_RUN = textwrap.dedent(
    """
    import asyncio, os, sys
    from statekit import create_store
    from statekit.storage import BundleRef, PipelineStorage, Recipe, SqsPublisher

    endpoint, bucket, queue_url, db, marker = sys.argv[1:]

    class Loader:
        async def on_bundle_complete_hook(self, bundle_ref):
            with open(marker, "a") as f:
                f.write(bundle_ref.bid + "\\n")

    class CrashingPublisher(SqsPublisher):
        async def send_raw(self, body, *, bid, group):
            os._exit(70)  # the process dies between the callbacks and the SQS publish

    async def main():
        store = create_store("sqlite", path=db)
        storage = PipelineStorage(bucket, CrashingPublisher(queue_url, endpoint_url=endpoint),
                                  endpoint_url=endpoint, store=store)
        ctx = await storage.start_bundle(BundleRef(primary_url="https://example.com", resources_count=1),
                                         Recipe("fr", loader=Loader()))
        async def body():
            yield b"payload"
        await ctx.add_resource("https://example.com/page.html", "text/html", 200, body())
        print(ctx.bundle_ref.bid, flush=True)
        await ctx.complete({"source": "us-fl"})

    asyncio.run(main())
    """
)


async def test_crash_between_callbacks_and_sqs_is_replayed_by_on_run_start(
    aws: AwsPlace, tmp_path: Path
) -> None:
    db, marker = tmp_path / "state.db", tmp_path / "callbacks.log"
    run = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            CRASHING_RUN,
            aws.endpoint_url,
            aws.bucket,
            aws.queue_url,
            str(db),
            str(marker),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert run.returncode == 70, run.stderr
    bid = run.stdout.strip()
    assert marker.read_text().split() == [bid]
    assert aws.receive(wait=0) == []

    store = create_store("sqlite", path=str(db))
    loader = Hook()
    storage = PipelineStorage(
        aws.bucket,
        SqsPublisher(aws.queue_url, endpoint_url=aws.endpoint_url),
        endpoint_url=aws.endpoint_url,
        store=store,
    )
    assert await storage.on_run_start(None, Recipe("fr", loader=loader)) == 1
    assert loader.calls == []  # the crashed run had already run them
    [message] = aws.receive()
    body = json.loads(message["Body"])
    assert body["bundle_id"] == bid
    assert body["storage_key"] == f"bundles/{bid}/resources"
    assert body["metadata"] == {"source": "us-fl", "resources_count": 1}
    assert f"bundles/{bid}/bundle.json" in aws.object_keys()
    assert await storage.pending_completions() == []
    await store.close()


async def test_fifo_queue_gets_deduplication_id(aws: AwsPlace) -> None:
    fifo_url = aws.sqs.create_queue(QueueName=aws.bucket + ".fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    publisher = SqsPublisher(fifo_url, region="us-east-1", endpoint_url=aws.endpoint_url)
    ref = BundleRef(primary_url="https://p")
    for _ in range(2):  # a resend of the same bundle is deduplicated by SQS
        await publisher.publish_bundle_completion(ref, {"a": 1}, "fr")
    reply = aws.sqs.receive_message(QueueUrl=fifo_url, MaxNumberOfMessages=10, AttributeNames=["All"])
    messages = reply.get("Messages", [])
    assert len(messages) == 1
    assert json.loads(messages[0]["Body"])["bundle_id"] == ref.bid


async def test_unreachable_sqs_is_a_storage_error_not_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers.moto_server import DUMMY_AWS_ENV

    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    publisher = SqsPublisher(
        "http://127.0.0.1:9/123456789012/q",
        region="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        connect_timeout=1,
    )
    with pytest.raises(StorageError):
        await publisher.publish_bundle_completion(BundleRef(), {}, "fr")


async def test_writer_form_on_s3(aws: AwsPlace) -> None:
    storage = pipeline(aws, prefix="captures/2024/")
    async with storage.open_bundle("bundle_123", {"source": "us-fl"}) as bundle:
        await bundle.write(b"file content")
    bid = bundle.get_bundle_ref().bid
    key = f"captures/2024/bundles/{bid}/resources/bundle_123"
    assert aws.s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read() == b"file content"
    assert len(aws.receive()) == 1


def test_configuration_errors(aws: AwsPlace) -> None:
    publisher = SqsPublisher(aws.queue_url, endpoint_url=aws.endpoint_url)
    with pytest.raises(ConfigError):
        PipelineStorage("", publisher)
    with pytest.raises(ConfigError):
        PipelineStorage(aws.bucket, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        PipelineStorage(aws.bucket, publisher, prefix="a/../b")
    with pytest.raises(ConfigError):
        PipelineStorage(aws.bucket, publisher, part_size=1024)
    with pytest.raises(ConfigError):
        SqsPublisher("")
    with pytest.raises(InvalidBidError):
        PipelineStorage(aws.bucket, publisher, endpoint_url=aws.endpoint_url).bundle_root("../x")


async def test_builder_from_env_builds_an_s3_stack(aws: AwsPlace) -> None:
    env = {
        "STATEKIT_STORAGE_TYPE": "s3",
        "STATEKIT_S3_BUCKET": aws.bucket,
        "STATEKIT_S3_PREFIX": "env",
        "STATEKIT_SQS_QUEUE_URL": aws.queue_url,
        "STATEKIT_STORAGE_USE_UNZIP": "true",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": aws.endpoint_url,
    }
    storage = StorageBuilder.from_env(env).build()
    assert isinstance(storage, UnzipResourceDecorator)
    assert isinstance(storage.base_storage, PipelineStorage)
    ctx = await storage.start_bundle(BundleRef(), Recipe("r"))
    await ctx.add_resource("https://h/a.txt", None, 200, chunks(b"a"))
    await ctx.complete({})
    assert any(k.startswith("env/bundles/") for k in aws.object_keys())
    assert len(aws.receive()) == 1


async def test_sqs_without_reply_is_outcome_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit.errors import OutcomeUnknown
    from tests.servers.moto_server import DUMMY_AWS_ENV

    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)

    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(65536)  # take the request, never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    try:
        publisher = SqsPublisher(
            f"{endpoint}/123456789012/q", region="us-east-1", endpoint_url=endpoint, read_timeout=0.5
        )
        with pytest.raises(OutcomeUnknown, match="may or may not"):
            await publisher.publish_bundle_completion(BundleRef(), {}, "fr")
    finally:
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_missing_bucket_is_a_storage_error(aws: AwsPlace) -> None:
    storage = PipelineStorage(
        "no-such-bucket-here",
        SqsPublisher(aws.queue_url, endpoint_url=aws.endpoint_url),
        endpoint_url=aws.endpoint_url,
        max_retries=0,
    )
    ctx = await storage.start_bundle(BundleRef(), Recipe("r"))
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        await ctx.add_resource("https://h/a", None, 200, chunks(b"a"))


def test_seed_positional_prefix_is_refused_clearly(aws: AwsPlace) -> None:
    with pytest.raises(ConfigError, match="prefix="):
        PipelineStorage("my-bucket", "prefix/")  # type: ignore[arg-type]


async def test_complete_can_be_retried_when_the_store_fails(aws: AwsPlace, tmp_path: Path) -> None:
    store = create_store("sqlite", path=str(tmp_path / "state.db"))
    storage = pipeline(aws, store=store)
    ctx = await storage.start_bundle(BundleRef(), Recipe("r"))
    await ctx.add_resource("https://h/a", None, 200, chunks(b"a"))
    await store.close()  # the store is unusable: the pending record cannot be written
    with pytest.raises(NotInitialized):
        await ctx.complete({})
    assert aws.receive(wait=0) == []
    storage.store = create_store("sqlite", path=str(tmp_path / "state.db"))
    await ctx.complete({})
    assert len(aws.receive()) == 1
    await storage.store.close()
