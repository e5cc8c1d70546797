r"""Sequential Monte Carlo for a map given a linear measurement, with a diffusion model as its
prior (:mod:`simgen.inference.field` has the prior's chain and the notation): weighted particles
of :math:`p_{model}(u)\, p(y \mid u)` for ``m`` conditions at once, and an unbiased estimate of
the evidence :math:`p(y)`, which is what the parameters' posterior needs.

The measurement is :math:`y = B_0 u + e`, :math:`e \sim N(0, V)` (``a``: the matrix over the seen
values in the model's coordinates, ``V`` diagonal). A Gaussian guess of the model, stationary
of spectrum :math:`\lambda(k)` (the model's own, :class:`~simgen.models.vp.SpectralDenoiser`,
or read off its denoiser: :class:`~simgen.inference.field_posterior.FieldPosterior`), serves
twice. Its denoiser is :math:`K_t u_t`, :math:`K_t = F^{-1} \mathrm{diag}(\kappa_t) F`,
:math:`\kappa_t = \alpha_t \lambda / (\alpha_t^2 \lambda + \sigma_t^2)`, with
:math:`\mathrm{Var}(u_0 \mid u_t) = R_t = (\sigma_t^2 / \alpha_t) K_t`.

*The chain.* It starts from the guess's law at :math:`t = 1`,
:math:`N(0, F^{-1} \mathrm{diag}(\alpha_1^2 \lambda + \sigma_1^2) F)`, and its steps are the
ancestral kernel :math:`N(u_s; m, \Sigma)` with the guess's :math:`R_t` as the spread of
:math:`\hat u_0` (:func:`~simgen.inference.field.ancestral_step` with the spectrum; a circulant
:math:`\Sigma`), so where the model is the guessed Gaussian the chain's law at every step is
the model's, whatever the number of steps, and the evidence carries no discretisation error
from the model's Gaussian part.

*The twist.* Each particle is twisted at time :math:`t` by a Gaussian guess of
:math:`p(y \mid u_t)`, of the guess's spread, centred where the model's denoiser
:math:`\hat u_0(u_t)` takes over as the signal grows, as :math:`\alpha_t^2` (the network's
:math:`\hat u_0` carries its noise error times :math:`\sigma_t / \alpha_t`, 150 at t = 1):

.. math::
    \tilde p_t(y \mid u_t) = N\big(y;\; B_0 \mu_t(u_t),\; S_t\big), \quad
    \mu_t = K_t u_t + \alpha_t^2 (\hat u_0(u_t) - K_t u_t), \quad S_t = B_0 R_t B_0^\top + V .

The step from :math:`t` to :math:`s` draws from the kernel times the twist at :math:`s` with
:math:`\mu_s(u_s)` linearised about the kernel's mean, its non-Gaussian part held,
:math:`B_0 \mu_s(u_s) \approx B_0 K_s u_s + \alpha_s^2 B_0 (\hat u_0(u_t) - K_t u_t)` (exact for
the guessed Gaussian), a Gaussian: Matheron's rule with :math:`B = B_0 K_s`,
:math:`M = S_s + B \Sigma B^\top`, :math:`u' \sim N(m, \Sigma)`, :math:`e' \sim N(0, S_s)`,
:math:`u_s = u' + \Sigma B^\top M^{-1} (c - B u' - e')` (``c``: y less the held part; every
product with :math:`\Sigma` and :math:`K_s` by FFT). The weight of the step is the target's
ratio over the proposal's,
:math:`N(c; B m, M)\, \tilde p_s(y \mid u_s) / (N(c; B u_s, S_s)\, \tilde p_t(y \mid u_t))`,
its numerator's twist computed with the network's call at :math:`s`. At :math:`t_{min}` the
twist is the likelihood :math:`N(y; B_0 u, V)` itself (linear: no linearisation,
:math:`B = B_0`), so the weighted particles target
:math:`p_{model}(u_{t_{min}})\, p(y \mid u_{t_{min}})` exactly as the particles grow, whatever
the guess (twisted SMC, Wu et al. 2023; the filtering view of Dou & Song 2024 and Cardoso et
al. 2023), with systematic resampling when the effective sample size falls below half. Where
the model is the guessed Gaussian the weights are constant: one particle gives the evidence.
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

__all__ = ["FieldSMC", "circulant", "smc"]


@dataclass
class FieldSMC:
    """Weighted particles of ``m`` conditions.

    Attributes:
        u: ``(m, N, d)`` particles at ``t_min`` (the model's coordinates, flat).
        log_weight: ``(m, N)`` normalised log weights.
        log_evidence: ``(m,)`` log of the unbiased evidence estimate :math:`\\hat p(y)`.
        ess: ``(m,)`` effective sample size of the final weights.
        min_ess: ``(m,)`` lowest effective sample size along the path (before resampling).
    """

    u: Tensor
    log_weight: Tensor
    log_evidence: Tensor
    ess: Tensor
    min_ess: Tensor


def circulant(gain: Tensor, rows: Tensor | None = None, cols: Tensor | None = None) -> Tensor:
    """The dense matrix of :math:`F^{-1} \\mathrm{diag}(g) F` on periodic maps,
    ``gain (..., h, w)`` real and symmetric in k (the operator is then real): ``(..., d, d)``,
    or only its ``rows`` and ``cols`` (flat pixel indices). Entry :math:`(i, j)` is the first
    column at the periodic offset of pixel i from pixel j."""
    h, w = gain.shape[-2:]
    first = torch.fft.ifft2(gain).real.reshape(*gain.shape[:-2], h * w)
    pixels = torch.arange(h * w, device=gain.device)
    rows = pixels if rows is None else rows
    cols = pixels if cols is None else cols
    offset = ((rows[:, None] // w - cols // w) % h) * w + (rows[:, None] % w - cols % w) % w
    return first[..., offset]


def _log_normal(r: Tensor, chol: Tensor) -> Tensor:
    """:math:`\\log N(r; 0, L L^\\top)` of rows ``r (m, N, n)`` with ``chol (m, n, n)``:
    ``(m, N)``."""
    white = torch.linalg.solve_triangular(chol, r.transpose(-1, -2), upper=False)
    log_det = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1, keepdim=True)
    return -0.5 * (white.square().sum(-2) + log_det + r.shape[-1] * math.log(2 * math.pi))


def _ess(log_weight: Tensor) -> Tensor:
    return torch.exp(-torch.logsumexp(2 * log_weight, -1))


@torch.no_grad()
def smc(
    epsilon: NoisePredictor,
    schedule: Schedule,
    a: Tensor,
    y: Tensor,
    noise_var: Tensor,
    spectrum: Tensor,
    groups: int,
    particles: int,
    steps: int,
    t_min: float,
    generator: torch.Generator,
    progress: Callable[[], None] | None = None,
) -> FieldSMC:
    """Sequential Monte Carlo (the module docstring) for ``groups`` conditions of ``particles``
    particles; ``a (n, d)``, ``y (n,)``, ``noise_var (n,)`` the measurement in the model's
    coordinates (float64), ``spectrum (m, h, w)`` the guess's :math:`\\lambda(k)` per group,
    symmetric in k. ``epsilon`` sees the particles flattened, ``(groups * particles, d)``,
    group by group; ``progress`` is called after each of the ``steps`` steps."""
    m, n, d = groups, particles, a.shape[-1]
    nonzero = (a != 0).sum(-1)
    if (nonzero == 1).all():  # a scaled selection of values (a mask): no products with a
        index = a.abs().argmax(-1)
        coef = a.gather(-1, index[:, None])

        def select(g: Tensor, both: bool) -> Tensor:  # a C(g) a^T, or a C(g)
            if both:
                return coef * circulant(g, index, index) * coef.T
            return coef * circulant(g, index)
    else:

        def select(g: Tensor, both: bool) -> Tensor:
            return a @ circulant(g) @ a.T if both else a @ circulant(g)

    noise = torch.diag(noise_var)
    lam = spectrum.double()
    likelihood = (a.expand(m, -1, -1), torch.linalg.cholesky(noise).expand(m, -1, -1))

    def twist(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The gains ``kappa (m, h, w)``, ``B (m, n_y, d)`` and the Cholesky factor of ``S`` at
        time ``t``."""
        alpha, sigma = schedule(t)
        kappa = alpha * lam / (alpha**2 * lam + sigma**2)
        s = select(kappa * sigma**2 / alpha, True) + noise
        return kappa, select(kappa, False), torch.linalg.cholesky(s)

    def filtered(g: Tensor, v: Tensor) -> Tensor:  # F^-1 diag(g) F v for v (m, N, d)
        f = torch.fft.fft2(v.reshape(m, -1, *g.shape[-2:])) * g[:, None]
        return torch.fft.ifft2(f).real.reshape(v.shape)

    times = time_grid(steps, t_min)
    alpha, sigma = schedule(times[0])
    white = torch.randn(m, n, d, generator=generator, dtype=torch.float64)
    u = filtered((alpha**2 * lam + sigma**2).sqrt(), white)  # the guess's law at t = 1
    kappa, _, chol = twist(times[0])
    log_z = torch.zeros(m, dtype=u.dtype)
    log_w = torch.full((m, n), -math.log(n), dtype=u.dtype)
    pending = torch.zeros(m, n, dtype=u.dtype)  # the step's log weight, less its last twist
    min_ess = torch.full((m,), float(n), dtype=u.dtype)
    for t, s in itertools.pairwise(times):
        eps = epsilon(u.reshape(m * n, d).float(), t.float()).double().reshape(m, n, d)
        alpha, sigma = schedule(t)
        linear = filtered(kappa, u)
        held = (u - sigma * eps) / alpha - linear  # the model's denoiser less the guess's
        current = _log_normal(y - (linear + alpha**2 * held) @ a.T, chol)  # log p~_t(y | u_t)
        log_w = log_w + pending + current
        log_z = log_z + torch.logsumexp(log_w, -1)
        log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
        ess = _ess(log_w)
        min_ess = torch.minimum(min_ess, ess)
        low = ess < n / 2
        if low.any():
            idx = systematic_resample(log_w, n, generator)
            idx = torch.where(low[:, None], idx, torch.arange(n))
            u, eps, held = (
                torch.gather(v, 1, idx[..., None].expand_as(v)) for v in (u, eps, held)
            )
            current = torch.gather(current, 1, idx)
            log_w = torch.where(low[:, None], -math.log(n), log_w)
        mean, var = ancestral_step(u, eps, t, s, schedule, lam)  # var (m, h, w): Sigma's
        if s > t_min:
            kappa, b, chol = twist(s)
            c = y - (filtered(kappa, mean) + schedule(s)[0] ** 2 * held) @ a.T  # y - B0 mu_s(m)
            g = kappa
        else:
            (b, chol), c, g = likelihood, y - mean @ a.T, torch.ones_like(var)
        big = torch.linalg.cholesky(chol @ chol.transpose(-1, -2) + select(g.square() * var, True))
        white = torch.randn(u.shape, generator=generator, dtype=u.dtype)
        prior = mean + filtered(var.sqrt(), white)
        e = torch.randn(m, n, len(y), generator=generator, dtype=u.dtype)
        misfit = c - (prior - mean) @ b.transpose(-1, -2) - e @ chol.transpose(-1, -2)
        solved = torch.cholesky_solve(misfit.transpose(-1, -2), big).transpose(-1, -2)
        u = prior + solved @ select(g * var, False)  # Sigma B^T M^-1 misfit, as rows
        proposal = _log_normal(c - (u - mean) @ b.transpose(-1, -2), chol)
        pending = _log_normal(c, big) - proposal - current
        if progress is not None:
            progress()
    log_w = log_w + pending + proposal  # at t_min the twist is the likelihood, as proposed
    log_z = log_z + torch.logsumexp(log_w, -1)
    log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
    return FieldSMC(u, log_w, log_z, _ess(log_w), torch.minimum(min_ess, _ess(log_w)))
