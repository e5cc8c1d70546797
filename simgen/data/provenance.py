"""The simulator a file was made with, rebuilt from the file's record of it.

Data files and model files record the simulator by registered name, import path and options
(data files as the attributes ``simulator``, ``simulator_path``, ``simulator_options``; model
files under ``info["simulator"]`` with keys ``name``, ``path``, ``options``). This module is the
one place that turns such a record back into a :class:`~simgen.data.simulator.Simulator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simgen.data.simulator import Simulator, get_simulator
from simgen.errors import UsageError

__all__ = ["data_record", "recorded_simulator"]


def data_record(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The simulator record (``name``, ``path``, ``options``) of a data file's metadata."""
    return {
        "name": metadata["simulator"],
        "path": metadata.get("simulator_path"),
        "options": dict(metadata.get("simulator_options") or {}),
    }


def recorded_simulator(record: Mapping[str, Any]) -> Simulator:
    """The simulator of ``record``: by its registered name, else by its import path, with the
    recorded options.

    Raises:
        UsageError: neither the name nor the path finds the simulator.
    """
    options = dict(record.get("options") or {})
    try:
        return get_simulator(record["name"], **options)
    except UsageError:
        if not record.get("path"):
            raise
        return get_simulator(record["path"], **options)
