r"""The variance-preserving process of :mod:`simgen.models.diffusion` (``process = "vp"``):
its noise schedule and the exact denoisers of data Gaussian given theta, with independent
values (:class:`GaussianDenoiser`) or stationary on a periodic grid
(:class:`SpectralDenoiser`).

For data :math:`x_0 \mid \theta \sim N(\mu, \mathrm{diag}(s^2))`,
:math:`x_t \mid \theta \sim N(\alpha_t \mu, v_t)`, :math:`v_t = \alpha_t^2 s^2 + \sigma_t^2`,
so with :math:`r = x_t - \alpha_t \mu`,

.. math::
    \mathbb{E}[\epsilon \mid x_t] = \sigma_t r / v_t, \quad
    \mathbb{E}[x_0 \mid x_t] = \mu + \alpha_t s^2 r / v_t, \quad
    \nabla \log q(x_t) = -r / v_t .
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from simgen.models.nn import full_precision, linear_gaussian_fit
from simgen.models.spectral import Hartley, ModeScale

__all__ = ["GaussianDenoiser", "SpectralDenoiser", "vp_alpha_sigma", "vp_beta", "vp_sample"]

Field = Callable[[Tensor, Tensor], Tensor]  # (x (*, d), t ()) -> (*, d)


def vp_beta(t: Tensor, beta_min: float, beta_max: float) -> Tensor:
    """:math:`\\beta(t) = \\beta_0 + t (\\beta_1 - \\beta_0)`."""
    return beta_min + t * (beta_max - beta_min)


def vp_alpha_sigma(t: Tensor, beta_min: float, beta_max: float) -> tuple[Tensor, Tensor]:
    """:math:`(\\alpha_t, \\sigma_t)` of the VP SDE, :math:`\\log \\alpha_t =
    -\\frac14 t^2 (\\beta_1 - \\beta_0) - \\frac12 t \\beta_0`."""
    log_alpha = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()


def vp_sample(
    drift: Field,
    epsilon: Field,
    noise: Tensor,
    t_min: float,
    steps: int,
    sampler: str,
    beta_min: float,
    beta_max: float,
) -> Tensor:
    r"""Draws from ``noise (*, d)`` at t = 1 down to ``t_min`` in ``steps`` uniform steps:
    Heun on the probability-flow ODE (``sampler = "ode"``, ``drift`` its right-hand side) or
    Euler-Maruyama on the reverse SDE :math:`\mathrm{d}x = [-\frac12 \beta x - \beta
    \nabla \log q]\,\mathrm{d}t + \sqrt\beta\,\mathrm{d}\bar w`, the score
    :math:`-\hat\epsilon / \sigma_t` from ``epsilon``."""
    x = noise
    for t, t_next in itertools.pairwise(torch.linspace(1.0, t_min, steps + 1, device=x.device)):
        h = t_next - t  # negative
        if sampler == "ode":
            d1 = drift(x, t)
            x = x + h * 0.5 * (d1 + drift(x + h * d1, t_next))
        else:
            beta = vp_beta(t, beta_min, beta_max)
            score = -epsilon(x, t) / vp_alpha_sigma(t, beta_min, beta_max)[1]
            x = x + h * (-0.5 * beta * x - beta * score)
            x = x + math.sqrt(-float(h)) * beta.sqrt() * torch.randn_like(x)
    return x


class GaussianDenoiser(nn.Module):
    r"""The exact denoiser of the VP process (the module docstring) for data
    :math:`x_0 \mid \theta \sim N(\mu, \mathrm{diag}(s^2))`, :math:`\mu = W \theta + b`.
    ``W, b, log s`` start at zero (the standard normal) or, by :meth:`fit`, at the least-squares
    regression of x on theta and the spread of its residuals.
    """

    def __init__(self, d_x: int, d_theta: int) -> None:
        super().__init__()
        self.mean = full_precision(nn.Linear(d_theta, d_x))
        nn.init.zeros_(self.mean.weight)
        nn.init.zeros_(self.mean.bias)
        self.log_scale = nn.Parameter(torch.zeros(d_x))

    @torch.no_grad()
    def fit(self, theta: Tensor, x: Tensor) -> None:
        """Least squares of a batch ``x (b, d_x)`` on ``theta (b, d_theta)``."""
        weight, bias, sigma = linear_gaussian_fit(theta, x)
        self.mean.weight.copy_(weight)
        self.mean.bias.copy_(bias)
        self.log_scale.copy_(sigma.log())

    def forward(
        self, x_t: Tensor, alpha: Tensor, sigma: Tensor, theta: Tensor, parameterization: str
    ) -> Tensor:
        """The exact prediction, in ``parameterization``'s terms; ``x_t (*, d_x)``, ``alpha``
        and ``sigma`` ``(*, 1)``, ``theta (*, d_theta)``."""
        return _gaussian_prediction(
            x_t, self.mean(theta), (2 * self.log_scale).exp(), alpha, sigma, parameterization
        )


class SpectralDenoiser(nn.Module):
    r"""The exact denoiser of the VP process for stationary Gaussian maps on a periodic
    ``side x side`` grid: the orthonormal Hartley modes :math:`h = H x_0` of such a map are
    independent, :math:`h_k \mid \theta \sim N(\mu_k(\theta), s_k(\theta)^2)` (the mode
    Gaussian of :class:`~simgen.models.spectral.ModeScale`, smooth in :math:`k` and
    :math:`\theta`), so the module docstring's prediction applies mode by mode and
    :math:`H` (its own inverse) brings it back: for :math:`\epsilon`,
    :math:`H[\sigma_t (H x_t - \alpha_t \mu) / (\alpha_t^2 s^2 + \sigma_t^2)]`. Set by
    :meth:`fit` to the maximum-likelihood spectrum of a batch given theta and held there, so the
    network beside it learns only what a stationary Gaussian does not capture.
    """

    def __init__(self, side: int, d_theta: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.hartley = Hartley(side)
        self.modes = ModeScale(side, d_theta, hidden)
        self.requires_grad_(False)  # set by :meth:`fit` alone

    def fit(self, theta: Tensor, x: Tensor) -> None:
        """The maximum-likelihood mode Gaussian of a batch ``x (b, side * side)`` given
        ``theta (b, d_theta)`` (:meth:`~simgen.models.spectral.ModeScale.fit`), then frozen."""
        self.modes.requires_grad_(True)
        self.modes.fit(theta, self.hartley(x).detach())
        self.requires_grad_(False)

    def spectrum(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, variance)`` of the Hartley modes given ``theta (*, d_theta)``, each
        ``(*, side * side)``."""
        mean, std = self.modes.normal(theta)
        return mean, std.square()

    def forward(
        self, x_t: Tensor, alpha: Tensor, sigma: Tensor, theta: Tensor, parameterization: str
    ) -> Tensor:
        """The exact prediction, in ``parameterization``'s terms; ``x_t (*, side * side)``,
        ``alpha`` and ``sigma`` ``(*, 1)``, ``theta (*, d_theta)``."""
        mean, variance = self.spectrum(theta)
        h = self.hartley(x_t)
        out = _gaussian_prediction(h, mean, variance, alpha, sigma, parameterization)
        return self.hartley(out).to(x_t.dtype)


def _gaussian_prediction(
    x_t: Tensor, mu: Tensor, s2: Tensor, alpha: Tensor, sigma: Tensor, parameterization: str
) -> Tensor:
    """The module docstring's exact prediction of ``parameterization`` (``"eps"``, ``"x0"``
    or ``"score"``) for independent values of mean ``mu`` and variance ``s2``, all
    broadcasting against ``x_t``."""
    r = x_t - alpha * mu
    v = alpha**2 * s2 + sigma**2
    if parameterization == "eps":
        return sigma * r / v
    if parameterization == "x0":
        return mu + alpha * s2 * r / v
    return -r / v
