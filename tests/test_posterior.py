"""Posterior: prior x likelihood in unconstrained space, against analytic posteriors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import simgen
from simgen.diagnostics.metrics import c2st
from simgen.errors import UsageError
from simgen.inference.posterior import Posterior


class ExactEmulator:
    """The simulator's exact likelihood behind the emulator interface the posterior uses
    (numpy, so without gradients: for the slice sampler)."""

    def __init__(self, sim):
        self.sim, self.x_shape, self.d_theta = sim, tuple(sim.x_shape), sim.d_theta
        self.x_mean, self.x_std = torch.zeros(self.x_shape), torch.ones(self.x_shape)

    def prior(self):
        return self.sim.prior()

    def log_prob(self, x, theta):
        shape = torch.broadcast_shapes(x.shape[:-1], theta.shape[:-1])
        xs = x.expand(*shape, *self.x_shape).reshape(-1, *self.x_shape).double().numpy()
        ts = theta.expand(*shape, self.d_theta).reshape(-1, self.d_theta).double().numpy()
        return torch.from_numpy(self.sim.log_likelihood(xs, ts)).float().reshape(shape)


class GaussianLinearExact(ExactEmulator):
    """gaussian_linear's likelihood N(x; theta, 0.1 I) in torch, differentiable (for HMC)."""

    def log_prob(self, x, theta):
        d = self.d_theta
        return -0.5 * ((x - theta) ** 2).sum(-1) / 0.1 - 0.5 * d * math.log(2 * math.pi * 0.1)


def analytic(x_obs: torch.Tensor) -> torch.distributions.MultivariateNormal:
    """gaussian_linear: prior N(0, 0.1 I), likelihood N(theta, 0.1 I), k observations."""
    k = len(x_obs)
    d = x_obs.shape[-1]
    return torch.distributions.MultivariateNormal(
        k * x_obs.mean(0) / (1 + k), 0.1 / (1 + k) * torch.eye(d)
    )


@pytest.mark.parametrize("sampler", ["slice", "hmc"])
def test_exact_likelihood_gives_the_analytic_posterior(sampler):
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    post = Posterior(GaussianLinearExact(sim) if sampler == "hmc" else ExactEmulator(sim))
    torch.manual_seed(0)
    x_obs = torch.tensor([[0.3, -0.2], [0.5, 0.1], [0.1, -0.4]])
    result = post.sample(x_obs, 2000, sampler=sampler, chains=40, progress=False)
    assert result.theta.shape == (2000, 2) and result.log_prob.shape == (2000,)
    assert torch.isfinite(result.log_prob).all()
    assert max(result.diagnostics["mcmc"]["rhat"]) < 1.05
    assert result.diagnostics["sampler"] == sampler
    reference = analytic(x_obs).sample((2000,))
    # C2ST of two sample sets from one law is 0.5 +- sqrt(0.25 / 4000) ~ 0.008: 0.55 is > 5 sigma
    assert c2st(reference.numpy(), result.theta.numpy()) < 0.55
    # log_prob is the log posterior normalised by the importance-sampling evidence estimate
    exact = analytic(x_obs).log_prob(result.theta)
    diff = (result.log_prob - exact).double()
    assert diff.std() < 1e-3
    assert diff.mean().abs() < 5 * result.diagnostics["log_evidence_se"] + 1e-3


