r"""A flow for stationary fields on a periodic square grid: the flow family's ``"spectral"``
network.

A statistically homogeneous field on a periodic grid has a circulant covariance, which the
Fourier basis diagonalises; a log-normal or other point-wise transformed Gaussian field becomes
one after a monotone map of each pixel. The flow writes exactly that (data to base):

1. :class:`PixelTransform`: the same monotone map of every pixel,
   :math:`y = s_\theta(e^{d} \operatorname{asinh}(e^{b} (u - a)) + c)`, a rational-quadratic
   spline :math:`s_\theta` after a shifted asinh, all parameters computed from :math:`\theta`
   by an MLP: the asinh is linear for small :math:`e^b`, and
   :math:`\approx b + \log 2 (u - a)` for large :math:`e^b`, the log that Gaussianises a
   log-normal field (whose pixels are bounded below by :math:`a`), and it brings long tails
   into the spline's range;
2. :class:`Hartley`: the orthonormal 2-D discrete Hartley transform
   :math:`H_{km} = \operatorname{cas}(2\pi k \cdot m / N) / N`, real, symmetric, its own
   inverse, :math:`|\det H| = 1`; it diagonalises every circulant covariance whose spectrum is
   even, :math:`P(k) = P(-k)` (all real fields);
3. :class:`ModeScale`: a shift and scale per mode, :math:`z_k = (y_k - \mu_k(\theta)) /
   \sigma_k(\theta)`, from a rank-``RANK`` product of an MLP of :math:`\theta` and an MLP of the
   mode's wave vector (:math:`\log |k|`, the zero mode, the direction :math:`2\phi`), so the
   spectrum is a smooth function of :math:`k` and :math:`\theta`;
4. optionally ``transforms`` coupling spline transforms over the whitened modes, for what the
   three steps above do not capture, then a standard normal base.

A Gaussian field (any spectrum) or a point-wise transformed one lies in the model class with no
coupling transform: steps 1-3 alone fit it exactly, in one pass of cost
:math:`O(N^2 \log N)` per map, for sampling and density alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import Transform, constraints
from zuko.distributions import DiagNormal
from zuko.flows import LazyTransform, UnconditionalDistribution
from zuko.transforms import ComposedTransform, DependentTransform

from simgen.models.nn import MLP
from simgen.models.spline import NSF, Spline
from simgen.models.transforms import Affine

__all__ = [
    "RANK",
    "Hartley",
    "ModeScale",
    "PixelTransform",
    "ShiftedAsinh",
    "initialize",
    "spectral_flow",
]

RANK = 16  # rank of the theta x wave-vector product that sets the mode shifts and scales
SLOPE = 1e-3  # zuko's default minimum slope of its monotone transforms
TIE = 1e-3  # nats per pixel: a shape must beat the earlier ones by this much to be chosen
FIT_STEPS = 1000  # Adam steps of :meth:`ModeScale.fit` (22 s on 16,384 32x32 maps, 2 cores)
GAPS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # asinh anchors beyond the data, in units of e^-b


class Hartley(Transform):
    r"""The orthonormal 2-D discrete Hartley transform of flattened ``side x side`` maps,
    ``(*, side * side) -> (*, side * side)``: :math:`H = \mathrm{Re}\,F - \mathrm{Im}\,F` with
    :math:`F` the unitary DFT. Its own inverse; log-determinant 0."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hartley) and other.side == self.side

    def _call(self, x: Tensor) -> Tensor:
        f = torch.fft.fft2(x.float().unflatten(-1, (self.side, self.side)), norm="ortho")
        return (f.real - f.imag).flatten(-2)

    def _inverse(self, y: Tensor) -> Tensor:
        return self._call(y)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return x.new_zeros(x.shape[:-1])


