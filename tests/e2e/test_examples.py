"""The short examples in examples/ run as written and print what they say they print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECTED = {
    "quickstart.py": """\
{'name': 'Ada', 'visits': 1}
no such key
['user:1', 'user:2', 'user:3']
10 11
{'name': 'Ada', 'visits': 2}
True False
['pages_seen', 'session:abc', 'user:1', 'user:2']
""",
    "bookkeeping.py": """\
flaky: failed (timed out), retry 1, next in 0.01 s
['a', 'b', 'flaky']
{'failed': 1, 'processed': 3}
4
5 7 7
""",
    "checkpoints.py": """\
-1 500
True 1000 1000
1001 job: 64
""",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_prints_what_it_says(name: str, tmp_path: Path) -> None:
    path = EXAMPLES / name
    assert len(path.read_text().splitlines()) <= 60, f"{name} should stay a short read"
    proc = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == EXPECTED[name]
    assert proc.stderr == ""
    assert list(tmp_path.iterdir()) == []  # examples clean up after themselves
