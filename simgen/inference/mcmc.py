r"""Vectorised MCMC: many chains at once as batched tensors, on any device.

Samplers take ``log_density: (c, d) -> (c,)`` (one row per chain, in an unconstrained space) and
initial points ``(c, d)``, and return :class:`Chains`.

* :func:`slice_sample`: coordinate-wise slice sampling with stepping out and shrinkage (Neal
  2003, arXiv:physics/0009028), one width per chain and coordinate, tuned during warm-up to an
  estimate of the slice's width (the mean move times 3: a uniform move within a slice of width
  S travels S / 3 on average). Needs no gradients.
* :func:`hmc_sample`: Hamiltonian Monte Carlo (Neal 2011, arXiv:1206.1901) with a per-chain
  step size tuned by dual averaging (Hoffman & Gelman 2014, arXiv:1111.4246) and a diagonal mass
  matrix from the warm-up draws; gradients by autograd.

:func:`split_rhat` and :func:`effective_sample_size` follow Gelman et al. (BDA3, ch. 11) and
Stan's reference manual (Geyer's initial monotone sequence over the chains' mean autocorrelation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Chains", "effective_sample_size", "hmc_sample", "slice_sample", "split_rhat"]

LogDensity = Callable[[Tensor], Tensor]


@dataclass
class Chains:
    """Draws of several chains.

    Attributes:
        samples: ``(draws, chains, d)`` after warm-up and thinning.
        log_prob: ``(draws, chains)`` log density of each draw.
        acceptance: Mean acceptance rate after warm-up (1 for the slice sampler, which always
            moves; for it, ``evaluations`` per draw is the cost).
        evaluations: Log-density evaluations (batched over chains) per kept draw.
    """

    samples: Tensor
    log_prob: Tensor
    acceptance: float
    evaluations: float


def _finite(lp: Tensor) -> Tensor:
    return torch.where(torch.isnan(lp), torch.full_like(lp, -math.inf), lp)


@torch.no_grad()
def slice_sample(
    log_density: LogDensity,
    init: Tensor,
    draws: int,
    warmup: int = 100,
    thin: int = 1,
    width: float = 1.0,
    max_steps: int = 20,
    on_step: Callable[[], None] | None = None,
) -> Chains:
    """Coordinate-wise slice sampling of ``c`` chains at once.

    Args:
        log_density: Unnormalised log density, ``(c, d) -> (c,)``.
        init: Starting points ``(c, d)`` with finite density.
        draws: Draws kept per chain (after thinning).
        warmup: Iterations discarded first; each chain's widths adapt during them.
        thin: Keep one iteration in ``thin``.
        width: Initial bracket width per coordinate.
        max_steps: Stepping-out steps per side at most.
        on_step: Called after each iteration (progress).
    """
    z = init.clone()
    c, d = z.shape
    lp = _finite(log_density(z))
    widths = torch.full((c, d), float(width), dtype=z.dtype, device=z.device)
    eps = torch.finfo(z.dtype).eps
    kept, kept_lp, evaluations = [], [], 0
    for it in range(warmup + draws * thin):
        for j in range(d):
            level = lp - torch.empty_like(lp).exponential_()
            left = z[:, j] - widths[:, j] * torch.rand(c, dtype=z.dtype, device=z.device)
            right = left + widths[:, j]
            for sign in (-1.0, 1.0):  # step out each end while it is inside the slice
                grow = torch.ones(c, dtype=torch.bool, device=z.device)
                for _ in range(max_steps):
                    trial = z.clone()
                    trial[:, j] = left if sign < 0 else right
                    grow = grow & (_finite(log_density(trial)) > level)
                    evaluations += 1
                    if not grow.any():
                        break
                    if sign < 0:
                        left = left - widths[:, j] * grow
                    else:
                        right = right + widths[:, j] * grow
            pending = torch.ones(c, dtype=torch.bool, device=z.device)
            new = z[:, j].clone()
            while pending.any():
                proposal = left + (right - left) * torch.rand(c, dtype=z.dtype, device=z.device)
                trial = z.clone()
                trial[:, j] = torch.where(pending, proposal, z[:, j])
                trial_lp = _finite(log_density(trial))
                evaluations += 1
                accept = pending & (trial_lp > level)
                new = torch.where(accept, proposal, new)
                lp = torch.where(accept, trial_lp, lp)
                below = pending & ~accept & (proposal < z[:, j])
                above = pending & ~accept & (proposal >= z[:, j])
                left = torch.where(below, proposal, left)
                right = torch.where(above, proposal, right)
                # a bracket shrunk to the float resolution around z stays at z (the slice's
                # level can lie within rounding of z's own density)
                collapsed = (right - left) <= 4 * eps * (1 + z[:, j].abs())
                pending = pending & ~accept & ~collapsed
            if it < warmup:  # a move within a slice of width S is S / 3 on average
                step = (3 * (new - z[:, j]).abs()).clamp(min=1e-6)
                widths[:, j] = (it * widths[:, j] + step) / (it + 1)
            z[:, j] = new
        if it >= warmup and (it - warmup) % thin == 0:
            kept.append(z.clone())
            kept_lp.append(lp.clone())
        if on_step is not None:
            on_step()
    total = max(len(kept), 1)
    return Chains(torch.stack(kept), torch.stack(kept_lp), 1.0, evaluations / total)


def _value_and_grad(log_density: LogDensity, z: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = log_density(z)
        (grad,) = torch.autograd.grad(lp.sum(), z)
    lp, grad = lp.detach(), grad.detach()
    bad = ~torch.isfinite(lp) | ~torch.isfinite(grad).all(-1)
    lp = torch.where(bad, torch.full_like(lp, -math.inf), lp)
    return lp, torch.where(bad[:, None], torch.zeros_like(grad), grad)


def hmc_sample(
    log_density: LogDensity,
    init: Tensor,
    draws: int,
    warmup: int = 200,
    thin: int = 1,
    leapfrog: int = 10,
    target_accept: float = 0.8,
    on_step: Callable[[], None] | None = None,
) -> Chains:
    """Hamiltonian Monte Carlo for ``c`` chains at once.

    Each chain has its own step size, tuned during warm-up by dual averaging towards
    ``target_accept``; the diagonal inverse mass matrix is the variance of the second half of
    the warm-up draws (pooled over chains).
    """
    z = init.clone()
    c, d = z.shape
    lp, grad = _value_and_grad(log_density, z)
    inv_mass = torch.ones(d, dtype=z.dtype, device=z.device)
    step = torch.full((c,), 0.1, dtype=z.dtype, device=z.device)
    mu, log_bar, h_bar = torch.log(10 * step), torch.zeros_like(step), torch.zeros_like(step)
    t0, gamma, kappa = 10.0, 0.05, 0.75
    kept, kept_lp, accepted, history = [], [], [], []
    window_start = warmup // 2
    for it in range(warmup + draws * thin):
        p = torch.randn_like(z) / inv_mass.sqrt()
        energy = -lp + 0.5 * (p**2 * inv_mass).sum(-1)
        z_new, p_new, lp_new, grad_new = z, p + 0.5 * step[:, None] * grad, lp, grad
        for k in range(leapfrog):
            z_new = z_new + step[:, None] * inv_mass * p_new
            lp_new, grad_new = _value_and_grad(log_density, z_new)
            if k < leapfrog - 1:
                p_new = p_new + step[:, None] * grad_new
        p_new = p_new + 0.5 * step[:, None] * grad_new
        energy_new = -lp_new + 0.5 * (p_new**2 * inv_mass).sum(-1)
        log_ratio = torch.nan_to_num(energy - energy_new, nan=-math.inf)
        prob = log_ratio.clamp(max=0).exp()
        accept = torch.rand_like(prob) < prob
        z = torch.where(accept[:, None], z_new, z)
        lp = torch.where(accept, lp_new, lp)
        grad = torch.where(accept[:, None], grad_new, grad)
        if it < warmup:
            m = it + 1
            h_bar = (1 - 1 / (m + t0)) * h_bar + (target_accept - prob) / (m + t0)
            log_step = mu - math.sqrt(m) / gamma * h_bar
            eta = m**-kappa
            log_bar = eta * log_step + (1 - eta) * log_bar
            step = log_step.exp()
            if it >= window_start:
                history.append(z.clone())
            if it == warmup - 1:
                step = log_bar.exp()
                if len(history) > 10:
                    inv_mass = torch.cat(history).var(0).clamp(min=1e-8)
        elif (it - warmup) % thin == 0:
            kept.append(z.clone())
            kept_lp.append(lp.clone())
            accepted.append(prob.mean().item())
        if on_step is not None:
            on_step()
    acceptance = sum(accepted) / max(len(accepted), 1)
    return Chains(torch.stack(kept), torch.stack(kept_lp), acceptance, float(leapfrog * thin))


def split_rhat(samples: Tensor) -> Tensor:
    """Split-chain potential scale reduction per dimension, from ``(draws, chains, d)``; NaN
    with fewer than 4 draws per chain."""
    if samples.shape[0] < 4:
        return torch.full(samples.shape[-1:], math.nan, dtype=torch.float64)
    n = samples.shape[0] // 2
    halves = torch.cat([samples[:n], samples[n : 2 * n]], dim=1).double()
    within = halves.var(0).mean(0)
    between = n * halves.mean(0).var(0)
    var_plus = (n - 1) / n * within + between / n
    return (var_plus / within.clamp(min=1e-300)).sqrt()


def effective_sample_size(samples: Tensor) -> Tensor:
    """Effective sample size per dimension from ``(draws, chains, d)``: ``n m / (1 + 2 sum rho)``
    with Geyer's initial monotone sequence of the combined autocorrelations; NaN with fewer than
    4 draws per chain."""
    if samples.shape[0] < 4:
        return torch.full(samples.shape[-1:], math.nan, dtype=torch.float64)
    x = samples.double()
    n, m, _ = x.shape
    centred = x - x.mean(0)
    size = 2 ** math.ceil(math.log2(2 * n))
    spectrum = torch.fft.rfft(centred, n=size, dim=0)
    acov = torch.fft.irfft(spectrum * spectrum.conj(), n=size, dim=0)[:n] / n  # (n, m, d)
    chain_var = acov[0] * n / (n - 1)
    var_plus = chain_var.mean(0) * (n - 1) / n + (x.mean(0).var(0) if m > 1 else 0)
    rho = 1 - (chain_var.mean(0) - acov.mean(1)) / var_plus.clamp(min=1e-300)  # (n, d)
    rho[0] = 1.0
    pairs = rho[: 2 * (n // 2)].reshape(n // 2, 2, -1).sum(1)  # Geyer's pair sums
    positive = torch.cumprod((pairs > 0).double(), 0)
    monotone = torch.cummin(pairs.clamp(min=0), 0).values * positive
    tau = -1 + 2 * monotone.sum(0)
    return n * m / tau.clamp(min=1 / math.log10(max(n * m, 10)))
