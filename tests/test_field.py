"""Maps given a measurement with a diffusion prior: the samplers against the Wiener filter,
with the exact score of a Gaussian field in place of the network."""

from __future__ import annotations

import copy
import itertools
import math

import h5py
import numpy as np
import pytest
import torch

import simgen
from simgen.data.simulator import box_uniform
from simgen.errors import UsageError
from simgen.inference.field import ancestral_step, gibbs, time_grid
from simgen.inference.field_joint import kernel_draws, kernel_estimate
from simgen.inference.field_posterior import FieldPosterior
from simgen.inference.field_smc import circulant, smc
from simgen.inference.mcmc import effective_sample_size
from simgen.inference.measurement import Beam, Mask, Operator
from simgen.models.vp import vp_alpha_sigma

SIDE, THETA, T_MIN = 8, np.array([0.3, 0.8]), 1e-3
SIM = simgen.get_simulator("cosmology", size=SIDE, box=64.0, lognormal=False)
SCALE = float(np.sqrt(np.diag(SIM.covariance(THETA)).mean()))  # the maps' pixel scale


def schedule(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return vp_alpha_sigma(t, 0.1, 20.0)


def exact_epsilon(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """:math:`E[\\epsilon \\mid u_t] = \\sigma_t (\\alpha_t^2 C + \\sigma_t^2)^{-1} u_t` for the
    standardised Gaussian map, :math:`C = F^{-1} \\mathrm{diag}(\\lambda) F`."""
    lam = torch.as_tensor(SIM.eigenvalues(THETA[None])[0]) / SCALE**2
    alpha, sigma = schedule(t.double())
    c = torch.fft.fft2(u.double().reshape(-1, SIDE, SIDE)) / (alpha**2 * lam + sigma**2)
    return (sigma * torch.fft.ifft2(c).real).reshape(u.shape).to(u.dtype)


@pytest.fixture(scope="module")
def observed():
    """A Gaussian map seen through a mask (a 3x4 hole) with noise of 0.3 of its scale."""
    mask = torch.ones(SIDE, SIDE, dtype=torch.bool)
    mask[2:5, 1:5] = False
    measurement = Mask(mask, 0.3 * SCALE)
    x = SIM.simulate(THETA[None], np.random.default_rng(3))[0]
    y = measurement.simulate(torch.as_tensor(x), torch.Generator().manual_seed(4))
    mean, std = SIM.wiener(y, measurement, THETA)
    zeros, scale = torch.zeros(SIDE, SIDE), torch.full((SIDE, SIDE), SCALE)
    form = measurement.diagonal(y, zeros, scale)
    return measurement, y, form, torch.as_tensor(mean) / SCALE, torch.as_tensor(std) / SCALE


def test_gibbs_reproduces_the_wiener_filter(observed):
    """Per pixel, the draws' mean is within 4 Monte Carlo standard errors of the exact one
    (64 pixels: a false alarm under 1%) and so is their variance (standard error
    :math:`\\sigma^2 \\sqrt{2 / ESS}`, Gaussian draws), ESS per pixel from the chains."""
    _, _, form, mean, std = observed
    run = gibbs(exact_epsilon, schedule, form, 1, 64, 1000, 10, T_MIN,
                torch.Generator().manual_seed(0), burn=200)  # fmt: skip
    draws = run.u[0].reshape(run.u.shape[1], 64, -1)  # (draws, chains, 64)
    ess = effective_sample_size(draws)
    assert ess.min() > 100 and run.rhat.max() < 1.1
    m, v = draws.mean((0, 1)), draws.var((0, 1))
    exact_m, exact_v = mean.reshape(-1), std.reshape(-1).square()
    assert ((m - exact_m).abs() / (exact_v / ess).sqrt()).max() < 4
    assert ((v - exact_v).abs() / (exact_v * (2 / ess).sqrt())).max() < 4


LAM = torch.as_tensor(SIM.eigenvalues(THETA[None])[0]) / SCALE**2  # the u's spectrum


def chain_spectrum(steps: int, guess: torch.Tensor) -> torch.Tensor:
    """The per-mode variance at t_min of the SMC's chain of ``steps`` steps with the exact
    score of the standardised Gaussian map and a ``guess`` of its spectrum: the chain starts
    from the guess's law at t = 1 and each step is linear per Fourier mode."""
    alpha, sigma = schedule(torch.tensor(1.0, dtype=torch.float64))
    var = alpha**2 * guess + sigma**2
    for t, s in itertools.pairwise(time_grid(steps, T_MIN)):
        alpha, sigma = schedule(t)
        eps = sigma / (alpha**2 * LAM + sigma**2)  # the noise prediction per unit of u
        factor, step = ancestral_step(torch.ones_like(LAM), eps, t, s, schedule, guess)
        var = factor.square() * var + step
    return var


def masked_in_u(observed):
    """The measurement in u coordinates: ``a``, the seen values and their noise variances."""
    measurement, y, *_ = observed
    seen = measurement.seen.reshape(-1)
    a = torch.eye(SIDE * SIDE, dtype=torch.float64)[seen] * SCALE
    r = measurement.check(y).reshape(-1)[seen]
    return a, r, torch.full((len(r),), measurement.noise**2, dtype=torch.float64)


def test_the_chain_with_the_exact_guess_is_the_models_law_at_any_step_count():
    """With the model's own spectrum as the guess, the SMC's chain (start and kernel) is the
    model's law at t_min, per Fourier mode to rounding, with 3 steps as with 50."""
    alpha, sigma = schedule(torch.tensor(T_MIN, dtype=torch.float64))
    law = alpha**2 * LAM + sigma**2
    for steps in (3, 50):
        torch.testing.assert_close(chain_spectrum(steps, LAM), law, rtol=1e-9, atol=0)
    assert (chain_spectrum(50, 1.5 * LAM) / law - 1).abs().max() > 1e-3  # a guess matters


def test_smc_reproduces_the_wiener_filter_and_the_evidence(observed):
    """With the exact score and its exact spectrum the twist and the chain are exact, so the
    weights stay even (ESS above 90% of the particles); the evidence matches the model's exact
    one at t_min within 4 standard errors of 4 runs, and the draws' mean and spread match that
    law's Wiener filter (mean within 4 standard errors per pixel; spread ratio within 4
    standard errors), itself within 0.15 standard deviations and 5% of the data's (t = 0)."""
    _, _, _, mean, std = observed
    a, r, noise_var = masked_in_u(observed)
    runs = smc(exact_epsilon, schedule, a, r, noise_var, LAM.expand(4, SIDE, SIDE), 4, 500, 50,
               T_MIN, torch.Generator().manual_seed(1))  # fmt: skip
    assert (runs.min_ess > 450).all()
    alpha, sigma = schedule(torch.tensor(T_MIN, dtype=torch.float64))
    prior = circulant(alpha**2 * LAM + sigma**2)  # the model's law at t_min, u coordinates
    cov = a @ prior @ a.T + torch.diag(noise_var)
    exact = torch.distributions.MultivariateNormal(torch.zeros(len(r)), cov).log_prob(r)
    assert (runs.log_evidence.mean() - exact).abs() < 4 * runs.log_evidence.std() / 2
    gain_matrix = prior @ a.T @ torch.linalg.inv(cov)  # the Wiener filter at t_min
    chain_mean = gain_matrix @ r
    chain_std = (prior - gain_matrix @ a @ prior).diagonal().sqrt()
    w = runs.log_weight.exp()[..., None]
    means = (w * runs.u).sum(1)  # (4, 64)
    spread = (w * (runs.u - means[:, None]).square()).sum(1).mean(0).sqrt()
    se = chain_std / runs.ess.sum().sqrt()
    assert ((means.mean(0) - chain_mean).abs() / se).max() < 4
    assert ((spread / chain_std) - 1).abs().max() < 4 * math.sqrt(1 / (2 * runs.ess.sum()))
    assert ((chain_mean - mean.reshape(-1)) / std.reshape(-1)).abs().max() < 0.15
    assert ((chain_std / std.reshape(-1)) - 1).abs().max() < 0.05


def test_smc_with_a_wrong_guess_keeps_the_evidence(observed):
    """A guess whose every mode's power is 1.5 times the model's moves the twist's spread and
    the chain's kernel; the twist's centre follows the model's own denoiser as the signal
    grows. The weights then correct the guess: the evidence stays within 4 standard errors of
    4 runs of the chain's exact one."""
    a, r, noise_var = masked_in_u(observed)
    guess = 1.5 * LAM
    runs = smc(exact_epsilon, schedule, a, r, noise_var, guess.expand(4, SIDE, SIDE), 4, 500,
               50, T_MIN, torch.Generator().manual_seed(2))  # fmt: skip
    prior = circulant(chain_spectrum(50, guess))
    cov = a @ prior @ a.T + torch.diag(noise_var)
    exact = torch.distributions.MultivariateNormal(torch.zeros(len(r)), cov).log_prob(r)
    assert (runs.log_evidence.mean() - exact).abs() < 4 * runs.log_evidence.std() / 2
    assert (runs.ess > 125).all()  # a quarter of the particles or more: not collapsed


def test_measurements_refuse_bad_input():
    with pytest.raises(UsageError, match="noise must be a positive"):
        Mask(torch.ones(4, 4, dtype=torch.bool), -0.1)
    with pytest.raises(UsageError, match="hides every pixel"):
        Mask(torch.zeros(4, 4, dtype=torch.bool), 0.1)
    with pytest.raises(UsageError, match="square 2-D maps"):
        Beam((4, 6), 2.0, 0.1)
    with pytest.raises(UsageError, match="observation has shape"):
        Mask(torch.ones(4, 4, dtype=torch.bool), 0.1).check(torch.zeros(5, 5))
    with pytest.raises(UsageError, match="not diagonal"):
        Operator((4, 4), lambda x: 2 * x, 0.1).diagonal(torch.zeros(4, 4), torch.zeros(4, 4),
                                                        torch.ones(4, 4))  # fmt: skip


def test_beam_is_a_symmetric_blur_that_keeps_the_mean():
    beam = Beam((8, 8), 2.5, 0.1)
    a = beam(torch.eye(64, dtype=torch.float64).reshape(64, 8, 8)).reshape(64, 64)
    assert torch.allclose(a, a.T, atol=1e-12) and torch.allclose(
        a.sum(0), torch.ones(64, dtype=a.dtype)
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny U-Net diffusion emulator of 8x8 Gaussian maps (2 epochs: shapes, not accuracy)
    and its file."""
    sim = simgen.get_simulator("cosmology", size=8, box=64.0, lognormal=False)
    folder = tmp_path_factory.mktemp("field")
    store = simgen.simulate(sim, 200, folder / "maps.h5", workers=1, progress=False)
    config = {"channels": [8, 16], "hidden": [32, 32]}
    emulator = simgen.fit(store, "diffusion", folder / "m.pt", progress=False, config=config,
                          train={"epochs": 2, "batch_size": 64})  # fmt: skip
    return emulator, folder / "m.pt"


@pytest.fixture(scope="module")
def emulator(fitted):
    return fitted[0]


@pytest.mark.parametrize("method", ["gibbs", "smc", "dps"])
def test_field_posterior_draws_maps_with_an_emulator(emulator, method):
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[:3] = False
    measurement = Mask(mask, 0.2)
    x = emulator.sample(torch.tensor([0.3, 0.8]), 1)[0]
    y = measurement.simulate(x)
    posterior = FieldPosterior(emulator, measurement)
    out = posterior.sample(y, torch.tensor([[0.3, 0.8], [0.4, 0.9]]), n=6, method=method,
                           steps=4, sweeps=4, chains=3)  # fmt: skip
    assert out.x.shape == (2, 6, 8, 8) and torch.isfinite(out.x).all()
    assert out.mean.shape == out.std.shape == (2, 8, 8)


def test_field_posterior_draws_parameters_and_maps(emulator):
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[:3] = False
    measurement = Mask(mask, 0.2)
    y = measurement.simulate(emulator.sample(torch.tensor([0.3, 0.8]), 1)[0])
    out = FieldPosterior(emulator, measurement).sample_joint(y, 10, thetas=8, particles=3,
                                                             steps=4, chunk=3)  # fmt: skip
    assert out.theta.shape == (10, 2) and out.x.shape == (1, 10, 8, 8)
    assert torch.isfinite(out.log_prob).all() and 1 <= out.diagnostics["ess"] <= 8
    assert emulator.prior().support.check(out.theta).all()


def test_kernel_draws_keep_the_weighted_moments_and_are_a_density():
    """The kernel-smoothed draw of weighted values on a box prior: its mean and covariance in the
    unconstrained coordinates are the weighted ones (within 4 standard errors of 20,000 draws;
    the covariance's SE from the draws' fourth moments), every draw is distinct and inside the
    box, and the returned log density integrates to 1 over the box (midpoint rule on a 200 x
    200 grid, the same log density the draws carry)."""
    prior = box_uniform([0.0, -1.0], [1.0, 1.0])
    to_theta = torch.distributions.biject_to(prior.support)
    generator = torch.Generator().manual_seed(0)
    theta = prior.sample((64,))
    log_w = -8 * (theta - torch.tensor([0.3, 0.2])).square().sum(-1)  # a bump, ESS ~ 20
    n = 20_000
    estimate = kernel_estimate(to_theta, theta, log_w)
    drawn, parent, log_q = kernel_draws(estimate, n, generator)
    assert drawn.shape == (n, 2) and parent.shape == log_q.shape == (n,)
    assert prior.support.check(drawn).all() and len(torch.unique(drawn, dim=0)) == n
    z, draws = to_theta.inv(theta).double(), to_theta.inv(drawn).double()
    w = (log_w - log_w.logsumexp(0)).exp().double()
    mean = (w[:, None] * z).sum(0)
    cov = (w[:, None] * (z - mean)).T @ (z - mean)
    se = draws.std(0) / n**0.5
    assert ((draws.mean(0) - mean).abs() < 4 * se).all()
    outer = (draws - draws.mean(0))[:, :, None] * (draws - draws.mean(0))[:, None, :]
    assert ((outer.mean(0) - cov).abs() < 4 * outer.std(0) / n**0.5).all()
    edges = [torch.linspace(0, 1, 201), torch.linspace(-1, 1, 201)]
    centres = [(e[1:] + e[:-1]) / 2 for e in edges]
    grid = torch.stack(torch.meshgrid(*centres, indexing="ij"), -1).reshape(-1, 2)
    density = estimate.log_prob(grid.double()).exp()
    assert abs(float(density.sum()) * (1 / 200) * (2 / 200) - 1) < 0.01


def test_the_twists_guess_is_the_models_spectrum(emulator):
    """The SMC's Gaussian guess is the model's own spectrum (``spectral``); read off the
    denoiser instead (models without one), it is the same where the model is its Gaussian part
    (the U-Net's last layer zeroed): within 10% of the model's per ring of |k| (geometric mean),
    the probes mixing k and -k of a spectrum fitted per mode on 200 maps (10% apart)."""
    gaussian = copy.deepcopy(emulator)
    for p in gaussian.model.net.head[-1].parameters():
        torch.nn.init.zeros_(p)
    posterior = FieldPosterior(gaussian, Mask(torch.ones(8, 8, dtype=torch.bool), 0.2))
    theta = torch.tensor([[0.3, 0.8], [0.4, 0.9]])
    generator = torch.Generator().manual_seed(0)
    own = posterior._spectrum(theta, generator).log().reshape(2, -1)
    k = torch.fft.fftfreq(8)[:, None].square() + torch.fft.fftfreq(8).square()
    rings = torch.unique(k.round(decimals=8), return_inverse=True)[1].reshape(-1)
    per_ring = torch.zeros(2, int(rings.max()) + 1, dtype=torch.float64).index_add_(1, rings, own)
    per_ring = (per_ring / torch.bincount(rings))[:, rings].reshape(2, 8, 8)
    probed = posterior._probed_spectrum(theta, generator, probes=8).log()
    assert (probed - per_ring).abs().max() < 0.1


def test_field_posterior_refuses_what_it_cannot_use(emulator):
    with pytest.raises(UsageError, match="measurement is of maps"):
        FieldPosterior(emulator, Mask(torch.ones(4, 4, dtype=torch.bool), 0.1))
    posterior = FieldPosterior(emulator, Operator((8, 8), lambda x: x, 0.1))
    with pytest.raises(UsageError, match="not diagonal"):
        posterior.sample(torch.zeros(8, 8), torch.tensor([0.3, 0.8]), n=2, method="gibbs")
    with pytest.raises(UsageError, match="unknown field sampler"):
        posterior.sample(torch.zeros(8, 8), torch.tensor([0.3, 0.8]), method="hmc")


def test_sample_command_draws_maps_given_a_measurement(fitted, cli, tmp_path):
    """The command line: maps given a masked observation, a file and a figure; a mask of the
    wrong shape and a negative noise level get one line and exit status 2, nothing written."""
    model = str(fitted[1])
    mask = np.ones((8, 8), bool)
    mask[:3] = False
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "small.npy", np.ones((4, 4), bool))
    np.save(tmp_path / "y.npy", np.where(mask, 0.1, np.nan))
    out = tmp_path / "maps.h5"
    args = ["sample", model, "--observed", str(tmp_path / "y.npy"), "--theta", "0.3,0.8",
            "-n", "4", "--sampler", "dps", "--steps", "3", "-o", str(out)]  # fmt: skip
    done = cli(*args, "--mask", str(tmp_path / "mask.npy"), "--noise", "0.2", "--plot")
    assert done.returncode == 0, done.stderr
    with h5py.File(out) as f:
        assert f["x"].shape == (1, 4, 8, 8) and f.attrs["kind"] == "field_posterior"
    assert out.with_suffix(".png").stat().st_size > 0
    out.unlink()
    joint = [a for a in args if a not in ("--theta", "0.3,0.8")]  # the parameters too
    done = cli(*joint, "--mask", str(tmp_path / "mask.npy"), "--noise", "0.2")
    assert done.returncode == 0, done.stderr
    with h5py.File(out) as f:
        assert f["theta"].shape == (4, 2) and f["log_prob"].shape == (4,)
        assert f["x"].shape == (1, 4, 8, 8)
    out.unlink()
    for extra, says in (
        (["--mask", str(tmp_path / "small.npy"), "--noise", "0.2"], "the mask has shape (4, 4)"),
        (["--mask", str(tmp_path / "mask.npy"), "--noise", "-1"], "noise must be a positive"),
    ):
        bad = cli(*args, *extra)
        assert bad.returncode == 2 and says in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and not out.exists()
