"""How fast does ``simgen.simulate`` write rows, against the simulator alone in memory?

* ``pipeline_efficiency``: rows/s of ``simgen.simulate`` (prior draws, simulation, validation,
  crash-safe journal, HDF5, one worker) divided by rows/s of the same simulator called in memory
  on the same tasks (prior draws + ``simulate``, nothing kept), on two_moons; best of 3 each.
* ``worker_scaling``: rows/s with k worker processes divided by rows/s with one, on a slow
  simulator (lotka_volterra's exact Gillespie simulation), process start-up included.

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
from simgen.simulation import default_workers


def raw_rate(name: str, n: int, chunk_size: int) -> float:
    """Rows/s of prior draws + ``simulate`` in memory, task by task, keeping nothing."""
    sim = simgen.get_simulator(name)
    prior = sim.prior()
    start = time.perf_counter()
    for index in range(0, n, chunk_size):
        m = min(chunk_size, n - index)
        theta = prior.sample((m,)).numpy().astype(np.float64)
        sim.simulate(theta, np.random.default_rng(index))
    return n / (time.perf_counter() - start)


def pipeline_rate(
    name: str, n: int, workers: int, folder: Path, chunk_size: int | None = None
) -> float:
    """Rows/s of ``simgen.simulate`` into a new file."""
    path = folder / f"{name}-{workers}-{time.perf_counter_ns()}.h5"
    start = time.perf_counter()
    simgen.simulate(name, n, path, workers=workers, chunk_size=chunk_size, progress=False)
    rate = n / (time.perf_counter() - start)
    path.unlink()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    torch.manual_seed(0)
    n_fast = 100_000 if args.quick else 1_000_000
    n_slow = 400 if args.quick else 10_000
    repeats = 1 if args.quick else 3
    records = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        chunk = simgen.get_simulator("two_moons").chunk_size
        raw = max(raw_rate("two_moons", n_fast, chunk) for _ in range(repeats))
        piped = max(pipeline_rate("two_moons", n_fast, 1, folder) for _ in range(repeats))
        bench = "simulate"
        records += [
            record(
                bench,
                "two_moons",
                "simulator in memory",
                "simulator_samples_per_s",
                raw,
                "rows/s",
                n_fast,
            ),
            record(
                bench,
                "two_moons",
                "simgen simulate, 1 worker",
                "rows_per_s",
                piped,
                "rows/s",
                n_fast,
            ),
            record(
                bench,
                "two_moons",
                "simgen simulate, 1 worker",
                "pipeline_efficiency",
                piped / raw,
                "ratio",
                n_fast,
            ),
        ]
        rates = {}
        for workers in sorted({1, 2, default_workers()}):
            rates[workers] = pipeline_rate("lotka_volterra", n_slow, workers, folder)
            records.append(
                record(
                    bench,
                    "lotka_volterra",
                    f"simgen simulate, {workers} worker{'s' if workers > 1 else ''}",
                    "rows_per_s",
                    rates[workers],
                    "rows/s",
                    n_slow,
                )
            )
        records.append(
            record(
                bench,
                "lotka_volterra",
                "simulator in memory",
                "simulator_samples_per_s",
                raw_rate("lotka_volterra", n_slow // 4, 200),
                "rows/s",
                n_slow // 4,
            )
        )
        for workers, rate in rates.items():
            if workers > 1:
                records.append(
                    record(
                        bench,
                        "lotka_volterra",
                        f"simgen simulate, {workers} worker{'s' if workers > 1 else ''}",
                        "worker_scaling",
                        rate / rates[1],
                        "x (vs 1 worker)",
                        n_slow,
                    )
                )
    path = save("simulate" if not args.quick else "simulate-quick", records, args.out)
    print(markdown_table(records))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
