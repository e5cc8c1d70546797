"""The simulator and prior a file was made with, rebuilt from the file's record of them, and
never by importing code that a file names.

Data files and model files record the simulator by registered name, import path and options
(data files as the attributes ``simulator``, ``simulator_path``, ``simulator_options``; model
files under ``info["simulator"]`` with keys ``name``, ``path``, ``options``) and the prior as a
description (:func:`simgen.data.simulator.describe_prior`). This module is the one place that
turns such a record back into objects, and it trusts only what is installed:

* the prior is rebuilt from its description with classes of ``torch.distributions`` alone;
* the simulator is rebuilt only by a name registered in this process or by an installed
  package's entry point. A simulator that was found by import path is imported only when the
  user names that path (``--simulator``, ``emulator.simulator(path)``): a file that names a
  module cannot make simgen run it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from simgen.data.simulator import Simulator, get_simulator, simulators
from simgen.errors import UsageError

__all__ = ["data_record", "recorded_prior", "recorded_simulator"]

# parameters that torch computes from another one: a description holds both, a rebuild
# takes the first of each group that is present
_ALTERNATIVES = (("scale_tril", "covariance_matrix", "precision_matrix"), ("probs", "logits"))


def data_record(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The simulator record (``name``, ``path``, ``options``, ``prior``) of a data file's
    metadata."""
    return {
        "name": metadata["simulator"],
        "path": metadata.get("simulator_path"),
        "options": dict(metadata.get("simulator_options") or {}),
        "prior": metadata.get("prior"),
    }


def recorded_simulator(record: Mapping[str, Any]) -> Simulator:
    """The simulator of ``record``, by its registered name (``@simgen.register`` in this
    process, or an installed entry point), with the recorded options.

    Raises:
        UsageError: the name is not registered here. The message gives the recorded import
            path for the user to name, if they trust it.
    """
    name = record.get("name")
    if isinstance(name, str) and name in simulators():
        return get_simulator(name, **dict(record.get("options") or {}))
    where = f" (found by import path '{record['path']}')" if record.get("path") else ""
    raise UsageError(
        f"the simulator '{name}'{where} is not registered here, and simgen imports no code a "
        "file names: name it yourself if you trust it (--simulator package.module:Class, or "
        "emulator.simulator('package.module:Class')), or register it"
    )


def recorded_prior(description: Mapping[str, Any]) -> torch.distributions.Distribution:
    """The prior of a description by :func:`simgen.data.simulator.describe_prior`, rebuilt
    with the classes of ``torch.distributions`` (``Independent`` recursively).

    Raises:
        UsageError: a distribution that ``torch.distributions`` does not have (a user's own
            class), or parameters it refuses.
    """
    kind = description.get("type")
    if kind == "Independent":
        base = recorded_prior(description["base"])
        return torch.distributions.Independent(base, int(description["reinterpreted_batch_ndims"]))
    cls = getattr(torch.distributions, str(kind), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.distributions.Distribution)):
        raise UsageError(
            f"the prior '{kind}' is not a torch.distributions class, so it cannot be rebuilt "
            "from the file: pass the prior yourself (simgen.Posterior(emulator, prior=...))"
        )
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "validate_args"}
    params = {k: v for k, v in description.items() if k in accepted}
    for group in _ALTERNATIVES:
        present = [k for k in group if k in params]
        for extra in present[1:]:
            del params[extra]
    try:
        return cls(**{k: torch.tensor(v, dtype=torch.float32) for k, v in params.items()})
    except (TypeError, ValueError) as error:
        raise UsageError(f"the recorded prior '{kind}' cannot be rebuilt: {error}") from None
