"""The built-in simulators: contract, determinism, and exact likelihoods checked numerically."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import BUILTINS
from scipy import stats

import simgen
from simgen.data.tasks import run_chunk


@pytest.mark.parametrize("name", BUILTINS)
def test_contract(name):
    sim = simgen.get_simulator(name)
    prior = sim.prior()
    assert prior.event_shape == (sim.d_theta,)
    result = run_chunk(sim, seed=3, index=0, size=40)
    assert result.theta.shape == (40, sim.d_theta) and result.theta.dtype == np.float32
    assert result.x.shape == (40, *sim.x_shape) and result.x.dtype == np.float32
    assert torch.isfinite(prior.log_prob(torch.from_numpy(result.theta))).all()
    again = run_chunk(sim, seed=3, index=0, size=40)
    np.testing.assert_array_equal(result.x, again.x)
    other = run_chunk(sim, seed=3, index=1, size=40)
    assert not np.array_equal(result.theta, other.theta)


@pytest.mark.parametrize(
    "name", ["two_moons", "slcp", "gaussian_linear", "gaussian_mixture", "oscillator"]
)
def test_log_likelihood_finite_on_own_samples(name):
    sim = simgen.get_simulator(name)
    assert sim.has_log_likelihood
    r = run_chunk(sim, seed=0, index=0, size=200)
    lp = sim.log_likelihood(r.x.astype(np.float64), r.theta.astype(np.float64))
    assert lp.shape == (200,) and np.isfinite(lp).all()


def test_lotka_volterra_has_no_exact_likelihood():
    assert not simgen.get_simulator("lotka_volterra").has_log_likelihood


def test_gaussian_linear_matches_scipy():
    sim = simgen.get_simulator("gaussian_linear")
    r = run_chunk(sim, 0, 0, 50)
    x, theta = r.x.astype(np.float64), r.theta.astype(np.float64)
    expected = [
        stats.multivariate_normal(t, 0.1 * np.eye(10)).logpdf(xi)
        for xi, t in zip(x, theta, strict=True)
    ]
    np.testing.assert_allclose(sim.log_likelihood(x, theta), expected, rtol=1e-10)
    # the simulator's noise has the stated variance 0.1: chi-square test on 10 x 50 residuals
    z2 = ((x - theta) ** 2 / 0.1).sum()
    assert stats.chi2(500).sf(z2) > 1e-3 and stats.chi2(500).cdf(z2) > 1e-3


def test_slcp_matches_scipy():
    sim = simgen.get_simulator("slcp")
    r = run_chunk(sim, 0, 0, 20)
    x, theta = r.x.astype(np.float64), r.theta.astype(np.float64)
    for xi, t, lp in zip(x, theta, sim.log_likelihood(x, theta), strict=True):
        s1, s2, rho = t[2] ** 2, t[3] ** 2, np.tanh(t[4])
        cov = [[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]]
        expected = stats.multivariate_normal(t[:2], cov).logpdf(xi.reshape(4, 2)).sum()
        assert lp == pytest.approx(expected, rel=1e-8)


def _grid_density(sim, theta, lo, hi, step):
    g0, g1 = np.arange(lo[0], hi[0], step), np.arange(lo[1], hi[1], step)
    grid = np.stack(np.meshgrid(g0 + step / 2, g1 + step / 2, indexing="ij"), -1).reshape(-1, 2)
    p = np.exp(sim.log_likelihood(grid, np.tile(theta, (len(grid), 1))))
    return grid, p, step**2


@pytest.mark.parametrize(
    "name, lo, hi, step",
    [
        ("two_moons", (-0.15, -0.25), (0.1, 0.12), 0.0005),
        ("gaussian_mixture", (-6, -6), (7, 7), 0.01),
    ],
)
def test_density_integrates_to_one_and_matches_samples(name, lo, hi, step):
    """Quadrature: the density integrates to 1, and its entropy by quadrature equals the mean
    -log p of simulated samples (a z-test with the Monte Carlo standard error)."""
    sim = simgen.get_simulator(name)
    theta = np.array([0.3, 0.2]) if name == "two_moons" else np.array([0.5, 0.5])
    _, p, area = _grid_density(sim, theta, lo, hi, step)
    assert (p * area).sum() == pytest.approx(1.0, abs=2e-3)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(p > 0, p * np.log(p), 0.0) * area).sum()
    n = 20_000
    x = sim.simulate(np.tile(theta, (n, 1)), np.random.default_rng(1))
    nlp = -sim.log_likelihood(x, np.tile(theta, (n, 1)))
    z = (nlp.mean() - entropy) / (nlp.std() / math.sqrt(n))
    assert abs(z) < 4, z


def test_two_moons_latent_distribution():
    """Inverting the offset recovers a ~ U(-pi/2, pi/2) and r ~ N(0.1, 0.01^2) (KS tests)."""
    sim = simgen.get_simulator("two_moons")
    theta = np.tile([-0.4, 0.7], (5000, 1))
    x = sim.simulate(theta, np.random.default_rng(0))
    q = x - sim._offset(theta) - [0.25, 0.0]
    r, a = np.hypot(q[:, 0], q[:, 1]), np.arctan2(q[:, 1], q[:, 0])
    assert stats.kstest(a, stats.uniform(-np.pi / 2, np.pi).cdf).pvalue > 1e-3
    assert stats.kstest(r, stats.norm(0.1, 0.01).cdf).pvalue > 1e-3


def test_oscillator_matches_analytic_solution():
    """RK4 trajectories agree with the closed-form solution of the underdamped driven ODE."""
    sim = simgen.get_simulator("oscillator")
    theta = np.array([[1.7, 0.2, 1.3], [0.6, 0.45, 0.4], [2.9, 0.05, 2.0]])
    t = np.linspace(0, sim.t_max, sim.n_obs)
    big_omega = sim.drive_frequency
    for (w, z, amp), y in zip(theta, sim.trajectory(theta), strict=True):
        den = (w**2 - big_omega**2) ** 2 + (2 * z * w * big_omega) ** 2
        a_c, a_s = amp * (w**2 - big_omega**2) / den, amp * 2 * z * w * big_omega / den
        yp = a_c * np.cos(big_omega * t) + a_s * np.sin(big_omega * t)
        wd = w * math.sqrt(1 - z**2)
        c1 = 1 - a_c
        c2 = (z * w * c1 - a_s * big_omega) / wd
        yh = np.exp(-z * w * t) * (c1 * np.cos(wd * t) + c2 * np.sin(wd * t))
        np.testing.assert_allclose(y, yp + yh, atol=1e-5)


def test_oscillator_log_likelihood_is_gaussian_around_trajectory():
    sim = simgen.get_simulator("oscillator", n_obs=20, noise=0.2)
    theta = np.array([[1.0, 0.1, 1.0]])
    x = sim.simulate(theta, np.random.default_rng(0))
    expected = stats.norm(sim.trajectory(theta)[0], 0.2).logpdf(x[0]).sum()
    assert sim.log_likelihood(x, theta)[0] == pytest.approx(expected, rel=1e-10)


def test_lotka_volterra_pure_death_is_binomial():
    """With every rate but predator death switched off, X(t) ~ Binomial(X0, exp(-mu t))."""
    sim = simgen.get_simulator("lotka_volterra", summary=False, t_max=2.0, dt_obs=1.0)
    mu = 0.5
    theta = np.tile([-60.0, math.log(mu), -60.0, -60.0], (4000, 1))
    series = sim.gillespie(theta, np.random.default_rng(0))
    assert np.isfinite(series).all()
    np.testing.assert_array_equal(series[:, 1], 100)  # prey frozen
    for k, t in enumerate(sim.t_obs):
        p = math.exp(-mu * t)
        mean, sd = 50 * p, math.sqrt(50 * p * (1 - p) / len(theta))
        assert abs(series[:, 0, k].mean() - mean) < 4 * sd + 1e-12


def test_lotka_volterra_explosions_fail_and_true_parameters_oscillate():
    sim = simgen.get_simulator("lotka_volterra", max_events=2000)
    boom = sim.simulate(np.array([[2.0, -5.0, 2.0, -5.0]]), np.random.default_rng(0))
    assert np.isnan(boom).all()
    truth = np.log([[0.01, 0.5, 1.0, 0.01]])
    raw = simgen.get_simulator("lotka_volterra", summary=False).simulate(
        np.repeat(truth, 5, 0), np.random.default_rng(0)
    )
    assert np.isfinite(raw).all() and raw.shape == (5, 2, 151)
    assert (raw.max(-1) > 1.5 * raw[:, :, :1].max(-1)).any()  # populations rise and fall
    s = simgen.get_simulator("lotka_volterra").simulate(truth, np.random.default_rng(0))
    assert s.shape == (1, 9) and np.isfinite(s).all()
