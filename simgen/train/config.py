"""The settings of :func:`simgen.fit`: the training configuration, the device and the
arithmetic it trains in, and the learning-rate schedule."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simgen.errors import UsageError

__all__ = [
    "PRECISIONS",
    "TrainConfig",
    "cosine_lr",
    "read_config",
    "resolve_device",
    "uses_bf16",
]


PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """Settings of the training loop.

    Attributes:
        epochs: Maximum passes over the training rows.
        batch_size: Rows per step.
        lr: Peak learning rate of AdamW, decayed on a cosine to 1% over ``epochs`` or over
            ``max_seconds``, whichever comes first.
        weight_decay: AdamW weight decay.
        clip: Gradient-norm clip.
        ema_decay: Decay of the exponential moving average of the weights.
        patience: Epochs without validation improvement before stopping.
        val_fraction: Share of rows held out (the last rows: rows are i.i.d. from the prior).
        seed: Seed of initialisation, shuffling and noise.
        max_seconds: Stop after this much training time (None: no limit). Results then
            depend on the machine's speed and load: budget in ``epochs`` for reproducible ones.
        threads: CPU threads of a fit on the CPU (None: one for MLP networks, one per core
            for networks with convolutions; :func:`simgen.threads.fit_threads`).
        in_memory_bytes: Data sets up to this size (per process) are read into the training
            device's memory once; larger ones stream from HDF5 every epoch.
        shuffle_buffer: Chunk-aligned spans of the file whose rows a streamed epoch mixes (the
            memory a streamed epoch holds is this many spans).
        compile: Compile the training loss with ``torch.compile`` (worth it on GPUs, for long
            fits; the first steps pay the compilation).
        precision: Arithmetic of the training forward pass on CUDA: ``"bf16"`` (autocast: matrix
            products and convolutions in bfloat16, every network's output layer and the loss
            in float32), ``"fp32"``, or ``"auto"``: bf16 for networks with convolutions (the
            U-Net and the convolutional VAE on maps), fp32 for the rest (MLPs on vectors: on an
            H200, bf16 trained them 4-25% slower to the same density error,
            ``benchmarks/results/gpu.json``). CPU fits always run in float32; evaluation
            (``log_prob``, ``sample``) always does.
    """

    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    clip: float = 5.0
    ema_decay: float = 0.995
    patience: int = 20
    val_fraction: float = 0.1
    seed: int = 0
    max_seconds: float | None = None
    threads: int | None = None
    in_memory_bytes: int = 2 << 30
    shuffle_buffer: int = 4
    compile: bool = False
    precision: str = "auto"


def read_config(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a TOML file with tables ``[train]`` and ``[model]`` -> (train, model) dicts."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"cannot read config {path}: {error}") from None
    unknown = set(data) - {"train", "model"}
    if unknown:
        raise UsageError(
            f"config {path}: unknown table(s) {sorted(unknown)}; use [train], [model]"
        )
    return dict(data.get("train", {})), dict(data.get("model", {}))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> the environment variable ``SIMGEN_DEVICE`` when set (``cpu`` keeps a GPU
    free, ``cuda:1`` picks one), else CUDA when present, else CPU; ``"cuda"`` without a GPU is
    refused."""
    if device == "auto":
        chosen = os.environ.get("SIMGEN_DEVICE", "")
        if chosen and chosen != "auto":
            try:
                return resolve_device(chosen)
            except UsageError as error:
                raise UsageError(f"SIMGEN_DEVICE={chosen}: {error}") from None
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but PyTorch sees no CUDA GPU; use auto or cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device '{device}'; use auto, cpu or cuda")
    return torch.device(device)


def uses_bf16(net: torch.nn.Module, device: torch.device, tc: TrainConfig) -> bool:
    """Whether the training forward pass runs under bf16 autocast: on CUDA only, for
    ``precision = "bf16"``, or ``"auto"`` and a network with convolutions."""
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    wanted = tc.precision == "bf16" or (tc.precision == "auto" and convolutional)
    return device.type == "cuda" and wanted


def cosine_lr(peak: float, progress: float) -> float:
    """Cosine decay from ``peak`` to ``peak / 100`` as ``progress`` goes from 0 to 1."""
    progress = min(max(progress, 0.0), 1.0)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