class ShiftedAsinh(Transform):
    r""":math:`y = e^{d} \operatorname{asinh}(e^{b} (x - a)) + c`, elementwise, parameters
    broadcast against x; :math:`\log |dy/dx| = d + b - \frac12 \log(1 + e^{2b} (x - a)^2)`."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __init__(self, a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = a, b, c, d

    def _call(self, x: Tensor) -> Tensor:
        return self.d.exp() * torch.asinh(self.b.exp() * (x - self.a)) + self.c

    def _inverse(self, y: Tensor) -> Tensor:
        return torch.sinh((y - self.c) * (-self.d).exp()) * (-self.b).exp() + self.a

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        inner = self.b.exp() * (x - self.a)
        return self.d + self.b - 0.5 * torch.log1p(inner.square())


class PixelTransform(LazyTransform):
    """The same conditional monotone map of each of ``features`` pixels (step 1 above).

    Args:
        features: Pixels per map.
        d_theta: Size of theta.
        bins: Spline bins.
        hidden: Hidden sizes of the MLP that computes the spline's knots from theta.
    """

    def __init__(self, features: int, d_theta: int, bins: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.features, self.bins = features, bins
        self.hyper = MLP(d_theta, 4 + 3 * bins - 1, hidden, zero_last=True)
        self.offset = nn.Parameter(torch.zeros(4 + 3 * bins - 1))  # set by :meth:`initialize`

    def forward(self, c: Tensor) -> Transform:
        phi = (self.hyper(c) + self.offset).unsqueeze(-2)  # one map per theta, for all pixels
        a, b, c_, d, widths, heights, derivatives = phi.split(
            (1, 1, 1, 1, self.bins, self.bins, self.bins - 1), -1
        )
        asinh = ShiftedAsinh(a.squeeze(-1), b.squeeze(-1), c_.squeeze(-1), d.squeeze(-1))
        spline = Spline(widths, heights, derivatives)
        return DependentTransform(ComposedTransform(asinh, spline), 1)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        r"""Data-dependent start from the pixels of a batch ``x`` ``(b, d)``, pooled: the shift
        :math:`a` and log-rate :math:`b` of the asinh that make them most Gaussian, by the
        profile likelihood of a normal fit with the Jacobian (how Box & Cox 1964 choose their
        power), :math:`\ell(a, b) = -\frac12 \log \operatorname{Var}[y] +
        \operatorname{E}[\log |dy/du|]`, over a grid: :math:`b \in [-4, 6]`, :math:`a` below
        the smallest pixel (log-like for right-skewed pixels), above the largest (left-skewed)
        or at the median (heavy tails on both sides); then :math:`c, d` that standardise
        :math:`y`, and the spline at the identity (the MLP's last layer starts at zero). The
        grid starts at the median anchor with the smallest rate (nearly linear) and a shape
        must beat the earlier ones by :data:`TIE`."""
        u = x.flatten().double()
        u = u[torch.randperm(len(u), generator=torch.Generator().manual_seed(0))[: 1 << 18]]
        lo, hi, mid = u.min(), u.max(), u.median()
        best, best_score = (mid, -4.0), -math.inf
        for b in torch.linspace(-4.0, 6.0, 21).tolist():
            step = math.exp(-b)
            anchors = [mid] + [lo - g * step for g in GAPS] + [hi + g * step for g in GAPS]
            for a in anchors:
                inner = math.exp(b) * (u - a)
                y = torch.asinh(inner)
                score = -0.5 * y.var().log() + (b - 0.5 * torch.log1p(inner.square())).mean()
                if score > best_score + TIE:  # ties keep the earlier, simpler shape
                    best, best_score = (float(a), b), float(score)
        a, b = best
        y = torch.asinh(math.exp(b) * (u - a))
        d = -float(y.std().log())
        self.offset.zero_()
        self.offset[:4] = torch.tensor([a, b, -float(y.mean()) * math.exp(d), d])


def mode_features(side: int) -> Tensor:
    r"""Features of each wave vector of a ``side x side`` grid in flattened order,
    ``(side * side, 4)``: :math:`\log(1 + |k|)` scaled to [0, 1], the zero-mode indicator,
    :math:`\cos 2\phi`, :math:`\sin 2\phi` (even in :math:`k`, like the spectrum of a real
    field)."""
    freq = torch.fft.fftfreq(side) * side
    kx, ky = torch.meshgrid(freq, freq, indexing="ij")
    radius = torch.hypot(kx, ky)
    angle = 2 * torch.atan2(ky, kx)
    scaled = torch.log1p(radius) / math.log1p(float(radius.max()))
    zero = (radius == 0).float()
    return torch.stack([scaled, zero, angle.cos(), angle.sin()], -1).flatten(0, 1)


class ModeScale(LazyTransform):
    r"""Whitening of the Hartley modes (step 3 above): :math:`z_k = e^{a_k} y_k + b_k` with
    :math:`(a_k, b_k) = \sum_r g_r(\theta) h_{kr} + c_k + o_k`, ``g`` an MLP of theta, ``h`` and
    ``c`` an MLP of the wave vector's :func:`mode_features`, ``o`` a free offset per mode (set
    from data by :meth:`initialize`).

    Args:
        side: Side of the maps.
        d_theta: Size of theta.
        hidden: Hidden sizes of both MLPs.
    """

    def __init__(self, side: int, d_theta: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("modes", mode_features(side))
        self.theta_net = MLP(d_theta, 2 * RANK, hidden, zero_last=True)
        self.mode_net = MLP(self.modes.shape[-1], 2 * RANK + 2, hidden)
        self.offset = nn.Parameter(torch.zeros(2, side * side))  # set by :meth:`initialize`

    def _raw(self, c: Tensor) -> Tensor:
        """The unconstrained (log-scale, shift) of each mode, ``(*, 2, d)``."""
        g = self.theta_net(c).unflatten(-1, (2, RANK))  # (*, 2, R)
        per_mode = self.mode_net(self.modes)  # (d, 2R + 2)
        h = per_mode[:, : 2 * RANK].unflatten(-1, (2, RANK))  # (d, 2, R)
        return torch.einsum("...or,dor->...od", g, h) + per_mode[:, 2 * RANK :].T + self.offset

    def forward(self, c: Tensor) -> Transform:
        log_scale, shift = self._raw(c).unbind(-2)
        return DependentTransform(Affine(shift, log_scale), 1)

    def normal(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """The Gaussian of the modes that the whitening sends to the standard normal,
        :math:`y_k \\sim N(-b_k e^{-a_k}, e^{-2 a_k})`: ``(mean, std)``, each ``(*, d)``
        (:math:`a_k` as :meth:`forward`'s affine map bounds it)."""
        log_scale, shift = self._raw(c).unbind(-2)
        std = torch.exp(-Affine(shift, log_scale).log_scale)
        return -shift * std, std

    @torch.no_grad()
    def initialize(self, c: Tensor, y: Tensor) -> None:
        r"""Data-dependent start (like Glow's actnorm, Kingma & Dhariwal 2018): set
        :attr:`offset` so that the modes ``y`` ``(b, d)`` of a batch come out with mean 0 and
        variance 1 per mode, :math:`z_k = (y_k - m_k) / s_k`. The theta network starts at
        zero, so the map is the same for every theta until training moves it."""
        mean, std = y.mean(0), y.std(0).clamp_min(1e-6)
        # MonotonicAffineTransform soft-clips its raw log-scale r to r / (1 + |r| / L)
        limit = -math.log(SLOPE)
        log_scale = (-std.log()).clamp(-0.9 * limit, 0.9 * limit)
        raw = torch.stack([log_scale / (1 - log_scale.abs() / limit), -mean / std])
        self.offset += raw - self._raw(c[:1])[0]

    def fit(self, c: Tensor, y: Tensor, steps: int = FIT_STEPS, batch: int = 1024) -> None:
        r"""Maximum likelihood of the modes ``y`` ``(b, d)`` given ``c`` ``(b, d_theta)`` under
        :meth:`normal`, :math:`\max \sum_k \log N(y_k; \mu_k(c), s_k(c)^2)`: from
        :meth:`initialize`, ``steps`` Adam steps on random ``batch`` rows (a cosine-decayed
        rate, seeded: the same rows give the same fit). The best stationary Gaussian of the
        maps given theta; for Gaussian maps their exact law as the rows grow."""
        self.initialize(c, y)
        generator = torch.Generator().manual_seed(0)
        optimizer = torch.optim.Adam(self.parameters(), lr=3e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        with torch.enable_grad():
            for _ in range(steps):
                rows = torch.randint(len(y), (min(batch, len(y)),), generator=generator)
                rows = rows.to(y.device)
                mean, std = self.normal(c[rows])
                loss = (std.log() + 0.5 * ((y[rows] - mean) / std).square()).sum(-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()


class _Fixed(LazyTransform):
    """A lazy transform that ignores the context."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, c: Tensor | None = None) -> Transform:
        return self.transform


@torch.no_grad()
def initialize(flow: zuko.flows.Flow, theta: Tensor, x: Tensor) -> None:
    """Start ``flow`` (from :func:`spectral_flow`) Gaussianising the pixels and whitening the
    Hartley modes of a batch ``x`` ``(b, d)`` with context ``theta`` ``(b, d_theta)``
    (:meth:`PixelTransform.initialize`, :meth:`ModeScale.initialize`)."""
    pixel, hartley, modes = flow.transform.transforms[:3]
    pixel.initialize(x)
    modes.initialize(theta, hartley(theta)(pixel(theta)(x)))


def spectral_flow(
    side: int, d_theta: int, transforms: int, hidden: Sequence[int], bins: int
) -> zuko.flows.Flow:
    """The spectral flow over flattened ``side x side`` maps conditioned on ``d_theta`` values,
    with ``transforms`` coupling spline transforms after the whitening (see the module
    docstring)."""
    d = side * side
    couplings = []
    if transforms:
        nsf = NSF(
            d, d_theta, transforms=transforms, hidden_features=tuple(hidden), bins=bins, passes=2
        )
        couplings = list(nsf.transform.transforms)
    chain = [
        PixelTransform(d, d_theta, bins, hidden),
        _Fixed(Hartley(side)),
        ModeScale(side, d_theta, hidden),
        *couplings,
    ]
    base = UnconditionalDistribution(DiagNormal, torch.zeros(d), torch.ones(d), buffer=True)
    return zuko.flows.Flow(chain, base)
