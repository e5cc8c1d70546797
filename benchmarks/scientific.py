"""Do emulators of the scientific simulators get the physics right, and how much faster are they?

For each simulator, ``n`` simulations and each family fitted with the defaults (``--epochs``
caps the epochs), compared at
10 held-out parameter values (fresh streams) with ``m`` simulated and ``m`` emulated samples:

* ``cosmology`` (32x32 log-normal maps): ``power_spectrum_rel_error``, the worst bin below half
  the Nyquist frequency of :math:`|\\bar P_{emu}(k) / \\bar P_{sim}(k) - 1|`, the ratio averaged
  over the 10 parameter pairs; ``field_log_prob_error_per_pixel``, mean
  :math:`|\\log \\hat p - \\log p| / N^2` over held-out pairs against the exact likelihood;
  ``coverage_max_deviation``, the largest gap between the expected coverage of the posterior of
  (Omega_m, sigma_8) from one map and the diagonal, over ``pairs`` held-out maps (the 95%
  binomial band half-width is reported beside it as ``coverage_band_halfwidth``; not with
  ``--no-coverage``: MCMC over ``pairs`` maps, too slow with the VAE, whose density is an
  importance-weighted estimate over 1,024 convolutional decoder passes).
* ``molecular`` (8-bead chain, in internal coordinates: bond lengths, bending and dihedral
  angles): ``energy_wasserstein`` and ``rg_wasserstein``, the 1-Wasserstein distance of the
  potential energy and of the radius of gyration over the simulated standard deviation,
  averaged over the 10 parameter values.
  Beside them ``energy_median_shift`` (the median energy's shift over the simulated standard
  deviation) and ``overlap_fraction`` (configurations with a Lennard-Jones pair closer than
  0.6, emulated and simulated): a few overlapping beads, at r^-12 energies, make the
  Wasserstein distance.
  For the flow, the same metrics of its samples corrected by the simulator's exact
  unnormalised density (``simgen flow + Metropolis (exact density)``:
  :func:`simgen.inference.metropolis.metropolized_sample`, with its ``metropolis_acceptance``), and of
  a second, independent run of the simulator (``simulator, independent run``): the distances
  that ``m`` samples alone leave.
* ``emulator_speedup``: emulated samples/s over simulated samples/s at one parameter value.
* ``train_seconds`` and ``train_epochs``: the fit's wall-clock time and the epochs it ran (early
  stopping, or ``--epochs``).

Run: ``python -m benchmarks.scientific [--quick] [--tasks ...] [--families ...]``; writes
``benchmarks/results/scientific.json`` after each task (the rows of tasks and families not
rerun are kept), and
``cosmology-FAMILY.png`` (maps and power spectra at the first held-out parameters) and
``molecular-flow.png`` (histograms of energy, radius of gyration and bond length, simulated,
emulated and corrected, at the first held-out parameters) beside it.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import simgen
from benchmarks.records import RESULTS, load, markdown_table, record, save, still_valid
from simgen.data.tasks import run_chunk
from simgen.diagnostics.metrics import (
    coverage_levels,
    expected_coverage,
    power_spectrum,
    wasserstein_relative,
)
from simgen.diagnostics.plots import plot_fields, plot_summaries
from simgen.inference.metropolis import metropolized_sample
from simgen.inference.posterior import Posterior
from simgen.train.loop import fit

BENCH = "scientific"
TASKS = ("molecular", "cosmology")
DATA = Path(__file__).parent / ".data"


def compare(
    emulator: simgen.Emulator, sim: simgen.Simulator, thetas: np.ndarray, m: int
) -> tuple[list[np.ndarray], list[np.ndarray], float, float]:
    """Simulated and emulated samples at each theta, the seconds the simulator took at the
    first one and the speed-up there."""
    sims, emus, sim_s, speedup = [], [], 0.0, 0.0
    for i, theta in enumerate(thetas):
        start = time.perf_counter()
        simulated = sim.simulate(np.tile(theta, (m, 1)), np.random.default_rng([11, i]))
        seconds = time.perf_counter() - start
        torch.manual_seed(i)
        start = time.perf_counter()
        emulated = emulator.sample(torch.as_tensor(theta, dtype=torch.float32), m).numpy()
        if i == 0:
            sim_s, speedup = seconds, seconds / (time.perf_counter() - start)
        sims.append(simulated)
        emus.append(emulated.astype(np.float64))
    return sims, emus, sim_s, speedup


def metropolized(
    emulator: simgen.Emulator, sim: simgen.Simulator, thetas: np.ndarray, m: int
) -> tuple[list[np.ndarray], float, float]:
    """Samples of the emulator corrected by the simulator's exact unnormalised density
    (:func:`simgen.inference.metropolis.metropolized_sample`, default chains and burn-in) at each theta,
    the mean acceptance rate and share of distinct samples, and the seconds taken at the
    first theta."""
    samples, acceptance, distinct, seconds = [], [], [], 0.0
    for i, theta in enumerate(thetas):
        start = time.perf_counter()
        out = metropolized_sample(emulator, sim.log_unnormalized, theta, m, seed=i)
        if i == 0:
            seconds = time.perf_counter() - start
        samples.append(out.x.double().numpy())
        acceptance.append(out.acceptance)
        distinct.append(out.distinct / m)
    return samples, float(np.mean(acceptance)), float(np.mean(distinct)), seconds


def field_metrics(
    emulator: simgen.Emulator, sim: simgen.Simulator, sims: list, emus: list, cfg: dict
) -> dict[str, float]:
    k, _, _ = power_spectrum(sims[0][:1], box=sim.box)
    ratios = [
        power_spectrum(e, box=sim.box)[1].mean(0) / power_spectrum(s, box=sim.box)[1].mean(0)
        for s, e in zip(sims, emus, strict=True)
    ]
    low = k < 0.5 * k.max()
    spectrum_error = float(np.abs(np.mean(ratios, axis=0)[low] - 1).max())
    if cfg.get("figure"):  # maps and spectra at the first held-out theta
        p_sim, p_emu = (power_spectrum(m, box=sim.box)[1] for m in (sims[0], emus[0]))
        plot_fields(sims[0], emus[0], k, p_sim, p_emu, cfg["figure"])
    held = run_chunk(sim, seed=12, index=10**9, size=cfg["pairs"])
    exact = sim.log_likelihood(held.x.astype(np.float64), held.theta.astype(np.float64))
    with torch.no_grad():
        learned = emulator.log_prob(torch.from_numpy(held.x), torch.from_numpy(held.theta))
    pixels = held.x[0].size
    lp_error = float(np.abs(learned.numpy() - exact).mean() / pixels)
    if not cfg["coverage"]:
        return {
            "power_spectrum_rel_error": spectrum_error,
            "field_log_prob_error_per_pixel": lp_error,
        }
    posterior = Posterior(emulator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = posterior.sample_batch(
            held.x, 99, chains=11, warmup=cfg["warmup"], thin=cfg["thin"], progress=False
        )
        with torch.no_grad():
            truth = torch.stack(
                [posterior.log_prob(t, x) for t, x in zip(held.theta, held.x, strict=True)]
            )
    curve = coverage_levels(expected_coverage(truth, result.log_prob))
    return {
        "power_spectrum_rel_error": spectrum_error,
        "field_log_prob_error_per_pixel": lp_error,
        "coverage_max_deviation": float(np.abs(curve["coverage"] - curve["levels"]).max()),
        "coverage_band_halfwidth": float(((curve["high"] - curve["low"]) / 2).max()),
    }


# distance below which a Lennard-Jones pair overlaps: an energy of 1750 epsilon, 233 T at the
# prior's smallest epsilon / T (0.2 / 1.5), a Boltzmann factor of e^-233: never at equilibrium
OVERLAP = 0.6


def closest_lj_pair(r: np.ndarray) -> np.ndarray:
    """Distance of the closest pair of beads three or more apart along the chain (the pairs
    with a Lennard-Jones term), ``(n, beads, 3)`` -> ``(n,)``."""
    i, j = np.triu_indices(r.shape[1], k=3)
    return np.linalg.norm(r[:, i] - r[:, j], axis=-1).min(1)


def molecule_metrics(sim: simgen.Simulator, thetas: np.ndarray, sims: list, emus: list) -> dict:
    """The issue's Wasserstein metrics, and what they are made of: the shift of the median
    energy (over the simulated standard deviation) and the share of configurations with a
    Lennard-Jones pair closer than :data:`OVERLAP`, whose r^-12 energies dominate a
    Wasserstein distance."""
    scores: dict[str, list[float]] = {"energy": [], "radius_of_gyration": []}
    shifts, overlaps, simulated_overlaps = [], [], []
    for theta, s, e in zip(thetas, sims, emus, strict=True):
        tiled = np.tile(theta, (len(s), 1))
        a, b = sim.summaries(s, tiled), sim.summaries(e, tiled)
        for name, values in scores.items():
            values.append(wasserstein_relative(a[name], b[name]))
        shifts.append(abs(np.median(b["energy"]) - np.median(a["energy"])) / a["energy"].std())
        overlaps.append((closest_lj_pair(sim.positions(e)) < OVERLAP).mean())
        simulated_overlaps.append((closest_lj_pair(sim.positions(s)) < OVERLAP).mean())
    return {
        "energy_wasserstein": float(np.mean(scores["energy"])),
        "rg_wasserstein": float(np.mean(scores["radius_of_gyration"])),
        "energy_median_shift": float(np.mean(shifts)),
        "overlap_fraction": float(np.mean(overlaps)),
        "simulated_overlap_fraction": float(np.mean(simulated_overlaps)),
    }


UNITS = {
    "emulator_speedup": "x",
    "field_log_prob_error_per_pixel": "nats/pixel",
    "train_epochs": "epochs",
}


def run_task(name: str, families: list[str], cfg: dict, records: list) -> None:
    sim = simgen.get_simulator(name, **cfg["options"][name])
    DATA.mkdir(exist_ok=True)
    n = cfg["n"]
    tag = "-".join(f"{k}{v}" for k, v in sorted(cfg["options"][name].items()))
    path = DATA / f"{name}{tag}-{n}.h5"
    store = simgen.simulate(sim, n, path, seed=0, workers=cfg["workers"], progress=False)
    thetas = run_chunk(sim, seed=13, index=10**9, size=cfg["thetas"]).theta.astype(np.float64)
    for family in families:
        train = {} if cfg["epochs"] is None else {"epochs": cfg["epochs"]}
        train_s, emulator = timed_fit(store, family, train)
        sims, emus, sim_s, speedup = compare(emulator, sim, thetas, cfg["m"])
        if name == "molecular" and family == "flow":
            metropolis_rows(emulator, sim, thetas, sims, emus, sim_s, cfg, records)
        if name == "cosmology":
            figure = (cfg["out"] / f"cosmology-{family}.png") if cfg["out"] else None
            metrics = field_metrics(emulator, sim, sims, emus, {**cfg, "figure": figure})
        else:
            metrics = molecule_metrics(sim, thetas, sims, emus)
        metrics["emulator_speedup"] = speedup
        metrics["train_seconds"] = train_s
        metrics["train_epochs"] = emulator.info["metrics"]["epochs_run"]
        method = f"simgen {family}"
        if "simulated_overlap_fraction" in metrics:
            value = metrics.pop("simulated_overlap_fraction")
            records.append(record(BENCH, name, "simulator", "overlap_fraction", value, "ratio", n))
        for metric, value in metrics.items():
            unit = UNITS.get(metric, "s" if metric == "train_seconds" else "ratio")
            records.append(record(BENCH, name, method, metric, value, unit, n))


def metropolis_rows(
    emulator: simgen.Emulator,
    sim: simgen.Simulator,
    thetas: np.ndarray,
    sims: list,
    emus: list,
    sim_s: float,
    cfg: dict,
    records: list,
) -> None:
    """Rows of the flow corrected by the exact Boltzmann density, and of a second, independent
    run of the simulator: the distances that finite samples alone leave; with ``cfg["out"]``,
    ``molecular-flow.png``: the statistics' histograms at the first held-out theta."""
    n, m = cfg["n"], cfg["m"]
    corrected, acceptance, distinct, seconds = metropolized(emulator, sim, thetas, m)
    if cfg["out"]:
        tiled = np.tile(thetas[0], (m, 1))
        summaries = {
            "flow": sim.summaries(emus[0], tiled),
            "flow + Metropolis": sim.summaries(corrected[0], tiled),
        }
        plot_summaries(sim.summaries(sims[0], tiled), summaries, cfg["out"] / "molecular-flow.png")
    metrics = molecule_metrics(sim, thetas, sims, corrected)
    metrics.pop("simulated_overlap_fraction")
    metrics["emulator_speedup"] = sim_s / seconds
    metrics["metropolis_acceptance"] = acceptance
    metrics["metropolis_distinct_fraction"] = distinct
    method = "simgen flow + Metropolis (exact density)"
    for metric, value in metrics.items():
        unit = UNITS.get(metric, "ratio")
        records.append(record(BENCH, "molecular", method, metric, value, unit, n))
    again = [
        sim.simulate(np.tile(theta, (m, 1)), np.random.default_rng([14, i]))
        for i, theta in enumerate(thetas)
    ]
    floor = molecule_metrics(sim, thetas, sims, again)
    for metric in ("energy_wasserstein", "rg_wasserstein", "energy_median_shift"):
        method = "simulator, independent run"
        records.append(record(BENCH, "molecular", method, metric, floor[metric], "ratio", n))


