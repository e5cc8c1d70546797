r"""The maximum-likelihood heteroscedastic linear-Gaussian model of x given theta: the fixed part
of the flow's standardisation (:class:`simgen.models.flow.ConditionalAffine` with ``fixed_gaussian``).

Each value of x is modelled as :math:`x_i \sim N(\mu_i(\theta), e^{-2 s_i(\theta)})` with

.. math::
    \mu_i = A_i \theta + b_i, \qquad
    s_i = \mathrm{bound}\big(W_i \theta + V_i \ell(\theta) + c_i\big), \qquad
    \ell_j(\theta) = \tfrac12 \log\big((\theta_j - o_j)^2 + \epsilon^2\big),

theta standardised and :math:`o` the standardised coordinates of :math:`\theta = 0`, so that
:math:`\ell_j \approx \log|\theta_j|` of the raw parameter. A log-scale linear in
:math:`\log|\theta|` is a noise level that is a product of powers of the parameters
(:math:`\sigma \propto \prod_j |\theta_j|^{-V_j}`): a measurement error proportional to a
signal's amplitude, a variance that is a parameter squared (slcp: :math:`\sigma = \theta_3^2`,
:math:`V = -2`). Nothing in theta is required to have that form: where it does not, the fit
gives :math:`V \approx 0`.

Fitted by maximum likelihood (Fisher scoring, :func:`heteroscedastic_fit`), not by least
squares: least squares weighs every row alike, so where the noise spans orders of magnitude its
mean is exact only to the large noise (slcp: 0.03 against a noise of 2e-4 near :math:`\theta_3 = 0`), while
the likelihood weighs each row by :math:`e^{2 s}` and fits the mean to each row's own noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["EPSILON", "HeteroscedasticFit", "heteroscedastic_fit", "log_abs"]

# smoothing of log|theta| at theta = 0, in standardised units (1e-3 of the prior's spread)
EPSILON = 1e-3


def log_abs(theta: Tensor, origin: Tensor) -> Tensor:
    r""":math:`\ell(\theta) = \tfrac12 \log((\theta - o)^2 + \epsilon^2)`, ``theta (*, d)`` and
    ``origin (d,)`` -> ``(*, d)``."""
    return 0.5 * torch.log((theta - origin) ** 2 + EPSILON**2)


@dataclass
class HeteroscedasticFit:
    """Coefficients of the model above, for ``d_x`` values of x and ``d_theta`` parameters.

    Attributes:
        mean_weight: :math:`A`, ``(d_x, d_theta)``.
        mean_bias: :math:`b`, ``(d_x,)``.
        scale_weight: :math:`W`, ``(d_x, d_theta)``.
        power: :math:`V`, ``(d_x, d_theta)``.
        scale_bias: :math:`c`, ``(d_x,)``.
        bound: The map from raw to bounded log-scale that the fit used.
    """

    mean_weight: Tensor
    mean_bias: Tensor
    scale_weight: Tensor
    power: Tensor
    scale_bias: Tensor
    bound: Callable[[Tensor], Tensor]

    def raw_log_scale(self, theta: Tensor, origin: Tensor) -> Tensor:
        r"""The raw log-scale :math:`W \theta + V \ell(\theta) + c`, ``(n, d_x)``."""
        theta = theta.to(self.power.dtype)
        return (
            theta @ self.scale_weight.T + log_abs(theta, origin) @ self.power.T + self.scale_bias
        )

    def log_scale(self, theta: Tensor, origin: Tensor) -> Tensor:
        r"""The fitted log-scale :math:`s(\theta)`, so a noise :math:`e^{-s}`, ``(n, d_x)``."""
        return self.bound(self.raw_log_scale(theta, origin))

    def residuals(self, theta: Tensor, x: Tensor) -> Tensor:
        r""":math:`x - A \theta - b`, ``(n, d_x)``."""
        return (
            x.to(self.mean_bias.dtype)
            - theta.to(self.mean_bias.dtype) @ self.mean_weight.T
            - self.mean_bias
        )


def heteroscedastic_fit(
    theta: Tensor,
    x: Tensor,
    origin: Tensor,
    bound: Callable[[Tensor], Tensor],
    iterations: int = 100,
    keep: float = 5.0,
) -> HeteroscedasticFit:
    r"""The maximum-likelihood fit of the model above to ``theta (n, d_theta)``, ``x (n, d_x)``
    (standardised), in double precision, each value of x on its own.

    Fisher scoring from the least-squares mean and a constant scale: with :math:`a` the raw
    log-scale, :math:`s = \mathrm{bound}(a)`, :math:`w = e^{2s}` and :math:`r` the residual,
    the per-row loss :math:`\tfrac12 r^2 w - s` has the gradients :math:`-r w D_\mu` and
    :math:`(r^2 w - 1) s' D_s` and the expected Hessian
    :math:`\mathrm{diag}(w D_\mu D_\mu^\top, 2 s'^2 D_s D_s^\top)` (:math:`D` the rows of the
    mean's and the log-scale's designs), which is positive definite, so each step goes downhill;
    a step is halved until the loss decreases. ``bound`` is the map from raw to bounded
    log-scale the model uses; it also keeps the fit finite where x is an exact linear function
    of theta (no noise).

    A power :math:`V_{ij}` is kept only where it is ``keep`` standard errors from 0 (a Wald test;
    the standard errors from the inverse expected Hessian of the n rows); the others are set to
    0 and the rest fitted again. :math:`\ell` has a cusp of depth :math:`\log(1/\epsilon)` and
    slope up to :math:`1 / (2\epsilon)` at :math:`\theta_j = 0`, so even a small power that
    only reflects the estimate's noise puts a narrow dip with steep walls into the
    log-likelihood, which gradient-based samplers (HMC) stumble on.
    """
    theta, x, origin = theta.double(), x.double(), origin.double()
    n, d = theta.shape
    ones = torch.ones_like(theta[:, :1])
    d_mean = torch.cat([theta, ones], dim=1)  # (n, d + 1)
    d_scale = torch.cat([theta, log_abs(theta, origin), ones], dim=1)  # (n, 2d + 1)
    mean = torch.linalg.lstsq(d_mean, x).solution  # (d + 1, d_x)
    scale = x.new_zeros(d_scale.shape[1], x.shape[1])
    scale[-1] = -0.5 * torch.log((x - d_mean @ mean).square().mean(0).clamp_min(1e-24))
    free = torch.ones_like(scale, dtype=torch.bool)
    mean, scale, fisher = _score(theta, x, d_mean, d_scale, mean, scale, free, bound, iterations)
    powers = slice(d, 2 * d)
    variance = torch.linalg.inv(n * fisher).diagonal(dim1=-2, dim2=-1).T  # (2d + 1, d_x)
    weak = scale[powers].abs() < keep * variance[powers].clamp_min(0).sqrt()
    if weak.any():
        free[powers] = ~weak
        scale[powers] = torch.where(weak, 0.0, scale[powers])
        mean, scale, _ = _score(theta, x, d_mean, d_scale, mean, scale, free, bound, iterations)
    return HeteroscedasticFit(
        mean_weight=mean[:d].T,
        mean_bias=mean[-1],
        scale_weight=scale[:d].T,
        power=scale[powers].T,
        scale_bias=scale[-1],
        bound=bound,
    )


def _score(
    theta: Tensor,
    x: Tensor,
    d_mean: Tensor,
    d_scale: Tensor,
    mean: Tensor,
    scale: Tensor,
    free: Tensor,
    bound: Callable[[Tensor], Tensor],
    iterations: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fisher scoring of :func:`heteroscedastic_fit` from ``mean (d + 1, d_x)`` and
    ``scale (m, d_x)``, the log-scale's coefficients where ``free (m, d_x)`` is False held
    where they are. Returns the fitted mean and scale coefficients and the last expected
    Hessian of the log-scale's coefficients per value of x, ``(d_x, m, m)`` (per row).

    Each value of x is its own problem: it stops once its loss changes by at most 1e-10
    (relative) in an iteration, or when no step along its scoring direction decreases it (30
    halvings); the line search evaluates only the values still searching. So the cost follows
    the values that still move, not the slowest one times all of them."""
    n = theta.shape[0]
    k, m = d_mean.shape[1], d_scale.shape[1]
    outer_mean = (d_mean[:, :, None] * d_mean[:, None, :]).reshape(n, -1)
    outer_scale = (d_scale[:, :, None] * d_scale[:, None, :]).reshape(n, -1)
    ridge = 1e-9 * torch.eye(m, dtype=x.dtype, device=x.device)
    held = ~free.T  # (d_x, m)
    # a held coefficient's row and column of the Hessian replaced by the identity's: no step
    pinned = held[:, :, None] | held[:, None, :]
    eye = torch.eye(m, dtype=x.dtype, device=x.device).expand(x.shape[1], m, m)

    def losses(x: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
        s = bound(d_scale @ scale)
        return (0.5 * (x - d_mean @ mean).square() * torch.exp(2 * s) - s).mean(0)

    mean, scale = mean.clone(), scale.clone()
    loss = losses(x, mean, scale)  # (d_x,)
    fisher = eye.clone()
    active = torch.arange(x.shape[1], device=x.device)
    for _ in range(iterations):
        if active.numel() == 0:
            break
        xa, mean_a, scale_a, loss_a = x[:, active], mean[:, active], scale[:, active], loss[active]
        with torch.enable_grad():  # s' of any bound, by autograd (callers may be in no_grad)
            raw = (d_scale @ scale_a).requires_grad_(True)
            s = bound(raw)
            (slope,) = torch.autograd.grad(s.sum(), raw)
        s, slope = s.detach(), slope.detach()
        w, r = torch.exp(2 * s), xa - d_mean @ mean_a
        grad_mean = -(r * w).T @ d_mean / n  # (active, d + 1)
        grad_scale = ((r.square() * w - 1) * slope).T @ d_scale / n  # (active, m)
        fisher_mean = (w.T @ outer_mean / n).reshape(-1, k, k)
        fisher[active] = (2 * slope.square().T @ outer_scale / n).reshape(-1, m, m)
        system = torch.where(pinned[active], eye[active], fisher[active] + ridge)
        step_mean = torch.linalg.solve(fisher_mean + ridge[:k, :k], grad_mean).T
        step_scale = torch.linalg.solve(system, grad_scale.masked_fill(held[active], 0.0)).T
        size = x.new_ones(active.numel())
        trial = losses(xa, mean_a - step_mean, scale_a - step_scale)
        worse = ~(trial <= loss_a)
        for _ in range(30):  # halve each value's step until its loss decreases
            if not worse.any():
                break
            size = torch.where(worse, size / 2, size)
            i = worse.nonzero().squeeze(1)
            trial[i] = losses(
                xa[:, i],
                mean_a[:, i] - size[i] * step_mean[:, i],
                scale_a[:, i] - size[i] * step_scale[:, i],
            )
            worse[i] = ~(trial[i] <= loss_a[i])
        moved = ~worse
        mean[:, active] = mean_a - torch.where(moved, size, 0.0) * step_mean
        scale[:, active] = scale_a - torch.where(moved, size, 0.0) * step_scale
        new = torch.where(moved, trial, loss_a)
        loss[active] = new
        # converged, or no step decreases the loss (new == loss_a where it did not move)
        done = (loss_a - new).abs() <= 1e-10 * (1 + new.abs())
        active = active[~done]
    return mean, scale, fisher + ridge
