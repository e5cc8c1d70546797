"""Files of samples (``simgen sample``) and densities (``simgen log-prob``): HDF5, written
atomically, with the model's identity and the conditioning."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from simgen.atomic import replacing

__all__ = ["SAMPLES_FORMAT", "write_samples"]

SAMPLES_FORMAT = "simgen-samples/1"


def write_samples(
    path: str | os.PathLike,
    datasets: dict[str, np.ndarray],
    attrs: dict[str, Any],
) -> Path:
    """Write ``datasets`` and root ``attrs`` (dicts as JSON) to ``path`` atomically.

    ``attrs`` should name the ``kind`` (``"emulation"``, ``"log_prob"``, ``"posterior"``) and the
    ``model`` identity; ``format`` is set here.
    """
    path = Path(path)
    with replacing(path) as tmp, h5py.File(tmp, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=np.asarray(value))
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, dict | list) else value
        f.attrs["format"] = SAMPLES_FORMAT
    return path
