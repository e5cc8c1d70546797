r"""Conditional score-based diffusion with a variance-preserving SDE (Song et al. 2021,
arXiv:2011.13456; Ho et al. 2020, arXiv:2006.11239).

Forward process, :math:`t \in [0, 1]`, :math:`\beta(t) = \beta_0 + t (\beta_1 - \beta_0)`:

.. math::
    x_t = \alpha_t x_0 + \sigma_t \epsilon, \quad
    \alpha_t = e^{-\frac12 \int_0^t \beta}, \quad \sigma_t^2 = 1 - \alpha_t^2 .

A network of :math:`(x_t, t, \theta)` predicts the noise :math:`\epsilon`, the denoised
:math:`x_0` or the score :math:`\nabla \log q(x_t) = -\epsilon / \sigma_t`
(``parameterization``); the three are converted to one another exactly for sampling and
density, and each is trained with its own regression loss. Sampling integrates the reverse
SDE or the probability-flow ODE
:math:`\dot x = -\frac12 \beta(t) (x - \hat\epsilon / \sigma_t)` with a fixed number of steps.
The density follows the probability-flow ODE with an adaptive solver (``zuko``'s
``FreeFormJacobianTransform``): exact divergence for small x, Hutchinson's unbiased estimator
for large x (then ``log_prob`` is stochastic, with spread that ``log_prob_spread`` reports).
With ``time = "discrete"`` the model is the DDPM chain instead (:mod:`simgen.models.ddpm`):
trained at its steps, sampled ancestrally, its density bounded below by the ELBO.

With ``process = "edm"`` (the default for new fits of vectors) x is first standardised given
theta by a conditional affine map :math:`z = T_\theta(x)` (the flow's
:class:`~simgen.models.flow.ConditionalAffine`: the maximum-likelihood Gaussian of x given theta,
decorrelated, its mean and scales smooth in theta; fitted before training and then held:
:mod:`simgen.models.standardize`), and the diffusion runs on z with EDM's preconditioning,
training and fixed-grid Heun solvers (:mod:`simgen.models.edm`):
:math:`\log p(x \mid \theta) = \log p_{\sigma_{min}}(T_\theta(x) \mid \theta)
+ \log |\det \partial T_\theta / \partial x|`. Noise of any size in x (slcp's reaches 2e-4 of
its spread) is then unit-sized in z, so the small-noise end of the path costs nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal
from zuko.distributions import NormalizingFlow
from zuko.transforms import FreeFormJacobianTransform

from simgen.errors import UsageError
from simgen.models import vp
from simgen.models.ddpm import DDPMDistribution, ancestral_sample
from simgen.models.edm import EDMDistribution, NoiseSchedule, edm_loss
from simgen.models.family import Family
from simgen.models.flow import ConditionalAffine
from simgen.models.nn import MLP, TimeEmbedding
from simgen.models.standardize import fit_standardization
from simgen.models.unet import UNet

__all__ = ["Diffusion", "DiffusionConfig"]

PARAMETERIZATIONS = ("eps", "x0", "score")
SPECTRAL_HIDDEN = (64, 64)  # the spectrum's MLPs (``spectral``)


@dataclass
class DiffusionConfig:
    """Configuration of the diffusion model.

    Attributes:
        network: The denoiser: ``"mlp"`` over the flattened x, or ``"unet"`` (convolutional,
            for square 2-D maps; :class:`simgen.models.unet.UNet`).
        hidden: Hidden layer sizes of the denoiser MLP (``mlp``) or of the conditioning
            network (``unet``).
        channels: Channels of the U-Net at each resolution, finest first.
        circular: Periodic padding in the U-Net (for periodic maps).
        embedding: Size of the time embedding (EDM: :func:`simgen.models.registry.defaults_for`).
        time: ``"continuous"`` (the SDE: trained at any t, sampled by ODE/SDE solvers, density
            by the probability-flow ODE) or ``"discrete"`` (the DDPM chain of
            ``discrete_steps`` steps: trained at its steps, ancestral sampling, density = its
            ELBO; :mod:`simgen.models.ddpm`).
        discrete_steps: Steps ``T`` of the discrete chain.
        parameterization: What the network predicts: ``"eps"``, ``"x0"`` or ``"score"``.
        beta_min: :math:`\\beta_0`.
        beta_max: :math:`\\beta_1`.
        t_min: Smallest time trained and integrated to (avoids the singular :math:`t = 0`).
        sampler: ``"ode"`` (Heun on the probability-flow ODE) or ``"sde"`` (Euler-Maruyama).
        steps: Steps of the sampler.
        atol: Absolute tolerance of the density's adaptive ODE solver.
        rtol: Relative tolerance of the density's adaptive ODE solver.
        exact_divergence_max: Largest x size with the exact divergence (else Hutchinson); any
            size for ``process = "edm"`` with two hidden layers (``MLP.forward_and_trace``).
        gaussian: Add to the network's prediction the exact one for data
            :math:`x_0 \\mid \\theta \\sim N(W \\theta + b, \\mathrm{diag}(s^2))`
            (:class:`GaussianDenoiser`: least-squares start, then trained with the network,
            whose last layer starts at zero), so the network learns only how the data differ
            from that Gaussian (``process = "vp"``); False here for files that predate it.
        spectral: Add the exact prediction for stationary Gaussian maps instead
            (:class:`~simgen.models.vp.SpectralDenoiser`: a spectrum smooth in k and theta,
            the maximum-likelihood one of the first rows, held; the U-Net's last layer starts
            at zero), so the U-Net learns only how the maps differ from a Gaussian field
            (``unet`` with ``circular`` padding, ``process = "vp"``; the default for such
            fits); False here for files that predate it.
        process: ``"vp"`` (the variance-preserving SDE above) or ``"edm"`` (x standardised
            given theta, then EDM; the default for new fits with the MLP denoiser:
            :func:`simgen.models.registry.defaults_for`; ``"vp"`` here for files that predate
            it). With ``"edm"``, ``steps`` are the sampler's steps (``sampler``: ``"ode"``
            Heun, ``"sde"`` the reverse SDE ancestrally, which needs more) and the settings
            below apply; ``beta_*``, ``t_min``, ``atol``, ``rtol``, ``gaussian`` and
            ``parameterization`` (the network predicts EDM's F) do not.
        sigma_min: EDM: lowest noise (of the standardised z), where densities start.
        sigma_max: EDM: highest noise, where the base Gaussian stands in.
        rho: EDM: curvature of the Heun grids.
        p_mean: EDM: mean of the training noise's :math:`\\ln\\sigma`.
        p_std: EDM: its standard deviation.
        density_steps: EDM: Heun steps of the density.
        correlated: EDM: the standardisation also decorrelates x given theta.
        fixed_gaussian: EDM: the standardisation's Gaussian, as the flow's (``"auto"``
            settles on the first batch: :func:`simgen.models.flow.needs_fixed_gaussian`).
        scale_bound: EDM: the bound of the standardisation's log-scale, as the flow's.
        affine_hidden: EDM: hidden sizes of the standardisation's MLP in theta.
        affine_steps: EDM: maximum-likelihood steps of that MLP before training, then held
            where it beats the linear Gaussian by over ``affine_gain`` nats per held-out row
            (:func:`simgen.models.standardize.fit_standardization`; 0: the linear fit alone).
        affine_gain: EDM: as ``affine_steps`` says.
    """

    network: str = "mlp"
    hidden: tuple[int, ...] = (256, 256, 256)
    channels: tuple[int, ...] = (32, 64)
    circular: bool = True
    embedding: int = 64
    time: str = "continuous"
    discrete_steps: int = 1000
    parameterization: str = "eps"
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    sampler: str = "ode"
    steps: int = 100
    atol: float = 1e-5
    rtol: float = 1e-5
    exact_divergence_max: int = 64
    gaussian: bool = False
    spectral: bool = False
    process: str = "vp"
    sigma_min: float = 1e-3
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2
    density_steps: int = 32
    correlated: bool = True
    fixed_gaussian: bool | str = "auto"
    scale_bound: str = "tanh"
    affine_hidden: tuple[int, ...] = ()
    affine_steps: int = 0
    affine_gain: float = 0.0

    def __post_init__(self) -> None:
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}")
        if self.sampler not in ("ode", "sde"):
            raise ValueError("sampler must be 'ode' or 'sde'")
        if self.network not in ("mlp", "unet"):
            raise ValueError("network must be 'mlp' or 'unet'")
        if self.time not in ("continuous", "discrete") or self.discrete_steps < 2:
            raise ValueError("time must be 'continuous' or 'discrete' (discrete_steps >= 2)")
        if self.process not in ("vp", "edm"):
            raise ValueError("process must be 'vp' or 'edm'")
        if self.process == "edm" and (self.network, self.time) != ("mlp", "continuous"):
            raise ValueError("process 'edm' needs network 'mlp' and time 'continuous'")
        periodic_vp = (self.network, self.circular, self.process, self.gaussian)
        if self.spectral and periodic_vp != ("unet", True, "vp", False):
            raise ValueError("spectral needs network 'unet', circular, process 'vp', not gaussian")
        if self.process == "edm" and self.gaussian:
            raise ValueError("process 'edm' standardises x given theta itself: gaussian false")
        if self.process == "edm" and not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("process 'edm' needs 0 < sigma_min < sigma_max")


class _BroadcastingFlow(NormalizingFlow):
    """A flow whose ``log_prob`` first broadcasts x to the batch shape: the ODE's state must
    carry one row per conditioning theta."""

    def log_prob(self, x: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(x.shape[:-1], self.batch_shape)
        return super().log_prob(x.expand(*shape, x.shape[-1]))


class Diffusion(Family):
    """The conditional diffusion model over ``d_x`` features given ``d_theta`` parameters."""

    # the EDM standardisation is fitted once and held, so on all rows there are (up to 64 MiB):
    # on gaussian_linear (10-d) its density error is 0.105 nats from 8,192 rows, 0.030 from 1e5
    initialize_rows = 1 << 20

    def __init__(self, d_x: int, d_theta: int, config: DiffusionConfig) -> None:
        super().__init__()
        self.config, self.d_x = config, d_x
        self.embed = TimeEmbedding(config.embedding)
        if config.network == "unet":
            side = math.isqrt(d_x)
            levels = 2 ** (len(config.channels) - 1)
            if side * side != d_x or side % levels:
                raise UsageError(
                    f"network 'unet' needs square maps whose side divides by {levels}; "
                    f"x has {d_x} values: use network 'mlp'"
                )
            cond = config.hidden[-1]
            self.cond = MLP(config.embedding + d_theta, cond, tuple(config.hidden[:-1]))
            self.net = UNet(side, cond, tuple(config.channels), config.circular)
        else:
            self.net = MLP(
                d_x + config.embedding + d_theta,
                d_x,
                tuple(config.hidden),
                zero_last=config.gaussian or config.process == "edm",
            )
        self.gaussian = vp.GaussianDenoiser(d_x, d_theta) if config.gaussian else None
        self.spectral = None
        if config.spectral:
            self.spectral = vp.SpectralDenoiser(math.isqrt(d_x), d_theta, SPECTRAL_HIDDEN)
        if config.process == "edm":
            self.affine = ConditionalAffine(
                d_x, d_theta, tuple(config.affine_hidden), config.correlated,
                config.scale_bound, False, config.fixed_gaussian,
            )  # fmt: skip
            self.affine.requires_grad_(False)  # fitted before training, then held
            self.noise = NoiseSchedule(
                config.sigma_min, config.sigma_max, config.rho, config.p_mean, config.p_std
            )

    @property
    def stationary(self) -> bool:
        """Periodic maps (the U-Net with circular padding, translation-equivariant): every
        pixel is standardised alike."""
        return self.config.network == "unet" and self.config.circular

    def schedule(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(\\alpha_t, \\sigma_t)`."""
        return vp.vp_alpha_sigma(t, self.config.beta_min, self.config.beta_max)

    def initialize(
        self,
        theta: Tensor,
        x: Tensor,
        origin: Tensor | None = None,
        agree: Callable[[bool], bool] | None = None,
    ) -> None:
        """Data-dependent start from a first batch ``theta (b, d_theta)``, ``x (b, d_x)``: the
        least-squares Gaussian of :class:`GaussianDenoiser` (``gaussian``), the spectrum of
        :class:`~simgen.models.vp.SpectralDenoiser` (``spectral``), or the standardisation of
        ``process = "edm"``: linear, then ``affine_steps`` of maximum likelihood (its settled
        ``fixed_gaussian`` and ``scale_bound`` the configuration then holds); else nothing."""
        if self.gaussian is not None:
            self.gaussian.fit(theta, x.flatten(1))
        if self.spectral is not None:
            self.spectral.fit(theta, x.flatten(1))
        if self.config.process == "edm":
            self.affine.fit_linear(theta, x.flatten(1), origin, agree)
            if self.config.affine_steps:
                steps, gain = self.config.affine_steps, self.config.affine_gain
                fit_standardization(self.affine, theta, x.flatten(1), steps, min_gain=gain)
            self.affine.requires_grad_(False)
            self.config = dataclasses.replace(
                self.config,
                fixed_gaussian=self.affine.fixed_gaussian,
                scale_bound=self.affine.bound,
            )

    def _f(
        self, y: Tensor, sigma: Tensor, theta: Tensor, trace: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """EDM's network :math:`F(y, \\sigma, \\theta)`, :math:`y = c_{in} z_\\sigma`
        (:mod:`simgen.models.edm`), ``y (n, d_x)``, ``sigma (n,)``, ``theta (n, d_theta)``;
        ``trace``: and its exact divergence in ``y`` ``(n,)``, in one pass."""
        inputs = torch.cat([y, self.embed(self.noise.time(sigma)), theta], dim=-1)
        return self.net.forward_and_trace(inputs, self.d_x) if trace else self.net(inputs)

    def _output(self, x_t: Tensor, t: Tensor, theta: Tensor) -> Tensor:
        t = t.expand(x_t.shape[:-1])
        theta = theta.expand(*x_t.shape[:-1], theta.shape[-1])
        if self.config.network == "unet":
            c = self.cond(torch.cat([self.embed(t), theta], dim=-1))
            flat = self.net(x_t.reshape(-1, self.d_x), c.reshape(-1, c.shape[-1]))
            out = flat.reshape(x_t.shape)
        else:
            out = self.net(torch.cat([x_t, self.embed(t), theta], dim=-1))
        exact = self.gaussian if self.gaussian is not None else self.spectral
        if exact is not None:  # the network learns how the data differ from this Gaussian
            alpha, sigma = (s[..., None] for s in self.schedule(t))
            out = out + exact(x_t, alpha, sigma, theta, self.config.parameterization)
        return out

    def epsilon(self, x_t: Tensor, t: Tensor, theta: Tensor) -> Tensor:
        """The predicted noise :math:`\\hat\\epsilon(x_t, t, \\theta)`, whatever the network
        predicts. ``x_t`` ``(*, d_x)``, ``t`` broadcastable to ``(*,)``, ``theta`` ``(*, d)``."""
        out = self._output(x_t, t, theta)
        alpha, sigma = (s[..., None] for s in self.schedule(t.expand(x_t.shape[:-1])))
        if self.config.parameterization == "eps":
            return out
        if self.config.parameterization == "x0":
            return (x_t - alpha * out) / sigma
        return -sigma * out  # score

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Denoising loss per sample, in the parameterization's own terms (Ho et al. 2020;
        Song et al. 2021): :math:`\\|\\hat\\epsilon - \\epsilon\\|^2` for ``eps``,
        :math:`\\|\\hat x_0 - x_0\\|^2` for ``x0``,
        :math:`\\|\\sigma_t \\hat s + \\epsilon\\|^2` for ``score`` (the score-matching loss
        with weight :math:`\\sigma_t^2`); means over features."""
        if self.config.process == "edm":  # simgen.models.edm.edm_loss on the standardised z
            z = self.affine(theta)(x)
            return edm_loss(lambda y, s: self._f(y, s, theta), z, self.noise)
        if self.config.time == "discrete":  # the chain's steps i / T, i = 1..T
            big_t = self.config.discrete_steps
            t = torch.randint(1, big_t + 1, x.shape[:-1], device=x.device) / big_t
        else:
            t_min = self.config.t_min
            t = t_min + (1 - t_min) * torch.rand(x.shape[:-1], device=x.device)
        eps = torch.randn_like(x)
        alpha, sigma = (s[..., None] for s in self.schedule(t))
        out = self._output(alpha * x + sigma * eps, t, theta)
        if self.config.parameterization == "eps":
            error = out - eps
        elif self.config.parameterization == "x0":
            error = out - x
        else:
            error = sigma * out + eps
        return error.square().mean(-1)

    def drift(self, x: Tensor, t: Tensor, theta: Tensor) -> Tensor:
        """Probability-flow ODE :math:`\\dot x = -\\frac12 \\beta(t)(x - \\hat\\epsilon/\\sigma_t)`
        (the score is :math:`-\\hat\\epsilon / \\sigma_t`)."""
        beta = vp.vp_beta(t, self.config.beta_min, self.config.beta_max)
        _, sigma = self.schedule(t)
        return -0.5 * beta * (x - self.epsilon(x, t, theta) / sigma)

    def dist(
        self, theta: Tensor, exact: bool | None = None, adaptive: bool = False
    ) -> Distribution:
        """:math:`p(x \\mid \\theta)` through the probability-flow ODE: ``process = "edm"`` on
        its fixed Heun grid (``adaptive``: zuko's adaptive solver, a reference), ``"vp"`` by the
        adaptive solver; the discrete chain: its ancestral sampler and ELBO
        (:class:`DDPMDistribution`). ``exact``: the divergence exact (default for x of at
        most ``exact_divergence_max`` values, and for EDM's MLP with two hidden layers) or
        Hutchinson's estimate."""
        if self.config.time == "discrete":
            return DDPMDistribution(self, theta)
        if exact is None:
            cheap = self.config.process == "edm" and self.net.bilinear_trace
            exact = cheap or self.d_x <= self.config.exact_divergence_max
        if self.config.process == "edm":
            return self._edm_dist(theta, exact, self.config.steps, adaptive)
        transform = FreeFormJacobianTransform(
            f=lambda t, x: self.drift(x, t, theta),
            t0=self.config.t_min,
            t1=1.0,
            phi=(*self.parameters(), theta),  # theta too: gradients flow through the adjoint
            atol=self.config.atol,
            rtol=self.config.rtol,
            exact=exact,
        )
        zeros = torch.zeros(*theta.shape[:-1], self.d_x, device=theta.device)
        base = Independent(Normal(zeros, torch.ones_like(zeros)), 1)
        return _BroadcastingFlow(transform, base)

    @torch.no_grad()
    def sample(
        self, theta: Tensor, steps: int | None = None, sampler: str | None = None
    ) -> Tensor:
        """One ``x`` per row of ``theta`` ``(b, d)``, by the configured fixed-step sampler (the
        discrete chain: ancestral sampling, respaced to ``steps``)."""
        steps = steps or self.config.steps
        if self.config.time == "discrete":
            return ancestral_sample(self, theta, steps)
        if self.config.process == "edm":
            return self._edm_dist(theta, True, steps, sampler=sampler).sample()
        c = self.config
        return vp.vp_sample(
            lambda x, t: self.drift(x, t, theta), lambda x, t: self.epsilon(x, t, theta),
            torch.randn(*theta.shape[:-1], self.d_x, device=theta.device),
            c.t_min, steps, sampler or c.sampler, c.beta_min, c.beta_max,
        )  # fmt: skip

    def _edm_dist(
        self,
        theta: Tensor,
        exact: bool,
        sample_steps: int,
        adaptive: bool = False,
        sampler: str | None = None,
    ) -> Distribution:
        """:math:`p(x \\mid \\theta)` of ``process = "edm"``: EDM's density of z, carried back."""
        flat = theta.reshape(-1, theta.shape[-1])
        base = EDMDistribution(
            lambda y, s, rows: self._f(y, s, flat[rows]),
            lambda y, s, rows: self._f(y, s, flat[rows], trace=True),
            self.d_x, theta.shape[:-1], self.noise, self.config.density_steps, sample_steps,
            exact, theta.device, adaptive, sampler or self.config.sampler,
        )  # fmt: skip
        return NormalizingFlow(self.affine(theta), base)
