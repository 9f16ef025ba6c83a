"""Turn a pytest-benchmark JSON file into per-group tables of statekit vs its peers.

Usage::

    python benches/report.py .bench.json             # plain-text tables
    python benches/report.py .bench.json --markdown  # the same as Markdown (for benches/README.md)

Conventions (set by the benchmarks, see benches/conftest.py):

* a benchmark named ``test_statekit_*`` is a statekit row, ``test_baseline_*`` a peer (baseline);
* ``extra_info["ops"]`` is the number of operations in one round (ops/s = ops / median time),
  ``extra_info["unit"]`` what one operation is (``ops``, ``MiB``, ``records``, ...);
* ``extra_info["targets"]`` maps a baseline name (``baseline_...``) to the minimum ratio.

ratio = statekit ops/s / baseline ops/s, both measured in the same run: above 1 statekit is
faster. The medians are used, as the machine is noisy. The report never fails on speed: it
exits 0 whatever the ratios are (1 only when the file cannot be read).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATEKIT = "statekit"
BASELINE = "baseline"
OTHER = "other"


@dataclass
class Row:
    name: str  # e.g. "statekit_memory_get" (no "test_", no parameters)
    role: str
    median: float  # seconds per round
    ops: int
    unit: str
    targets: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.ops / self.median if self.median > 0 else float("inf")


@dataclass
class Verdict:
    group: str
    row: str
    baseline: str
    ratio: float | None
    target: float

    @property
    def status(self) -> str:
        if self.ratio is None:
            return "n/a"
        return "PASS" if self.ratio >= self.target else "MISS"


def parse_row(bench: dict[str, Any]) -> Row:
    name = re.sub(r"\[.*\]$", "", bench["name"]).removeprefix("test_")
    if name.startswith(f"{STATEKIT}_"):
        role = STATEKIT
    elif name.startswith(f"{BASELINE}_"):
        role = BASELINE
    else:
        role = OTHER
    extra = bench.get("extra_info") or {}
    return Row(
        name=name,
        role=role,
        median=float(bench["stats"]["median"]),
        ops=int(extra.get("ops", 1)),
        unit=str(extra.get("unit", "ops")),
        targets={str(k): float(v) for k, v in (extra.get("targets") or {}).items()},
        note=str(extra.get("note", "")),
    )


#: Groups are printed in this order of their name's first word, then in the order they ran.
GROUP_ORDER = ("memory", "sqlite", "runs", "sha256", "framing", "stream")


def group_rank(group: str) -> int:
    word = re.split(r"\W", group, maxsplit=1)[0]
    return GROUP_ORDER.index(word) if word in GROUP_ORDER else len(GROUP_ORDER)


def load_groups(data: dict[str, Any]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for bench in data.get("benchmarks", []):
        groups.setdefault(bench.get("group") or "(no group)", []).append(parse_row(bench))
    order = {STATEKIT: 0, OTHER: 1, BASELINE: 2}
    for rows in groups.values():
        rows.sort(key=lambda r: (order[r.role], r.median / max(r.ops, 1)))
    ran = list(groups)
    return {g: groups[g] for g in sorted(ran, key=lambda g: (group_rank(g), ran.index(g)))}


def fmt_time(seconds: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            value = seconds / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{seconds * 1e9:.0f} ns"


def fmt_rate(rate: float, unit: str) -> str:
    if unit == "MiB":  # already scaled
        return f"{rate:,.0f} MiB/s"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= scale:
            return f"{rate / scale:.3g}{prefix} {unit}/s"
    return f"{rate:.3g} {unit}/s"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:.0f}x"


def short(name: str) -> str:
    return name.removeprefix(f"{BASELINE}_")


def group_table(rows: list[Row]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, cells and footnotes of one group's table."""
    baselines = [r for r in rows if r.role == BASELINE]
    header = ["implementation", "median / round", "throughput"]
    header += [f"vs {short(b.name)}" for b in baselines]
    header += ["target", "result"]
    cells: list[list[str]] = []
    notes: list[str] = []
    for row in rows:
        if row.note:
            notes.append(f"{row.name}: {row.note}")
        line = [row.name, fmt_time(row.median), fmt_rate(row.rate, row.unit)]
        for base in baselines:
            line.append("—" if row.role == BASELINE else fmt_ratio(row.rate / base.rate))
        targets, results = [], []
        for verdict in row_verdicts("", row, baselines):
            targets.append(f"≥ {verdict.target:g}x {short(verdict.baseline)}")
            results.append(verdict.status)
        line += ["; ".join(targets), "; ".join(results)]
        cells.append(line)
    return header, cells, notes


