r"""Stochastic Lotka-Volterra predator-prey model (Wilkinson 2011; Papamakarios et al. 2019,
arXiv:1805.07226), simulated exactly as a Markov jump process by Gillespie's algorithm.

With predators :math:`X` and prey :math:`Y`, four reactions fire with rates

.. math::
    X \to X + 1: \; e^{\theta_1} X Y, \quad X \to X - 1: \; e^{\theta_2} X, \quad
    Y \to Y + 1: \; e^{\theta_3} Y, \quad Y \to Y - 1: \; e^{\theta_4} X Y,

from :math:`X_0 = 50, Y_0 = 100`, observed every 0.2 time units up to :math:`T = 30` (151
points). Prior :math:`\theta \sim U(-5, 2)^4` on the log rates. By default x is the 9 summary
statistics of Papamakarios et al.: the mean and log-variance of each series, the
autocorrelations at lags 1 and 2 of each, and the cross-correlation. A run that exceeds
``max_events`` reactions (a population explosion) fails: its row is NaN and simgen keeps it apart.
"""

from __future__ import annotations

import numpy as np
import torch

import simgen
from simgen.data.simulator import box_uniform

__all__ = ["LotkaVolterra", "summary_statistics"]

STOICHIOMETRY = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])


def summary_statistics(series: np.ndarray) -> np.ndarray:
    """The 9 statistics of Papamakarios et al. (2019) from series of shape ``(n, 2, T)``."""
    x, y = series[:, 0].astype(np.float64), series[:, 1].astype(np.float64)

    def standardise(s: np.ndarray) -> np.ndarray:
        return (s - s.mean(-1, keepdims=True)) / (s.std(-1, keepdims=True) + 1e-12)

    def autocorr(s: np.ndarray, lag: int) -> np.ndarray:
        z = standardise(s)
        return (z[:, lag:] * z[:, :-lag]).sum(-1) / (s.shape[-1] - 1)

    cross = (standardise(x) * standardise(y)).sum(-1) / (x.shape[-1] - 1)
    stats = [
        x.mean(-1),
        y.mean(-1),
        np.log(x.var(-1) + 1),
        np.log(y.var(-1) + 1),
        autocorr(x, 1),
        autocorr(x, 2),
        autocorr(y, 1),
        autocorr(y, 2),
        cross,
    ]
    return np.stack(stats, axis=-1)


class LotkaVolterra(simgen.Simulator):
    """Stochastic Lotka-Volterra: 4 log-rate parameters, 9 summary statistics (or raw series)."""

    name = "lotka_volterra"
    parameters = ("log_predator_birth", "log_predator_death", "log_prey_birth", "log_predation")
    chunk_size = 200

    def __init__(
        self,
        summary: bool = True,
        t_max: float = 30.0,
        dt_obs: float = 0.2,
        max_events: int = 10_000,
        initial: tuple[int, int] = (50, 100),
    ) -> None:
        self.summary, self.t_max, self.dt_obs = summary, t_max, dt_obs
        self.max_events, self.initial = max_events, tuple(initial)
        self.t_obs = np.arange(0.0, t_max + 1e-9, dt_obs)
        self.x_shape = (9,) if summary else (2, len(self.t_obs))

    def prior(self) -> torch.distributions.Distribution:
        return box_uniform([-5.0] * 4, [2.0] * 4)

    def gillespie(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Exact jump-process paths at the observation times, shape ``(n, 2, T)``; NaN rows
        for runs that exceed ``max_events`` reactions."""
        n, n_obs = theta.shape[0], len(self.t_obs)
        rates = np.exp(np.asarray(theta, np.float64))
        state = np.tile(np.asarray(self.initial, np.float64), (n, 1))
        out = np.full((n, 2, n_obs), np.nan)
        t = np.zeros(n)
        next_obs = np.zeros(n, dtype=np.int64)
        events = np.zeros(n, dtype=np.int64)
        active = np.arange(n)
        while active.size:
            s, r = state[active], rates[active]
            xy = s[:, 0] * s[:, 1]
            propensity = np.stack(
                [r[:, 0] * xy, r[:, 1] * s[:, 0], r[:, 2] * s[:, 1], r[:, 3] * xy]
            )
            total = propensity.sum(0)
            with np.errstate(divide="ignore"):
                t_new = t[active] + rng.exponential(size=active.size) / total
            # record the current state at every observation time passed before the next event
            while True:
                k = next_obs[active]
                due = (k < n_obs) & (self.t_obs[np.minimum(k, n_obs - 1)] < t_new)
                if not due.any():
                    break
                rows = active[due]
                out[rows, :, k[due]] = state[rows]
                next_obs[rows] += 1
            u = rng.uniform(size=active.size) * total
            reaction = (np.cumsum(propensity, axis=0) < u).sum(0).clip(max=3)
            state[active] += np.where(np.isfinite(t_new), 1, 0)[:, None] * STOICHIOMETRY[reaction]
            t[active] = t_new
            events[active] += 1
            done = next_obs[active] >= n_obs
            exploded = events[active] >= self.max_events
            out[active[exploded & ~done]] = np.nan
            active = active[~(done | exploded)]
        return out

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        series = self.gillespie(theta, rng)
        return summary_statistics(series) if self.summary else series
