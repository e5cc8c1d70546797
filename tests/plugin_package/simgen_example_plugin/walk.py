"""A Gaussian random walk with drift, as a third party would write it."""

from __future__ import annotations

import numpy as np
import torch

import simgen


class RandomWalk(simgen.Simulator):
    name = "random_walk"
    parameters = ("drift",)

    def __init__(self, steps: int = 5) -> None:
        self.steps = steps
        self.x_shape = (steps,)

    def prior(self) -> torch.distributions.Distribution:
        return torch.distributions.Independent(
            torch.distributions.Normal(torch.zeros(1), torch.ones(1)), 1
        )

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.cumsum(theta + rng.normal(size=(len(theta), self.steps)), axis=1)
