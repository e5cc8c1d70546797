r"""Simple likelihood, complex posterior (Papamakarios et al. 2019, arXiv:1805.07226; sbibm).

.. math::
    \theta \sim U(-3, 3)^5, \quad m = (\theta_1, \theta_2), \quad
    s_1 = \theta_3^2, \; s_2 = \theta_4^2, \; \rho = \tanh \theta_5,

    x = (x_1, \dots, x_4), \quad x_j \overset{iid}{\sim}
    N\!\left(m, \begin{pmatrix} s_1^2 & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 \end{pmatrix}\right),

so x is 8-dimensional and the likelihood is Gaussian, while the posterior has four modes.
"""

from __future__ import annotations

import numpy as np
import torch

import simgen
from simgen.data.simulator import box_uniform

__all__ = ["SLCP"]

N_DRAWS = 4


def _moments(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    theta = np.asarray(theta, np.float64)
    return theta[:, :2], theta[:, 2] ** 2, theta[:, 3] ** 2, np.tanh(theta[:, 4])


class SLCP(simgen.Simulator):
    """SLCP: 5 parameters, 8-d x (4 draws of a 2-d Gaussian), exact log-likelihood."""

    name = "slcp"
    parameters = ("theta_1", "theta_2", "theta_3", "theta_4", "theta_5")
    x_shape = (2 * N_DRAWS,)
    chunk_size = 50_000

    def prior(self) -> torch.distributions.Distribution:
        return box_uniform([-3.0] * 5, [3.0] * 5)

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        m, s1, s2, rho = _moments(theta)
        z = rng.standard_normal((theta.shape[0], N_DRAWS, 2))
        # Cholesky factor of the covariance: [[s1, 0], [rho s2, sqrt(1 - rho^2) s2]]
        x1 = s1[:, None] * z[..., 0]
        x2 = s2[:, None] * (rho[:, None] * z[..., 0] + np.sqrt(1 - rho**2)[:, None] * z[..., 1])
        x = np.stack([x1, x2], axis=-1) + m[:, None, :]
        return x.reshape(theta.shape[0], 2 * N_DRAWS)

    def log_likelihood(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        r"""Exact :math:`\sum_{j=1}^4 \log N(x_j; m, S)` with the bivariate normal in closed form."""
        m, s1, s2, rho = _moments(theta)
        d = np.asarray(x, np.float64).reshape(-1, N_DRAWS, 2) - m[:, None, :]
        u, v = d[..., 0] / s1[:, None], d[..., 1] / s2[:, None]
        one_m_r2 = (1 - rho**2)[:, None]
        quad = (u**2 - 2 * rho[:, None] * u * v + v**2) / one_m_r2
        log_norm = np.log(2 * np.pi * s1 * s2 * np.sqrt(1 - rho**2))[:, None]
        return (-0.5 * quad - log_norm).sum(-1)
