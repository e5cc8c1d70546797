r"""Diffusion on the variance-exploding path with EDM's preconditioning (Karras et al. 2022,
arXiv:2206.00364), solved on a fixed noise grid for samples and exact log densities.

The data :math:`z` (unit scale: the diffusion family first standardises x given theta) are
noised as :math:`z_\sigma = z + \sigma \epsilon`. The denoiser

.. math::
    D(z_\sigma; \sigma) = c_{skip} z_\sigma + c_{out} F\big(c_{in} z_\sigma, \sigma\big), \quad
    c_{skip} = \frac{1}{1 + \sigma^2}, \;
    c_{out} = \frac{\sigma}{\sqrt{1 + \sigma^2}}, \;
    c_{in} = \frac{1}{\sqrt{1 + \sigma^2}}

is exact for :math:`z \sim N(0, I)` when the network :math:`F` outputs 0 (where it starts), and
is trained with :math:`\mathbb{E}\,\lambda(\sigma) \|D - z\|^2`,
:math:`\lambda = 1 / c_{out}^2`, i.e. a unit-variance target for :math:`F`, at
:math:`\ln \sigma \sim N(P_{mean}, P_{std}^2)`. Its three views: the denoised
:math:`\hat z = D`, the noise :math:`\hat\epsilon = (z_\sigma - D) / \sigma` and the score
:math:`\nabla \log p_\sigma = (D - z_\sigma) / \sigma^2`.

The probability-flow ODE :math:`\mathrm{d}z_\sigma / \mathrm{d}\sigma = (z_\sigma - D) / \sigma`
has a Gaussian part that is solved exactly: with :math:`\tau = \arctan \sigma` and
:math:`y = c_{in} z_\sigma = \cos\tau\, z + \sin\tau\, \epsilon` (the network's own input),

.. math::
    \frac{\mathrm{d}y}{\mathrm{d}\tau} = -F(y, \tan\tau), \qquad
    \log p_{\sigma_{min}}(z) = \log N(y_{\tau_{max}}; 0, I)
        - \int_{\tau_{min}}^{\tau_{max}} \nabla_y \cdot F \,\mathrm{d}\tau
        - \tfrac{d}{2} \log(1 + \sigma_{min}^2)

(TrigFlow's view, Lu & Song 2024, arXiv:2410.11081; the training target of :math:`F` is
:math:`\sin\tau\, z - \cos\tau\, \epsilon = -\mathrm{d}y/\mathrm{d}\tau`). A network that learned
nothing beyond the Gaussian leaves nothing to integrate, so the solver's error is that of the
departures from it alone. Both directions use Heun's method on the grid
:math:`\tau_i = \arctan \sigma_i`, :math:`\sigma_i = (\sigma_{max}^{1/\rho} + \tfrac{i}{N}
(\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho}))^\rho` (dense at small noise): sampling from
:math:`y \sim N(0, I)` down to :math:`\sigma_{min}`, the density up from :math:`\sigma_{min}`
with the divergence alongside, exact (one forward-mode derivative per dimension, batched by
``torch.func``) or Hutchinson's :math:`e^\top J e` with one Rademacher probe per row.

Both describe the distribution of :math:`z + \sigma_{min} \epsilon`: a density that integrates
to 1, a hair wider than the data's (:math:`\sigma_{min} = 10^{-3}` of the standardised
scale). The base :math:`N(0, I)` of :math:`y` at :math:`\sigma_{max}` stands in for
:math:`N(m / \sqrt{1 + \sigma_{max}^2}, (v + \sigma_{max}^2) / (1 + \sigma_{max}^2))` of data
with mean :math:`m` and variance :math:`v`: about :math:`|m| |y| / \sigma_{max}` nats, small for
the standardised z (:math:`m \approx 0`, :math:`v \approx 1`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.func import jvp, vmap
from zuko.transforms import FreeFormJacobianTransform

__all__ = [
    "EDMDistribution",
    "NoiseSchedule",
    "adaptive_log_prob",
    "divergence",
    "edm_loss",
    "heun_log_prob",
    "heun_sample",
    "preconditioning",
    "sde_sample",
]

Network = Callable[[Tensor, Tensor], Tensor]  # F: (y (n, d), sigma (n,)) -> (n, d)
# (y, sigma) -> (F, its exact divergence in y (n,)), where the network computes both at once
Traced = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class NoiseSchedule:
    """The noise levels of training and of the solvers.

    Attributes:
        sigma_min: Lowest noise, where samples end and densities start.
        sigma_max: Highest noise, where the base Gaussian stands in for :math:`p_\\sigma`.
        rho: Grid curvature (7: EDM's; larger puts more steps at small noise).
        p_mean: Mean of :math:`\\ln \\sigma` in training.
        p_std: Standard deviation of :math:`\\ln \\sigma` in training.
    """

    sigma_min: float = 1e-3
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def grid(self, steps: int, device: torch.device | str = "cpu") -> Tensor:
        """``steps + 1`` noise levels from ``sigma_max`` down to ``sigma_min``."""
        i = torch.linspace(0, 1, steps + 1, device=device, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return ((hi + i * (lo - hi)) ** self.rho).float()

    def time(self, sigma: Tensor) -> Tensor:
        """:math:`\\ln \\sigma` mapped onto [0, 1] over [sigma_min, sigma_max]: the network's
        time input."""
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (sigma.log() - lo) / (hi - lo)


def preconditioning(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:math:`(c_{skip}, c_{out}, c_{in})` at noise ``sigma`` (unit-scale data)."""
    var = 1 + sigma.square()
    return 1 / var, sigma / var.sqrt(), 1 / var.sqrt()


def edm_loss(network: Network, z: Tensor, schedule: NoiseSchedule) -> Tensor:
    """:math:`\\lambda(\\sigma) \\|D(z + \\sigma\\epsilon; \\sigma) - z\\|^2` per row, mean over
    features, at one :math:`\\ln\\sigma \\sim N(P_{mean}, P_{std}^2)` per row: ``z (b, d)`` ->
    ``(b,)``. ``network(c_in z_sigma, sigma)`` is :math:`F`."""
    log_sigma = schedule.p_mean + schedule.p_std * torch.randn(z.shape[:-1], device=z.device)
    sigma = log_sigma.exp()
    c_skip, c_out, c_in = (c[..., None] for c in preconditioning(sigma))
    noisy = z + sigma[..., None] * torch.randn_like(z)
    target = (z - c_skip * noisy) / c_out
    return (network(c_in * noisy, sigma) - target).square().mean(-1)


def divergence(
    f: Callable[[Tensor], Tensor], z: Tensor, probe: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(f(z), div f(z))`` for a row-wise map ``f``, ``z (n, d)``: the exact trace of each
    row's Jacobian (``probe`` None: one forward-mode derivative per dimension, vectorised), or
    Hutchinson's unbiased :math:`e^\\top J e` with the Rademacher ``probe (n, d)``."""
    if probe is not None:
        out, tangent = jvp(f, (z,), (probe,))
        return out, (probe * tangent).sum(-1)
    basis = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)[:, None].expand(-1, *z.shape)
    out, tangents = vmap(lambda e: jvp(f, (z,), (e,)))(basis)  # (d, n, d) each
    return out[0], torch.einsum("ini->n", tangents)


def _tau_grid(schedule: NoiseSchedule, steps: int, device: torch.device) -> Tensor:
    """:math:`\\tau_i = \\arctan \\sigma_i` of the grid, ``steps + 1``, descending."""
    return schedule.grid(steps, device).double().arctan().float()


def heun_log_prob(
    network: Network,
    z: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    exact: bool,
    traced: Traced | None = None,
) -> Tensor:
    """:math:`\\log p_{\\sigma_{min}}(z)`, ``z (n, d)`` -> ``(n,)``: Heun's method on
    :math:`\\mathrm{d}y/\\mathrm{d}\\tau = -F` from ``sigma_min`` up to ``sigma_max``, and the
    trapezoid rule for the divergence's integral on the path's nodes (exact, or Hutchinson's
    with one probe per row held over the path): per step one network call with the divergence
    and one without (Heun's Euler stage), both second order. ``traced``: the network with its
    exact divergence in one call (:meth:`simgen.models.nn.MLP.forward_and_trace`), used
    instead of ``torch.func`` where the divergence is exact."""
    taus = _tau_grid(schedule, steps, z.device).flip(0)
    probe = None if exact else torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1

    def velocity(tau: Tensor) -> Callable[[Tensor], Tensor]:
        sigma = tau.tan().expand(z.shape[:-1])
        return lambda y: network(y, sigma)

    def with_divergence(tau: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if exact and traced is not None:
            return traced(y, tau.tan().expand(z.shape[:-1]))
        return divergence(velocity(tau), y, probe)

    y = z / math.sqrt(1 + schedule.sigma_min**2)
    integral = z.new_zeros(z.shape[:-1])  # of div F over tau: the trapezoid rule on the nodes
    f, div = with_divergence(taus[0], y)
    for lo, hi in itertools.pairwise(taus):
        h = hi - lo
        f_euler = velocity(hi)(y - h * f)
        y = y - 0.5 * h * (f + f_euler)
        f_next, div_next = with_divergence(hi, y)
        integral = integral + 0.5 * h * (div + div_next)
        f, div = f_next, div_next
    d = z.shape[-1]
    base = -0.5 * (y.square().sum(-1) + d * math.log(2 * math.pi))
    return base - integral - 0.5 * d * math.log1p(schedule.sigma_min**2)


def adaptive_log_prob(
    network: Network, z: Tensor, schedule: NoiseSchedule, exact: bool, tol: float = 1e-5
) -> Tensor:
    """:func:`heun_log_prob` by zuko's adaptive solver (``FreeFormJacobianTransform``, absolute
    and relative tolerance ``tol``): the reference that the fixed grid is checked against."""
    d, tau = z.shape[-1], torch.tensor([schedule.sigma_min, schedule.sigma_max]).arctan()
    ode = FreeFormJacobianTransform(
        lambda t, y: -network(y, t.tan().expand(y.shape[:-1])),
        t0=float(tau[0]), t1=float(tau[1]), atol=tol, rtol=tol, exact=exact,
    )  # fmt: skip
    y, integral = ode.call_and_ladj(z / math.sqrt(1 + schedule.sigma_min**2))
    base = -0.5 * (y.square().sum(-1) + d * math.log(2 * math.pi))
    return base + integral - 0.5 * d * math.log1p(schedule.sigma_min**2)


@torch.no_grad()
def heun_sample(network: Network, noise: Tensor, schedule: NoiseSchedule, steps: int) -> Tensor:
    """Draws of :math:`p_{\\sigma_{min}}` from standard normal ``noise (n, d)`` (:math:`y` at
    ``sigma_max``): Heun's method on :math:`\\mathrm{d}y/\\mathrm{d}\\tau = -F` down to
    ``sigma_min`` (two network calls per step)."""
    taus = _tau_grid(schedule, steps, noise.device)
    y = noise
    for hi, lo in itertools.pairwise(taus):
        h = hi - lo
        f1 = network(y, hi.tan().expand(y.shape[:-1]))
        y_euler = y + h * f1
        f2 = network(y_euler, lo.tan().expand(y.shape[:-1]))
        y = y + 0.5 * h * (f1 + f2)
    return y * math.sqrt(1 + schedule.sigma_min**2)


@torch.no_grad()
def sde_sample(network: Network, noise: Tensor, schedule: NoiseSchedule, steps: int) -> Tensor:
    """Draws of :math:`p_{\\sigma_{min}}` by the reverse SDE, ancestrally (Song et al. 2021,
    the variance-exploding predictor): from :math:`z \\sim N(0, (1 + \\sigma_{max}^2) I)`,
    each step from :math:`\\sigma_a` to :math:`\\sigma_b` adds
    :math:`(\\sigma_a^2 - \\sigma_b^2) \\nabla \\log p_{\\sigma_a}` and fresh noise of variance
    :math:`\\sigma_a^2 - \\sigma_b^2`, the score :math:`(D - z) / \\sigma^2` from ``network``
    (one call per step; ``noise (n, d)`` starts the path)."""
    sigmas = schedule.grid(steps, noise.device)
    z = noise * math.sqrt(1 + schedule.sigma_max**2)
    for hi, lo in itertools.pairwise(sigmas):
        c_skip, c_out, c_in = preconditioning(hi)
        denoised = c_skip * z + c_out * network(c_in * z, hi.expand(z.shape[:-1]))
        var = hi.square() - lo.square()
        z = z + var * (denoised - z) / hi.square() + var.sqrt() * torch.randn_like(z)
    return z


class EDMDistribution(Distribution):
    """:math:`p_{\\sigma_{min}}(z \\mid \\theta)` of a trained network F, batch shape
    ``batch_shape``, event shape ``(d,)``: ``log_prob`` by :func:`heun_log_prob` (or
    :func:`adaptive_log_prob`), ``sample`` by :func:`heun_sample` (or :func:`sde_sample`).

    Args:
        network: ``(y (n, d), sigma (n,), rows (n,))`` -> :math:`F`; ``rows`` index the batch
            rows (flattened) whose theta each y belongs to.
        traced: The same, returning :math:`F` and its exact divergence (or None).
        d: Event size.
        batch_shape: Shape of the batch of conditions.
        schedule: The noise levels.
        steps: Heun steps of the density.
        sample_steps: Steps of the sampler.
        exact: Exact divergence (else Hutchinson's estimate).
        device: Where samples are drawn.
        adaptive: The density by :func:`adaptive_log_prob` (a reference) instead.
        sampler: ``"ode"`` (:func:`heun_sample`) or ``"sde"`` (:func:`sde_sample`).
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        network: Callable[[Tensor, Tensor, Tensor], Tensor],
        traced: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]] | None,
        d: int,
        batch_shape: torch.Size,
        schedule: NoiseSchedule,
        steps: int,
        sample_steps: int,
        exact: bool,
        device: torch.device,
        adaptive: bool = False,
        sampler: str = "ode",
    ) -> None:
        self.network, self.traced, self.d, self.schedule = network, traced, d, schedule
        self.steps, self.sample_steps, self.exact, self.device = steps, sample_steps, exact, device
        self.adaptive, self.sampler = adaptive, sampler
        super().__init__(torch.Size(batch_shape), torch.Size([d]), validate_args=False)

    def log_prob(self, z: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(z.shape[:-1], self.batch_shape)
        rows = torch.arange(self.batch_shape.numel(), device=z.device).reshape(self.batch_shape)
        rows = rows.expand(shape).reshape(-1)
        flat = z.expand(*shape, self.d).reshape(-1, self.d)
        network = lambda y, s: self.network(y, s, rows)
        if self.adaptive:
            lp = adaptive_log_prob(network, flat, self.schedule, self.exact)
        else:
            traced = None
            if self.traced is not None:
                traced = lambda y, s: self.traced(y, s, rows)
            lp = heun_log_prob(network, flat, self.schedule, self.steps, self.exact, traced)
        return lp.reshape(shape)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        rows = torch.arange(self.batch_shape.numel(), device=self.device).reshape(self.batch_shape)
        rows = rows.expand(shape).reshape(-1)
        noise = torch.randn(len(rows), self.d, device=self.device)
        solve = heun_sample if self.sampler == "ode" else sde_sample
        z = solve(lambda y, s: self.network(y, s, rows), noise, self.schedule, self.sample_steps)
        return z.reshape(*shape, self.d)
