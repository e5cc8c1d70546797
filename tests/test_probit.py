"""The probit space of the adaptive proposal's mixtures (simgen.inference.probit)."""

import math

import torch
from torch.distributions import (
    Categorical,
    HalfNormal,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    Uniform,
    biject_to,
)
from torch.distributions.transforms import IndependentTransform

from simgen.inference.adaptive import AdaptedMixture
from simgen.inference.importance import DefensiveMixture
from simgen.inference.probit import Probit, mixture_space


def box(low: float, high: float, d: int) -> Independent:
    return Independent(Uniform(low * torch.ones(d), high * torch.ones(d)), 1)


def test_probit_inverts_itself_to_the_last_float_step_at_both_edges():
    # theta two float32 steps inside either bound, and points across the interval: z and back
    # land on the same theta to float32's spacing there (2.4e-7 at |theta| = 3)
    t = Probit(torch.tensor(-3.0), torch.tensor(3.0))
    step = torch.finfo(torch.float32).eps * 2
    theta = torch.cat(
        [torch.tensor([-3 + 2 * step, 3 - 2 * step]), torch.linspace(-2.99, 2.99, 101)]
    )
    z = t.inv(theta)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(t(z), theta, rtol=0, atol=2.4e-7)
    # z against the quantile in float64: the upper edge as precise as the lower one
    u = (theta.double() + 3) / 6
    exact = torch.special.ndtri(u)
    # float32's rounding of |z| ~ 5.2 is ~3e-7 (torch's logit, 1 - u rounded, errs by 0.4 at the
    # upper edge and 0 at the lower one)
    assert (z.double() - exact).abs()[:2].max() < 1e-5


def test_probit_log_jacobian_is_the_derivative():
    t = Probit(torch.tensor(-1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
    z = torch.linspace(-6, 6, 49, dtype=torch.float64, requires_grad=True)
    theta = t(z)
    (grad,) = torch.autograd.grad(theta.sum(), z)
    torch.testing.assert_close(t.log_abs_det_jacobian(z, theta), grad.log())


def test_mixture_space_is_the_probit_of_a_box_and_torchs_map_elsewhere():
    space = mixture_space(box(-3.0, 3.0, 5))
    assert isinstance(space, IndependentTransform) and isinstance(space.base_transform, Probit)
    assert isinstance(mixture_space(Uniform(0.0, 1.0)), Probit)
    z = torch.linspace(-4, 4, 12).view(-1, 1)
    for prior in (Independent(Normal(torch.zeros(3), torch.ones(3)), 1), HalfNormal(1.0)):
        assert torch.equal(mixture_space(prior)(z), biject_to(prior.support)(z))


def _fitted(loc: list[list[float]], sd: float) -> MixtureSameFamily:
    loc_t = torch.tensor([loc])  # (m = 1, K, d)
    k, d = loc_t.shape[1:]
    return MixtureSameFamily(
        Categorical(logits=torch.zeros(1, k)),
        MultivariateNormal(loc_t, scale_tril=sd * torch.eye(d).expand(1, k, d, d)),
    )


def test_a_mixture_over_the_probit_space_is_a_density_on_the_box():
    # a component against the upper bound of theta_1 and one inside: the density of theta,
    # f(S^-1(theta)) |det dS^-1/dtheta|, integrates to 1 over the box; the midpoint rule on
    # a 1,000^2 grid errs by ~h^2/24 |f''| ~ 1e-6 here (smooth in theta, bounded at the edge)
    prior = box(-3.0, 3.0, 2)
    base = DefensiveMixture(prior, biject_to(prior.support), None, torch.zeros(1, 1))
    mixture = AdaptedMixture(base, _fitted([[1.5, -0.5], [-0.5, 0.3]], 0.6))
    h = 6 / 1000
    grid = torch.arange(-3 + h / 2, 3, h, dtype=torch.float64)
    theta = torch.cartesian_prod(grid, grid).float()[None]
    total = mixture.log_fitted(theta).double().exp().sum() * h * h
    assert abs(total.item() - 1) < 1e-3


def test_fitted_draws_rounded_onto_the_bound_weigh_nothing():
    # a component at z = 6 (Phi(-6) = 1e-9): most of its draws round to theta = 3 in float32,
    # where the mixture's mass is an atom, not a density: their proposal density is inf
    prior = box(-3.0, 3.0, 2)
    base = DefensiveMixture(prior, biject_to(prior.support), None, torch.zeros(1, 1))
    mixture = AdaptedMixture(base, _fitted([[6.0, 0.0], [0.0, 0.0]], 0.3))
    torch.manual_seed(0)
    theta, log_base = mixture.sample_base(4000)
    on_edge = (theta == 3.0).any(-1)
    # the first component's draws beyond z ~ 5.5 (95% of them): ~1,500 of the fitted 3,200
    assert 500 < on_edge.sum() < 2000
    assert torch.isinf(log_base[on_edge]).all() and (log_base[on_edge] > 0).all()
    assert torch.isfinite(log_base[~on_edge]).all()
    assert math.isfinite(mixture.log_prob(theta[~on_edge][None]).sum().item())
