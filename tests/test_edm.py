"""EDM diffusion (``process = "edm"``): the divergence, the fixed-grid density against exact
Gaussian densities and against the adaptive solver, normalisation on a 2-D grid, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import simgen
from simgen.models.diffusion import Diffusion, DiffusionConfig
from simgen.models.edm import (
    NoiseSchedule,
    adaptive_log_prob,
    divergence,
    edm_loss,
    heun_log_prob,
    heun_sample,
    sde_sample,
)
from simgen.models.nn import MLP
from simgen.train.loop import fit


def gaussian_network(mean: torch.Tensor, var: torch.Tensor):
    """The exact F of data z ~ N(mean, diag(var)): from the exact denoiser
    D = mean + var / (var + sigma^2) (z_sigma - mean), F = (D - c_skip z_sigma) / c_out."""

    def network(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma[:, None].square()
        z_sigma = y * (1 + s2).sqrt()
        denoised = mean + var / (var + s2) * (z_sigma - mean)
        return (denoised - z_sigma / (1 + s2)) / (s2.sqrt() / (1 + s2).sqrt())

    return network


def test_divergence_is_the_jacobians_trace_and_hutchinson_is_unbiased():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 32), nn.SiLU(), nn.Linear(32, 5))
    z = torch.randn(7, 5)
    out, div = divergence(net, z, None)
    jacobian = torch.autograd.functional.jacobian(lambda v: net(v).sum(0), z)  # (5, 7, 5)
    torch.testing.assert_close(div, torch.einsum("ini->n", jacobian), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, net(z))
    # the MLP's own pass: the same trace, over the first 5 of its inputs, by the bilinear form
    # (two hidden layers) and by carrying the Jacobian's columns (any other depth)
    inputs = torch.randn(7, 8)
    for hidden in [(32, 32), (32,), (32, 24, 16)]:
        mlp = MLP(8, 5, hidden)
        out, trace = mlp.forward_and_trace(inputs, 5)
        full = torch.autograd.functional.jacobian(
            lambda v, f=mlp: f(v).sum(0), inputs
        )  # (5, 7, 8)
        exact = torch.einsum("ini->n", full[:, :, :5])
        torch.testing.assert_close(trace, exact, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, mlp(inputs))
    # Hutchinson: e^T J e over Rademacher e, mean within 4 standard errors of the trace
    k = 4000
    probes = torch.randint(0, 2, (k, *z.shape)).float() * 2 - 1
    estimates = torch.stack([divergence(net, z, e)[1] for e in probes])  # (k, 7)
    se = estimates.std(0) / math.sqrt(k)
    assert ((estimates.mean(0) - div).abs() < 4 * se + 1e-6).all()


@pytest.mark.parametrize("var", [(0.6, 1.5), (0.2, 4.0)])
def test_fixed_grid_density_with_the_exact_network_is_the_exact_density(var):
    """Data N(0, diag(var)): the density is that of z + sigma_min eps, exactly
    N(0, var + sigma_min^2). The adaptive solver and 128 Heun steps reach it to 1e-3 nats on
    average; the default 32 steps to 1e-2 (Heun's error is second order: 16 times 128's at
    most, measured 2e-3 and 6e-3 here); and the sampler's moments match."""
    torch.manual_seed(0)
    mean, var = torch.zeros(2), torch.tensor(var)
    schedule = NoiseSchedule()
    z = var.sqrt() * torch.randn(2000, 2)
    spread = var + schedule.sigma_min**2
    exact = (-0.5 * (z.square() / spread + torch.log(2 * math.pi * spread))).sum(-1)
    network = gaussian_network(mean, var)
    assert (adaptive_log_prob(network, z, schedule, exact=True) - exact).abs().mean() < 1e-3
    assert (heun_log_prob(network, z, schedule, 128, exact=True) - exact).abs().mean() < 1e-3
    assert (heun_log_prob(network, z, schedule, 32, exact=True) - exact).abs().mean() < 1e-2
    # the sample variance of 20,000 normal draws has a relative error of sqrt(2/n) = 1%, the
    # mean a standard error of 0.7% of the scale: both within 4 of those, plus the samplers'
    # own bias (18 Heun steps; 1,000 steps of the reverse SDE, a first-order scheme: 4% too
    # wide at 200)
    for drawn in (
        heun_sample(network, torch.randn(20_000, 2), schedule, 18),
        sde_sample(network, torch.randn(20_000, 2), schedule, 1000),
    ):
        assert ((drawn.var(0) / var) - 1).abs().max() < 0.05
        assert (drawn.mean(0).abs() / var.sqrt()).max() < 0.03


