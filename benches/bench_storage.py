"""Bundle storage against what a user would write by hand.

* FileStorage: one resource streamed from a file (1 MiB reads, page cache warm) into a bundle,
  hashed (SHA-256, Rust) and fsynced on the way, vs ``shutil.copyfileobj`` of the same file
  (plain, and followed by an fsync so both are durable). Target: >= 0.8x plain copyfileobj.
  A second bench runs the same stream in a fresh subprocess and reports its peak RSS growth
  (VmHWM after the stream minus VmRSS before it, the peak reset through /proc/self/clear_refs);
  it must stay under 64 MiB: streaming never holds the resource.
* PipelineStorage: one resource uploaded to a local moto S3 server (multipart, 8 MiB parts)
  vs aioboto3's ``upload_fileobj`` of the same bytes to the same server.

Sizes are moderate by default; set ``STATEKIT_BENCH_FILE_MIB`` (default 256) and
``STATEKIT_BENCH_S3_MIB`` (default 64) to change them, e.g. 1024 for the 1 GiB figure:

    STATEKIT_BENCH_FILE_MIB=1024 .venv/bin/python -m pytest benches/bench_storage.py \\
        --benchmark-only --benchmark-json=.bench.json -q -p no:randomly
    .venv/bin/python benches/report.py .bench.json
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.ci import require_module
from tests.servers.moto_server import MotoServer, running_moto

from _support import LoopRunner, describe
from statekit.storage import BundleRef, FileStorage, PipelineStorage, Recipe, SqsPublisher

MIB = 1 << 20
FILE_MIB = int(os.environ.get("STATEKIT_BENCH_FILE_MIB", "256"))
S3_MIB = int(os.environ.get("STATEKIT_BENCH_S3_MIB", "64"))
READ_CHUNK = MIB
FILE_ROUNDS = 3
S3_ROUNDS = 3
RSS_LIMIT_MIB = 64


@pytest.fixture(scope="module")
def source_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("storage-bench") / "source.bin"
    block = os.urandom(MIB)
    with path.open("wb") as f:
        for i in range(FILE_MIB):
            f.write(block[i % 251 :] + block[: i % 251])
    return path


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


async def read_file(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb", buffering=0) as f:
        while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
            yield chunk


@pytest.mark.benchmark(group="file stream")
def test_statekit_file_storage_stream(
    benchmark: Any, aloop: LoopRunner, source_file: Path, tmp_path: Path
) -> None:
    storage = FileStorage(tmp_path / "bundles")
    results: list[Any] = []

    async def one() -> None:
        ctx = await storage.start_bundle(BundleRef(), Recipe("bench"))
        await ctx.add_resource("https://bench/source.bin", None, 200, read_file(source_file))
        results.append(ctx)

    def clean() -> None:
        # Every round writes a new file into an empty directory, like the baselines.
        results.clear()
        shutil.rmtree(tmp_path / "bundles", ignore_errors=True)

    benchmark.pedantic(
        lambda: aloop.run(one()), setup=clean, rounds=FILE_ROUNDS, iterations=1, warmup_rounds=1
    )
    describe(
        benchmark,
        ops=FILE_MIB,
        unit="MiB",
        targets={"baseline_copyfileobj": 0.8},
        note="stream + SHA-256 + fsync + rename",
    )
    [resource] = results[-1].resources
    expected = file_digest(source_file)
    benchmark.extra_info["correct"] = resource.sha256 == expected and resource.size == FILE_MIB * MIB
    assert benchmark.extra_info["correct"]
    shutil.rmtree(tmp_path / "bundles")


def _remove(path: Path) -> Any:
    def setup() -> None:
        path.unlink(missing_ok=True)

    return setup


@pytest.mark.benchmark(group="file stream")
def test_baseline_copyfileobj(benchmark: Any, source_file: Path, tmp_path: Path) -> None:
    def copy() -> None:
        with source_file.open("rb") as src, (tmp_path / "copy.bin").open("wb") as dst:
            shutil.copyfileobj(src, dst, READ_CHUNK)

    benchmark.pedantic(
        copy, setup=_remove(tmp_path / "copy.bin"), rounds=FILE_ROUNDS, iterations=1, warmup_rounds=1
    )
    describe(benchmark, ops=FILE_MIB, unit="MiB", note="no hash, no fsync")


@pytest.mark.benchmark(group="file stream")
def test_baseline_copyfileobj_fsync(benchmark: Any, source_file: Path, tmp_path: Path) -> None:
    def copy() -> None:
        with source_file.open("rb") as src, (tmp_path / "copy.bin").open("wb") as dst:
            shutil.copyfileobj(src, dst, READ_CHUNK)
            dst.flush()
            os.fsync(dst.fileno())

    benchmark.pedantic(
        copy, setup=_remove(tmp_path / "copy.bin"), rounds=FILE_ROUNDS, iterations=1, warmup_rounds=1
    )
    describe(benchmark, ops=FILE_MIB, unit="MiB", note="no hash, fsync")


RSS_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    from statekit.storage import BundleRef, FileStorage, Recipe

    source, out = sys.argv[1], sys.argv[2]

    def status_kib(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    async def read():
        with open(source, "rb", buffering=0) as f:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                yield chunk

    async def small():
        yield b"warm up the thread pool and imports"

    async def main():
        storage = FileStorage(out)
        ctx = await storage.start_bundle(BundleRef(), Recipe("rss"))
        await ctx.add_resource("https://bench/warmup", None, 200, small())
        # Reset the peak (VmHWM) to the current RSS, so import-time peaks do not hide ours.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status_kib("VmRSS")
        await ctx.add_resource("https://bench/source.bin", None, 200, read())
        after = status_kib("VmHWM")
        print(json.dumps({"before_kib": before, "after_kib": after, "size": ctx.resources[-1].size}))

    asyncio.run(main())
    """
)


