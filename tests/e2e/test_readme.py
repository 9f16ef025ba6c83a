"""Every Python block of README.md runs as written, and prints what README says it prints.

Each ```python block is a whole program: it runs in a fresh directory, in its own interpreter.
When a ```text block follows it directly, that block is the program's exact output. Blocks that
talk to Redis get a real server (with the password README uses) in place of ``localhost:6379``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.redis_servers import RedisServer, require_redis, start_standalone

README = Path(__file__).resolve().parents[2] / "README.md"
#: The password README's Redis examples use; the test server is started with it.
README_REDIS_PASSWORD = "s3cret"

_BLOCK = re.compile(r"```python\n(?P<code>.*?)```(?:\s*```text\n(?P<output>.*?)```)?", re.DOTALL)


def readme_blocks() -> list[tuple[str, str | None]]:
    text = README.read_text(encoding="utf-8")
    return [(m.group("code"), m.group("output")) for m in _BLOCK.finditer(text)]


def _block_id(index: int) -> str:
    code = readme_blocks()[index][0]
    first = next((line for line in code.splitlines() if line.startswith("#")), "")
    return f"block{index}-{re.sub(r'[^a-z0-9]+', '-', first.lower()).strip('-')[:40]}"


BLOCKS = readme_blocks()


@pytest.fixture(scope="module")
def readme_redis() -> Iterator[RedisServer]:
    require_redis()
    server = start_standalone("--requirepass", README_REDIS_PASSWORD)
    yield server
    server.stop()


def test_readme_has_runnable_blocks() -> None:
    assert len(BLOCKS) >= 4
    assert all(code.strip() for code, _ in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=_block_id)
def test_readme_block_runs_and_prints_what_it_says(
    index: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    code, expected = BLOCKS[index]
    if "redis://" in code or "RedisConfig" in code:
        server: RedisServer = request.getfixturevalue("readme_redis")
        code = code.replace("localhost:6379", f"127.0.0.1:{server.port}")
    script = tmp_path / "readme_block.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, f"README block {index} failed:\n{code}\n--- stderr ---\n{done.stderr}"
    if expected is not None:
        assert done.stdout == expected, f"README block {index} printed:\n{done.stdout}"
