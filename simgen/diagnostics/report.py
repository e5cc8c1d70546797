"""``check()``: a fidelity and calibration report of an emulator against its simulator.

What ``simgen check MODEL`` runs. With fresh simulations (streams no training row used):

* **emulation**: at ``thetas`` parameters drawn from the prior, ``samples`` simulated and as
  many emulated x, compared by C2ST (for x of at most :data:`C2ST_MAX_FEATURES` features);
  a picture of both at the first of them.
* **physics**, chosen by the shape of x, not by the simulator's name: for 2-D x (fields) the
  angle-averaged power spectrum, its worst relative error over the bins below half the
  Nyquist frequency, and the pixel PDF (``fields.png``); for a simulator with a
  ``summaries(x, theta)`` method (e.g. energy and radius of gyration of molecules), each
  statistic's Wasserstein distance relative to the simulated spread (``summaries.png``).
* **calibration**: ``pairs`` pairs ``(theta_i, x_i)`` from the prior predictive, the posterior
  of every ``x_i`` sampled in one batch (:meth:`Posterior.sample_batch`), SBC ranks of the
  ``theta_i`` with a chi-square test of uniformity per parameter, and the expected coverage of
  the highest-posterior-density regions (:mod:`simgen.diagnostics.metrics`).

* **latent space**, for a VAE with a 2-D latent: the decoder's mean over a grid of the latent
  at one theta (``latent.png``).

Writes ``report.json``, ``calibration.png``, ``emulation.png`` (and ``fields.png`` or
``summaries.png``, ``latent.png``) into the output folder.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simgen.atomic import make_folder, replacing
from simgen.data.simulator import Simulator
from simgen.data.tasks import run_chunk
from simgen.diagnostics.metrics import (
    c2st,
    coverage_levels,
    expected_coverage,
    power_spectrum,
    sbc_ranks,
    sbc_uniformity,
    wasserstein_relative,
)
from simgen.diagnostics.plots import (
    plot_calibration,
    plot_emulation,
    plot_fields,
    plot_latent_grid,
    plot_summaries,
)
from simgen.emulator import Emulator
from simgen.errors import UsageError
from simgen.inference.metropolis import metropolized_sample, require_log_unnormalized
from simgen.inference.posterior import Posterior

__all__ = ["C2ST_MAX_FEATURES", "check"]

C2ST_MAX_FEATURES = 256
HELD_OUT = 10**9  # task index of the check's simulations: far beyond any training task


def check(
    emulator: Emulator,
    out: str | os.PathLike,
    *,
    simulator: Simulator | None = None,
    pairs: int = 100,
    draws: int = 99,
    thetas: int = 3,
    samples: int = 1000,
    sampler: str = "auto",
    seed: int = 0,
    progress: bool | None = None,
    metropolis: bool = False,
) -> dict[str, Any]:
    """Compare ``emulator`` with its simulator and calibrate its posterior; write a report.

    Args:
        emulator: The model to check.
        out: Folder for ``report.json`` and the PNG figures (created).
        simulator: Default: the one the model was trained on.
        pairs: Simulated pairs for SBC and coverage.
        draws: Posterior draws per pair (``draws + 1`` should have small divisors, e.g. 99).
        thetas: Parameters at which emulated and simulated x are compared.
        samples: x per side at each of those parameters.
        sampler: The posterior engine's path (:meth:`simgen.Posterior.sample`): ``"auto"``
            tries importance sampling, then SMC, then MCMC.
        seed: Seed of the check's simulations and samplers.
        progress: Progress bar for the posterior sampling.
        metropolis: Compare the emulator's samples corrected by the simulator's density
            (:func:`simgen.inference.metropolis.metropolized_sample`; flows of simulators with
            ``log_unnormalized``); the report then gives their ``acceptance`` per theta.

    Returns:
        The report: ``emulation`` (``c2st`` per theta, or None for large x), ``calibration``
        (``sbc_pvalues``, ``coverage_max_deviation``, ``coverage_within_band``) and
        ``files``.
    """
    if pairs < 2 or draws < 1 or thetas < 1 or samples < 2:
        raise UsageError("pairs >= 2, draws >= 1, thetas >= 1 and samples >= 2 are needed")
    sim = simulator or emulator.simulator()
    if metropolis:
        require_log_unnormalized(sim, "--metropolis needs its density")
    out = Path(out)
    make_folder(out)
    names = list(emulator.parameters_names)
    report: dict[str, Any] = {"model": emulator.identity, "simulator": sim.name}
    report["emulation"] = _emulation(emulator, sim, thetas, samples, seed, out, metropolis)
    if emulator.family == "vae" and emulator.model.config.latent == 2:
        _latent_picture(emulator, sim, seed, out)
    report["calibration"] = _calibration(
        emulator, sim, pairs, draws, sampler, seed, progress, out, names
    )
    report["files"] = sorted(p.name for p in out.glob("*.png")) + ["report.json"]
    with replacing(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report


@torch.no_grad()
def _latent_picture(emulator: Emulator, sim: Simulator, seed: int, out: Path, g: int = 9) -> None:
    """``latent.png``: the decoder's mean on a g x g grid of a 2-D latent at one prior draw of
    theta, the grid spanning the 5%..95% quantiles of each coordinate of p(z | theta)."""
    device = emulator.theta_mean.device
    theta = torch.as_tensor(run_chunk(sim, seed=seed + 3, index=HELD_OUT, size=1).theta[0])
    vae = emulator.model
    v = ((theta.to(device) - emulator.theta_mean) / emulator.theta_std)[None]
    prior = vae.p_z(v).base_dist
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, g, device=device))
    z1 = prior.loc[0, 0] + prior.scale[0, 0] * q
    z2 = prior.loc[0, 1] + prior.scale[0, 1] * q
    z = torch.stack(torch.meshgrid(z1, z2, indexing="ij"), -1).reshape(-1, 2)
    mean = vae.p_x(z, v.expand(len(z), -1)).base_dist.loc
    decoded = (mean * emulator.x_std + emulator.x_mean).reshape(g, g, *emulator.x_shape)
    values = ", ".join(
        f"{n}={t:.3g}" for n, t in zip(emulator.parameters_names, theta.tolist(), strict=True)
    )
    grid = decoded.cpu().numpy(), z1.cpu().numpy(), z2.cpu().numpy()
    plot_latent_grid(*grid, out / "latent.png", values)


def _emulation(
    emulator: Emulator,
    sim: Simulator,
    thetas: int,
    samples: int,
    seed: int,
    out: Path,
    metropolis: bool,
) -> dict[str, Any]:
    names = emulator.parameters_names
    theta = run_chunk(sim, seed, HELD_OUT + 1, thetas).theta.astype(np.float64)
    scores, physics, acceptance = [], [], []
    for i, t in enumerate(theta):
        simulated = sim.check_output(
            sim.simulate(np.tile(t, (samples, 1)), np.random.default_rng([seed, i])), samples
        )
        torch.manual_seed(seed + i)
        if metropolis:
            corrected = metropolized_sample(
                emulator, sim.log_unnormalized, t, samples, seed=seed + i
            )
            emulated = corrected.x.cpu().numpy()
            acceptance.append(corrected.acceptance)
        else:
            emulated = (
                emulator.sample(torch.as_tensor(t, dtype=torch.float32), samples).cpu().numpy()
            )
        if i == 0:
            title = ", ".join(f"{n}={v:.3g}" for n, v in zip(names, t, strict=True))
            plot_emulation(simulated, emulated, out / "emulation.png", title=title)
        if simulated[0].size <= C2ST_MAX_FEATURES:
            scores.append(c2st(simulated, emulated, seed=seed))
        physics.append(_physics(sim, t, simulated, emulated, out if i == 0 else None))
    return {
        "theta": theta.tolist(),
        "metropolis": metropolis,
        **({"acceptance": acceptance} if metropolis else {}),
        "physics": {k: [p[k] for p in physics] for k in physics[0]},
        "c2st": scores or None,
        "c2st_mean": float(np.mean(scores)) if scores else None,
    }


def _physics(
    sim: Simulator,
    theta: np.ndarray,
    simulated: np.ndarray,
    emulated: np.ndarray,
    out: Path | None,
) -> dict[str, float]:
    """Physical statistics of simulated vs emulated x at one theta (see the module docstring);
    figures when ``out`` is given."""
    found: dict[str, float] = {}
    if simulated.ndim == 3 and simulated.shape[1] == simulated.shape[2]:
        box = getattr(sim, "box", None)
        k, p_sim, _ = power_spectrum(simulated, box=box)
        _, p_emu, _ = power_spectrum(emulated, box=box)
        ratio = p_emu.mean(0) / p_sim.mean(0)
        low = k < 0.5 * k.max()  # below half the Nyquist frequency
        found["power_spectrum_rel_error"] = float(np.abs(ratio[low] - 1).max())
        if out is not None:
            plot_fields(simulated, emulated, k, p_sim, p_emu, out / "fields.png")
    if hasattr(sim, "summaries"):
        thetas = np.tile(theta, (len(simulated), 1))
        a, b = sim.summaries(simulated, thetas), sim.summaries(emulated, thetas)
        for name in a:
            found[f"{name}_wasserstein"] = wasserstein_relative(a[name], b[name])
        if out is not None:
            plot_summaries(a, {"emulator": b}, out / "summaries.png")
    return found


def _calibration(
    emulator: Emulator,
    sim: Simulator,
    pairs: int,
    draws: int,
    sampler: str,
    seed: int,
    progress: bool | None,
    out: Path,
    names: list[str],
) -> dict[str, Any]:
    data = run_chunk(sim, seed, HELD_OUT, pairs)
    theta, x = data.theta[data.ok], data.x[data.ok]
    posterior = Posterior(emulator)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = posterior.sample_batch(x, draws, sampler=sampler, seed=seed, progress=progress)
        with torch.no_grad():  # normalised like the draws' densities
            truth = torch.stack(
                [posterior.log_prob(t, xi) for t, xi in zip(theta, x, strict=True)]
            ) - torch.tensor(result.diagnostics["log_evidence"])
    ranks = sbc_ranks(theta, result.theta)
    pvalues = sbc_uniformity(ranks, draws)
    curve = coverage_levels(expected_coverage(truth, result.log_prob))
    plot_calibration(ranks, draws, curve, names, out / "calibration.png")
    deviation = np.abs(curve["coverage"] - curve["levels"])
    inside = (curve["coverage"] >= curve["low"]) & (curve["coverage"] <= curve["high"])
    return {
        "pairs": len(theta),
        "draws": draws,
        "sbc_pvalues": dict(zip(names, pvalues.tolist(), strict=True)),
        "sbc_uniform": bool(pvalues.min() > 0.01 / len(names)),
        "coverage_max_deviation": float(deviation.max()),
        "coverage_within_band": float(inside.mean()),
        "samplers": dict(Counter(result.diagnostics["sampler"])),
        "min_ess": float(min(result.diagnostics["ess"])),
        "sampler_warnings": sorted({str(w.message) for w in caught}),
    }
