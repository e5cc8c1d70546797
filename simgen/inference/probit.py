r"""The space where the adaptive proposal's Gaussian mixtures live: a bounded coordinate
:math:`\theta \in (a, b)` maps to :math:`z = \Phi^{-1}((\theta - a) / (b - a))`, with
:math:`\Phi` the standard normal distribution function (probit); any other support keeps
the map of :func:`torch.distributions.biject_to`.

Why not the logit of :func:`torch.distributions.biject_to`: a posterior with its mass up
against a bound of a uniform prior (slcp's :math:`\theta_5`, where :math:`\tanh \theta_5`
saturates and the likelihood flattens towards the edge) has density :math:`\propto
|\partial \theta / \partial z|` there, which is :math:`(b - a)\, \sigma(z) (1 - \sigma(z))
\sim e^{-|z|}` under the logit, an exponential tail that Gaussians fit poorly (where slcp's
largest importance weights lie under the logit), and :math:`(b - a)\, \varphi(z)` under the
probit, a Gaussian tail. A posterior in the interior, narrow or broad, is as smooth in either.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, biject_to, constraints
from torch.distributions.transforms import IndependentTransform, Transform

__all__ = ["Probit", "mixture_space"]


class Probit(Transform):
    r""":math:`\theta = a + (b - a)\, \Phi(z)` element-wise, from the real line onto
    :math:`(a, b)`; each side computed from its own bound (:math:`b - (b - a) \Phi(-z)` for
    :math:`z > 0`), so both edges keep float32's relative precision.

    Args:
        low: :math:`a`, broadcastable against the draws.
        high: :math:`b`.
    """

    domain = constraints.real
    bijective = True
    sign = +1

    def __init__(self, low: Tensor, high: Tensor) -> None:
        super().__init__()
        self.low, self.high = low, high
        self.codomain = constraints.interval(low, high)

    def _call(self, z: Tensor) -> Tensor:
        # from the nearer bound: -|z|, differentiable on either side of 0
        inside = (self.high - self.low) * torch.special.ndtr(torch.where(z < 0, z, -z))
        return torch.where(z < 0, self.low + inside, self.high - inside)

    def _inverse(self, theta: Tensor) -> Tensor:
        width = self.high - self.low
        below, above = (theta - self.low) / width, (self.high - theta) / width
        z = torch.special.ndtri(torch.minimum(below, above))  # <= 0, from the nearer bound
        return torch.where(below < above, z, -z)

    def log_abs_det_jacobian(self, z: Tensor, theta: Tensor) -> Tensor:
        """:math:`\\log (b - a) + \\log \\varphi(z)` element-wise."""
        return (self.high - self.low).log() - 0.5 * z * z - 0.5 * math.log(2 * math.pi)


def mixture_space(prior: Distribution) -> Transform:
    """The map from the mixtures' z onto the prior's support: :class:`Probit` where the
    support is a box (an interval, possibly reinterpreted as one event), else
    ``biject_to(prior.support)``."""
    support, event_dims = prior.support, 0
    while isinstance(support, constraints.independent):
        event_dims += support.reinterpreted_batch_ndims
        support = support.base_constraint
    if not isinstance(support, constraints.interval | constraints.half_open_interval):
        return biject_to(prior.support)
    low = torch.as_tensor(support.lower_bound, dtype=torch.get_default_dtype())
    high = torch.as_tensor(support.upper_bound, dtype=torch.get_default_dtype())
    probit = Probit(low, high)
    return IndependentTransform(probit, event_dims) if event_dims else probit
