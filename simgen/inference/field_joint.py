r"""The parameters of :meth:`~simgen.inference.field_posterior.FieldPosterior.sample_joint`:
adaptive importance sampling of :math:`p(\theta \mid y) \propto p(\theta)\, \hat p(y \mid
\theta)` with the unbiased evidence estimates of sequential Monte Carlo, and a continuous draw
from the weighted values.

All three work in the prior's unconstrained coordinates :math:`z = T^{-1}(\theta)`,
:math:`T` = ``biject_to(prior.support)``.

* :func:`mixture_weights`: deterministic-mixture weights :math:`p(\theta) \hat p(y \mid
  \theta) / \sum_j (n_j / n) q_j(\theta)` over every proposal used so far (Owen & Zhou 2000),
  lower in variance than each value weighed by its own proposal.
* :func:`fitted_proposal`: the next proposal, a Gaussian fitted to the weighted values.
* :func:`kernel_estimate`, :func:`kernel_draws`: the kernel-smoothed estimate of Liu & West
  (2001), drawn as a value picked by its weight, shrunk towards the weighted mean and
  jittered, :math:`z' = a z_i + (1 - a) \bar z + h L \epsilon`, :math:`a = \sqrt{1 - h^2}`,
  :math:`L L^\top` the weighted covariance, which keeps the weighted mean and covariance
  exactly while every draw is distinct (resampling a few hundred weighted values alone repeats
  each many times); :math:`h^2` is Silverman's rule for a Gaussian kernel at the weights'
  effective sample size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    MixtureSameFamily,
    MultivariateNormal,
    TransformedDistribution,
)

__all__ = ["fitted_proposal", "kernel_draws", "kernel_estimate", "mixture_weights"]


def mixture_weights(
    theta: Tensor,
    log_evidence: Tensor,
    proposals: list[Distribution],
    sizes: tuple[int, ...],
    prior: Distribution,
) -> Tensor:
    """Log importance weights ``(n,)`` of the values ``theta (n, d)`` drawn so far, ``sizes[j]``
    of them from ``proposals[j]`` in turn, with evidences ``log_evidence (n,)``."""
    counts = sizes[: len(proposals)]
    mixture = torch.stack(
        [q.log_prob(theta) + math.log(c) for q, c in zip(proposals, counts, strict=True)]
    ).logsumexp(0) - math.log(sum(counts))
    return prior.log_prob(theta) + log_evidence - mixture


def _moments(z: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalised weights, their effective sample size, and the weighted mean and covariance
    of ``z (n, d)``."""
    w = (log_w - log_w.logsumexp(0)).exp()
    centre = (w[:, None] * z).sum(0)
    cov = (w[:, None] * (z - centre)).T @ (z - centre)
    return w, 1 / w.square().sum(), centre, cov


def fitted_proposal(to_theta: Any, z_prior: Tensor, theta: Tensor, log_w: Tensor) -> Distribution:
    """A Gaussian in the unconstrained coordinates fitted to the weighted ``theta (n, d)``: the
    weighted covariance doubled, plus that of the prior draws ``z_prior`` over the importance
    ESS (wide while few values weigh), mapped back to the prior's support by ``to_theta``."""
    _, ess, centre, cov = _moments(to_theta.inv(theta), log_w)
    cov = 2 * cov + torch.cov(z_prior.T).reshape(len(centre), -1) / ess
    cov = cov + 1e-6 * torch.eye(len(centre), dtype=cov.dtype)  # a few draws: still full rank
    return TransformedDistribution(MultivariateNormal(centre, cov), [to_theta])


def kernel_estimate(to_theta: Any, theta: Tensor, log_w: Tensor) -> Distribution:
    """The module docstring's kernel-smoothed estimate of the weighted ``theta (m, d)``: a
    mixture of ``m`` Gaussians in the unconstrained coordinates (float64), mapped back to the
    prior's support by ``to_theta``."""
    z = to_theta.inv(theta).double()
    w, ess, centre, cov = _moments(z, log_w.double())
    d = z.shape[1]
    h2 = (4 / (d + 2)) ** (2 / (d + 4)) * float(ess) ** (-2 / (d + 4))
    shrink = math.sqrt(1 - h2)
    # full rank even when a single value carries the weight
    cov = cov + 1e-9 * cov.diagonal().mean() * torch.eye(d, dtype=cov.dtype)
    kernels = MultivariateNormal(shrink * z + (1 - shrink) * centre, h2 * cov)
    return TransformedDistribution(MixtureSameFamily(Categorical(w), kernels), [to_theta])


def kernel_draws(
    estimate: Distribution, n: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` draws of a :func:`kernel_estimate` (float64).

    Returns:
        The draws ``(n, d)``, the index of each one's parent value ``(n,)`` (the kernel it came
        from) and the estimate's log density at each ``(n,)``.
    """
    mixture = estimate.base_dist
    kernels = mixture.component_distribution
    parent = torch.multinomial(mixture.mixture_distribution.probs, n, True, generator=generator)
    noise = torch.randn(n, kernels.loc.shape[-1], generator=generator, dtype=torch.float64)
    z = kernels.loc[parent] + noise @ kernels.scale_tril[0].T  # the kernels share a covariance
    to_theta = estimate.transforms[0]
    theta = to_theta(z)
    return theta, parent, mixture.log_prob(z) - to_theta.log_abs_det_jacobian(z, theta)
