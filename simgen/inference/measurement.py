r"""Measurement models of a field: what an instrument makes of a map :math:`x`,

.. math::
    y = A(x) + s\, n, \qquad n \sim N(0, I),

with Gaussian white noise of known level :math:`s > 0`. :class:`Mask` (pixels seen or not)
and :class:`Beam` (a periodic Gaussian blur) are linear and diagonal in an orthonormal basis,
:math:`A = Q\, \mathrm{diag}(g)\, Q^\top` (the pixels for the mask, the unitary 2-D Fourier
basis for the beam), which is what the exact sequential Monte Carlo sampler of
:mod:`simgen.inference.field` needs: there every coefficient :math:`c = Q^\top x` is observed
on its own, :math:`\tilde y_k = g_k c_k + s\, n_k`. :class:`Operator` wraps a user's own
differentiable :math:`A` (then only the guided sampler, DPS, applies).

Pixels a mask hides carry no information: their values in ``y`` are ignored (NaN is fine).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from simgen.errors import UsageError

__all__ = ["Beam", "DiagonalForm", "Mask", "Measurement", "Operator"]


@dataclass
class DiagonalForm:
    r"""A diagonal measurement in the coordinates of a model, :math:`u = (x - \mu) / \sigma_x`:
    coefficient :math:`k` of :math:`Q^\top u` is seen as :math:`\tilde y_k = g_k c_k + e_k`,
    :math:`e_k \sim N(0, v_k)`; for :math:`g_k = 0` nothing is seen (:math:`\tilde y_k = 0`).

    Attributes:
        gains: :math:`g` ``(*x_shape)``, float64.
        noise_var: :math:`v` ``(*x_shape)``, float64 (> 0).
        y: :math:`\tilde y` ``(*x_shape)`` (complex in the Fourier basis).
        to_basis: :math:`Q^\top`, on ``(..., *x_shape)``.
        from_basis: :math:`Q` (the real part), on ``(..., *x_shape)``.
        prior_var: :math:`\lambda`, a guess of the coefficients' prior variance (1: the
            standardised map), which shapes the sampler's twist (its efficiency, not its
            target) and its steps' variance (:func:`simgen.inference.field.ancestral_step`).
    """

    gains: Tensor
    noise_var: Tensor
    y: Tensor
    to_basis: Callable[[Tensor], Tensor]
    from_basis: Callable[[Tensor], Tensor]
    prior_var: float = 1.0


def _identity(x: Tensor) -> Tensor:
    return x


def _fourier(x: Tensor) -> Tensor:
    return torch.fft.fft2(x, norm="ortho")


def _pixels(c: Tensor) -> Tensor:
    return torch.fft.ifft2(c, norm="ortho").real


class Measurement(ABC):
    """A measurement :math:`y = A(x) + s\\, n` of maps of shape ``x_shape``.

    Args:
        x_shape: The map's shape.
        noise: The noise level :math:`s` (> 0), in the units of x.
    """

    def __init__(self, x_shape: tuple[int, ...], noise: float) -> None:
        if not math.isfinite(noise) or noise <= 0:
            raise UsageError(
                f"measurement noise must be a positive number (the standard deviation of the "
                f"white noise in y), got {noise}"
            )
        self.x_shape, self.noise = tuple(x_shape), float(noise)

    @abstractmethod
    def __call__(self, x: Tensor) -> Tensor:
        """:math:`A(x)`, ``(..., *x_shape)`` -> the same shape, differentiable."""

    @property
    def seen(self) -> Tensor:
        """Which values of ``y`` carry information, ``(*x_shape)`` bool."""
        return torch.ones(self.x_shape, dtype=torch.bool)

    def check(self, y: Tensor) -> Tensor:
        """``y`` as float64 of shape ``x_shape`` with unseen values set to 0; a
        :class:`UsageError` for a wrong shape or values that are not finite where seen."""
        y = torch.as_tensor(y, dtype=torch.float64)
        if tuple(y.shape) != self.x_shape:
            raise UsageError(
                f"the observation has shape {tuple(y.shape)}; the measurement is of maps "
                f"{self.x_shape}"
            )
        if not torch.isfinite(y[self.seen]).all():
            raise UsageError("the observation has NaN or infinite values at seen pixels")
        return torch.where(self.seen, y, 0.0)

    def simulate(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One noisy ``y`` per map ``x (..., *x_shape)`` (unseen values NaN)."""
        clean = self(torch.as_tensor(x, dtype=torch.float64))
        y = clean + self.noise * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        return torch.where(self.seen, y, torch.nan)

    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log N(y; A(x), s^2 I)` over the seen values, ``x (..., *x_shape)`` ->
        ``(...)``."""
        y = self.check(y).to(x)
        r = torch.where(self.seen.to(x.device), y - self(x), 0.0)
        dims = tuple(range(-len(self.x_shape), 0))
        n = int(self.seen.sum())
        return -0.5 * (r / self.noise).square().sum(dims) - n * math.log(
            math.sqrt(2 * math.pi) * self.noise
        )

    def diagonal(self, y: Tensor, mean: Tensor, std: Tensor) -> DiagonalForm:
        """This measurement of ``y`` in a model's coordinates :math:`u = (x - \\mu) / \\sigma_x`
        (``mean``, ``std`` of shape ``x_shape``) as a :class:`DiagonalForm`; a
        :class:`UsageError` where :math:`A` is not diagonal in a known basis."""
        raise UsageError(
            f"{type(self).__name__} is not diagonal in a known basis: sample with method 'dps'"
        )


class Mask(Measurement):
    """Pixels seen where ``mask`` is True, each with white noise ``noise``:
    :math:`A = \\mathrm{diag}(m)`.

    Args:
        mask: ``(*x_shape)`` bool (or 0/1) array, True where a pixel is seen.
        noise: The noise level.
    """

    def __init__(self, mask: Tensor, noise: float) -> None:
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool:
            if not ((mask == 0) | (mask == 1)).all():
                raise UsageError("a mask holds True/False or 1/0 values only")
            mask = mask.bool()
        if not mask.any():
            raise UsageError("the mask hides every pixel: nothing is observed")
        super().__init__(tuple(mask.shape), noise)
        self.mask = mask

    def __call__(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x)

    @property
    def seen(self) -> Tensor:
        return self.mask

    def diagonal(self, y: Tensor, mean: Tensor, std: Tensor) -> DiagonalForm:
        y, m = self.check(y), self.mask.double()
        mean, std = mean.double().reshape(self.x_shape), std.double().reshape(self.x_shape)
        return DiagonalForm(
            gains=m, noise_var=(self.noise / std).square(), y=m * (y - mean) / std,
            to_basis=_identity, from_basis=_identity,
        )  # fmt: skip


class Beam(Measurement):
    """A periodic Gaussian blur of full width at half maximum ``fwhm`` pixels on square maps,
    with white noise ``noise``: :math:`A = F^{-1} \\mathrm{diag}(g) F`,
    :math:`g(k) = \\exp(-\\tfrac12 b^2 |k|^2)`, :math:`b = \\mathrm{fwhm} / \\sqrt{8 \\ln 2}`,
    :math:`k` in radians per pixel.

    Args:
        x_shape: ``(side, side)``.
        fwhm: The beam's width in pixels (> 0).
        noise: The noise level.
    """

    def __init__(self, x_shape: tuple[int, int], fwhm: float, noise: float) -> None:
        if len(x_shape) != 2 or x_shape[0] != x_shape[1]:
            raise UsageError(f"a beam blurs square 2-D maps; the maps have shape {x_shape}")
        if not math.isfinite(fwhm) or fwhm <= 0:
            raise UsageError(f"the beam's fwhm must be a positive number of pixels, got {fwhm}")
        super().__init__(x_shape, noise)
        k = 2 * math.pi * torch.fft.fftfreq(x_shape[0], dtype=torch.float64)
        b = fwhm / math.sqrt(8 * math.log(2))
        self.fwhm, self.gains = float(fwhm), torch.exp(-0.5 * b**2 * (k[:, None] ** 2 + k**2))

    def __call__(self, x: Tensor) -> Tensor:
        return _pixels(_fourier(x) * self.gains.to(x.device)).to(x.dtype)

    def diagonal(self, y: Tensor, mean: Tensor, std: Tensor) -> DiagonalForm:
        std = std.double().reshape(self.x_shape)
        scale = float(std.mean())
        if (std - scale).abs().max() > 1e-6 * scale:
            raise UsageError(
                "a beam needs a model whose maps are standardised with one scale for all "
                "pixels (a diffusion model fitted with network 'unet' and circular padding)"
            )
        y = self.check(y)
        residual = (y - self(mean.double().reshape(self.x_shape))) / scale
        return DiagonalForm(
            gains=self.gains, noise_var=torch.full(self.x_shape, (self.noise / scale) ** 2,
            dtype=torch.float64), y=_fourier(residual), to_basis=_fourier, from_basis=_pixels,
        )  # fmt: skip


class Operator(Measurement):
    """A user's own differentiable :math:`A`: ``operator(x (..., *x_shape)) -> (..., *x_shape)``,
    with white noise ``noise``. Sampled by the guided reverse SDE (DPS) only.

    Args:
        x_shape: The map's shape.
        operator: The measurement's operator.
        noise: The noise level.
    """

    def __init__(
        self, x_shape: tuple[int, ...], operator: Callable[[Tensor], Tensor], noise: float
    ) -> None:
        super().__init__(x_shape, noise)
        self.operator = operator

    def __call__(self, x: Tensor) -> Tensor:
        return self.operator(x)
