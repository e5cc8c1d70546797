"""Run under torchrun: ``simgen.fit`` data-parallel, then each rank saves the weights it ended
with to ``<folder>/rank<r>.pt`` so a test can check that the ranks agree.

Usage: torchrun --standalone --nproc-per-node 2 ddp_fit.py DATA MODEL_OUT FOLDER BATCH EPOCHS
"""

import os
import sys

import torch

import simgen

data, out, folder, batch, epochs = sys.argv[1:6]
emulator = simgen.fit(
    data,
    "flow",
    out,
    train={"batch_size": int(batch), "epochs": int(epochs), "patience": 1000},
    config={"transforms": 2, "hidden": [16, 16]},
    device="cpu",
    progress=False,
)
rank = int(os.environ["RANK"])
torch.save(
    {"state": emulator.state_dict(), "metrics": emulator.info["metrics"]},
    f"{folder}/rank{rank}.pt",
)
