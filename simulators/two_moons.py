r"""Two moons (Greenberg et al. 2019, arXiv:1905.07488; sbibm, Lueckmann et al. 2021).

.. math::
    \theta \sim U(-1, 1)^2, \quad a \sim U(-\pi/2, \pi/2), \quad r \sim N(0.1, 0.01^2),
    x = (r \cos a + 0.25, r \sin a)
      + \left(-|\theta_1 + \theta_2| / \sqrt{2}, (-\theta_1 + \theta_2) / \sqrt{2}\right).

The posterior is bimodal (x depends on :math:`\theta_1 + \theta_2` only through its absolute
value) and crescent-shaped.
"""

from __future__ import annotations

import numpy as np
import torch

import simgen
from simgen.data.simulator import box_uniform

__all__ = ["TwoMoons"]

R_MEAN, R_STD = 0.1, 0.01


class TwoMoons(simgen.Simulator):
    """Two moons: 2 parameters, 2-d x, exact log-likelihood."""

    name = "two_moons"
    parameters = ("theta_1", "theta_2")
    x_shape = (2,)
    chunk_size = 100_000

    def prior(self) -> torch.distributions.Distribution:
        return box_uniform([-1.0, -1.0], [1.0, 1.0])

    @staticmethod
    def _offset(theta: np.ndarray) -> np.ndarray:
        s = np.sqrt(0.5)
        return np.stack(
            [-np.abs(theta[:, 0] + theta[:, 1]) * s, (theta[:, 1] - theta[:, 0]) * s], axis=-1
        )

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = theta.shape[0]
        a = rng.uniform(-np.pi / 2, np.pi / 2, size=n)
        r = rng.normal(R_MEAN, R_STD, size=n)
        p = np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], axis=-1)
        return p + self._offset(theta)

    def log_likelihood(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        r"""Exact density by the change of variables :math:`(r, a) \mapsto q = p - (0.25, 0)`.

        :math:`p(q) = N(|q|; 0.1, 0.01^2) / (\pi |q|)` for :math:`q_1 > 0`, else 0 (the mass of
        :math:`r < 0`, about :math:`10^{-23}`, is neglected).
        """
        q = np.asarray(x, dtype=np.float64) - self._offset(np.asarray(theta, np.float64))
        q[:, 0] -= 0.25
        r = np.hypot(q[:, 0], q[:, 1])
        with np.errstate(divide="ignore"):
            log_r = -0.5 * ((r - R_MEAN) / R_STD) ** 2 - np.log(R_STD * np.sqrt(2 * np.pi))
            lp = log_r - np.log(np.pi * r)
        return np.where(q[:, 0] > 0, lp, -np.inf)
