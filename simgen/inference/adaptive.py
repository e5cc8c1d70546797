r"""Adaptive importance sampling: a Gaussian mixture fitted to the weighted draws joins the
proposal (population Monte Carlo, Cappé et al. 2004, arXiv:math/0410357).

Where the amortised proposal :math:`q(\theta \mid x)` covers the posterior but wastes most
draws (a broad proposal for a narrow or multimodal posterior), a mixture of :data:`COMPONENTS`
Gaussians in the unconstrained space :math:`z = T^{-1}(\theta)`, fitted by EM to draws resampled
by their importance weights, sits where the posterior is. The next draws come from

.. math::
    g'(\theta) = (1 - \lambda)\, g(\theta) + \lambda\, \sum_k \pi_k\, N(T^{-1}(\theta);
    \mu_k, c\,\Sigma_k)\, |\det \partial T^{-1} / \partial \theta|,

with the defensive mixture :math:`g` kept (its prior share still bounds the weights) and the
covariances widened by :math:`c` = :data:`WIDEN` so the Gaussians' light tails cover the
posterior's. Each draw is weighed by the density of the mixture it was drawn from, so draws of
every round pool into one unbiased estimate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from simgen.inference.importance import DefensiveMixture, Weighted, log_abs_det
from simgen.inference.importance import systematic_resample as resample

__all__ = ["COMPONENTS", "AdaptedMixture", "adapt"]

COMPONENTS = 8  # Gaussians of the fitted mixture
SHARE = 0.5  # lambda: the fitted mixture's share of the next draws
WIDEN = 2.0  # c: factor on the fitted covariances
POINTS = 4096  # draws resampled by weight for the fit
ITERATIONS = 30  # of EM


class AdaptedMixture:
    """:math:`g'` for ``m`` observations: the defensive mixture ``base`` and a fitted Gaussian
    mixture ``fitted`` over z (batch shape ``(m,)``)."""

    def __init__(self, base: DefensiveMixture, fitted: MixtureSameFamily) -> None:
        self.base, self.fitted = base, fitted
        self.prior, self.transform, self.u = base.prior, base.transform, base.u

    def select(self, rows: Tensor) -> AdaptedMixture:
        """The mixture of the observations ``rows``."""
        f = self.fitted
        fitted = MixtureSameFamily(
            Categorical(logits=f.mixture_distribution.logits[rows]),
            MultivariateNormal(
                f.component_distribution.loc[rows],
                scale_tril=f.component_distribution.scale_tril[rows],
            ),
        )
        return AdaptedMixture(self.base.select(rows), fitted)

    def sample(self, size: int) -> Tensor:
        """``(m, size, d)`` draws, a share :data:`SHARE` of them from the fitted mixture."""
        fitted = round(SHARE * size)
        z = self.fitted.sample((fitted,)).transpose(0, 1)
        return torch.cat([self.base.sample(size - fitted), self.transform(z)], 1)

    def log_prob(self, theta: Tensor) -> Tensor:
        """``(m, M)`` log density at ``theta`` ``(m, M, d)``."""
        z = self.transform.inv(theta)
        fitted = self.fitted.log_prob(z.transpose(0, 1)).transpose(0, 1)
        fitted = fitted - log_abs_det(self.transform, z, theta)
        fitted = torch.where(torch.isnan(fitted), torch.full_like(fitted, -math.inf), fitted)
        base = self.base.log_prob(theta)
        return torch.logaddexp(math.log1p(-SHARE) + base, math.log(SHARE) + fitted)


def adapt(
    base: DefensiveMixture, weighted: Weighted, smoothed: Tensor, gen: torch.Generator
) -> AdaptedMixture:
    """Fit the Gaussian mixture to ``weighted``'s draws (their normalised log weights
    ``smoothed`` ``(m, M)``) and return :math:`g'`."""
    z = base.transform.inv(weighted.theta)
    big = torch.finfo(z.dtype).max ** 0.25
    z = torch.nan_to_num(z, nan=0.0, posinf=big, neginf=-big).double()
    m, _, d = z.shape
    points = torch.gather(z, 1, resample(smoothed, POINTS, gen)[..., None].expand(-1, -1, d))
    centred = points - points.mean(1, keepdim=True)
    spread = centred.transpose(1, 2) @ centred / (POINTS - 1)  # (m, d, d)
    floor = 1e-3 * torch.diag_embed(spread.diagonal(0, 1, 2)) + 1e-9 * torch.eye(d)
    pick = torch.argsort(torch.rand(m, POINTS, generator=gen), -1)[:, :COMPONENTS]
    loc = torch.gather(points, 1, pick[..., None].expand(-1, -1, d))  # (m, K, d)
    cov = spread[:, None].expand(-1, COMPONENTS, -1, -1) + floor[:, None]
    log_pi = torch.full((m, COMPONENTS), -math.log(COMPONENTS), dtype=z.dtype)
    for _ in range(ITERATIONS):
        normal = MultivariateNormal(loc, covariance_matrix=cov)
        log_r = log_pi[:, None] + normal.log_prob(points[:, :, None])  # (m, R, K)
        r = torch.softmax(log_r, -1)
        mass = r.sum(1) + 1e-10  # (m, K)
        log_pi = (mass / POINTS).log()
        loc = (r.transpose(1, 2) @ points) / mass[..., None]
        diff = points[:, :, None] - loc[:, None]  # (m, R, K, d)
        cov = torch.einsum("mrk,mrki,mrkj->mkij", r, diff, diff) / mass[..., None, None]
        cov = cov + floor[:, None]
    fitted = MixtureSameFamily(
        Categorical(logits=log_pi.float()),
        MultivariateNormal(loc.float(), scale_tril=torch.linalg.cholesky(WIDEN * cov).float()),
    )
    return AdaptedMixture(base, fitted)
