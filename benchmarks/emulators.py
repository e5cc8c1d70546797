"""How accurate and fast are simgen's emulators of p(x | theta), and sbi's NLE beside them?

For each task, with ``n`` simulations and each family trained as :func:`simgen.fit` trains it
by default (epochs and early stopping; ``--epochs`` caps the epochs):

* ``density_abs_error_nats``: mean |learned - exact| log p(x | theta) over 1,000 held-out pairs
  (every task here has an exact likelihood); for gaussian_linear also sbi's NLE (if installed).
* ``emulation_c2st``: C2ST (5-fold, MLP) between 1,000 emulated and 1,000 simulated x at each of
  10 fixed thetas drawn from the prior, averaged.
* speed: ``train_samples_per_s``, ``emulate_samples_per_s`` (10,000 draws at one theta),
  ``log_prob_per_s`` (one batched call on the 1,000 held-out pairs repeated 10 times: 10,000
  evaluations), and the simulator's own ``simulator_samples_per_s``.

Run: ``python -m benchmarks.emulators [--quick] [--tasks ...] [--families ...]``; writes
``benchmarks/results/emulators.json`` after each task, so a long run keeps what it has measured,
and keeps the rows of tasks and methods it does not rerun. ``--families`` also takes the
diffusion variants of the variance-preserving process (the default is EDM on x standardised
given theta): ``diffusion-vp`` (with the exact denoiser of a Gaussian linear in theta added,
predicting eps), ``diffusion-x0``, ``diffusion-score`` (other parameterizations) and
``diffusion-ddpm`` (the discrete-time chain, density = its ELBO); ``diffusion-fit-always``: the
default with the standardisation's MLP in theta kept wherever it gains at all (``affine_gain =
0``; by default only where it gains more than 10 nats per row), ``diffusion-linear``: never
(``affine_steps = 0``); ``diffusion-fitted``: EDM with the standardisation's MLP fitted for
8,000 steps and always kept, and a denoiser with three hidden layers; ``flow-gaussian``: the
flow without spline transforms (``transforms = 0``), i.e. its theta-conditioned affine
standardisation alone, a Gaussian given theta, with a 4 x 256 MLP;
``flow-gaussian-separate``: the same with an MLP each for the mean, the log-scale and the
correlations (``separate``); ``flow-fixed`` and ``flow-gaussian-fixed``: the flow and the
Gaussian flow with the fixed heteroscedastic standardisation forced (``fixed_gaussian = true``;
the default, ``"auto"``, holds it fixed only where the noise is tiny); ``vae-gaussian``: the
VAE with a diagonal Gaussian decoder instead of the spline flow (the default up to 64 values);
``vae-iwae``: the VAE trained on the importance-weighted bound (K = 8, DReG) instead of the
ELBO.

For the VAE, whose density is a stochastic estimate, also ``density_estimate_spread_nats``: the
standard deviation of 10 repeated estimates of each held-out log-density, averaged over pairs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import simgen
from benchmarks.records import RESULTS, load, markdown_table, record, save, still_valid
from simgen.data.tasks import run_chunk
from simgen.diagnostics.metrics import c2st
from simgen.train.loop import fit

BENCH = "emulators"
TASKS = ("gaussian_linear", "two_moons", "slcp", "oscillator")
FAMILIES = ("flow", "vae", "diffusion")
# what --families accepts: a family, or a diffusion variant (the parameterization table)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "flow": ("flow", {}),
    # the flow's theta-conditioned standardisation alone, with a deeper MLP: a Gaussian given
    # theta (full covariance up to 32 values), for signal-plus-noise simulators
    "flow-gaussian": ("flow", {"transforms": 0, "hidden": [256, 256, 256, 256]}),
    # the same with an MLP each for the mean, the log-scale and the correlations
    "flow-gaussian-separate": (
        "flow",
        {"transforms": 0, "hidden": [256, 256, 256, 256], "separate": True},
    ),
    # the flows with the fixed heteroscedastic Gaussian standardisation forced (new fits decide:
    # FlowConfig.fixed_gaussian = "auto")
    "flow-fixed": ("flow", {"fixed_gaussian": True, "scale_bound": "softplus"}),
    "flow-gaussian-fixed": (
        "flow",
        {
            "transforms": 0,
            "hidden": [256, 256, 256, 256],
            "fixed_gaussian": True,
            "scale_bound": "softplus",
        },
    ),
    "vae": ("vae", {}),
    # the decoder a diagonal Gaussian of (u, theta) instead of a spline flow
    "vae-gaussian": ("vae", {"decoder": "gaussian"}),
    # trained on the importance-weighted bound with K = 8 (DReG) instead of the ELBO
    "vae-iwae": ("vae", {"train_samples": 8}),
    "diffusion": ("diffusion", {}),
    # the variance-preserving process with the exact Gaussian denoiser (the default before EDM)
    "diffusion-vp": ("diffusion", {"process": "vp"}),
    "diffusion-x0": ("diffusion", {"parameterization": "x0"}),
    "diffusion-score": ("diffusion", {"parameterization": "score"}),
    "diffusion-ddpm": ("diffusion", {"time": "discrete"}),
    # the default with its standardisation's MLP kept wherever it gains at all, or never
    "diffusion-fit-always": ("diffusion", {"affine_gain": 0.0}),
    "diffusion-linear": ("diffusion", {"affine_steps": 0}),
    # the standardisation's Gaussian with a 2 x 256 MLP in theta fitted by maximum likelihood,
    # the denoiser with three hidden layers
    "diffusion-fitted": (
        "diffusion",
        {
            "affine_hidden": [256, 256],
            "affine_steps": 8000,
            "affine_gain": 0.0,
            "hidden": [256, 256, 256],
        },
    ),
}
DATA = Path(__file__).parent / ".data"


def held_out(sim: simgen.Simulator, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` fresh (theta, x) pairs from streams no training row uses."""
    result = run_chunk(sim, seed=seed, index=10**9, size=n)
    return result.theta[result.ok], result.x[result.ok]


