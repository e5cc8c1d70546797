"""Exact emulation by independence Metropolis-Hastings with an emulator as the proposal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import simgen
from simgen.inference.metropolis import (
    LOW_ACCEPTANCE,
    emulate_exact,
    independence_chains,
    metropolized_sample,
)
from simgen.train.loop import fit


def test_independence_chains_reach_the_target_from_a_wrong_proposal():
    # proposals N(0, 1.5^2), target N(0.3, 1): the last state of each of 4,000 chains of 31
    # steps is an independent draw, so a one-sample KS test applies; the proposals themselves
    # fail the same test (it can fail)
    rng = np.random.default_rng(0)
    steps, chains = 31, 4000
    proposals = rng.normal(0, 1.5, (steps, chains))
    log_w = stats.norm(0.3, 1).logpdf(proposals) - stats.norm(0, 1.5).logpdf(proposals)
    kept, acceptance = independence_chains(log_w, burn_in=steps - 1, generator=rng)
    assert kept.shape == (1, chains)
    last = proposals.ravel()[kept[0]]
    assert stats.kstest(last, stats.norm(0.3, 1).cdf).pvalue > 1e-3
    assert stats.kstest(proposals[0], stats.norm(0.3, 1).cdf).pvalue < 1e-6
    assert 0.5 < acceptance < 0.95


def test_independence_chains_leave_the_outside_of_the_support():
    log_w = np.array([[-np.inf, 0.0], [np.nan, -np.inf], [-1.0, -np.inf], [-np.inf, -50.0]])
    kept, _ = independence_chains(log_w, burn_in=0, generator=np.random.default_rng(1))
    # chain 0 starts outside, refuses NaN, moves at the first finite weight and never back
    # (indices into log_w.ravel(): row * 2 + column)
    assert kept[:, 0].tolist() == [0, 0, 4, 4]
    # chain 1 starts inside and refuses every proposal outside
    assert kept[:3, 1].tolist() == [1, 1, 1] and kept[3, 1] in (1, 7)
    # with no proposal inside, each chain holds its first
    kept, acceptance = independence_chains(np.full((3, 2), -np.inf), 1, np.random.default_rng(1))
    assert kept.tolist() == [[0, 1], [0, 1]] and acceptance == 0


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "gl.h5"
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    data = simgen.simulate(sim, 2000, path, workers=1, progress=False)
    config = {"transforms": 1, "hidden": [16, 16]}
    return fit(data, "flow", None, config=config, train={"epochs": 3}, progress=False)


def test_metropolized_samples_follow_the_target_not_the_emulator(emulator):
    # target: the simulator's Gaussian shifted by half a noise sd, which the emulator never saw;
    # one kept state per chain, so the samples are independent and KS applies per coordinate
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    sd = np.sqrt(sim.noise_var)
    shift = 0.5 * sd
    theta = np.array([0.1, -0.2])

    def log_target(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return sim.log_likelihood(x - shift, t)

    n = 2000
    out = metropolized_sample(emulator, log_target, theta, n, chains=n, burn_in=20, seed=0)
    assert out.x.shape == (n, 2) and out.proposals == 21 * n
    assert out.distinct == len(np.unique(out.x.numpy(), axis=0)) <= n
    assert 0.3 < out.acceptance <= 1
    raw = emulator.sample(theta, n).numpy()
    for j in range(2):
        target = stats.norm(theta[j] + shift, sd).cdf
        assert stats.kstest(out.x[:, j].numpy(), target).pvalue > 1e-3
        assert stats.kstest(raw[:, j], target).pvalue < 1e-6


def test_metropolized_sample_refuses_what_it_cannot_correct(emulator, monkeypatch):
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    with pytest.raises(simgen.UsageError, match="one parameter value"):
        metropolized_sample(emulator, sim.log_unnormalized, np.zeros((3, 2)), 10)
    with pytest.raises(simgen.UsageError, match="positive"):
        metropolized_sample(emulator, sim.log_unnormalized, np.zeros(2), 10, chains=0)
    with pytest.warns(UserWarning, match="outside the target.s support"):
        metropolized_sample(emulator, lambda x, t: np.full(len(x), -np.inf), np.zeros(2), 10)

    # a narrow target 3 units away: each chain accepts only the few proposals that come nearer
    def far(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return -0.5 * (((x - 3.0) / 0.01) ** 2).sum(-1)

    with pytest.warns(UserWarning, match="acceptance rate"):
        far_sample = metropolized_sample(emulator, far, np.zeros(2), 20, burn_in=200, seed=0)
    assert far_sample.acceptance < LOW_ACCEPTANCE
    with pytest.raises(simgen.UsageError, match="neither log_unnormalized nor log_likelihood"):
        emulate_exact(emulator, simgen.get_simulator("lotka_volterra"), np.zeros((1, 2)), 10)
    monkeypatch.setattr(emulator, "family", "vae")
    with pytest.raises(simgen.UsageError, match="use a flow emulator"):
        metropolized_sample(emulator, sim.log_unnormalized, np.zeros(2), 10)


def test_log_unnormalized_defaults_to_the_exact_likelihood():
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    x, theta = np.ones((3, 2)), np.zeros((3, 2))
    assert sim.has_log_unnormalized
    np.testing.assert_array_equal(sim.log_unnormalized(x, theta), sim.log_likelihood(x, theta))
    no_density = simgen.get_simulator("lotka_volterra")
    assert not no_density.has_log_unnormalized
    with pytest.raises(NotImplementedError):
        no_density.log_unnormalized(x, theta)
