r"""``Emulator``: a trained conditional model of :math:`p(x \mid \theta)` with its normalisation
and provenance; ``emulator(theta)`` is a ``torch.distributions.Distribution`` over x.

The families work in standardised coordinates :math:`u = (x - \mu_x) / s_x`,
:math:`v = (\theta - \mu_\theta) / s_\theta`; the emulator maps back, so
:math:`\log p(x \mid \theta) = \log p_u(u \mid v) - \sum \log s_x`.

Model files are written atomically and hold only tensors and plain data: ``load`` uses
``torch.load(..., weights_only=True)``, so opening a model never runs code from it.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import AffineTransform, ComposeTransform, Distribution
from torch.distributions.transforms import ReshapeTransform
from zuko.distributions import NormalizingFlow

import simgen
from simgen.atomic import replacing
from simgen.data.provenance import recorded_prior, recorded_simulator
from simgen.data.simulator import Simulator, get_simulator
from simgen.errors import StoreError, UsageError
from simgen.models.proposal import Proposal, ProposalConfig
from simgen.models.registry import build_family

__all__ = ["MODEL_FORMAT", "Emulator", "load"]

MODEL_FORMAT = "simgen-model/2"
PROBE_ROWS = 256  # rows of the call that measures memory per row on a GPU
CPU_ROWS = 16_384  # rows per batched call on CPU
MAX_ROWS = 1 << 22
DEVICE_FILL = 0.7  # share of the free GPU memory a batched call may take


def _as_tensor(value: Any) -> Tensor:
    return torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value).float()


class Emulator(nn.Module):
    """A learned :math:`p(x \\mid \\theta)`: sample, evaluate, condition.

    Args:
        family: ``"flow"``, ``"vae"`` or ``"diffusion"``.
        model: The family's module, in standardised coordinates.
        normalization: ``theta_mean``, ``theta_std``, ``x_mean``, ``x_std`` (flat tensors).
        info: Provenance: ``parameters``, ``x_shape``, ``simulator`` (name, path, options,
            prior), ``model_config``, ``train_config``, ``metrics``, ``data`` (and
            ``proposal``, its configuration, when it has one).

    Attributes:
        proposal: The amortised proposal :math:`q(\\theta \\mid x)` the posterior engine draws
            from (:class:`simgen.models.proposal.Proposal`), or None.
    """

    def __init__(
        self, family: str, model: nn.Module, normalization: dict[str, Tensor], info: dict
    ) -> None:
        super().__init__()
        self.family, self.model, self.info = family, model, info
        for key, value in normalization.items():
            self.register_buffer(key, _as_tensor(value))
        self.x_shape = tuple(info["x_shape"])
        self.parameters_names = tuple(info["parameters"])
        self.d_theta = len(self.parameters_names)
        self.identity = ""
        self._support: torch.distributions.constraints.Constraint | None = None
        self._rows: dict[str, int] = {}  # rows per batched call on the device, by kind
        self.proposal: Proposal | None = None

    def standardized(self, x: Any) -> Tensor:
        """``x`` ``(..., *x_shape)`` -> ``u = (x - mu_x) / s_x`` flattened, ``(..., d_x)``."""
        x = self._x(x)
        flat = x.reshape(*x.shape[: x.ndim - len(self.x_shape)], -1)
        return (flat - self.x_mean) / self.x_std

    # --- inputs -----------------------------------------------------------------------------
    def _theta(self, theta: Any) -> Tensor:
        theta = _as_tensor(theta).to(self.theta_mean.device)
        if theta.ndim == 0 or theta.shape[-1] != self.d_theta:
            raise UsageError(
                f"theta has shape {tuple(theta.shape)}; expected (..., {self.d_theta}) for "
                f"parameters {', '.join(self.parameters_names)}"
            )
        return theta

    def _x(self, x: Any) -> Tensor:
        x = _as_tensor(x).to(self.x_mean.device)
        k = len(self.x_shape)
        if tuple(x.shape[x.ndim - k :]) != self.x_shape or x.ndim < k:
            raise UsageError(
                f"x has shape {tuple(x.shape)}; expected (..., {', '.join(map(str, self.x_shape))})"
            )
        return x

    def check_data(self, store: Any) -> None:
        """Raise :class:`UsageError` unless the data file ``store`` (a
        :class:`~simgen.data.store.Store`) has this emulator's x shape and parameters."""
        if store.x_shape != self.x_shape or len(store.parameters) != self.d_theta:
            raise UsageError(
                f"{store.path} holds x of shape {store.x_shape} and {len(store.parameters)} "
                f"parameters; the model expects {self.x_shape} and {self.d_theta}"
            )

    # --- the distribution -------------------------------------------------------------------
    def _standardise(self) -> ComposeTransform:
        d_x = math.prod(self.x_shape)
        parts = []
        if self.x_shape != (d_x,):
            parts.append(ReshapeTransform(torch.Size(self.x_shape), torch.Size([d_x])))
        parts.append(AffineTransform(-self.x_mean / self.x_std, 1 / self.x_std, event_dim=1))
        return ComposeTransform(parts)

    def forward(self, theta: Any) -> Distribution:
        """:math:`p(x \\mid \\theta)` as a Distribution, batch shape ``theta.shape[:-1]``,
        event shape ``x_shape``; differentiable in theta (except the VAE's IWAE sampling)."""
        theta = self._theta(theta)
        v = (theta - self.theta_mean) / self.theta_std
        return NormalizingFlow(self._standardise(), self.model.dist(v))

    def log_prob(self, x: Any, theta: Any, batch_size: int | None = None) -> Tensor:
        """:math:`\\log p(x \\mid \\theta)`, broadcasting the batch shapes of ``x`` ``(..., *x_shape)``
        and ``theta`` ``(..., d_theta)`` like torch.distributions. Exact for ``flow``; the ODE
        density for ``diffusion`` (exact divergence up to the solver's tolerance for small x);
        the IWAE estimate for ``vae``.

        Many rows are evaluated ``batch_size`` at a time (default: as many as fill the device,
        see :meth:`rows_per_call`); gradients flow through every batch."""
        x, theta = self._x(x), self._theta(theta)
        self._warn_outside_prior(theta)
        k = len(self.x_shape)
        shape = torch.broadcast_shapes(x.shape[: x.ndim - k], theta.shape[:-1])
        rows = math.prod(shape)
        if batch_size is None and rows > PROBE_ROWS:
            x1, theta1 = x.reshape(-1, *self.x_shape)[:1], theta.reshape(-1, self.d_theta)[:1]
            batch_size = self.rows_per_call(
                "log_prob",
                lambda m: self(theta1.expand(m, -1)).log_prob(x1.expand(m, *x1.shape[1:])),
            )
        if batch_size is None or rows <= batch_size:
            return self(theta).log_prob(x)
        xs = x.expand(*shape, *self.x_shape).reshape(rows, *self.x_shape)
        thetas = theta.expand(*shape, self.d_theta).reshape(rows, self.d_theta)
        parts = [
            self(thetas[i : i + batch_size]).log_prob(xs[i : i + batch_size])
            for i in range(0, rows, batch_size)
        ]
        return torch.cat(parts).reshape(shape)

    @torch.no_grad()
    def sample(
        self, theta: Any, n: int = 1, batch_size: int | None = None, **kwargs: Any
    ) -> Tensor:
        """Draw ``x ~ p(x | theta)``: theta ``(d,)`` -> ``(n, *x_shape)``; ``(b, d)`` ->
        ``(n, b, *x_shape)``, ``batch_size`` rows at a time (default: as many as fill the
        device, see :meth:`rows_per_call`). ``kwargs`` go to the family's sampler (diffusion:
        ``steps``, ``sampler``)."""
        theta = self._theta(theta)
        self._warn_outside_prior(theta)
        v = (theta - self.theta_mean) / self.theta_std
        v = v.expand(n, *v.shape).reshape(-1, self.d_theta)
        if batch_size is None:
            key = "sample " + repr(sorted(kwargs.items()))
            probe = lambda m: self.model.sample(v[:1].expand(m, -1), **kwargs)
            batch_size = len(v) if len(v) <= PROBE_ROWS else self.rows_per_call(key, probe)
        u = torch.cat(
            [
                self.model.sample(v[i : i + batch_size], **kwargs)
                for i in range(0, len(v), batch_size)
            ]
        )
        x = u * self.x_std + self.x_mean
        return x.reshape(n, *theta.shape[:-1], *self.x_shape)

    def rows_per_call(self, kind: str, probe: Callable[[int], Any]) -> int:
        """Rows one batched call may take on this emulator's device, measured once per ``kind``.

        On CUDA: ``probe(PROBE_ROWS)`` is run and its peak memory per row scaled to fill
        ``DEVICE_FILL`` of the free device memory. On CPU (memory is rarely the limit, and big
        batches stop paying beyond cache sizes): :data:`CPU_ROWS`.
        """
        device = self.theta_mean.device
        if device.type != "cuda":
            return CPU_ROWS
        if kind not in self._rows:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            probe(PROBE_ROWS)
            per_row = max(1, (torch.cuda.max_memory_allocated(device) - base) // PROBE_ROWS)
            free, _ = torch.cuda.mem_get_info(device)
            self._rows[kind] = int(min(MAX_ROWS, max(PROBE_ROWS, DEVICE_FILL * free // per_row)))
        return self._rows[kind]

    # --- prior ------------------------------------------------------------------------------
    def simulator(self, name: str | None = None) -> Simulator:
        """The simulator the emulator was trained on, rebuilt by its registered name with its
        recorded options (:func:`simgen.data.provenance.recorded_simulator`: a simulator the
        model file only names by import path is not imported), or the simulator ``name``
        (registered name or import path, default options) in its place.

        Raises:
            UsageError: the simulator is not registered here (name it), or its parameters or
                x shape differ from the emulator's.
        """
        if name is None:
            sim = recorded_simulator(self.info["simulator"])
        else:
            sim = get_simulator(name)
        if tuple(sim.x_shape) != self.x_shape or sim.d_theta != self.d_theta:
            raise UsageError(
                f"simulator '{sim.name}' has {sim.d_theta} parameters and x of shape "
                f"{tuple(sim.x_shape)}; the model has {self.d_theta} and {self.x_shape}"
            )
        return sim

    def prior(self) -> torch.distributions.Distribution:
        """The prior the emulator was trained with, rebuilt from the model file's description
        with ``torch.distributions`` alone (:func:`simgen.data.provenance.recorded_prior`), or,
        for a prior class of the simulator's own, from the registered simulator."""
        try:
            return recorded_prior(self.info["simulator"]["prior"])
        except UsageError as error:
            try:
                return self.simulator().prior()
            except UsageError:
                raise error from None  # it says how to pass the prior

    def _warn_outside_prior(self, theta: Tensor) -> None:
        if self._support is None:
            try:
                self._support = self.prior().support
            except Exception:  # noqa: BLE001 (no simulator to rebuild the prior from: no check)
                self._support = torch.distributions.constraints.real_vector
        inside = self._support.check(theta.detach().cpu())
        outside = int((~inside).sum())
        if outside:
            warnings.warn(
                f"{outside} of {inside.numel()} theta lie outside the prior's support: the "
                "emulator extrapolates there",
                stacklevel=3,
            )

    # --- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model file atomically (temporary file, then rename)."""
        path = Path(path)
        state = {
            "format": MODEL_FORMAT,
            "simgen_version": simgen.__version__,
            "family": self.family,
            "info": self.info,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        with replacing(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)  # to a Python file: a failed write is an OSError (no_room)

    def extra_repr(self) -> str:
        return f"family={self.family}, theta={self.parameters_names}, x_shape={self.x_shape}"


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Emulator:
    """Load a model file written by :meth:`Emulator.save` without executing code from it.

    Raises:
        StoreError: a missing, truncated, non-simgen or newer-format file, in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no such model file: {path}")
    if not zipfile.is_zipfile(path):
        raise StoreError(f"{path} is not a simgen model file (not a torch zip archive)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch raises many kinds for a broken file)
        raise StoreError(
            f"{path} cannot be loaded safely ({type(error).__name__}); it is truncated, damaged "
            "or holds code: refit or copy it again"
        ) from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith("simgen-model/"):
        raise StoreError(f"{path} is a torch file but not a simgen model")
    if fmt != MODEL_FORMAT:
        version = fmt.rpartition("/")[2]
        newer = not version.isdigit() or int(version) > int(MODEL_FORMAT.rpartition("/")[2])
        raise StoreError(
            f"{path} has format '{fmt}', newer than this simgen reads: upgrade simgen"
            if newer
            else f"{path} has format '{fmt}', older than this simgen's '{MODEL_FORMAT}' "
            "(the networks changed): refit it with this version"
        )
    info = state["info"]
    family = state["family"]
    d_x = math.prod(info["x_shape"])
    model = build_family(family, d_x, len(info["parameters"]), info["model_config"])
    sd = state["state_dict"]
    normalization = {k: sd[k] for k in ("theta_mean", "theta_std", "x_mean", "x_std")}
    emulator = Emulator(family, model, normalization, info)
    if "proposal" in info:
        config = ProposalConfig(**info["proposal"]["config"])
        emulator.proposal = Proposal(d_x, len(info["parameters"]), config)
    emulator.load_state_dict(sd)
    emulator.identity = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return emulator.to(device).eval()
