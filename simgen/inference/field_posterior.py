r"""Maps given a measurement, with a diffusion emulator as the prior: draws of
:math:`x \sim p(x \mid y, \theta) \propto p_{model}(x \mid \theta)\, p(y \mid x)` for
:math:`y = A(x) + s\, n` (:mod:`simgen.inference.measurement`), by the samplers of
:mod:`simgen.inference.field` (Gibbs by data augmentation, the default; DPS) and
:mod:`simgen.inference.field_smc` (sequential Monte Carlo, with the evidence).

The emulator works on :math:`u = (x - \mu) / \sigma_x`; the measurement is carried into those
coordinates (:meth:`~simgen.inference.measurement.Measurement.diagonal`) and the draws back.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from simgen.errors import UsageError
from simgen.inference.field import dps, gibbs
from simgen.inference.field_joint import (
    fitted_proposal,
    kernel_draws,
    kernel_estimate,
    mixture_weights,
)
from simgen.inference.field_smc import FieldSMC, smc
from simgen.inference.importance import systematic_resample
from simgen.inference.measurement import Measurement
from simgen.terminal import progress_bar

__all__ = ["METHODS", "RHAT_WARN", "FieldPosterior", "FieldSamples"]

METHODS = ("gibbs", "smc", "dps")
RHAT_WARN = 1.1  # worst split R-hat of the Gibbs chains before a warning
# times where the denoiser is probed: noise 0.7, 1.6 and 3.4 times the standardised scale
PROBE_TIMES = (0.2, 0.35, 0.5)


@dataclass
class FieldSamples:
    """Draws of maps given a measurement, per condition.

    Attributes:
        x: ``(m, n, *x_shape)`` draws for each of ``m`` parameter rows (``m = 1`` for draws of
            the parameters and maps together).
        method: The sampler.
        diagnostics: Per sampler: ``rhat`` and ``ess`` (Gibbs: worst over the map's values),
            ``ess`` and ``log_evidence`` (SMC: :math:`\\log \\hat p(y \\mid \\theta)` in the
            model's coordinates), per row; for the parameters too, ``ess`` of the parameters'
            importance weights, ``log_evidence`` of :math:`p(y)`, ``thetas``, ``particles``.
        theta: ``(n, d)`` the parameters drawn with the maps (:meth:`FieldPosterior.sample_joint`).
        log_prob: ``(n,)`` their estimated normalised :math:`\\log p(\\theta \\mid y)` (the
            log density of the kernel-smoothed weighted parameters).
    """

    x: Tensor
    method: str
    diagnostics: dict[str, Any] = field(default_factory=dict)
    theta: Tensor | None = None
    log_prob: Tensor | None = None

    @property
    def mean(self) -> Tensor:
        """``(m, *x_shape)`` posterior mean."""
        return self.x.mean(1)

    @property
    def std(self) -> Tensor:
        """``(m, *x_shape)`` posterior standard deviation."""
        return self.x.std(1)


class FieldPosterior:
    """:math:`p(x \\mid y, \\theta)` with a diffusion ``emulator`` of maps as the prior.

    Args:
        emulator: A :class:`simgen.Emulator` of the diffusion family on the variance-preserving
            process (the default on square maps).
        measurement: What was observed: :class:`~simgen.inference.measurement.Mask`,
            :class:`~simgen.inference.measurement.Beam` or
            :class:`~simgen.inference.measurement.Operator`.
    """

    def __init__(self, emulator: Any, measurement: Measurement) -> None:
        config = getattr(emulator.model, "config", None)
        if (
            emulator.family != "diffusion"
            or getattr(config, "process", "") != "vp"
            or (config.time != "continuous")
        ):
            raise UsageError(
                "a field prior needs a diffusion emulator on the variance-preserving process "
                "(simgen fit --family diffusion on maps)"
            )
        if tuple(measurement.x_shape) != tuple(emulator.x_shape):
            raise UsageError(
                f"the measurement is of maps {tuple(measurement.x_shape)}; the emulator's maps "
                f"are {tuple(emulator.x_shape)}"
            )
        self.emulator, self.measurement = emulator, measurement

    def _noise_predictor(self, theta: Tensor, per_group: int) -> Any:
        model, emulator = self.emulator.model, self.emulator
        v = ((theta.to(emulator.theta_mean) - emulator.theta_mean) / emulator.theta_std).float()
        rows = v.repeat_interleave(per_group, 0)
        device = emulator.theta_mean.device

        def epsilon(u: Tensor, t: Tensor) -> Tensor:
            with torch.autocast(device.type, enabled=False):
                return model.epsilon(u.to(device), t.to(device), rows).to(u.device)

        return epsilon

    @torch.no_grad()
    def sample(
        self,
        y: Any,
        theta: Any,
        n: int = 100,
        method: str = "gibbs",
        steps: int | None = None,
        sweeps: int = 200,
        chains: int = 32,
        seed: int = 0,
        progress: bool | None = None,
    ) -> FieldSamples:
        """Draw ``n`` maps given the observation ``y`` (``x_shape``; unseen values ignored) for
        each row of ``theta`` (``(d,)`` or ``(m, d)``).

        Args:
            y: The observation.
            theta: The parameters the prior is conditioned on.
            n: Draws per row.
            method: ``"gibbs"`` (exact as the sweeps grow), ``"smc"`` (exact as ``n`` grows,
                ``n`` particles; the effective sample size of their weights and the evidence
                in ``diagnostics``) or ``"dps"`` (approximate).
            steps: Ancestral steps: per sweep from :math:`\\tau` (Gibbs, default 5), or from
                t = 1 (SMC, DPS; default 50).
            sweeps: Gibbs sweeps (the first half dropped).
            chains: Gibbs chains per row.
            seed: Seed of the sampler's randomness.
            progress: Show a progress bar (default: when stderr is a terminal).
        """
        if method not in METHODS:
            raise UsageError(f"unknown field sampler '{method}'; choose one of {METHODS}")
        if n < 1 or sweeps < 2 or chains < 1:
            raise UsageError("n and chains must be >= 1 and sweeps >= 2")
        theta = self.emulator._theta(theta)
        single = theta.ndim == 1
        theta = theta.reshape(-1, theta.shape[-1]).cpu()
        m, shape = len(theta), self.emulator.x_shape
        mean = self.emulator.x_mean.cpu().double().reshape(shape)
        std = self.emulator.x_std.cpu().double().reshape(shape)
        model, generator = self.emulator.model, torch.Generator().manual_seed(seed)
        t_min = model.config.t_min
        total = sweeps if method == "gibbs" else steps or 50
        per_group = chains if method == "gibbs" else n  # SMC builds its own (with its guess)
        epsilon = self._noise_predictor(theta.to(self.emulator.theta_mean.device), per_group)
        diagnostics: dict[str, Any] = {}
        unit = "sweeps" if method == "gibbs" else "steps"
        with progress_bar(total, f"field posterior ({method})", unit, progress) as bar:
            advance = lambda: bar.advance(1)
            if method == "dps":
                y64 = self.measurement.check(y)
                seen = self.measurement.seen
                scale = float(std.mean())

                def residual(u0: Tensor) -> Tensor:
                    x = mean.float() + std.float() * u0.reshape(-1, *shape)
                    r = (y64.float() - self.measurement(x)) / scale
                    return torch.where(seen, r, 0.0)

                u = dps(epsilon, model.schedule, residual, m * n, math.prod(shape), total,
                        t_min, generator, progress=advance)  # fmt: skip
                u = u.double().reshape(m, n, *shape)
            else:
                if method == "smc":
                    run = self._smc(y, theta, n, total, generator, advance)
                    idx = systematic_resample(run.log_weight, n, generator)
                    u = torch.gather(run.u, 1, idx[..., None].expand_as(run.u))
                    u = u.reshape(m, n, *shape)
                    diagnostics = {
                        "ess": run.ess.tolist(),
                        "log_evidence": run.log_evidence.tolist(),
                    }
                else:
                    form = self.measurement.diagonal(y, mean, std)
                    run = gibbs(epsilon, model.schedule, form, m, chains, sweeps, steps or 5,
                                t_min, generator, progress=advance)  # fmt: skip
                    kept = run.u.reshape(m, -1, *shape)  # (m, draws * chains, *shape)
                    pick = torch.linspace(0, kept.shape[1] - 1, n).round().long()
                    u = kept[:, pick]
                    diagnostics = {"rhat": run.rhat.tolist(), "ess": run.ess.tolist(),
                                   "rho": run.rho, "tau": run.tau}  # fmt: skip
                    if run.rhat.max() > RHAT_WARN:
                        warnings.warn(
                            f"the Gibbs chains have not mixed everywhere (worst split R-hat "
                            f"{run.rhat.max():.2f} over the map's values, typically where "
                            f"little is seen): raise sweeps for surer means and spreads there",
                            stacklevel=3,  # the caller, past torch.no_grad
                        )
        x = (mean + std * u).float()
        return FieldSamples(x[0:1] if single else x, method, diagnostics)

    @torch.no_grad()
    def sample_joint(
        self,
        y: Any,
        n: int = 1000,
        thetas: int = 128,
        particles: int = 16,
        steps: int = 50,
        chunk: int = 16,
        seed: int = 0,
        progress: bool | None = None,
    ) -> FieldSamples:
        """Draw ``n`` pairs :math:`(\\theta, x) \\sim p(\\theta, x \\mid y)` with the emulator's prior
        on :math:`\\theta`: importance sampling of the parameters, each weighed by the unbiased
        evidence :math:`\\hat p(y \\mid \\theta)` of a sequential Monte Carlo run of
        ``particles`` particles (:mod:`simgen.inference.field_smc`; consistent as ``thetas``
        grows, the estimates entering the weights as they are). In three stages (a quarter, a
        quarter, a half of ``thetas``): from the prior, then twice from a Gaussian fitted to the
        weights so far in the prior's unconstrained coordinates (covariance doubled, plus the
        prior draws' over the importance ESS, which keeps it wide while few weigh); all are
        weighed against the mixture of the three proposals
        (:mod:`simgen.inference.field_joint`). The parameters drawn are the weighted values
        smoothed by a kernel that keeps their mean and covariance (Liu & West 2001), each
        paired with a map from its parent value's particles, drawn by their weights; their
        ``log_prob`` is the smoothed estimate's log density.

        Args:
            y: The observation (``x_shape``).
            n: Pairs drawn.
            thetas: Parameters weighed.
            particles: Particles of each evidence estimate.
            steps: Steps of the prior's chain.
            chunk: Parameters run at once.
            seed: Seed of the sampler's randomness.
            progress: Show a progress bar (default: when stderr is a terminal).
        """
        if thetas < 4 or particles < 1 or n < 1:
            raise UsageError("thetas must be >= 4, particles and n >= 1")
        generator = torch.Generator().manual_seed(seed)
        prior = self.emulator.prior()
        to_theta = torch.distributions.biject_to(prior.support)
        sizes = (thetas // 4, thetas // 4, thetas - 2 * (thetas // 4))
        total = sum(math.ceil(k / chunk) for k in sizes) * steps
        proposals: list[torch.distributions.Distribution] = [prior]
        drawn: list[Tensor] = []
        runs: list[FieldSMC] = []
        with torch.random.fork_rng(), progress_bar(
            total, "field posterior (theta)", "steps", progress
        ) as bar:  # fmt: skip
            torch.manual_seed(seed)
            for size in sizes:
                drawn.append(proposals[-1].sample((size,)))
                runs.append(self._runs(y, drawn[-1], particles, steps, chunk, generator, bar))
                theta = torch.cat(drawn)
                log_evidence = torch.cat([r.log_evidence for r in runs])
                log_w = mixture_weights(theta, log_evidence, proposals, sizes, prior)
                if len(proposals) < len(sizes):
                    z_prior = to_theta.inv(drawn[0])
                    proposals.append(fitted_proposal(to_theta, z_prior, theta, log_w))
        log_z = log_w.logsumexp(0) - math.log(thetas)
        norm = log_w - log_w.logsumexp(0)
        estimate = kernel_estimate(to_theta, theta, log_w)
        drawn_theta, pick, log_prob = kernel_draws(estimate, n, generator)
        u = torch.cat([r.u for r in runs])[pick]  # (n, particles, d)
        which = systematic_resample(torch.cat([r.log_weight for r in runs])[pick], 1,
                                    generator)[:, 0]  # fmt: skip
        u = u[torch.arange(n), which]
        shape = self.emulator.x_shape
        mean = self.emulator.x_mean.cpu().double().reshape(shape)
        std = self.emulator.x_std.cpu().double().reshape(shape)
        x = (mean + std * u.reshape(n, *shape)).float()
        diagnostics = {"ess": float(torch.exp(-torch.logsumexp(2 * norm, 0))),
                       "log_evidence": float(log_z), "thetas": thetas, "particles": particles}  # fmt: skip
        if diagnostics["ess"] < thetas / 10:
            warnings.warn(
                f"the parameters' importance weights rest on few values (ESS "
                f"{diagnostics['ess']:.1f} of {thetas}): the evidence estimates are too noisy "
                f"to compare parameters, or the parameters too few: raise particles or thetas",
                stacklevel=3,  # the caller, past torch.no_grad
            )
        return FieldSamples(x[None], "smc", diagnostics, drawn_theta.float(), log_prob.float())

    def _runs(
        self, y: Any, theta: Tensor, particles: int, steps: int, chunk: int,
        generator: torch.Generator, bar: Any,
    ) -> Any:  # fmt: skip
        """:meth:`_smc` over the rows of ``theta`` ``chunk`` at a time, joined."""
        parts = [self._smc(y, rows, particles, steps, generator, lambda: bar.advance(1))
                 for rows in theta.split(chunk)]  # fmt: skip
        return FieldSMC(*(torch.cat([getattr(p, k) for p in parts]) for k in
                          ("u", "log_weight", "log_evidence", "ess", "min_ess")))  # fmt: skip

    def _linear(self, y: Any) -> tuple[Tensor, Tensor, Tensor]:
        """The measurement in the model's coordinates: ``a (n_y, d)`` over the seen values,
        ``y - A(mu)`` there and the noise variances (float64; ``A`` linear)."""
        shape, d = self.emulator.x_shape, math.prod(self.emulator.x_shape)
        mean = self.emulator.x_mean.cpu().double().reshape(shape)
        std = self.emulator.x_std.cpu().double().reshape(-1)
        seen = self.measurement.seen.reshape(-1)
        columns = self.measurement(torch.eye(d, dtype=torch.float64).reshape(d, *shape))
        a = columns.reshape(d, d).T[seen] * std
        r = (self.measurement.check(y) - self.measurement(mean)).reshape(-1)[seen]
        return a, r, torch.full((len(r),), self.measurement.noise**2, dtype=torch.float64)

    def _spectrum(self, theta: Tensor, generator: torch.Generator, probes: int = 8) -> Tensor:
        """The SMC's Gaussian guess for each row of ``theta (m, d_theta)``: a stationary spectrum
        :math:`\\lambda(k)` in the model's coordinates, ``(m, h, w)``. The model's own where it
        has one (``spectral``, symmetrised in k); else read off its denoiser, whose gain per
        Fourier mode at t is :math:`\\alpha_t \\kappa_t = 1 - \\sigma_t \\partial \\hat\\epsilon /
        \\partial u` (vector-Jacobian products with white probes at white-noise states) at a
        few times of moderate noise, inverted for :math:`\\lambda`, averaged in log over the
        times weighted by how well each pins it down and over rings of equal :math:`|k|`."""
        model = self.emulator.model
        if getattr(model, "spectral", None) is None:
            return self._probed_spectrum(theta, generator, probes)
        h, w = self.emulator.x_shape
        v = ((theta - self.emulator.theta_mean) / self.emulator.theta_std).float()
        variance = model.spectral.spectrum(v)[1].detach().double().cpu().reshape(-1, h, w)
        return 0.5 * (variance + variance.flip(-2, -1).roll((1, 1), (-2, -1)))

    def _probed_spectrum(self, theta: Tensor, generator: torch.Generator, probes: int) -> Tensor:
        """:meth:`_spectrum` read off the denoiser: ``(m, h, w)``."""
        h, w = self.emulator.x_shape
        epsilon, schedule = self._noise_predictor(theta, probes), self.emulator.model.schedule
        k = torch.fft.fftfreq(h)[:, None].square() + torch.fft.fftfreq(w).square()
        rings = torch.unique(k.round(decimals=8), return_inverse=True)[1].reshape(-1)
        count = torch.zeros(int(rings.max()) + 1).index_add_(0, rings, torch.ones(h * w))
        total = weight = torch.zeros(len(theta), len(count), dtype=torch.float64)
        for t in torch.tensor(PROBE_TIMES, dtype=torch.float64):
            e = torch.randn(len(theta) * probes, h * w, generator=generator)
            with torch.enable_grad():  # J^T e: the same gains where J is circulant
                at = torch.randn(e.shape, generator=generator).requires_grad_(True)
                (tangent,) = torch.autograd.grad((epsilon(at, t.float()) * e).sum(), at)
            alpha, sigma = schedule(t)
            fe = torch.fft.fft2(e.double().reshape(-1, probes, h, w))
            fj = torch.fft.fft2((e.double() - sigma * tangent.double()).reshape(-1, probes, h, w))
            ratio = ((fj * fe.conj()).real.sum(1) / fe.abs().square().sum(1)).reshape(-1, h * w)
            r = torch.zeros(len(theta), len(count), dtype=torch.float64)
            r = (r.index_add_(1, rings, ratio) / count).clamp(1e-3, 1 - 1e-3)  # SNR / (1 + SNR)
            pinned = (r * (1 - r)).square()  # d log lambda = dr / (r (1 - r))
            total = total + pinned * torch.log((sigma / alpha) ** 2 * r / (1 - r))
            weight = weight + pinned
        return (total / weight).exp()[:, rings].reshape(-1, h, w)

    def _smc(
        self, y: Any, theta: Tensor, particles: int, steps: int, generator: torch.Generator,
        advance: Any,
    ) -> Any:  # fmt: skip
        """:func:`~simgen.inference.field_smc.smc` at each row of ``theta (m, d_theta)``."""
        if self.emulator.model.config.network != "unet" or len(self.emulator.x_shape) != 2:
            raise UsageError("method 'smc' needs a diffusion emulator of square periodic maps")
        a, r, noise_var = self._linear(y)
        device = self.emulator.theta_mean.device
        epsilon = self._noise_predictor(theta.to(device), particles)
        spectrum = self._spectrum(theta.to(device), generator)
        t_min = self.emulator.model.config.t_min
        return smc(epsilon, self.emulator.model.schedule, a, r, noise_var, spectrum, len(theta),
                   particles, steps, t_min, generator, advance)  # fmt: skip