def test_an_untrained_model_is_the_standardisation_gaussian_exactly():
    """F starts at 0: the density is the conditional Gaussian the first batch fitted, widened
    by sigma_min, whatever the solver's steps."""
    torch.manual_seed(0)
    model = Diffusion(2, 3, DiffusionConfig(process="edm", hidden=(16,), density_steps=4))
    theta = torch.randn(500, 3)
    x = theta[:, :2] * 2 + 0.5 * torch.randn(500, 2)
    model.initialize(theta, x)
    with torch.no_grad():
        lp = model.dist(theta[:20]).log_prob(x[:20])
        transform = model.affine(theta[:20])
        z = transform(x[:20])
        spread = 1 + model.config.sigma_min**2
        exact = -0.5 * (z.square().sum(-1) / spread + 2 * math.log(2 * math.pi * spread))
        exact = exact + transform.log_abs_det_jacobian(x[:20], z)
    torch.testing.assert_close(lp, exact, atol=1e-5, rtol=0)
    assert model.loss(theta[:8], x[:8]).shape == (8,)


@pytest.fixture(scope="module")
def moons_model(tmp_path_factory):
    """A small EDM diffusion fitted briefly on two_moons (the defaults' process), its
    standardisation's Gaussian with an MLP in theta fitted by maximum likelihood."""
    path = tmp_path_factory.mktemp("edm") / "moons.h5"
    store = simgen.simulate("two_moons", 3000, path, workers=1, progress=False)
    torch.manual_seed(0)
    config = {"hidden": [64, 64], "embedding": 16, "affine_hidden": [64], "affine_steps": 300}
    return fit(store, "diffusion", None, train={"epochs": 8}, config=config, progress=False)


def test_fixed_grid_and_adaptive_densities_agree(moons_model):
    """The default 32-step grid against the adaptive solver (tolerance 1e-5) on a trained
    model: within 0.02 nats per point, the size of the grid's error on the exact Gaussian
    network with 16 steps (7e-3) times the trained field's larger curvature, at most 3."""
    assert moons_model.model.config.process == "edm"
    torch.manual_seed(1)
    theta = moons_model.prior().sample((50,))
    x = moons_model.sample(theta, 1)[0]
    with torch.no_grad():
        v = (theta - moons_model.theta_mean) / moons_model.theta_std
        u = (x - moons_model.x_mean) / moons_model.x_std
        grid = moons_model.model.dist(v).log_prob(u)
        adaptive = moons_model.model.dist(v, adaptive=True).log_prob(u)
    assert (grid - adaptive).abs().max() < 0.02


def test_the_learned_density_integrates_to_one(moons_model):
    """Riemann sum of exp(log p(x | theta)) on a 400 x 400 grid over the box holding the
    emulator's draws (widened by a third each side): 1 up to the grid's error, checked
    within 0.02 (the grid-versus-adaptive gap above bounds the density's relative error)."""
    theta = torch.tensor([0.2, -0.3])
    torch.manual_seed(2)
    drawn = moons_model.sample(theta, 2000)
    lo, hi = drawn.min(0).values, drawn.max(0).values
    lo, hi = lo - (hi - lo) / 3, hi + (hi - lo) / 3
    axes = [torch.linspace(float(a), float(b), 400) for a, b in zip(lo, hi, strict=True)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        lp = moons_model.log_prob(grid, theta.expand(len(grid), 2))
    cell = math.prod(float(a[1] - a[0]) for a in axes)
    assert abs(float(lp.exp().sum()) * cell - 1) < 0.02


def test_edm_loss_has_a_unit_variance_target_for_the_gaussian():
    """For z ~ N(0, I) the target sin(tau) z - cos(tau) eps has unit variance: the loss of
    F = 0 is 1 on average."""
    torch.manual_seed(0)
    z = torch.randn(50_000, 3)
    loss = edm_loss(lambda y, s: torch.zeros_like(y), z, NoiseSchedule())
    assert abs(float(loss.mean()) - 1) < 4 * float(loss.std()) / math.sqrt(len(loss))


def test_the_default_network_learns_a_scale_mixture(tmp_path):
    """gaussian_mixture's x given theta is a mixture of two scales, which the standardisation's
    Gaussian misses by 1.6 nats per point. Fitted with the defaults on 10,000 simulations
    (where a 64-feature noise embedding stayed at the Gaussian's loss), the network removes
    more than half of that error on 500 held-out pairs."""
    store = simgen.simulate("gaussian_mixture", 10_000, tmp_path / "gm.h5", workers=1,
                            progress=False)  # fmt: skip
    torch.manual_seed(0)
    emulator = fit(store, "diffusion", None, progress=False, proposal=False)
    sim = simgen.get_simulator("gaussian_mixture")
    theta = sim.prior().sample((500,))
    x = torch.as_tensor(sim.simulate(theta.double().numpy(), np.random.default_rng(1)))
    exact = torch.as_tensor(sim.log_likelihood(x.numpy(), theta.double().numpy()))
    with torch.no_grad():
        learned = emulator.log_prob(x.float(), theta)
        for p in emulator.model.net[-1].parameters():
            torch.nn.init.zeros_(p)  # F = 0: the standardisation's Gaussian alone
        gaussian = emulator.log_prob(x.float(), theta)
    assert (learned - exact).abs().mean() < 0.5 * (gaussian - exact).abs().mean()
