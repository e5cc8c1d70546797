"""The inference scripts in examples/ run (quick mode) and print their results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    "script, expect",
    [
        ("hierarchical.py", "population mean: MAP"),
        ("measurement_noise.py", "with read-out noise: posterior mean"),
        ("sequential.py", "round 2: n more from it: C2ST against the exact posterior"),
        ("masked_map.py", "posterior mean against the Wiener filter: RMS z"),
    ],
)
def test_example_runs(script, expect, tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--quick", "--out", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout
