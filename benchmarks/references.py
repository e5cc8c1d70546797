r"""Reference posteriors :math:`p(\theta \mid x_{obs})` of the benchmark tasks, one observation each.

* ``gaussian_linear``: analytic, :math:`N(\mu, s^2 I)` with :math:`s^2 = (1/\sigma_0^2 +
  1/\sigma^2)^{-1}`, :math:`\mu = s^2 x / \sigma^2`.
* ``gaussian_mixture``: analytic; the posterior is the mixture
  :math:`\tfrac12 N(x, I) + \tfrac12 N(x, 0.01 I)` restricted to the prior's box, sampled exactly
  by drawing from the mixture and rejecting draws outside the box.
* ``two_moons``: the exact likelihood on a 2,000 x 2,000 grid over the prior's box (cells of
  0.001, a tenth of the moon's radial spread), cells drawn by their mass and points uniformly
  within them.
* ``slcp``: exact up to a grid. With :math:`k = 4` draws :math:`x_j \sim N(m, S)`,
  :math:`\prod_j N(x_j; m, S) = \prod_j N(x_j; \bar x, S) \, N(m; \bar x, S / k) \, (2\pi)
  |S / k|^{1/2}`, so the posterior factorises into the marginal of the covariance parameters,
  :math:`g(\theta_{3:5}) \propto \prod_j N(x_j; \bar x, S) \, |S|^{1/2}` on the prior's
  box, and :math:`m \mid S \sim N(\bar x, S / k)` restricted to the box. :math:`g` is evaluated
  with the simulator's own exact likelihood on a 300^3 grid (cells of 0.02), cells are drawn by
  their mass and points uniformly within them, :math:`m` is drawn given each, and draws whose
  :math:`m` leaves the box are rejected (exact rejection sampling of the restriction).
"""

from __future__ import annotations

import numpy as np

import simgen
from simulators.slcp import _moments as _slcp_moments

__all__ = ["reference_posterior"]


def reference_posterior(sim: simgen.Simulator, x_obs: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` draws ``(n, d)`` of the exact posterior of ``sim`` given one observation."""
    rng = np.random.default_rng(seed)
    x_obs = np.asarray(x_obs, np.float64)
    if sim.name == "gaussian_linear":
        var = 1 / (1 / sim.prior_var + 1 / sim.noise_var)
        mean = var * x_obs / sim.noise_var
        return mean + np.sqrt(var) * rng.standard_normal((n, sim.dim))
    if sim.name == "gaussian_mixture":
        return _gaussian_mixture(x_obs, n, rng)
    if sim.name == "two_moons":
        return _grid(sim, x_obs, n, rng, cells=2000)
    if sim.name == "slcp":
        return _slcp(sim, x_obs, n, seed)
    raise ValueError(f"no reference posterior for '{sim.name}'")


def _gaussian_mixture(x_obs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    from simulators.gaussian_mixture import SCALES

    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < n:
        scale = np.asarray(SCALES)[rng.integers(0, 2, size=4 * n)][:, None]
        draws = x_obs + scale * rng.standard_normal((4 * n, 2))
        kept.append(draws[(np.abs(draws) <= 10).all(axis=1)])
    return np.concatenate(kept)[:n]


def _grid(
    sim: simgen.Simulator, x_obs: np.ndarray, n: int, rng: np.random.Generator, cells: int
) -> np.ndarray:
    box = sim.prior().support
    box = getattr(box, "base_constraint", box)  # Independent(Uniform) -> its interval
    low, high = box.lower_bound.numpy(), box.upper_bound.numpy()
    step = (high - low) / cells
    axes = [low[j] + step[j] * (np.arange(cells) + 0.5) for j in range(2)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    lp = sim.log_likelihood(np.broadcast_to(x_obs, grid.shape).copy(), grid)
    weights = np.exp(lp - lp.max())
    pick = rng.choice(len(grid), size=n, p=weights / weights.sum())
    return grid[pick] + step * (rng.random((n, 2)) - 0.5)


def _slcp(
    sim: simgen.Simulator, x_obs: np.ndarray, n: int, seed: int, cells: int = 300
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = x_obs.reshape(-1, 2)
    k, mean = len(x), x.mean(0)
    step = 6.0 / cells
    axis = -3.0 + step * (np.arange(cells) + 0.5)
    b, c = np.meshgrid(axis, axis, indexing="ij")
    bc = np.stack([b.ravel(), c.ravel()], -1)
    rows = []
    for a in axis:  # log g over the (theta_4, theta_5) plane at theta_3 = a
        theta = np.column_stack([np.tile(mean, (len(bc), 1)), np.full(len(bc), a), bc])
        _, s1, s2, rho = _slcp_moments(theta)
        log_det_half = np.log(s1 * s2 * np.sqrt(1 - rho**2))
        rows.append(sim.log_likelihood(np.tile(x_obs, (len(bc), 1)), theta) + log_det_half)
    log_g = np.concatenate(rows)
    grid = np.column_stack([np.repeat(axis, len(bc)), np.tile(bc, (cells, 1))])
    weights = np.exp(log_g - log_g.max())
    kept: list[np.ndarray] = []
    while sum(len(block) for block in kept) < n:
        pick = rng.choice(len(grid), size=2 * n, p=weights / weights.sum())
        scale = grid[pick] + step * (rng.random((2 * n, 3)) - 0.5)
        _, s1, s2, rho = _slcp_moments(np.column_stack([np.zeros((2 * n, 2)), scale]))
        # m | S ~ N(mean, S / k): S's Cholesky factor [[s1, 0], [rho s2, sqrt(1 - rho^2) s2]]
        z = rng.standard_normal((2 * n, 2)) / np.sqrt(k)
        m = mean + np.column_stack(
            [s1 * z[:, 0], s2 * (rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1])]
        )
        draws = np.column_stack([m, scale])
        kept.append(draws[(np.abs(m) <= 3).all(axis=1)])
    return np.concatenate(kept)[:n]