def row_verdicts(group: str, row: Row, baselines: list[Row]) -> list[Verdict]:
    rates = {b.name: b.rate for b in baselines}
    return [
        Verdict(group, row.name, name, row.rate / rates[name] if name in rates else None, minimum)
        for name, minimum in row.targets.items()
    ]


def verdicts(groups: dict[str, list[Row]]) -> list[Verdict]:
    out = []
    for group, rows in groups.items():
        baselines = [r for r in rows if r.role == BASELINE]
        for row in rows:
            out += row_verdicts(group, row, baselines)
    return out


def render_text(header: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    right = set(range(1, len(header) - 2))

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(c) for c in cells)])


def render_markdown(header: list[str], cells: list[list[str]]) -> str:
    align = ["---" if i == 0 or i >= len(header) - 2 else "---:" for i in range(len(header))]
    rows = [header, align, *cells]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)


def describe_run(data: dict[str, Any]) -> str:
    machine = data.get("machine_info") or {}
    cpu = machine.get("cpu") or {}
    commit = data.get("commit_info") or {}
    parts = [
        f"run: {data.get('datetime', '?')}",
        f"python {machine.get('python_version', '?')}",
        f"{cpu.get('brand_raw', machine.get('processor', '?'))}, {cpu.get('count', '?')} CPUs",
    ]
    if commit.get("id"):
        parts.append(f"commit {str(commit['id'])[:10]}{' (dirty tree)' if commit.get('dirty') else ''}")
    return "; ".join(parts)


def report(data: dict[str, Any], markdown: bool) -> str:
    groups = load_groups(data)
    out: list[str] = []
    out.append(describe_run(data))
    out.append(
        "ratio = statekit throughput / baseline throughput in the same run (> 1: statekit faster); "
        "medians of each benchmark's rounds."
    )
    for group, rows in groups.items():
        header, cells, notes = group_table(rows)
        out.append("")
        out.append(f"#### {group}" if markdown else f"== {group} ==")
        if markdown:
            out.append("")
        out.append(render_markdown(header, cells) if markdown else render_text(header, cells))
        if notes:
            out.append("")
            out.extend(f"- {n}" if markdown else f"  note: {n}" for n in notes)
    all_verdicts = verdicts(groups)
    if all_verdicts:
        out.append("")
        out.append("#### Targets" if markdown else "== Targets ==")
        if markdown:
            out.append("")
        for v in all_verdicts:
            ratio = "missing baseline" if v.ratio is None else fmt_ratio(v.ratio)
            text = f"{v.status}  {v.group}: {v.row} vs {short(v.baseline)} = {ratio} (target ≥ {v.target:g}x)"
            out.append(f"- {text}" if markdown else f"  {text}")
        passed = sum(v.status == "PASS" for v in all_verdicts)
        out.append("")
        out.append(f"{passed}/{len(all_verdicts)} targets met.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="file written by pytest --benchmark-json")
    parser.add_argument("--markdown", action="store_true", help="emit Markdown tables")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.json}: {exc}", file=sys.stderr)
        return 1
    try:
        print(report(data, args.markdown))
    except BrokenPipeError:  # piped into head & co.
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
