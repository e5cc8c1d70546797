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
  with the simulator's own exact likelihood on a 300^3 grid of
  :math:`(\log|\theta_3|, \log|\theta_4|, \theta_5)` (g depends on theta_3 and theta_4
  through their squares, so their signs are drawn uniformly: the four modes), from
  :math:`|\theta| = 10^{-6}` to 3, so that relative cells of 5% resolve scales near zero (with
  theta_3 ~ 0.015, the posterior of theta_3 is a peak of width ~0.015 with a power-law tail that
  a uniform grid of 0.02 cells cannot represent: C2ST 0.90 against samples of the exact
  likelihood); then again over the box of the cells that hold all but 1e-9 of the mass, until
  that box stops shrinking. Cells are drawn by their mass and points uniformly within them,
  :math:`m` is drawn given each, and draws whose :math:`m` leaves the box are rejected (exact
  rejection sampling of the restriction).
"""

from __future__ import annotations

import numpy as np
from simgen.builtin.slcp import _moments as _slcp_moments

import simgen

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
    from simgen.builtin.gaussian_mixture import SCALES

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


def _slcp_log_g(sim: simgen.Simulator, x_obs: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    r""":math:`\log g + u_3 + u_4` on the grid ``axes[0] x axes[1] x axes[2]`` of
    :math:`(u_3, u_4, \theta_5)`, :math:`u = \log \theta > 0` (the last two terms: the
    Jacobian of :math:`\theta = e^u`), flattened in that order."""
    mean = x_obs.reshape(-1, 2).mean(0)
    b, c = np.meshgrid(axes[1], axes[2], indexing="ij")
    bc = np.stack([np.exp(b.ravel()), c.ravel()], -1)
    rows = []
    for a in axes[0]:  # over the (u_4, theta_5) plane at u_3 = a
        theta = np.column_stack([np.tile(mean, (len(bc), 1)), np.full(len(bc), np.exp(a)), bc])
        _, s1, s2, rho = _slcp_moments(theta)
        log_det_half = np.log(s1 * s2 * np.sqrt(1 - rho**2))
        log_g = sim.log_likelihood(np.tile(x_obs, (len(bc), 1)), theta) + log_det_half
        rows.append(log_g + a + np.log(bc[:, 0]))
    return np.concatenate(rows)


def _slcp(
    sim: simgen.Simulator, x_obs: np.ndarray, n: int, seed: int, cells: int = 300, rounds: int = 4
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = x_obs.reshape(-1, 2)
    k, mean = len(x), x.mean(0)
    lo = np.array([np.log(1e-6), np.log(1e-6), -3.0])
    hi = np.array([np.log(3.0), np.log(3.0), 3.0])
    for _ in range(rounds):  # zoom in until the box of the mass stops shrinking
        step = (hi - lo) / cells
        axes = [lo[j] + step[j] * (np.arange(cells) + 0.5) for j in range(3)]
        log_g = _slcp_log_g(sim, x_obs, axes)
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        weights = np.exp(log_g - log_g.max())
        mass = np.sort(weights)[::-1]
        floor = mass[np.searchsorted(np.cumsum(mass), (1 - 1e-9) * mass.sum())]
        alive = grid[weights >= floor]  # the cells that hold all but 1e-9 of the mass
        new_lo = np.maximum(alive.min(0) - step, lo)
        new_hi = np.minimum(alive.max(0) + step, hi)
        if np.all(new_hi - new_lo > 0.5 * (hi - lo)):
            break
        lo, hi = new_lo, new_hi
    kept: list[np.ndarray] = []
    while sum(len(block) for block in kept) < n:
        pick = rng.choice(len(grid), size=2 * n, p=weights / weights.sum())
        cell = grid[pick] + step * (rng.random((2 * n, 3)) - 0.5)
        # g is even in theta_3 and theta_4 (through their squares): each sign with probability 1/2
        signs = rng.choice([-1.0, 1.0], size=(2 * n, 2))
        scale = np.column_stack([signs * np.exp(cell[:, :2]), cell[:, 2]])
        _, s1, s2, rho = _slcp_moments(np.column_stack([np.zeros((2 * n, 2)), scale]))
        # m | S ~ N(mean, S / k): S's Cholesky factor [[s1, 0], [rho s2, sqrt(1 - rho^2) s2]]
        z = rng.standard_normal((2 * n, 2)) / np.sqrt(k)
        m = mean + np.column_stack(
            [s1 * z[:, 0], s2 * (rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1])]
        )
        draws = np.column_stack([m, scale])
        kept.append(draws[(np.abs(m) <= 3).all(axis=1)])
    return np.concatenate(kept)[:n]
