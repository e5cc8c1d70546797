r"""The discrete-time chain of a diffusion model (DDPM, Ho et al. 2020, arXiv:2006.11239): its
ancestral sampler and its evidence lower bound (ELBO) as a density bound.

The chain has ``T`` steps on the same variance-preserving schedule as the SDE, at times
:math:`t_i = i / T`: :math:`\bar\alpha_i = \alpha(t_i)^2`, :math:`\beta_i = 1 -
\bar\alpha_i / \bar\alpha_{i-1}` (:math:`\bar\alpha_0 = 1`), which for the default
:math:`\beta(t)` from 0.1 to 20 and ``T = 1000`` is Ho et al.'s linear schedule from
:math:`10^{-4}` to 0.02. With :math:`\hat\epsilon` the network's noise prediction,

.. math::
    p(x_{i-1} \mid x_i) = N\left(\tfrac{1}{\sqrt{1 - \beta_i}}\left(x_i -
        \tfrac{\beta_i}{\sqrt{1 - \bar\alpha_i}} \hat\epsilon(x_i, t_i)\right),
        \tilde\beta_i I\right), \quad
    \tilde\beta_i = \tfrac{1 - \bar\alpha_{i-1}}{1 - \bar\alpha_i} \beta_i ,

and :math:`p(x_0 \mid x_1)` has variance :math:`\beta_1`. The bound
:math:`\log p(x_0) \ge -L_T - \sum_{i \ge 2} L_{i-1} - L_0` has, with the reverse variances
matched to the forward posterior's,

.. math::
    L_{i-1} = \tfrac{\beta_i^2}{2 \tilde\beta_i (1 - \beta_i)(1 - \bar\alpha_i)}
        \|\epsilon - \hat\epsilon(x_i, t_i)\|^2, \quad
    L_0 = \tfrac{\beta_1}{2 (1 - \beta_1)(1 - \bar\alpha_1)} \|\epsilon - \hat\epsilon\|^2
        + \tfrac{d}{2} \log(2 \pi \beta_1),

:math:`x_i = \sqrt{\bar\alpha_i} x_0 + \sqrt{1 - \bar\alpha_i} \epsilon`, and
:math:`L_T = \mathrm{KL}(N(\sqrt{\bar\alpha_T} x_0, (1 - \bar\alpha_T) I) \,\|\, N(0, I))`.
``log_prob`` returns this bound with one noise draw per step (an unbiased estimate of the
ELBO, below :math:`\log p` in expectation), evaluating the network at all ``T`` steps.
Sampling follows the chain, or a respaced sub-chain of ``steps`` steps (Nichol & Dhariwal 2021,
arXiv:2102.09672: the same :math:`\bar\alpha` at the kept steps).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import torch
from torch import Size, Tensor
from torch.distributions import Distribution, constraints

__all__ = ["DDPMDistribution", "NoisePredictor", "alpha_bar", "ancestral_sample", "elbo"]


class NoisePredictor(Protocol):
    """What the chain needs of a diffusion model (:class:`simgen.models.diffusion.Diffusion`):
    ``config.discrete_steps``, the schedule :math:`t \\mapsto (\alpha_t, \\sigma_t)`, the noise
    prediction :math:`\\hat\\epsilon(x_t, t, \theta)` and the size of x."""

    config: Any
    d_x: int

    def schedule(self, t: Tensor) -> tuple[Tensor, Tensor]: ...

    def epsilon(self, x: Tensor, t: Tensor, theta: Tensor) -> Tensor: ...


def alpha_bar(model: NoisePredictor, steps: Tensor) -> Tensor:
    """:math:`\\bar\\alpha_i` at integer steps ``i`` in ``0..T`` (1 at ``i = 0``)."""
    t = steps.double() / model.config.discrete_steps
    alpha, _ = model.schedule(t)
    return torch.where(steps == 0, torch.ones_like(alpha), alpha**2)


def elbo(model: NoisePredictor, x: Tensor, theta: Tensor, chunk: int = 50) -> Tensor:
    """The ELBO of rows ``x`` ``(b, d_x)`` given ``theta`` ``(b, d_theta)``, ``(b,)``, one noise
    draw per step, the network evaluated ``chunk`` steps at a time."""
    big_t, d = model.config.discrete_steps, x.shape[-1]
    steps = torch.arange(1, big_t + 1, device=x.device)
    abar, abar_prev = alpha_bar(model, steps), alpha_bar(model, steps - 1)  # (T,) float64
    beta = 1 - abar / abar_prev
    tilde = torch.where(steps == 1, beta, (1 - abar_prev) / (1 - abar) * beta)
    weight = beta**2 / (2 * tilde * (1 - beta) * (1 - abar))  # L_{i-1} per squared error
    total = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for lo in range(0, big_t, chunk):
        idx = slice(lo, min(lo + chunk, big_t))
        a = abar[idx].float()[:, None, None]  # (c, 1, 1)
        eps = torch.randn(len(a), *x.shape, device=x.device)
        x_i = a.sqrt() * x + (1 - a).sqrt() * eps
        t = (steps[idx].float() / big_t)[:, None].expand(-1, len(x))
        error = (model.epsilon(x_i, t, theta.expand(len(a), *theta.shape)) - eps).square()
        total += (weight[idx][:, None] * error.sum(-1).double()).sum(0)
    total += 0.5 * d * math.log(2 * math.pi * beta[0].item())
    a_t = abar[-1]
    kl_t = 0.5 * ((a_t * x.double().square()).sum(-1) + d * (1 - a_t - 1 - torch.log(1 - a_t)))
    return (-(total + kl_t)).to(x.dtype)


@torch.no_grad()
def ancestral_sample(model: NoisePredictor, theta: Tensor, steps: int) -> Tensor:
    """One ``x`` per row of ``theta`` ``(b, d_theta)`` down the chain respaced to ``steps``."""
    big_t = model.config.discrete_steps
    kept = torch.linspace(big_t, 1, min(steps, big_t), device=theta.device).round().long()
    kept = torch.unique_consecutive(kept)
    x = torch.randn(*theta.shape[:-1], model.d_x, device=theta.device)
    for k, i in enumerate(kept):
        prev = kept[k + 1] if k + 1 < len(kept) else torch.zeros_like(i)
        a, a_prev = alpha_bar(model, i).float(), alpha_bar(model, prev).float()
        beta = 1 - a / a_prev
        t = (i.float() / big_t).expand(x.shape[:-1])
        mean = (x - beta / (1 - a).sqrt() * model.epsilon(x, t, theta)) / (1 - beta).sqrt()
        if prev == 0:
            return mean  # the last step's mean: x_0
        x = mean + ((1 - a_prev) / (1 - a) * beta).sqrt() * torch.randn_like(x)
    return x


class DDPMDistribution(Distribution):
    """:math:`p(x \\mid \\theta)` of the discrete chain: ancestral sampling, ``log_prob`` = the
    ELBO (a stochastic lower bound; see the module docstring)."""

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector

    def __init__(self, model: NoisePredictor, theta: Tensor) -> None:
        self.model, self.theta = model, theta
        super().__init__(theta.shape[:-1], Size([model.d_x]), validate_args=False)

    def sample(self, sample_shape: Size | tuple[int, ...] = ()) -> Tensor:
        theta = self.theta.expand(*sample_shape, *self.theta.shape)
        flat = theta.reshape(-1, theta.shape[-1])
        x = ancestral_sample(self.model, flat, self.model.config.steps)
        return x.reshape(*theta.shape[:-1], self.model.d_x)

    def log_prob(self, x: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(x.shape[:-1], self.batch_shape)
        x = x.expand(*shape, x.shape[-1]).reshape(-1, x.shape[-1])
        theta = self.theta.expand(*shape, self.theta.shape[-1]).reshape(-1, self.theta.shape[-1])
        return elbo(self.model, x, theta).reshape(shape)
