"""``simgen demo``: the whole pipeline on two_moons in a few minutes on a laptop CPU.

simulate -> fit a flow emulator -> emulate at one theta and compare with the simulator (C2ST
and a picture) -> evaluate the learned density against the exact one on fresh simulations.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simgen.diagnostics import c2st
from simgen.plots import plot_data, plot_emulation
from simgen.simulation import simulate
from simgen.simulator import get_simulator
from simgen.tasks import run_chunk
from simgen.train import fit

__all__ = ["run_demo"]

THETA = np.array([0.3, -0.2], dtype=np.float32)


def run_demo(
    out: str | os.PathLike,
    n: int = 20_000,
    seconds: float = 60.0,
    progress: bool | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo into the folder ``out``; return a summary of what it measured.

    Args:
        out: Folder for ``data.h5``, ``data.png``, ``model.pt``, ``emulation.png``.
        n: Rows to simulate.
        seconds: Training time budget of the flow.
        progress: Progress bars (default: when stderr is a terminal).
        say: Where step messages go.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sim = get_simulator("two_moons")
    say(f"1/4 simulating {n:,} rows of two_moons into {out / 'data.h5'}")
    store = simulate(sim, n, out / "data.h5", progress=progress)
    plot_data(store, out / "data.png")
    say(f"2/4 fitting a flow emulator ({seconds:.0f} s at most) into {out / 'model.pt'}")
    emulator = fit(
        store,
        "flow",
        out / "model.pt",
        progress=progress,
        train={"max_seconds": seconds, "epochs": 200, "batch_size": 256},
    )
    say(
        f"3/4 emulating x at theta = {[round(v, 3) for v in THETA.tolist()]} and comparing with the simulator"
    )
    m = 2000
    simulated = sim.simulate(np.tile(THETA.astype(np.float64), (m, 1)), np.random.default_rng(1))
    torch.manual_seed(1)
    emulated = emulator.sample(torch.from_numpy(THETA), m).cpu().numpy()
    plot_emulation(
        simulated,
        emulated,
        out / "emulation.png",
        f"theta = {[round(v, 3) for v in THETA.tolist()]}",
    )
    score = c2st(simulated, emulated)
    say("4/4 learned against exact log p(x|theta) on 1,000 fresh simulations")
    fresh = run_chunk(sim, seed=1, index=0, size=1000)
    exact = sim.log_likelihood(fresh.x.astype(np.float64), fresh.theta.astype(np.float64))
    with torch.no_grad():
        learned = emulator.log_prob(torch.from_numpy(fresh.x), torch.from_numpy(fresh.theta))
    error = np.abs(learned.cpu().numpy() - exact)
    return {
        "data": str(out / "data.h5"),
        "model": str(out / "model.pt"),
        "pictures": [str(out / "data.png"), str(out / "emulation.png")],
        "rows": len(store),
        "epochs": emulator.info["metrics"]["epochs_run"],
        "emulation_c2st": round(score, 3),
        "density_abs_error_nats": round(float(np.median(error)), 4),
        "mean_log_prob": round(float(learned.mean()), 4),
        "mean_exact_log_prob": round(float(exact.mean()), 4),
    }
