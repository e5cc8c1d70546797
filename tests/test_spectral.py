"""The spectral flow for stationary fields: the Hartley transform is orthonormal, its own inverse
and diagonalises a field's circulant covariance; the flow is the default on square maps, saves
and loads, refuses other shapes, and learns a Gaussian field's density."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import simgen
from simgen.data.tasks import run_chunk
from simgen.errors import UsageError
from simgen.models.flow import Flow, FlowConfig
from simgen.models.registry import defaults_for
from simgen.models.spectral import Hartley, ModeScale

SIDE = 8


def test_hartley_is_orthonormal_and_its_own_inverse():
    h = Hartley(SIDE)
    eye = torch.eye(SIDE * SIDE)
    matrix = h(eye)  # rows: the transform of each unit vector
    assert torch.allclose(matrix @ matrix.T, eye, atol=1e-5)
    assert torch.allclose(matrix, matrix.T, atol=1e-6)
    x = torch.randn(5, SIDE * SIDE)
    assert torch.allclose(h.inv(h(x)), x, atol=1e-5)
    assert torch.equal(h.log_abs_det_jacobian(x, h(x)), torch.zeros(5))


def test_hartley_diagonalises_a_stationary_covariance():
    """The circulant covariance of the cosmology simulator's Gaussian field, built densely from
    its eigenvalues, becomes diag(eigenvalues) in the Hartley basis."""
    sim = simgen.get_simulator("cosmology", size=SIDE, box=64.0, lognormal=False)
    lam = sim.eigenvalues(np.array([[0.3, 0.8]]))[0]  # (SIDE, SIDE)
    n = SIDE * SIDE
    unit = np.eye(n).reshape(n, SIDE, SIDE)
    cov = np.fft.ifft2(np.fft.fft2(unit) * lam).real.reshape(n, n)  # C e_j, column by column
    h = Hartley(SIDE)(torch.eye(n, dtype=torch.float64)).double().numpy()
    rotated = h @ cov @ h.T
    scale = lam.max()
    assert np.abs(rotated - np.diag(lam.ravel())).max() < 1e-5 * scale


def test_spectral_is_the_flow_default_on_square_maps_only():
    assert defaults_for("flow", (32, 32))["network"] == "spectral"
    assert "network" not in defaults_for("flow", (100,))
    assert "network" not in defaults_for("flow", (8, 4))
    with pytest.raises(UsageError, match="square maps"):
        Flow(10, 2, FlowConfig(network="spectral"))
    with pytest.raises(UsageError, match="unknown flow network"):
        Flow(16, 2, FlowConfig(network="fft"))
    for setting in ({"affine": True}, {"affine": True, "correlated": True}):
        with pytest.raises(UsageError, match="apply to network 'nsf'"):
            Flow(16, 2, FlowConfig(network="spectral", **setting))


def test_mode_scale_fit_is_the_maximum_likelihood_spectrum():
    """Fitted to 4,000 Gaussian maps at prior draws of theta, the mode Gaussian of
    :class:`ModeScale` approaches the exact law N(0, lambda(theta)) at new theta values: the
    mean KL per mode, exact from the two Gaussians, is under 10 times 1 / (2n), the expected KL
    of one variance estimated from n = 4,000 values (the fit pools modes and theta), where a
    start at the batch's spectrum (no theta dependence) is 0.06."""
    sim = simgen.get_simulator("cosmology", size=SIDE, box=64.0, lognormal=False)
    torch.manual_seed(0)
    n = 4000
    theta = sim.prior().sample((n,)).double().numpy()
    x = sim.simulate(theta, np.random.default_rng(0)).reshape(n, -1)
    centre, spread = theta.mean(0), theta.std(0)
    scale = ModeScale(SIDE, 2, (64, 64))
    scale.fit(
        torch.tensor((theta - centre) / spread).float(), Hartley(SIDE)(torch.tensor(x).float())
    )
    new = np.array([[0.15, 0.7], [0.3, 0.8], [0.45, 0.95], [0.2, 0.9]])
    with torch.no_grad():
        mean, std = scale.normal(torch.tensor((new - centre) / spread).float())
    lam, v = sim.eigenvalues(new).reshape(len(new), -1), std.double().numpy() ** 2
    kl = 0.5 * (lam / v + mean.double().numpy() ** 2 / v - 1 - np.log(lam / v))
    assert kl.mean() < 10 / (2 * n), kl.mean()


@pytest.fixture(scope="module")
def gaussian_maps(tmp_path_factory):
    """4,000 periodic 8x8 Gaussian fields (exact likelihood known)."""
    sim = simgen.get_simulator("cosmology", size=SIDE, box=64.0, lognormal=False)
    path = tmp_path_factory.mktemp("fields") / "fields.h5"
    return sim, simgen.simulate(sim, 4000, path, workers=1, progress=False)


