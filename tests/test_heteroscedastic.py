"""The flow's fixed heteroscedastic linear-Gaussian standardisation (``fixed_gaussian``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import simgen
from simgen.models.flow import MAX_SCALE, NOISE_FLOOR, Flow, FlowConfig, needs_fixed_gaussian
from simgen.models.heteroscedastic import heteroscedastic_fit, log_abs
from simgen.models.transforms import soft_bound
from simgen.train.loop import fit

N, D_THETA = 4000, 2
SCALE_0, POWER_0 = 0.3, 1.5  # sigma_0 = 0.3 |theta_0|^1.5: a noise that vanishes at theta_0 = 0
SCALE_1, SLOPE_1 = 0.5, 0.4  # sigma_1 = 0.5 exp(0.4 theta_1): a log-linear noise
MEAN_WEIGHT = torch.tensor([[1.5, -0.5], [0.0, -1.0]], dtype=torch.float64)
MEAN_BIAS = torch.tensor([0.2, 0.0], dtype=torch.float64)


def sigmas(theta: torch.Tensor) -> torch.Tensor:
    """The true noise levels ``(n, 2)``."""
    return torch.stack(
        [SCALE_0 * theta[:, 0].abs() ** POWER_0, SCALE_1 * torch.exp(SLOPE_1 * theta[:, 1])], -1
    )


def dataset(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(N, D_THETA, generator=generator, dtype=torch.float64)
    noise = torch.randn(N, 2, generator=generator, dtype=torch.float64)
    return theta, theta @ MEAN_WEIGHT.T + MEAN_BIAS + sigmas(theta) * noise


def test_maximum_likelihood_recovers_a_power_law_noise_and_an_exact_mean():
    """On ``x_i = A_i theta + b_i + sigma_i(theta) eps`` with a noise that is a power of
    |theta_0| and one log-linear in theta_1, the fit finds every coefficient within 5 standard
    errors of the maximum-likelihood estimate, from the Fisher information at the truth:
    ``(2 D_s^T D_s)^-1`` for the log-scale's and ``(D_mu^T diag(sigma^-2) D_mu)^-1`` for the
    mean's. The mean's errors are far below least squares' (which weighs every row alike),
    since rows near theta_0 = 0 have almost no noise. The powers that are 0 in truth are
    pruned to exactly 0 (a Wald test at 5 standard errors: a false keep has probability 6e-7
    each)."""
    theta, x = dataset()
    origin = torch.zeros(D_THETA, dtype=torch.float64)
    fit = heteroscedastic_fit(theta, x, origin, bound=lambda a: a)
    ones = torch.ones(N, 1, dtype=torch.float64)
    d_scale = torch.cat([theta, log_abs(theta, origin), ones], 1)
    d_mean = torch.cat([theta, ones], 1)
    se_scale = torch.linalg.inv(2 * d_scale.T @ d_scale).diagonal().sqrt()
    # true coefficients of s = -log sigma on (theta, log|theta|, 1), per value of x
    truth_scale = torch.tensor(
        [
            [0.0, 0.0, -POWER_0, 0.0, -math.log(SCALE_0)],
            [0.0, -SLOPE_1, 0.0, 0.0, -math.log(SCALE_1)],
        ],
        dtype=torch.float64,
    )
    found_scale = torch.cat(
        [fit.scale_weight, fit.power, fit.scale_bias[:, None]], dim=1
    )  # (2, 2 d + 1)
    assert ((found_scale - truth_scale).abs() < 5 * se_scale).all(), found_scale
    assert fit.power[0, 1] == 0 and (fit.power[1] == 0).all() and fit.power[0, 0] != 0
    truth_mean = torch.cat([MEAN_WEIGHT, MEAN_BIAS[:, None]], 1)
    found_mean = torch.cat([fit.mean_weight, fit.mean_bias[:, None]], 1)
    least_squares = torch.linalg.lstsq(d_mean, x).solution.T
    for i in range(2):
        weights = sigmas(theta)[:, i] ** -2
        se_mean = torch.linalg.inv(d_mean.T @ (weights[:, None] * d_mean)).diagonal().sqrt()
        assert ((found_mean[i] - truth_mean[i]).abs() < 5 * se_mean).all(), found_mean[i]
    error = (found_mean[0] - truth_mean[0]).abs().max()
    assert error < (least_squares[0] - truth_mean[0]).abs().max() / 10


def fixed_flow(correlated: bool = False) -> tuple[Flow, torch.Tensor, torch.Tensor]:
    theta, x = dataset()
    config = FlowConfig(
        transforms=0,
        hidden=(16,),
        affine=True,
        correlated=correlated,
        scale_bound="softplus",
        fixed_gaussian=True,
    )
    flow = Flow(2, D_THETA, config)
    flow.initialize(theta.float(), x.float(), origin=torch.zeros(D_THETA))
    return flow, theta.float(), x.float()


def test_the_flow_starts_at_the_fit_and_keeps_it_while_the_mlp_trains():
    """``initialize`` puts the fit into the standardisation (which then maps x to its noise,
    up to the estimate's errors), training moves the MLP but not the fixed part, and the
    gradient reaches every parameter that trains."""
    flow, theta, x = fixed_flow()
    affine = flow.flow.transform.transforms[0]
    fit = heteroscedastic_fit(
        theta, x, torch.zeros(D_THETA), lambda a: soft_bound(a, math.log(MAX_SCALE), "softplus")
    )
    torch.testing.assert_close(affine.power, fit.power.float())
    torch.testing.assert_close(affine.linear.weight[:2], fit.mean_weight.float())
    with torch.no_grad():
        z = affine(theta)(x)
    noise = (x.double() - theta.double() @ MEAN_WEIGHT.T - MEAN_BIAS) / sigmas(theta.double())
    assert (z.double() - noise).abs().median() < 0.05
    fixed = {k: v.clone() for k, v in affine.state_dict().items() if not k.startswith("hyper")}
    trained = [p for p in flow.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        flow.loss(theta[:256], x[:256]).mean().backward()
        assert all(p.grad is not None for p in trained)
        optimizer.step()
    for key, value in affine.state_dict().items():
        if key in fixed:
            torch.testing.assert_close(value, fixed[key], rtol=0, atol=0)
    assert affine.hyper[-1].weight.abs().sum() > 0  # the MLP moved


@pytest.mark.parametrize("correlated", [False, True])
def test_the_mlp_corrects_the_mean_in_units_of_the_fixed_noise(correlated):
    """A change ``delta`` of the MLP's mean output moves the median of x given theta by
    ``delta`` times the fixed model's noise level at that theta (so a training step moves the
    mean by a fraction of the local noise), and leaves the log-determinant unchanged."""
    flow, theta, x = fixed_flow(correlated)
    affine = flow.flow.transform.transforms[0]

    def median_and_log_det() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            transform = affine(theta)
            median = transform.inv(torch.zeros_like(x))
            return median, transform.log_abs_det_jacobian(x, transform(x))

    median, log_det = median_and_log_det()
    delta = 0.5
    with torch.no_grad():
        affine.hyper[-1].bias[:2] += delta
        raw = affine.linear(theta)[:, 2:4] + log_abs(theta, affine.origin) @ affine.power.T
        noise = soft_bound(raw, math.log(MAX_SCALE), "softplus").neg().exp()
    moved, log_det_2 = median_and_log_det()
    torch.testing.assert_close(log_det_2, log_det)
    if correlated:  # the median's second value also follows the first through C
        torch.testing.assert_close(moved[:, 0] - median[:, 0], delta * noise[:, 0])
    else:
        torch.testing.assert_close(moved - median, delta * noise)


def test_fit_puts_theta_zero_where_the_power_features_need_it(tmp_path):
    """``fit`` hands the flow the standardised coordinates of theta = 0 (not 0, which is the
    data's mean): here parameters drawn from [0.5, 3], far from 0 in standardised units."""
    generator = np.random.default_rng(0)
    theta = generator.uniform(0.5, 3.0, (400, 5)).astype(np.float32)
    store = simgen.simulate("slcp", 400, tmp_path / "d.h5", theta=theta, workers=1, progress=False)
    config = {"transforms": 0, "hidden": [8], "fixed_gaussian": True, "scale_bound": "softplus"}
    emulator = fit(store, "flow", None, train={"epochs": 1, "batch_size": 128}, config=config)
    affine = emulator.model.flow.transform.transforms[0]
    origin = -emulator.theta_mean / emulator.theta_std
    assert (origin < -1).all()
    torch.testing.assert_close(affine.origin, origin)


@pytest.mark.parametrize("factor, fixed", [(2.0, False), (0.5, True)])
def test_auto_holds_the_fit_fixed_below_the_noise_floor(factor, fixed):
    """``needs_fixed_gaussian``: a homoscedastic linear-Gaussian x (spread about 1) with a noise
    twice :data:`NOISE_FLOOR` is left to train; half of it is held fixed."""
    theta, _ = dataset()
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(N, 2, generator=generator, dtype=torch.float64)
    x = theta @ MEAN_WEIGHT.T + factor * NOISE_FLOOR * noise
    origin = torch.zeros(D_THETA, dtype=torch.float64)
    bound = lambda a: soft_bound(a, math.log(MAX_SCALE), "softplus")
    fit = heteroscedastic_fit(theta, x, origin, bound)
    assert needs_fixed_gaussian(fit, theta, origin) is fixed


@pytest.mark.parametrize("task, fixed", [("slcp", True), ("gaussian_linear", False)])
def test_fit_settles_auto_and_the_model_file_keeps_the_decision(tmp_path, task, fixed):
    """New flows default to ``fixed_gaussian = "auto"``; ``fit`` settles it from the data
    (slcp's noise theta_3^2 is far below the floor for |theta_3| < 0.2, 7% of the prior's
    rows; gaussian_linear's is 0.1 everywhere), and the model file holds the decision, so
    that it loads into the same network and gives the same log-densities."""
    store = simgen.simulate(task, 1000, tmp_path / "d.h5", workers=1, progress=False)
    config = {"transforms": 0, "hidden": [8]}
    out = tmp_path / "m.pt"
    emulator = fit(store, "flow", out, train={"epochs": 1, "batch_size": 256}, config=config)
    settled = emulator.info["model_config"]
    assert settled["fixed_gaussian"] is fixed
    assert settled["scale_bound"] == ("softplus" if fixed else "tanh")
    affine = emulator.model.flow.transform.transforms[0]
    assert affine.linear.weight.requires_grad is not fixed
    assert hasattr(affine, "power") is fixed
    loaded = simgen.load(out)
    assert loaded.info["model_config"] == settled
    x, theta = torch.from_numpy(store.x[:50]), torch.from_numpy(store.theta[:50])
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, theta), emulator.log_prob(x, theta))
