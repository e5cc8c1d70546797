"""The U-Net denoiser: shapes, periodic translation equivariance, refusal of non-square x, and a
tiny diffusion fit on maps."""

from __future__ import annotations

import pytest
import torch

import simgen
from simgen.errors import UsageError
from simgen.models.diffusion import Diffusion, DiffusionConfig
from simgen.models.registry import defaults_for
from simgen.models.unet import UNet
from simgen.models.vp import SpectralDenoiser


def test_circular_unet_commutes_with_periodic_shifts():
    """With circular padding every layer commutes with rolls by multiples of the coarsest
    stride (2 here), so the whole network does, to float32 round-off; zero padding does not."""
    torch.manual_seed(0)
    x, c = torch.randn(3, 16 * 16), torch.randn(3, 8)
    for circular in (True, False):
        net = UNet(16, 8, channels=(8, 16), circular=circular)
        for p in net.parameters():  # leave the zero initialisation: a non-trivial map
            torch.nn.init.normal_(p, std=0.2)

        def shifted(v: torch.Tensor) -> torch.Tensor:
            return v.reshape(3, 16, 16).roll((2, 4), dims=(1, 2)).reshape(3, -1)

        gap = (net(shifted(x), c) - shifted(net(x, c))).abs().max().item()
        if circular:
            assert gap < 1e-4
        else:
            assert gap > 1e-2


def test_unet_diffusion_needs_square_maps():
    with pytest.raises(UsageError, match="square maps"):
        Diffusion(10, 2, DiffusionConfig(network="unet"))


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """300 periodic 8x8 log-normal maps."""
    sim = simgen.get_simulator("cosmology", size=8, box=64.0)
    path = tmp_path_factory.mktemp("maps") / "maps.h5"
    return simgen.simulate(sim, 300, path, workers=1, progress=False)


def test_tiny_unet_diffusion_fits_and_samples_maps(maps, tmp_path):
    config = {"channels": [8, 16], "hidden": [32, 32], "steps": 5}  # U-Net: the maps default
    emulator = simgen.fit(
        maps, "diffusion", tmp_path / "m.pt", train={"epochs": 2, "batch_size": 64},
        config=config, progress=False,
    )  # fmt: skip
    x = emulator.sample(torch.tensor([0.3, 0.8]), 4)
    assert x.shape == (4, 8, 8) and torch.isfinite(x).all()
    again = simgen.load(tmp_path / "m.pt")
    assert again.model.config.network == "unet"
    assert again.model.config.spectral  # the periodic maps' default: a Gaussian field added
    assert not defaults_for("diffusion", (8, 8), {"circular": False})["spectral"]


def test_spectral_denoiser_is_the_exact_gaussian_denoiser():
    """:class:`SpectralDenoiser`'s prediction for a stationary Gaussian of the spectrum (and
    mean) it holds equals the dense linear algebra of that Gaussian, :math:`x_0 \\sim N(m, C)`,
    :math:`C = H \\mathrm{diag}(v) H`: :math:`E[\\epsilon \\mid x_t] = \\sigma (\\alpha^2 C +
    \\sigma^2 I)^{-1} (x_t - \\alpha m)`, and so for the other parameterisations."""
    torch.manual_seed(0)
    side, d = 6, 36
    module = SpectralDenoiser(side, 2, (16,))
    for p in module.parameters():  # away from the zero start: a spectrum that varies with theta
        torch.nn.init.normal_(p, std=0.3)
    theta, x_t = torch.randn(3, 2), torch.randn(3, d)
    alpha, sigma = torch.tensor([[0.6]]), torch.tensor([[0.8]])
    h = module.hartley(torch.eye(d)).double()  # symmetric, its own inverse
    mean, variance = (v.detach().double() for v in module.spectrum(theta))
    for i in range(3):
        cov = h @ torch.diag(variance[i]) @ h
        m = h @ mean[i]
        v_t = alpha.double() ** 2 * cov + sigma.double() ** 2 * torch.eye(d, dtype=torch.float64)
        r = torch.linalg.solve(v_t, x_t[i].double() - alpha.double()[0] * m)
        exact = {
            "eps": sigma.double()[0] * r,
            "x0": m + alpha.double()[0] * cov @ r,
            "score": -r,
        }
        for name, want in exact.items():
            got = module(x_t[i : i + 1], alpha, sigma, theta[i : i + 1], name)[0].detach()
            got = got.double()
            assert torch.allclose(got, want, atol=1e-4 * float(want.abs().max())), name


def test_conv_vae_fits_maps_and_refuses_other_shapes(maps, tmp_path):
    from simgen.models.vae import VAE, VAEConfig

    with pytest.raises(UsageError, match="square maps"):
        VAE(100, 2, VAEConfig(network="conv", channels=(4, 8, 16)))  # side 10: not by 8
    config = {"channels": [4, 8], "hidden": [32], "iw_samples": 16, "latent": 2}  # conv: default
    emulator = simgen.fit(
        maps, "vae", None, train={"epochs": 2, "batch_size": 64}, config=config, progress=False
    )
    assert emulator.model.config.network == "conv"
    theta = torch.tensor([0.3, 0.8])
    x = emulator.sample(theta, 4)
    assert x.shape == (4, 8, 8) and torch.isfinite(x).all()
    with torch.no_grad():
        assert torch.isfinite(emulator.log_prob(x, theta)).all()
    # a 2-D latent: simgen check draws the decoded grid
    from simgen.diagnostics.report import check

    report = check(emulator, tmp_path / "r", pairs=4, draws=3, thetas=1, samples=50)
    assert "latent.png" in report["files"] and (tmp_path / "r" / "latent.png").stat().st_size
