r"""``Posterior``: the prior times a learned likelihood, sampled by one engine for every
emulator family.

.. math::
    p(\theta \mid x_{1:k}) = \frac{p(\theta) \prod_{i=1}^k p(x_i \mid \theta)}{Z},
    \qquad Z = p(x_{1:k}),

with :math:`p(x \mid \theta)` an emulator. The engine (:mod:`simgen.inference.engine`) tries,
in order, importance sampling from a defensive mixture of the emulator's amortised proposal
:math:`q(\theta \mid x_1)` and the prior, tempered SMC, and MCMC, stopping at the first that is
reliable for an observation. With ``k`` i.i.d. observations the proposal is conditioned on the
first: it covers their joint posterior, which is narrower.

Every draw comes with its normalised log density :math:`\log p(\theta \mid x)`, using the
evidence estimate of the path that produced it; ``diagnostics`` say which path ran and why.
SMC and MCMC run in the unconstrained space :math:`z = T^{-1}(\theta)`,
:math:`T` = ``torch.distributions.biject_to(prior.support)``, with the log-Jacobian of
:math:`T` added, so bounded priors need no rejection.

Stochastic likelihood estimates (the VAE's importance weights, Hutchinson's trace for large x)
run with fixed random numbers (every evaluation under the same seed): importance sampling
uses them as unbiased estimates of :math:`p`; for SMC and MCMC they are a fixed, smooth
function of :math:`\theta`.

Devices: draws, the prior and the transform stay on the CPU, where any ``torch.distributions``
prior lives; the observations are copied once to the emulator's device, and every batched
evaluation of the learned likelihood runs there (the GPU when the emulator is on one).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, biject_to

from simgen.emulator import Emulator, _as_tensor
from simgen.errors import UsageError
from simgen.inference.engine import SAMPLERS, Settings, run_engine
from simgen.inference.importance import DefensiveMixture

__all__ = ["SAMPLERS", "Posterior", "PosteriorSamples"]

ESTIMATOR_SEED = 1234
# diagnostics with a value per observation: one value for Posterior.sample
PER_OBSERVATION = (
    "sampler",
    "reason",
    "log_evidence",
    "log_evidence_se",
    "ess",
    "ess_fraction",
    "khat",
)


@dataclass
class PosteriorSamples:
    """Posterior draws with their log densities.

    Attributes:
        theta: ``(n, d)`` draws (``(m, n, d)`` from :meth:`Posterior.sample_batch`).
        log_prob: ``(n,)`` (``(m, n)``) normalised log posterior density of each draw.
        diagnostics: ``sampler`` (the path that ran), ``reason`` (why importance sampling
            handed over, or None), ``log_evidence`` (of the path that ran) and its
            ``log_evidence_se`` (None after SMC), ``ess``, ``ess_fraction`` and ``khat`` of
            importance sampling, ``proposals`` drawn per observation; one value per
            observation in :meth:`Posterior.sample_batch`. When they ran: ``smc``
            (``stages``, ``acceptance``, ``evaluations_per_draw``) and ``mcmc`` (``chains``,
            ``acceptance``, ``rhat`` and ``ess`` per parameter, ...).
    """

    theta: Tensor
    log_prob: Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Posterior:
    """:math:`p(\\theta \\mid x_{obs}) \\propto p(x_{obs} \\mid \\theta) p(\\theta)` with a learned
    likelihood.

    Args:
        emulator: The learned :math:`p(x \\mid \\theta)`: an :class:`~simgen.Emulator`, or any
            object with its ``log_prob``, ``prior``, ``x_shape``, ``d_theta``, ``x_mean`` and
            ``x_std`` (``proposal`` and ``standardized`` too for importance sampling).
        prior: The prior; default: the one of the simulator the emulator was trained on.
    """

    def __init__(self, emulator: Emulator, prior: Distribution | None = None) -> None:
        self.emulator = emulator
        self.prior = prior if prior is not None else emulator.prior()
        if self.prior.event_shape != (emulator.d_theta,):
            raise UsageError(
                f"the prior has event shape {tuple(self.prior.event_shape)}; the emulator has "
                f"{emulator.d_theta} parameters"
            )
        self.transform = biject_to(self.prior.support)

    def _observed(self, x_obs: Any) -> Tensor:
        """``(k, *x_shape)`` i.i.d. observations, checked, on the CPU."""
        x = _as_tensor(x_obs).cpu()
        shape = self.emulator.x_shape
        if tuple(x.shape) == shape:
            x = x[None]
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise UsageError(
                f"the observation has shape {tuple(_as_tensor(x_obs).shape)}; expected "
                f"{shape} or (k, {', '.join(map(str, shape))}) for k i.i.d. observations"
            )
        if not torch.isfinite(x).all():
            raise UsageError("the observation contains NaN or inf; remove or impute those values")
        u = (x.reshape(len(x), -1) - self.emulator.x_mean.cpu()) / self.emulator.x_std.cpu()
        if u.abs().max() > 6:
            warnings.warn(
                f"the observation lies {u.abs().max():.1f} standard deviations from the "
                "training data's mean: the emulator extrapolates there",
                stacklevel=3,
            )
        return x

    def log_prob(self, theta: Any, x_obs: Any) -> Tensor:
        """Unnormalised :math:`\\log p(x_{obs} \\mid \\theta) + \\log p(\\theta)` for theta
        ``(..., d)``; ``x_obs`` is one observation or ``(k, *x_shape)`` i.i.d. ones."""
        theta = _as_tensor(theta).cpu()
        x = self._observed(x_obs)
        return self._log_prob(theta, x.reshape(len(x), *[1] * (theta.ndim - 1), *x.shape[1:]))

    def _log_prob(self, theta: Tensor, xs: Tensor) -> Tensor:
        """Log posterior of theta ``(*b, d)`` given ``xs`` ``(k, *b', *x_shape)`` (``b'``
        broadcasts with ``b``), summed over the ``k`` i.i.d. observations."""
        prior_lp = self.prior.log_prob(theta)
        inside = torch.isfinite(prior_lp)
        safe = torch.where(inside[..., None], theta, self.prior.mean.expand_as(theta))
        device = self.emulator.x_mean.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(ESTIMATOR_SEED)
            likelihood = self.emulator.log_prob(xs, safe).sum(0).to(prior_lp.device)
        return torch.where(inside, likelihood + prior_lp, torch.full_like(prior_lp, -math.inf))

    def sample(
        self,
        x_obs: Any,
        n: int = 10_000,
        *,
        sampler: str = "auto",
        seed: int = 0,
        progress: bool | None = None,
        chains: int | None = None,
        warmup: int | None = None,
        thin: int = 1,
    ) -> PosteriorSamples:
        """Draw ``n`` samples of :math:`\\theta \\sim p(\\theta \\mid x_{obs})`, each with its
        normalised log density.

        Args:
            x_obs: One observation ``x_shape``, or ``(k, *x_shape)`` i.i.d. observations.
            n: Draws returned.
            sampler: ``"auto"`` (importance sampling, then SMC, then MCMC, each when the one
                before is not reliable), or one path alone: ``"importance"``, ``"smc"``,
                ``"slice"`` or ``"hmc"`` (MCMC started from importance-weighted draws). Without
                a proposal, every path but ``"auto"`` draws from the prior in its place.
            seed: Seed of every random number the engine draws.
            progress: Progress bar on stderr.
            chains: MCMC chains (default: 64, fewer for few draws).
            warmup: MCMC iterations discarded per chain (default: 100 slice, 200 HMC).
            thin: MCMC: keep one iteration in ``thin``.

        Returns:
            ``theta`` ``(n, d)``, ``log_prob`` ``(n,)`` and ``diagnostics``.

        Raises:
            UsageError: a bad observation, an unknown sampler, or ``auto`` with an emulator
                that has no proposal (fitted with ``proposal=False``).
        """
        x = self._observed(x_obs)
        result = self._sample(x[:, None], n, sampler, seed, progress, chains, warmup, thin)
        diagnostics = {
            k: v[0] if isinstance(v, list) and k in PER_OBSERVATION else v
            for k, v in result.diagnostics.items()
        }
        return PosteriorSamples(result.theta[0], result.log_prob[0], diagnostics)

    def sample_batch(
        self,
        x_obs: Any,
        n: int = 100,
        *,
        sampler: str = "auto",
        seed: int = 0,
        progress: bool | None = None,
        chains: int | None = None,
        warmup: int | None = None,
        thin: int = 1,
    ) -> PosteriorSamples:
        """Sample the posteriors of ``m`` observations at once, batched: what calibration
        needs (SBC, coverage: many simulated observations, a few hundred draws each).

        Args:
            x_obs: ``(m, *x_shape)``: ``m`` observations, each with its own posterior.
            n: Draws per observation.
            sampler: As in :meth:`sample`.
            seed: As in :meth:`sample`.
            progress: As in :meth:`sample`.
            chains: As in :meth:`sample`, per observation.
            warmup: As in :meth:`sample`.
            thin: As in :meth:`sample`.

        Returns:
            ``theta`` ``(m, n, d)``, ``log_prob`` ``(m, n)``, and ``diagnostics`` with a value
            per observation.
        """
        x = _as_tensor(x_obs)
        if x.ndim != len(self.emulator.x_shape) + 1:
            shape = ", ".join(map(str, self.emulator.x_shape))
            raise UsageError(
                f"x_obs has shape {tuple(x.shape)}; expected (m, {shape}) for m observations"
            )
        x = self._observed(x)
        return self._sample(x[None], n, sampler, seed, progress, chains, warmup, thin)

    # --- the engine -------------------------------------------------------------------------
    def _sample(
        self,
        xs: Tensor,
        n: int,
        sampler: str,
        seed: int,
        progress: bool | None,
        chains: int | None,
        warmup: int | None,
        thin: int,
    ) -> PosteriorSamples:
        """The posteriors of ``xs`` ``(k, m, *x_shape)`` (``k`` i.i.d. observations of each of
        ``m``): ``theta`` ``(m, n, d)``, ``log_prob`` ``(m, n)``."""
        if sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler '{sampler}'; use one of {', '.join(SAMPLERS)}")
        proposal = getattr(self.emulator, "proposal", None)
        if sampler == "auto" and proposal is None:
            raise UsageError(
                "the model has no proposal q(theta|x) for the posterior engine: rerun simgen fit "
                "without --no-proposal (it adds one to the fitted model), or pick --sampler smc"
            )
        xs = xs.to(self.emulator.x_mean.device)
        # the proposal's input: x standardised as the emulator does (flat x without one)
        u = self.emulator.standardized(xs[0]) if proposal is not None else xs[0].flatten(1)
        mixture = DefensiveMixture(self.prior, self.transform, proposal, u)
        settings = Settings(n, sampler, seed, progress, chains, warmup, thin)
        theta, log_prob, diagnostics = run_engine(
            lambda theta, rows: self._log_prob(theta, xs[:, rows, None]), mixture, settings
        )
        return PosteriorSamples(theta, log_prob, diagnostics)
