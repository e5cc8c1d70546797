"""A learned emulator as the likelihood of a hierarchical model, in plain PyTorch.

Eight experiments each measure one noisy 2-d x from ``gaussian_linear`` at their own theta_i;
the theta_i come from a population N(mu, tau^2 I). We learn p(x | theta) once (simulate + fit a
flow), then find the joint MAP of (mu, log tau, theta_1..8) by gradient ascent on

    sum_i log p_emulator(x_i | theta_i) + sum_i log N(theta_i; mu, tau^2 I) + log p(mu, tau),

with gradients flowing through ``emulator(theta).log_prob``. The emulator is just a
``torch.distributions.Distribution``: nothing here is simgen-specific but the two calls that
make it.

Run: ``python examples/hierarchical.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import simgen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and training")
    parser.add_argument("--out", type=Path, default=None, help="folder for data and model")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp())
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    store = simgen.simulate(sim, 3000 if args.quick else 30_000, out / "data.h5", workers=1)
    emulator = simgen.fit(
        store,
        "flow",
        out / "model.pt",
        train={"epochs": 2 if args.quick else 100},
    )

    rng = np.random.default_rng(0)
    mu_true, tau_true = np.array([0.2, -0.1]), 0.15
    theta_true = mu_true + tau_true * rng.standard_normal((8, 2))
    x_obs = torch.as_tensor(sim.simulate(theta_true, rng), dtype=torch.float32)

    mu = torch.zeros(2, requires_grad=True)
    log_tau = torch.tensor(-1.0, requires_grad=True)
    theta = torch.zeros(8, 2, requires_grad=True)
    optimizer = torch.optim.Adam([mu, log_tau, theta], lr=0.02)
    for _ in range(300 if args.quick else 1500):
        optimizer.zero_grad()
        likelihood = emulator(theta).log_prob(x_obs).sum()  # p(x_i | theta_i), learned
        population = torch.distributions.Normal(mu, log_tau.exp()).log_prob(theta).sum()
        hyperprior = torch.distributions.Normal(0.0, 1.0).log_prob(mu).sum() - log_tau.exp()
        loss = -(likelihood + population + hyperprior)
        loss.backward()
        optimizer.step()
    print(f"population mean: MAP {mu.detach().numpy().round(3)}, truth {mu_true}")
    print(
        f"per-experiment theta, MAP - truth (rms): "
        f"{np.sqrt(((theta.detach().numpy() - theta_true) ** 2).mean()):.3f}"
    )


if __name__ == "__main__":
    main()
