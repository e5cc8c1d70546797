"""Data-parallel fits under torchrun (gloo on CPU): the ranks agree, the fit is as good as a
one-process fit with the same total batch, one rank writes, and an interrupted run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

import simgen
from simgen.train.loop import fit

HELPER = Path(__file__).parent / "helpers" / "ddp_fit.py"
FLOW = {"transforms": 2, "hidden": [16, 16]}
BATCH, EPOCHS = 128, 3


def torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        *args,
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "moons.h5"
    return simgen.simulate("two_moons", 4000, path, workers=1, progress=False)


def test_two_process_fit_agrees_across_ranks_and_matches_one_process(data, tmp_path):
    out = tmp_path / "model.pt"
    cmd = torchrun(str(HELPER), str(data.path), str(out), str(tmp_path), str(BATCH), str(EPOCHS))
    subprocess.run(cmd, check=True, capture_output=True, timeout=240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # gradients were averaged: both ranks end with the same weights
    for a, b in zip(ranks[0]["state"].values(), ranks[1]["state"].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ranks[0]["metrics"]["processes"] == 2
    # one writer: the model and nothing else (the checkpoint is removed at the end)
    assert sorted(
        p.name for p in tmp_path.iterdir() if "pt" in p.name and "rank" not in p.name
    ) == ["model.pt"]
    saved = simgen.load(out).state_dict()
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)
    # the one-process fits with the same total batch differ by seed only; the two-process
    # fit is one more such draw: it must fall in the 99% prediction interval of those fits,
    # mean +- t(0.995, k - 1) * s * sqrt(1 + 1 / k) (validation rows are the same)
    train = {"batch_size": BATCH, "epochs": EPOCHS, "patience": 1000}
    singles = np.array(
        [
            fit(
                data, "flow", None, train={**train, "seed": seed}, config=FLOW, progress=False
            ).info["metrics"]["best_val_loss"]
            for seed in range(4)
        ]
    )
    k = len(singles)
    half_width = scipy.stats.t.ppf(0.995, k - 1) * singles.std(ddof=1) * np.sqrt(1 + 1 / k)
    assert abs(ranks[0]["metrics"]["best_val_loss"] - singles.mean()) <= half_width


def test_interrupted_torchrun_fit_resumes(data, tmp_path):
    out = tmp_path / "model.pt"
    ckpt = tmp_path / "model.pt.ckpt"
    cmd = torchrun(
        "-m", "simgen", "fit", str(data.path), "-o", str(out), "--epochs", "12",
        "--batch-size", "400", "--device", "cpu", "--quiet",
    )  # fmt: skip
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not ckpt.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the fit ended before it could be interrupted"
    run.send_signal(signal.SIGTERM)  # torchrun passes it on to the ranks, like a preemption
    run.communicate(timeout=60)
    assert not out.exists()
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["model.pt.ckpt"]
    interrupted_at = torch.load(ckpt, weights_only=True)["epoch"]
    finish = [*cmd[: cmd.index("--quiet")], "--json"]
    done = subprocess.run(finish, check=False, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout)  # printed once: by rank 0 only
    assert metrics["resumed_from_epoch"] == interrupted_at + 1
    assert metrics["processes"] == 2 and metrics["epochs_run"] > interrupted_at + 1
    assert out.exists() and not ckpt.exists()
    assert os.environ.get("RANK") is None  # the test process itself never joined a group
