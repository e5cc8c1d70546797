"""The VAE's importance-weighted bound and estimate, and the DReG gradient (simgen.models.vae,
simgen.models.iwae)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import simgen
from simgen.models.iwae import dreg_objective, iwae_bound, log_spread
from simgen.models.registry import defaults_for
from simgen.models.vae import VAE, VAEConfig


def _toy_log_weights(x: torch.Tensor, k: int, loc: torch.Tensor, log_scale: torch.Tensor):
    """u ~ N(0, 1), x | u ~ N(u, 0.5^2), proposal q(u | x) = N(loc * x, e^log_scale): the log
    weights ``(k, n)``, the draws ``(k, n, 1)``, and the exact log p(x) = log N(x; 0, 1.25)."""
    q = torch.distributions.Normal(loc * x[:, None], log_scale.exp())
    u = q.rsample((k,))
    held = torch.distributions.Normal((loc * x[:, None]).detach(), log_scale.exp().detach())
    prior, noise = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(u, 0.5)
    log_w = (noise.log_prob(x[:, None]) + prior.log_prob(u) - held.log_prob(u))[..., 0]
    exact = torch.distributions.Normal(0.0, math.sqrt(1.25)).log_prob(x)
    return log_w, u, exact


def test_iwae_bound_rises_with_k_to_the_exact_log_density():
    """On a latent Gaussian model with a known p(x) and a proposal wider and off-centre of the
    true posterior N(0.8 x, 0.2): the mean bound over 4,000 repeats rises strictly with K
    from 1 to 8 to 64 (differences beyond 4 standard errors), and at 256 stays below log p(x); exp of the estimate
    averages to p(x) (unbiased) within 4 standard errors; the spread the estimator reports is
    the observed standard deviation of log p-hat within 20% at K = 256 (delta method)."""
    torch.manual_seed(0)
    x = torch.full((4000,), 0.7)
    loc, log_scale = torch.tensor(0.3), torch.tensor(0.0)
    draws = {k: _toy_log_weights(x, k, loc, log_scale) for k in (1, 8, 64, 256)}
    bounds = {k: iwae_bound(log_w) for k, (log_w, _, _) in draws.items()}
    exact = draws[1][2][0].item()
    ks = [1, 8, 64]
    for small, large in itertools.pairwise(ks):  # independent draws
        se = math.hypot(bounds[large].std(), bounds[small].std()) / math.sqrt(len(x))
        assert bounds[large].mean() - bounds[small].mean() > 4 * se
    top = bounds[256]
    assert top.mean() < exact + 4 * top.std() / math.sqrt(len(x))
    ratio = (bounds[8] - exact).exp()  # p-hat / p
    assert abs(ratio.mean().item() - 1) < 4 * ratio.std().item() / math.sqrt(len(x))
    reported = log_spread(draws[256][0]).mean().item()
    assert reported == pytest.approx(top.std().item(), rel=0.2)


def test_dreg_gradient_is_unbiased_for_the_proposal():
    """DReG (Tucker et al. 2018) estimates the same gradient of the K = 8 bound with respect
    to the proposal's parameters as the plain IWAE estimator, which differentiates through
    the proposal's density too: the means of the two over 20,000 rows agree within 4 standard
    errors (from the spread of 40 means of 500 rows), and DReG's spread is smaller."""
    torch.manual_seed(1)
    x = torch.full((20000,), 0.7)
    grads = {}
    for name in ("dreg", "plain"):
        loc = torch.tensor(0.6, requires_grad=True)
        log_scale = torch.tensor(math.log(0.7), requires_grad=True)
        chunks = []
        log_w, u, _ = _toy_log_weights(x, 8, loc, log_scale)
        if name == "plain":  # differentiate the proposal's density too
            q = torch.distributions.Normal(loc * x[:, None], log_scale.exp())
            held = torch.distributions.Normal(
                (loc * x[:, None]).detach(), log_scale.exp().detach()
            )
            log_w = log_w + (held.log_prob(u) - q.log_prob(u))[..., 0]
            objective = iwae_bound(log_w)
        else:
            objective = dreg_objective(log_w, u)
        for i in range(0, len(x), 500):  # the gradient's mean over each 500 rows
            g = torch.autograd.grad(
                objective[i : i + 500].sum(), (loc, log_scale), retain_graph=True
            )
            chunks.append(torch.stack(g) / 500)
        grads[name] = torch.stack(chunks)  # (40, 2)
    dreg, plain = grads["dreg"], grads["plain"]
    se = torch.sqrt((dreg.var(0) + plain.var(0)) / len(dreg))
    assert torch.all((dreg.mean(0) - plain.mean(0)).abs() < 4 * se)
    assert torch.all(dreg.std(0) < plain.std(0))


