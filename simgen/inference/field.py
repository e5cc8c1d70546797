r"""Sampling a map given a measurement, with a diffusion model as its prior:
:math:`p(u \mid y) \propto p(u)\, p(y \mid u)` in the model's own coordinates
:math:`u = (x - \mu) / \sigma_x`, for ``m`` conditions (groups) at once.

**The prior's chain.** The model's variance-preserving process (:mod:`simgen.models.diffusion`),
:math:`u_t = \alpha_t u_0 + \sigma_t \epsilon`, run backwards on a grid dense at small
:math:`t` by ancestral steps: from :math:`t` to :math:`s < t`, with
:math:`\hat u_0 = (u_t - \sigma_t \hat\epsilon) / \alpha_t`, :math:`\alpha_{t|s} = \alpha_t /
\alpha_s`, :math:`\sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2 \sigma_s^2`,

.. math::
    p(u_s \mid u_t) = N\Big(\tfrac{\alpha_{t|s} \sigma_s^2}{\sigma_t^2} u_t
        + \tfrac{\alpha_s \sigma_{t|s}^2}{\sigma_t^2} \hat u_0,\;
        \tfrac{\sigma_{t|s}^2 \sigma_s^2}{\sigma_t^2} I + \tfrac{\alpha_s^2 \sigma_{t|s}^4}
        {\sigma_t^4} \rho_t I\Big),

the last term the spread of :math:`\hat u_0` (Bao et al. 2022, Analytic-DPM) with
:math:`\rho_t = \lambda \sigma_t^2 / (\alpha_t^2 \lambda + \sigma_t^2)`, the
:math:`\mathrm{Var}(u_0 \mid u_t)` of a prior of variance :math:`\lambda` (1: the standardised
map), or per Fourier mode :math:`\rho_t(k)` for a stationary prior of spectrum
:math:`\lambda(k)` (the covariance is then circulant); exact for such a Gaussian at any step
size. The chain converges to the model's distribution as the steps grow, with or without it.

**Gibbs sampling by data augmentation** (:func:`gibbs`, the default; for measurements diagonal
in an orthonormal basis, :class:`~simgen.inference.measurement.DiagonalForm`:
:math:`\tilde y_k = g_k c_k + e_k`, :math:`e_k \sim N(0, v_k)`, :math:`c = Q^\top u`). Split the
noise: with :math:`\rho^2 < \min_k v_k / g_k^2`, :math:`z = u + \rho \xi` and
:math:`\tilde y_k / g_k = (Q^\top z)_k + N(0, w_k)`, :math:`w_k = v_k / g_k^2 - \rho^2`, so that

.. math::
    p(u, z \mid y) \propto p(u)\, N(z; u, \rho^2 I) \prod_k N(\tilde y_k / g_k; (Q^\top z)_k, w_k)

has :math:`p(u \mid y)` as its marginal, exactly. Its two conditionals are exact draws:
:math:`z \mid u, y` is Gaussian per coefficient, and :math:`u \mid z` is the posterior of a map
seen through white noise :math:`\rho`, which is the diffusion's own reverse chain started at the
time :math:`\tau` where :math:`\sigma_\tau / \alpha_\tau = \rho`, from
:math:`u_\tau = \alpha_\tau z`. No weights, so nothing degenerates with the number of pixels
seen; chains mix at a pace set by :math:`\rho` (:math:`\rho^2` is ``fraction`` of its bound).

**DPS** (:func:`dps`, Chung et al. 2023): the ancestral step followed by a step down the
gradient of :math:`\|y - A(\hat x_0)\|` through the network, with
:math:`\zeta_t = \zeta / \|y - A(\hat x_0)\|`; approximate (no weights), for any differentiable
:math:`A`, kept as the baseline. :mod:`simgen.inference.field_smc` has the sequential Monte
Carlo sampler (with the evidence).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from simgen.errors import UsageError
from simgen.inference.mcmc import effective_sample_size, split_rhat
from simgen.inference.measurement import DiagonalForm

__all__ = ["FieldGibbs", "ancestral_step", "dps", "gibbs", "noise_time", "time_grid"]

# (u (n, d), t ()) -> the predicted noise (n, d) of each row under its own condition
NoisePredictor = Callable[[Tensor, Tensor], Tensor]
Schedule = Callable[[Tensor], tuple[Tensor, Tensor]]  # t -> (alpha_t, sigma_t)


def time_grid(steps: int, t_min: float, t_max: float = 1.0) -> Tensor:
    """``steps + 1`` times from ``t_max`` down to ``t_min``, quadratic (dense at small t),
    float64."""
    i = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    return t_min + (t_max - t_min) * (1 - i).square()


def noise_time(schedule: Schedule, rho: float, t_min: float) -> float:
    """The time :math:`\\tau` at which :math:`\\sigma_\\tau / \\alpha_\\tau = \\rho` (bisection;
    the ratio grows with t); a :class:`UsageError` where ``rho`` is below the ratio at
    ``t_min``, the finest noise the model resolves."""

    def ratio(t: float) -> float:
        alpha, sigma = schedule(torch.tensor(t, dtype=torch.float64))
        return float(sigma / alpha)

    if rho <= ratio(t_min):
        raise UsageError(
            f"the measurement's noise ({rho:.2g} of the model's pixel scale) is below the finest "
            f"noise the diffusion model resolves ({ratio(t_min):.2g}): use method 'smc'"
        )
    lo, hi = t_min, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid) < rho else (lo, mid)
    return 0.5 * (lo + hi)


def ancestral_step(
    u: Tensor, eps: Tensor, t: Tensor, s: Tensor, schedule: Schedule,
    prior_var: float | Tensor = 1.0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(mean (n, d), variance)`` of :math:`p(u_s \\mid u_t)` (module docstring) from
    ``u (n, d)`` at ``t`` and its predicted noise ``eps``; the variance is ``()`` for a scalar
    ``prior_var`` :math:`\\lambda`, or per Fourier mode for a spectrum ``(..., h, w)`` (the
    step's covariance is then circulant)."""
    (a_t, s_t), (a_s, s_s) = schedule(t), schedule(s)
    u0 = (u - s_t * eps) / a_t
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    weight = a_s * var_ts / s_t**2
    mean = (a_ts * s_s**2 / s_t**2) * u + weight * u0
    spread = prior_var * s_t**2 / (a_t**2 * prior_var + s_t**2)  # the guess of Var(u_0 | u_t)
    return mean, var_ts * s_s**2 / s_t**2 + weight**2 * spread


