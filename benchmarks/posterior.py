"""How close are simgen's posteriors to the true ones, how fast, and how calibrated?

For each task, with ``n`` simulations (1e4), each family trained as :func:`simgen.fit` trains
it by default (epochs and early stopping, the amortised proposal beside it; ``--epochs`` caps
the epochs), and every posterior drawn as :meth:`simgen.Posterior.sample` draws it by default
(``n`` = 10,000 draws, the engine's ``auto`` path: importance sampling from the proposal, SMC
or MCMC where it is not reliable):

* ``posterior_c2st``: C2ST (5-fold, MLP) between the draws and as many draws of the reference
  posterior (:mod:`benchmarks.references`: analytic or exact on a grid), averaged over 5
  observations ``x_o ~ p(x | theta_o)``, ``theta_o`` from the prior (``posterior_c2st_worst``:
  the largest of the 5); for each simgen family and, in the same run and on the same data,
  sbi's NPE and NLE (its default ``slice_np_vectorized`` MCMC: 20 chains, 200 warm-up steps).
* the same C2ST for simgen's engine on the simulator's exact likelihood, with the flow's
  proposal (``simgen exact likelihood (auto)``): what the engine alone leaves, so that the
  distance of a family from it is what its learned likelihood costs.
* ``posterior_samples_per_s``: draws per second of wall-clock time, everything included (the
  proposal's draws, the likelihood's evaluations, fallbacks), the mean over the observations;
  the same for sbi's methods, with the same number of draws. Every method first draws 10
  untimed (:data:`WARM_UP`), so that what a process pays once (torch's first
  ``broadcast_shapes`` imports sympy: 0.3 s) is nobody's sampling time.
* ``posterior_ess_fraction``: importance sampling's effective sample size per proposal,
  ``posterior_fallbacks``: the observations (of 5) on which importance sampling handed over to
  SMC or MCMC, and ``posterior_draws``: the draws per observation of the run (``--draws``;
  families whose likelihood costs more than the flow's are run with fewer).
* ``train_seconds``: wall-clock training time of every method (for simgen: the emulator and
  its proposal; ``proposal_seconds``: the proposal's part).
* calibration on gaussian_linear (two_moons with ``--quick``), with the flow: SBC ranks of
  ``sbc_pairs`` simulated pairs with 99 draws each, all posteriors in one batch
  (``sbc_min_pvalue``: the smallest chi-square p-value over the parameters; uniform ranks give
  values above 0.01 / d with probability 0.99), and the largest deviation of the expected
  coverage from the diagonal over credibility levels (``coverage_max_deviation``).

Run: ``python -m benchmarks.posterior [--quick] [--tasks ...] [--families ...] [--no-sbi]``;
writes ``benchmarks/results/posterior.json`` after each task, keeping the rows of the tasks and
methods it does not rerun.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import simgen
from benchmarks.emulators import VARIANTS, label
from benchmarks.records import RESULTS, load, markdown_table, record, save, still_valid
from benchmarks.references import reference_posterior
from simgen.data.tasks import run_chunk
from simgen.diagnostics.metrics import (
    c2st,
    coverage_levels,
    expected_coverage,
    sbc_ranks,
    sbc_uniformity,
)
from simgen.inference.posterior import Posterior
from simgen.train.loop import fit

BENCH = "posterior"
TASKS = ("two_moons", "gaussian_mixture", "slcp", "gaussian_linear")
DATA = Path(__file__).parent / ".data"


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


WARM_UP = 10  # untimed draws of each method's posterior before it is timed


def observations(sim: simgen.Simulator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` pairs ``(theta_o, x_o)`` from streams no training row uses."""
    result = run_chunk(sim, seed=7, index=10**9, size=count)
    return result.theta.astype(np.float64), result.x.astype(np.float64)


