r"""Conditional variational autoencoder (Kingma & Welling 2013, arXiv:1312.6114; Sohn et al. 2015).

.. math::
    p(x \mid \theta) = \int p(x \mid u, \theta) \, p(u \mid \theta) \, du, \qquad
    q(u \mid x, \theta) \approx p(u \mid x, \theta),

with Gaussian encoder :math:`q`, Gaussian decoder :math:`p(x \mid u, \theta)` of learned
(per-dimension, input-dependent) scale, and a prior :math:`p(u \mid \theta)` that is standard
normal or a learned Gaussian of :math:`\theta`.

With ``affine`` (the default on vectors) the VAE models :math:`z = T_\theta(x)`, x standardised
given theta by the flow's :class:`~simgen.models.flow.ConditionalAffine` (its mean, scale and,
up to 32 values, correlations, trained with the rest), so that

.. math::
    \log p(x \mid \theta) = \log p_{\mathrm{VAE}}(T_\theta(x) \mid \theta)
    + \log |\det \partial_x T_\theta(x)|,

and the decoder starts at :math:`N(0, I)`: the model starts as the best Gaussian given theta and
the latent variable carries what is not Gaussian (two_moons' crescent, a bimodal x). Training
maximises the ELBO (``train_samples = 1``) or the importance-weighted bound with K =
``train_samples`` and the DReG gradient (:mod:`simgen.models.iwae`). The density is the
importance-weighted estimate with K = ``iw_samples``, the encoder as the proposal,

.. math::
    \log \hat p_K(x \mid \theta) = \log \frac1K \sum_{k=1}^K
    \frac{p(x \mid u_k, \theta) p(u_k \mid \theta)}{q(u_k \mid x, \theta)},
    \quad u_k \sim q(u \mid x, \theta),

a stochastic lower bound whose expectation rises to :math:`\log p(x \mid \theta)` as K grows
and whose exponential is an unbiased estimate of :math:`p(x \mid \theta)`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Size, Tensor
from torch.distributions import Distribution, Independent, Normal, constraints
from zuko.distributions import NormalizingFlow

from simgen.errors import UsageError
from simgen.models.conv import ConvDecoder, ConvEncoder
from simgen.models.family import Family
from simgen.models.flow import ConditionalAffine, Flow, FlowConfig
from simgen.models.iwae import dreg_objective, iwae_bound, log_spread
from simgen.models.nn import MLP

__all__ = ["VAE", "IWAEDistribution", "VAEConfig"]

LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 3.0
# rows x importance samples per pass of the density: the decoder's activations stay ~100 MB
ROWS_PER_PASS = 1 << 17


@dataclass
class VAEConfig:
    """Configuration of the VAE.

    Attributes:
        latent: Latent size.
        network: ``"mlp"`` encoder and decoder over the flattened x, or ``"conv"``
            (convolutional, for square 2-D maps; :mod:`simgen.models.conv`).
        hidden: Hidden layer sizes of encoder, decoder and prior networks (with ``conv``: of
            the MLPs between the convolutions and the latent; with ``affine``: of its MLP too).
        channels: Channels of the convolutions after each halving of the resolution.
        circular: Periodic padding in the convolutional encoder (for periodic maps).
        conditional_prior: Learn :math:`p(u \\mid \\theta)` instead of :math:`N(0, I)`.
        iw_samples: K of the importance-weighted density estimate.
        train_samples: K of the training objective: 1, the ELBO; more, the importance-weighted
            bound with the DReG gradient (:mod:`simgen.models.iwae`).
        decoder: ``mlp`` only: :math:`p(x \\mid u, \\theta)` a diagonal ``"gaussian"`` or a
            ``"flow"`` (a conditional spline flow, :class:`~simgen.models.flow.Flow`, of
            ``decoder_transforms`` transforms given :math:`(u, \\theta)`).
        decoder_transforms: Spline transforms of the ``flow`` decoder.
        decoder_passes: Passes of each of its transforms (the flow's ``passes``).
        affine: ``mlp`` only: model x standardised given theta by the flow's
            :class:`~simgen.models.flow.ConditionalAffine`, trained with the VAE.
        held: With ``affine``: the standardisation is linear in theta, fitted once on all
            training rows (up to 64 MiB of x) and held, as the EDM diffusion's.
        correlated: With ``affine``: the standardisation also decorrelates x.
        scale_bound: With ``affine``: how its log-scale is bounded (the flow's setting).
        fixed_gaussian: With ``affine``: its linear part is the heteroscedastic
            maximum-likelihood fit, held (``"auto"``: decided from the data, the flow's
            setting).
    """

    latent: int = 8
    network: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    channels: tuple[int, ...] = (16, 32, 64)
    circular: bool = True
    conditional_prior: bool = True
    iw_samples: int = 1024
    train_samples: int = 1
    decoder: str = "gaussian"
    decoder_transforms: int = 2
    decoder_passes: int | None = None
    affine: bool = False
    held: bool = False
    correlated: bool = False
    scale_bound: str = "tanh"
    fixed_gaussian: bool | str = False

    def __post_init__(self) -> None:
        if self.iw_samples < 1 or self.train_samples < 1:
            raise ValueError("iw_samples and train_samples must be at least 1")
        if self.affine and self.network != "mlp":
            raise ValueError("affine needs network 'mlp'")
        if self.held and not self.affine:
            raise ValueError("held needs affine")
        if self.decoder not in ("gaussian", "flow"):
            raise ValueError(f"unknown decoder '{self.decoder}'; use gaussian or flow")
        if self.decoder == "flow" and self.network != "mlp":
            raise ValueError("decoder 'flow' needs network 'mlp'")


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
            if config.decoder == "flow":  # starts at the identity, N(0, I)
                flow = FlowConfig(
                    transforms=config.decoder_transforms,
                    hidden=hidden,
                    passes=config.decoder_passes,
                )
                self.decoder = Flow(d_x, latent + d_theta, flow)
            else:  # with the standardisation it starts at N(0, I): the best Gaussian
                self.decoder = _JoinedMLP(
                    latent + d_theta, 2 * d_x, hidden, zero_last=config.affine
                )
        else:
            raise UsageError(f"unknown VAE network '{config.network}'; use mlp or conv")
        self.prior_net = MLP(d_theta, 2 * latent, hidden, zero_last=True)
        if not config.conditional_prior:
            self.prior_net.requires_grad_(False)
        self.affine = None
        if config.affine:
            self.affine = ConditionalAffine(
                d_x, d_theta, () if config.held else hidden, config.correlated,
                config.scale_bound, False, config.fixed_gaussian,
            )  # fmt: skip
        if config.held:
            self.affine.requires_grad_(False)
            self.initialize_rows = 1 << 20  # a held fit: on all rows there are

    def initialize(
        self,
        theta: Tensor,
        x: Tensor,
        origin: Tensor | None = None,
        agree: Callable[[bool], bool] | None = None,
    ) -> None:
        """With ``affine``: start the standardisation at the linear-Gaussian fit of a first
        batch ``theta (b, d_theta)``, ``x (b, d_x)``
        (:meth:`~simgen.models.flow.ConditionalAffine.fit_linear`; its settled
        ``fixed_gaussian`` and ``scale_bound`` the configuration then holds)."""
        if self.affine is None:
            return
        self.affine.fit_linear(theta, x.flatten(1), origin, agree)
        self.config = dataclasses.replace(
            self.config, fixed_gaussian=self.affine.fixed_gaussian, scale_bound=self.affine.bound
        )

    def q(self, x: Tensor, theta: Tensor) -> Independent:
        """Encoder :math:`q(u \\mid x, \\theta)` (x standardised with ``affine``)."""
        return _gaussian(self.encoder(x, theta))

    def p_z(self, theta: Tensor) -> Independent:
        """Prior :math:`p(u \\mid \\theta)` (standard normal when not conditional)."""
        return _gaussian(self.prior_net(theta))

    def p_x(self, u: Tensor, theta: Tensor) -> Distribution:
        """Decoder :math:`p(x \\mid u, \\theta)` (of the standardised x with ``affine``)."""
        theta = theta.expand(*u.shape[:-1], theta.shape[-1])
        if isinstance(self.decoder, Flow):
            return self.decoder.dist(torch.cat([u, theta], dim=-1))
        return _gaussian(self.decoder(u, theta))

    def log_weights(
        self, x: Tensor, theta: Tensor, k: int, hold_proposal: bool = False
    ) -> tuple[Tensor, Tensor]:
        """:math:`\\log w_k = \\log p(x \\mid u_k, \\theta) + \\log p(u_k \\mid \\theta) -
        \\log q(u_k \\mid x, \\theta)`, ``(k, b)``, and the draws :math:`u_k \\sim q`,
        ``(k, b, latent)``, for rows ``x (b, d_x)`` (standardised with ``affine``) and
        ``theta (b, d_theta)``; ``hold_proposal``: :math:`q`'s parameters detached in
        :math:`\\log q` (the form :func:`~simgen.models.iwae.dreg_objective` takes)."""
        params = self.encoder(x, theta)
        u = _gaussian(params).rsample((k,))
        proposal = _gaussian(params.detach() if hold_proposal else params)
        decoded = self.p_x(u, theta).log_prob(x.expand(k, *x.shape))
        return decoded + self.p_z(theta).log_prob(u) - proposal.log_prob(u), u

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Negative ELBO (``train_samples = 1``) or negative importance-weighted bound per row,
        ``(b,)``, of x itself (the standardisation's log-determinant included)."""
        ladj = 0.0
        if self.affine is not None:
            x, ladj = self.affine(theta).call_and_ladj(x)
        k = self.config.train_samples
        if k == 1:  # the ELBO: one weight
            bound = self.log_weights(x, theta, 1)[0][0]
        else:
            bound = dreg_objective(*self.log_weights(x, theta, k, hold_proposal=True))
        return -(bound + ladj)

    def iwae(
        self, x: Tensor, theta: Tensor, k: int | None = None, spread: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Importance-weighted :math:`\\log \\hat p_K(x \\mid \\theta)` of the VAE's own x
        (standardised with ``affine``) for rows ``(b, d)``, ``(b,)``, batched over rows and
        the K samples; ``spread``: with its standard error
        (:func:`~simgen.models.iwae.log_spread`), ``(b,)``."""
        k = k or self.config.iw_samples
        rows = max(1, ROWS_PER_PASS // k)
        estimates, spreads = [], []
        for start in range(0, len(x), rows):
            log_w, _ = self.log_weights(x[start : start + rows], theta[start : start + rows], k)
            estimates.append(iwae_bound(log_w))
            if spread:
                spreads.append(log_spread(log_w))
        estimate = torch.cat(estimates)
        return (estimate, torch.cat(spreads)) if spread else estimate

    def dist(self, theta: Tensor, k: int | None = None) -> Distribution:
        """:math:`p(x \\mid \\theta)` with the IWAE ``log_prob`` (K = ``k`` or
        ``iw_samples``), carried through the standardisation with ``affine``."""
        latent = IWAEDistribution(self, theta, k)
        return latent if self.affine is None else NormalizingFlow(self.affine(theta), latent)

    def sample(self, theta: Tensor) -> Tensor:
        """One ``x`` per row: :math:`u \\sim p(u \\mid \\theta)`, :math:`x \\sim p(x \\mid u,
        \\theta)`."""
        return self.dist(theta).sample()


class IWAEDistribution(Distribution):
    """The VAE's own :math:`p(x \\mid \\theta)` (of the standardised x with ``affine``): exact
    sampling, ``log_prob`` by IWAE.

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
