"""``fit()``: one training loop for every family.

Each family supplies ``loss(theta, x)`` per sample; the loop owns the rest: standardisation
(statistics from the training rows, saved with the model), a hold-out validation split, AdamW
with a cosine learning-rate schedule, gradient clipping, EMA weights, early stopping on the
validation loss of the EMA weights, bf16 autocast on CUDA, checkpoints to resume from after an
interruption, and a clear stop on a NaN/inf loss instead of a broken model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from simgen.emulator import FAMILIES, Emulator, build_family
from simgen.errors import RunError, UsageError
from simgen.progress import progress_bar
from simgen.store import Store, open_store

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TrainConfig", "fit", "read_config", "resolve_device"]


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
        max_seconds: Stop after this much training time (None: no limit).
        in_memory_bytes: Data sets up to this size are read into memory once; larger ones
            stream from HDF5 in chunk-aligned batches every epoch.
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
    in_memory_bytes: int = 2 << 30


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
    """``"auto"`` -> CUDA when present, else CPU; ``"cuda"`` without a GPU is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but PyTorch sees no CUDA GPU; use auto or cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device '{device}'; use auto, cpu or cuda")
    return torch.device(device)


def _moments(store: Store, stop: int) -> dict[str, Tensor]:
    """Means and standard deviations of theta and flattened x over rows ``[0, stop)``."""
    sums: dict[str, np.ndarray] = {}
    for theta, x in store.batches(65_536, stop=stop):
        for key, value in (("theta", theta), ("x", x.reshape(len(x), -1))):
            v = value.double().numpy()
            sums[key + "1"] = sums.get(key + "1", 0) + v.sum(0)
            sums[key + "2"] = sums.get(key + "2", 0) + (v**2).sum(0)
    out = {}
    for key in ("theta", "x"):
        mean = sums[key + "1"] / stop
        var = np.maximum(sums[key + "2"] / stop - mean**2, 0.0)
        out[f"{key}_mean"] = torch.as_tensor(mean, dtype=torch.float32)
        out[f"{key}_std"] = torch.as_tensor(np.sqrt(var).clip(min=1e-6), dtype=torch.float32)
    return out