def density_error(emulator: simgen.Emulator, sim: simgen.Simulator, pairs: tuple) -> float:
    """Mean absolute error of the learned log-likelihood over ``pairs`` = (theta, x), on any
    device."""
    theta, x = pairs
    exact = sim.log_likelihood(x.astype(np.float64), theta.astype(np.float64))
    with torch.no_grad():
        learned = emulator.log_prob(torch.from_numpy(x), torch.from_numpy(theta))
    return float(np.abs(learned.cpu().numpy() - exact).mean())


def estimate_spread(emulator: simgen.Emulator, pairs: tuple, repeats: int = 10) -> float:
    """Standard deviation of ``repeats`` estimates of each log-density in ``pairs``, averaged."""
    theta, x = (torch.from_numpy(a) for a in pairs)
    with torch.no_grad():
        estimates = torch.stack([emulator.log_prob(x, theta) for _ in range(repeats)])
    return float(estimates.std(0).mean())


def emulation_c2st(
    emulator: simgen.Emulator, sim: simgen.Simulator, thetas: np.ndarray, m: int, seed: int
) -> float:
    scores = []
    for i, theta in enumerate(thetas):
        rng = np.random.default_rng([seed, i])
        simulated = sim.simulate(np.tile(theta.astype(np.float64), (m, 1)), rng)
        torch.manual_seed(seed + i)
        emulated = emulator.sample(torch.from_numpy(theta), m).numpy()
        scores.append(c2st(simulated, emulated, seed=seed))
    return float(np.mean(scores))


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def sbi_nle(store: simgen.Store, sim: simgen.Simulator, pairs: tuple, quick: bool) -> list[dict]:
    """sbi's NLE (its default MAF) on the same data, with its own early stopping."""
    try:
        import sbi
        from sbi.inference import NLE
    except ImportError:
        return []
    theta, x = torch.from_numpy(store.theta), torch.from_numpy(store.x[:])
    inference = NLE(prior=sim.prior(), show_progress_bars=False)
    epochs = 2 if quick else 10**6
    train = inference.append_simulations(theta, x).train
    train_s, estimator = timed(train, max_num_epochs=epochs, training_batch_size=512)
    th, xx = pairs
    exact = sim.log_likelihood(xx.astype(np.float64), th.astype(np.float64))
    with torch.no_grad():
        learned = estimator.log_prob(torch.from_numpy(xx)[None], condition=torch.from_numpy(th))
    error = float(np.abs(learned[0].numpy() - exact).mean())
    method = f"sbi-{sbi.__version__} NLE"
    n = len(store)
    return [
        record(BENCH, sim.name, method, "density_abs_error_nats", error, "nats", n),
        record(BENCH, sim.name, method, "train_seconds", train_s, "s", n),
    ]


