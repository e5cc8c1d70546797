"""Emulators: every family's shapes, broadcasting, save/load, bad input, tiny end-to-end fits."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import simgen
from simgen.emulator import load
from simgen.errors import StoreError, UsageError
from simgen.models.flow import Flow, FlowConfig
from simgen.models.registry import defaults_for
from simgen.models.transforms import BOUNDS, soft_bound, soft_bound_inverse
from simgen.train.loop import fit

FAMILIES = ["flow", "vae", "diffusion"]
TINY = {
    "flow": {"transforms": 2, "hidden": [16, 16]},
    "vae": {"latent": 2, "hidden": [16, 16], "iw_samples": 64},
    "diffusion": {
        "hidden": [32, 32],
        "embedding": 8,
        "steps": 8,
        "affine_hidden": [16],
        "affine_steps": 50,
    },
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "slcp.h5"
    return simgen.simulate("slcp", 1500, path, workers=1, progress=False)


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, data, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "model.pt"
    emulator = fit(
        data,
        request.param,
        out,
        train={"epochs": 2, "batch_size": 128},
        config=TINY[request.param],
        progress=False,
    )
    return emulator, out


def test_fit_writes_a_loadable_model(trained, data):
    emulator, out = trained
    assert out.exists() and not out.with_name(out.name + ".ckpt").exists()
    metrics = emulator.info["metrics"]
    assert metrics["epochs_run"] == 2 and len(metrics["val_loss"]) == 2
    assert all(math.isfinite(v) for v in metrics["val_loss"])
    assert emulator.info["simulator"]["name"] == "slcp" and emulator.x_shape == (8,)
    torch.testing.assert_close(
        emulator.theta_mean, torch.from_numpy(data.theta[:1350].mean(0)), atol=1e-5, rtol=1e-5
    )


def test_shapes_and_broadcasting(trained):
    emulator, _ = trained
    theta = torch.tensor([[0.5, -1.0, 1.0, 1.5, 0.2], [1.0, 0.0, -1.2, 0.8, -0.3]])
    assert emulator.sample(theta[0], 7).shape == (7, 8)
    x = emulator.sample(theta, 5)
    assert x.shape == (5, 2, 8)
    with torch.no_grad():
        assert emulator.log_prob(x, theta).shape == (5, 2)
        assert emulator.log_prob(x[0, 0], theta).shape == (2,)  # one x, two thetas
        assert emulator.log_prob(x[:, 0], theta[0]).shape == (5,)  # five x, one theta
        assert emulator.log_prob(x.numpy(), theta.numpy()).shape == (5, 2)  # numpy in
        dist = emulator(theta)
        assert dist.batch_shape == (2,) and dist.event_shape == (8,)
        assert dist.sample((3,)).shape == (3, 2, 8)
        assert torch.isfinite(dist.log_prob(x)).all()


def test_gradients_reach_every_parameter(trained, data):
    emulator, _ = trained
    net = emulator.model
    net.train()
    theta, x = next(data.batches(32))
    loss = net.loss(theta, x.reshape(32, -1)).mean()
    loss.backward()
    frozen = {name for name, p in net.named_parameters() if not p.requires_grad}
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    net.zero_grad()
    net.eval()
    # the flow's fixed heteroscedastic Gaussian (FlowConfig.fixed_gaussian) is all that is held,
    # and the EDM diffusion's standardisation, whole
    expected = set()
    if emulator.family == "flow" and emulator.info["model_config"].get("fixed_gaussian"):
        expected = {f"flow.transform.transforms.0.linear.{n}" for n in ("weight", "bias")}
    if emulator.family == "diffusion" and emulator.info["model_config"]["process"] == "edm":
        expected = {n for n, _ in net.named_parameters() if n.startswith("affine.")}
    assert frozen == expected or emulator.family == "vae"


def test_log_prob_is_differentiable_in_theta(trained):
    emulator, _ = trained
    theta = torch.tensor([0.5, -1.0, 1.0, 1.5, 0.2], requires_grad=True)
    x = emulator.sample(theta.detach(), 3)
    emulator.log_prob(x, theta).sum().backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()


def test_batched_calls_equal_one_call(trained):
    """Evaluating in batches of 7 rows gives the one-call values (and gradients) wherever the
    density is deterministic; batched sampling keeps the shapes."""
    emulator, _ = trained
    torch.manual_seed(0)
    theta = emulator.prior().sample((4,)).requires_grad_()
    x = emulator.sample(theta.detach(), 5, batch_size=7)
    assert x.shape == (5, 4, 8)
    if emulator.family != "flow":  # the VAE's and diffusion's estimates draw noise per call
        with torch.no_grad():
            parts = emulator.log_prob(x, theta.detach(), batch_size=7)
        assert parts.shape == (5, 4) and torch.isfinite(parts).all()
        return
    whole = emulator.log_prob(x, theta)
    (grad_whole,) = torch.autograd.grad(whole.sum(), theta)
    parts = emulator.log_prob(x, theta, batch_size=7)
    (grad_parts,) = torch.autograd.grad(parts.sum(), theta)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(grad_parts, grad_whole)
    assert emulator.rows_per_call("any", lambda m: None) == 16_384  # CPU: no probing


def test_save_load_round_trip(trained, tmp_path):
    emulator, out = trained
    again = load(out)
    assert again.family == emulator.family and again.identity
    theta = torch.tensor([[0.5, -1.0, 1.0, 1.5, 0.2]])
    torch.manual_seed(3)
    a = emulator.sample(theta, 4)
    torch.manual_seed(3)
    b = again.sample(theta, 4)
    torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.manual_seed(4)
        la = emulator.log_prob(a, theta)
        torch.manual_seed(4)
        lb = again.log_prob(a, theta)
    torch.testing.assert_close(la, lb)
    copy = tmp_path / "copy.pt"
    again.save(copy)
    assert load(copy).info == again.info


def test_bad_inputs(trained):
    emulator, _ = trained
    with pytest.raises(UsageError, match=r"theta has shape \(3,\); expected \(\.\.\., 5\)"):
        emulator.sample(torch.zeros(3))
    with pytest.raises(UsageError, match=r"x has shape \(2, 7\); expected \(\.\.\., 8\)"):
        emulator.log_prob(torch.zeros(2, 7), torch.zeros(5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emulator.sample(torch.tensor([[9.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0], [0, 0, 0, 0, -9.0]]))
    assert any("2 of 3 theta lie outside the prior's support" in str(w.message) for w in caught)


def test_bad_model_files(tmp_path, trained):
    _, out = trained
    with pytest.raises(StoreError, match="no such model file"):
        load(tmp_path / "none.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(StoreError, match="not a simgen model file"):
        load(tmp_path / "text.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(out.read_bytes()[:-200])
    with pytest.raises(StoreError, match="cannot be loaded safely|not a simgen model file"):
        load(cut)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(StoreError, match="not a simgen model"):
        load(tmp_path / "other.pt")
    state = torch.load(out, weights_only=True)
    state["format"] = "simgen-model/7"
    torch.save(state, tmp_path / "newer.pt")
    with pytest.raises(StoreError, match="newer than this simgen reads"):
        load(tmp_path / "newer.pt")
    state["format"] = "simgen-model/1"
    torch.save(state, tmp_path / "older.pt")
    with pytest.raises(StoreError, match="older than this simgen's 'simgen-model/2'.*refit"):
        load(tmp_path / "older.pt")
    torch.save({"format": "simgen-model/2", "payload": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(StoreError, match="cannot be loaded safely"):
        load(tmp_path / "evil.pt")
    assert not EXPLOITED


EXPLOITED: list[int] = []


class Exploit:
    def __reduce__(self):
        return (EXPLOITED.append, (1,))


def test_discrete_time_diffusion_fits_samples_and_bounds(data, tmp_path):
    config = {**TINY["diffusion"], "time": "discrete", "discrete_steps": 100}
    out = tmp_path / "ddpm.pt"
    fit(
        data,
        "diffusion",
        out,
        train={"epochs": 1, "batch_size": 128},
        config=config,
        progress=False,
    )
    emulator = load(out)
    theta = torch.tensor([0.5, -1.0, 1.0, 1.5, 0.2])
    x = emulator.sample(theta, 6)
    assert x.shape == (6, 8) and torch.isfinite(x).all()
    with torch.no_grad():
        bound = emulator.log_prob(x, theta)
    assert bound.shape == (6,) and torch.isfinite(bound).all()


def test_affine_flow_starts_at_the_plain_flow_and_is_the_vector_default():
    """The theta-conditioned standardisation in front of the splines starts at the identity:
    the same weights give the same density with and without it."""
    affine = {"affine": True, "scale_bound": "tanh", "fixed_gaussian": "auto", "transforms": 2}
    assert defaults_for("flow", (100,)) == {**affine, "passes": 2}
    assert defaults_for("flow", (1024,)) == {**affine, "passes": 2}
    del affine["fixed_gaussian"]  # the fit that decides takes 21 s on 2,048 values
    assert defaults_for("flow", (2048,)) == {**affine, "passes": 2}
    affine["fixed_gaussian"] = "auto"
    assert defaults_for("flow", (40,)) == affine
    assert defaults_for("flow", (8,)) == {**affine, "correlated": True}
    edm = {"process": "edm", "hidden": (256, 256), "steps": 18, "embedding": 16,
           "correlated": True, "fixed_gaussian": "auto", "affine_hidden": (256, 256, 256),
           "affine_steps": 32_000, "affine_gain": 10.0}  # fmt: skip
    assert defaults_for("diffusion", (8,)) == edm
    assert defaults_for("diffusion", (40,)) == {**edm, "correlated": False}
    assert defaults_for("diffusion", (2,))["hidden"] == (256, 256, 256)
    # a setting of the variance-preserving process asks for it: its defaults, not EDM's
    assert defaults_for("diffusion", (8,), {"time": "discrete"}) == {"gaussian": True}
    torch.manual_seed(0)
    with_affine = Flow(6, 3, FlowConfig(transforms=2, hidden=(16,), affine=True))
    plain = Flow(6, 3, FlowConfig(transforms=2, hidden=(16,)))
    transforms = with_affine.flow.transform.transforms
    plain.flow.transform.transforms.load_state_dict(transforms[1:].state_dict())
    theta, x = torch.randn(5, 3), torch.randn(5, 6)
    torch.testing.assert_close(with_affine.dist(theta).log_prob(x), plain.dist(theta).log_prob(x))


@pytest.mark.parametrize("bound", BOUNDS)
def test_affine_flow_starts_at_the_least_squares_fit(bound):
    """``initialize`` starts the standardisation at the regression of x on theta: on data
    ``x = A theta + b + s * noise`` it maps x to the noise, to the sampling error of n = 4,000
    rows (5 standard errors: of the coefficients, 5 s (1 + |theta|_1) / sqrt(n) before dividing
    by s; of each scale, relatively 5 / sqrt(2 n)), with either bound of the log-scale."""
    generator = torch.Generator().manual_seed(0)
    n, d_theta, d_x = 4000, 3, 4
    a, b = torch.randn(d_x, d_theta, generator=generator), torch.randn(d_x, generator=generator)
    scale = torch.tensor([0.1, 0.5, 1.0, 2.0])
    theta = torch.randn(n, d_theta, generator=generator)
    noise = torch.randn(n, d_x, generator=generator)
    x = theta @ a.T + b + scale * noise
    config = FlowConfig(transforms=1, hidden=(16,), affine=True, scale_bound=bound)
    flow = Flow(d_x, d_theta, config)
    affine = flow.flow.transform.transforms[0]
    torch.testing.assert_close(affine(theta)(x), x)  # the identity before
    flow.initialize(theta, x)
    with torch.no_grad():
        z = affine(theta)(x)
    tolerance = (
        5 / n**0.5 * (1 + theta.abs().sum(-1, keepdim=True)) + noise.abs() * 5 / (2 * n) ** 0.5
    )
    assert ((z - noise).abs() < tolerance).all()


def test_soft_bounds_of_the_log_scale():
    """The bounds keep |s| <= L, are inverted by ``soft_bound_inverse``, and have the slopes
    the docstrings give: ds/da = 1 - (s/L)^2 (tanh), (1 - |s|/L)^2 (rational) and
    1 - sigmoid(a - L) - sigmoid(-a - L) (softplus, which is the identity to within
    e^(|a| - L) and has a slope above 0.95 up to |s| = L - 3); files written before the
    setting existed load with the rational bound; others are refused."""
    limit = math.log(1e6)
    raw = torch.linspace(-200, 200, 801, dtype=torch.float64, requires_grad=True)
    for bound, slope in [
        ("tanh", lambda s: 1 - (s / limit) ** 2),
        ("rational", lambda s: (1 - s.abs() / limit) ** 2),
        ("softplus", lambda s: 1 - torch.sigmoid(raw - limit) - torch.sigmoid(-raw - limit)),
    ]:
        s = soft_bound(raw, limit, bound)
        assert (s.abs() <= limit).all()
        (grad,) = torch.autograd.grad(s.sum(), raw)
        torch.testing.assert_close(grad, slope(s.detach()).detach())
        inside = s.detach()[s.detach().abs() < 0.99 * limit]
        torch.testing.assert_close(
            soft_bound(soft_bound_inverse(inside, limit, bound), limit, bound), inside
        )
    half = torch.tensor(limit / 2)
    assert 1 - (half / limit) ** 2 == 0.75 and (1 - half / limit) ** 2 == 0.25
    small = torch.linspace(-5, 5, 11, dtype=torch.float64)
    gap = (soft_bound(small, limit, "softplus") - small).abs()
    assert (gap <= torch.exp(small.abs() - limit)).all()
    knee = soft_bound_inverse(torch.tensor([limit - 3.0], dtype=torch.float64), limit, "softplus")
    assert 1 - torch.sigmoid(knee - limit) - torch.sigmoid(-knee - limit) > 0.95
    assert FlowConfig().scale_bound == "rational"
    with pytest.raises(ValueError, match="unknown bound"):
        soft_bound(raw, limit, "exp")
    with pytest.raises(UsageError, match="scale_bound 'exp'"):
        Flow(4, 2, FlowConfig(transforms=1, affine=True, scale_bound="exp"))
    with pytest.raises(UsageError, match="fixed_gaussian = 'yes': use true, false or auto"):
        Flow(4, 2, FlowConfig(transforms=1, affine=True, fixed_gaussian="yes"))
    with pytest.raises(UsageError, match="fixed_gaussian = true needs affine = true"):
        Flow(4, 2, FlowConfig(transforms=1, fixed_gaussian=True))
    # "auto" without the standardisation has nothing to decide: the plain flow
    plain = Flow(4, 2, FlowConfig(transforms=1, fixed_gaussian="auto"))
    assert len(plain.flow.transform.transforms) == 1


def test_separate_heads_move_the_mean_and_the_scale_apart():
    """With ``separate`` the mean, the log-scale and the correlations come from MLPs of their
    own: changing the log-scale's MLP leaves the median of x given theta where it was, and
    changing the mean's MLP leaves every log-determinant as it was."""
    generator = torch.Generator().manual_seed(3)
    n, d_theta, d_x = 200, 2, 3
    theta, x = (
        torch.randn(n, d_theta, generator=generator),
        torch.randn(n, d_x, generator=generator),
    )
    config = FlowConfig(
        transforms=0, hidden=(8,), affine=True, correlated=True, scale_bound="tanh", separate=True
    )
    flow = Flow(d_x, d_theta, config)
    flow.initialize(theta, x)
    affine = flow.flow.transform.transforms[0]
    mean, scale, lower = affine.hyper
    assert lower[-1].out_features == d_x * (d_x - 1) // 2

    def median_and_log_det():
        with torch.no_grad():
            transform = affine(theta)
            return transform.inv(torch.zeros(n, d_x)), transform.log_abs_det_jacobian(
                x, transform(x)
            )

    median, log_det = median_and_log_det()
    with torch.no_grad():
        scale[-1].weight.normal_(generator=generator)
    median_2, log_det_2 = median_and_log_det()
    torch.testing.assert_close(median_2, median)
    assert (log_det_2 - log_det).abs().mean() > 0.1
    with torch.no_grad():
        mean[-1].weight.normal_(generator=generator)
    median_3, log_det_3 = median_and_log_det()
    torch.testing.assert_close(log_det_3, log_det_2)
    assert (median_3 - median_2).abs().mean() > 0.1
    with pytest.raises(UsageError, match="separate = true needs affine = true"):
        Flow(d_x, d_theta, FlowConfig(transforms=1, separate=True))


