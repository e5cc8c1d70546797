r"""A damped, driven harmonic oscillator observed as a noisy time series.

.. math::
    \ddot y + 2 \zeta \omega \dot y + \omega^2 y = A \cos(\Omega t), \qquad y(0) = 1, \;
    \dot y(0) = 0,

    x_k = y(t_k) + \sigma \epsilon_k, \quad \epsilon_k \sim N(0, 1), \quad
    t_k = k \, t_{\max} / (n_{obs} - 1), \; k = 0, \dots, n_{obs} - 1.

Parameters :math:`\theta = (\omega, \zeta, A)` with priors :math:`\omega \sim U(0.5, 3)`,
:math:`\zeta \sim U(0.05, 0.5)`, :math:`A \sim U(0, 2)`; the drive frequency :math:`\Omega`
is an option. The ODE is integrated with classical fourth-order Runge-Kutta, vectorised over
rows. The log-likelihood is exact for this simulator: the same deterministic trajectory plus
Gaussian noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import simgen
from simgen.data.simulator import box_uniform

__all__ = ["Oscillator"]


class Oscillator(simgen.Simulator):
    """Damped driven oscillator: 3 parameters, ``n_obs``-d time series, exact log-likelihood."""

    name = "oscillator"
    parameters = ("omega", "damping", "drive")
    chunk_size = 1000

    def __init__(
        self,
        n_obs: int = 100,
        t_max: float = 20.0,
        noise: float = 0.1,
        drive_frequency: float = 1.0,
        dt: float = 0.02,
    ) -> None:
        if n_obs < 2 or t_max <= 0 or noise <= 0 or dt <= 0:
            raise simgen.UsageError("oscillator: need n_obs >= 2 and positive t_max, noise and dt")
        self.n_obs, self.t_max, self.noise = n_obs, t_max, noise
        self.drive_frequency, self.dt = drive_frequency, dt
        self.x_shape = (n_obs,)

    def prior(self) -> torch.distributions.Distribution:
        return box_uniform([0.5, 0.05, 0.0], [3.0, 0.5, 2.0])

    def trajectory(self, theta: np.ndarray) -> np.ndarray:
        """Noise-free :math:`y(t_k)` by RK4, shape ``(n, n_obs)``."""
        theta = np.asarray(theta, np.float64)
        omega, zeta, amp = theta[:, 0], theta[:, 1], theta[:, 2]
        spacing = self.t_max / (self.n_obs - 1)
        sub = max(1, math.ceil(spacing / self.dt))
        h = spacing / sub

        def accel(t: float, y: np.ndarray, v: np.ndarray) -> np.ndarray:
            return amp * math.cos(self.drive_frequency * t) - 2 * zeta * omega * v - omega**2 * y

        y, v = np.ones_like(omega), np.zeros_like(omega)
        out = np.empty((theta.shape[0], self.n_obs))
        out[:, 0] = y
        t = 0.0
        for k in range(1, self.n_obs):
            for _ in range(sub):
                k1y, k1v = v, accel(t, y, v)
                k2y, k2v = v + h / 2 * k1v, accel(t + h / 2, y + h / 2 * k1y, v + h / 2 * k1v)
                k3y, k3v = v + h / 2 * k2v, accel(t + h / 2, y + h / 2 * k2y, v + h / 2 * k2v)
                k4y, k4v = v + h * k3v, accel(t + h, y + h * k3y, v + h * k3v)
                y = y + h / 6 * (k1y + 2 * k2y + 2 * k3y + k4y)
                v = v + h / 6 * (k1v + 2 * k2v + 2 * k3v + k4v)
                t += h
            out[:, k] = y
        return out

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        y = self.trajectory(theta)
        return y + self.noise * rng.standard_normal(y.shape)

    def log_likelihood(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        r"""Exact :math:`\sum_k \log N(x_k; y(t_k; \theta), \sigma^2)`."""
        z = (np.asarray(x, np.float64) - self.trajectory(theta)) / self.noise
        return -0.5 * (z**2).sum(-1) - self.n_obs * math.log(self.noise * math.sqrt(2 * math.pi))