def timed_fit(store: simgen.Store, family: str, train: dict) -> tuple[float, simgen.Emulator]:
    start = time.perf_counter()
    emulator = fit(store, family, None, train=train, progress=False)
    return time.perf_counter() - start, emulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--families", nargs="*", default=["flow"])
    parser.add_argument("--n", type=int, default=20_000, help="simulations per task")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: fit's)")
    parser.add_argument("--pairs", type=int, default=100, help="held-out maps for coverage")
    parser.add_argument("--warmup", type=int, default=50, help="posterior warm-up iterations")
    parser.add_argument("--thin", type=int, default=3, help="posterior thinning")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--no-coverage", action="store_true", help="cosmology: skip the posterior's coverage"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    cfg = {
        "n": 400 if quick else args.n,
        "epochs": 2 if quick else args.epochs,
        "thetas": 2 if quick else 10,
        "m": 50 if quick else 500,
        "pairs": 5 if quick else args.pairs,
        "warmup": 5 if quick else args.warmup,
        "thin": 1 if quick else args.thin,
        "coverage": not args.no_coverage,
        "workers": 1 if quick else None,
        "out": None if quick else (args.out or RESULTS),
        "options": {
            "cosmology": {"size": 8, "box": 64.0} if quick else {},
            # internal coordinates: the representation of molecular generative models
            "molecular": {"coordinates": "internal", **({"steps": 100} if quick else {})},
        },
    }
    torch.manual_seed(0)
    name = "scientific-quick" if quick else "scientific"
    # a run of some tasks and families replaces their rows only
    ours = {f"simgen {family}" for family in args.families} | {"simulator"}
    if "flow" in args.families:
        ours |= {"simgen flow + Metropolis (exact density)", "simulator, independent run"}
    old, records, done = load(name, args.out), [], set()
    for task in args.tasks:
        run_task(task, args.families, cfg, records)
        done.add(task)
        kept = still_valid(old, done, ours, sbi=False)
        path = save(name, kept + records, args.out or RESULTS)
    print(markdown_table(kept + records))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