class _Batches:
    """Standardised training/validation batches, from memory or streamed from the file."""

    def __init__(self, store: Store, tc: TrainConfig) -> None:
        self.store, self.tc = store, tc
        self.n = len(store)
        self.n_train = self.n - max(1, round(tc.val_fraction * self.n))
        self.norm = _moments(store, self.n_train)
        nbytes = self.n * 4 * (math.prod(store.x_shape) + len(store.parameters))
        self.cached: tuple[Tensor, Tensor] | None = None
        if nbytes <= tc.in_memory_bytes:
            theta, x = torch.from_numpy(store.theta), torch.from_numpy(store.x[:])
            self.cached = self._standardise(theta, x)

    def _standardise(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        v = (theta - self.norm["theta_mean"]) / self.norm["theta_std"]
        u = (x.reshape(len(x), -1) - self.norm["x_mean"]) / self.norm["x_std"]
        return v, u

    def epoch(self, seed: int, validation: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        lo, hi = (self.n_train, self.n) if validation else (0, self.n_train)
        size = 4096 if validation else self.tc.batch_size
        if self.cached is not None:
            v, u = self.cached[0][lo:hi], self.cached[1][lo:hi]
            if validation:
                order = torch.arange(hi - lo)
            else:
                order = torch.randperm(hi - lo, generator=torch.Generator().manual_seed(seed))
            for i in range(0, hi - lo, size):
                idx = order[i : i + size]
                yield v[idx], u[idx]
        else:
            batches = self.store.batches(
                size, start=lo, stop=hi, shuffle=not validation, seed=seed
            )
            for theta, x in batches:
                yield self._standardise(theta, x)


def _checkpoint_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.ckpt")


def fit(
    data: str | os.PathLike | Store,
    model: str = "flow",
    out: str | os.PathLike | None = None,
    *,
    train: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    device: str = "auto",
    progress: bool | None = None,
    resume: bool = True,
) -> Emulator:
    """Fit a conditional model of :math:`p(x \\mid \\theta)` to a simgen data file.

    Args:
        data: Path of a data file (or an open :class:`Store`).
        model: Family: ``"flow"``, ``"vae"`` or ``"diffusion"``.
        out: Model file to write (atomically); its checkpoint ``<out>.ckpt`` lets an
            interrupted fit resume. None: keep the model in memory only.
        train: Overrides of :class:`TrainConfig` fields.
        config: Overrides of the family's configuration (``FlowConfig``, ``VAEConfig``,
            ``DiffusionConfig``).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        progress: Progress bar on stderr (default: when stderr is a terminal).
        resume: Continue from ``<out>.ckpt`` when it exists and matches.

    Returns:
        The emulator with the best EMA weights (lowest validation loss).
    """
    store = data if isinstance(data, Store) else open_store(data)
    if model not in FAMILIES:
        raise UsageError(f"unknown model family '{model}'; choose one of {', '.join(FAMILIES)}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(train or {}) - names:
        raise UsageError(
            f"unknown training setting(s) {sorted(set(train or {}) - names)}; "
            f"valid: {', '.join(sorted(names))}"
        )
    tc = TrainConfig(**(train or {}))
    if len(store) < 10:
        raise UsageError(f"{store.path} has {len(store)} rows; simulate more (at least 10)")
    dev = resolve_device(device)
    torch.manual_seed(tc.seed)
    meta = store.metadata
    d_x, d_theta = math.prod(store.x_shape), len(store.parameters)
    net = build_family(model, d_x, d_theta, dict(config or {}))
    model_config = dataclasses.asdict(net.config)

    batches = _Batches(store, tc)
    norm = batches.norm
    info = {
        "parameters": list(store.parameters),
        "x_shape": list(store.x_shape),
        "simulator": {
            "name": meta["simulator"],
            "path": meta["simulator_path"],
            "options": meta["simulator_options"],
            "prior": meta["prior"],
        },
        "model_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in model_config.items()
        },
        "train_config": dataclasses.asdict(tc),
        "data": {"path": str(store.path), "rows": len(store), "seed": meta["seed"]},
    }
    emulator = Emulator(model, net, norm, info).to(dev)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay))
    optimizer = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = max(1, math.ceil(batches.n_train / tc.batch_size))
    total_steps = tc.epochs * steps_per_epoch
    step, trained_seconds, stale = 0, 0.0, 0
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "seconds": []}
    best = {"val_loss": math.inf, "epoch": -1, "state": copy.deepcopy(ema.module.state_dict())}
    start_epoch = 0
    out_path = Path(out) if out is not None else None
    identity = {
        "model": model,
        "model_config": info["model_config"],
        "train": info["train_config"],
        "data": info["data"],
    }
    ckpt = _load_checkpoint(out_path, dev) if out_path is not None and resume else None
    if ckpt is not None and ckpt.get("identity") == identity:
        net.load_state_dict(ckpt["net"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, trained_seconds = ckpt["step"], ckpt["trained_seconds"]
        history, best, start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
        stale = ckpt["epoch"] - best["epoch"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    with progress_bar(tc.epochs, f"fit {model}", unit="epochs", enabled=progress) as bar:
        bar.advance(start_epoch)
        for epoch in range(start_epoch, tc.epochs):
            t0, total, rows = time.perf_counter(), 0.0, 0
            net.train()
            for v, u in batches.epoch(seed=tc.seed * 100_003 + epoch):
                v, u = v.to(dev, non_blocking=True), u.to(dev, non_blocking=True)
                with autocast:
                    loss = net.loss(v, u).float().mean()
                if not torch.isfinite(loss):
                    raise RunError(
                        f"the {model} loss became {loss.item()} at epoch {epoch}; no model was "
                        "written: lower the learning rate (--lr) or check the data for outliers"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), tc.clip)
                progress_done = step / total_steps
                if tc.max_seconds:
                    elapsed = trained_seconds + time.perf_counter() - t0
                    progress_done = max(progress_done, elapsed / tc.max_seconds)
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(tc.lr, progress_done)
                optimizer.step()
                step += 1
                ema.update_parameters(net)
                total, rows = total + loss.item() * len(v), rows + len(v)
            val = _validate(ema.module, batches, dev, seed=tc.seed)
            history["train_loss"].append(total / rows)
            history["val_loss"].append(val)
            history["seconds"].append(time.perf_counter() - t0)
            trained_seconds += history["seconds"][-1]
            if val < best["val_loss"]:
                best = {
                    "val_loss": val,
                    "epoch": epoch,
                    "state": copy.deepcopy(ema.module.state_dict()),
                }
                stale = 0
            else:
                stale += 1
            bar.advance(1)
            bar.update(
                description=f"fit {model} val {val:.3f} "
                f"({rows / history['seconds'][-1]:,.0f} samples/s)"
            )
            if out_path is not None:
                _save_checkpoint(
                    out_path,
                    identity,
                    net,
                    ema,
                    optimizer,
                    (step, trained_seconds),
                    history,
                    best,
                    epoch,
                )
            over_time = tc.max_seconds is not None and trained_seconds > tc.max_seconds
            if stale >= tc.patience or over_time:
                break
    net.load_state_dict(best["state"])
    net.eval()
    emulator.info["metrics"] = {
        "best_val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "epochs_run": len(history["val_loss"]),
        "train_samples_per_s": batches.n_train
        * len(history["seconds"])
        / max(sum(history["seconds"]), 1e-9),
        **history,
    }
    if out_path is not None:
        emulator.save(out_path)
        _checkpoint_path(out_path).unlink(missing_ok=True)
    return emulator.eval()


@torch.no_grad()
def _validate(net: torch.nn.Module, batches: _Batches, dev: torch.device, seed: int) -> float:
    """Mean validation loss (noise of the loss fixed by ``seed``, so epochs compare)."""
    net.eval()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        total, rows = 0.0, 0
        for v, u in batches.epoch(seed, validation=True):
            v, u = v.to(dev), u.to(dev)
            total += net.loss(v, u).float().sum().item()
            rows += len(v)
    return total / rows


def cosine_lr(peak: float, progress: float) -> float:
    """Cosine decay from ``peak`` to ``peak / 100`` as ``progress`` goes from 0 to 1."""
    progress = min(max(progress, 0.0), 1.0)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def _load_checkpoint(out: Path, dev: torch.device) -> dict[str, Any] | None:
    """The checkpoint beside ``out``, or None when there is none or it is damaged."""
    path = _checkpoint_path(out)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=dev, weights_only=True)
    except Exception:  # noqa: BLE001 (a damaged checkpoint only costs the time to refit)
        warnings.warn(
            f"ignoring the damaged checkpoint {path}; training from the start", stacklevel=3
        )
        return None


def _save_checkpoint(
    out: Path,
    identity: dict,
    net: torch.nn.Module,
    ema: AveragedModel,
    optimizer: torch.optim.Optimizer,
    clock: tuple[int, float],
    history: dict,
    best: dict,
    epoch: int,
) -> None:
    path = _checkpoint_path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(
        {
            "identity": identity,
            "net": net.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": clock[0],
            "trained_seconds": clock[1],
            "history": history,
            "best": best,
            "epoch": epoch,
        },
        tmp,
    )
    os.replace(tmp, path)
