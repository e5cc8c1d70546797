"""Densities are right: normalisation by quadrature, and the diffusion machinery (ODE density,
samplers) against a Gaussian whose exact score is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import simgen
from simgen.models.diffusion import Diffusion, DiffusionConfig
from simgen.train.loop import fit


class GaussianDiffusion(Diffusion):
    """A diffusion model whose noise predictor is exact for data ``N(m(theta), S)``:
    x_t ~ N(a m, a^2 S + s^2 I), so eps = s (a^2 S + s^2 I)^-1 (x_t - a m)."""

    def __init__(self, mean_matrix: torch.Tensor, cov: torch.Tensor, **config) -> None:
        super().__init__(cov.shape[0], mean_matrix.shape[1], DiffusionConfig(**config))
        self.mean_matrix, self.cov = mean_matrix, cov

    def epsilon(self, x_t, t, theta):
        t = t.expand(x_t.shape[:-1])
        alpha, sigma = self.schedule(t)
        m = theta.expand(*x_t.shape[:-1], theta.shape[-1]) @ self.mean_matrix.T
        eye = torch.eye(self.d_x, dtype=x_t.dtype)
        cov_t = alpha[..., None, None] ** 2 * self.cov + sigma[..., None, None] ** 2 * eye
        r = x_t - alpha[..., None] * m
        return sigma[..., None] * torch.linalg.solve(cov_t, r.unsqueeze(-1)).squeeze(-1)


@pytest.fixture
def gaussian():
    torch.manual_seed(0)
    a = torch.randn(3, 2, dtype=torch.float64) * 0.5
    l = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [-0.3, 0.2, 0.5]], dtype=torch.float64)
    return a, l @ l.T


def test_ode_log_prob_equals_the_exact_gaussian_density(gaussian):
    a, cov = gaussian
    torch.set_default_dtype(torch.float64)
    try:
        model = GaussianDiffusion(a, cov, atol=1e-7, rtol=1e-7).double()
        theta = torch.tensor([[0.3, -1.2], [1.0, 0.5], [-0.7, 0.1]])
        x = MultivariateNormal(theta @ a.T, cov).sample((4,))  # (4, 3, 3)
        with torch.no_grad():
            dist = model.dist(theta)
            learned = dist.log_prob(x)
            x1, ladj = dist.transform.call_and_ladj(x)
            hutchinson = torch.stack(
                [model.dist(theta, exact=False).log_prob(x) for _ in range(64)]
            )

        def marginal(t: float) -> MultivariateNormal:  # exact law of x_t
            alpha, sigma = model.schedule(torch.tensor(t))
            return MultivariateNormal(
                alpha * theta @ a.T, alpha**2 * cov + sigma**2 * torch.eye(3)
            )

        # the solver transports the exact density: log p_tmin(x) = log p_1(x_1) + int div f dt
        exact = marginal(model.config.t_min).log_prob(x)
        torch.testing.assert_close(marginal(1.0).log_prob(x1) + ladj, exact, atol=1e-4, rtol=0)
        # with the N(0, I) base, the error is the VP prior mismatch at t = 1 (alpha_1 = 0.0066,
        # |alpha_1 m . x_1| < 0.05 here) plus the smoothing at t_min (variance 1e-4)
        data = MultivariateNormal(theta @ a.T, cov).log_prob(x)
        assert (learned - data).abs().max() < 0.05
        # Hutchinson's estimator is unbiased: its mean over probes agrees within 4 standard errors
        spread = hutchinson.std(0) / math.sqrt(len(hutchinson))
        assert ((hutchinson.mean(0) - learned).abs() < 4 * spread + 1e-4).all()
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("sampler", ["ode", "sde", "ddpm"])
def test_samplers_draw_the_gaussian(gaussian, sampler):
    """ODE (Heun), reverse SDE, and the DDPM chain respaced from 1000 to 200 steps."""
    a, cov = gaussian
    time = "discrete" if sampler == "ddpm" else "continuous"
    model = GaussianDiffusion(a.float(), cov.float(), steps=200, time=time)
    theta = torch.tensor([0.4, -0.8]).expand(4000, 2)
    torch.manual_seed(1)
    x = model.sample(theta, sampler=None if sampler == "ddpm" else sampler).double()
    mean = theta[0].double() @ a.T
    n = len(x)
    # mean: z-test per coordinate; covariance: entries within 5 standard errors (Wishart)
    z = (x.mean(0) - mean) / (cov.diagonal().sqrt() / math.sqrt(n))
    assert z.abs().max() < 4.5, z
    se = ((cov**2 + cov.diagonal()[:, None] * cov.diagonal()[None, :]) / n).sqrt()
    assert ((x.T.cov() - cov).abs() < 5 * se + 0.02).all(), x.T.cov()


def test_ddpm_elbo_is_the_trajectory_bound_below_log_p(gaussian):
    """The closed-form ELBO (KL terms) has the expectation of the plain trajectory bound
    E_q[log p(x_0:T) - log q(x_1:T | x_0)], computed here independently from a simulated
    forward chain; both lie below the exact log density (T = 50, exact noise predictor)."""
    from torch.distributions import Independent, Normal

    from simgen.models.ddpm import alpha_bar

    a, cov = gaussian
    big_t, n = 50, 4000
    torch.set_default_dtype(torch.float64)
    try:
        model = GaussianDiffusion(a, cov, time="discrete", discrete_steps=big_t).double()
        torch.manual_seed(2)
        theta = torch.tensor([[0.3, -1.2]]).expand(n, 2)
        x0 = MultivariateNormal(theta[0] @ a.T, cov).sample().expand(n, 3)
        with torch.no_grad():
            closed = model.dist(theta).log_prob(x0)
            abar = alpha_bar(model, torch.arange(0, big_t + 1))
            beta = 1 - abar[1:] / abar[:-1]
            xs, log_q = [x0], 0.0
            for i in range(1, big_t + 1):
                step = Independent(
                    Normal((1 - beta[i - 1]).sqrt() * xs[-1], beta[i - 1].sqrt()), 1
                )
                xs.append(step.sample())
                log_q = log_q + step.log_prob(xs[-1])
            log_p = Independent(Normal(torch.zeros(3), 1.0), 1).log_prob(xs[-1])
            for i in range(1, big_t + 1):
                b, t = beta[i - 1], torch.full((n,), i / big_t)
                eps = model.epsilon(xs[i], t, theta)
                mean = (xs[i] - b / (1 - abar[i]).sqrt() * eps) / (1 - b).sqrt()
                var = b if i == 1 else (1 - abar[i - 1]) / (1 - abar[i]) * b
                log_p = log_p + Independent(Normal(mean, var.sqrt()), 1).log_prob(xs[i - 1])
            trajectory = log_p - log_q
        se = math.hypot(closed.std().item(), trajectory.std().item()) / math.sqrt(n)
        assert abs(closed.mean().item() - trajectory.mean().item()) < 4 * se
        exact = MultivariateNormal(theta[0] @ a.T, cov).log_prob(x0[0]).item()
        assert closed.mean().item() < exact - 4 * closed.std().item() / math.sqrt(n)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="module")
def line_data(tmp_path_factory):
    sim = simgen.get_simulator("gaussian_linear", dim=1)
    return simgen.simulate(
        sim, 3000, tmp_path_factory.mktemp("d") / "line.h5", workers=1, progress=False
    )


@pytest.mark.parametrize(
    "family, config, epochs, tolerance",
    [
        ("flow", {"transforms": 2, "hidden": [16, 16]}, 3, 2e-3),
        ("diffusion", {"hidden": [32, 32], "embedding": 8, "affine_steps": 200}, 30, 1e-2),
        ("vae", {"latent": 1, "hidden": [32, 32], "iw_samples": 256}, 3, 5e-2),
    ],
)
def test_density_integrates_to_one(line_data, family, config, epochs, tolerance):
    """Trapezoid quadrature of exp(log p(x | theta)) over +-12 standard deviations of x.

    flow: exact by construction (error from float32 and the grid); diffusion (EDM, the default):
    a change of variables of a Gaussian through the fixed-grid ODE, whose error on Gaussians is
    below 1e-2 nats (``tests/test_edm.py``); vae: exp of the IWAE estimate is an unbiased estimate of p, so the integral is
    1 up to Monte Carlo noise averaged over the grid.
    """
    emulator = fit(
        line_data,
        family,
        None,
        train={"epochs": epochs, "batch_size": 128},
        config=config,
        progress=False,
    )
    grid = torch.linspace(-12, 12, 2001)[:, None] * emulator.x_std + emulator.x_mean
    with torch.no_grad():
        density = emulator.log_prob(grid, torch.tensor([0.2])).exp()
    integral = torch.trapezoid(density, grid[:, 0]).item()
    assert integral == pytest.approx(1.0, abs=tolerance)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "score"])
def test_gaussian_denoiser_is_exact_for_gaussian_data(parameterization):
    """With ``gaussian`` and the network at its zero start, the model is the Gaussian
    ``N(W theta + b, diag(s^2))`` in every parameterization: the ODE transports the exact law
    of ``x_t`` from ``t_min`` to 1 (to the solver's tolerance), and its density with the N(0, I)
    base is the data's up to the prior mismatch at t = 1 (as in the test above)."""
    torch.manual_seed(0)
    config = DiffusionConfig(
        hidden=(16,), gaussian=True, parameterization=parameterization, atol=1e-7, rtol=1e-7
    )
    model = Diffusion(3, 2, config).double()
    w = torch.randn(3, 2, dtype=torch.float64)
    b, scale = torch.randn(3, dtype=torch.float64), torch.tensor([0.2, 1.0, 1.5]).double()
    with torch.no_grad():
        model.gaussian.mean.weight.copy_(w)
        model.gaussian.mean.bias.copy_(b)
        model.gaussian.log_scale.copy_(scale.log())
    theta = torch.randn(4, 2, dtype=torch.float64)
    exact = torch.distributions.Normal(theta @ w.T + b, scale)
    x = exact.sample()
    with torch.no_grad():
        dist = model.dist(theta)
        learned = dist.log_prob(x)
        x1, ladj = dist.transform.call_and_ladj(x)

    def marginal(t: float) -> torch.distributions.Normal:  # exact law of x_t
        alpha, sigma = model.schedule(torch.tensor(t, dtype=torch.float64))
        return torch.distributions.Normal(
            alpha * exact.loc, (alpha**2 * scale**2 + sigma**2).sqrt()
        )

    transported = marginal(1.0).log_prob(x1).sum(-1) + ladj
    exact_t_min = marginal(model.config.t_min).log_prob(x).sum(-1)
    torch.testing.assert_close(transported, exact_t_min, atol=1e-4, rtol=0)
    assert (learned - exact.log_prob(x).sum(-1)).abs().max() < 0.05


def test_gaussian_denoiser_starts_at_the_least_squares_fit():
    """``initialize`` sets the Gaussian to the regression of x on theta: on 4,000 rows of
    ``x = W theta + b + s * noise`` the mean is right to 5 standard errors,
    ``5 s (1 + |theta|_1) / sqrt(n)``, and each scale relatively to ``5 / sqrt(2 n)``."""
    generator = torch.Generator().manual_seed(1)
    n = 4000
    w, b = torch.randn(3, 2, generator=generator), torch.randn(3, generator=generator)
    scale = torch.tensor([0.2, 1.0, 1.5])
    theta = torch.randn(n, 2, generator=generator)
    x = theta @ w.T + b + scale * torch.randn(n, 3, generator=generator)
    model = Diffusion(3, 2, DiffusionConfig(hidden=(16,), gaussian=True))
    model.initialize(theta, x)
    with torch.no_grad():
        mean = model.gaussian.mean(theta[:20])
        fitted_scale = model.gaussian.log_scale.exp()
        out = model._output(torch.randn(20, 3), torch.full((20,), 0.5), theta[:20])
        only = model.gaussian(torch.randn(20, 3), *[torch.ones(20, 1)] * 2, theta[:20], "eps")
    tolerance = 5 * scale / n**0.5 * (1 + theta[:20].abs().sum(-1, keepdim=True))
    assert ((mean - (theta[:20] @ w.T + b)).abs() < tolerance).all()
    assert ((fitted_scale / scale - 1).abs() < 5 / (2 * n) ** 0.5).all()
    assert out.shape == only.shape == (20, 3)
