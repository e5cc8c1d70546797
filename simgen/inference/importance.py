r"""Importance sampling of posteriors, batched over many observations.

Draws :math:`\theta_j` from a defensive mixture of the amortised proposal and the prior
(Hesterberg 1995),

.. math::
    g(\theta \mid x) = (1 - \alpha)\, q(\theta \mid x) + \alpha\, p(\theta),

and weighs each by :math:`w_j = p(\theta_j)\, p(x \mid \theta_j) / g(\theta_j \mid x)`. The prior
share bounds the weights by :math:`p(x \mid \theta) / \alpha` wherever the proposal misses
mass, so every mode of the posterior has a proposal behind it. From the weights:

* the evidence :math:`Z = p(x) \approx \frac{1}{M} \sum_j w_j`, unbiased, with the delta-method
  standard error of :math:`\log Z`, :math:`\sqrt{\mathrm{Var}(w) / (M \bar w^2)}`;
* Pareto-smoothed weights and the shape :math:`\hat k` of their tail (PSIS, Vehtari et al. 2024,
  arXiv:1507.02646, by ``arviz_stats``): :math:`\hat k \le 0.7` means the estimate is
  reliable at this sample size;
* the effective sample size :math:`1 / \sum_j \bar w_j^2` of the normalised smoothed weights;
* draws by systematic resampling, each with its normalised log posterior density
  :math:`\log p(\theta \mid x) = \log p(\theta) + \log p(x \mid \theta) - \log Z`.

Likelihoods that are unbiased estimates (the VAE's importance-weighted :math:`\hat p`) enter
the weights as they are: :math:`\mathbb{E}[\hat w] = w`, so the scheme stays consistent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from arviz_stats.base import array_stats
from torch import Tensor
from torch.distributions import Distribution, Transform

from simgen.inference.probit import mixture_space
from simgen.models.proposal import Proposal

__all__ = [
    "PRIOR_SHARE",
    "DefensiveMixture",
    "Weighted",
    "evidence",
    "log_abs_det",
    "psis",
    "systematic_resample",
]

PRIOR_SHARE = 0.1  # alpha of the defensive mixture
ROWS_PER_CALL = 1 << 16  # of the proposal's density


def log_abs_det(transform: Transform, z: Tensor, theta: Tensor) -> Tensor:
    r""":math:`\log |\det \partial T(z) / \partial z|` ``(*b,)`` of ``z`` ``(*b, d)``, for
    element-wise and vector transforms alike."""
    ladj = transform.log_abs_det_jacobian(z, theta)
    return ladj.sum(-1) if ladj.shape != z.shape[:-1] else ladj


class DefensiveMixture:
    r""":math:`g(\theta \mid x) = (1 - \alpha) q(\theta \mid x) + \alpha p(\theta)` for
    ``m`` observations at once, with :math:`q(\theta \mid x) = q_z(T^{-1}(\theta) \mid x)
    |\det \partial T^{-1} / \partial \theta|`; the prior alone without a proposal.

    Args:
        prior: :math:`p(\theta)`.
        transform: :math:`T`, onto the prior's support.
        proposal: :math:`q_z`, or None.
        u: ``(m, d_x)`` the observations, standardised as the proposal takes them.
    """

    def __init__(
        self, prior: Distribution, transform: Transform, proposal: Proposal | None, u: Tensor
    ) -> None:
        self.prior, self.transform, self.proposal, self.u = prior, transform, proposal, u

    @cached_property
    def space(self) -> Transform:
        """The map from the adaptive proposal's mixture coordinates onto the prior's support
        (:func:`simgen.inference.probit.mixture_space`)."""
        return mixture_space(self.prior)

    def select(self, rows: Tensor) -> DefensiveMixture:
        """The mixture of the observations ``rows`` (indices into ``m``)."""
        return DefensiveMixture(self.prior, self.transform, self.proposal, self.u[rows])

    def sample(self, size: int) -> tuple[Tensor, Tensor]:
        """``(m, size, d)`` draws, a share :data:`PRIOR_SHARE` of them from the prior, with
        their log density ``(m, size)`` (the proposal's own draws bring theirs along)."""
        m = len(self.u)
        from_prior = size if self.proposal is None else round(PRIOR_SHARE * size)
        theta = self.prior.sample((m, from_prior))
        if self.proposal is None:
            return theta, self.prior.log_prob(theta)
        z, log_q = self.proposal.sample(self.u, size - from_prior)
        z, log_q = z.cpu(), log_q.cpu()
        theta_q = self.transform(z)
        log_q = log_q - log_abs_det(self.transform, z, theta_q)
        log_g = torch.cat(
            [self.log_prob(theta), self._mix(self.prior.log_prob(theta_q), log_q)], 1
        )
        return torch.cat([theta, theta_q], 1), log_g

    def _mix(self, prior_lp: Tensor, q: Tensor) -> Tensor:
        q = torch.where(torch.isnan(q), torch.full_like(q, -math.inf), q)
        return torch.logaddexp(math.log(PRIOR_SHARE) + prior_lp, math.log1p(-PRIOR_SHARE) + q)

    def log_prob(self, theta: Tensor) -> Tensor:
        """``(m, M)`` log density at ``theta`` ``(m, M, d)``."""
        prior_lp = self.prior.log_prob(theta)
        if self.proposal is None:
            return prior_lp
        z = self.transform.inv(theta)
        step, dev = max(1, ROWS_PER_CALL // len(self.u)), self.u.device
        parts = [
            self.proposal.log_prob(z[:, i : i + step].to(dev), self.u[:, None]).cpu()
            for i in range(0, z.shape[1], step)
        ]
        return self._mix(prior_lp, torch.cat(parts, 1) - log_abs_det(self.transform, z, theta))


@dataclass
class Weighted:
    """Importance-weighted draws of ``m`` posteriors.

    Attributes:
        theta: ``(m, M, d)`` draws.
        log_target: ``(m, M)`` unnormalised log posterior, :math:`\\log p(\\theta) + \\log
            p(x \\mid \\theta)`.
        log_proposal: ``(m, M)`` log density of the distribution they were drawn from.
    """

    theta: Tensor
    log_target: Tensor
    log_proposal: Tensor

    @property
    def log_weight(self) -> Tensor:
        """``(m, M)`` raw log importance weights (``-inf`` outside the support)."""
        w = self.log_target - self.log_proposal
        return torch.where(torch.isnan(w), torch.full_like(w, -math.inf), w)

    def join(self, other: Weighted) -> Weighted:
        """The draws of both (of the same proposal) along the sample axis."""
        return Weighted(
            torch.cat([self.theta, other.theta], 1),
            torch.cat([self.log_target, other.log_target], 1),
            torch.cat([self.log_proposal, other.log_proposal], 1),
        )

    def select(self, rows: Tensor) -> Weighted:
        """The posteriors ``rows`` (indices into ``m``)."""
        return Weighted(self.theta[rows], self.log_target[rows], self.log_proposal[rows])


def evidence(log_weight: Tensor) -> tuple[Tensor, Tensor]:
    """:math:`\\log Z` and its standard error from raw log weights ``(m, M)``: ``(m,)``
    each."""
    M = log_weight.shape[-1]
    log_z = torch.logsumexp(log_weight, -1) - math.log(M)
    w = torch.exp(log_weight - log_z[:, None])  # weights relative to their mean
    se = torch.sqrt(w.var(-1) / M)
    return log_z, se


def psis(log_weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pareto-smoothed normalised log weights ``(m, M)``, their :math:`\\hat k` ``(m,)`` and
    effective sample size ``(m,)``, from raw log weights ``(m, M)``."""
    raw = log_weight.double().cpu().numpy()
    finite = np.isfinite(raw)
    # arviz_stats smooths -ary (the leave-one-out convention: ratios 1 / p(y | theta)); draws
    # of zero weight stay zero
    floor = np.where(finite, raw, np.inf).min(-1, keepdims=True) - 745.0
    smoothed, khat = array_stats.psislw(-np.where(finite, raw, floor), axis=-1)
    smoothed = np.where(finite, smoothed, -np.inf)
    smoothed -= np.logaddexp.reduce(smoothed, axis=-1, keepdims=True)
    ess = 1 / np.exp(2 * smoothed).sum(-1)
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)
    return as_tensor(smoothed), as_tensor(khat).reshape(-1), as_tensor(ess)


def systematic_resample(log_weight: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` indices per row of normalised log weights ``(m, M)`` by systematic resampling
    (one uniform per row, ``n`` evenly spaced points through the weights' cumulative sum),
    in random order: ``(m, n)``."""
    m = log_weight.shape[0]
    cdf = torch.cumsum(torch.exp(log_weight.double()), -1)
    cdf = cdf / cdf[:, -1:]
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(m, 1, generator=generator)) / n
    idx = torch.searchsorted(cdf, u).clamp_max(log_weight.shape[-1] - 1)
    order = torch.argsort(torch.rand(m, n, generator=generator), -1)
    return torch.gather(idx, 1, order)