def test_affine_mean_stays_linear_whatever_the_scale():
    """The standardisation outputs the mean and the log-scale apart (not zuko's shift
    t = -mean * scale): after the least-squares start, an MLP that changes only the log-scales
    leaves the median of x given theta (the image of z = 0) at the regression line, and the
    inverse and the log-determinant agree with the forward map (autograd Jacobian)."""
    generator = torch.Generator().manual_seed(2)
    n, d_theta, d_x = 500, 2, 3
    theta = torch.randn(n, d_theta, generator=generator)
    noise = torch.randn(n, d_x, generator=generator)
    x = theta @ torch.randn(d_theta, d_x, generator=generator) + 0.1 * noise
    flow = Flow(d_x, d_theta, FlowConfig(transforms=1, hidden=(8,), affine=True))
    flow.initialize(theta, x)
    affine = flow.flow.transform.transforms[0]
    with torch.no_grad():
        median, before = affine(theta).inv(torch.zeros(n, d_x)), affine(theta)(x)
        last = affine.hyper[-1]
        last.weight[d_x : 2 * d_x] = 3 * torch.randn(
            d_x, last.weight.shape[1], generator=generator
        )
        transform = affine(theta)
        torch.testing.assert_close(transform.inv(torch.zeros(n, d_x)), median)
        assert (transform(x) - before).abs().mean() > 0.1  # the scales did change
        torch.testing.assert_close(transform.inv(transform(x)), x, atol=1e-5, rtol=1e-5)
    jacobian = torch.func.jacrev(lambda v: affine(theta[:1])(v))(x[:1])[0, :, 0, :]
    torch.testing.assert_close(
        transform.log_abs_det_jacobian(x[:1], transform(x[:1]))[0],
        torch.linalg.slogdet(jacobian).logabsdet,
    )


