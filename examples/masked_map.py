"""Recover a whole map from a masked, noisy one, with a learned diffusion emulator as the prior.

A Gaussian cosmology map (32x32; ``--quick``: 8x8) is seen through a mask that hides a square of
30% of the pixels, with white noise on the rest. The diffusion emulator of the maps, fitted on
simulations, is the prior p(x | theta); the maps given the observation are drawn by Gibbs
sampling by data augmentation (exact as the sweeps grow), and compared with the exact answer
of this Gaussian field, the Wiener filter.

Run: ``python examples/masked_map.py [--quick] [--out DIR]``; writes ``masked_map.png``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import simgen
from simgen.diagnostics.plots import plot_field_posterior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small maps and training")
    parser.add_argument("--out", type=Path, default=None, help="folder for data, model, figure")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp())
    size = 8 if args.quick else 32
    sim = simgen.get_simulator("cosmology", size=size, lognormal=False)
    store = simgen.simulate(sim, 300 if args.quick else 20_000, out / "maps.h5", workers=1)
    emulator = simgen.fit(store, "diffusion", out / "maps.pt",
                          train={"epochs": 2 if args.quick else 6})  # fmt: skip

    theta = np.array([0.3, 0.8])
    x = sim.simulate(theta[None], np.random.default_rng(1))[0]
    seen = torch.ones(size, size, dtype=torch.bool)
    hole = round(0.55 * size)
    seen[(size - hole) // 2 : (size + hole) // 2, (size - hole) // 2 : (size + hole) // 2] = False
    measurement = simgen.Mask(seen, noise=0.3 * float(x.std()))
    y = measurement.simulate(torch.as_tensor(x))

    posterior = simgen.FieldPosterior(emulator, measurement)
    sweeps = 8 if args.quick else 200
    draws = posterior.sample(y, torch.as_tensor(theta, dtype=torch.float32), n=500, sweeps=sweeps)
    mean, std = sim.wiener(y, measurement, theta)
    z = (draws.mean[0].numpy() - mean) / std
    print(f"posterior mean against the Wiener filter: RMS z {np.sqrt(np.mean(z**2)):.3f}")
    print(f"posterior std over the exact one: {np.mean(draws.std[0].numpy() / std):.3f}")
    plot_field_posterior(y.numpy(), seen.numpy(), draws.x[0].numpy(), out / "masked_map.png",
                         exact=(mean, std))  # fmt: skip
    print(f"figure: {out / 'masked_map.png'}")


if __name__ == "__main__":
    main()
