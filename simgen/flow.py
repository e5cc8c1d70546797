r"""Conditional neural spline flow (Durkan et al. 2019, arXiv:1906.04032) via ``zuko.flows.NSF``:
the baseline family. Exact density :math:`\log p(x \mid \theta)` by change of variables.

All families share one interface, in standardised coordinates: ``loss(theta, x)`` per sample,
``dist(theta)`` a ``torch.distributions.Distribution`` over x, and ``sample(theta)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import zuko
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["Flow", "FlowConfig"]


@dataclass
class FlowConfig:
    """Configuration of the flow.

    Attributes:
        transforms: Number of autoregressive spline transforms.
        hidden: Hidden layer sizes of each transform's conditioner.
        bins: Spline bins.
        passes: Passes of each transform: None (fully autoregressive: exact, but sampling
            takes one network pass per feature) or 2 (coupling: half the features condition
            the other half; sampling as fast as the density). Large x defaults to 2
            (:func:`simgen.emulator.defaults_for`).
    """

    transforms: int = 5
    hidden: tuple[int, ...] = (128, 128)
    bins: int = 8
    passes: int | None = None


class Flow(nn.Module):
    """:math:`p(x \\mid \\theta)` as a conditional NSF over ``d_x`` features."""

    def __init__(self, d_x: int, d_theta: int, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        self.flow = zuko.flows.NSF(
            features=d_x,
            context=d_theta,
            transforms=config.transforms,
            hidden_features=tuple(config.hidden),
            bins=config.bins,
            passes=config.passes,
        )

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Negative log-likelihood per sample, ``(b,)``."""
        return -self.flow(theta).log_prob(x)

    def dist(self, theta: Tensor) -> Distribution:
        """The exact conditional density, batch shape ``theta.shape[:-1]``."""
        return self.flow(theta)

    def sample(self, theta: Tensor) -> Tensor:
        """One ``x`` per row of ``theta`` ``(b, d_theta)`` -> ``(b, d_x)``."""
        return self.flow(theta).sample()