def test_spectral_flow_learns_a_gaussian_field(gaussian_maps, tmp_path):
    """On held-out maps, ``E[log p - log q]`` estimates KL(p || q). A model that knew each
    map's pixel variance but ignored the correlations (white noise) would lose
    ``KL_white = 0.5 * mean(lam / s2 - 1 - log(lam / s2))`` nats per pixel, ``s2`` the mean
    eigenvalue, computed exactly per map; the spectral flow must recover at least 90% of it."""
    sim, store = gaussian_maps
    config = {"hidden": [32, 32]}  # spectral, no coupling: the default on square maps
    emulator = simgen.fit(
        store, "flow", tmp_path / "f.pt", train={"epochs": 12, "batch_size": 128},
        config=config, progress=False,
    )  # fmt: skip
    assert emulator.model.config.network == "spectral"
    held = run_chunk(sim, seed=5, index=10**6, size=200)
    theta, x = held.theta.astype(np.float64), held.x.astype(np.float64)
    exact = sim.log_likelihood(x, theta)
    with torch.no_grad():
        learned = emulator.log_prob(torch.from_numpy(held.x), torch.from_numpy(held.theta))
    pixels = SIDE * SIDE
    kl = float(np.mean(exact - learned.double().numpy())) / pixels
    ratio = sim.eigenvalues(theta) / sim.eigenvalues(theta).mean(axis=(1, 2), keepdims=True)
    kl_white = float(np.mean(0.5 * (ratio - 1 - np.log(ratio))))
    assert kl < 0.1 * kl_white, (kl, kl_white)

    # the model file loads to the same outputs; sampling gives finite maps of the right shape
    again = simgen.load(tmp_path / "f.pt")
    x0, t0 = torch.from_numpy(held.x[:4]), torch.from_numpy(held.theta[:4])
    with torch.no_grad():
        assert torch.equal(again.log_prob(x0, t0), emulator.log_prob(x0, t0))
    draws = again.sample(torch.tensor([0.3, 0.8]), 16)
    assert draws.shape == (16, SIDE, SIDE) and torch.isfinite(draws).all()


def test_pixel_initialisation_finds_the_gaussianising_shape():
    """From a batch alone, the pixel map starts (nearly) affine on Gaussian pixels and (nearly)
    the log on log-normal ones, the maps that make each Gaussian; its output is standardised."""
    from simgen.models.spectral import PixelTransform

    sim = simgen.get_simulator("cosmology", size=SIDE, box=64.0)
    torch.manual_seed(0)  # the draws, not whatever state earlier tests left
    theta = sim.prior().sample((256,)).double().numpy()
    delta = sim.simulate(theta, np.random.default_rng(0)).reshape(256, -1)
    gaussian = np.random.default_rng(1).standard_normal((256, SIDE * SIDE))
    pixel = PixelTransform(SIDE * SIDE, 2, bins=8, hidden=(16,))
    # an affine map of the log-normal pixels correlates 0.73 with their log; the 8-bin spline
    # reaches 0.998-0.999 over prior draws (its bins are coarse where the log is steep, near
    # delta = -1), an affine map of Gaussian pixels is exact
    for x, target, floor in ((gaussian, gaussian, 0.999), (delta, np.log1p(delta), 0.995)):
        u = torch.as_tensor((x - x.mean()) / x.std(), dtype=torch.float32)
        pixel.initialize(u)
        with torch.no_grad():
            y = pixel(torch.zeros(256, 2))(u).double().numpy()
        assert np.corrcoef(y.ravel(), target.ravel())[0, 1] > floor
        assert abs(y.mean()) < 0.05 and abs(y.std() - 1) < 0.05


def test_spectral_fit_standardises_all_pixels_alike(gaussian_maps):
    """One mean and scale for every pixel, the pooled moments of the training rows."""
    _, store = gaussian_maps
    emulator = simgen.fit(store, "flow", None, train={"epochs": 1}, progress=False)
    n_train = len(store) - round(0.1 * len(store))
    x = store.x[:n_train].astype(np.float64)
    assert torch.allclose(emulator.x_mean, torch.full((SIDE * SIDE,), x.mean()).float())
    assert torch.allclose(emulator.x_std, torch.full((SIDE * SIDE,), x.std()).float(), rtol=1e-4)


def test_spectral_flow_broadcasts_like_torch():
    flow = Flow(SIDE * SIDE, 2, FlowConfig(network="spectral", transforms=1, hidden=(8,)))
    theta, x = torch.rand(2, 2), torch.randn(3, 1, SIDE * SIDE)
    assert flow.dist(theta).log_prob(x).shape == (3, 2)
    assert flow.dist(theta[0]).log_prob(x[:, 0]).shape == (3,)
