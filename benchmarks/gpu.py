"""What a GPU gives: the CUDA path end to end, bf16 autocast against float32, speed against the CPU.

Every fit below trains on the data read once onto the device, with the same seed for the same
number of epochs (``--epochs``), and is then evaluated on the device (float32):

* ``density_abs_error_nats`` (gaussian_linear: 10-D, constant noise; slcp: 8-D, noise down to
  2e-4): mean ``|learned - exact| log p(x | theta)`` over 1,000 held-out pairs, for each family
  trained with ``precision = "bf16"`` (autocast) and ``"fp32"``: does bf16 cost accuracy?
* ``train_samples_per_s`` of those fits at ``batch_size`` 512; the flow's at 512 and 4,096 on
  the GPU (bf16) and on this machine's CPU (all its cores) give ``gpu_train_speedup`` per batch
  size.
* ``emulate_samples_per_s`` / ``log_prob_per_s``: 100,000 draws at one theta, the log density of
  the 1,000 held-out pairs.
* The cosmology field (32 x 32 maps), diffusion with its U-Net: training samples/s in bf16 and
  fp32, sampling maps/s.
* ``posterior_samples_per_s``: 1,000 posterior draws (slice, 100 chains, 100 warm-up steps)
  with one gaussian_linear flow on the GPU and on the CPU, and ``gpu_posterior_speedup``.

Each record's ``method`` names the device (``torch.cuda.get_device_name``). Without CUDA the
script measures the CPU alone (``--quick`` does so in the test suite).

Run: ``python -m benchmarks.gpu [--quick] [--epochs 20] [--steps likelihood batch field
posterior] [--out DIR]``; writes ``benchmarks/results/gpu.json`` after each step, replacing only
the records the run measured again (a device lease too short for all steps can run the rest
later).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import simgen
from benchmarks.emulators import density_error, held_out
from benchmarks.records import load, markdown_table, record, save
from simgen.inference.posterior import Posterior

BENCH = "gpu"
TASKS = {"gaussian_linear": ["flow", "diffusion", "vae"], "slcp": ["flow", "diffusion"]}


def synchronized(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Seconds of ``fn(*args, **kwargs)``, CUDA work included, and its result."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def dataset(task: str, folder: Path, quick: bool) -> simgen.Store:
    """The task's training rows (2,000 quick, else 100,000), simulated once per run."""
    path = folder / f"{task}.h5"
    if path.exists():
        return simgen.open_store(path)
    n = 2_000 if quick else 100_000
    return simgen.simulate(task, n, path, seed=0, workers=1 if quick else 8, progress=False)


def fit(
    store: simgen.Store, family: str, device: str, epochs: int, **train: Any
) -> simgen.Emulator:
    """A fit of ``family`` on ``device`` for ``epochs`` epochs (batch 512 unless ``train``
    says)."""
    train = {"epochs": epochs, "patience": epochs, "batch_size": 512, **train}
    return simgen.fit(store, family, None, train=train, device=device, progress=False)


def likelihood_tasks(
    tasks: dict[str, list[str]], devices: dict[str, str], args: Namespace, folder: Path
) -> list[dict]:
    """Accuracy per precision, and speed, of each family (``tasks[task]``) on each
    exact-likelihood task."""
    records = []
    for task, families in tasks.items():
        sim = simgen.get_simulator(task)
        store = dataset(task, folder, args.quick)
        n = len(store)
        pairs = held_out(sim, 100 if args.quick else 1000, seed=1)
        theta0 = torch.from_numpy(pairs[0][0])
        for family in families:
            for name, device in devices.items():
                for precision in ("bf16", "fp32") if name != "cpu" else ("fp32",):
                    emulator = fit(store, family, device, args.epochs, precision=precision)
                    method = f"simgen {family} ({name}, {precision})"
                    m = 1_000 if args.quick else 100_000
                    emulate_s, _ = synchronized(emulator.sample, theta0, m)
                    lp_s, error = synchronized(density_error, emulator, sim, pairs)
                    speed = emulator.info["metrics"]["train_samples_per_s"]
                    records += [
                        record(BENCH, task, method, "density_abs_error_nats", error, "nats", n),
                        record(BENCH, task, method, "train_samples_per_s", speed, "samples/s", n),
                        record(BENCH, task, method, "emulate_samples_per_s", m / emulate_s,
                               "samples/s", n),
                        record(BENCH, task, method, "log_prob_per_s", len(pairs[0]) / lp_s,
                               "evals/s", n),
                    ]  # fmt: skip
                    print(f"{task} {method}: {error:.3f} nats, {speed:,.0f} samples/s", flush=True)
    return records


