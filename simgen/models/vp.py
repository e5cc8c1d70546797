r"""The variance-preserving process of :mod:`simgen.models.diffusion` (``process = "vp"``):
its noise schedule and the exact denoiser of data Gaussian given theta.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from simgen.models.nn import full_precision, linear_gaussian_fit

__all__ = ["GaussianDenoiser", "vp_alpha_sigma", "vp_beta"]


def vp_beta(t: Tensor, beta_min: float, beta_max: float) -> Tensor:
    """:math:`\\beta(t) = \\beta_0 + t (\\beta_1 - \\beta_0)`."""
    return beta_min + t * (beta_max - beta_min)


def vp_alpha_sigma(t: Tensor, beta_min: float, beta_max: float) -> tuple[Tensor, Tensor]:
    """:math:`(\\alpha_t, \\sigma_t)` of the VP SDE, :math:`\\log \\alpha_t =
    -\\frac14 t^2 (\\beta_1 - \\beta_0) - \\frac12 t \\beta_0`."""
    log_alpha = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()


class GaussianDenoiser(nn.Module):
    r"""The exact denoiser of the VP process for data
    :math:`x_0 \mid \theta \sim N(\mu, \mathrm{diag}(s^2))`, :math:`\mu = W \theta + b`:
    :math:`x_t \mid \theta \sim N(\alpha_t \mu, v_t)`, :math:`v_t = \alpha_t^2 s^2 + \sigma_t^2`,
    so with :math:`r = x_t - \alpha_t \mu`,

    .. math::
        \mathbb{E}[\epsilon \mid x_t] = \sigma_t r / v_t, \quad
        \mathbb{E}[x_0 \mid x_t] = \mu + \alpha_t s^2 r / v_t, \quad
        \nabla \log q(x_t) = -r / v_t .

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
        mu = self.mean(theta)
        s2 = (2 * self.log_scale).exp()
        r = x_t - alpha * mu
        v = alpha**2 * s2 + sigma**2
        if parameterization == "eps":
            return sigma * r / v
        if parameterization == "x0":
            return mu + alpha * s2 * r / v
        return -r / v
