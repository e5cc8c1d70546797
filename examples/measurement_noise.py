"""Add an instrument's measurement noise to a learned emulator, and infer through it.

The simulator (two_moons) knows nothing of our detector, which adds Gaussian noise of scale s to
each reading. With the emulator as a Distribution, the noisy likelihood is a Monte Carlo
average over emulated x, reparameterised so that it stays differentiable in theta:

    p(y | theta) = E_{x ~ p(x | theta)} N(y; x, s^2 I)
                 ~ (1/M) sum_m N(y; x_m(theta), s^2 I),

which we evaluate on a grid over the prior to get the posterior of theta given a noisy reading,
and compare with the noise-free posterior.

Run: ``python examples/measurement_noise.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

import simgen


def noisy_log_likelihood(
    emulator: simgen.Emulator, y: torch.Tensor, theta: torch.Tensor, scale: float, m: int = 256
) -> torch.Tensor:
    """log p(y | theta) with Gaussian read-out noise ``scale``, for theta ``(b, d)``."""
    x = emulator(theta).rsample((m,))  # (m, b, 2), differentiable in theta
    noise = torch.distributions.Normal(x, scale)
    return (noise.log_prob(y).sum(-1)).logsumexp(0) - math.log(m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and training")
    parser.add_argument("--out", type=Path, default=None, help="folder for data and model")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp())
    store = simgen.simulate(
        "two_moons", 3000 if args.quick else 50_000, out / "data.h5", workers=1
    )
    emulator = simgen.fit(
        store,
        "flow",
        out / "model.pt",
        train={"epochs": 2 if args.quick else 200},
    )

    y = torch.tensor([0.05, 0.1])
    grid_1d = torch.linspace(-0.99, 0.99, 40 if args.quick else 120)
    grid = torch.cartesian_prod(grid_1d, grid_1d)
    with torch.no_grad():
        clean = emulator.log_prob(y, grid)
        noisy = torch.cat(
            [noisy_log_likelihood(emulator, y, g, scale=0.05) for g in grid.split(400)]
        )
    for name, lp in (("noise-free", clean), ("with read-out noise", noisy)):
        weights = torch.softmax(lp, 0)
        mean = (weights[:, None] * grid).sum(0)
        spread = ((weights[:, None] * (grid - mean) ** 2).sum(0)).sqrt()
        print(f"{name:>20}: posterior mean {mean.numpy().round(3)}, sd {spread.numpy().round(3)}")
    theta = torch.tensor([[0.3, -0.2]], requires_grad=True)
    noisy_log_likelihood(emulator, y, theta, scale=0.05).sum().backward()
    print(f"d log p(y | theta) / d theta at {theta.detach().numpy()[0]}: {theta.grad.numpy()[0]}")


if __name__ == "__main__":
    main()
