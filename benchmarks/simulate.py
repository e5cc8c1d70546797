"""How fast does ``simgen.simulate`` write rows, against the simulator alone in memory?

* ``pipeline_efficiency``: rows/s of ``simgen.simulate`` (prior draws, simulation, validation,
  crash-safe journal, HDF5, one worker) divided by rows/s of the same simulator called in memory
  on the same tasks (prior draws + ``simulate``, nothing kept), on two_moons; after a warm-up,
  best of 7 interleaved runs each. Both draw with one torch thread, as one worker does (on
  the 2-core machine of the results, two made the in-memory loop slower, not faster).
  With one worker, simgen draws a task's parameters in a thread while the previous task
  simulates; ``vs_simulate_alone`` divides the same pipeline rate by ``simulate`` alone on
  parameters drawn beforehand (untimed), the most such overlap could give.
  Also on two_moons at 1e7 rows (fixed costs amortised; best of 5) and on slower simulators
  (oscillator, lotka_volterra), where writing is a smaller share of the work.
* ``worker_scaling``: rows/s with k worker processes divided by rows/s with one, process
  start-up included, best of 2 interleaved rounds each: on a slow simulator (lotka_volterra's
  exact Gillespie simulation), and on a fast one (two_moons, 2e7 rows), where worker processes
  send data back faster than one process can take it in.
* ``default_vs_best``: rows/s without ``workers`` (simgen chooses: this process, or a pool of
  all cores where that finishes sooner) divided by the best of 1 and all cores, on both.

Run: ``python -m benchmarks.simulate [--quick]``; writes ``benchmarks/results/simulate.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import simgen
from benchmarks.records import markdown_table, record, save
from simgen.data.simulation import default_workers
from simgen.threads import torch_threads


def raw_rate(name: str, n: int, chunk_size: int) -> float:
    """Rows/s of prior draws + ``simulate`` in memory, task by task, keeping nothing, on one
    torch thread as in one worker."""
    sim = simgen.get_simulator(name)
    prior = sim.prior()
    with torch_threads(1):
        start = time.perf_counter()
        for index in range(0, n, chunk_size):
            m = min(chunk_size, n - index)
            theta = prior.sample((m,)).numpy().astype(np.float64)
            sim.simulate(theta, np.random.default_rng(index))
        return n / (time.perf_counter() - start)


def simulate_alone_rate(name: str, n: int, chunk_size: int) -> float:
    """Rows/s of ``simulate`` alone in memory, task by task, on one torch thread, on
    parameters drawn from the prior beforehand (not timed), keeping nothing."""
    sim = simgen.get_simulator(name)
    prior = sim.prior()
    with torch_threads(1):
        thetas = [
            prior.sample((min(chunk_size, n - index),)).numpy().astype(np.float64)
            for index in range(0, n, chunk_size)
        ]
        start = time.perf_counter()
        for index, theta in enumerate(thetas):
            sim.simulate(theta, np.random.default_rng(index))
        return n / (time.perf_counter() - start)


def pipeline_rate(
    name: str, n: int, workers: int | None, folder: Path, chunk_size: int | None = None
) -> float:
    """Rows/s of ``simgen.simulate`` into a new file (``workers=None``: simgen chooses)."""
    path = folder / f"{name}-{workers}-{time.perf_counter_ns()}.h5"
    start = time.perf_counter()
    simgen.simulate(name, n, path, workers=workers, chunk_size=chunk_size, progress=False)
    rate = n / (time.perf_counter() - start)
    path.unlink()
    return rate


def efficiency(name: str, n: int, repeats: int, folder: Path) -> list[dict]:
    """Records of the in-memory rates (prior draws + ``simulate``; ``simulate`` alone), the
    one-worker pipeline rate and its ratios to them."""
    chunk = simgen.get_simulator(name).chunk_size
    raw_rate(name, min(n, chunk), chunk)  # warm-up: imports, allocator, caches
    simulate_alone_rate(name, min(n, chunk), chunk)
    pipeline_rate(name, min(n, chunk), 1, folder)
    raws, alones, pipes = [], [], []
    for _ in range(repeats):  # interleaved, so that a slow spell of the machine hits all
        raws.append(raw_rate(name, n, chunk))
        alones.append(simulate_alone_rate(name, n, chunk))
        pipes.append(pipeline_rate(name, n, 1, folder))
    raw, alone, piped = max(raws), max(alones), max(pipes)
    one, rate = "simgen simulate, 1 worker", "simulator_samples_per_s"
    return [
        record(BENCH, name, "simulator in memory", rate, raw, "rows/s", n),
        record(BENCH, name, "simulate alone in memory", rate, alone, "rows/s", n),
        record(BENCH, name, one, "rows_per_s", piped, "rows/s", n),
        record(BENCH, name, one, "pipeline_efficiency", piped / raw, "ratio", n),
        record(BENCH, name, one, "vs_simulate_alone", piped / alone, "ratio", n),
    ]


def scaling(name: str, n: int, repeats: int, folder: Path) -> list[dict]:
    """Records of rows/s with 1, 2, ... all cores worker processes and without ``workers``
    (best of ``repeats`` interleaved rounds), the gains over one, and the default's rate over
    the best of the others."""
    records, rates = [], {}
    counts = sorted({1, 2, default_workers()})
    for _ in range(repeats):  # interleaved, so that a slow spell of the machine hits all counts
        for workers in [*counts, None]:
            rate = pipeline_rate(name, n, workers, folder)
            rates[workers] = max(rate, rates.get(workers, 0.0))
    for workers in counts:
        method = f"simgen simulate, {workers} worker{'s' if workers > 1 else ''}"
        records.append(record(BENCH, name, method, "rows_per_s", rates[workers], "rows/s", n))
        if workers > 1:
            gain = rates[workers] / rates[1]
            records.append(record(BENCH, name, method, "worker_scaling", gain, "x vs 1", n))
    method, best = "simgen simulate, default workers", max(rates[k] for k in counts)
    records.append(record(BENCH, name, method, "rows_per_s", rates[None], "rows/s", n))
    records.append(
        record(BENCH, name, method, "default_vs_best", rates[None] / best, "x vs best", n)
    )
    return records


BENCH = "simulate"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    torch.manual_seed(0)
    quick = args.quick
    records = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        records += efficiency(
            "two_moons", 100_000 if quick else 1_000_000, 1 if quick else 7, folder
        )
        if not quick:
            records += efficiency("two_moons", 10_000_000, 5, folder)
            records += efficiency("oscillator", 20_000, 2, folder)
        records += efficiency("lotka_volterra", 200 if quick else 2_000, 1, folder)
        records += scaling("lotka_volterra", 400 if quick else 10_000, 1 if quick else 2, folder)
        records += scaling(
            "two_moons", 200_000 if quick else 20_000_000, 1 if quick else 2, folder
        )
    path = save("simulate-quick" if quick else "simulate", records, args.out)
    print(markdown_table(records))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