def reverse_chain(
    epsilon: NoisePredictor,
    schedule: Schedule,
    u: Tensor,
    times: Tensor,
    generator: torch.Generator,
    prior_var: float = 1.0,
) -> Tensor:
    """Ancestral steps of the prior's chain through ``times`` (descending) from ``u (n, d)``,
    float64."""
    for t, s in itertools.pairwise(times):
        eps = epsilon(u.float(), t.float()).double()
        mean, var = ancestral_step(u, eps, t, s, schedule, prior_var)
        u = mean + var.sqrt() * torch.randn(u.shape, generator=generator, dtype=u.dtype)
    return u


@dataclass
class FieldGibbs:
    """Draws of the Gibbs sampler.

    Attributes:
        u: ``(m, draws, chains, *shape)`` kept draws (the model's coordinates).
        rhat: ``(m,)`` worst split R-hat over the values of the map.
        ess: ``(m,)`` smallest effective sample size over the values of the map.
        rho: The split's noise :math:`\\rho`.
        tau: Its time :math:`\\tau`.
    """

    u: Tensor
    rhat: Tensor
    ess: Tensor
    rho: float
    tau: float


@torch.no_grad()
def gibbs(
    epsilon: NoisePredictor,
    schedule: Schedule,
    form: DiagonalForm,
    groups: int,
    chains: int,
    sweeps: int,
    steps: int,
    t_min: float,
    generator: torch.Generator,
    burn: int | None = None,
    fraction: float = 0.9,
    start: Tensor | None = None,
    start_steps: int = 50,
    progress: Callable[[], None] | None = None,
) -> FieldGibbs:
    """Gibbs sampling by data augmentation (the module docstring): ``chains`` chains per group,
    ``sweeps`` sweeps of which the first ``burn`` (default half) are dropped, ``steps``
    ancestral steps from :math:`\\tau` to ``t_min`` per sweep. ``progress`` is called after
    each sweep. ``start (m, chains, *shape)``: where the chains start (default: draws of the
    prior, by its chain of ``start_steps`` steps from t = 1)."""
    shape, (m, n) = tuple(form.gains.shape), (groups, chains)
    seen = form.gains > 0
    gains = torch.where(seen, form.gains, 1.0)
    y_over_g = torch.where(seen, form.y / gains, 0.0)
    rho2 = fraction * float((form.noise_var / gains.square())[seen].min())
    w = torch.where(seen, form.noise_var / gains.square() - rho2, math.inf)
    tau = noise_time(schedule, math.sqrt(rho2), t_min)
    alpha_tau = schedule(torch.tensor(tau, dtype=torch.float64))[0]
    times = time_grid(steps, t_min, tau)
    precision = 1 / rho2 + 1 / w
    if start is None:  # draws of the prior: over-dispersed at every scale
        white = torch.randn(m * n, math.prod(shape), generator=generator, dtype=torch.float64)
        start = reverse_chain(epsilon, schedule, white, time_grid(start_steps, t_min), generator,
                              form.prior_var)  # fmt: skip
    u = start.double().reshape(m * n, *shape)
    burn = sweeps // 2 if burn is None else burn
    kept = []
    for sweep in range(sweeps):
        white = torch.randn(u.shape, generator=generator, dtype=torch.float64)
        c = (form.to_basis(u) / rho2 + y_over_g / w) / precision
        z = form.from_basis(c + form.to_basis(white) / precision.sqrt())
        flat = reverse_chain(
            epsilon, schedule, alpha_tau * z.reshape(m * n, -1), times, generator,
            form.prior_var,
        )  # fmt: skip
        u = flat.reshape(u.shape)
        if sweep >= burn:
            kept.append(u.reshape(m, n, *shape))
        if progress is not None:
            progress()
    draws = torch.stack(kept, 1)  # (m, draws, chains, *shape)
    flat = draws.reshape(m, len(kept), n, -1)
    rhat = torch.stack([split_rhat(f).max() for f in flat])
    ess = torch.stack([effective_sample_size(f).min() for f in flat])
    return FieldGibbs(draws, rhat, ess, math.sqrt(rho2), tau)