def test_dreg_objective_has_the_bound_value_and_the_models_gradient():
    """The DReG objective's value is the bound and its gradient with respect to a model
    parameter (here the decoder's noise) equals that of the bound at the same draws."""
    torch.manual_seed(2)
    x = torch.randn(50)
    scale = torch.tensor(0.5, requires_grad=True)
    u = torch.randn(16, 50, 1, requires_grad=True)
    log_w = (torch.distributions.Normal(u, scale).log_prob(x[:, None]) - 0.5 * u**2)[..., 0]
    dreg, plain = dreg_objective(log_w, u), iwae_bound(log_w)
    torch.testing.assert_close(dreg, plain)
    (g_dreg,) = torch.autograd.grad(dreg.sum(), scale, retain_graph=True)
    (g_plain,) = torch.autograd.grad(plain.sum(), scale)
    torch.testing.assert_close(g_dreg, g_plain)


@pytest.fixture(scope="module")
def linear_vae():
    """A VAE without the standardisation and with a Gaussian decoder (so the latent carries
    x), trained 600 steps on gaussian_linear (2-d), and 8,000 held-out pairs."""
    torch.manual_seed(3)
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    theta = sim.prior().sample((28000,)).double().numpy()
    x = sim.simulate(theta, np.random.default_rng(3))
    theta_t, x_t = torch.from_numpy(theta).float(), torch.from_numpy(x).float()
    vae = VAE(2, 2, VAEConfig(latent=2, hidden=(64, 64), decoder="gaussian"))
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for step in range(600):
        rows = slice(step * 32 % 20000, step * 32 % 20000 + 32)
        optimizer.zero_grad()
        vae.loss(theta_t[rows], x_t[rows]).mean().backward()
        optimizer.step()
    exact = sim.log_likelihood(x[20000:], theta[20000:])
    return vae, theta_t[20000:], x_t[20000:], torch.from_numpy(exact).float()


def test_elbo_below_iwae_which_rises_towards_the_exact_log_density(linear_vae):
    """On held-out gaussian_linear pairs: the mean ELBO (K = 1) < IWAE K = 4 < K = 256 (the
    K = 1 and 4 bounds averaged over the disjoint groups of the same 256 draws: paired
    differences beyond 4 standard errors), and the K = 256 bound below the exact log p on
    average (a model's expected log-density under the truth is at most the truth's)."""
    vae, theta, x, exact = linear_vae
    torch.manual_seed(4)
    with torch.no_grad():
        log_w, _ = vae.log_weights(x, theta, 256)
    # E[L_K] for K = 1 and 4 by the mean over the 256 / K disjoint groups of the same draws
    bounds = [iwae_bound(log_w.reshape(k, 256 // k, -1)).mean(0) for k in (1, 4, 256)]
    for low, high in itertools.pairwise(bounds):
        diff = high - low
        assert diff.mean() > 4 * diff.std() / math.sqrt(len(x))
    gap = exact - bounds[-1]
    assert gap.mean() > -4 * gap.std() / math.sqrt(len(x))
    assert (exact - bounds[0]).mean() > gap.mean()


def test_iwae_spread_is_reported_per_row(linear_vae):
    vae, theta, x, _ = linear_vae
    with torch.no_grad():
        estimate, spread = vae.iwae(x[:10], theta[:10], 64, spread=True)
    assert estimate.shape == spread.shape == (10,)
    assert torch.all(spread > 0) and torch.all(torch.isfinite(estimate))


def test_default_vae_has_a_flow_decoder_on_the_held_standardisation(tmp_path):
    """New fits on small vectors get the standardisation, held after its fit (as the EDM
    diffusion's), and the flow decoder; x of more than 64 values a Gaussian decoder."""
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    store = simgen.simulate(sim, 300, tmp_path / "d.h5", workers=1, progress=False)
    emulator = simgen.fit(store, "vae", None, train={"epochs": 1}, progress=False)
    config = emulator.model.config
    assert config.affine and config.held and config.decoder == "flow" and config.iw_samples == 32
    assert not any(p.requires_grad for p in emulator.model.affine.parameters())
    assert defaults_for("vae", (100,), {})["decoder"] == "gaussian"