def batch_speed(devices: dict[str, str], args: Namespace, folder: Path) -> list[dict]:
    """The flow's training speed at batch 512 and 4,096 on each device, and the GPU's speed-up.
    The GPU fits run in bf16, as in the records of 2026-11-30 (bf16 was then the trainer's only
    precision on CUDA); fp32, now the default for MLPs, trained this flow 7% faster there
    (``likelihood`` step)."""
    records, speeds = [], {}
    store = dataset("gaussian_linear", folder, args.quick)
    for name, device in devices.items():
        for batch in (512, 4096):
            emulator = fit(store, "flow", device, args.epochs, batch_size=batch, precision="bf16")
            speeds[name, batch] = emulator.info["metrics"]["train_samples_per_s"]
            method = f"simgen flow ({name}, batch {batch})"
            records.append(
                record(BENCH, "gaussian_linear", method, "train_samples_per_s",
                       speeds[name, batch], "samples/s", len(store))
            )  # fmt: skip
    gpu = next((name for name in devices if name != "cpu"), None)
    if gpu is not None:
        for batch in (512, 4096):
            records.append(
                record(BENCH, "gaussian_linear", f"simgen flow ({gpu} / cpu, batch {batch})",
                       "gpu_train_speedup", speeds[gpu, batch] / speeds["cpu", batch], "ratio",
                       len(store))
            )  # fmt: skip
    return records


def field(devices: dict[str, str], args: Namespace, folder: Path) -> list[dict]:
    """Diffusion (U-Net) on 32 x 32 cosmology maps: training and sampling speed per precision."""
    records = []
    gpu = {name: dev for name, dev in devices.items() if name != "cpu"}
    if not gpu:
        return records
    n = 2_000 if args.quick else 20_000
    sim = simgen.get_simulator("cosmology")
    store = simgen.simulate(sim, n, folder / "cosmology.h5", seed=0, workers=8, progress=False)
    theta = torch.tensor([0.3, 0.8])
    for name, device in gpu.items():
        for precision in ("bf16", "fp32"):
            emulator = fit(store, "diffusion", device, args.epochs, precision=precision)
            maps = 64 if args.quick else 1_024
            seconds, _ = synchronized(emulator.sample, theta, maps)
            method = f"simgen diffusion U-Net ({name}, {precision})"
            records += [
                record(BENCH, "cosmology32", method, "train_samples_per_s",
                       emulator.info["metrics"]["train_samples_per_s"], "samples/s", n),
                record(BENCH, "cosmology32", method, "emulate_samples_per_s", maps / seconds,
                       "samples/s", n),
                record(BENCH, "cosmology32", method, "best_val_loss",
                       emulator.info["metrics"]["best_val_loss"], "loss", n),
            ]  # fmt: skip
    return records


def posterior_speed(devices: dict[str, str], args: Namespace, folder: Path) -> list[dict]:
    """Posterior draws/s (the engine's defaults, 10,000 draws) on each device, with one
    flow and its proposal."""
    records, rates = [], {}
    sim = simgen.get_simulator("gaussian_linear")
    store = dataset("gaussian_linear", folder, args.quick)
    emulator = fit(store, "flow", "cpu", args.epochs)
    x_obs = held_out(sim, 1, seed=2)[1][0]
    n = 100 if args.quick else 10_000
    for name, device in devices.items():
        posterior = Posterior(emulator.to(device))
        seconds, result = synchronized(posterior.sample, x_obs, n, progress=False)
        rates[name] = n / seconds
        records.append(
            record(BENCH, "gaussian_linear", f"simgen flow posterior ({name})",
                   "posterior_samples_per_s", rates[name], "samples/s", len(store))
        )  # fmt: skip
        print(f"posterior on {name}: {seconds:.1f} s by {result.diagnostics['sampler']}, ESS "
              f"{result.diagnostics['ess']:.0f}", flush=True)  # fmt: skip
    gpu = next((name for name in devices if name != "cpu"), None)
    if gpu is not None:
        records.append(
            record(BENCH, "gaussian_linear", f"simgen flow posterior ({gpu} / cpu)",
                   "gpu_posterior_speedup", rates[gpu] / rates["cpu"], "ratio", len(store))
        )  # fmt: skip
    return records


STEPS = ("likelihood", "batch", "field", "posterior")


def merged(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with every record that ``new`` measured again (same task, method, metric)
    replaced: a run of some steps keeps the others' records."""
    key = lambda r: (r["task"], r["method"], r["metric"])
    redone = {key(r) for r in new}
    return [r for r in old if key(r) not in redone] + new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per fit")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    args = parser.parse_args()
    devices = {"cpu": "cpu"}
    if torch.cuda.is_available():
        devices = {torch.cuda.get_device_name(0): "cuda", **devices}
    if args.quick:
        args.epochs = 1
    name = "gpu-quick" if args.quick else "gpu"
    old, records = load(name, args.out), []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gpu_only = {k: v for k, v in devices.items() if k != "cpu"} or devices
        steps = {
            "likelihood": lambda: likelihood_tasks(TASKS, gpu_only, args, folder),
            "batch": lambda: batch_speed(devices, args, folder),
            "field": lambda: field(devices, args, folder),
            "posterior": lambda: posterior_speed(devices, args, folder),
        }
        for step in STEPS:
            if step in args.steps:
                records += steps[step]()
                path = save(name, merged(old, records), args.out)  # a stopped run keeps them
    print(markdown_table(records))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
