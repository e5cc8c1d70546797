"""``simgen demo``: the whole pipeline on two_moons in about two minutes on a laptop CPU.

simulate -> fit an emulator -> emulate at one theta and compare with the simulator (C2ST and a
picture) -> evaluate the learned density against the exact one on fresh simulations -> sample
the posterior of one observation with the learned likelihood and compare it with the exact
posterior (C2ST and a corner plot).

The demo fits the flow, the baseline family: it is the family whose posterior is accurate at
this budget today. Training is budgeted in epochs, runs on the CPU with one thread, and every
random stream is seeded, so a seed gives the same numbers on every run, however fast or busy the
machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simgen.atomic import make_folder
from simgen.data.simulation import simulate
from simgen.data.simulator import Simulator, get_simulator
from simgen.data.tasks import run_chunk
from simgen.diagnostics.metrics import c2st
from simgen.diagnostics.plots import plot_corner, plot_data, plot_emulation
from simgen.inference.posterior import Posterior
from simgen.train.loop import fit

__all__ = ["FAMILY", "ROWS", "TRAIN", "grid_posterior", "run_demo"]

THETA = np.array([0.3, -0.2], dtype=np.float32)  # where the demo emulates and observes
ROWS = 20_000
FAMILY = "flow"
TRAIN = {"epochs": 30, "batch_size": 256, "patience": 30, "threads": 1}
DRAWS = 1_000  # emulated x and posterior draws compared with their exact counterparts


def grid_posterior(
    sim: Simulator, x_obs: np.ndarray, n: int, points: int = 1000, seed: int = 0
) -> np.ndarray:
    """``n`` exact posterior draws ``(n, 2)`` of a 2-parameter simulator with a box-uniform
    prior and an exact likelihood: :math:`p(\\theta \\mid x) \\propto p(x \\mid \\theta)` on a
    ``points`` x ``points`` grid of the box, a cell drawn by its mass, then a uniform point
    in the cell (exact up to the grid's resolution)."""
    prior = sim.prior()
    low, high = (np.asarray(v, np.float64) for v in (prior.base_dist.low, prior.base_dist.high))
    step = (high - low) / points
    axes = [low[i] + step[i] * (np.arange(points) + 0.5) for i in range(2)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    x = np.broadcast_to(np.asarray(x_obs, np.float64), (len(grid), *np.shape(x_obs)))
    log_w = sim.log_likelihood(x, grid)
    w = np.exp(log_w - log_w.max())
    rng = np.random.default_rng(seed)
    cells = rng.choice(len(grid), size=n, p=w / w.sum())
    return grid[cells] + (rng.random((n, 2)) - 0.5) * step


def run_demo(
    out: str | os.PathLike,
    seed: int = 0,
    progress: bool | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo into the folder ``out``; return a summary of what it measured.

    Args:
        out: Folder for ``data.h5``, ``data.png``, ``model.pt``, ``emulation.png`` and
            ``posterior.png``.
        seed: Seed of the simulations, the fit and the samplers.
        progress: Progress bars (default: when stderr is a terminal).
        say: Where step messages go.

    Returns:
        Paths of the files, the budget, and the measurements: ``emulation_c2st`` (learned vs
        simulated x at one theta; 0.5 = indistinguishable), ``density_abs_error_nats``
        (median |learned - exact| log p(x|theta) on fresh simulations) and ``posterior_c2st``
        (learned vs exact posterior of one observation).
    """
    out = Path(out)
    make_folder(out)
    sim = get_simulator("two_moons")
    at = [round(v, 3) for v in THETA.tolist()]
    say(f"1/5 simulating {ROWS:,} rows of two_moons into {out / 'data.h5'}")
    store = simulate(sim, ROWS, out / "data.h5", seed=seed, workers=1, progress=progress)
    plot_data(store, out / "data.png")
    say(f"2/5 fitting a {FAMILY} emulator ({TRAIN['epochs']} epochs) into {out / 'model.pt'}")
    train = {**TRAIN, "seed": seed}
    emulator = fit(store, FAMILY, out / "model.pt", train=train, device="cpu", progress=progress)
    say(f"3/5 emulating x at theta = {at} and comparing with the simulator")
    repeated = np.tile(THETA.astype(np.float64), (DRAWS, 1))
    simulated = sim.simulate(repeated, np.random.default_rng(seed + 1))
    torch.manual_seed(seed + 1)
    emulated = emulator.sample(torch.from_numpy(THETA), DRAWS).cpu().numpy()
    plot_emulation(simulated, emulated, out / "emulation.png", f"theta = {at}")
    say("4/5 learned against exact log p(x|theta) on 1,000 fresh simulations")
    fresh = run_chunk(sim, seed=seed + 1, index=0, size=1000)
    exact = sim.log_likelihood(fresh.x.astype(np.float64), fresh.theta.astype(np.float64))
    with torch.no_grad():
        learned = emulator.log_prob(torch.from_numpy(fresh.x), torch.from_numpy(fresh.theta))
    error = np.abs(learned.cpu().numpy() - exact)
    say(f"5/5 sampling the posterior of the x observed at theta = {at}")
    x_obs = simulated[0].astype(np.float32)
    result = Posterior(emulator).sample(x_obs, DRAWS, seed=seed, progress=progress)
    reference = grid_posterior(sim, x_obs, DRAWS, seed=seed)
    drawn = result.theta.numpy()
    plot_corner(drawn, sim.parameters, out / "posterior.png", reference=reference)
    pictures = ["data.png", "emulation.png", "posterior.png"]
    return {
        "data": str(out / "data.h5"),
        "model": str(out / "model.pt"),
        "pictures": [str(out / p) for p in pictures],
        "family": FAMILY,
        "rows": len(store),
        "epochs": emulator.info["metrics"]["epochs_run"],
        "emulation_c2st": round(c2st(simulated, emulated, seed=seed), 3),
        "density_abs_error_nats": round(float(np.median(error)), 4),
        "mean_log_prob": round(float(learned.mean()), 4),
        "mean_exact_log_prob": round(float(exact.mean()), 4),
        "posterior_c2st": round(c2st(drawn, reference, seed=seed), 3),
        "posterior_draws": len(drawn),
    }