def label(variant: str) -> str:
    """The method name of a variant: ``simgen diffusion`` (eps, continuous time),
    ``simgen diffusion (x0)``, ``simgen diffusion (ddpm)``, ..."""
    family, _, detail = variant.partition("-")
    return f"simgen {family}" + (f" ({detail})" if detail else "")


def run_task(
    name: str,
    n: int,
    epochs: int | None,
    quick: bool,
    records: list,
    variants: list[str],
    include_sbi: bool = True,
) -> None:
    sim = simgen.get_simulator(name)
    DATA.mkdir(exist_ok=True)
    store = simgen.simulate(sim, n, DATA / f"{name}-{n}.h5", seed=0, workers=1, progress=False)
    pairs = held_out(sim, 100 if quick else 1000, seed=1)
    thetas = sim.prior().sample((2 if quick else 10,)).numpy()
    m = 200 if quick else 1000
    raw_s, _ = timed(run_chunk, sim, 2, 0, 2000)
    records.append(
        record(BENCH, name, "simulator", "simulator_samples_per_s", 2000 / raw_s, "samples/s", n)
    )
    for variant in variants:
        family, config = VARIANTS[variant]
        if quick and family == "diffusion":  # a smoke test: the standardisation's fit too
            config = {**config, "affine_steps": min(config.get("affine_steps", 100), 100)}
        train = {} if epochs is None else {"epochs": epochs}
        fit_s, emulator = timed(
            fit, store, family, None, train=train, config=config, progress=False
        )
        method = label(variant)
        emulate_s, _ = timed(emulator.sample, torch.from_numpy(thetas[0]), 10 * m)
        error = density_error(emulator, sim, pairs)
        theta_many, x_many = (torch.from_numpy(np.concatenate([a] * 10)) for a in pairs)
        with torch.no_grad():
            lp_s, _ = timed(emulator.log_prob, x_many, theta_many)
        score = emulation_c2st(emulator, sim, thetas, m, seed=0)
        metrics = emulator.info["metrics"]
        records += [
            record(BENCH, name, method, "density_abs_error_nats", error, "nats", n),
            record(BENCH, name, method, "emulation_c2st", score, "accuracy", n),
            record(
                BENCH,
                name,
                method,
                "train_samples_per_s",
                metrics["train_samples_per_s"],
                "samples/s",
                n,
            ),
            record(BENCH, name, method, "train_seconds", fit_s, "s", n),
            record(
                BENCH, name, method, "emulate_samples_per_s", 10 * m / emulate_s, "samples/s", n
            ),
            record(BENCH, name, method, "log_prob_per_s", len(x_many) / lp_s, "evals/s", n),
        ]
        if family == "vae":
            spread = estimate_spread(emulator, pairs)
            records.append(
                record(BENCH, name, method, "density_estimate_spread_nats", spread, "nats", n)
            )
    if name == "gaussian_linear" and include_sbi:
        records += sbi_nle(store, sim, pairs, quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--n", type=int, default=100_000, help="simulations per task")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: fit's)")
    parser.add_argument(
        "--families", nargs="*", default=list(FAMILIES), choices=list(VARIANTS),
        help="families, or variants (flow-gaussian, vae-gaussian, diffusion-x0, ...)",
    )  # fmt: skip
    parser.add_argument("--no-sbi", action="store_true", help="skip sbi's NLE")
    args = parser.parse_args()
    n, epochs = (2000, 2) if args.quick else (args.n, args.epochs)
    tasks = ["gaussian_linear"] if args.quick else args.tasks
    torch.manual_seed(0)
    name = "emulators-quick" if args.quick else "emulators"
    ours = {label(v) for v in args.families} | {"simulator"}

    old, records, done = load(name, args.out), [], set()
    for task in tasks:
        run_task(task, n, epochs, args.quick, records, args.families, not args.no_sbi)
        done.add(task)
        kept = still_valid(old, done, ours, sbi=not args.no_sbi)
        path = save(name, kept + records, args.out or RESULTS)
    print(markdown_table(kept + records))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
