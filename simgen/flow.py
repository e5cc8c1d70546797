r"""Conditional neural spline flow (Durkan et al. 2019, arXiv:1906.04032) via ``zuko.flows.NSF``:
the baseline family. Exact density :math:`\log p(x \mid \theta)` by change of variables. On
square maps of a stationary field, the ``"spectral"`` network (:mod:`simgen.spectral`): a
point-wise spline, the Hartley transform and a whitening of each Fourier mode.

All families share one interface, in standardised coordinates: ``loss(theta, x)`` per sample,
``dist(theta)`` a ``torch.distributions.Distribution`` over x, and ``sample(theta)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import zuko
from torch import Tensor, nn
from torch.distributions import Distribution, Transform
from zuko.flows import LazyTransform
from zuko.transforms import DependentTransform

from simgen.errors import UsageError
from simgen.nn import MLP
from simgen.spectral import Affine, initialize, spectral_flow

__all__ = ["Flow", "FlowConfig"]


@dataclass
class FlowConfig:
    """Configuration of the flow.

    Attributes:
        network: ``"nsf"`` (spline transforms over the features) or ``"spectral"`` (square
            maps of a stationary field on a periodic grid, :mod:`simgen.spectral`; the
            default there, :func:`simgen.emulator.defaults_for`).
        transforms: Number of spline transforms (``spectral``: coupling transforms after the
            whitening of the modes, 0 allowed).
        hidden: Hidden layer sizes of each transform's conditioner.
        bins: Spline bins.
        passes: Passes of each ``nsf`` transform: None (fully autoregressive: exact, but
            sampling takes one network pass per feature) or 2 (coupling: half the features
            condition the other half; sampling as fast as the density). Large x defaults to 2
            (:func:`simgen.emulator.defaults_for`).
        affine: ``nsf`` only: first standardise x given theta,
            :math:`(x - \\mu(\\theta)) e^{-a(\\theta)}` per feature with an MLP of theta
            (zero-initialised: it starts at the identity), so the splines model the residual;
            a simulator that adds noise to a deterministic signal of theta becomes a
            theta-independent problem. The default for new fits on vectors
            (:func:`simgen.emulator.defaults_for`); False here for files that predate it.
    """

    network: str = "nsf"
    transforms: int = 5
    hidden: tuple[int, ...] = (128, 128)
    bins: int = 8
    passes: int | None = None
    affine: bool = False


class ConditionalAffine(LazyTransform):
    r"""Element-wise :math:`u = (x - \mu(\theta)) e^{-a(\theta)}`: an MLP of theta gives the
    shift and log-scale of each of ``features`` values; its last layer starts at zero, so the
    map starts at the identity."""

    def __init__(self, features: int, d_theta: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.hyper = MLP(d_theta, 2 * features, hidden, zero_last=True)

    def forward(self, c: Tensor) -> Transform:
        shift, log_scale = self.hyper(c).chunk(2, dim=-1)
        return DependentTransform(Affine(shift, log_scale), 1)


class Flow(nn.Module):
    """:math:`p(x \\mid \\theta)` as a conditional NSF over ``d_x`` features."""

    def __init__(self, d_x: int, d_theta: int, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        if config.network == "spectral":
            side = math.isqrt(d_x)
            if side * side != d_x:
                raise UsageError(
                    f"flow network 'spectral' needs square maps; x has {d_x} values: "
                    "use network 'nsf'"
                )
            self.flow = spectral_flow(side, d_theta, config.transforms, config.hidden, config.bins)
        elif config.network == "nsf":
            self.flow = zuko.flows.NSF(
                features=d_x,
                context=d_theta,
                transforms=config.transforms,
                hidden_features=tuple(config.hidden),
                bins=config.bins,
                passes=config.passes,
            )
            if config.affine:
                affine = ConditionalAffine(d_x, d_theta, tuple(config.hidden))
                self.flow.transform.transforms.insert(0, affine)
        else:
            raise UsageError(f"unknown flow network '{config.network}'; use nsf or spectral")

    @property
    def stationary(self) -> bool:
        """Whether the model assumes every value of x has the same statistics (``spectral``:
        the training data are then standardised with one mean and scale)."""
        return self.config.network == "spectral"

    def initialize(self, theta: Tensor, x: Tensor) -> None:
        """Data-dependent starting values from a first batch (the ``spectral`` network: whiten
        its modes); nothing for ``nsf``."""
        if self.config.network == "spectral":
            initialize(self.flow, theta, x)

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Negative log-likelihood per sample, ``(b,)``."""
        return -self.flow(theta).log_prob(x)

    def dist(self, theta: Tensor) -> Distribution:
        """The exact conditional density, batch shape ``theta.shape[:-1]``."""
        return self.flow(theta)

    def sample(self, theta: Tensor) -> Tensor:
        """One ``x`` per row of ``theta`` ``(b, d_theta)`` -> ``(b, d_x)``."""
        return self.flow(theta).sample()
