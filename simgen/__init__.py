"""simgen: simulation-based inference with deep generative models.

Turn a simulator into an emulator of ``x ~ p(x | theta)``, a density ``log p(x | theta)`` and a
posterior ``p(theta | x_obs)``. Attributes are imported on first use, so ``import simgen`` (and
``simgen --help``) stays fast and changes no global state.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Simulator": "simgen.data.simulator",
    "register": "simgen.data.simulator",
    "simulators": "simgen.data.simulator",
    "get_simulator": "simgen.data.simulator",
    "simulate": "simgen.data.simulation",
    "merge": "simgen.data.merging",
    "open_store": "simgen.data.store",
    "Store": "simgen.data.store",
    "Emulator": "simgen.emulator",
    "load": "simgen.emulator",
    "fit": "simgen.train.loop",
    "fit_proposal": "simgen.train.proposal",
    "Posterior": "simgen.inference.posterior",
    "FieldPosterior": "simgen.inference.field_posterior",
    "Mask": "simgen.inference.measurement",
    "Beam": "simgen.inference.measurement",
    "Operator": "simgen.inference.measurement",
    "check": "simgen.diagnostics.report",
    "SimgenError": "simgen.errors",
    "UsageError": "simgen.errors",
    "SimulatorError": "simgen.errors",
    "StoreError": "simgen.errors",
    "RunError": "simgen.errors",
}

__all__ = [
    "Beam",
    "Emulator",
    "FieldPosterior",
    "Mask",
    "Operator",
    "Posterior",
    "RunError",
    "SimgenError",
    "Simulator",
    "SimulatorError",
    "Store",
    "StoreError",
    "UsageError",
    "__version__",
    "check",
    "fit",
    "fit_proposal",
    "get_simulator",
    "load",
    "merge",
    "open_store",
    "register",
    "simulate",
    "simulators",
]

if TYPE_CHECKING:
    from simgen.data.merging import merge
    from simgen.data.simulation import simulate
    from simgen.data.simulator import Simulator, get_simulator, register, simulators
    from simgen.data.store import Store, open_store
    from simgen.diagnostics.report import check
    from simgen.emulator import Emulator, load
    from simgen.errors import RunError, SimgenError, SimulatorError, StoreError, UsageError
    from simgen.inference.field_posterior import FieldPosterior
    from simgen.inference.measurement import Beam, Mask, Operator
    from simgen.inference.posterior import Posterior
    from simgen.train.loop import fit
    from simgen.train.proposal import fit_proposal


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'simgen' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
