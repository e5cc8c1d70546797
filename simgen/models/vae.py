r"""Conditional variational autoencoder (Kingma & Welling 2013, arXiv:1312.6114; Sohn et al. 2015).

.. math::
    p(x \mid \theta) = \int p(x \mid z, \theta) \, p(z \mid \theta) \, dz, \qquad
    q(z \mid x, \theta) \approx p(z \mid x, \theta),

with Gaussian encoder, Gaussian decoder of learned (per-dimension, input-dependent) scale, and a
prior :math:`p(z \mid \theta)` that is standard normal or a learned Gaussian of :math:`\theta`.
Training maximises the ELBO. The density is the importance-weighted estimate (IWAE, Burda et al.
2015, arXiv:1509.00519)

.. math::
    \log \hat p_K(x \mid \theta) = \log \frac1K \sum_{k=1}^K
    \frac{p(x \mid z_k, \theta) p(z_k \mid \theta)}{q(z_k \mid x, \theta)},
    \quad z_k \sim q(z \mid x, \theta),

a stochastic lower bound whose expectation rises to :math:`\log p(x \mid \theta)` as K grows;
its bias is :math:`O(1/K)` and its spread shrinks like :math:`1/\sqrt{K}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Size, Tensor
from torch.distributions import Distribution, Independent, Normal, constraints

from simgen.errors import UsageError
from simgen.models.conv import ConvDecoder, ConvEncoder
from simgen.models.family import Family
from simgen.models.nn import MLP

__all__ = ["VAE", "IWAEDistribution", "VAEConfig"]

LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 3.0


@dataclass
class VAEConfig:
    """Configuration of the VAE.

    Attributes:
        latent: Latent size.
        network: ``"mlp"`` encoder and decoder over the flattened x, or ``"conv"``
            (convolutional, for square 2-D maps; :mod:`simgen.models.conv`).
        hidden: Hidden layer sizes of encoder, decoder and prior networks (with ``conv``: of
            the MLPs between the convolutions and the latent).
        channels: Channels of the convolutions after each halving of the resolution.
        circular: Periodic padding in the convolutional encoder (for periodic maps).
        conditional_prior: Learn :math:`p(z \\mid \\theta)` instead of :math:`N(0, I)`.
        iw_samples: K of the importance-weighted density estimate.
    """

    latent: int = 8
    network: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    channels: tuple[int, ...] = (16, 32, 64)
    circular: bool = True
    conditional_prior: bool = True
    iw_samples: int = 1024


def _gaussian(params: Tensor) -> Independent:
    mean, log_scale = params.chunk(2, dim=-1)
    return Independent(Normal(mean, log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX).exp()), 1)


class _JoinedMLP(MLP):
    """An MLP of two inputs joined along the features: ``(a (*, m), b (*, n))`` -> ``(*, out)``
    (the weights are those of a plain :class:`MLP`: model files keep their keys)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(torch.cat([a, b], dim=-1))


class VAE(Family):
    """The conditional VAE over ``d_x`` features given ``d_theta`` parameters."""

    def __init__(self, d_x: int, d_theta: int, config: VAEConfig) -> None:
        super().__init__()
        self.config, self.d_x = config, d_x
        hidden, latent = tuple(config.hidden), config.latent
        if config.network == "conv":
            side, levels = math.isqrt(d_x), 2 ** len(config.channels)
            if side * side != d_x or side % levels:
                raise UsageError(
                    f"network 'conv' needs square maps whose side divides by {levels}; "
                    f"x has {d_x} values: use network 'mlp' or fewer channels"
                )
            channels = tuple(config.channels)
            self.encoder = ConvEncoder(
                side, d_theta, 2 * latent, channels, hidden, config.circular
            )
            self.decoder = ConvDecoder(side, latent + d_theta, 2, channels, hidden)
        elif config.network == "mlp":
            self.encoder = _JoinedMLP(d_x + d_theta, 2 * latent, hidden)
            self.decoder = _JoinedMLP(latent + d_theta, 2 * d_x, hidden)
        else:
            raise UsageError(f"unknown VAE network '{config.network}'; use mlp or conv")
        self.prior_net = MLP(d_theta, 2 * latent, hidden, zero_last=True)
        if not config.conditional_prior:
            self.prior_net.requires_grad_(False)

    def q(self, x: Tensor, theta: Tensor) -> Independent:
        """Encoder :math:`q(z \\mid x, \\theta)`."""
        return _gaussian(self.encoder(x, theta))

    def p_z(self, theta: Tensor) -> Independent:
        """Prior :math:`p(z \\mid \\theta)` (standard normal when not conditional)."""
        return _gaussian(self.prior_net(theta))

    def p_x(self, z: Tensor, theta: Tensor) -> Independent:
        """Decoder :math:`p(x \\mid z, \\theta)`."""
        theta = theta.expand(*z.shape[:-1], theta.shape[-1])
        return _gaussian(self.decoder(z, theta))

    def elbo(self, theta: Tensor, x: Tensor) -> Tensor:
        """One-sample ELBO per row, ``(b,)``."""
        q = self.q(x, theta)
        z = q.rsample()
        return self.p_x(z, theta).log_prob(x) + self.p_z(theta).log_prob(z) - q.log_prob(z)

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Negative ELBO per sample, ``(b,)``."""
        return -self.elbo(theta, x)

    def iwae(self, x: Tensor, theta: Tensor, k: int | None = None, chunk: int = 256) -> Tensor:
        """Importance-weighted :math:`\\log \\hat p_K(x \\mid \\theta)` for rows ``(b, d)``."""
        k = k or self.config.iw_samples
        q, p_z = self.q(x, theta), self.p_z(theta)
        terms = []
        for start in range(0, k, chunk):
            z = q.sample((min(chunk, k - start),))  # (c, b, latent)
            terms.append(self.p_x(z, theta).log_prob(x) + p_z.log_prob(z) - q.log_prob(z))
        return torch.cat(terms).logsumexp(0) - math.log(k)

    def dist(self, theta: Tensor) -> IWAEDistribution:
        """:math:`p(x \\mid \\theta)` with the IWAE ``log_prob``."""
        return IWAEDistribution(self, theta)

    def sample(self, theta: Tensor) -> Tensor:
        """One ``x`` per row: :math:`z \\sim p(z \\mid \\theta)`, :math:`x \\sim p(x \\mid z, \\theta)`."""
        return self.p_x(self.p_z(theta).sample(), theta).sample()


class IWAEDistribution(Distribution):
    """:math:`p(x \\mid \\theta)` of a :class:`VAE`: exact sampling, ``log_prob`` by IWAE.

    ``log_prob`` is a stochastic estimate (see the module docstring); pass ``k`` for more
    importance samples.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, vae: VAE, theta: Tensor, k: int | None = None) -> None:
        self.vae, self.theta, self.k = vae, theta, k
        super().__init__(theta.shape[:-1], Size([vae.d_x]), validate_args=False)

    def rsample(self, sample_shape: Size | tuple[int, ...] = ()) -> Tensor:
        theta = self.theta.expand(*sample_shape, *self.theta.shape)
        return self.vae.p_x(self.vae.p_z(theta).rsample(), theta).rsample()

    def log_prob(self, x: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(x.shape[:-1], self.batch_shape)
        x = x.expand(*shape, x.shape[-1]).reshape(-1, x.shape[-1])
        theta = self.theta.expand(*shape, self.theta.shape[-1]).reshape(-1, self.theta.shape[-1])
        return self.vae.iwae(x, theta, self.k).reshape(shape)
