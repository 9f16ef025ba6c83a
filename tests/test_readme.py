"""README's complete program ("A pipeline in a minute") runs as written and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_pipeline_in_a_minute_runs(tmp_path: Path) -> None:
    program = python_blocks()[0]
    assert "asyncio.run(main())" in program, "the first Python block of README must be a whole program"
    # The same program, with its database in this test's directory instead of /tmp.
    program = program.replace("sqlite:///tmp/pipeline.db", f"sqlite://{tmp_path}/pipeline.db")
    script = tmp_path / "pipeline.py"
    script.write_text(program, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "{'status': 'paid', 'total': 42.5}"
    assert lines[1].startswith("[('order:1', {'status': 'paid', 'total': 42.5})")
    assert lines[2] == "[('order:1', {'status': 'paid', 'total': 42.5})]"
    assert lines[3] == "[{'total': 2}, {'total': 3}, None] 98 101"
    assert (tmp_path / "pipeline.db").exists()
