"""The posterior engine: importance weights, evidence, normalised densities, fallbacks, and the
proposal that simgen fit trains, against exact posteriors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_posterior import ExactEmulator, GaussianLinearExact

import simgen
from simgen.diagnostics.metrics import c2st
from simgen.inference.importance import PRIOR_SHARE, DefensiveMixture
from simgen.inference.posterior import Posterior
from simgen.models.proposal import NEW_PASSES, Proposal, ProposalConfig
from simgen.train.config import TrainConfig
from simgen.train.proposal import proposal_config


class GaussianProposal:
    """A proposal ``N(loc(x), scale^2 I)`` over z (the identity transform of a real prior),
    with :class:`simgen.models.proposal.Proposal`'s interface; ``loc(x)`` = ``shrink * x``."""

    def __init__(self, shrink: float, scale: float, shift: float = 0.0) -> None:
        self.shrink, self.scale, self.shift = shrink, scale, shift

    def _dist(self, u: torch.Tensor) -> torch.distributions.Distribution:
        normal = torch.distributions.Normal(self.shrink * u + self.shift, self.scale)
        return torch.distributions.Independent(normal, 1)

    def sample(self, u: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._dist(u).sample((n,))
        return z.transpose(0, 1), self._dist(u).log_prob(z).transpose(0, 1)

    def log_prob(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self._dist(u).log_prob(z)


class WithProposal(GaussianLinearExact):
    """gaussian_linear's exact likelihood with a proposal attached."""

    def __init__(self, sim, proposal):
        super().__init__(sim)
        self.proposal = proposal

    def standardized(self, x):
        return x.reshape(len(x), -1)


def test_weights_are_exact_when_the_proposal_is_the_posterior():
    # gaussian_linear, one observation: prior N(0, 0.1 I), likelihood N(theta, 0.1 I), so the
    # posterior is N(x / 2, 0.05 I) and the evidence N(x; 0, 0.2 I)
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    post = Posterior(WithProposal(sim, GaussianProposal(0.5, math.sqrt(0.05))))
    x = torch.tensor([0.3, -0.2])
    exact_post = torch.distributions.MultivariateNormal(x / 2, 0.05 * torch.eye(2))
    evidence = torch.distributions.MultivariateNormal(torch.zeros(2), 0.2 * torch.eye(2))
    result = post.sample(x, 4000, sampler="importance", progress=False)
    d = result.diagnostics
    assert d["sampler"] == "importance" and d["reason"] is None
    # the weights w = Z p(theta | x) / ((1 - a) p(theta | x) + a p(theta)), computed by hand
    mixture = DefensiveMixture(post.prior, post.transform, post.emulator.proposal, x[None])
    theta, log_g = mixture.sample(1000)
    torch.testing.assert_close(log_g, mixture.log_prob(theta))
    log_w = post.log_prob(theta[0], x) - mixture.log_prob(theta)[0]
    by_hand = evidence.log_prob(x) + exact_post.log_prob(theta[0])
    by_hand -= torch.logaddexp(
        math.log1p(-PRIOR_SHARE) + exact_post.log_prob(theta[0]),
        math.log(PRIOR_SHARE) + post.prior.log_prob(theta[0]),
    )
    torch.testing.assert_close(log_w, by_hand, atol=1e-4, rtol=0)
    # so the weights vary only through the prior's share, and the evidence is unbiased
    assert d["ess_fraction"] > 0.9 and d["khat"] < 0.5
    assert abs(d["log_evidence"] - evidence.log_prob(x).item()) < 4 * d["log_evidence_se"]
    # every draw's log density is the exact normalised one, up to the evidence's error
    error = result.log_prob - exact_post.log_prob(result.theta)
    assert error.std() < 1e-4 and error.abs().max() < 4 * d["log_evidence_se"] + 1e-4
    assert c2st(result.theta.numpy(), exact_post.sample((4000,)).numpy()) < 0.55


def test_normalised_density_integrates_to_one_on_two_moons():
    # two_moons' exact likelihood, the prior as proposal: the density returned with the draws
    # is log p(theta) + log p(x | theta) - log Z-hat; its integral over the prior's box, on a
    # grid of cells a fifth of the moon's radial spread (0.01), is Z / Z-hat
    sim = simgen.get_simulator("two_moons")
    post = Posterior(ExactEmulator(sim))
    x = torch.tensor([0.05, -0.1])
    result = post.sample(x, 5000, sampler="importance", progress=False)
    d = result.diagnostics
    axis = torch.linspace(-1, 1, 1001)[:-1] + 0.001
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = torch.exp(post.log_prob(grid, x).double() - d["log_evidence"])
    integral = density.sum().item() * 0.002**2
    # the draws' densities are that same function at the draws
    again = post.log_prob(result.theta, x) - d["log_evidence"]
    torch.testing.assert_close(result.log_prob, again, atol=1e-4, rtol=0)
    # log Z-hat errs by its standard error; the midpoint rule by well under 1%
    assert abs(math.log(integral)) < 4 * d["log_evidence_se"] + 0.01


def test_a_bad_proposal_hands_over_to_smc(monkeypatch):
    # a proposal far from the posterior (theta ~ N(3, 0.1^2) against a posterior at ~0 with a
    # spread of 0.06) leaves only the prior's tenth of the draws, in 4 dimensions and with 30
    # observations too few of them near the posterior. Adaptive importance sampling recovers
    # from that in a few batches; with one batch it cannot, and must hand over
    monkeypatch.setattr("simgen.inference.engine.MAX_ROUNDS", 1)
    sim = simgen.get_simulator("gaussian_linear", dim=4)
    post = Posterior(WithProposal(sim, GaussianProposal(0.0, 0.1, shift=3.0)))
    torch.manual_seed(0)
    x = sim.simulate(np.full((30, 4), 0.2), np.random.default_rng(0))
    result = post.sample(torch.as_tensor(x).float(), 2000, progress=False)
    d = result.diagnostics
    assert d["sampler"] == "smc" and d["reason"].startswith("importance sampling")
    assert d["proposals"] == 4000  # one batch
    k = len(x)
    exact = torch.distributions.MultivariateNormal(
        torch.as_tensor(k * x.mean(0) / (1 + k)).float(), 0.1 / (1 + k) * torch.eye(4)
    )
    assert c2st(result.theta.numpy(), exact.sample((2000,)).numpy()) < 0.55
    # normalised by SMC's evidence estimate: exact up to that one constant, whose error SMC's
    # single run does not estimate
    error = result.log_prob - exact.log_prob(result.theta)
    assert error.std() < 1e-3 and d["log_evidence_se"] is None
    monkeypatch.undo()  # with its batches, importance sampling answers alone
    again = post.sample(torch.as_tensor(x).float(), 2000, progress=False)
    assert again.diagnostics["sampler"] == "importance"
    assert c2st(again.theta.numpy(), exact.sample((2000,)).numpy()) < 0.55


def test_fit_trains_a_proposal_and_the_cli_needs_one(tmp_path, cli):
    sim = simgen.get_simulator("gaussian_linear", dim=2)
    data = tmp_path / "d.h5"
    simgen.simulate(sim, 2000, data, workers=1, progress=False)
    small = {"transforms": 1, "hidden": [16, 16]}
    bare = simgen.fit(data, "flow", tmp_path / "m.pt", train={"epochs": 2}, config=small,
                      progress=False, proposal=False)  # fmt: skip
    assert bare.proposal is None and "proposal" not in bare.info
    obs = tmp_path / "obs.npy"
    np.save(obs, np.array([0.2, -0.1], np.float32))
    out = tmp_path / "post.h5"
    done = cli("sample", str(tmp_path / "m.pt"), "--observed", str(obs), "-o", str(out))
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip().count("\n") == 0 and "no proposal" in done.stderr
    # fit again: the emulator is kept as it was, a proposal added to it
    with pytest.warns(UserWarning, match="already holds this fit"):
        simgen.fit(data, "flow", tmp_path / "m.pt", train={"epochs": 2}, config=small,
                   progress=False)  # fmt: skip
    model = simgen.load(tmp_path / "m.pt")
    assert model.proposal is not None and model.info["proposal"]["epochs_run"] == 2
    for key, value in bare.model.state_dict().items():
        torch.testing.assert_close(model.model.state_dict()[key], value, rtol=0, atol=0)
    done = cli("sample", str(tmp_path / "m.pt"), "--observed", str(obs), "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sampler"] in ("importance", "smc") and summary["ess"] > 0
    np.save(obs, np.array([0.2, math.nan], np.float32))
    done = cli("sample", str(tmp_path / "m.pt"), "--observed", str(obs), "-o", str(out))
    assert done.returncode == 2 and "NaN" in done.stderr


def test_new_proposals_couple_and_their_draws_keep_their_densities():
    """A new proposal has coupling transforms (two passes to draw, not one per parameter),
    unless asked otherwise; the log densities its draws come with, with either, are those
    ``log_prob`` gives them."""
    assert proposal_config({}, TrainConfig()).passes == NEW_PASSES == 2
    assert proposal_config({"passes": None}, TrainConfig()).passes is None
    torch.manual_seed(0)
    for passes in (None, 2):
        proposal = Proposal(4, 8, ProposalConfig(transforms=2, hidden=(16, 16), passes=passes))
        u = torch.randn(3, 4)
        with torch.no_grad():
            z, log_q = proposal.sample(u, 50)  # (3, 50, 8), (3, 50)
            again = proposal.log_prob(z, u[:, None])
        torch.testing.assert_close(again, log_q, atol=1e-4, rtol=1e-4)


class SignSymmetric(WithProposal):
    """x ~ N((theta_1^2, theta_2, theta_3), 0.003^2 I) under gaussian_linear's prior N(0, 0.1 I)
    over 3 parameters: two equal, narrow modes, theta_1 = +-sqrt(x_1)."""

    def log_prob(self, x, theta):
        mean = torch.cat([theta[..., :1] ** 2, theta[..., 1:]], -1)
        return torch.distributions.Normal(mean, 0.003).log_prob(x).sum(-1)


def test_adaptation_keeps_every_mode_of_a_narrow_posterior():
    # a broad symmetric proposal N(0, 0.3^2 I) puts ~1 effective draw of its first batch into
    # the modes (each 0.005 x 0.003 x 0.003 wide), all in one of them or the other: a mixture
    # fitted to those alone sends every later batch to that mode, and the weights, with no
    # draw in the other, cannot tell. Tempered to FIT_ESS effective draws, the fit covers both
    sim = simgen.get_simulator("gaussian_linear", dim=3)
    post = Posterior(SignSymmetric(sim, GaussianProposal(0.0, 0.3)))
    x = torch.tensor([0.09, 0.1, -0.1])
    for seed in range(3):
        result = post.sample(x, 2000, seed=seed, progress=False)
        d = result.diagnostics
        assert d["sampler"] == "importance" and d["ess"] >= 2000
        # the mode weights are 1/2 each; with ESS >= 2,000 their estimate errs by ~0.011
        share = (result.theta[:, 0] < 0).float().mean().item()
        assert abs(share - 0.5) < 0.05, (seed, share)


def test_mixture_components_sum_to_torchs_mixture_density():
    """The components' log densities from :func:`quadratic_features` and
    :func:`gaussian_coefficients`, summed over the components, are ``MixtureSameFamily``'s log
    density (up to float64 rounding), for several mixtures at once, and for a component as
    narrow and as far from 0 as a posterior at the edge of slcp's prior (sd 0.008 at z = 5.64,
    where the expanded quadratic form cancels terms of 1e5)."""
    from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

    from simgen.inference.adaptive import gaussian_coefficients, quadratic_features

    gen = torch.Generator().manual_seed(0)
    m, k, d = 3, 4, 5
    a = torch.randn(m, k, d, d, generator=gen, dtype=torch.float64)
    scale_tril = torch.linalg.cholesky(a @ a.transpose(-1, -2) + 0.1 * torch.eye(d))
    loc = torch.randn(m, k, d, generator=gen, dtype=torch.float64)
    loc[0, 0], scale_tril[0, 0] = 5.64, 0.008 * torch.eye(d)
    logits = torch.randn(m, k, generator=gen, dtype=torch.float64)
    z = 3 * torch.randn(m, 50, d, generator=gen, dtype=torch.float64)
    z[0, :25] = 5.64 + 0.016 * torch.randn(25, d, generator=gen, dtype=torch.float64)
    mixture = MixtureSameFamily(
        Categorical(logits=logits), MultivariateNormal(loc, scale_tril=scale_tril)
    )
    expected = mixture.log_prob(z.transpose(0, 1)).transpose(0, 1)
    components = quadratic_features(z) @ gaussian_coefficients(logits, loc, scale_tril)
    got = torch.logsumexp(components, -1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_fits_are_evaluated_together_as_each_alone():
    """`log_densities` of several fits in one matrix product gives each fit's density as a
    density of theta: ``MixtureSameFamily`` over z plus the mixture space's log-Jacobian."""
    from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal, biject_to

    from simgen.inference.adaptive import AdaptedMixture, coordinates, log_densities
    from simgen.inference.importance import DefensiveMixture, log_abs_det
    from simgen.inference.probit import mixture_space

    gen = torch.Generator().manual_seed(1)
    prior = torch.distributions.Independent(
        torch.distributions.Uniform(-3 * torch.ones(2), 3 * torch.ones(2)), 1
    )
    transform = biject_to(prior.support)
    base = DefensiveMixture(prior, transform, None, torch.zeros(2, 1))
    fits = []
    for _ in range(3):
        a = torch.randn(2, 4, 2, 2, generator=gen)
        scale_tril = torch.linalg.cholesky(a @ a.transpose(-1, -2) + 0.1 * torch.eye(2))
        fitted = MixtureSameFamily(
            Categorical(logits=torch.randn(2, 4, generator=gen)),
            MultivariateNormal(torch.randn(2, 4, 2, generator=gen), scale_tril=scale_tril),
        )
        fits.append(AdaptedMixture(base, fitted))
    theta = prior.sample((2, 100))
    space = mixture_space(prior)
    z = space.inv(theta)
    for f, got in zip(fits, log_densities(fits, *coordinates(space, theta)), strict=True):
        expected = f.fitted.log_prob(z.transpose(0, 1)).transpose(0, 1)
        expected = expected - log_abs_det(space, z, theta)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_proposal_steps_take_the_emulators_batches_together():
    """The proposal trains on consecutive batches concatenated, the last step on what is left."""
    from simgen.train.proposal import _grouped

    batches = [(torch.full((2, 1), float(i)), torch.full((2, 3), float(i))) for i in range(5)]
    steps = list(_grouped(iter(batches), 2))
    assert [len(v) for v, _ in steps] == [4, 4, 2]
    assert steps[1][0].flatten().tolist() == [2.0, 2.0, 3.0, 3.0]
    assert steps[2][1].shape == (2, 3)
