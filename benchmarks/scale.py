"""Does training scale past memory, does the data path keep up, how fast is a field emulator?

* ``fit_peak_rss_ratio``: peak memory of ``simgen fit`` streaming one epoch over a data set 4x
  larger than a memory cap, over the same on a set 4x smaller (the size of the cap). The cap is
  the address-space limit (``RLIMIT_AS``) of the fit process, so a fit that tried to hold the
  data would fail; memory is the proportional set size (PSS: resident memory, shared pages split
  between processes) summed over the fit and any child process, sampled every 20 ms. Flat memory
  gives ~1; memory growing with the data would give up to ~4. Both fits stream
  (``in_memory_bytes = 0``).
* ``loader_efficiency``: rows/s that the fit's data path delivers (prefetch thread, chunk-shuffle
  buffer, standardisation; no model) over rows/s of a raw sequential h5py read of the same file
  in chunk-aligned slices; both after a warm-up read, so both read from the page cache.
* ``train_samples_per_s`` / ``sample_samples_per_s``: the field emulator (a VAE on 64x64 maps)
  training and sampling on the device this run had (see each record's ``method``).

The data are "speckle" maps, ``x = mu + exp(log_sigma) * noise`` on a 64x64 grid (16 KiB a
row), fast to simulate so the benchmark measures the training side.

Run: ``python -m benchmarks.scale [--quick] [--cap-gib 2]``; writes
``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import torch

import simgen
from benchmarks.records import markdown_table, record, save
from simgen.data.simulator import box_uniform
from simgen.train.batches import TrainingData
from simgen.train.config import TrainConfig, resolve_device
from simgen.train.distributed import Ranks

BENCH = "scale"
ROW_BYTES = 4 * 64 * 64


class Speckle(simgen.Simulator):
    """White-noise maps with a parameterised level and amplitude: ``(mu, log_sigma)`` ->
    ``size x size`` pixels ``mu + exp(log_sigma) * N(0, 1)``."""

    name = "speckle"
    parameters = ("mu", "log_sigma")
    chunk_size = 2048

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.x_shape = (size, size)

    def prior(self) -> torch.distributions.Distribution:
        return box_uniform([-1.0, -1.0], [1.0, 1.0])

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal((len(theta), self.size, self.size), dtype=np.float32)
        return theta[:, :1, None] + np.exp(theta[:, 1:, None]) * noise


def _pss(pid: int) -> int:
    """Proportional set size of a process in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def peak_memory(cmd: list[str], cap: int | None, period: float = 0.02) -> int:
    """Run ``cmd`` under an address-space cap; the peak over time of its processes' summed PSS,
    sampled every ``period`` seconds.

    Raises:
        RuntimeError: the command failed (e.g. it ran out of the capped memory).
    """

    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    if cap is not None:  # set before the child has imported anything large; inherited by forks
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (cap, cap))
    peak = 0

    def watch() -> None:
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, sum(_pss(p) for p in _family(proc.pid)))
            time.sleep(period)

    watcher = threading.Thread(target=watch)
    watcher.start()
    _, err = proc.communicate()
    watcher.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return peak


def fit_command(data: Path, folder: Path) -> list[str]:
    """``simgen fit`` of one streamed epoch of a VAE on ``data``."""
    config = folder / "stream.toml"
    config.write_text("[train]\nin_memory_bytes = 0\nepochs = 1\n[model]\nhidden = [256, 256]\n")
    out = folder / f"{data.stem}.pt"
    return [sys.executable, "-m", "simgen", "fit", str(data), "-o", str(out), "--model", "vae",
            "--config", str(config), "--device", "cpu", "--quiet"]  # fmt: skip


def raw_read_rate(path: Path) -> float:
    """Rows/s of reading ``theta`` and ``x`` in order, one HDF5 chunk of rows at a time."""
    with h5py.File(path, "r") as f:
        theta, x = f["theta"], f["x"]
        block, n = x.chunks[0], len(x)
        start = time.perf_counter()
        for lo in range(0, n, block):
            theta[lo : lo + block], x[lo : lo + block]
        return n / (time.perf_counter() - start)


