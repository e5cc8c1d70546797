"""Calibration diagnostics: SBC ranks, their uniformity test and expected coverage, on exact
posteriors (which must pass) and on overconfident ones (which must fail)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_posterior import ExactEmulator

import simgen
from simgen.diagnostics.metrics import (
    coverage_levels,
    expected_coverage,
    sbc_ranks,
    sbc_uniformity,
)
from simgen.errors import UsageError
from simgen.inference.posterior import Posterior

# 2 parameters, Bonferroni at 1%: a calibrated posterior is rejected with probability <= 0.01
ALPHA = 0.01 / 2


class ScaledLikelihood(ExactEmulator):
    """gaussian_linear's likelihood with its variance divided by ``factor``: overconfident."""

    def __init__(self, sim, factor):
        super().__init__(sim)
        self.factor = factor

    def log_prob(self, x, theta):
        var = 0.1 / self.factor
        d = self.d_theta
        return -0.5 * ((x - theta) ** 2).sum(-1) / var - 0.5 * d * math.log(2 * math.pi * var)


def _pairs(m, seed=0):
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, math.sqrt(0.1), (m, 2))
    return sim, theta, sim.simulate(theta, rng)


def _analytic_draws(x, draws, shrink, rng):
    """Posterior draws of gaussian_linear (prior and noise variance 0.1): N(x / 2, 0.05 I),
    with the spread multiplied by ``shrink``."""
    return x[:, None] / 2 + shrink * math.sqrt(0.05) * rng.standard_normal((len(x), draws, 2))


def test_sbc_accepts_exact_draws_and_rejects_overconfident_ones():
    _, theta, x = _pairs(500)
    rng = np.random.default_rng(1)
    good = sbc_ranks(theta, _analytic_draws(x, 99, 1.0, rng))
    bad = sbc_ranks(theta, _analytic_draws(x, 99, 0.6, rng))
    assert good.shape == (500, 2) and good.min() >= 0 and good.max() <= 99
    assert sbc_uniformity(good, 99).min() > ALPHA
    assert sbc_uniformity(bad, 99).max() < 1e-6  # U-shaped ranks


def test_expected_coverage_of_exact_and_overconfident_posteriors():
    _, theta, x = _pairs(400)
    rng = np.random.default_rng(2)
    for shrink, calibrated in ((1.0, True), (0.6, False)):
        draws = _analytic_draws(x, 200, shrink, rng)
        post = torch.distributions.Normal(torch.tensor(x / 2), shrink * math.sqrt(0.05))
        lp_draws = post.log_prob(torch.tensor(draws).transpose(0, 1)).sum(-1).T
        lp_true = post.log_prob(torch.tensor(theta)).sum(-1)
        curve = coverage_levels(expected_coverage(lp_true, lp_draws))
        inside = (curve["coverage"] >= curve["low"]) & (curve["coverage"] <= curve["high"])
        if calibrated:  # pointwise 95% bands: most levels inside
            assert inside.mean() > 0.8
        else:  # overconfident regions cover less than they claim
            assert (curve["coverage"] < curve["levels"]).mean() > 0.95


@pytest.mark.parametrize("sampler", ["importance", "slice"])
@pytest.mark.parametrize(("factor", "calibrated"), [(1.0, True), (4.0, False)])
def test_batched_posteriors_are_calibrated_only_with_the_right_likelihood(
    factor, calibrated, sampler
):
    sim, theta, x = _pairs(100, seed=3)
    post = Posterior(ScaledLikelihood(sim, factor))
    result = post.sample_batch(x, 99, sampler=sampler, chains=11, thin=3, progress=False)
    assert set(result.diagnostics["sampler"]) == {sampler}
    assert result.theta.shape == (100, 99, 2) and result.log_prob.shape == (100, 99)
    assert torch.isfinite(result.theta).all()
    pvalues = sbc_uniformity(sbc_ranks(theta, result.theta), 99)
    if calibrated:
        assert pvalues.min() > ALPHA
    else:
        assert pvalues.max() < ALPHA  # both parameters rejected


def test_sample_batch_refuses_a_single_observation():
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    with pytest.raises(UsageError, match="m observations"):
        Posterior(ExactEmulator(sim)).sample_batch(np.zeros(2), 10)


def test_cli_check_writes_a_report(tmp_path, cli):
    data = tmp_path / "d.h5"
    model = tmp_path / "m.pt"
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    simgen.simulate(sim, 2000, data, workers=1, progress=False)
    from simgen.train.loop import fit

    fit(data, "flow", model, train={"epochs": 3}, progress=False)
    out = tmp_path / "report"
    result = cli(
        "check",
        str(model),
        "-o",
        str(out),
        "--pairs",
        "10",
        "--draws",
        "9",
        "--thetas",
        "1",
        "--samples",
        "200",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "calibration.png").stat().st_size > 0
    assert (out / "emulation.png").stat().st_size > 0
    assert set(report["calibration"]["sbc_pvalues"]) == {"theta_1", "theta_2"}
    assert sum(report["calibration"]["samplers"].values()) == report["calibration"]["pairs"]
    scores = report["emulation"]["c2st"]
    assert len(scores) == 1 and report["emulation"]["c2st_mean"] == scores[0]
    bad = cli("check", str(model), "-o", str(out), "--simulator", "slcp")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "the model has 2" in bad.stderr
