r"""Conditional neural spline flow (Durkan et al. 2019, arXiv:1906.04032; zuko's, with the
splines of :mod:`simgen.models.spline`): the baseline family. Exact density
:math:`\log p(x \mid \theta)` by change of variables. On square maps of a stationary field,
the ``"spectral"`` network (:mod:`simgen.models.spectral`): a point-wise spline, the Hartley
transform and a whitening of each Fourier mode.

All families share one interface, in standardised coordinates: ``loss(theta, x)`` per sample,
``dist(theta)`` a ``torch.distributions.Distribution`` over x, and ``sample(theta)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import Distribution, Transform
from torch.distributions.utils import tril_matrix_to_vec, vec_to_tril_matrix
from zuko.flows import LazyTransform
from zuko.transforms import ComposedTransform, DependentTransform

from simgen.errors import UsageError
from simgen.models.family import Family
from simgen.models.heteroscedastic import HeteroscedasticFit, heteroscedastic_fit, log_abs
from simgen.models.nn import MLP, cholesky_ridge, full_precision, linear_gaussian_fit
from simgen.models.spectral import initialize, spectral_flow
from simgen.models.spline import NSF
from simgen.models.transforms import (
    BOUNDS,
    LocationScale,
    UnitLower,
    soft_bound,
    soft_bound_inverse,
)

__all__ = ["NOISE_FLOOR", "Flow", "FlowConfig", "needs_fixed_gaussian"]

# largest factor by which the theta-conditioned standardisation scales x (standardised over the
# data set): noise a million times below the data's spread
MAX_SCALE = 1e6
# fixed_gaussian = "auto" holds the linear-Gaussian part fixed where the noise, in units of x's
# spread, falls below this: AdamW moves a directly output mean by about its learning rate (1e-3)
# a step, a jitter that costs (1e-3 / sigma)^2 / 2 nats, 0.005 at sigma = 1e-2
NOISE_FLOOR = 1e-2


@dataclass
class FlowConfig:
    """Configuration of the flow.

    Attributes:
        network: ``"nsf"`` (spline transforms over the features) or ``"spectral"`` (square
            maps of a stationary field on a periodic grid, :mod:`simgen.models.spectral`; the
            default there, :func:`simgen.models.registry.defaults_for`).
        transforms: Number of spline transforms (``spectral``: coupling transforms after the
            whitening of the modes, 0 allowed).
        hidden: Hidden layer sizes of each transform's conditioner.
        bins: Spline bins.
        passes: Passes of each ``nsf`` transform: None (fully autoregressive: exact, but
            sampling takes one network pass per feature) or 2 (coupling: half the features
            condition the other half; sampling as fast as the density). Large x defaults to 2
            (:func:`simgen.models.registry.defaults_for`).
        affine: ``nsf`` only: first standardise x given theta, an affine map per feature
            whose mean and log-scale are linear in theta plus an MLP of theta
            (:class:`ConditionalAffine`; it starts at the least-squares fit of the first
            batch), so the splines model the residual;
            a simulator that adds noise to a deterministic signal of theta becomes a
            theta-independent problem. The default for new fits on vectors
            (:func:`simgen.models.registry.defaults_for`); False here for files that predate it.
        correlated: With ``affine``: the standardisation also decorrelates x, a unit
            lower-triangular map whose entries are linear in theta plus an MLP of theta, so
            that it is a full covariance given theta (the least-squares start whitens the
            residuals). The default for new fits on vectors of at most
            :data:`simgen.models.registry.CORRELATED_MAX` values.
        scale_bound: With ``affine``: how the log-scale is bounded by ``log(1e6)``
            (:func:`simgen.models.transforms.soft_bound`): ``"tanh"`` (the default for new fits since
            2026-11-30), ``"softplus"`` (the identity until close to the bound; what
            ``fixed_gaussian`` needs where the noise spans orders of magnitude), or
            ``"rational"`` (zuko's soft clamp; files that predate the setting).
        separate: With ``affine``: the mean, the raw log-scale and the correlations each come
            from an MLP of their own, not from one MLP with all outputs (the default): where
            the noise is small, the mean must be exact to a small fraction of it, and hidden
            units that also serve the other outputs keep moving it. Three networks cost three
            times the conditioner's time; measured on slcp only so far
            (``docs/architecture.md``), hence not yet a default.
        fixed_gaussian: With ``affine``: the linear part of the standardisation is the
            maximum-likelihood heteroscedastic linear-Gaussian model of the first rows
            (:mod:`simgen.models.heteroscedastic`: a mean linear in theta, a log-scale linear in theta
            and in log|theta|), held fixed, and the MLP's corrections to the mean are in units
            of that model's noise scale: training steps move the mean by a fraction of the
            local noise, however small it is (with ``scale_bound = "softplus"``). ``"auto"``
            (the default for new fits on at most :data:`simgen.models.registry.FIXED_GAUSSIAN_MAX`
            values, :func:`simgen.models.registry.defaults_for`) decides from the first rows
            (:func:`needs_fixed_gaussian`): fixed, with the softplus bound, where
            the noise falls below :data:`NOISE_FLOOR` of x's spread (slcp, whose posterior
            C2ST it takes to the exact likelihood's); elsewhere it cost accuracy when measured
            (``docs/architecture.md``). False: the linear part starts at the least-squares fit
            and trains with the MLP. A fitted model's configuration holds the decision.
    """

    network: str = "nsf"
    transforms: int = 5
    hidden: tuple[int, ...] = (128, 128)
    bins: int = 8
    passes: int | None = None
    affine: bool = False
    correlated: bool = False
    scale_bound: str = "rational"
    separate: bool = False
    fixed_gaussian: bool | str = False


class ConditionalAffine(LazyTransform):
    r"""Element-wise :math:`u = (x - \mu(\theta)) e^{s(\theta)}` over ``features`` values
    (:class:`LocationScale`: the log-scale softly bounded by :math:`\log 10^6` as ``bound``
    says), with
    :math:`(\mu, a)(\theta) = W \theta + b + \mathrm{MLP}(\theta)`, :math:`a` the raw
    log-scale; ``correlated``: then :math:`z = (I + C(\theta))^{-1} u` (:class:`UnitLower`), the
    strictly lower entries of :math:`C` computed the same way, so that
    :math:`\mathrm{Cov}(x \mid \theta) = E (I + C)(I + C)^\top E` with :math:`E = e^{-s}` is any
    covariance when z is white. ``separate``: the MLP is three, one for the mean, one for the
    raw log-scale and one for the lower entries, sharing no hidden units.

    The MLP's last layer and the linear part start at zero (the identity map); :meth:`fit_linear`
    sets the linear part from the least-squares regression of x on theta, so that the flow
    starts at the best linear-Gaussian model and the MLP learns only what is not linear (an MLP
    alone approximates even a linear mean with errors that show up in every log-density). The
    mean is a direct output, not zuko's shift :math:`t = -\mu e^{s}`: a mean linear in theta
    stays linear however the scale varies (slcp: :math:`\mu = (\theta_1, \theta_2)`, scales
    :math:`\theta_3^2, \theta_4^2`).

    ``fixed_gaussian``: the linear part is the maximum-likelihood heteroscedastic model of
    :mod:`simgen.models.heteroscedastic` and does not train: :math:`a = a_0(\theta) + a_{MLP}`,
    :math:`a_0 = W_s \theta + V \ell(\theta) + c` (:math:`\ell \approx \log|\theta|`,
    :func:`simgen.models.heteroscedastic.log_abs`), and
    :math:`\mu = \mu_0(\theta) + e^{-s_0(\theta)} \mu_{MLP}` with
    :math:`s_0 = \mathrm{bound}(a_0)`: the MLP corrects the mean in units of the fixed
    model's noise. An optimiser's step changes a weight by about the learning rate whatever the
    gradient, so a mean that is a direct output moves by ~1e-3 a step, which is 5 times slcp's
    noise near :math:`\theta_3 = 0`, and the fit then widens the noise there instead; in noise
    units a step moves it by 1e-3 of the local noise (``docs/architecture.md``).
    """

    def __init__(
        self,
        features: int,
        d_theta: int,
        hidden: tuple[int, ...],
        correlated: bool,
        bound: str,
        separate: bool,
        fixed_gaussian: bool | str = False,
    ) -> None:
        super().__init__()
        self.features, self.correlated, self.bound = features, correlated, bound
        self.fixed_gaussian = fixed_gaussian  # True, False, or "auto" until fit_linear
        sizes = [features, features] + ([features * (features - 1) // 2] if correlated else [])
        self.hyper: nn.Module
        if separate:  # mean, raw log-scale, lower entries: an MLP each
            self.hyper = nn.ModuleList(MLP(d_theta, k, hidden, zero_last=True) for k in sizes)
        else:
            self.hyper = MLP(d_theta, sum(sizes), hidden, zero_last=True)
        self.linear = full_precision(nn.Linear(d_theta, sum(sizes)))
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        if fixed_gaussian is True:
            self.linear.requires_grad_(False)
        if fixed_gaussian:
            # V of the log|theta| features, and theta = 0 in standardised coordinates
            self.register_buffer("power", torch.zeros(features, d_theta))
            self.register_buffer("origin", torch.zeros(d_theta))

    @torch.no_grad()
    def fit_linear(
        self,
        theta: Tensor,
        x: Tensor,
        origin: Tensor | None = None,
        agree: Callable[[bool], bool] | None = None,
    ) -> None:
        r"""Start at :math:`z = M^{-1} (x - A \theta - c)` from a batch ``theta (b, d_theta)``,
        ``x (b, features)``: least squares (:math:`A, c` the regression of x on theta,
        :math:`M` the Cholesky factor of the residuals' covariance (``correlated``), or the
        diagonal of their standard deviations: :math:`e^{-s} = \mathrm{diag}(M)` and
        :math:`C = \mathrm{diag}(M)^{-1} M - I`), or with ``fixed_gaussian`` the
        heteroscedastic maximum-likelihood fit (``origin``: theta = 0 in standardised
        coordinates, default 0), :math:`M` then the Cholesky factor of the covariance of the
        residuals divided by their fitted noise. ``"auto"`` settles here on one of the two
        (:func:`needs_fixed_gaussian`, the softplus bound with the fixed model; ``agree``, in
        a data-parallel fit, turns this rank's answer into the one every rank takes)."""
        limit = math.log(MAX_SCALE)
        features = self.features
        if self.fixed_gaussian:
            if origin is not None:
                self.origin.copy_(origin)
            bound = self.bound if self.fixed_gaussian is True else "softplus"
            fit = heteroscedastic_fit(theta, x, self.origin, lambda a: soft_bound(a, limit, bound))
            if self.fixed_gaussian == "auto":
                fixed = needs_fixed_gaussian(fit, theta, self.origin)
                if agree is not None:
                    fixed = agree(fixed)
                if fixed:
                    self.fixed_gaussian, self.bound = True, bound
                    self.linear.requires_grad_(False)
                else:
                    self.fixed_gaussian = False
                    del self.power, self.origin
        if self.fixed_gaussian:
            self.linear.weight[:features] = fit.mean_weight
            self.linear.bias[:features] = fit.mean_bias
            self.linear.weight[features : 2 * features] = fit.scale_weight
            self.linear.bias[features : 2 * features] = fit.scale_bias
            self.power.copy_(fit.power)
            if not self.correlated:
                return
            white = fit.residuals(theta, x) * fit.log_scale(theta, self.origin).exp()
            factor = cholesky_ridge(torch.cov(white.T).reshape(features, features))
            sigma = factor.diagonal()
            self.linear.bias[2 * features :] = tril_matrix_to_vec(factor / sigma[:, None], -1)
            # the rows' spread of white is sigma: fold it into the raw log-scale's constant
            self.linear.bias[features : 2 * features] -= sigma.log()
            return
        weight, bias, scale = linear_gaussian_fit(theta, x, full=self.correlated)
        sigma = scale.diagonal().clamp_min(1e-6) if self.correlated else scale
        if self.correlated:
            self.linear.bias[2 * features :] = tril_matrix_to_vec(scale / sigma[:, None], -1)
        # s = -log(sigma), kept off the bound, where ds/da vanishes
        log_scale = -sigma.log().clamp(-0.8 * limit, 0.8 * limit)
        self.linear.weight[:features] = weight
        self.linear.bias[:features] = bias
        self.linear.bias[features : 2 * features] = soft_bound_inverse(
            log_scale, limit, self.bound
        )

    def forward(self, c: Tensor) -> Transform:
        if isinstance(self.hyper, nn.ModuleList):
            learned = torch.cat([mlp(c) for mlp in self.hyper], dim=-1)
        else:
            learned = self.hyper(c)
        linear = self.linear(c)
        f = self.features
        if self.fixed_gaussian:
            # an element-wise product, not a matrix product, so that it stays in float32
            # under autocast (full_precision)
            power = (log_abs(c, self.origin)[..., None, :] * self.power).sum(-1)
            raw0 = linear[..., f : 2 * f] + power
            noise = soft_bound(raw0, math.log(MAX_SCALE), self.bound).neg().exp()
            loc = linear[..., :f] + noise * learned[..., :f]
            raw = raw0 + learned[..., f : 2 * f]
        else:
            out = linear + learned
            loc, raw = out[..., :f], out[..., f : 2 * f]
        affine = DependentTransform(LocationScale(loc, raw, MAX_SCALE, self.bound), 1)
        if not self.correlated:
            return affine
        lower = vec_to_tril_matrix(linear[..., 2 * f :] + learned[..., 2 * f :], diag=-1)
        return ComposedTransform(affine, UnitLower(lower))


def needs_fixed_gaussian(fit: HeteroscedasticFit, theta: Tensor, origin: Tensor) -> bool:
    r"""Whether ``fixed_gaussian = "auto"`` holds the fitted model ``fit`` fixed: where in at
    least 1% of the rows ``theta (n, d_theta)`` (standardised) some value of x has a fitted
    noise :math:`e^{-s}` below :data:`NOISE_FLOOR` (x standardised), a mean that trains
    directly would jitter by a tenth of that noise or more."""
    noise = fit.log_scale(theta, origin).neg().exp().min(1).values  # (n,)
    return bool(torch.quantile(noise, 0.01) < NOISE_FLOOR)


class Flow(Family):
    """:math:`p(x \\mid \\theta)` as a conditional NSF over ``d_x`` features, whose spline
    transforms start at the identity (zero last layer of each conditioner)."""

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
            if config.affine or config.correlated:
                raise UsageError(
                    "flow settings affine and correlated apply to network 'nsf'; the spectral "
                    "network standardises each Fourier mode itself: remove them"
                )
            self.flow = spectral_flow(side, d_theta, config.transforms, config.hidden, config.bins)
        elif config.network == "nsf":
            for name in ("correlated", "separate", "fixed_gaussian"):
                if getattr(config, name) is True and not config.affine:
                    raise UsageError(f"flow setting {name} = true needs affine = true")
            if config.fixed_gaussian not in (True, False, "auto"):
                raise UsageError(
                    f"flow setting fixed_gaussian = {config.fixed_gaussian!r}: use true, false "
                    "or auto"
                )
            if config.scale_bound not in BOUNDS:
                raise UsageError(
                    f"unknown flow scale_bound '{config.scale_bound}'; use {' or '.join(BOUNDS)}"
                )
            self.flow = NSF(
                features=d_x,
                context=d_theta,
                transforms=config.transforms,
                hidden_features=tuple(config.hidden),
                bins=config.bins,
                passes=config.passes,
            )
            layers = (nn.Linear, zuko.nn.Linear)
            for transform in self.flow.transform.transforms:  # start at the identity
                last = [m for m in transform.hyper.modules() if isinstance(m, layers)][-1]
                full_precision(last)  # the spline's knots in float32 under autocast
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
            if config.affine:
                affine = ConditionalAffine(
                    d_x,
                    d_theta,
                    tuple(config.hidden),
                    config.correlated,
                    config.scale_bound,
                    config.separate,
                    config.fixed_gaussian if config.affine else False,
                )
                self.flow.transform.transforms.insert(0, affine)
        else:
            raise UsageError(f"unknown flow network '{config.network}'; use nsf or spectral")

    @property
    def stationary(self) -> bool:
        """Whether the model assumes every value of x has the same statistics (``spectral``:
        the training data are then standardised with one mean and scale)."""
        return self.config.network == "spectral"

    def initialize(
        self,
        theta: Tensor,
        x: Tensor,
        origin: Tensor | None = None,
        agree: Callable[[bool], bool] | None = None,
    ) -> None:
        """Data-dependent starting values from a first batch ``theta (b, d_theta)``,
        ``x (b, d_x)``: the ``spectral`` network whitens its modes; the ``affine`` standardisation
        of ``nsf`` starts at the linear-Gaussian fit of x given theta
        (:meth:`ConditionalAffine.fit_linear`; ``origin (d_theta,)``: theta = 0 in the
        standardised coordinates of ``theta``, where its log|theta| features are singular).
        ``fixed_gaussian = "auto"`` is settled here (``agree``: how the ranks of a
        data-parallel fit, each with its own rows, take one decision): the configuration then
        holds it."""
        if self.config.network == "spectral":
            initialize(self.flow, theta, x)
        elif self.config.affine:
            affine = self.flow.transform.transforms[0]
            affine.fit_linear(theta, x.flatten(1), origin, agree)
            self.config = dataclasses.replace(
                self.config, fixed_gaussian=affine.fixed_gaussian, scale_bound=affine.bound
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
