"""Vectorised samplers against a correlated Gaussian; R-hat and ESS against known cases."""

from __future__ import annotations

import math

import pytest
import torch

from simgen.inference.mcmc import effective_sample_size, hmc_sample, slice_sample, split_rhat

COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
PREC = torch.linalg.inv(COV)


def log_density(z):
    r = z - MEAN
    return -0.5 * ((r @ PREC) * r).sum(-1)


@pytest.mark.parametrize("sampler", [slice_sample, hmc_sample])
def test_samplers_target_the_gaussian(sampler):
    torch.manual_seed(0)
    chains = sampler(log_density, torch.randn(32, 2, dtype=torch.float64) * 3, 150, warmup=150)
    assert chains.samples.shape == (150, 32, 2) and chains.log_prob.shape == (150, 32)
    torch.testing.assert_close(chains.log_prob, log_density(chains.samples))
    ess = effective_sample_size(chains.samples)
    assert (split_rhat(chains.samples) < 1.05).all()
    flat = chains.samples.reshape(-1, 2)
    se = (COV.diagonal() / ess).sqrt()  # Monte Carlo standard error of the mean
    assert ((flat.mean(0) - MEAN).abs() < 4.5 * se).all(), (flat.mean(0), se)
    # variance: relative standard error ~ sqrt(2 / ess)
    assert ((flat.var(0) / COV.diagonal() - 1).abs() < 4.5 * (2 / ess).sqrt()).all()
    assert 0.5 < chains.acceptance <= 1.0


def test_rhat_and_ess_on_known_cases():
    torch.manual_seed(1)
    iid = torch.randn(1000, 4, 3, dtype=torch.float64)
    assert (split_rhat(iid) - 1).abs().max() < 0.01
    ess = effective_sample_size(iid)
    assert ((ess / 4000 - 1).abs() < 0.15).all(), ess
    stuck = iid.clone()
    stuck[:, 0] += 5.0  # one chain elsewhere
    assert (split_rhat(stuck) > 1.5).all()
    # AR(1) with coefficient r has integrated autocorrelation time (1 + r) / (1 - r)
    r, n = 0.9, 20_000
    ar = torch.zeros(n, 2, 1, dtype=torch.float64)
    noise = torch.randn(n, 2, 1, dtype=torch.float64) * math.sqrt(1 - r**2)
    for t in range(1, n):
        ar[t] = r * ar[t - 1] + noise[t]
    expected = 2 * n / ((1 + r) / (1 - r))
    assert abs(effective_sample_size(ar).item() / expected - 1) < 0.25
