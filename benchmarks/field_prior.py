"""A learned diffusion emulator of maps as the prior of a field-level inverse problem.

Task ``cosmology_gaussian_masked``: 32x32 Gaussian cosmology maps (``lognormal=False``), 30% of
the pixels hidden in a contiguous square and white noise of 0.3 of the maps' pixel scale on the
rest. A diffusion emulator (the defaults for maps: a periodic U-Net on the variance-preserving
process) is fitted on ``n`` simulations for ``epochs`` epochs, and the maps given the
observation at the true parameters are drawn by the default sampler (Gibbs by data
augmentation, :mod:`simgen.inference.field`) and by DPS, against the exact Wiener filter:

* ``field_posterior_mean_z``: RMS over pixels of (learned posterior mean - exact) / exact
  posterior standard deviation;
* ``field_posterior_std_ratio``: mean over pixels of learned / exact posterior standard
  deviation;
* ``sampler_rhat`` and ``sampler_ess``: the Gibbs chains' worst split R-hat and smallest
  effective sample size over pixels.

Figures (``field_prior-METHOD.png``): the observation, the exact and learned posterior means and
standard deviations, and draws.

Run: ``python -m benchmarks.field_prior [--quick] [--n N] [--epochs E]``; writes
``benchmarks/results/field_prior.json``. The fitted emulator is kept in ``benchmarks/.data``
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
from simgen.diagnostics.plots import plot_field_posterior
from simgen.inference.field_posterior import FieldPosterior
from simgen.inference.measurement import Mask

BENCH, TASK = "field_prior", "cosmology_gaussian_masked"
DATA = Path(__file__).parent / ".data"
THETA = np.array([0.3, 0.8])  # the observed map's parameters
HIDDEN, NOISE = 0.3, 0.3  # share of pixels hidden; noise over the pixel scale


def fitted_prior(size: int, n: int, epochs: int, cache: bool) -> tuple[simgen.Emulator, float]:
    """The diffusion emulator of ``n`` Gaussian maps after ``epochs`` epochs (with ``cache``,
    kept in ``benchmarks/.data``) and the seconds its fit took (0 when read from the cache)."""
    DATA.mkdir(exist_ok=True)
    sim = simgen.get_simulator("cosmology", size=size, lognormal=False)
    model = DATA / f"field_prior-size{size}-{n}-e{epochs}.pt" if cache else None
    if model is not None and model.exists():
        return simgen.load(model), 0.0
    store = simgen.simulate(sim, n, DATA / f"cosmology-gaussian-size{size}-{n}.h5", seed=0,
                            workers=1, progress=False)  # fmt: skip
    start = time.perf_counter()
    emulator = simgen.fit(store, "diffusion", model, train={"epochs": epochs}, progress=False)
    return emulator, time.perf_counter() - start


def observation(sim: simgen.Simulator, size: int) -> tuple[Mask, torch.Tensor, float]:
    """The measurement (a contiguous square of ``HIDDEN`` of the pixels hidden, noise
    ``NOISE`` of the pixel scale), the observation of a map at ``THETA``, and the pixel scale."""
    scale = float(np.sqrt(np.diag(sim.covariance(THETA)).mean()))
    side = round(np.sqrt(HIDDEN) * size)
    mask = torch.ones(size, size, dtype=torch.bool)
    start = (size - side) // 2
    mask[start : start + side, start : start + side] = False
    measurement = Mask(mask, NOISE * scale)
    x = sim.simulate(THETA[None], np.random.default_rng(7))[0]
    return (
        measurement,
        measurement.simulate(torch.as_tensor(x), torch.Generator().manual_seed(8)),
        scale,
    )


def exact_score(sim: simgen.Simulator, scale: float, emulator: simgen.Emulator) -> Any:
    """The exact noise prediction of the Gaussian maps at ``THETA`` in the emulator's
    coordinates, :math:`\\sigma_t (\\alpha_t^2 C + \\sigma_t^2)^{-1} (u_t - \\alpha_t m)`,
    :math:`C`, :math:`m` the maps' covariance and mean in those coordinates (a reference:
    the sampler's error alone)."""
    size = sim.size
    std = emulator.x_std.double().reshape(size, size)
    mean = emulator.x_mean.double().reshape(size, size)
    if (std - std.mean()).abs().max() > 1e-6 * std.mean():
        raise SystemExit("the exact-score reference needs maps standardised with one scale")
    lam = torch.as_tensor(sim.eigenvalues(THETA[None])[0]) / float(std.mean()) ** 2
    m = -mean / std  # the maps' mean (0) in the emulator's coordinates
    schedule = emulator.model.schedule

    def epsilon(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = schedule(t.double())
        r = u.double().reshape(-1, size, size) - alpha * m
        c = torch.fft.fft2(r) / (alpha**2 * lam + sigma**2)
        return (sigma * torch.fft.ifft2(c).real).reshape(u.shape).float()

    return epsilon


class ExactPrior(FieldPosterior):
    """:class:`FieldPosterior` with the exact noise prediction in place of the network."""

    def __init__(self, emulator: simgen.Emulator, measurement: Mask, epsilon: Any) -> None:
        super().__init__(emulator, measurement)
        self.epsilon = epsilon

    def _noise_predictor(self, theta: torch.Tensor, per_group: int) -> Any:
        return self.epsilon


def field_metrics(draws: np.ndarray, exact: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """``field_posterior_mean_z`` and ``field_posterior_std_ratio`` of ``draws (n, N, N)``."""
    mean, std = exact
    z = (draws.mean(0) - mean) / std
    return {
        "field_posterior_mean_z": float(np.sqrt(np.mean(z**2))),
        "field_posterior_std_ratio": float(np.mean(draws.std(0) / std)),
    }


def run(cfg: dict) -> list[dict]:
    size, n = cfg["size"], cfg["n"]
    sim = simgen.get_simulator("cosmology", size=size, lognormal=False)
    emulator, fit_s = fitted_prior(size, n, cfg["epochs"], cfg["cache"])
    measurement, y, scale = observation(sim, size)
    exact = sim.wiener(y, measurement, THETA)
    theta = torch.as_tensor(THETA, dtype=torch.float32)
    records = [record(BENCH, TASK, "simgen diffusion", "train_seconds", fit_s, "s", n)]
    samplers = {
        "simgen diffusion (gibbs)": (FieldPosterior(emulator, measurement), "gibbs"),
        "simgen diffusion (dps)": (FieldPosterior(emulator, measurement), "dps"),
        "exact score (gibbs)": (
            ExactPrior(emulator, measurement, exact_score(sim, scale, emulator)), "gibbs"),
    }  # fmt: skip
    for name, (posterior, method) in samplers.items():
        start = time.perf_counter()
        out = posterior.sample(y, theta, cfg["draws"], method=method, **cfg["sampling"][method])
        seconds = time.perf_counter() - start
        draws = out.x[0].numpy().astype(np.float64)
        metrics = {**field_metrics(draws, exact), "sampler_seconds": seconds}
        if method == "gibbs":
            metrics |= {"sampler_rhat": max(out.diagnostics["rhat"]),
                        "sampler_ess": min(out.diagnostics["ess"])}  # fmt: skip
        for metric, value in metrics.items():
            unit = "s" if metric.endswith("seconds") else "ratio"
            records.append(record(BENCH, TASK, name, metric, value, unit, n))
        if cfg["out"]:
            slug = name.replace("simgen diffusion (", "").replace(" (", "-").rstrip(")")
            picture = cfg["out"] / f"field_prior-{slug.replace(' ', '-')}.png"
            plot_field_posterior(y.numpy(), measurement.seen.numpy(), draws, picture, exact)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--n", type=int, default=20_000, help="simulated maps")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs")
    parser.add_argument("--draws", type=int, default=1000, help="maps drawn per sampler")
    args = parser.parse_args()
    quick = args.quick
    torch.manual_seed(0)
    cfg = {
        "size": 8 if quick else 32,
        "n": 200 if quick else args.n,
        "epochs": 1 if quick else args.epochs,
        "draws": 16 if quick else args.draws,
        "cache": not quick,
        "out": args.out or (None if quick else RESULTS),
        # the samplers' defaults (quick: tiny)
        "sampling": {
            "gibbs": {"sweeps": 8, "chains": 4} if quick else {},
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
