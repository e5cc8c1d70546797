r"""Adaptive importance sampling (AMIS, Cornuet et al. 2012, arXiv:0907.1254): Gaussian
mixtures fitted to the weighted draws join the proposal, and every draw is weighed against the
mixture of all the proposals used so far.

Where the amortised proposal :math:`q(\theta \mid x)` covers the posterior but wastes most
draws (a broad proposal for a narrow or multimodal posterior), a mixture :math:`f_r` of
:data:`COMPONENTS` Gaussians over :math:`z = S^{-1}(\theta)`, fitted by EM to draws resampled by
their importance weights, sits where the posterior is (:math:`S`: the probit of a box prior's
coordinates, :func:`simgen.inference.probit.mixture_space`, whose Gaussian tails at the bounds
are a Gaussian mixture's own). Batch :math:`r` then draws :math:`M_r` times from

.. math::
    g_r(\theta) = (1 - \lambda)\, g(\theta) + \lambda\, f_r(S^{-1}(\theta))\,
    |\det \partial S^{-1} / \partial \theta|,

with the defensive mixture :math:`g` kept (its prior share still bounds the weights, by
:math:`1 / (1 - \lambda)` times the bound under :math:`g` alone) and the covariances of
:math:`f_r` widened by :data:`WIDEN` so the Gaussians' light tails cover the posterior's.
Where the weights so far have fewer than :data:`FIT_ESS` effective draws, the fit takes them
tempered, :math:`w^\beta` with the largest :math:`\beta \le 1` that reaches it:
a few draws of one mode would otherwise make the whole fit, and the batches after it would
miss the posterior's other modes (on slcp, the sign of :math:`\theta_4` given a narrow
:math:`\theta_1`: half the runs found one mode with :math:`\hat k` 0.3, untempered). Any
fit leaves the weights unbiased; tempering only decides where the next draws go. Each draw
of every batch is weighed by :math:`p(\theta) p(x \mid \theta) / \sum_r \frac{M_r}{M}
g_r(\theta)` (the balance heuristic of multiple importance sampling): all draws share one
proposal, the mixture of the batches', so the Pareto :math:`\hat k` of their weights means
what it says, and the evidence is its ordinary estimate. Only :math:`g` needs the flow; the
:math:`f_r` are cheap to evaluate at every draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal, Transform

from simgen.inference.importance import DefensiveMixture, Weighted, log_abs_det
from simgen.inference.importance import systematic_resample as resample
from simgen.models.proposal import unconstrained

__all__ = [
    "COMPONENTS",
    "FIT_ESS",
    "AdaptedMixture",
    "Pool",
    "coordinates",
    "fit_mixture",
    "gaussian_coefficients",
    "log_densities",
    "quadratic_features",
    "temper",
]

# Gaussians of the fitted mixture. Measured on slcp's needle posterior (flow at 1e4, 40 seeds):
# 12 lost one of its sign modes in none of the runs, 8 in 2 (5 with logit coordinates), 16 in
# 1 (7 with FIT_ESS 128); the five posteriors took the same time with 12 as with 8 (13.3 s
# against 13.6 s for 20), fewer draws at a higher cost per draw
COMPONENTS = 12
# lambda: the fitted mixture's share of the next draws, and c: the factor on its covariances.
# Measured on slcp's posteriors (flow at 1e4, 5 observations; 6 seeds of the hardest): 0.8 and
# 1.2 need 1.6x fewer likelihood evaluations than 0.5 and 2 for the same ESS, with the same
# C2ST and both sign modes kept in every run; where the mixture fits worse, Pareto k says so
SHARE = 0.8
WIDEN = 1.2
POINTS = 4096  # draws resampled by weight for the fit of one posterior's mixture
ROWS = 1 << 16  # of all posteriors' points together, at most
ITERATIONS = 20  # of EM
FIT_ESS = 16 * COMPONENTS  # effective draws behind a fit, at least (tempered where fewer)


class AdaptedMixture:
    """:math:`g_r` for ``m`` observations: the defensive mixture ``base`` and a fitted Gaussian
    mixture ``fitted`` over z (batch shape ``(m,)``)."""

    def __init__(self, base: DefensiveMixture, fitted: MixtureSameFamily) -> None:
        self.base, self.fitted = base, fitted
        self.prior, self.transform, self.u = base.prior, base.transform, base.u
        self.space = base.space  # z of the fitted mixture -> theta
        c = fitted.component_distribution
        # (m, D, K): quadratic_features(z) @ coefficients is (m, M, K), each component's
        # log pi_k + log N(z; mu_k, Sigma_k)
        self.coefficients = gaussian_coefficients(
            fitted.mixture_distribution.logits, c.loc, c.scale_tril
        )

    def select(self, rows: Tensor) -> AdaptedMixture:
        """The mixture of the observations ``rows``."""
        f = self.fitted
        fitted = MixtureSameFamily(
            Categorical(logits=f.mixture_distribution.logits[rows]),
            MultivariateNormal(
                f.component_distribution.loc[rows],
                scale_tril=f.component_distribution.scale_tril[rows],
            ),
        )
        return AdaptedMixture(self.base.select(rows), fitted)

    def sample_base(self, size: int) -> tuple[Tensor, Tensor]:
        """``(m, size, d)`` draws, a share :data:`SHARE` of them from the fitted mixture, with
        the log density of the defensive mixture ``(m, size)`` at them.

        A fitted draw so far out in z that its theta rounds onto the support's edge (the
        mixture's mass beyond float32's last step before the bound, an atom there) gets a
        proposal density of ``inf``: weight 0, rather than the finite density of the
        defensive mixture alone, which would overweigh it."""
        fitted = round(SHARE * size)
        theta, log_base = self.base.sample(size - fitted)
        theta_f = self.space(self.fitted.sample((fitted,)).transpose(0, 1))
        log_f = self.base.log_prob(theta_f)
        edge = ~torch.isfinite(self.space.inv(theta_f)).all(-1)
        log_f = torch.where(edge, torch.full_like(log_f, math.inf), log_f)
        return torch.cat([theta, theta_f], 1), torch.cat([log_base, log_f], 1)

    def sample(self, size: int) -> tuple[Tensor, Tensor]:
        """``(m, size, d)`` draws with their log density ``(m, size)``."""
        theta, log_base = self.sample_base(size)
        return theta, self.combine(log_base, self.log_fitted(theta))

    def log_fitted(self, theta: Tensor) -> Tensor:
        """``(m, M)`` log density of the fitted mixture, as a density of theta."""
        return log_densities([self], *coordinates(self.space, theta))[0]

    @staticmethod
    def combine(log_base: Tensor, log_fitted: Tensor) -> Tensor:
        """:math:`\\log g_r` from :math:`\\log g` and :math:`\\log f_r`."""
        return torch.logaddexp(math.log1p(-SHARE) + log_base, math.log(SHARE) + log_fitted)

    def log_prob(self, theta: Tensor) -> Tensor:
        """``(m, M)`` log density at ``theta`` ``(m, M, d)``."""
        return self.combine(self.base.log_prob(theta), self.log_fitted(theta))


class Pool:
    """The draws of every batch, weighed against the mixture of the batches' proposals.

    Args:
        base: The defensive mixture :math:`g`.
        target: ``theta (m, M, d) -> (m, M)``, the unnormalised log posterior.
    """

    def __init__(self, base: DefensiveMixture, target: Callable[[Tensor], Tensor]) -> None:
        self.base, self.target = base, target
        self.proposal: DefensiveMixture | AdaptedMixture = base
        self.batches: list[tuple[int, int | None]] = []  # (draws, index of its fit or None)
        self.fits: list[AdaptedMixture] = []
        self.theta = self.log_target = self.log_base = torch.empty(0)
        self.z = self.log_det = torch.empty(0)  # every draw's coordinates(base.space, theta)
        self.log_fits: list[Tensor] = []  # (m, M) of each fit at every draw

    def adapt(self, smoothed: Tensor, gen: torch.Generator) -> None:
        """Fit a Gaussian mixture to the draws so far (normalised log weights ``smoothed``)
        and draw the next batches from it and :math:`g`."""
        mixture = AdaptedMixture(self.base, fit_mixture(self.base, self.theta, smoothed, gen))
        self.fits.append(mixture)
        self.log_fits.append(log_densities([mixture], self.z, self.log_det)[0])
        self.proposal = mixture

    def add(self, size: int) -> None:
        """Draw a batch of ``size`` from the current proposal and weigh it."""
        if isinstance(self.proposal, AdaptedMixture):
            theta, log_base = self.proposal.sample_base(size)
        else:
            theta, log_base = self.base.sample(size)
        fit = len(self.fits) - 1 if isinstance(self.proposal, AdaptedMixture) else None
        self.batches.append((size, fit))
        z, log_det = coordinates(self.base.space, theta)
        new = log_densities(self.fits, z, log_det)
        if self.theta.numel() == 0:
            self.theta, self.log_target, self.log_base = theta, self.target(theta), log_base
            self.z, self.log_det, self.log_fits = z, log_det, new
            return
        self.theta = torch.cat([self.theta, theta], 1)
        self.log_target = torch.cat([self.log_target, self.target(theta)], 1)
        self.log_base = torch.cat([self.log_base, log_base], 1)
        self.z, self.log_det = torch.cat([self.z, z], 1), torch.cat([self.log_det, log_det], 1)
        self.log_fits = [torch.cat([old, n], 1) for old, n in zip(self.log_fits, new, strict=True)]

    def weighted(self) -> Weighted:
        """All draws, each with the log density of the batches' mixture,
        :math:`\\log \\sum_r \\frac{M_r}{M} g_r`."""
        total = sum(size for size, _ in self.batches)
        parts = [
            math.log(size / total)
            + (
                self.log_base
                if fit is None
                else AdaptedMixture.combine(self.log_base, self.log_fits[fit])
            )
            for size, fit in self.batches
        ]
        return Weighted(self.theta, self.log_target, torch.logsumexp(torch.stack(parts), 0))


def temper(log_weight: Tensor, ess: float, iterations: int = 40) -> Tensor:
    r"""Normalised log weights ``(m, M)`` :math:`\beta \log w`, per row the largest
    :math:`\beta \in (0, 1]` whose effective sample size :math:`(\sum_j w_j^\beta)^2 /
    \sum_j w_j^{2 \beta}` reaches ``ess`` (as close as ``iterations`` bisections get; rows
    that reach it untempered keep :math:`\beta = 1`), from log weights ``(m, M)``."""
    log_weight = log_weight.double()

    def normalised(beta: Tensor) -> Tensor:
        tempered = beta[:, None] * log_weight
        return tempered - torch.logsumexp(tempered, -1, keepdim=True)

    def reaches(beta: Tensor) -> Tensor:
        return 1 / torch.exp(2 * normalised(beta)).sum(-1) >= ess

    low, high = torch.zeros(len(log_weight)).double(), torch.ones(len(log_weight)).double()
    done = reaches(high)
    if bool(done.all()):
        return normalised(high)
    for _ in range(iterations):  # the ESS falls as beta grows
        mid = (low + high) / 2
        ok = reaches(mid)
        low, high = torch.where(ok, mid, low), torch.where(ok, high, mid)
    return normalised(torch.where(done, high, low.clamp_min(1e-6)))


def quadratic_features(z: Tensor) -> Tensor:
    r"""``(m, M, D)`` float64 features :math:`\phi(z) = [z_i z_j\ (i \le j),\ z,\ 1]` of
    ``z`` ``(m, M, d)``, :math:`D = d (d + 3) / 2 + 1`: the log density of every Gaussian is
    linear in them (:func:`gaussian_coefficients`)."""
    z = z.double()
    i, j = torch.triu_indices(z.shape[-1], z.shape[-1])
    return torch.cat([z[..., i] * z[..., j], z, torch.ones_like(z[..., :1])], -1)


def gaussian_coefficients(log_pi: Tensor, loc: Tensor, scale_tril: Tensor) -> Tensor:
    r"""``(m, D, K)`` float64 coefficients :math:`c_k` with :math:`\phi(z)^\top c_k = \log
    \pi_k + \log \mathcal N(z; \mu_k, L_k L_k^\top)` (:func:`quadratic_features`), of ``m``
    mixtures (``log_pi`` ``(m, K)``, possibly unnormalised: normalised here; ``loc`` ``(m, K,
    d)``; ``scale_tril`` ``(m, K, d, d)``): with the precision :math:`P = L^{-\top} L^{-1}`,
    :math:`-\frac12 z^\top P z + (P\mu)^\top z - \frac12 \mu^\top P \mu - \log |L| -
    \frac d2 \log 2\pi`. Float64 keeps the expanded form exact enough where the components
    are narrow far from 0 (a precision of 1e4 at z ~ 6 cancels terms of 1e5: 1e-11 nats)."""
    loc, scale_tril = loc.double(), scale_tril.double()
    d = loc.shape[-1]
    precision = torch.cholesky_inverse(scale_tril)  # (m, K, d, d)
    i, j = torch.triu_indices(d, d)
    quadratic = -0.5 * precision[..., i, j] * (2 - (i == j).double())  # off-diagonals twice
    linear = (precision @ loc[..., None])[..., 0]  # (m, K, d)
    constant = (
        torch.log_softmax(log_pi.double(), -1)
        - scale_tril.diagonal(0, -2, -1).log().sum(-1)
        - 0.5 * d * math.log(2 * math.pi)
        - 0.5 * (loc * linear).sum(-1)
    )
    return torch.cat([quadratic, linear, constant[..., None]], -1).transpose(1, 2)


def coordinates(space: Transform, theta: Tensor) -> tuple[Tensor, Tensor]:
    r"""The mixtures' ``z = S^{-1}(theta)`` ``(m, M, d)`` of draws ``theta`` ``(m, M, d)`` and
    :math:`\log |\det \partial S / \partial z|` there ``(m, M)``."""
    z = space.inv(theta)
    return z, log_abs_det(space, z, theta)


def log_densities(fits: list[AdaptedMixture], z: Tensor, log_det: Tensor) -> list[Tensor]:
    """Each fit's ``(m, M)`` log density as a density of theta, at draws given by their
    :func:`coordinates` ``z`` ``(m, M, d)`` and ``log_det`` ``(m, M)``: one matrix product of
    the draws' :func:`quadratic_features` with every fit's coefficients."""
    if not fits:
        return []
    coefficients = torch.cat([f.coefficients for f in fits], -1)  # (m, D, F K)
    components = (quadratic_features(z) @ coefficients).view(*z.shape[:2], len(fits), -1)
    # float64 for the expanded quadratic forms' cancellation; their sums are log densities
    fitted = torch.logsumexp(components.float(), -1) - log_det[..., None]
    fitted = torch.where(torch.isnan(fitted), torch.full_like(fitted, -math.inf), fitted)
    return list(fitted.unbind(-1))


def fit_mixture(
    base: DefensiveMixture, theta: Tensor, smoothed: Tensor, gen: torch.Generator
) -> MixtureSameFamily:
    """The Gaussian mixture over z fitted by EM to draws ``theta`` ``(m, M, d)`` resampled by
    their normalised log weights ``smoothed`` ``(m, M)``, tempered to :data:`FIT_ESS`
    effective draws where they have fewer (:func:`temper`), covariances widened; batch
    ``(m,)``."""
    m, _, d = theta.shape
    count = max(16 * COMPONENTS, min(POINTS, ROWS // m))
    picked = resample(temper(smoothed, FIT_ESS), count, gen)
    points = torch.gather(theta, 1, picked[..., None].expand(-1, -1, d))
    points = unconstrained(base.space, points).double()
    centre = points.mean(1, keepdim=True)
    points = points - centre  # EM on centred points: its second moments cancel less
    spread = points.transpose(1, 2) @ points / (count - 1)  # (m, d, d)
    floor = 1e-3 * torch.diag_embed(spread.diagonal(0, 1, 2)) + 1e-9 * torch.eye(d)
    pick = torch.argsort(torch.rand(m, count, generator=gen), -1)[:, :COMPONENTS]
    loc = torch.gather(points, 1, pick[..., None].expand(-1, -1, d))  # (m, K, d)
    cov = spread[:, None].expand(-1, COMPONENTS, -1, -1) + floor[:, None]
    log_pi = torch.full((m, COMPONENTS), -math.log(COMPONENTS), dtype=points.dtype)
    features = quadratic_features(points)  # (m, R, D)
    i, j = torch.triu_indices(d, d)
    for _ in range(ITERATIONS):
        coefficients = gaussian_coefficients(log_pi, loc, torch.linalg.cholesky(cov))
        log_r = features @ coefficients  # (m, R, K)
        r = torch.exp(log_r - log_r.amax(-1, keepdim=True))  # torch.softmax: 3x slower for K = 8
        r = r / r.sum(-1, keepdim=True)
        # every component's sums of r z_i z_j, r z and r at once: (m, K, D)
        moments = r.transpose(1, 2) @ features
        mass = moments[..., -1] + 1e-10  # (m, K)
        log_pi = (mass / count).log()
        loc = moments[..., len(i) : -1] / mass[..., None]
        second = torch.zeros(m, COMPONENTS, d, d, dtype=points.dtype)
        second[..., i, j] = second[..., j, i] = moments[..., : len(i)] / mass[..., None]
        cov = second - loc[..., :, None] * loc[..., None, :] + floor[:, None]
    return MixtureSameFamily(
        Categorical(logits=log_pi.float()),
        MultivariateNormal(
            (loc + centre).float(), scale_tril=torch.linalg.cholesky(WIDEN * cov).float()
        ),
    )
