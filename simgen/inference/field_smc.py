r"""Sequential Monte Carlo for a map given a linear measurement, with a diffusion model as its
prior (:mod:`simgen.inference.field` has the prior's chain and the notation): weighted particles
of :math:`p_{model}(u)\, p(y \mid u)` for ``m`` conditions at once, and an unbiased estimate of
the evidence :math:`p(y)`, which is what the parameters' posterior needs.

The measurement is :math:`y = B_0 u + e`, :math:`e \sim N(0, V)` (``a``: the matrix over the seen
values in the model's coordinates, ``V`` diagonal). Each particle is twisted at time :math:`t`
by the exact :math:`p(y \mid u_t)` of a Gaussian *guess* of the prior, stationary with
the denoiser's gain :math:`\kappa_t(k)` per Fourier mode (:math:`\hat u_0 = K_t u_t`,
:math:`K_t = F^{-1} \mathrm{diag}(\kappa_t) F`; for a prior of spectrum :math:`\lambda`,
:math:`\kappa_t = \alpha_t \lambda / (\alpha_t^2 \lambda + \sigma_t^2)` and
:math:`\mathrm{Var}(u_0 \mid u_t) = R_t = (\sigma_t^2 / \alpha_t) K_t`):

.. math::
    \tilde p_t(y \mid u_t) = N\big(y;\; B_0 K_t u_t,\; S_t\big), \qquad
    S_t = B_0 R_t B_0^\top + V .

Linear-Gaussian in :math:`u_t`, so the locally optimal proposal
:math:`q(u_s \mid u_t) \propto N(u_s; m, \beta I)\, \tilde p_s(y \mid u_s)` (the chain's step
times the twist) is Gaussian, drawn by Matheron's rule with :math:`B = B_0 K_s`,
:math:`M = S_s + \beta B B^\top`: :math:`u' \sim N(m, \beta I)`, :math:`e' \sim N(0, S_s)`,
:math:`u_s = u' + \beta B^\top M^{-1} (y - B u' - e')`; and the incremental weight is
:math:`N(y; B m, M) / \tilde p_t(y \mid u_t)`. At :math:`t_{min}` the twist is swapped for the
likelihood :math:`N(y; B_0 u, V)`, so the weighted particles target
:math:`p_{model}(u_{t_{min}})\, p(y \mid u_{t_{min}})` exactly as the particles grow, whatever
the guess (twisted SMC, Wu et al. 2023; the filtering view of Dou & Song 2024 and Cardoso et
al. 2023), with systematic resampling when the effective sample size falls below half. Where
the model is the guessed Gaussian the weights are constant: one particle gives the evidence.
The guess is the model's own linearisation at white-noise states
(:func:`simgen.inference.field_posterior.FieldPosterior`), so the weights correct only how far
the model is from a Gaussian field.
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

# t () -> kappa (m, *shape): the guessed denoiser's gain per Fourier mode of each group
Gain = Callable[[Tensor], Tensor]


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
    gain: Gain,
    groups: int,
    particles: int,
    steps: int,
    t_min: float,
    generator: torch.Generator,
    progress: Callable[[], None] | None = None,
) -> FieldSMC:
    """Sequential Monte Carlo (the module docstring) for ``groups`` conditions of ``particles``
    particles; ``a (n, d)``, ``y (n,)``, ``noise_var (n,)`` the measurement in the model's
    coordinates (float64), ``gain`` the guess per group. ``epsilon`` sees the particles
    flattened, ``(groups * particles, d)``, group by group; ``progress`` is called after each
    of the ``steps`` steps."""
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

    def twist(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``B (m, n_y, d)``, ``B B^T`` and the Cholesky factor of ``S`` at time ``t``."""
        alpha, sigma = schedule(t)
        kappa = gain(t).double().clamp(0, 1 / float(alpha))
        b = select(kappa, False)
        s = select(kappa * sigma**2 / alpha, True) + noise
        return b, select(kappa.square(), True), torch.linalg.cholesky(s)

    def log_twist(u: Tensor, b: Tensor, chol: Tensor) -> Tensor:  # (m, N)
        return _log_normal(y - u @ b.transpose(-1, -2), chol)

    times = time_grid(steps, t_min)
    u = torch.randn(m, n, d, generator=generator, dtype=torch.float64)
    b, _, chol = twist(times[0])
    current = log_twist(u, b, chol)  # log p~_t(y | u_t) of each particle
    log_z = torch.logsumexp(current, -1) - math.log(n)  # u_1 ~ N(0, I), weighed by the twist
    log_w = current - torch.logsumexp(current, -1, keepdim=True)
    min_ess = _ess(log_w)
    for t, s in itertools.pairwise(times):
        eps = epsilon(u.reshape(m * n, d).float(), t.float()).double().reshape(m, n, d)
        mean, var = ancestral_step(u, eps, t, s, schedule)
        b, bbt, chol = twist(s)
        big = torch.linalg.cholesky(chol @ chol.transpose(-1, -2) + var * bbt)  # of M
        increment = _log_normal(y - mean @ b.transpose(-1, -2), big) - current
        prior = mean + var.sqrt() * torch.randn(u.shape, generator=generator, dtype=u.dtype)
        e = torch.randn(m, n, len(y), generator=generator, dtype=u.dtype)
        misfit = y - prior @ b.transpose(-1, -2) - e @ chol.transpose(-1, -2)
        u = prior + var * torch.cholesky_solve(misfit.transpose(-1, -2), big).transpose(-1, -2) @ b
        current = log_twist(u, b, chol)
        log_z = log_z + torch.logsumexp(log_w + increment, -1)
        log_w = log_w + increment
        log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
        ess = _ess(log_w)
        min_ess = torch.minimum(min_ess, ess)
        low = ess < n / 2
        if low.any():
            idx = systematic_resample(log_w, n, generator)
            idx = torch.where(low[:, None], idx, torch.arange(n))
            u = torch.gather(u, 1, idx[..., None].expand_as(u))
            current = torch.gather(current, 1, idx)
            log_w = torch.where(low[:, None], -math.log(n), log_w)
        if progress is not None:
            progress()
    exact = torch.linalg.cholesky(noise).expand(m, -1, -1)
    final = _log_normal(y - u @ a.T, exact) - current
    log_z = log_z + torch.logsumexp(log_w + final, -1)
    log_w = log_w + final
    log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
    return FieldSMC(u, log_w, log_z, _ess(log_w), torch.minimum(min_ess, _ess(log_w)))
