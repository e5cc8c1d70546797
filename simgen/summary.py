"""What a simgen file (data, model or samples) holds, as a JSON-ready dict (``simgen info``)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import h5py

from simgen.data.store import check_hdf5, open_store
from simgen.emulator import MODEL_FORMAT, load

__all__ = ["describe_file"]


def describe_file(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a simgen data, model or samples file.

    Raises:
        StoreError: the file is missing, unreadable or not a simgen file.
    """
    if zipfile.is_zipfile(path):
        return _describe_model(path)
    check_hdf5(path)
    with h5py.File(path, "r") as f:
        fmt = f.attrs.get("format", "")
        if isinstance(fmt, str) and fmt.startswith("simgen-samples/"):
            return {
                "kind": "samples",
                **{k: _plain(v) for k, v in f.attrs.items()},
                "datasets": {name: list(f[name].shape) for name in f},
            }
    return _describe_data(path)


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _describe_model(path: str | os.PathLike) -> dict[str, Any]:
    emulator = load(path)
    info = emulator.info
    metrics = {k: v for k, v in info.get("metrics", {}).items() if not isinstance(v, list)}
    return {
        "kind": "model",
        "format": MODEL_FORMAT,
        "family": emulator.family,
        "identity": emulator.identity,
        "parameters": info["parameters"],
        "x_shape": info["x_shape"],
        "simulator": info["simulator"]["name"],
        "simulator_options": info["simulator"]["options"],
        "data": info["data"],
        "model_config": info["model_config"],
        "train_config": info["train_config"],
        "metrics": metrics,
        "proposal": info.get("proposal"),  # the posterior engine's q(theta | x), or None
        "weights": sum(p.numel() for p in emulator.model.parameters()),
        "size_mib": round(Path(path).stat().st_size / 2**20, 3),
    }


def _describe_data(path: str | os.PathLike) -> dict[str, Any]:
    store = open_store(path)
    meta = store.metadata
    theta = store.theta
    description: dict[str, Any] = {
        "kind": "data",
        **{k: meta[k] for k in sorted(meta)},
        "rows": len(store),
        "failed_rows": store.n_failed,
        "nonfinite_rows": store.nonfinite_rows(),
        "complete": meta["n_simulated"] >= meta["n_requested"],
        "size_mib": round(Path(path).stat().st_size / 2**20, 3),
    }
    if len(theta):
        description["theta_summary"] = [
            {"name": name, "min": float(lo), "mean": float(mu), "max": float(hi)}
            for name, lo, mu, hi in zip(
                store.parameters, theta.min(0), theta.mean(0), theta.max(0), strict=True
            )
        ]
    store.close()
    return description