def test_correlated_affine_start_is_the_least_squares_gaussian():
    """With ``correlated``, the start is the Gaussian of the regression of x on theta with the
    residuals' full covariance: on its own batch z is white (mean 0, covariance I, exactly up
    to float32 rounding), and the untrained flow's density is that
    multivariate normal's (computed here independently); sampling inverts the map."""
    generator = torch.Generator().manual_seed(1)
    n, d_theta, d_x = 2000, 2, 4
    factor = torch.tensor(
        [[0.5, 0, 0, 0], [0.9, 0.2, 0, 0], [-0.3, 0.4, 1.0, 0], [0.1, 0.1, 0.1, 0.05]]
    )
    theta = torch.randn(n, d_theta, generator=generator)
    x = (
        theta @ torch.randn(d_theta, d_x, generator=generator)
        + torch.randn(n, d_x, generator=generator) @ factor.T
    )
    flow = Flow(d_x, d_theta, FlowConfig(transforms=1, hidden=(8,), affine=True, correlated=True))
    flow.initialize(theta, x)
    with torch.no_grad():
        z = flow.flow.transform.transforms[0](theta)(x)
        torch.testing.assert_close(z.mean(0), torch.zeros(d_x), atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.cov(z.T), torch.eye(d_x), atol=1e-4, rtol=0)
        design = torch.cat([theta, torch.ones(n, 1)], 1).double()
        coef = torch.linalg.lstsq(design, x.double()).solution
        residual = x.double() - design @ coef
        exact = torch.distributions.MultivariateNormal(design @ coef, torch.cov(residual.T))
        torch.testing.assert_close(
            flow.dist(theta).log_prob(x).double(), exact.log_prob(x.double()), atol=2e-3, rtol=0
        )
        draws = flow.dist(theta[:3]).sample((5,))
        assert draws.shape == (5, 3, d_x)
        back = flow.flow.transform.transforms[0](theta[:3]).inv(
            flow.flow.transform.transforms[0](theta[:3])(draws)
        )
        torch.testing.assert_close(back, draws, atol=1e-5, rtol=0)
    with pytest.raises(UsageError, match="needs affine"):
        Flow(d_x, d_theta, FlowConfig(correlated=True))


@pytest.mark.parametrize("d_x, passes", [(1, None), (3, None), (4, 2)])
def test_nsf_starts_at_the_identity(d_x, passes):
    """Each spline transform starts at the identity (element-wise, autoregressive, coupling):
    the untrained flow is the standard normal base."""
    flow = Flow(d_x, 2, FlowConfig(transforms=2, hidden=(8,), passes=passes))
    theta, x = torch.randn(5, 2), torch.randn(5, d_x)
    with torch.no_grad():
        log_p = flow.dist(theta).log_prob(x)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    torch.testing.assert_close(log_p, expected, atol=1e-5, rtol=0)
