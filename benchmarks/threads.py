"""How fast does a CPU fit train with one torch thread and with one per core, alone and beside
another busy process?

A flow on two_moons (10,000 rows, the defaults a user gets) and, for a network with
convolutions, a VAE on 16x16 cosmology maps (the conv VAE), each trained for a fixed number of
epochs with ``threads`` set to 1 and to the number of cores, once on an idle machine and once
beside one process that keeps a core busy. Metric: ``seconds_per_step`` of training (the fit's
own epoch times over its steps, validation included). The default (:func:`simgen.threads.
fit_threads`) is one thread for MLPs and all cores but one for convolutional networks.

Run: ``python -m benchmarks.threads [--quick]``; writes ``benchmarks/results/threads.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from pathlib import Path

import simgen
from benchmarks.records import markdown_table, record, save

BENCH = "threads"
DATA = Path(__file__).parent / ".data"
CASES = {  # task: (simulator options, rows, family, epochs)
    "two_moons": ({}, 10_000, "flow", 3),
    "cosmology": ({"size": 16}, 2_000, "vae", 2),
}


def _spin() -> None:
    while True:
        pass


def seconds_per_step(store: simgen.Store, family: str, epochs: int, threads: int) -> float:
    """Training seconds per optimiser step of a fit of ``epochs`` epochs on ``threads``."""
    train = {"epochs": epochs, "threads": threads, "patience": epochs}
    emulator = simgen.fit(store, family, train=train, device="cpu", progress=False)
    metrics = emulator.info["metrics"]
    steps = epochs * -(-int(0.9 * len(store)) // 256)
    return sum(metrics["seconds"]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny fits")
    parser.add_argument("--out", type=Path, default=None, help="folder for threads.json")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    DATA.mkdir(exist_ok=True)
    records = []
    for task, (options, rows, family, epochs) in CASES.items():
        rows, epochs = (500, 1) if args.quick else (rows, epochs)
        sim = simgen.get_simulator(task, **options)
        path = DATA / f"threads-{task}-{rows}.h5"
        store = simgen.simulate(sim, rows, path, seed=0, workers=1, progress=False)
        seconds_per_step(store, family, 1, 1)  # warm-up: first calls, page cache
        for busy in (False, True):
            neighbour = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
            if busy:
                neighbour.start()
            try:
                for threads in sorted({1, cores}):
                    value = seconds_per_step(store, family, epochs, threads)
                    method = f"simgen {family} (threads={threads}, {'busy' if busy else 'idle'})"
                    records.append(
                        record(BENCH, task, method, "seconds_per_step", value, "s", rows)
                    )
            finally:
                if busy:
                    neighbour.terminate()
    out = save(BENCH + ("-quick" if args.quick else ""), records, args.out)
    print(markdown_table(records))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
