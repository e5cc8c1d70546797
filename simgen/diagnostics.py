r"""Diagnostics of emulators and posteriors.

``c2st``: the classifier two-sample test (Lopez-Paz & Oquab 2017, arXiv:1610.06545), as used to
score simulation-based inference (Lueckmann et al. 2021, arXiv:2101.04653): the cross-validated
accuracy of a classifier telling two sample sets apart; 0.5 when they are indistinguishable, 1
when they are disjoint.

Calibration of a posterior estimator over pairs :math:`(\theta_i, x_i)` drawn from the joint
:math:`p(\theta) p(x \mid \theta)`:

* ``sbc_ranks`` / ``sbc_uniformity``: simulation-based calibration (Talts et al. 2018,
  arXiv:1804.06788). The rank of :math:`\theta_{i,j}` among :math:`L` posterior draws given
  :math:`x_i` is uniform on :math:`\{0, \dots, L\}` for every parameter :math:`j` exactly
  when the posterior is right on average over the prior predictive.
* ``expected_coverage``: the expected coverage of highest-posterior-density regions (Hermans et
  al. 2022, arXiv:2110.06581). :math:`\theta_i` lies in the HPD region of credibility
  :math:`\gamma` iff the share :math:`r_i` of draws with a higher density than
  :math:`\theta_i` is below :math:`\gamma`; a calibrated posterior has
  :math:`P(r < \gamma) = \gamma` for every :math:`\gamma`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats

__all__ = ["c2st", "coverage_levels", "expected_coverage", "sbc_ranks", "sbc_uniformity"]


def c2st(a: Any, b: Any, folds: int = 5, seed: int = 0, hidden_factor: int = 10) -> float:
    """Classifier two-sample test accuracy between sample sets ``a`` ``(n, d)`` and ``b``
    ``(m, d)``.

    Both sets are standardised with the mean and standard deviation of ``a``; an MLP with two
    hidden layers of ``hidden_factor * d`` units (scikit-learn) is scored by stratified
    ``folds``-fold cross-validation.

    Returns:
        Mean held-out accuracy in ``[0, 1]``.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    a = _flat(a)
    b = _flat(b)
    mean, std = a.mean(0), a.std(0) + 1e-8
    data = np.concatenate([(a - mean) / std, (b - mean) / std])
    labels = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    width = hidden_factor * data.shape[1]
    classifier = MLPClassifier(
        hidden_layer_sizes=(width, width),
        max_iter=1000,
        solver="adam",
        random_state=seed,
        early_stopping=True,
        n_iter_no_change=20,
    )
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(classifier, data, labels, cv=splits, scoring="accuracy").mean())


def _flat(samples: Any) -> np.ndarray:
    samples = _numpy(samples)
    return samples.reshape(len(samples), -1)


def sbc_ranks(theta: Any, draws: Any) -> np.ndarray:
    """SBC ranks of true parameters among posterior draws.

    Args:
        theta: ``(m, d)`` true parameters, one per simulated pair.
        draws: ``(m, L, d)`` posterior draws given each pair's x.

    Returns:
        ``(m, d)`` integer ranks in ``{0, ..., L}``: how many draws lie below the truth.
    """
    theta, draws = _numpy(theta), _numpy(draws)
    return (draws < theta[:, None, :]).sum(axis=1)


def sbc_uniformity(ranks: np.ndarray, draws: int, bins: int | None = None) -> np.ndarray:
    """Chi-square p-value per parameter of the hypothesis that ranks are uniform.

    The ``draws + 1`` possible ranks are grouped into ``bins`` equal groups (default: about
    ``m / 10`` groups, at most 20, so that each expects >= 10 counts, the usual validity
    condition of the chi-square approximation; ``draws + 1`` must be a multiple of ``bins``,
    so the nearest divisor is taken).

    Args:
        ranks: ``(m, d)`` from :func:`sbc_ranks`.
        draws: ``L``, the posterior draws per pair.
        bins: Rank groups.

    Returns:
        ``(d,)`` p-values; small values (e.g. below 0.01 / d) reject calibration.
    """
    m = ranks.shape[0]
    wanted = bins or int(np.clip(m // 10, 2, 20))
    divisors = [b for b in range(2, draws + 2) if (draws + 1) % b == 0]
    bins = min(divisors, key=lambda b: (abs(b - wanted), b))
    counts = np.stack(
        [np.bincount(r * bins // (draws + 1), minlength=bins) for r in ranks.T.astype(int)]
    )
    return stats.chisquare(counts, axis=1).pvalue


def expected_coverage(log_prob_true: Any, log_prob_draws: Any) -> np.ndarray:
    r"""Share of each pair's posterior draws with a higher density than the truth.

    Args:
        log_prob_true: ``(m,)`` posterior log density of the true parameters.
        log_prob_draws: ``(m, L)`` posterior log density of each pair's draws (the same
            unnormalised density: constants cancel).

    Returns:
        ``(m,)`` values :math:`r_i \in [0, 1]`; :math:`\theta_i` lies in the HPD region of
        credibility :math:`\gamma` iff :math:`r_i < \gamma`. Pass them to
        :func:`coverage_levels`.
    """
    true, draws = _numpy(log_prob_true), _numpy(log_prob_draws)
    return (draws > true[:, None]).mean(axis=1)


def coverage_levels(
    r: np.ndarray, levels: np.ndarray | None = None, confidence: float = 0.95
) -> dict[str, np.ndarray]:
    """The expected-coverage curve and a binomial band around the diagonal.

    Args:
        r: ``(m,)`` from :func:`expected_coverage`.
        levels: Credibility levels (default 0.01, 0.02, ..., 0.99).
        confidence: Width of the band within which a calibrated estimator's empirical
            coverage falls (pointwise, from the Binomial(m, level) distribution).

    Returns:
        ``levels``, ``coverage`` (empirical, same shape), ``low`` and ``high`` (the band).
    """
    levels = np.linspace(0.01, 0.99, 99) if levels is None else np.asarray(levels, float)
    m = len(r)
    coverage = (np.asarray(r)[:, None] < levels).mean(axis=0)
    tail = (1 - confidence) / 2
    low = stats.binom.ppf(tail, m, levels) / m
    high = stats.binom.ppf(1 - tail, m, levels) / m
    return {"levels": levels, "coverage": coverage, "low": low, "high": high}


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
