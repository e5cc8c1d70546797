"""Results pages generated from ``benchmarks/results/*.json``: nothing in them is typed by hand.

* :func:`pages`: one docs page per results file (``results/NAME.md``: per task, a table of
  methods by metrics, and the benchmark's own description) and ``results/index.md``; the
  docs build (``docs/hooks.py``) adds them to the site.
* ``python -m benchmarks.report``: regenerate the README's short results table, the section
  between ``<!-- results:start -->`` and ``<!-- results:end -->``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from benchmarks.records import RESULTS

__all__ = ["README", "pages", "pivot", "readme_table"]

README = Path(__file__).parent.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
# the README's short table: (results file, task, metric, what the column says)
HEADLINE = (
    ("emulators", "density_abs_error_nats", "density error (nats)"),
    ("emulators", "emulation_c2st", "emulation C2ST"),
    ("posterior", "posterior_c2st", "posterior C2ST"),
    ("posterior", "posterior_samples_per_s", "posterior samples/s"),
)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def pivot(records: list[dict[str, Any]]) -> str:
    """Markdown: for each task, a table with a row per method and a column per metric."""
    parts = []
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        methods = list(dict.fromkeys(r["method"] for r in rows))
        cell = {(r["method"], r["metric"]): r for r in rows}
        units = {r["metric"]: r["unit"] for r in rows}
        budget = rows[0]["budget"]
        head = f"### {task}" + ("" if budget is None else f" ({budget:,} simulations)")
        lines = [
            head,
            "",
            "| method | " + " | ".join(f"{m} ({units[m]})" for m in metrics) + " |",
            "| --- |" + " ---: |" * len(metrics),
        ]
        for method in methods:
            values = [cell.get((method, m)) for m in metrics]
            shown = ["" if v is None else _fmt(v["value"]) for v in values]
            lines.append(f"| {method} | " + " | ".join(shown) + " |")
        parts.append("\n".join(lines))
    if records:
        machines = sorted({r["machine"] for r in records})
        dates = sorted({r["date"] for r in records})
        parts.append(f"_Measured on {'; '.join(machines)}, {dates[0]} to {dates[-1]}._")
    return "\n\n".join(parts)


def _description(name: str) -> str:
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ImportError:
        return ""
    return (module.__doc__ or "").strip()


def pages() -> dict[str, str]:
    """``{"results/NAME.md": markdown}`` for every results file, and ``results/index.md``."""
    out, index = {}, ["# Results", ""]
    index.append(
        "Every number on these pages comes from `benchmarks/results/NAME.json`, written by "
        "`python -m benchmarks.NAME`; peers and limits are measured in the same run as simgen. "
        "Training is budgeted in epochs, never seconds."
    )
    index.append("")
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem.endswith("-quick"):
            continue
        records = json.loads(path.read_text())
        about = _description(path.stem).replace("\n\n", "\n\n", 1)
        out[f"results/{path.stem}.md"] = (
            f"# {path.stem}\n\n`python -m benchmarks.{path.stem}`\n\n"
            f"```text\n{about}\n```\n\n{pivot(records)}\n"
        )
        index.append(f"- [{path.stem}]({path.stem}.md): {about.splitlines()[0] if about else ''}")
    out["results/index.md"] = "\n".join(index) + "\n"
    return out


def readme_table() -> str:
    """The README's short table: the headline metrics of simgen's methods (columns that no
    results file holds yet are left out)."""
    records = []
    for name in dict.fromkeys(h[0] for h in HEADLINE):  # in HEADLINE's order, every run
        path = RESULTS / f"{name}.json"
        records += json.loads(path.read_text()) if path.exists() else []
    keys = dict.fromkeys(
        (r["task"], r["method"]) for r in records if r["method"].startswith("simgen")
    )
    tasks = list(dict.fromkeys(task for task, _ in keys))
    keys = dict.fromkeys(sorted(keys, key=lambda k: tasks.index(k[0])))  # grouped by task
    cell = {(r["benchmark"], r["task"], r["method"], r["metric"]): r["value"] for r in records}
    rows = {k: [cell.get((b, *k, m)) for b, m, _ in HEADLINE] for k in keys}
    rows = {k: v for k, v in rows.items() if any(x is not None for x in v)}
    shown = [i for i in range(len(HEADLINE)) if any(v[i] is not None for v in rows.values())]
    if not rows:
        return "_No results yet._"
    lines = ["| task | method | " + " | ".join(HEADLINE[i][2] for i in shown) + " |"]
    lines.append("| --- | --- |" + " ---: |" * len(shown))
    for (task, method), values in rows.items():
        cells = ["" if values[i] is None else _fmt(values[i]) for i in shown]
        lines.append(f"| {task} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{START}\n{readme_table()}\n{END}{tail}")
    print(f"updated {README}")


if __name__ == "__main__":
    main()
