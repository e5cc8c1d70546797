r"""Cosmology-like density maps: a log-normal field on a periodic 2-D grid.

Parameters :math:`\Omega_m \sim U(0.1, 0.5)` and :math:`\sigma_8 \sim U(0.6, 1.0)`. The map is an
``size`` x ``size`` grid of side ``box`` (Mpc/h, pixels of ``box / size``):

1. a Gaussian random field :math:`g` with the power spectrum
   :math:`P(k) = A \, k^{n_s} \, T^2(k / \Gamma)`, the BBKS transfer function (Bardeen et al.
   1986) with shape parameter :math:`\Gamma = \Omega_m h`, :math:`h = 0.7`,
   :math:`n_s = 0.96`, and :math:`A` such that the field smoothed by a 2-D top hat of radius
   8 Mpc/h has variance :math:`\sigma_8^2`:
   :math:`\sigma_8^2 = \int_0^\infty P(k) \, W^2(8k) \, k \, dk / (2\pi)`,
   :math:`W(y) = 2 J_1(y) / y`;
2. (``lognormal``, the default) the density contrast
   :math:`\delta = \exp(g - \sigma_g^2 / 2) - 1`, non-Gaussian with mean 0 like a real density
   field (Coles & Jones 1991), :math:`\sigma_g^2` the pixel variance of :math:`g`;
3. optional white pixel noise of standard deviation ``noise``.

Discrete convention: with :math:`\tilde g_m` the (unnormalised) DFT of the map and
:math:`k_m` its wave vectors, :math:`\langle |\tilde g_m|^2 \rangle = N^2 \lambda_m`,
:math:`\lambda_m = N^2 P(|k_m|) / L^2` (:math:`N` = ``size``, :math:`L` = ``box``); the
:math:`\lambda_m` are the eigenvalues of the field's circulant covariance. The mean mode
:math:`k = 0` gets :math:`P(k_f)`, :math:`k_f = 2\pi / L`, the fundamental mode's power (a
finite box's mean density fluctuates too), so the covariance is not singular.

Measured maps (:mod:`simgen.inference.measurement`, :math:`y = A x + s\, n` with a linear
:math:`A`), Gaussian variant: :math:`y \mid \theta \sim N(0, A C A^\top + s^2 I)` over the
seen values (:meth:`CosmologyField.measured_log_likelihood`), and the Wiener filter
:math:`x \mid y, \theta \sim N(C A^\top S^{-1} y, C - C A^\top S^{-1} A C)`,
:math:`S = A C A^\top + s^2 I` (:meth:`CosmologyField.wiener`): the exact answers a field prior
is checked against.

Exact likelihood: :math:`\log N(g; 0, C) = -\frac12 \sum_m \frac{|\tilde g_m|^2}{N^2
(\lambda_m + s^2)} - \frac12 \sum_m \log 2\pi (\lambda_m + s^2)` (Gaussian variant, noise
:math:`s`), and for the log-normal one without noise the change of variables
:math:`g = \log(1 + \delta) + \sigma_g^2 / 2`:
:math:`\log p(\delta) = \log N(g; 0, C) - \sum_j \log(1 + \delta_j)`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from scipy import integrate, special

import simgen
from simgen.data.simulator import box_uniform

__all__ = ["CosmologyField", "bbks_transfer", "power_spectrum_model"]

H = 0.7
N_S = 0.96
R8 = 8.0


def bbks_transfer(q: np.ndarray) -> np.ndarray:
    """BBKS transfer function :math:`T(q)`, :math:`q = k / \\Gamma` (k in h/Mpc)."""
    q = np.maximum(np.asarray(q, np.float64), 1e-12)
    poly = 1 + 3.89 * q + (16.1 * q) ** 2 + (5.46 * q) ** 3 + (6.71 * q) ** 4
    return np.log1p(2.34 * q) / (2.34 * q) * poly**-0.25


@functools.lru_cache(maxsize=4096)
def _shape_norm(omega_m: float) -> float:
    """:math:`\\int_0^\\infty k^{n_s} T^2(k / \\Gamma) W^2(8k) k \\, dk / 2\\pi` (A = 1)."""

    def integrand(log_k: float) -> float:
        k = np.exp(log_k)
        y = R8 * k
        window = 2 * special.j1(y) / y
        return k**N_S * bbks_transfer(k / (omega_m * H)) ** 2 * window**2 * k * k / (2 * np.pi)

    value, _ = integrate.quad(integrand, np.log(1e-5), np.log(50.0), limit=400)
    return value


def power_spectrum_model(k: np.ndarray, omega_m: float, sigma_8: float) -> np.ndarray:
    """:math:`P(k)` (area units, (Mpc/h)^2) of the Gaussian field for one parameter pair."""
    amplitude = sigma_8**2 / _shape_norm(round(float(omega_m), 12))
    k = np.asarray(k, np.float64)
    return amplitude * np.maximum(k, 1e-12) ** N_S * bbks_transfer(k / (omega_m * H)) ** 2


class CosmologyField(simgen.Simulator):
    """Log-normal (or Gaussian) density maps of ``size`` x ``size`` pixels; exact likelihood
    without noise (log-normal) or with any noise (Gaussian)."""

    name = "cosmology"
    parameters = ("Omega_m", "sigma_8")
    chunk_size = 500

    def __init__(
        self, size: int = 32, box: float = 256.0, lognormal: bool = True, noise: float = 0.0
    ) -> None:
        if size < 4 or size % 2:
            raise simgen.UsageError(f"cosmology: size must be an even number >= 4, got {size}")
        if box <= 0 or noise < 0:
            raise simgen.UsageError("cosmology: box must be > 0 and noise >= 0")
        self.size, self.box, self.lognormal, self.noise = size, float(box), lognormal, noise
        self.x_shape = (size, size)
        freq = 2 * np.pi * np.fft.fftfreq(size, d=box / size)
        self.k = np.hypot(freq[:, None], freq[None, :])  # |k_m|, (size, size)

    def prior(self) -> torch.distributions.Distribution:
        return box_uniform([0.1, 0.6], [0.5, 1.0])

    def eigenvalues(self, theta: np.ndarray) -> np.ndarray:
        """:math:`\\lambda_m` per parameter row: ``(n, 2)`` -> ``(n, size, size)``."""
        n, lam = self.size, []
        k = np.where(self.k > 0, self.k, 2 * np.pi / self.box)  # k = 0 takes the fundamental
        for omega_m, sigma_8 in np.asarray(theta, np.float64):
            lam.append(n**2 * power_spectrum_model(k, omega_m, sigma_8) / self.box**2)
        return np.stack(lam)

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lam = self.eigenvalues(theta)
        white = rng.standard_normal((len(theta), self.size, self.size))
        g = np.fft.ifft2(np.fft.fft2(white) * np.sqrt(lam)).real
        x = np.expm1(g - 0.5 * lam.mean(axis=(1, 2))[:, None, None]) if self.lognormal else g
        if self.noise:
            x = x + self.noise * rng.standard_normal(x.shape)
        return x

    def covariance(self, theta: np.ndarray) -> np.ndarray:
        """The Gaussian map's pixel covariance :math:`C` (noise included) for one parameter
        pair ``(2,)``: ``(size**2, size**2)``, float64."""
        lam = self.eigenvalues(np.asarray(theta, np.float64)[None])[0]
        basis = np.eye(self.size**2).reshape(-1, self.size, self.size)
        cov = np.fft.ifft2(np.fft.fft2(basis) * lam).real.reshape(self.size**2, -1)
        return cov + self.noise**2 * np.eye(self.size**2)

    def _measured(self, measurement: Any, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(C, A, S)``: the covariance, the linear measurement's matrix over its seen values
        and :math:`S = A C A^\\top + s^2 I`."""
        if self.lognormal:
            raise simgen.SimulatorError(
                "cosmology: the measured map's exact posterior needs the Gaussian variant "
                "(lognormal=False)"
            )
        cov = self.covariance(theta)
        basis = torch.eye(self.size**2, dtype=torch.float64).reshape(-1, *self.x_shape)
        seen = measurement.seen.reshape(-1).numpy()
        a = measurement(basis).reshape(self.size**2, -1).numpy().T[seen]  # rows: seen values
        return cov, a, a @ cov @ a.T + measurement.noise**2 * np.eye(len(a))

    def measured_log_likelihood(self, y: Any, measurement: Any, theta: np.ndarray) -> float:
        """Exact :math:`\\log p(y \\mid \\theta)` of a map measured by a linear ``measurement``
        (see the module docstring), for one parameter pair ``theta (2,)``."""
        _, _, s = self._measured(measurement, theta)
        y_seen = measurement.check(y).reshape(-1).numpy()[measurement.seen.reshape(-1).numpy()]
        chol = np.linalg.cholesky(s)
        white = np.linalg.solve(chol, y_seen)
        log_det = 2 * np.log(np.diag(chol)).sum()
        return float(-0.5 * (white @ white + log_det + len(white) * np.log(2 * np.pi)))

    def wiener(self, y: Any, measurement: Any, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exact posterior mean and standard deviation of the map, ``(size, size)`` each,
        given ``y`` measured by a linear ``measurement`` at ``theta (2,)`` (the Wiener filter)."""
        cov, a, s = self._measured(measurement, theta)
        y_seen = measurement.check(y).reshape(-1).numpy()[measurement.seen.reshape(-1).numpy()]
        gain = np.linalg.solve(s, a @ cov).T  # C A^T S^-1, (d, seen)
        var = np.diag(cov) - np.einsum("ij,ji->i", gain, a @ cov)
        shape = (self.size, self.size)
        return (gain @ y_seen).reshape(shape), np.sqrt(np.maximum(var, 0)).reshape(shape)

    def log_likelihood(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Exact :math:`\\log p(x \\mid \\theta)` (see the module docstring); -inf where a
        log-normal map has a pixel at or below -1."""
        if self.lognormal and self.noise:
            raise simgen.SimulatorError(
                "cosmology: the log-normal map with pixel noise has no closed-form likelihood; "
                "use noise=0 or lognormal=False"
            )
        x = np.asarray(x, np.float64)
        lam = self.eigenvalues(theta) + self.noise**2
        if self.lognormal:
            with np.errstate(invalid="ignore", divide="ignore"):
                log1p = np.log1p(x)
            g = log1p + 0.5 * (lam.mean(axis=(1, 2)))[:, None, None]
            jacobian = -log1p.sum(axis=(1, 2))
        else:
            g, jacobian = x, 0.0
        power = np.abs(np.fft.fft2(g)) ** 2 / self.size**2
        lp = -0.5 * (power / lam + np.log(2 * np.pi * lam)).sum(axis=(1, 2)) + jacobian
        return np.where(np.isfinite(lp), lp, -np.inf)