def test_bounded_prior_stays_in_support():
    sim = simgen.get_simulator("two_moons")
    post = Posterior(ExactEmulator(sim))
    x_obs = torch.tensor([0.0, 0.1])
    for sampler in ("importance", "smc", "slice"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = post.sample(x_obs, 400, sampler=sampler, warmup=50, progress=False)
        assert ((result.theta > -1) & (result.theta < 1)).all()
        if sampler == "slice":
            # chains sit in both crescents and never cross: no false alarm about convergence
            assert max(result.diagnostics["mcmc"]["rhat"]) < 1.05
            assert not [w for w in caught if "drifted" in str(w.message)]
        # both crescents of the bimodal posterior are found (theta_1 + theta_2 of either sign)
        s = result.theta.sum(-1)
        assert (s > 0).float().mean().item() == pytest.approx(0.5, abs=0.3)


def test_log_prob_and_bad_observations():
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    post = Posterior(ExactEmulator(sim))
    theta = torch.tensor([[0.1, 0.2], [0.0, 0.0]])
    x = torch.tensor([0.3, -0.1])
    expected = torch.from_numpy(
        sim.log_likelihood(np.tile(x.numpy(), (2, 1)), theta.double().numpy())
    )
    expected = expected.float() + sim.prior().log_prob(theta)
    torch.testing.assert_close(post.log_prob(theta, x), expected)
    with pytest.raises(UsageError, match=r"the observation has shape \(3,\); expected \(2,\)"):
        post.log_prob(theta, torch.zeros(3))
    with pytest.raises(UsageError, match="contains NaN"):
        post.sample(torch.tensor([math.nan, 0.0]), 10)
    with pytest.raises(UsageError, match="unknown sampler"):
        post.sample(x, 10, sampler="nuts")
    with pytest.warns(UserWarning, match="extrapolates"):
        post.log_prob(theta, torch.tensor([50.0, 0.0]))


def test_cli_posterior_with_plot(tmp_path):
    from typer.testing import CliRunner

    from simgen.cli import app
    from simgen.train.loop import fit

    store = simgen.simulate(
        simgen.get_simulator("gaussian_linear", dim=2),
        3000,
        tmp_path / "d.h5",
        workers=1,
        progress=False,
    )
    fit(
        store,
        "flow",
        tmp_path / "m.pt",
        train={"epochs": 3},
        config={"transforms": 2, "hidden": [16, 16]},
        progress=False,
    )
    np.save(tmp_path / "obs.npy", np.array([[0.2, -0.1], [0.3, 0.0]], np.float32))
    runner = CliRunner()
    done = runner.invoke(
        app,
        [
            "sample",
            str(tmp_path / "m.pt"),
            "--observed",
            str(tmp_path / "obs.npy"),
            "-n",
            "300",
            "-o",
            str(tmp_path / "post.h5"),
            "--plot",
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    summary = __import__("json").loads(done.stdout)
    assert summary["draws"] == 300 and (tmp_path / "post.png").stat().st_size > 10_000
    import h5py

    with h5py.File(tmp_path / "post.h5") as f:
        assert f["theta"].shape == (300, 2) and f["log_prob"].shape == (300,)
        assert f.attrs["kind"] == "posterior"
        diagnostics = __import__("json").loads(f.attrs["diagnostics"])
        assert diagnostics["ess"] > 0 and np.isfinite(diagnostics["log_evidence"])
        assert np.isfinite(f["log_prob"][:]).all()
    np.save(tmp_path / "bad.npy", np.zeros(3, np.float32))
    done = runner.invoke(
        app,
        [
            "sample",
            str(tmp_path / "m.pt"),
            "--observed",
            str(tmp_path / "bad.npy"),
            "-o",
            str(tmp_path / "p.h5"),
        ],
    )
    assert done.exit_code == 2 and "the observation has shape (3,)" in done.stderr


@pytest.mark.slow  # 30 s: a VAE fit, 1,000 draws through a K = 256 estimate, a K = 4096 grid
def test_fixed_seed_vae_estimate_targets_the_models_posterior(tmp_path):
    # Importance sampling weighs by the IWAE estimate p-hat (K = 256 here), unbiased for the
    # VAE's p. Its draws are compared with the same VAE's posterior with a 16x larger K,
    # computed on a grid: the C2ST between the two must stay below issue 4's target of 0.55
    # (two samples of one law of 1,000 draws each give 0.5 +- 0.011).
    from simgen.train.loop import fit

    sim = simgen.get_simulator("gaussian_linear", dim=2)
    data = simgen.simulate(sim, 4000, tmp_path / "d.h5", workers=1, progress=False)
    config = {"latent": 2, "hidden": [64, 64], "iw_samples": 256}
    emu = fit(data, "vae", None, train={"epochs": 15}, config=config, progress=False)
    post = Posterior(emu)
    x_obs = torch.tensor([0.2, -0.3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = post.sample(x_obs, 1000, progress=False)
    emu.model.config.iw_samples = 4096
    # the posterior's scale is sqrt(0.05) = 0.22: the grid reaches 0.3 past the extreme draws
    # (4.6 scales out), in cells of about 0.15 of it (their jitter adds 0.2% to the variance)
    lo, hi = result.theta.min(0).values - 0.3, result.theta.max(0).values + 0.3
    cells = 60
    axes = [torch.linspace(lo[j], hi[j], cells) for j in range(2)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        lp = post.log_prob(grid, x_obs)
    torch.manual_seed(1)
    pick = torch.multinomial(torch.softmax(lp, 0), 1000, replacement=True)
    step = (hi - lo) / (cells - 1)
    reference = grid[pick] + step * (torch.rand(1000, 2) - 0.5)
    assert c2st(reference.numpy(), result.theta.numpy()) < 0.55
