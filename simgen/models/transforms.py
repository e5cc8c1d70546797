"""Bijections that the flows share, as ``torch.distributions.Transform``: zuko's element-wise
affine map with parameters that broadcast, a location-scale map with a softly bounded
log-scale, and a unit lower-triangular linear map."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Transform, constraints
from zuko.transforms import MonotonicAffineTransform

__all__ = ["BOUNDS", "Affine", "LocationScale", "UnitLower", "soft_bound", "soft_bound_inverse"]


BOUNDS = ("softplus", "tanh", "rational")


def soft_bound(raw: Tensor, limit: float, bound: str) -> Tensor:
    r"""The raw log-scale ``raw`` mapped into ``(-limit, limit)`` by ``bound``, one of
    :data:`BOUNDS` (:class:`LocationScale`): ``"softplus"``
    :math:`a - \mathrm{softplus}(a - L) + \mathrm{softplus}(-a - L)` (the identity to within
    :math:`e^{|a| - L}`, then a knee of width ~1 at :math:`\pm L`), ``"tanh"``
    :math:`L \tanh(a / L)`, ``"rational"`` :math:`a / (1 + |a| / L)`."""
    if bound == "softplus":
        softplus = torch.nn.functional.softplus
        return raw - softplus(raw - limit) + softplus(-raw - limit)
    if bound == "tanh":
        return limit * torch.tanh(raw / limit)
    if bound == "rational":
        return raw / (1 + raw.abs() / limit)
    raise ValueError(f"unknown bound '{bound}'; use one of {BOUNDS}")


def soft_bound_inverse(value: Tensor, limit: float, bound: str) -> Tensor:
    r"""The raw log-scale whose :func:`soft_bound` is ``value`` (``|value| < limit``).

    ``"softplus"``: :math:`s = a - \log(1 + e^{a - L})` (the bound without its other tail,
    which is below :math:`e^{-L}`) inverts to :math:`a = s - \log(1 - e^{s - L})` for
    :math:`s \ge 0` (odd in s), refined by one Newton step on the whole bound.
    """
    if bound == "softplus":
        a = value.sign() * (value.abs() - torch.log(-torch.expm1(value.abs() - limit)))
        slope = 1 - torch.sigmoid(a - limit) - torch.sigmoid(-a - limit)
        return a - (soft_bound(a, limit, bound) - value) / slope
    if bound == "tanh":
        return limit * torch.atanh(value / limit)
    if bound == "rational":
        return value / (1 - value.abs() / limit)
    raise ValueError(f"unknown bound '{bound}'; use one of {BOUNDS}")


class Affine(MonotonicAffineTransform):
    """zuko's element-wise affine map whose parameters, computed from theta alone, broadcast
    against x like torch.distributions (zuko's expands them to x's shape, which fails when x
    has more batch dimensions than theta)."""

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.log_scale.expand(torch.broadcast_shapes(x.shape, self.log_scale.shape))


class LocationScale(Transform):
    r"""Element-wise :math:`u = (x - \mu) e^{s}`, the log-scale softly bounded by
    :math:`L = \log(` ``max_scale`` :math:`)` from the raw :math:`a` (:func:`soft_bound`):
    ``bound="softplus"`` (the identity until close to :math:`\pm L`), ``"tanh"``
    :math:`s = L \tanh(a / L)`, or ``"rational"`` :math:`s = a / (1 + |a| / L)` (zuko's soft
    clamp), so that :math:`|s| < L` whatever :math:`a`. ``loc`` (:math:`\mu`) and ``raw``
    (:math:`a`) broadcast against x.

    The bounds differ in how far from :math:`L` they bend :math:`s` away from :math:`a`:
    :math:`ds/da` is :math:`1 - (s/L)^2` for tanh and :math:`(1 - |s|/L)^2` for the rational
    clamp, 0.75 against 0.25 at :math:`|s| = L/2` (a noise 1,000 times below the data's
    spread when :math:`L = \log 10^6`), and above 0.95 up to :math:`|s| = L - 3` for softplus.
    Where the noise level varies over orders of magnitude with theta (slcp), tanh trains to a
    lower loss than the rational clamp in the same steps, and only softplus lets a log-scale
    linear in :math:`\log|\theta|` (a power law) stay one down to a noise 1e5 below the
    data's spread (``docs/architecture.md``).

    zuko's affine map :math:`u = x e^{s} + t` has the shift :math:`t = -\mu e^{s}` where this
    one has the mean: when the mean is linear in theta and the noise level is not (a signal plus
    noise), t is as nonlinear as the scale and as large as the mean over the noise (slcp:
    :math:`\theta_1 / \theta_3^2`, unbounded near :math:`\theta_3 = 0`), where here the mean
    stays linear and only the scale has to be learned. The map is not written as zuko's with
    :math:`t = -\mu e^{s}`, because :math:`x e^{s} - \mu e^{s}` cancels two large float32
    numbers where the noise is small, and :math:`(x - \mu) e^{s}` does not.
    """

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __init__(self, loc: Tensor, raw: Tensor, max_scale: float, bound: str) -> None:
        super().__init__()
        self.loc = loc
        self.log_scale = soft_bound(raw, math.log(max_scale), bound)

    def _call(self, x: Tensor) -> Tensor:
        return (x - self.loc) * self.log_scale.exp()

    def _inverse(self, u: Tensor) -> Tensor:
        return u * (-self.log_scale).exp() + self.loc

    def log_abs_det_jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        return self.log_scale.expand(torch.broadcast_shapes(x.shape, self.log_scale.shape))


class UnitLower(Transform):
    r""":math:`z = (I + C)^{-1} u` for a strictly lower-triangular :math:`C` ``(*, d, d)``
    (a triangular solve; the inverse is :math:`u = z + C z`); :math:`\log |\det| = 0`.
    ``C`` broadcasts against ``u (*, d)`` like torch.distributions parameters."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, lower: Tensor) -> None:
        super().__init__()
        self.lower = lower

    def _call(self, u: Tensor) -> Tensor:
        solve = torch.linalg.solve_triangular
        return solve(self.lower, u[..., None], upper=False, unitriangular=True)[..., 0]

    def _inverse(self, z: Tensor) -> Tensor:
        return z + (self.lower @ z[..., None])[..., 0]

    def log_abs_det_jacobian(self, u: Tensor, z: Tensor) -> Tensor:
        return u.new_zeros(torch.broadcast_shapes(u.shape[:-1], self.lower.shape[:-2]))
