"""What a simgen file holds, as a JSON-ready dict (for ``simgen info``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from simgen.store import open_store

__all__ = ["describe_file"]


def describe_file(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a data file: provenance, sizes, completeness and per-parameter ranges.

    Raises:
        StoreError: the file is missing, unreadable or not a simgen file.
    """
    store = open_store(path)
    meta = store.metadata
    theta = store.theta
    description: dict[str, Any] = {
        "kind": "data",
        **{k: meta[k] for k in sorted(meta)},
        "rows": len(store),
        "failed_rows": store.n_failed,
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
