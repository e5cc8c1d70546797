"""What a fit resumes from or keeps: the checkpoint ``<model>.ckpt`` written after every
epoch, and a finished model file fitted to the same data with the same settings."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from simgen.atomic import replacing
from simgen.data.store import Store
from simgen.emulator import Emulator, load
from simgen.errors import StoreError
from simgen.models.registry import defaults_for
from simgen.train.config import TrainConfig

__all__ = ["checkpoint_path", "finished", "load_checkpoint", "save_checkpoint"]


def checkpoint_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.ckpt")


def finished(
    out: Path, store: Store, model: str, tc: TrainConfig, config: dict[str, Any]
) -> Emulator | None:
    """The model in ``out`` when it was fitted to ``store`` with these settings (the family,
    the training settings, the data's path, rows and seed, and every model setting asked for
    or defaulted, but those the fit settles, ``"auto"``), else None."""
    if not out.is_file():
        return None
    try:
        done = load(out)
    except StoreError:
        return None  # not a model: the fit replaces it
    info, wanted = done.info, {**defaults_for(model, store.x_shape, config), **config}
    data = {"path": str(store.path), "rows": len(store), "seed": store.metadata["seed"]}
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in wanted.items() if v != "auto"}
    return (
        done
        if done.family == model
        and info["data"] == data
        and info["train_config"] == dataclasses.asdict(tc)
        and all(info["model_config"].get(k) == v for k, v in plain.items())
        else None
    )


def load_checkpoint(out: Path, dev: torch.device) -> dict[str, Any] | None:
    """The checkpoint beside ``out``, or None when there is none or it is damaged."""
    path = checkpoint_path(out)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=dev, weights_only=True)
    except Exception:  # noqa: BLE001 (a damaged checkpoint only costs the time to refit)
        warnings.warn(
            f"ignoring the damaged checkpoint {path}; training from the start", stacklevel=3
        )
        return None


def save_checkpoint(
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
    state = {
        "identity": identity,
        "net": net.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": clock[0],
        "trained_seconds": clock[1],
        "history": history,
        "best": best,
        "epoch": epoch,
    }
    with replacing(checkpoint_path(out)) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