class ExactLikelihood:
    """A simulator's exact ``log_likelihood`` with the interface :class:`Posterior` uses, so
    that the same sampler runs on the true likelihood: the C2ST it leaves is the floor that the
    sampler alone sets (slice only: HMC needs gradients, which numpy does not give)."""

    def __init__(self, sim: simgen.Simulator, x_mean: torch.Tensor, x_std: torch.Tensor) -> None:
        self.sim, self.x_shape, self.d_theta = sim, tuple(sim.x_shape), sim.d_theta
        self.x_mean, self.x_std = x_mean, x_std  # for the extrapolation warning

    def prior(self) -> torch.distributions.Distribution:
        return self.sim.prior()

    def log_prob(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``log p(x | theta)`` broadcast over ``x (*, *x_shape)`` and ``theta (*, d)``."""
        batch = torch.broadcast_shapes(x.shape[: x.ndim - len(self.x_shape)], theta.shape[:-1])
        xs = x.expand(*batch, *self.x_shape).reshape(-1, *self.x_shape).double().numpy()
        ts = theta.expand(*batch, self.d_theta).reshape(-1, self.d_theta).double().numpy()
        return torch.from_numpy(self.sim.log_likelihood(xs, ts)).float().reshape(batch)


EXACT = "simgen exact likelihood (auto)"
SAMPLER = "auto"  # Posterior.sample's default path


def exact_floor(
    sim: simgen.Simulator, emulator: simgen.Emulator, xs: np.ndarray, refs: list, cfg: dict
) -> list[dict]:
    """The posterior C2ST of simgen's engine on the simulator's exact likelihood, with the
    flow's proposal."""
    exact = ExactLikelihood(sim, emulator.x_mean, emulator.x_std)
    exact.proposal, exact.standardized = emulator.proposal, emulator.standardized
    posterior = Posterior(exact)
    scores = []
    for i, (obs, ref) in enumerate(zip(xs, refs, strict=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = posterior.sample(obs, cfg["draws"], seed=i, progress=False)
        scores.append(c2st(result.theta, ref))
    value = float(np.mean(scores))
    return [record(BENCH, sim.name, EXACT, "posterior_c2st", value, "accuracy", cfg["n"])]


def sampled(variant: str) -> str:
    """The method name of a variant's posterior: ``simgen flow (auto)``,
    ``simgen flow (gaussian, auto)``."""
    family, _, detail = variant.partition("-")
    return f"simgen {family} ({detail + ', ' if detail else ''}{SAMPLER})"


def simgen_family(
    variant: str, store: simgen.Store, xs: np.ndarray, refs: list, cfg: dict
) -> tuple[list[dict], simgen.Emulator]:
    """Fit one family (or variant, :data:`benchmarks.emulators.VARIANTS`) with its proposal,
    sample each observation's posterior with the defaults, score and time it."""
    name, n = store.metadata["simulator"], len(store)
    family, config = VARIANTS[variant]
    train = {} if cfg["epochs"] is None else {"epochs": cfg["epochs"]}
    train_s, emulator = timed(fit, store, family, None, train=train, config=config, progress=False)
    posterior = Posterior(emulator)
    records = [record(BENCH, name, label(variant), "train_seconds", train_s, "s", n)]
    if emulator.proposal is not None:
        share = emulator.info["proposal"]["seconds"]
        records.append(record(BENCH, name, label(variant), "proposal_seconds", share, "s", n))
    scores, seconds, ess, fallbacks = [], [], [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior.sample(xs[0], WARM_UP, progress=False)
    for i, (x, ref) in enumerate(zip(xs, refs, strict=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s, result = timed(posterior.sample, x, cfg["draws"], seed=i, progress=False)
        scores.append(c2st(result.theta, ref))
        seconds.append(s)
        ess.append(result.diagnostics["ess_fraction"])
        fallbacks += result.diagnostics["sampler"] != "importance"
    method = sampled(variant)
    values = {
        "posterior_c2st": (float(np.mean(scores)), "accuracy"),
        "posterior_c2st_worst": (float(np.max(scores)), "accuracy"),
        "posterior_samples_per_s": (cfg["draws"] / float(np.mean(seconds)), "draws/s"),
        "posterior_ess_fraction": (float(np.mean(ess)), "fraction"),
        "posterior_fallbacks": (float(fallbacks), "observations"),
        "posterior_draws": (float(cfg["draws"]), "draws"),
    }
    records += [record(BENCH, name, method, k, v, unit, n) for k, (v, unit) in values.items()]
    if name == cfg["calibrate"] and variant == "flow":
        records += calibration(posterior, store, cfg)
    return records, emulator


def calibration(posterior: Posterior, store: simgen.Store, cfg: dict) -> list[dict]:
    """SBC ranks and expected coverage over simulated pairs (all posteriors in one batch)."""
    sim = simgen.get_simulator(store.metadata["simulator"], **store.metadata["simulator_options"])
    pairs = run_chunk(sim, seed=8, index=10**9, size=cfg["sbc_pairs"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = posterior.sample_batch(pairs.x, 99, progress=False)
    ranks = sbc_ranks(pairs.theta, result.theta)
    pvalues = sbc_uniformity(ranks, 99)
    with torch.no_grad():
        truth = torch.stack(
            [posterior.log_prob(t, x) for t, x in zip(pairs.theta, pairs.x, strict=True)]
        ) - torch.tensor(result.diagnostics["log_evidence"])
    curve = coverage_levels(expected_coverage(truth, result.log_prob))
    deviation = float(np.abs(curve["coverage"] - curve["levels"]).max())
    method, n = sampled("flow"), len(store)
    return [
        record(BENCH, sim.name, method, "sbc_min_pvalue", float(pvalues.min()), "p", n),
        record(BENCH, sim.name, method, "coverage_max_deviation", deviation, "probability", n),
    ]


def sbi_methods(
    sim: simgen.Simulator, store: simgen.Store, xs: np.ndarray, refs: list, cfg: dict
) -> list[dict]:
    """sbi's NPE and NLE (default networks and early stopping) on the same simulations."""
    try:
        import sbi
        from sbi.inference import NLE, NPE
    except ImportError:
        return []
    theta, x = torch.from_numpy(store.theta), torch.from_numpy(store.x[:])
    n, records = len(store), []
    for cls in (NPE, NLE):
        inference = cls(prior=sim.prior(), show_progress_bars=False)
        train = inference.append_simulations(theta, x).train
        epochs = 2 if cfg["quick"] else 2**31 - 1
        train_s, _ = timed(train, max_num_epochs=epochs)
        quick = {"warmup_steps": 10, "num_chains": 4}
        quick_mcmc = {"mcmc_parameters": quick} if cfg["quick"] else {}
        posterior = inference.build_posterior(**(quick_mcmc if cls is NLE else {}))
        scores, seconds = [], []
        sample = posterior.sample
        sample((WARM_UP,), x=torch.as_tensor(xs[0], dtype=torch.float32), show_progress_bars=False)
        for obs, ref in zip(xs, refs, strict=True):
            obs_t = torch.as_tensor(obs, dtype=torch.float32)
            s, draws = timed(sample, (cfg["draws"],), x=obs_t, show_progress_bars=False)
            scores.append(c2st(draws, ref))
            seconds.append(s)
        method = f"sbi-{sbi.__version__} {cls.__name__}"
        records += [
            record(BENCH, sim.name, method, "train_seconds", train_s, "s", n),
            record(BENCH, sim.name, method, "posterior_c2st", np.mean(scores), "accuracy", n),
            record(
                BENCH,
                sim.name,
                method,
                "posterior_samples_per_s",
                cfg["draws"] / float(np.mean(seconds)),
                "draws/s",
                n,
            ),
        ]
    return records


def run_task(
    name: str, families: list[str], cfg: dict, records: list, include_sbi: bool = True
) -> None:
    sim = simgen.get_simulator(name)
    DATA.mkdir(exist_ok=True)
    n = cfg["n"]
    store = simgen.simulate(sim, n, DATA / f"{name}-{n}.h5", seed=0, workers=1, progress=False)
    _, xs = observations(sim, cfg["observations"])
    refs = [reference_posterior(sim, x, cfg["draws"], seed=i) for i, x in enumerate(xs)]
    for family in families:
        rows, emulator = simgen_family(family, store, xs, refs, cfg)
        records += rows
        if family == "flow":
            records += exact_floor(sim, emulator, xs, refs, cfg)
    if include_sbi:
        records += sbi_methods(sim, store, xs, refs, cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument(
        "--families", nargs="*", default=["flow"], choices=list(VARIANTS),
        help="families, or variants of benchmarks.emulators (flow-gaussian, diffusion-x0, ...)",
    )  # fmt: skip
    parser.add_argument("--n", type=int, default=10_000, help="simulations per task")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: fit's)")
    parser.add_argument(
        "--draws", type=int, default=10_000, help="posterior draws per observation (the default's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--no-sbi", action="store_true", help="skip sbi's NPE and NLE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = {
        "quick": args.quick,
        "n": 1000 if args.quick else args.n,
        "epochs": 2 if args.quick else args.epochs,
        "draws": 40 if args.quick else args.draws,
        "observations": 1 if args.quick else 5,
        "sbc_pairs": 10 if args.quick else 200,
        "calibrate": "two_moons" if args.quick else "gaussian_linear",
    }
    tasks = ["two_moons"] if args.quick else args.tasks
    families = ["flow"] if args.quick else args.families
    torch.manual_seed(0)
    name = "posterior-quick" if args.quick else "posterior"

    ours = {*(label(v) for v in families), *(sampled(v) for v in families)}
    if "flow" in families:  # the exact-likelihood floor runs with the flow's proposal
        ours.add(EXACT)

    old, records, done = load(name, args.out), [], set()
    for task in tasks:
        run_task(task, families, cfg, records, not args.no_sbi)
        done.add(task)
        kept = still_valid(old, done, ours, sbi=not args.no_sbi)
        path = save(name, kept + records, args.out or RESULTS)
    print(markdown_table(kept + records))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
