r"""``Family``: the contract every conditional model of :math:`p(x \mid \theta)` follows.

Training (:func:`simgen.fit`), the :class:`~simgen.emulator.Emulator`, the posterior and the
diagnostics rely on these methods and on nothing else of a family, in the spirit of zuko's
``LazyDistribution`` (a module whose call with a context returns a distribution) and of lampe's
estimator and loss pairs:

* ``loss(theta, x)``: the training objective per row, ``(b,)``, which owns its noise (the flow's
  negative log-likelihood, the VAE's negative ELBO, the diffusion model's denoising loss);
* ``dist(theta)``: :math:`p(x \mid \theta)` as a ``torch.distributions.Distribution``;
* ``sample(theta)``: one ``x`` per row of ``theta``;
* ``initialize(theta, x, ...)``: data-dependent starting values from a first batch.

All work in standardised coordinates, ``theta (b, d_theta)`` and ``x (b, d_x)`` flat; the
emulator maps to and from the data's units and shapes.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["Family"]


class Family(nn.Module, metaclass=ABCMeta):
    """Base class of the model families (:class:`~simgen.models.flow.Flow`,
    :class:`~simgen.models.vae.VAE`, :class:`~simgen.models.diffusion.Diffusion`).

    Subclasses are built as ``Family(d_x, d_theta, config)`` from their configuration
    dataclass, kept in ``self.config`` and saved with the model.
    """

    config: Any
    # rows of the first batches that initialize() sees, at most (and at most 64 MiB of x):
    # least-squares estimates from n rows have errors ~ 1 / sqrt(n)
    initialize_rows: int = 8192

    @abstractmethod
    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """The training loss per row: ``theta (b, d_theta)``, ``x (b, d_x)`` -> ``(b,)``."""

    @abstractmethod
    def dist(self, theta: Tensor) -> Distribution:
        r""":math:`p(x \mid \theta)`: batch shape ``theta.shape[:-1]``, event shape ``(d_x,)``."""

    def sample(self, theta: Tensor, **kwargs: Any) -> Tensor:
        """One ``x`` per row of ``theta (b, d_theta)`` -> ``(b, d_x)``; ``kwargs`` are the
        family's sampler settings."""
        return self.dist(theta).sample()

    def initialize(
        self,
        theta: Tensor,
        x: Tensor,
        origin: Tensor | None = None,
        agree: Callable[[bool], bool] | None = None,
    ) -> None:
        """Data-dependent starting values from a first batch ``theta (b, d_theta)``,
        ``x (b, d_x)`` (default: none). ``origin (d_theta,)`` is theta = 0 in standardised
        units; ``agree(yes)`` tells whether any rank of a data-parallel fit says yes, so that
        a choice made from the data is the same on every rank."""

    @property
    def stationary(self) -> bool:
        """Whether every value of x has the same statistics (the data are then standardised
        with one mean and scale for all values)."""
        return False
