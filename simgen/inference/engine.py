r"""The posterior engine behind :class:`simgen.Posterior`: importance sampling, then tempered
SMC, then MCMC, for ``m`` posteriors at once, each path taking over the observations whose
answer the path before could not vouch for.

1. **Importance sampling** (:mod:`simgen.inference.importance`) from the defensive mixture of
   the amortised proposal and the prior, in batches of at most ``2 n`` draws until the effective
   sample size reaches the ``n`` draws asked for (:data:`MAX_ROUNDS` times the first batch's
   draws at most), a Gaussian mixture fitted to the weighted draws joining the proposal where
   it wastes most draws (:mod:`simgen.inference.adaptive`); reliable when the Pareto-smoothed
   :math:`\hat k \le 0.7` (Vehtari et al. 2024) and the ESS is at least :data:`MIN_ESS_SHARE`
   of ``n``. Draws are resampled (systematic) from the smoothed weights.
2. **Tempered SMC** (:mod:`simgen.inference.smc`) from the same mixture.
3. **MCMC** (:mod:`simgen.inference.chains`), slice sampling started from importance draws.

Each draw's normalised log density is :math:`\log p(\theta) + \log p(x \mid \theta) - \log
\hat Z`, with :math:`\hat Z` the evidence estimate of the path that produced it (importance
sampling's for MCMC).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from simgen.errors import UsageError
from simgen.inference.adaptive import FIT_ESS, AdaptedMixture, Pool
from simgen.inference.chains import run_chains
from simgen.inference.importance import (
    DefensiveMixture,
    Weighted,
    evidence,
    log_abs_det,
    psis,
    systematic_resample,
)
from simgen.inference.smc import tempered_smc
from simgen.models.proposal import unconstrained
from simgen.terminal import progress_bar

__all__ = ["MAX_KHAT", "MAX_ROUNDS", "MIN_ESS_SHARE", "SAMPLERS", "Settings", "run_engine"]

SAMPLERS = ("auto", "importance", "smc", "slice", "hmc")
MAX_KHAT = 0.7  # Pareto k above which importance sampling is not reliable (Vehtari et al.)
MIN_ESS_SHARE = 0.1  # of the draws asked for, below which importance sampling hands over
MAX_ROUNDS = 16  # proposals per observation, at most, in first batches' worth (2 n each)
ADAPT_BELOW = 0.1  # ESS per draw below which a fitted mixture joins the proposal
MIN_BATCH = 2048  # proposals per batch, at least
# While the fit of every posterior that is short of draws is still tempered (fewer than FIT_ESS
# effective draws: the mixture is searching for the posterior), batches are this many times
# smaller. Measured on slcp (flow at 1e4, 5 observations x 3 seeds): 11% fewer proposals
# (100.7k against 113.1k per posterior), the same C2ST (.546), both sign modes kept
SEARCH = 4
SMC_PARTICLES = 512  # at least
MCMC_CHAINS = 64  # per observation, at most

# target(theta (m', M, d), rows (m',)) -> (m', M): the unnormalised log posterior of the
# observations ``rows``
Target = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Settings:
    """What :func:`run_engine` was asked for (:meth:`simgen.Posterior.sample`'s arguments)."""

    n: int
    sampler: str
    seed: int
    progress: bool | None
    chains: int | None
    warmup: int | None
    thin: int


def run_engine(
    target: Target, mixture: DefensiveMixture, s: Settings
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``n`` draws ``(m, n, d)`` of each of ``m`` posteriors, their normalised log densities
    ``(m, n)``, and diagnostics with a value per posterior."""
    m, n, all_rows = len(mixture.u), s.n, torch.arange(len(mixture.u))
    d = mixture.prior.event_shape[0]
    theta, log_prob = torch.empty(m, n, d), torch.empty(m, n)
    diag: dict[str, Any] = {"sampler": [s.sampler] * m, "reason": [None] * m}
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(s.seed)
        gen = torch.Generator().manual_seed(s.seed)
        rounds = MAX_ROUNDS if s.sampler in ("auto", "importance") else 1
        weighted, mixture = _importance(target, mixture, n, rounds, s.progress, gen)
        smoothed, khat, ess = psis(weighted.log_weight)
        log_z, log_z_se = evidence(weighted.log_weight)
        diag.update(
            log_evidence=log_z.tolist(),
            log_evidence_se=log_z_se.tolist(),
            ess=ess.tolist(),
            ess_fraction=(ess / weighted.theta.shape[1]).tolist(),
            khat=khat.tolist(),
            proposals=weighted.theta.shape[1],
        )
        todo = torch.ones(m, dtype=torch.bool)
        if s.sampler in ("auto", "importance"):
            done = _judge(khat, ess, n, diag, forced=s.sampler == "importance")
            idx = systematic_resample(smoothed[done], n, gen)
            pick = torch.arange(int(done.sum()))[:, None]
            theta[done] = weighted.theta[done][pick, idx]
            log_prob[done] = (weighted.log_target[done][pick, idx] - log_z[done, None]).float()
            for i in torch.nonzero(done).flatten().tolist():
                diag["sampler"][i] = "importance"
            todo = ~done
        if todo.any() and s.sampler in ("auto", "smc"):
            rows = all_rows[todo]
            theta_s, lp_s, ok = _smc(target, mixture.select(rows), rows, n, gen, diag, s)
            theta[rows[ok]], log_prob[rows[ok]] = theta_s[ok], lp_s[ok]
            for i in rows[ok].tolist():
                diag["sampler"][i] = "smc"
            todo[rows[ok]] = False
        if todo.any():
            rows = all_rows[todo]
            method = s.sampler if s.sampler in ("slice", "hmc") else "slice"
            idx = _starts(smoothed[rows], ess[rows], s.chains or _chains(n), gen)
            start = weighted.theta[rows]
            drawn = _mcmc(target, mixture.transform, rows, start, idx, method, diag, s)
            theta[rows] = drawn
            log_prob[rows] = (target(drawn, rows) - log_z[rows, None]).float()
            for i in rows.tolist():
                diag["sampler"][i] = method
    if not torch.isfinite(theta).all():
        raise RuntimeError("the posterior engine produced non-finite draws")
    return theta, log_prob, diag


def _judge(khat: Tensor, ess: Tensor, n: int, diag: dict[str, Any], forced: bool) -> Tensor:
    """Which posteriors importance sampling answers reliably (``(m,)`` booleans), with the
    reason written for the others; ``forced``: all of them, with a warning for the others."""
    ok = (khat <= MAX_KHAT) & (ess >= MIN_ESS_SHARE * n)
    for i in torch.nonzero(~ok).flatten().tolist():
        diag["reason"][i] = (
            f"importance sampling: Pareto k {khat[i]:.2f} > {MAX_KHAT}"
            if khat[i] > MAX_KHAT
            else f"importance sampling: ESS {ess[i]:.0f} < {MIN_ESS_SHARE * n:.0f}"
        )
    if forced and not ok.all():
        warnings.warn(
            f"importance sampling is not reliable for {int((~ok).sum())} of {len(ok)} "
            f"observations ({diag['reason'][int(torch.nonzero(~ok)[0])]}): the default "
            "sampler hands those over to SMC",
            stacklevel=5,
        )
    return torch.ones_like(ok) if forced else ok


def _chains(n: int) -> int:
    """MCMC chains per posterior for ``n`` draws: at least 10 draws per chain."""
    return max(2, min(MCMC_CHAINS, n // 10))


def _starts(smoothed: Tensor, ess: Tensor, chains: int, gen: torch.Generator) -> Tensor:
    """Indices ``(m, chains)`` of the importance draws that MCMC chains start from: resampled
    by weight where the ESS exceeds the chains, else the ``chains`` draws of highest weight
    (distinct points, spread over the modes the draws found, rather than copies of a few)."""
    resampled = systematic_resample(smoothed, chains, gen)
    best = torch.topk(smoothed, chains, dim=-1).indices
    return torch.where((ess >= chains)[:, None], resampled, best)


def _importance(
    target: Target,
    mixture: DefensiveMixture,
    n: int,
    rounds: int,
    progress: bool | None,
    gen: torch.Generator,
) -> tuple[Weighted, DefensiveMixture | AdaptedMixture]:
    """Batches of weighed draws for each posterior, until every posterior's ESS reaches ``n``
    with a Pareto k of at most :data:`MAX_KHAT`, or ``rounds`` times the first batch's draws
    are drawn; returns the draws and the mixture of the last batch.

    The first batch has ``max(2 n, MIN_BATCH)`` draws of the defensive mixture. Where fewer
    than :data:`ADAPT_BELOW` of the draws so far are effective, or their weights have a heavy
    tail (Pareto k above :data:`MAX_KHAT`: the proposal misses mass somewhere), a Gaussian
    mixture fitted to them joins the proposal, refitted to all draws before every later batch
    (adaptive importance sampling, :mod:`simgen.inference.adaptive`: every draw is weighed
    against the mixture of all batches' proposals); such a batch is :data:`SEARCH` times
    smaller than the first while the fits are tempered, as large as the first while the
    weights' tail is heavy, and otherwise has as many draws as the last batch's gain in ESS
    per draw says are missing. Without a fit, the next batch has as many draws as the ESS per
    draw of all draws says are missing. Each takes a tenth more than it says, at least
    ``MIN_BATCH`` and at most the first batch's draws."""
    first = max(2 * n, MIN_BATCH)
    pool = Pool(mixture, lambda theta: target(theta, torch.arange(len(mixture.u))))
    budget = rounds * first
    with progress_bar(budget, "posterior (importance)", unit="draws", enabled=progress) as bar:
        pool.add(first)
        bar.advance(first)
        before, size = torch.zeros(len(mixture.u)), first
        while pool.theta.shape[1] < budget:
            smoothed, khat, ess = psis(pool.weighted().log_weight)
            heavy = khat > MAX_KHAT
            short = (ess < n) | heavy
            if not bool(short.any()):
                break
            fraction = (ess / pool.theta.shape[1])[short]
            if bool((fraction < ADAPT_BELOW).any() | heavy.any()) or pool.fits:
                pool.adapt(smoothed, gen)
                if bool((ess[short] < FIT_ESS).all()):  # searching
                    size = max(first // SEARCH, MIN_BATCH)
                elif bool(heavy.any()):
                    size = first
                else:  # as many as the last batch's gain per draw says are missing
                    rate = ((ess - before) / size)[short].clamp_min(1e-6)
                    size = _missing(n - ess[short], rate, first)
            else:
                size = _missing(n - ess[short], fraction, first)
            before, size = ess, min(size, budget - pool.theta.shape[1])
            pool.add(size)
            bar.advance(size)
    weighted = pool.weighted()
    if not torch.isfinite(weighted.log_weight).any(-1).all():
        raise UsageError(
            f"the posterior density is zero (or NaN) at every one of {weighted.theta.shape[1]} "
            "draws: check the observation and the prior"
        )
    return weighted, pool.proposal


def _missing(short_by: Tensor, per_draw: Tensor, most: int) -> int:
    """Draws for the next batch: a tenth more than the ESS each posterior is ``short_by``
    ``(m',)`` takes at ``per_draw`` effective draws per draw ``(m',)`` (the posterior that
    needs most), at least :data:`MIN_BATCH`, at most ``most``."""
    missing = (short_by.clamp_min(0) / per_draw.clamp_min(1e-6)).max().item()
    return int(min(max(1.1 * missing, MIN_BATCH), most))


def _smc(
    target: Target,
    mixture: DefensiveMixture | AdaptedMixture,
    rows: Tensor,
    n: int,
    gen: torch.Generator,
    diag: dict[str, Any],
    s: Settings,
) -> tuple[Tensor, Tensor, Tensor]:
    """Tempered SMC for the posteriors ``rows``: ``n`` draws and their normalised log
    densities each, and which of them reached temperature 1."""
    transform = mixture.transform

    def densities(z: Tensor) -> tuple[Tensor, Tensor]:
        theta = transform(z)
        ladj = log_abs_det(transform, z, theta)
        return mixture.log_prob(theta) + ladj, target(theta, rows) + ladj

    m, count = len(rows), max(n, SMC_PARTICLES)
    z0 = unconstrained(transform, mixture.sample(count)[0])
    with progress_bar(None, "posterior (smc)", unit="stages", enabled=s.progress) as bar:
        result = tempered_smc(densities, z0, gen, on_stage=lambda _: bar.advance(1))
    keep = torch.argsort(torch.rand(m, count, generator=gen), -1)[:, :n]
    z = torch.gather(result.z, 1, keep[..., None].expand(-1, -1, z0.shape[-1]))
    theta = transform(z)
    log_target = torch.gather(result.log_target, 1, keep) - log_abs_det(transform, z, theta)
    ok = result.beta >= 1
    for j, i in enumerate(rows.tolist()):
        if ok[j]:
            diag["log_evidence"][i] = float(result.log_z[j])
            diag["log_evidence_se"][i] = None  # SMC's single run gives none
        else:
            diag["reason"][i] = (diag["reason"][i] or "") + (
                f"; SMC reached temperature {result.beta[j]:.3f} in {result.stages} stages"
            )
    diag["smc"] = {
        "stages": result.stages,
        "acceptance": result.acceptance,
        "evaluations_per_draw": result.evaluations,
    }
    return theta, (log_target - result.log_z[:, None]).float(), ok


def _mcmc(
    target: Target,
    transform: Any,
    rows: Tensor,
    start: Tensor,
    idx: Tensor,
    method: str,
    diag: dict[str, Any],
    s: Settings,
) -> Tensor:
    """MCMC for the posteriors ``rows``, chains started at ``start[:, idx]`` (importance
    draws ``(m, M, d)`` resampled to ``(m, chains)``): ``(m, n, d)`` draws."""
    m, chains = idx.shape
    d = start.shape[-1]

    def log_density(z: Tensor) -> Tensor:
        theta = transform(z)
        lp = target(theta.reshape(m, chains, d), rows).reshape(-1)
        return lp + log_abs_det(transform, z, theta)

    init = transform.inv(start[torch.arange(m)[:, None], idx].reshape(m * chains, d)).clone()
    with torch.enable_grad():
        z, mcmc = run_chains(log_density, init, m, s.n, method, s.warmup, s.thin, s.progress)
    diag["mcmc"] = mcmc
    if max(mcmc["rhat"]) > 1.05:
        warnings.warn(
            f"the MCMC draws drifted while sampling (stationarity R-hat {max(mcmc['rhat']):.3f}):"
            " use more warm-up or draws",
            stacklevel=5,
        )
    return transform(z).detach()
