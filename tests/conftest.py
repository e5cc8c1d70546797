"""Shared fixtures: test simulators importable by path, in this process and in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HELPERS = Path(__file__).parent / "helpers"
BUILTINS = (
    "two_moons",
    "slcp",
    "gaussian_linear",
    "gaussian_mixture",
    "oscillator",
    "lotka_volterra",
    "cosmology",
    "molecular",
)
sys.path.insert(0, str(HELPERS))
# The suite's tolerances were derived from float32 CPU fits: "auto" means the CPU here, in this
# process and in the subprocesses it starts, also on a machine with a GPU; tests/test_cuda.py
# asks for CUDA by name.
os.environ.setdefault("SIMGEN_DEVICE", "cpu")


def run_cli(
    *args: str, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run ``python -m simgen ARGS`` in a fresh process with the helpers on the path."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HELPERS), full_env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "simgen", *args],
        check=False,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        **kwargs,
    )


@pytest.fixture
def cli():
    return run_cli
