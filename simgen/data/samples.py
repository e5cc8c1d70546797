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
from simgen.errors import UsageError

__all__ = ["SAMPLES_FORMAT", "read_array", "read_theta_rows", "write_samples"]

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


def read_array(value: Any) -> np.ndarray:
    """``value`` as an array: itself, or the ``.npy`` file it names.

    Raises:
        UsageError: a missing or unreadable file.
    """
    if not isinstance(value, str | os.PathLike):
        return np.asarray(value)
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise UsageError(f"cannot read {path} as a .npy array: {error}") from None


def read_theta_rows(path: str | os.PathLike) -> np.ndarray:
    """Parameters ``(n, d)`` from ``path``: a ``.npy`` array, ``.csv`` rows, or the ``theta`` of
    an HDF5 file (posterior samples of ``simgen sample --observed``, or a data file).

    Raises:
        UsageError: a missing or unreadable file, or an HDF5 file without ``theta``.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                if "theta" not in f:
                    raise UsageError(f"{path} holds no 'theta' data set")
                values = f["theta"][:]
        else:
            values = np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as error:
        raise UsageError(f"cannot read thetas from {path}: {error}") from None
    return np.atleast_2d(values)
