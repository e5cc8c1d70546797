"""Benchmark records (DESIGN.md): build, save as JSON, print as a markdown table."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "load", "machine", "markdown_table", "record", "save", "still_valid"]

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """The CPU model and core count this run had, e.g. ``"AMD EPYC 7B13, 2 cores"``."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"


def record(
    benchmark: str,
    task: str,
    method: str,
    metric: str,
    value: float,
    unit: str,
    budget: int | None,
    seed: int = 0,
) -> dict[str, Any]:
    """One result in the format every benchmark writes."""
    return {
        "benchmark": benchmark,
        "task": task,
        "method": method,
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "budget": budget,
        "seed": seed,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
    }


def save(name: str, records: list[dict[str, Any]], out: Path | None = None) -> Path:
    """Write ``records`` to ``<out>/<name>.json`` (default: ``benchmarks/results``)."""
    folder = RESULTS if out is None else Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    tmp.replace(path)
    return path


def still_valid(
    old: list[dict[str, Any]], done: set[str], methods: set[str], sbi: bool
) -> list[dict[str, Any]]:
    """The records of ``old`` that a run has not measured again: those of tasks it has not
    finished (``done``), and of methods it does not run (``methods``; and sbi's unless
    ``sbi``). A run saves them beside its own after each task, so a stopped or partial run
    keeps every other row."""

    def redone(r: dict[str, Any]) -> bool:
        ours = r["method"] in methods or (sbi and r["method"].startswith("sbi"))
        return r["task"] in done and ours

    return [r for r in old if not redone(r)]


def load(name: str, out: Path | None = None) -> list[dict[str, Any]]:
    """The records of ``<out>/<name>.json`` (default folder: ``benchmarks/results``), or []."""
    path = (RESULTS if out is None else Path(out)) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else []


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """The records as a markdown table (machine and date once, below)."""
    lines = [
        "| benchmark | task | method | metric | value | unit | budget |",
        "| --- | --- | --- | --- | ---: | --- | ---: |",
    ]
    for r in records:
        budget = "" if r["budget"] is None else f"{r['budget']:,}"
        lines.append(
            f"| {r['benchmark']} | {r['task']} | {r['method']} | {r['metric']} | "
            f"{_fmt(r['value'])} | {r['unit']} | {budget} |"
        )
    if records:
        lines.append(f"\n_{records[0]['machine']}, {records[0]['date']}_")
    return "\n".join(lines)
