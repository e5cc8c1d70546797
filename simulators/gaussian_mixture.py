r"""Gaussian mixture (Sisson et al. 2007; sbibm, Lueckmann et al. 2021).

.. math::
    \theta \sim U(-10, 10)^2, \qquad
    x \mid \theta \sim \tfrac12 N(\theta, I) + \tfrac12 N(\theta, 0.01 \, I).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import logsumexp

import simgen
from simgen.data.simulator import box_uniform

__all__ = ["GaussianMixture"]

SCALES = (1.0, 0.1)


class GaussianMixture(simgen.Simulator):
    """Gaussian mixture: 2 parameters, 2-d x, exact log-likelihood."""

    name = "gaussian_mixture"
    parameters = ("theta_1", "theta_2")
    x_shape = (2,)
    chunk_size = 100_000

    def prior(self) -> torch.distributions.Distribution:
        return box_uniform([-10.0, -10.0], [10.0, 10.0])

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        component = rng.integers(0, 2, size=theta.shape[0])
        scale = np.asarray(SCALES)[component][:, None]
        return theta + scale * rng.standard_normal(theta.shape)

    def log_likelihood(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        r"""Exact :math:`\log \sum_k \tfrac12 N(x; \theta, s_k^2 I)`."""
        d2 = ((np.asarray(x, np.float64) - theta) ** 2).sum(-1)
        terms = [np.log(0.5) - 0.5 * d2 / s**2 - 2 * np.log(s) - np.log(2 * np.pi) for s in SCALES]
        return logsumexp(np.stack(terms), axis=0)
