r"""Adaptive tempered sequential Monte Carlo, batched over many posteriors: the posterior
engine's fallback when importance sampling from the proposal is not reliable.

Particles move from a reference density :math:`g` (the defensive mixture of proposal and
prior) to the posterior :math:`\pi` through

.. math::
    \gamma_\beta(z) \propto g(z)^{1 - \beta}\, \pi(z)^{\beta}, \qquad 0 = \beta_0 < \dots < \beta_T = 1,

each :math:`\beta_{t+1}` chosen by bisection so that the incremental weights
:math:`(\pi / g)^{\beta_{t+1} - \beta_t}` keep an effective sample size of half the particles
(Jasra et al. 2011). After each step the particles are resampled (systematic) and moved by
random-walk Metropolis steps that leave :math:`\gamma_{\beta_{t+1}}` invariant, with the
particles' covariance scaled by :math:`2.38^2 / d` and the scale adapted to the acceptance
rate. The evidence is the product of the mean incremental weights,
:math:`\log Z = \sum_t \log \frac{1}{N} \sum_i w_{t,i}` (unbiased in :math:`Z`).

All arrays carry the ``m`` posteriors first: particles ``(m, N, d)`` in unconstrained
coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from simgen.inference.importance import systematic_resample

__all__ = ["SMCResult", "tempered_smc"]

BatchDensity = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass
class SMCResult:
    """Final particles of ``m`` tempered SMC runs.

    Attributes:
        z: ``(m, N, d)`` particles (equally weighted).
        log_target: ``(m, N)`` unnormalised log posterior of each.
        log_z: ``(m,)`` log evidence estimate.
        beta: ``(m,)`` the temperature reached (1: the posterior).
        stages: Tempering steps taken.
        acceptance: Mean acceptance rate of the Metropolis moves.
        evaluations: Batched density evaluations per particle.
    """

    z: Tensor
    log_target: Tensor
    log_z: Tensor
    beta: Tensor
    stages: int
    acceptance: float
    evaluations: int


def _next_beta(delta: Tensor, beta: Tensor, keep: float) -> Tensor:
    """The largest :math:`\\beta' \\in (\\beta, 1]` whose incremental weights
    ``exp((beta' - beta) delta)`` ``(m, N)`` keep an ESS of ``keep`` N, by bisection."""
    n = delta.shape[-1]

    def ess(b: Tensor) -> Tensor:
        lw = (b - beta)[:, None] * delta
        lw = torch.where(torch.isnan(lw), torch.full_like(lw, -math.inf), lw)
        lw = lw - torch.logsumexp(lw, -1, keepdim=True)
        return 1 / torch.exp(2 * lw).sum(-1)

    lo, hi = beta.clone(), torch.ones_like(beta)
    done = ess(hi) >= keep * n
    for _ in range(40):
        mid = (lo + hi) / 2
        ok = ess(mid) >= keep * n
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return torch.where(done, torch.ones_like(beta), torch.maximum(lo, beta + 1e-6).clamp_max(1))


def tempered_smc(
    densities: BatchDensity,
    z: Tensor,
    generator: torch.Generator,
    *,
    moves: float = 3.0,
    max_moves: int = 40,
    keep: float = 0.5,
    max_stages: int = 60,
    on_stage: Callable[[Tensor], None] | None = None,
) -> SMCResult:
    """Temper ``m`` particle clouds from the reference to the posterior.

    Args:
        densities: ``z (m, N, d)`` -> ``(log reference, log target)``, each ``(m, N)``, both in
            the coordinates of ``z`` (Jacobians included).
        z: ``(m, N, d)`` initial particles, drawn from the reference.
        generator: Random numbers of resampling and moves.
        moves: Accepted Metropolis moves per particle, on average, after each tempering step.
        max_moves: Metropolis steps after a tempering step at most.
        keep: Share of the particles the ESS keeps at each step.
        max_stages: Tempering steps at most; posteriors that have not reached
            :math:`\\beta = 1` by then report the temperature they reached.
        on_stage: Called with the temperatures ``(m,)`` after each step (progress).
    """
    m, n, d = z.shape
    ref, target = densities(z)
    beta = torch.zeros(m, dtype=torch.float64)
    log_z = torch.zeros(m, dtype=torch.float64)
    scale = torch.full((m,), 2.38 / math.sqrt(d), dtype=torch.float64)
    accepted, proposed, evaluations, stages = 0.0, 0, 1, 0
    rows = torch.arange(m)[:, None]
    while stages < max_stages and bool((beta < 1).any()):
        active = beta < 1
        delta = (target - ref).double()
        new_beta = torch.where(active, _next_beta(delta, beta, keep), beta)
        lw = (new_beta - beta)[:, None] * delta
        lw = torch.where(torch.isnan(lw) | ~active[:, None], torch.zeros_like(lw), lw)
        log_z += torch.logsumexp(lw, -1) - math.log(n)
        idx = systematic_resample(lw - torch.logsumexp(lw, -1, keepdim=True), n, generator)
        z, ref, target = z[rows, idx], ref[rows, idx], target[rows, idx]
        beta = new_beta
        b = beta.to(z.dtype)[:, None]
        moved_per_particle = torch.zeros(m, dtype=torch.float64)
        for _ in range(max_moves):
            if bool((moved_per_particle[active] >= moves).all()):
                break
            centred = z - z.mean(1, keepdim=True)
            cov = centred.transpose(1, 2) @ centred / (n - 1)
            chol = torch.linalg.cholesky(cov + 1e-9 * torch.eye(d) * cov.diagonal(0, 1, 2).mean())
            step = torch.randn(m, n, d, generator=generator, dtype=z.dtype) @ chol.transpose(1, 2)
            moved = z + scale.to(z.dtype)[:, None, None] * step
            ref_new, target_new = densities(moved)
            log_ratio = (1 - b) * (ref_new - ref) + b * (target_new - target)
            log_ratio = torch.where(torch.isnan(log_ratio), -math.inf, log_ratio)
            u = torch.rand(m, n, generator=generator, dtype=z.dtype)
            accept = (u.log() < log_ratio) & active[:, None]
            z = torch.where(accept[..., None], moved, z)
            ref = torch.where(accept, ref_new, ref)
            target = torch.where(accept, target_new, target)
            rate = accept.double().mean(1)
            moved_per_particle += rate
            scale = torch.where(active, scale * torch.exp(rate - 0.3), scale)
            accepted += float(accept.sum())
            proposed += int(active.sum()) * n
            evaluations += 1
        stages += 1
        if on_stage is not None:
            on_stage(beta)
    return SMCResult(z, target, log_z, beta, stages, accepted / max(proposed, 1), evaluations)
