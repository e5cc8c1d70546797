"""The held standardisation fitted by maximum likelihood (``simgen.models.standardize``)."""

from __future__ import annotations

import math

import torch

from simgen.models import standardize
from simgen.models.flow import ConditionalAffine
from simgen.models.standardize import fit_standardization, standardization_nll


def nonlinear_gaussian(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x given theta Gaussian with a mean and scales nonlinear in theta: ``(theta (n, 1),
    x (n, 2), exact log p(x | theta) (n,))``."""
    generator = torch.Generator().manual_seed(seed)
    theta = 4 * torch.rand(n, 1, generator=generator) - 2
    mean = torch.cat([torch.sin(2 * theta), theta.square()], dim=-1)
    scale = torch.cat([0.1 + 0.5 * theta.square(), 0.3 * torch.exp(0.5 * theta)], dim=-1)
    eps = torch.randn(n, 2, generator=generator)
    exact = -(scale.log() + 0.5 * eps.square() + 0.5 * math.log(2 * math.pi)).sum(-1)
    return theta, mean + scale * eps, exact


def standardizer(hidden: tuple[int, ...]) -> ConditionalAffine:
    return ConditionalAffine(2, 1, hidden, correlated=True, bound="tanh", separate=False)


def test_maximum_likelihood_finds_a_gaussian_nonlinear_in_theta():
    """x given theta is Gaussian, so the best Gaussian is exact: after the fit the learned
    log-density is off by under a tenth of the least-squares linear Gaussian's error on fresh
    pairs (that one misses the mean's and scales' curvature by more than a nat)."""
    torch.manual_seed(0)
    theta, x, _ = nonlinear_gaussian(8000, seed=0)
    test_theta, test_x, exact = nonlinear_gaussian(2000, seed=1)
    affine = standardizer((64, 64))
    affine.fit_linear(theta, x)
    with torch.no_grad():
        linear = (standardization_nll(affine, test_theta, test_x) + exact).abs().mean()
    fit_standardization(affine, theta, x, steps=1500)
    with torch.no_grad():
        learned = (standardization_nll(affine, test_theta, test_x) + exact).abs().mean()
    assert linear > 1
    assert learned < 0.1 * linear


def test_the_fit_is_seeded_held_and_never_worse_than_its_start():
    """The same rows give the same weights; the returned held-out loss is at most the linear
    start's (0 steps: the start is one of the candidates), and the MLP is left without
    gradients."""
    theta, x, _ = nonlinear_gaussian(300, seed=2)
    fits = []
    for steps in (0, 200, 200):
        torch.manual_seed(0)
        affine = standardizer((32,))
        affine.fit_linear(theta, x)
        fits.append((affine, fit_standardization(affine, theta, x, steps, batch=64, lr=1e-2)))
    (_, start), (first, loss), (second, _) = fits
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loss <= start
    assert not any(p.requires_grad for p in first.hyper.parameters())


def test_the_fit_stops_when_the_held_out_loss_stops_falling(monkeypatch):
    """300 rows overfit long before 6,000 steps: the fit stops after ``PATIENCE`` checks
    without a lower held-out loss, so it evaluates the loss on far fewer batches than the
    budget (a check every 20 epochs of 5 steps), and what it keeps is still no worse than its
    start."""
    theta, x, _ = nonlinear_gaussian(300, seed=3)
    calls = []

    def counted(*args):
        calls.append(1)
        return standardization_nll(*args)

    monkeypatch.setattr(standardize, "standardization_nll", counted)
    torch.manual_seed(0)
    affine = standardizer((32,))
    affine.fit_linear(theta, x)
    with torch.no_grad():
        start = standardization_nll(affine, theta, x).mean()
    fit_standardization(affine, theta, x, steps=6_000, batch=64, lr=1e-2)
    assert len(calls) < 6_000 * (1 - 1 / standardize.CHECKS)
    with torch.no_grad():
        assert standardization_nll(affine, theta, x).mean() <= start