def dps(
    epsilon: NoisePredictor,
    schedule: Schedule,
    residual: Callable[[Tensor], Tensor],
    rows: int,
    d: int,
    steps: int,
    t_min: float,
    generator: torch.Generator,
    zeta: float = 1.0,
    progress: Callable[[], None] | None = None,
) -> Tensor:
    """Diffusion posterior sampling (the module docstring): ``rows`` draws ``(rows, d)`` at
    ``t_min``; ``residual(u0 (rows, d)) -> (rows, *)`` is :math:`y - A(\\hat x_0)` over the seen
    values (in units where the model's maps have unit scale)."""
    times = time_grid(steps, t_min)
    u = torch.randn(rows, d, generator=generator)
    for t, s in itertools.pairwise(times):
        t32 = t.float()
        with torch.enable_grad():
            u_t = u.detach().requires_grad_(True)
            eps = epsilon(u_t, t32)
            alpha, sigma = schedule(t32)
            norm = residual((u_t - sigma * eps) / alpha).flatten(1).norm(dim=-1)
            (grad,) = torch.autograd.grad(norm.sum(), u_t)
        mean, var = ancestral_step(u, eps.detach(), t32, s.float(), schedule)
        noise = torch.randn(u.shape, generator=generator)
        u = mean + var.sqrt() * noise - 2 * zeta * grad
        if progress is not None:
            progress()
    return u.detach()
