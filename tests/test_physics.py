"""Physics of the scientific simulators: spectra, exact likelihoods, equilibrium sampling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.spatial.transform import Rotation
from simgen.builtin.cosmology import CosmologyField
from simgen.builtin.molecular import (
    BeadSpringChain,
    energy,
    energy_and_grad,
    from_internal,
    internal_coordinates,
    jacobian_log_det,
    pivot_move,
    positions,
)

import simgen
from simgen.diagnostics.metrics import (
    bond_lengths,
    pair_distances,
    power_spectrum,
    radial_average,
    radius_of_gyration,
    wasserstein_relative,
)


def test_gaussian_field_power_spectrum_matches_the_input_within_sampling_error():
    sim = CosmologyField(size=32, lognormal=False)
    maps = 200
    theta = np.tile([0.3, 0.8], (maps, 1))
    x = sim.simulate(theta, np.random.default_rng(0))
    _, power, modes = power_spectrum(x, box=sim.box)
    # the model's P(k_m) = lambda_m L^2 / N^2, averaged over each bin's modes
    model = sim.eigenvalues(theta[:1]) * sim.box**2 / sim.size**2
    expected = radial_average(model, box=sim.box)[1][0]
    # Each mode's power is exponential (relative sd 1); the modes come in conjugate pairs, so
    # a bin has modes / 2 independent ones per map.
    sd = 1 / np.sqrt(np.maximum(modes, 1) / 2 * maps)
    z = (power.mean(0) / expected - 1) / sd
    assert np.all(np.abs(z) < 4), z  # 4 sigma in each of 16 bins: false alarm < 1e-3


def test_gaussian_field_log_likelihood_equals_the_dense_normal():
    sim = CosmologyField(size=6, box=48.0, lognormal=False, noise=0.1)
    theta = np.array([[0.3, 0.8], [0.15, 0.65]])
    x = sim.simulate(theta, np.random.default_rng(1))
    lam = sim.eigenvalues(theta) + 0.1**2
    n = 6
    for row in range(2):
        basis = np.eye(n * n).reshape(-1, n, n)
        cov = np.fft.ifft2(np.fft.fft2(basis) * lam[row]).real.reshape(n * n, n * n)
        dense = stats.multivariate_normal(np.zeros(n * n), cov).logpdf(x[row].ravel())
        np.testing.assert_allclose(
            sim.log_likelihood(x[row : row + 1], theta[row : row + 1]), dense, rtol=1e-10
        )


def test_lognormal_field_moments_and_likelihood():
    sim = CosmologyField(size=16, box=128.0)
    theta = np.tile([0.3, 0.8], (400, 1))
    x = sim.simulate(theta, np.random.default_rng(2))
    var_g = sim.eigenvalues(theta[:1]).mean()
    # delta = exp(g - var/2) - 1: mean 0, variance exp(var) - 1 (per pixel, all pixels alike)
    pixels = x.reshape(len(x), -1)
    per_map = pixels.mean(1)
    assert abs(per_map.mean()) < 4 * per_map.std() / np.sqrt(len(x))
    assert abs(pixels.var() / np.expm1(var_g) - 1) < 0.1
    assert (x > -1).all()
    # the change of variables: log p(delta) = log N(g) - sum log(1 + delta)
    gaussian = CosmologyField(size=16, box=128.0, lognormal=False)
    g = np.log1p(x[:3]) + var_g / 2
    expected = gaussian.log_likelihood(g, theta[:3]) - np.log1p(x[:3]).sum((1, 2))
    np.testing.assert_allclose(sim.log_likelihood(x[:3], theta[:3]), expected, rtol=1e-12)
    outside = x[:1].copy()
    outside[0, 0, 0] = -1.5
    assert sim.log_likelihood(outside, theta[:1])[0] == -np.inf
    with pytest.raises(simgen.SimulatorError, match="no closed-form"):
        CosmologyField(noise=0.1).log_likelihood(x[:1], theta[:1])


def test_field_likelihood_prefers_the_true_parameters():
    sim = simgen.get_simulator("cosmology")
    x = sim.simulate(np.array([[0.3, 0.8]]), np.random.default_rng(3))
    grid = np.array([[om, s8] for om in (0.2, 0.3, 0.4) for s8 in (0.7, 0.8, 0.9)])
    lp = sim.log_likelihood(np.repeat(x, len(grid), 0), grid)
    assert tuple(grid[lp.argmax()]) == (0.3, 0.8)


def test_molecular_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    r = np.cumsum(rng.normal(0, 0.6, (3, 6, 3)) + [1, 0, 0], axis=1)
    eps = np.array([0.3, 0.7, 1.0])
    _, grad = energy_and_grad(r, eps, 100.0, 2.0)
    numeric = np.zeros_like(r)
    h = 1e-6
    for bead, axis in np.ndindex(6, 3):
        step = np.zeros_like(r)
        step[:, bead, axis] = h
        plus = energy_and_grad(r + step, eps, 100.0, 2.0)[0]
        minus = energy_and_grad(r - step, eps, 100.0, 2.0)[0]
        numeric[:, bead, axis] = (plus - minus) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


def test_free_chain_bond_energy_equals_its_exact_value():
    # without angle and LJ terms the bonds are independent springs in 3-D: the bond length has
    # density ~ r^2 exp(-k (r - 1)^2 / 2T), so <k (r - 1)^2 / 2> is a 1-D integral (~T/2)
    k, temperature, rows = 100.0, 0.8, 1000
    sim = BeadSpringChain(beads=5, angle_k=0.0, steps=1500)
    theta = np.column_stack([np.full(rows, temperature), np.zeros(rows)])
    r, acceptance = sim.sample_positions(theta, np.random.default_rng(5))
    assert 0.4 < acceptance < 0.9
    bond_energy = 0.5 * k * (bond_lengths(r) - 1) ** 2  # (rows, 4), independent rows
    density = lambda s: s**2 * np.exp(-k * (s - 1) ** 2 / (2 * temperature))
    z = integrate.quad(density, 0, 3)[0]
    exact = integrate.quad(lambda s: 0.5 * k * (s - 1) ** 2 * density(s), 0, 3)[0] / z
    per_row = bond_energy.mean(1)
    assert abs(per_row.mean() - exact) < 4 * per_row.std() / np.sqrt(rows)


@pytest.mark.slow  # 24 s: 200 chains for three times the default burn-in
def test_interacting_chain_is_equilibrated_by_its_burn_in():
    # at the prior's coldest, most attractive corner (T = 0.5, eps = 1: a compact chain) the
    # default burn-in agrees with a run three times as long in radius of gyration and energy;
    # MALA alone (pivot = 0), for the same steps, is still folding from the straight start
    # and fails the same comparison (it can fail)
    sim, rows = BeadSpringChain(), 200
    theta = np.tile([0.5, 1.0], (rows, 1))
    short, _ = sim.sample_positions(theta, np.random.default_rng(6))
    long, _ = sim.sample_positions(theta, np.random.default_rng(7), steps=3 * sim.steps)
    mala, _ = BeadSpringChain(pivot=0.0).sample_positions(theta, np.random.default_rng(6))

    def z(a: np.ndarray, b: np.ndarray) -> float:
        return abs(a.mean() - b.mean()) / np.sqrt(a.var() / len(a) + b.var() / len(b))

    energy_of = lambda r: energy_and_grad(r, theta[:, 1], 100.0, 2.0)[0]
    for stat in (radius_of_gyration, energy_of):
        assert z(stat(short), stat(long)) < 4
    assert z(radius_of_gyration(mala), radius_of_gyration(long)) > 4


def test_pivot_move_keeps_the_chain_and_turns_its_tail():
    rng = np.random.default_rng(11)
    r = np.cumsum(rng.normal(0, 0.6, (50, 7, 3)) + [1, 0, 0], axis=1)
    moved = pivot_move(r, rng, 1.0)
    # bond lengths and the distances within each side are kept; some bead stays, some moves
    np.testing.assert_allclose(bond_lengths(moved), bond_lengths(r), atol=1e-12)
    still = np.isclose(moved, r).all(-1)
    assert still[:, :2].all() and not still[:, -1].any()
    for row in range(50):
        k = int(np.argmin(still[row])) - 1  # the pivot: the last bead that stays
        d_before = np.linalg.norm(r[row, k:, None] - r[row, None, k:], axis=-1)
        d_after = np.linalg.norm(moved[row, k:, None] - moved[row, None, k:], axis=-1)
        np.testing.assert_allclose(d_after, d_before, atol=1e-12)


def test_molecular_output_is_invariant_and_rebuilds_the_chain():
    sim = simgen.get_simulator("molecular", beads=6, steps=200)
    theta = np.array([[1.0, 0.5], [0.7, 0.9]])
    x = sim.simulate(theta, np.random.default_rng(8))
    assert x.shape == (2, 12)
    r = positions(x)
    assert np.allclose(r[:, 0], 0) and np.allclose(r[:, 1, 1:], 0) and np.allclose(r[:, 2, 2], 0)
    assert (r[:, 2, 1] > 0).all()
    # distances are what the frame preserves; energy is a function of them
    raw, _ = sim.sample_positions(theta, np.random.default_rng(8), steps=200)
    np.testing.assert_allclose(pair_distances(r), pair_distances(raw), atol=1e-10)
    np.testing.assert_allclose(
        energy(x, theta[:, 1], 100.0, 2.0), energy_and_grad(raw, theta[:, 1], 100.0, 2.0)[0]
    )


def test_internal_coordinates_describe_the_same_chain():
    """The same streams in internal coordinates rebuild the same positions; the map is a
    bijection (round trip); bond lengths come first, then angles; summaries agree."""
    theta = np.array([[1.0, 0.5], [0.7, 0.9], [1.4, 0.2]])
    cartesian = simgen.get_simulator("molecular", beads=6, steps=200)
    internal = simgen.get_simulator("molecular", beads=6, steps=200, coordinates="internal")
    x, q = (s.simulate(theta, np.random.default_rng(8)) for s in (cartesian, internal))
    assert q.shape == x.shape == (3, 12)
    np.testing.assert_allclose(from_internal(q), positions(x), atol=1e-10)
    np.testing.assert_allclose(internal_coordinates(from_internal(q)), q, atol=1e-10)
    np.testing.assert_allclose(q[:, :5], np.linalg.norm(np.diff(positions(x), axis=1), axis=-1))
    a, b = cartesian.summaries(x, theta), internal.summaries(q, theta)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-10)
    with pytest.raises(simgen.UsageError, match="coordinates"):
        simgen.get_simulator("molecular", coordinates="polar")


@pytest.mark.parametrize("coordinates", ["internal", "cartesian"])
def test_molecular_density_has_the_volume_of_the_positions(coordinates):
    """J(x) of log_unnormalized is the volume element: the map (translation a, ZYZ Euler
    angles, x) -> positions (5 beads: 15 -> 15) has |det| = sin(Euler beta) J(x) (the Haar
    measure times J), by central finite differences."""
    sim = simgen.get_simulator("molecular", beads=5, steps=300, coordinates=coordinates)
    theta = np.array([[1.0, 0.5], [0.6, 0.9]])
    x = sim.simulate(theta, np.random.default_rng(10))

    def cartesian(v: np.ndarray) -> np.ndarray:
        rotation = Rotation.from_euler("ZYZ", v[3:6]).as_matrix()
        return (sim.positions(v[None, 6:])[0] @ rotation.T + v[:3]).ravel()

    h = 1e-6
    for row in x:
        v = np.concatenate([[0.3, -0.2, 0.5], [0.4, 1.1, -0.7], row])
        columns = [(cartesian(v + h * e) - cartesian(v - h * e)) / (2 * h) for e in np.eye(len(v))]
        log_det = np.linalg.slogdet(np.stack(columns, axis=1))[1]
        expected = np.log(np.sin(1.1)) + jacobian_log_det(row[None], coordinates)[0]
        assert abs(log_det - expected) < 1e-5
    # outside the support of x the density is 0
    outside = x.copy()
    outside[0, 0] = -outside[0, 0]  # a negative length, or bead 1 on the -x axis
    if coordinates == "cartesian":
        outside[1, 2] = -outside[1, 2]  # bead 2 at y < 0
    else:
        outside[1, 4] = 4.0  # the first bending angle above pi
    lp = sim.log_unnormalized(outside, theta)
    assert np.isneginf(lp).all() and np.isfinite(sim.log_unnormalized(x, theta)).all()


def test_wasserstein_relative():
    rng = np.random.default_rng(9)
    a = rng.normal(0, 2, 20_000)
    assert wasserstein_relative(a, rng.normal(0, 2, 20_000)) < 0.03
    assert abs(wasserstein_relative(a, a + 0.2) - 0.1) < 0.01


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("cosmology", {"size": 8, "box": 64.0}, {"power_spectrum_rel_error"}),
        (
            "molecular",
            {"beads": 5, "steps": 100},
            {"energy_wasserstein", "radius_of_gyration_wasserstein", "bond_length_wasserstein"},
        ),
    ],
)
def test_check_compares_physical_statistics(tmp_path, name, options, expected):
    from simgen.diagnostics.report import check
    from simgen.train.loop import fit

    sim = simgen.get_simulator(name, **options)
    data = simgen.simulate(sim, 1000, tmp_path / "d.h5", workers=1, progress=False)
    emulator = fit(data, "flow", None, train={"epochs": 2}, progress=False)
    report = check(emulator, tmp_path / "r", pairs=10, draws=9, thetas=1, samples=200)
    physics = report["emulation"]["physics"]
    assert set(physics) == expected
    assert all(np.isfinite(v[0]) for v in physics.values())
    figure = "fields.png" if name == "cosmology" else "summaries.png"
    assert figure in report["files"] and (tmp_path / "r" / figure).stat().st_size > 0
    if name == "molecular":  # the same check of the samples corrected by the Boltzmann density
        with warnings.catch_warnings():  # a 2-epoch flow: its acceptance rate may be low
            warnings.simplefilter("ignore", UserWarning)
            exact = check(
                emulator,
                tmp_path / "m",
                pairs=10,
                draws=9,
                thetas=1,
                samples=200,
                metropolis=True,
            )
        assert exact["emulation"]["metropolis"] and 0 < exact["emulation"]["acceptance"][0] <= 1
        assert set(exact["emulation"]["physics"]) == expected
        with pytest.raises(simgen.UsageError, match="needs its density"):
            check(
                emulator,
                tmp_path / "l",
                simulator=simgen.get_simulator("lotka_volterra"),
                metropolis=True,
            )
        assert not (tmp_path / "l").exists()  # refused before anything is written
