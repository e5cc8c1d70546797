"""A learned diffusion emulator of maps as the prior of a field-level inverse problem.

Task ``cosmology_gaussian_masked``: 32x32 Gaussian cosmology maps (``lognormal=False``), 30% of
the pixels hidden in a contiguous square and white noise of 0.3 of the maps' pixel scale on the
rest. A diffusion emulator (the defaults for maps: a periodic U-Net on the variance-preserving
process) is fitted on ``n`` simulations for ``epochs`` epochs, and the maps given the
observation at the true parameters are drawn by the default sampler (Gibbs by data
augmentation, :mod:`simgen.inference.field`), by twisted SMC
(:mod:`simgen.inference.field_smc`) and by DPS, against the exact Wiener filter:

* ``field_posterior_mean_z``: RMS over pixels of (learned posterior mean - exact) / exact
  posterior standard deviation;
* ``field_posterior_std_ratio``: mean over pixels of learned / exact posterior standard
  deviation;
* ``sampler_rhat`` and ``sampler_ess``: the Gibbs chains' worst split R-hat and smallest
  effective sample size over pixels; for SMC, the effective sample size of its final weights;
* ``theta_posterior_c2st``: the parameters' posterior given the observation
  (:meth:`~simgen.inference.field_posterior.FieldPosterior.sample_joint`, defaults) against
  exact draws (the exact marginal likelihood :math:`N(y; 0, A C(\\theta) A^\\top + s^2 I)` on a
  grid, refined where the posterior lives), with ``theta_importance_ess``.

Task ``cosmology_lognormal_masked``: the same for log-normal maps (the simulator's default),
with no exact reference: the Gibbs chains' diagnostics, the share of pixels where the true map
lies within two posterior standard deviations of the mean (``true_map_within_2std``), and the
parameters' posterior mean and spread.

Figures (``field_prior-METHOD.png``): the observation, the exact and learned posterior means and
standard deviations, and draws; ``field_prior-theta.png``: the parameters' corner plot with the
exact posterior's contours; ``field_prior-lognormal.png`` and ``field_prior-lognormal-theta.png``
the same for the log-normal maps, with the true map and parameters. DPS draws 200 maps (a
backward pass through the network per step), the others ``--draws``.

Run: ``python -m benchmarks.field_prior [--quick] [--n N] [--epochs E]``; writes
``benchmarks/results/field_prior.json``. The fitted emulators are kept in ``benchmarks/.data``
and reused by reruns with the same ``n`` and ``epochs``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import simgen
from benchmarks.records import RESULTS, markdown_table, record, save
from simgen.diagnostics.metrics import c2st
from simgen.diagnostics.plots import plot_corner, plot_field_posterior
from simgen.inference.field_posterior import FieldPosterior
from simgen.inference.field_smc import circulant
from simgen.inference.measurement import Mask

BENCH, TASK = "field_prior", "cosmology_gaussian_masked"
LOGNORMAL = "cosmology_lognormal_masked"
DATA = Path(__file__).parent / ".data"
THETA = np.array([0.3, 0.8])  # the observed map's parameters
HIDDEN, NOISE = 0.3, 0.3  # share of pixels hidden; noise over the pixel scale


def fitted_prior(
    size: int, n: int, epochs: int, cache: bool, lognormal: bool = False
) -> tuple[simgen.Emulator, float]:
    """The diffusion emulator of ``n`` Gaussian (or log-normal) maps after ``epochs`` epochs
    (with ``cache``, kept in ``benchmarks/.data``) and the seconds its fit took (0 when read
    from the cache)."""
    DATA.mkdir(exist_ok=True)
    sim = simgen.get_simulator("cosmology", size=size, lognormal=lognormal)
    kind = "lognormal" if lognormal else "gaussian"
    tag = "-lognormal" if lognormal else ""
    model = DATA / f"field_prior{tag}-size{size}-{n}-e{epochs}.pt" if cache else None
    if model is not None and model.exists():
        return simgen.load(model), 0.0
    store = simgen.simulate(sim, n, DATA / f"cosmology-{kind}-size{size}-{n}.h5", seed=0,
                            workers=1, progress=False)  # fmt: skip
    start = time.perf_counter()
    emulator = simgen.fit(store, "diffusion", model, train={"epochs": epochs}, progress=False)
    return emulator, time.perf_counter() - start


def observation(sim: simgen.Simulator, size: int) -> tuple[Mask, torch.Tensor, torch.Tensor]:
    """The measurement (a contiguous square of ``HIDDEN`` of the pixels hidden, noise
    ``NOISE`` of the pixel scale: the Gaussian map's, or the spread of 1,000 log-normal maps)
    and the observation of a map at ``THETA``, with that map."""
    if sim.lognormal:
        scale = float(
            sim.simulate(np.repeat(THETA[None], 1000, 0), np.random.default_rng(9)).std()
        )
    else:
        scale = float(np.sqrt(np.diag(sim.covariance(THETA)).mean()))
    side = round(np.sqrt(HIDDEN) * size)
    mask = torch.ones(size, size, dtype=torch.bool)
    start = (size - side) // 2
    mask[start : start + side, start : start + side] = False
    measurement = Mask(mask, NOISE * scale)
    x = torch.as_tensor(sim.simulate(THETA[None], np.random.default_rng(7))[0])
    return measurement, measurement.simulate(x, torch.Generator().manual_seed(8)), x


class ExactPrior(FieldPosterior):
    """:class:`FieldPosterior` with the exact noise prediction of the Gaussian maps in place of
    the network, :math:`\\sigma_t (\\alpha_t^2 C_\\theta + \\sigma_t^2)^{-1} (u_t - \\alpha_t m)` in
    the emulator's coordinates (:math:`m`: the maps' mean, 0, there): the samplers' error
    alone."""

    def __init__(
        self, emulator: simgen.Emulator, measurement: Mask, sim: simgen.Simulator
    ) -> None:
        super().__init__(emulator, measurement)
        std = emulator.x_std.double()
        if (std - std.mean()).abs().max() > 1e-6 * std.mean():
            raise SystemExit("the exact-score reference needs maps standardised with one scale")
        self.sim, self.scale = sim, float(std.mean())
        self.offset = -(emulator.x_mean.double() / std).reshape(emulator.x_shape)

    def _noise_predictor(self, theta: torch.Tensor, per_group: int) -> Any:
        rows = np.repeat(theta.cpu().double().numpy(), per_group, axis=0)
        lam = torch.as_tensor(self.sim.eigenvalues(rows)) / self.scale**2
        schedule, shape = self.emulator.model.schedule, self.emulator.x_shape

        def epsilon(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            alpha, sigma = schedule(t.double())
            r = u.double().reshape(-1, *shape) - alpha * self.offset
            c = torch.fft.fft2(r) / (alpha**2 * lam + sigma**2)
            return (sigma * torch.fft.ifft2(c).real).reshape(u.shape).to(u.dtype)

        return epsilon


def field_metrics(draws: np.ndarray, exact: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """``field_posterior_mean_z`` and ``field_posterior_std_ratio`` of ``draws (n, N, N)``."""
    mean, std = exact
    z = (draws.mean(0) - mean) / std
    return {
        "field_posterior_mean_z": float(np.sqrt(np.mean(z**2))),
        "field_posterior_std_ratio": float(np.mean(draws.std(0) / std)),
    }


def exact_theta(
    sim: simgen.Simulator, measurement: Mask, y: torch.Tensor, n: int, grid: int
) -> np.ndarray:
    """``n`` draws of the exact :math:`p(\\theta \\mid y)`: the marginal likelihood on a
    ``grid`` x ``grid`` grid over the prior's box, again on a grid over the box where the
    first one's posterior exceeds 1e-8 of its peak, cells drawn by their mass and jittered
    uniformly within them."""
    seen = measurement.seen.reshape(-1).nonzero()[:, 0]
    r = measurement.check(y).reshape(-1)[seen]
    noise = measurement.noise**2 * torch.eye(len(seen), dtype=torch.float64)

    def log_post(theta: np.ndarray) -> np.ndarray:
        lam = torch.as_tensor(sim.eigenvalues(theta))
        chol = torch.linalg.cholesky(circulant(lam, seen, seen) + noise)
        white = torch.linalg.solve_triangular(chol, r[:, None].expand(len(theta), -1, 1),
                                              upper=False)[..., 0]  # fmt: skip
        return (
            -0.5 * white.square().sum(-1) - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        ).numpy()

    lo, hi = np.array([0.1, 0.6]), np.array([0.5, 1.0])  # the prior's box
    for _ in range(2):
        axes = [np.linspace(a, b, grid + 1) for a, b in zip(lo, hi, strict=True)]
        centres = [(e[1:] + e[:-1]) / 2 for e in axes]
        points = np.stack(np.meshgrid(*centres, indexing="ij"), -1).reshape(-1, 2)
        lp = np.concatenate(
            [log_post(p) for p in np.array_split(points, max(1, len(points) // 64))]
        )
        live = points[lp > lp.max() + np.log(1e-8)]
        width = (hi - lo) / grid
        lo, hi = np.maximum(live.min(0) - width, lo), np.minimum(live.max(0) + width, hi)
    rng = np.random.default_rng(5)
    p = np.exp(lp - lp.max())
    cells = rng.choice(len(points), n, p=p / p.sum())
    return points[cells] + (rng.random((n, 2)) - 0.5) * width


def run(cfg: dict) -> list[dict]:
    size, n = cfg["size"], cfg["n"]
    sim = simgen.get_simulator("cosmology", size=size, lognormal=False)
    emulator, fit_s = fitted_prior(size, n, cfg["epochs"], cfg["cache"])
    measurement, y, _ = observation(sim, size)
    exact = sim.wiener(y, measurement, THETA)
    theta = torch.as_tensor(THETA, dtype=torch.float32)
    records = [
        record(BENCH, TASK, "simgen diffusion", "train_seconds", fit_s, "s", n),
        record(BENCH, TASK, "simgen diffusion", "train_epochs", cfg["epochs"], "epochs", n),
    ]
    samplers = {
        "simgen diffusion (gibbs)": (FieldPosterior(emulator, measurement), "gibbs"),
        "simgen diffusion (smc)": (FieldPosterior(emulator, measurement), "smc"),
        "simgen diffusion (dps)": (FieldPosterior(emulator, measurement), "dps"),
        "exact score (gibbs)": (ExactPrior(emulator, measurement, sim), "gibbs"),
    }  # fmt: skip
    for name, (posterior, method) in samplers.items():
        start = time.perf_counter()
        count = cfg["dps_draws"] if method == "dps" else cfg["draws"]
        out = posterior.sample(y, theta, count, method=method, **cfg["sampling"][method])
        seconds = time.perf_counter() - start
        draws = out.x[0].numpy().astype(np.float64)
        metrics = {**field_metrics(draws, exact), "sampler_seconds": seconds}
        if method == "gibbs":
            metrics |= {"sampler_rhat": max(out.diagnostics["rhat"]),
                        "sampler_ess": min(out.diagnostics["ess"])}  # fmt: skip
        if method == "smc":
            metrics |= {"sampler_ess": min(out.diagnostics["ess"])}
        for metric, value in metrics.items():
            unit = "s" if metric.endswith("seconds") else "ratio"
            records.append(record(BENCH, TASK, name, metric, value, unit, n))
        if cfg["out"]:
            slug = name.replace("simgen diffusion (", "").replace(" (", "-").rstrip(")")
            picture = cfg["out"] / f"field_prior-{slug.replace(' ', '-')}.png"
            plot_field_posterior(y.numpy(), measurement.seen.numpy(), draws, picture, exact)
    start = time.perf_counter()
    joint = FieldPosterior(emulator, measurement).sample_joint(y, cfg["draws"], **cfg["joint"])
    seconds = time.perf_counter() - start
    reference = exact_theta(sim, measurement, y, cfg["draws"], cfg["grid"])
    metrics = {
        "theta_posterior_c2st": c2st(joint.theta.numpy(), reference),
        "theta_importance_ess": joint.diagnostics["ess"],
        "sampler_seconds": seconds,
    }
    for metric, value in metrics.items():
        unit = "s" if metric == "sampler_seconds" else "ratio"
        records.append(record(BENCH, TASK, "simgen diffusion (joint)", metric, value, unit, n))
    if cfg["out"]:
        picture = cfg["out"] / "field_prior-theta.png"
        plot_corner(joint.theta.numpy(), ("Omega_m", "sigma_8"), picture, reference=reference)
    return records + lognormal(cfg)


def lognormal(cfg: dict) -> list[dict]:
    """Task ``cosmology_lognormal_masked``, the same measurement of a log-normal map (no exact
    reference): the Gibbs chains' diagnostics and the parameters' posterior (mean, spread,
    importance ESS), with figures ``field_prior-lognormal.png`` (the true map beside the
    posterior) and ``field_prior-lognormal-theta.png`` (the true parameters as red lines)."""
    size, n = cfg["size"], cfg["n"]
    sim = simgen.get_simulator("cosmology", size=size, lognormal=True)
    emulator, fit_s = fitted_prior(size, n, cfg["epochs"], cfg["cache"], lognormal=True)
    measurement, y, truth = observation(sim, size)
    posterior = FieldPosterior(emulator, measurement)
    start = time.perf_counter()
    out = posterior.sample(y, torch.as_tensor(THETA, dtype=torch.float32), cfg["draws"],
                           **cfg["sampling"]["gibbs"])  # fmt: skip
    seconds = time.perf_counter() - start
    draws = out.x[0].numpy().astype(np.float64)
    inside = float(np.mean(np.abs(draws.mean(0) - truth.numpy()) < 2 * draws.std(0)))
    metrics = {
        "train_seconds": fit_s,
        "sampler_rhat": max(out.diagnostics["rhat"]),
        "sampler_ess": min(out.diagnostics["ess"]),
        "true_map_within_2std": inside,
        "sampler_seconds": seconds,
    }
    records = [record(BENCH, LOGNORMAL, "simgen diffusion (gibbs)", k, v,
                      "s" if k.endswith("seconds") else "ratio", n) for k, v in metrics.items()]  # fmt: skip
    start = time.perf_counter()
    joint = posterior.sample_joint(y, cfg["draws"], **cfg["joint"])
    theta = joint.theta.numpy()
    metrics = {"theta_importance_ess": joint.diagnostics["ess"],
               "sampler_seconds": time.perf_counter() - start}  # fmt: skip
    for i, name in enumerate(("omega_m", "sigma_8")):
        metrics |= {f"theta_{name}_mean": float(theta[:, i].mean()),
                    f"theta_{name}_std": float(theta[:, i].std())}  # fmt: skip
    records += [record(BENCH, LOGNORMAL, "simgen diffusion (joint)", k, v,
                       "s" if k.endswith("seconds") else "value", n) for k, v in metrics.items()]  # fmt: skip
    if cfg["out"]:
        picture = cfg["out"] / "field_prior-lognormal.png"
        plot_field_posterior(
            y.numpy(), measurement.seen.numpy(), draws, picture, truth=truth.numpy()
        )
        picture = cfg["out"] / "field_prior-lognormal-theta.png"
        plot_corner(theta, ("Omega_m", "sigma_8"), picture, truth=THETA)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--n", type=int, default=20_000, help="simulated maps")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs")
    parser.add_argument("--draws", type=int, default=1000, help="maps drawn per sampler")
    args = parser.parse_args()
    quick = args.quick
    torch.manual_seed(0)
    cfg = {
        "size": 8 if quick else 32,
        "n": 200 if quick else args.n,
        "epochs": 1 if quick else args.epochs,
        "draws": 16 if quick else args.draws,
        "dps_draws": 16 if quick else 200,  # a backward pass through the network per step
        "cache": not quick,
        "grid": 8 if quick else 32,
        "joint": {"thetas": 8, "particles": 2, "steps": 4} if quick else {},
        "out": args.out or (None if quick else RESULTS),
        # the samplers' defaults (quick: tiny)
        "sampling": {
            "gibbs": {"sweeps": 8, "chains": 4} if quick else {},
            "smc": {"steps": 4} if quick else {},
            "dps": {"steps": 4} if quick else {},
        },
    }
    records = run(cfg)
    name = "field_prior-quick" if quick else "field_prior"
    path = save(name, records, args.out or RESULTS)
    print(markdown_table(records))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