@pytest.mark.benchmark(group="file peak RSS")
def test_statekit_file_storage_peak_rss(benchmark: Any, source_file: Path, tmp_path: Path) -> None:
    def probe() -> dict[str, int]:
        run = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, str(source_file), str(tmp_path / "rss")],
            capture_output=True,
            text=True,
            check=True,
        )
        shutil.rmtree(tmp_path / "rss")
        result: dict[str, int] = json.loads(run.stdout)
        return result

    result = benchmark.pedantic(probe, rounds=1, iterations=1)
    growth_mib = (result["after_kib"] - result["before_kib"]) / 1024
    describe(benchmark, ops=FILE_MIB, unit="MiB", note=f"peak RSS growth {growth_mib:.1f} MiB")
    benchmark.extra_info["rss_growth_mib"] = growth_mib
    benchmark.extra_info["rss_kib"] = result
    assert result["size"] == FILE_MIB * MIB
    assert growth_mib < RSS_LIMIT_MIB, f"peak RSS grew by {growth_mib:.1f} MiB while streaming"


# -- S3 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture(scope="module")
def s3_place(moto: MotoServer) -> tuple[str, str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    s3.create_bucket(Bucket="bench-bucket")
    queue_url = sqs.create_queue(QueueName="bench-queue")["QueueUrl"]
    return "bench-bucket", queue_url


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(MIB) * S3_MIB


async def memory_stream(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), MIB):
        yield bytes(view[i : i + MIB])


@pytest.mark.benchmark(group="S3 upload")
def test_statekit_s3_upload(
    benchmark: Any, aloop: LoopRunner, moto: MotoServer, s3_place: tuple[str, str], payload: bytes
) -> None:
    bucket, queue_url = s3_place
    storage = PipelineStorage(
        bucket,
        SqsPublisher(queue_url, endpoint_url=moto.endpoint_url),
        prefix="statekit",
        endpoint_url=moto.endpoint_url,
        part_size=8 * MIB,
    )
    results: list[Any] = []

    async def one() -> None:
        ctx = await storage.start_bundle(BundleRef(), Recipe("bench"))
        await ctx.add_resource("https://bench/payload.bin", None, 200, memory_stream(payload))
        results.append(ctx.resources[0])

    benchmark.pedantic(lambda: aloop.run(one()), rounds=S3_ROUNDS, iterations=1, warmup_rounds=1)
    describe(benchmark, ops=S3_MIB, unit="MiB", note="obstore multipart, 8 MiB parts, SHA-256")
    benchmark.extra_info["correct"] = results[-1].sha256 == hashlib.sha256(payload).hexdigest()
    assert benchmark.extra_info["correct"]


@pytest.mark.benchmark(group="S3 upload")
# aiohttp warns about bytes bodies that aiobotocore builds itself from the file object.
@pytest.mark.filterwarnings("ignore:Sending a large body directly")
def test_baseline_aioboto3_upload_fileobj(
    benchmark: Any, aloop: LoopRunner, moto: MotoServer, s3_place: tuple[str, str], payload: bytes
) -> None:
    aioboto3 = require_module("aioboto3", "pip install aioboto3 (the bench extra)")
    bucket, _ = s3_place
    session = aioboto3.Session()

    async def one() -> None:
        async with session.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1") as s3:
            await s3.upload_fileobj(io.BytesIO(payload), bucket, "baseline/payload.bin")

    benchmark.pedantic(lambda: aloop.run(one()), rounds=S3_ROUNDS, iterations=1, warmup_rounds=1)
    describe(benchmark, ops=S3_MIB, unit="MiB", note="S3Transfer multipart, 8 MiB parts, no hash")
