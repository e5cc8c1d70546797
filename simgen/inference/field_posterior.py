r"""Maps given a measurement, with a diffusion emulator as the prior: draws of
:math:`x \sim p(x \mid y, \theta) \propto p_{model}(x \mid \theta)\, p(y \mid x)` for
:math:`y = A(x) + s\, n` (:mod:`simgen.inference.measurement`), by the samplers of
:mod:`simgen.inference.field` (Gibbs by data augmentation, the default; DPS) and
:mod:`simgen.inference.field_smc` (sequential Monte Carlo, with the evidence).

The emulator works on :math:`u = (x - \mu) / \sigma_x`; the measurement is carried into those
coordinates (:meth:`~simgen.inference.measurement.Measurement.diagonal`) and the draws back.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from simgen.errors import UsageError
from simgen.inference.field import dps, gibbs
from simgen.inference.field_smc import smc
from simgen.inference.importance import systematic_resample
from simgen.inference.measurement import Measurement
from simgen.terminal import progress_bar

__all__ = ["METHODS", "RHAT_WARN", "FieldPosterior", "FieldSamples"]

METHODS = ("gibbs", "smc", "dps")
RHAT_WARN = 1.1  # worst split R-hat of the Gibbs chains before a warning


@dataclass
class FieldSamples:
    """Draws of maps given a measurement, per condition.

    Attributes:
        x: ``(m, n, *x_shape)`` draws for each of ``m`` parameter rows.
        method: The sampler.
        diagnostics: Per sampler: ``rhat`` and ``ess`` (Gibbs: worst over the map's values),
            ``ess`` and ``log_evidence`` (SMC: :math:`\\log \\hat p(y \\mid \\theta)` in the
            model's coordinates), per row.
    """

    x: Tensor
    method: str
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> Tensor:
        """``(m, *x_shape)`` posterior mean."""
        return self.x.mean(1)

    @property
    def std(self) -> Tensor:
        """``(m, *x_shape)`` posterior standard deviation."""
        return self.x.std(1)


class FieldPosterior:
    """:math:`p(x \\mid y, \\theta)` with a diffusion ``emulator`` of maps as the prior.

    Args:
        emulator: A :class:`simgen.Emulator` of the diffusion family on the variance-preserving
            process (the default on square maps).
        measurement: What was observed: :class:`~simgen.inference.measurement.Mask`,
            :class:`~simgen.inference.measurement.Beam` or
            :class:`~simgen.inference.measurement.Operator`.
    """

    def __init__(self, emulator: Any, measurement: Measurement) -> None:
        config = getattr(emulator.model, "config", None)
        if (
            emulator.family != "diffusion"
            or getattr(config, "process", "") != "vp"
            or (config.time != "continuous")
        ):
            raise UsageError(
                "a field prior needs a diffusion emulator on the variance-preserving process "
                "(simgen fit --family diffusion on maps)"
            )
        if tuple(measurement.x_shape) != tuple(emulator.x_shape):
            raise UsageError(
                f"the measurement is of maps {tuple(measurement.x_shape)}; the emulator's maps "
                f"are {tuple(emulator.x_shape)}"
            )
        self.emulator, self.measurement = emulator, measurement

    def _noise_predictor(self, theta: Tensor, per_group: int) -> Any:
        model, emulator = self.emulator.model, self.emulator
        v = (theta - emulator.theta_mean) / emulator.theta_std
        rows = v.repeat_interleave(per_group, 0)
        device = emulator.theta_mean.device

        def epsilon(u: Tensor, t: Tensor) -> Tensor:
            with torch.autocast(device.type, enabled=False):
                return model.epsilon(u.to(device), t.to(device), rows).to(u.device)

        return epsilon

    @torch.no_grad()
    def sample(
        self,
        y: Any,
        theta: Any,
        n: int = 100,
        method: str = "gibbs",
        steps: int | None = None,
        sweeps: int = 200,
        chains: int = 32,
        seed: int = 0,
        progress: bool | None = None,
    ) -> FieldSamples:
        """Draw ``n`` maps given the observation ``y`` (``x_shape``; unseen values ignored) for
        each row of ``theta`` (``(d,)`` or ``(m, d)``).

        Args:
            y: The observation.
            theta: The parameters the prior is conditioned on.
            n: Draws per row.
            method: ``"gibbs"`` (exact as the sweeps grow), ``"smc"`` (exact as ``n`` grows;
                weights degenerate with many values seen) or ``"dps"`` (approximate).
            steps: Ancestral steps: per sweep from :math:`\\tau` (Gibbs, default 5), or from
                t = 1 (SMC, DPS; default 50).
            sweeps: Gibbs sweeps (the first half dropped).
            chains: Gibbs chains per row.
            seed: Seed of the sampler's randomness.
            progress: Show a progress bar (default: when stderr is a terminal).
        """
        if method not in METHODS:
            raise UsageError(f"unknown field sampler '{method}'; choose one of {METHODS}")
        if n < 1 or sweeps < 2 or chains < 1:
            raise UsageError("n and chains must be >= 1 and sweeps >= 2")
        theta = self.emulator._theta(theta)
        single = theta.ndim == 1
        theta = theta.reshape(-1, theta.shape[-1]).cpu()
        m, shape = len(theta), self.emulator.x_shape
        mean = self.emulator.x_mean.cpu().double().reshape(shape)
        std = self.emulator.x_std.cpu().double().reshape(shape)
        model, generator = self.emulator.model, torch.Generator().manual_seed(seed)
        t_min = model.config.t_min
        per_group = {"gibbs": chains, "smc": n, "dps": n}[method]
        total = {"gibbs": sweeps, "smc": steps or 50, "dps": steps or 50}[method]
        epsilon = self._noise_predictor(theta.to(self.emulator.theta_mean.device), per_group)
        diagnostics: dict[str, Any] = {}
        unit = "sweeps" if method == "gibbs" else "steps"
        with progress_bar(total, f"field posterior ({method})", unit, progress) as bar:
            advance = lambda: bar.advance(1)
            if method == "dps":
                y64 = self.measurement.check(y)
                seen = self.measurement.seen
                scale = float(std.mean())

                def residual(u0: Tensor) -> Tensor:
                    x = mean.float() + std.float() * u0.reshape(-1, *shape)
                    r = (y64.float() - self.measurement(x)) / scale
                    return torch.where(seen, r, 0.0)

                u = dps(epsilon, model.schedule, residual, m * n, math.prod(shape), total,
                        t_min, generator, progress=advance)  # fmt: skip
                u = u.double().reshape(m, n, *shape)
            else:
                form = self.measurement.diagonal(y, mean, std)
                if method == "smc":
                    run = smc(
                        epsilon, model.schedule, form, m, n, total, t_min, generator, advance
                    )
                    idx = systematic_resample(run.log_weight, n, generator)
                    u = torch.stack([run.u[i][idx[i]] for i in range(m)])
                    diagnostics = {
                        "ess": run.ess.tolist(),
                        "log_evidence": run.log_evidence.tolist(),
                    }
                else:
                    run = gibbs(epsilon, model.schedule, form, m, chains, sweeps, steps or 5,
                                t_min, generator, progress=advance)  # fmt: skip
                    kept = run.u.reshape(m, -1, *shape)  # (m, draws * chains, *shape)
                    pick = torch.linspace(0, kept.shape[1] - 1, n).round().long()
                    u = kept[:, pick]
                    diagnostics = {"rhat": run.rhat.tolist(), "ess": run.ess.tolist(),
                                   "rho": run.rho, "tau": run.tau}  # fmt: skip
                    if run.rhat.max() > RHAT_WARN:
                        warnings.warn(
                            f"the Gibbs chains have not mixed everywhere (worst split R-hat "
                            f"{run.rhat.max():.2f} over the map's values, typically where "
                            f"little is seen): raise sweeps for surer means and spreads there",
                            stacklevel=3,  # the caller, past torch.no_grad
                        )
        x = (mean + std * u).float()
        return FieldSamples(x[0:1] if single else x, method, diagnostics)
