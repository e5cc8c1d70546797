"""Regenerate the README's results section from ``benchmarks/results/*.json``.

Run: ``python -m benchmarks.report``. The section between ``<!-- results:start -->`` and
``<!-- results:end -->`` is replaced; nothing in it is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.records import RESULTS, markdown_table

README = Path(__file__).parent.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def section() -> str:
    """Markdown for every results file, one table per benchmark."""
    parts = []
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem.endswith("-quick"):
            continue
        records = json.loads(path.read_text())
        command = f"python -m benchmarks.{path.stem}"
        parts.append(f"#### `{path.stem}` (`{command}`)\n\n{markdown_table(records)}")
    return "\n\n".join(parts) if parts else "_No results yet._"


def main() -> None:
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{START}\n{section()}\n{END}{tail}")
    print(f"updated {README}")


if __name__ == "__main__":
    main()
