r"""Sequential Monte Carlo for a map given a diagonal measurement, with a diffusion model as its
prior (:mod:`simgen.inference.field` has the prior's chain and the notation): weighted particles
of :math:`p_{model}(u)\, p(y \mid u)` for ``m`` conditions at once, and the evidence
:math:`p(y)`.

Each particle is twisted at time :math:`t` by a linear-Gaussian guess of :math:`p(y \mid u_t)`:
the likelihood of :math:`y` under :math:`u_0 \mid u_t` for a prior :math:`N(0, \lambda I)`
(:math:`\lambda` = ``form.prior_var``),

.. math::
    \tilde p_t(y \mid u_t) = \prod_k N\Big(\tilde y_k;\;
        g_k \frac{\alpha_t \lambda}{\alpha_t^2 \lambda + \sigma_t^2} c_{t,k},\;
        v_k + g_k^2 \frac{\lambda \sigma_t^2}{\alpha_t^2 \lambda + \sigma_t^2}\Big),

flat at :math:`t = 1` and the measurement's own likelihood at :math:`t = 0`. Being linear-Gaussian
in :math:`u_t`, the locally optimal proposal
:math:`q(u_s \mid u_t) \propto p(u_s \mid u_t)\, \tilde p_s(y \mid u_s)` is Gaussian per
coefficient and the incremental weight
:math:`w = \int p(u_s \mid u_t)\, \tilde p_s(y \mid u_s)\, \mathrm{d}u_s / \tilde p_t(y \mid u_t)`
closed-form. At :math:`t_{min}` the twist is swapped for the likelihood
:math:`N(\tilde y; g c, v)`, so the weighted particles target
:math:`p_{model}(u_{t_{min}})\, p(y \mid u_{t_{min}})` exactly as the particles grow, whatever
the twist (twisted SMC, Wu et al. 2023; the filtering view of Dou & Song 2024 and MCGDiff,
Cardoso et al. 2023), with systematic resampling when the effective sample size falls below
half. The product of the mean incremental weights is an unbiased estimate of :math:`p(y)` (the
measurement's density in the model's coordinates).

The twist ignores how the prior correlates values, so the weights degenerate as the number of
values seen grows: exact and efficient for small maps (tested against the Wiener filter on
8x8), while :func:`simgen.inference.field.gibbs` is the sampler for large ones.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from simgen.inference.field import NoisePredictor, Schedule, ancestral_step, time_grid
from simgen.inference.importance import systematic_resample
from simgen.inference.measurement import DiagonalForm

__all__ = ["FieldSMC", "smc"]


@dataclass
class FieldSMC:
    """Weighted particles of ``m`` conditions.

    Attributes:
        u: ``(m, N, *shape)`` particles at ``t_min`` (the model's coordinates).
        log_weight: ``(m, N)`` normalised log weights.
        log_evidence: ``(m,)`` log of the unbiased evidence estimate :math:`\\hat p(y)`.
        ess: ``(m,)`` effective sample size of the final weights.
        min_ess: ``(m,)`` lowest effective sample size along the path (before resampling).
        resamples: Resampling steps taken (any group).
    """

    u: Tensor
    log_weight: Tensor
    log_evidence: Tensor
    ess: Tensor
    min_ess: Tensor
    resamples: int


def _log_normal(
    y: Tensor, mean: Tensor, var: Tensor, seen: Tensor, dims: tuple[int, ...]
) -> Tensor:
    """:math:`\\sum_k \\log N(y_k; m_k, v_k)` over the ``seen`` coefficients, real or complex
    (``|y - m|^2``)."""
    terms = (y - mean).abs().square() / var + torch.log(2 * math.pi * var)
    return -0.5 * torch.where(seen, terms, 0.0).sum(dims)


def _ess(log_weight: Tensor) -> Tensor:
    return torch.exp(-torch.logsumexp(2 * log_weight, -1))


def smc(
    epsilon: NoisePredictor,
    schedule: Schedule,
    form: DiagonalForm,
    groups: int,
    particles: int,
    steps: int,
    t_min: float,
    generator: torch.Generator,
    progress: Callable[[], None] | None = None,
) -> FieldSMC:
    """Sequential Monte Carlo for ``groups`` conditions of ``particles`` particles each (the
    module docstring); ``epsilon`` sees the particles flattened, ``(groups * particles, d)``,
    group by group. ``progress`` is called after each of the ``steps`` steps."""
    shape, (m, n) = tuple(form.gains.shape), (groups, particles)
    dims = tuple(range(-len(shape), 0))
    g, v, y = form.gains, form.noise_var, form.y
    seen = g > 0

    def gain_and_var(t: Tensor) -> tuple[Tensor, Tensor]:  # of the twist at t, per coefficient
        alpha, sigma = schedule(t)
        total = alpha.square() * form.prior_var + sigma.square()
        return (
            g * alpha * form.prior_var / total,
            v + g.square() * form.prior_var * sigma**2 / total,
        )

    def twist(c: Tensor, t: Tensor) -> Tensor:  # log p~_t(y | u_t) of coefficients c
        h, var = gain_and_var(t)
        return _log_normal(y, h * c, var, seen, dims)

    times = time_grid(steps, t_min)
    u = torch.randn(m, n, *shape, generator=generator, dtype=torch.float64)
    log_w = twist(form.to_basis(u), times[0])
    log_z = torch.logsumexp(log_w, -1) - math.log(n)
    log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
    min_ess, resamples = _ess(log_w), 0
    for t, s in itertools.pairwise(times):
        ess = _ess(log_w)
        min_ess = torch.minimum(min_ess, ess)
        low = ess < n / 2
        if low.any():
            idx = systematic_resample(log_w, n, generator)
            idx = torch.where(low[:, None], idx, torch.arange(n))
            u = torch.gather(u, 1, idx.reshape(m, n, *[1] * len(shape)).expand_as(u))
            log_w = torch.where(low[:, None], -math.log(n), log_w)
            resamples += 1
        eps = epsilon(u.reshape(m * n, -1).float(), t.float()).double().reshape(u.shape)
        mean, var = ancestral_step(u, eps, t, s, schedule, form.prior_var)
        h, v_s = gain_and_var(s)
        c_mean = form.to_basis(mean)
        precision = 1 / var + h.square() / v_s
        white = torch.randn(u.shape, generator=generator, dtype=torch.float64)
        c = (c_mean / var + h * y / v_s) / precision + form.to_basis(white) / precision.sqrt()
        increment = _log_normal(y, h * c_mean, v_s + h.square() * var, seen, dims)
        increment = increment - twist(form.to_basis(u), t)
        u = form.from_basis(c)
        log_z = log_z + torch.logsumexp(log_w + increment, -1)
        log_w = log_w + increment
        log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
        if progress is not None:
            progress()
    c = form.to_basis(u)
    final = _log_normal(y, g * c, v, seen, dims) - twist(c, times[-1])
    log_z = log_z + torch.logsumexp(log_w + final, -1)
    log_w = log_w + final
    log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
    return FieldSMC(u, log_w, log_z, _ess(log_w), torch.minimum(min_ess, _ess(log_w)), resamples)
