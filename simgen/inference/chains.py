r"""The posterior engine's last resort: batched MCMC chains (:mod:`simgen.inference.mcmc`)
started from draws that already approximate the posterior (the proposal's, reweighted).

Chains started that way spread over the posterior's modes in proportion to their mass, and may
stay there: chains in different modes of a correct posterior are not a failure, so the
diagnostic is not the between-chain R-hat. It is a stationarity check: the draws of all chains
in the first half of sampling against those in the second half,

.. math::
    \hat R_{\mathrm{stat}} = \sqrt{\frac{\frac{N - 1}{N} W + B}{W}},

with :math:`W` the mean of the two halves' variances and :math:`B` the variance of their means
(:math:`N` draws per half). It exceeds 1 when the draws' distribution drifted while sampling
(the start was not yet the posterior, or the chains still move towards it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from simgen.inference.mcmc import effective_sample_size, hmc_sample, slice_sample
from simgen.terminal import progress_bar

__all__ = ["run_chains", "stationarity_rhat"]


def stationarity_rhat(samples: Tensor) -> Tensor:
    """:math:`\\hat R_{\\mathrm{stat}}` per dimension of ``(draws, chains, d)``: the first and
    the second half of the draws of all chains compared; NaN with fewer than 4 draws."""
    if samples.shape[0] < 4:
        return torch.full(samples.shape[-1:], math.nan, dtype=torch.float64)
    half = samples.shape[0] // 2
    first = samples[:half].reshape(-1, samples.shape[-1]).double()
    second = samples[half : 2 * half].reshape(-1, samples.shape[-1]).double()
    n = len(first)
    within = (first.var(0) + second.var(0)) / 2
    between = torch.stack([first.mean(0), second.mean(0)]).var(0)
    return (((n - 1) / n * within + between) / within.clamp(min=1e-300)).sqrt()


def run_chains(
    log_density: Callable[[Tensor], Tensor],
    init: Tensor,
    m: int,
    n: int,
    sampler: str,
    warmup: int | None,
    thin: int,
    progress: bool | None,
) -> tuple[Tensor, dict]:
    """Run ``c`` chains per posterior for ``m`` posteriors from ``init`` ``(m * c, d)``
    (unconstrained), ``n`` draws per posterior in all.

    Returns:
        ``(m, n, d)`` draws (unconstrained) and diagnostics: ``chains``,
        ``draws_per_chain``, ``warmup``, ``acceptance``, ``evaluations_per_draw``, ``rhat``
        (:func:`stationarity_rhat`, the worst posterior per parameter) and ``ess`` (the
        smallest per parameter).
    """
    chains = len(init) // m
    warmup = warmup if warmup is not None else (100 if sampler == "slice" else 200)
    draws = math.ceil(n / chains)
    run = slice_sample if sampler == "slice" else hmc_sample
    with progress_bar(
        warmup + draws * thin, f"posterior ({sampler})", unit="steps", enabled=progress
    ) as bar:
        result = run(
            log_density, init, draws, warmup=warmup, thin=thin, on_step=lambda: bar.advance(1)
        )
    per_set = result.samples.reshape(draws, m, chains, -1).transpose(0, 1)  # (m, draws, c, d)
    rhat = torch.stack([stationarity_rhat(t) for t in per_set]).amax(0)
    ess = torch.stack([effective_sample_size(t) for t in per_set]).amin(0)
    diagnostics = {
        "chains": chains,
        "draws_per_chain": draws,
        "warmup": warmup,
        "acceptance": result.acceptance,
        "evaluations_per_draw": result.evaluations,
        "rhat": rhat.tolist(),
        "ess": ess.tolist(),
    }
    return per_set.reshape(m, draws * chains, -1)[:, :n], diagnostics