def loader_rate(path: Path) -> float:
    """Rows/s of one training epoch of fit's data path, with no model."""
    store = simgen.open_store(path)
    data = TrainingData(store, TrainConfig(in_memory_bytes=0), Ranks(torch.device("cpu")))
    rows, start = 0, time.perf_counter()
    for v, _ in data.epoch(seed=0):
        rows += len(v)
    return rows / (time.perf_counter() - start)


def field_throughput(path: Path, device: str, epochs: int, n: int) -> dict[str, float]:
    """Training samples/s (``epochs`` epochs) and sampling samples/s (``n`` maps) of the field
    VAE."""
    emulator = simgen.fit(
        path,
        "vae",
        None,
        train={"epochs": epochs, "patience": epochs},
        config={"hidden": [256, 256]},
        device=device,
        progress=False,
    )
    theta = torch.zeros(2, device=emulator.theta_mean.device)
    emulator.sample(theta, 64)  # warm-up
    if emulator.theta_mean.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    emulator.sample(theta, n)
    if emulator.theta_mean.device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "train_samples_per_s": emulator.info["metrics"]["train_samples_per_s"],
        "sample_samples_per_s": n / (time.perf_counter() - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--cap-gib", type=float, default=2.0, help="memory cap (RLIMIT_AS)")
    parser.add_argument("--device", default="auto", help="device of the throughput fit")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the throughput fit")
    parser.add_argument("--workdir", type=Path, default=None, help="where the data go")
    args = parser.parse_args()
    # quick: no cap (a capped Python with torch needs ~1.5 GiB), 1 MiB vs 4 MiB of data, memory
    # sampled every 0.1 s (the sampling itself costs CPU), 256 maps sampled
    cap = None if args.quick else int(args.cap_gib * 2**30)
    small_bytes = 2**20 if args.quick else cap
    period = 0.1 if args.quick else 0.02
    records = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        sets = {}
        for label, nbytes in (("small", small_bytes), ("big", 4 * small_bytes)):
            sets[label] = folder / f"{label}.h5"
            n = nbytes // ROW_BYTES
            simgen.simulate(Speckle(), n, sets[label], workers=1, progress=not args.quick)
        memory = {
            label: peak_memory(fit_command(p, folder), cap, period) for label, p in sets.items()
        }
        rows = {label: len(simgen.open_store(path)) for label, path in sets.items()}
        records.append(
            record(BENCH, "speckle64", "simgen vae", "fit_peak_rss_ratio",
                   memory["big"] / memory["small"], "ratio", rows["big"])
        )  # fmt: skip
        for label, value in memory.items():
            records.append(
                record(BENCH, "speckle64", f"simgen vae ({label} set)", "fit_peak_memory",
                       value / 2**20, "MiB", rows[label])
            )  # fmt: skip
        big = sets["big"]
        raw_read_rate(big)  # warm the page cache
        raw, loader = raw_read_rate(big), loader_rate(big)
        records.append(
            record(BENCH, "speckle64", "simgen loader", "loader_efficiency", loader / raw,
                   "ratio", rows["big"])
        )  # fmt: skip
        records.append(
            record(BENCH, "speckle64", "h5py raw", "read_rows_per_s", raw, "rows/s", rows["big"])
        )
        records.append(
            record(
                BENCH,
                "speckle64",
                "simgen loader",
                "read_rows_per_s",
                loader,
                "rows/s",
                rows["big"],
            )
        )
        dev = resolve_device(args.device)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        epochs, n = (1, 256) if args.quick else (args.epochs, 4096)
        speeds = field_throughput(sets["small"], str(dev), epochs, n)
        for metric, value in speeds.items():
            records.append(
                record(BENCH, "speckle64", f"simgen vae ({name})", metric, value, "samples/s",
                       rows["small"])
            )  # fmt: skip
    path = save("scale-quick" if args.quick else "scale", records, args.out)
    print(markdown_table(records))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
