"""Simulators that misbehave on purpose, importable by path (``sims_for_tests:Flaky``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

import simgen
from simgen.data.simulator import box_uniform


class Flaky(simgen.Simulator):
    """Raises for theta_1 > 0.8 (whole batch, then row by row), NaN for theta_1 < -0.8."""

    name = "flaky"
    parameters = ("theta_1", "theta_2")
    x_shape = (3,)
    chunk_size = 50

    def prior(self) -> torch.distributions.Distribution:
        return box_uniform([-1.0, -1.0], [1.0, 1.0])

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if (theta[:, 0] > 0.8).any():
            raise RuntimeError("diverged")
        x = np.concatenate([theta, rng.normal(size=(len(theta), 1))], axis=1)
        x[theta[:, 0] < -0.8, 2] = np.nan
        return x


class Slow(simgen.Simulator):
    """Sleeps ``delay`` seconds per call; Gaussian x around theta."""

    name = "slow"
    parameters = ("a", "b")
    x_shape = (2,)
    chunk_size = 20

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay

    def prior(self) -> torch.distributions.Distribution:
        return box_uniform([0.0, 0.0], [1.0, 1.0])

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        time.sleep(self.delay)
        return theta + rng.normal(size=theta.shape)


class Announced(Slow):
    """Slow, and each call first makes a file ``<folder>/<pid>`` (which processes simulate)."""

    name = "announced"

    def __init__(self, delay: float = 0.05, folder: str = ".") -> None:
        super().__init__(delay)
        self.folder = folder

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        (Path(self.folder) / str(os.getpid())).touch()
        return super().simulate(theta, rng)


class Straggler(Slow):
    """Slow (``delay`` seconds) only where theta_a > 0.9, instant elsewhere."""

    name = "straggler"

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if theta[0, 0] > 0.9:
            time.sleep(self.delay)
        return theta + rng.normal(size=theta.shape)


class Exits(Slow):
    """Ends its process (as a segfault or the out-of-memory killer would) on every call."""

    name = "exits"

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        os._exit(3)


class BadShape(Slow):
    """Returns one column too few."""

    name = "bad_shape"

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta[:, :1]


class BadDtype(Slow):
    """Returns strings."""

    name = "bad_dtype"

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.full((len(theta), 2), "x")


class AlwaysRaises(Slow):
    """A bug: raises on every call."""

    name = "always_raises"

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise ZeroDivisionError("division by zero in user code")


class Mended(AlwaysRaises):
    """AlwaysRaises with its bug fixed (the same name and options): Gaussian x around theta."""

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + rng.normal(size=theta.shape)


class MendedFlaky(Flaky):
    """Flaky with both of its bugs fixed (the same name): finite rows for every theta."""

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([theta, rng.normal(size=(len(theta), 1))], axis=1)
