r"""Gaussian linear (sbibm, Lueckmann et al. 2021, arXiv:2101.04653).

.. math::
    \theta \sim N(0, 0.1 \, I_d), \qquad x \mid \theta \sim N(\theta, 0.1 \, I_d), \qquad d = 10.

Likelihood and posterior are Gaussian and known in closed form.
"""

from __future__ import annotations

import numpy as np
import torch

import simgen

__all__ = ["GaussianLinear"]


class GaussianLinear(simgen.Simulator):
    """Gaussian linear: ``dim`` parameters (default 10), ``dim``-d x, exact log-likelihood."""

    name = "gaussian_linear"
    chunk_size = 50_000

    def __init__(self, dim: int = 10, prior_var: float = 0.1, noise_var: float = 0.1) -> None:
        if dim < 1:
            raise simgen.UsageError(f"gaussian_linear: dim must be >= 1, got {dim}")
        self.dim, self.prior_var, self.noise_var = dim, prior_var, noise_var
        self.x_shape = (dim,)

    @property
    def parameters(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(f"theta_{i + 1}" for i in range(self.dim))

    def prior(self) -> torch.distributions.Distribution:
        loc = torch.zeros(self.dim)
        return torch.distributions.Independent(
            torch.distributions.Normal(loc, torch.full_like(loc, self.prior_var**0.5)), 1
        )

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + np.sqrt(self.noise_var) * rng.standard_normal(theta.shape)

    def log_likelihood(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        r"""Exact :math:`\log N(x; \theta, \sigma^2 I)`."""
        z2 = ((np.asarray(x, np.float64) - theta) ** 2).sum(-1) / self.noise_var
        return -0.5 * (z2 + self.dim * np.log(2 * np.pi * self.noise_var))
