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

Physical summary statistics, to compare emulated with simulated samples the way the fields'
scientists do: the angle-averaged ``power_spectrum`` and ``pixel_pdf`` of 2-D fields; the
``radius_of_gyration``, ``bond_lengths`` and ``pair_distances`` of molecular configurations;
and ``wasserstein_relative`` to score two samples of a scalar statistic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats

__all__ = [
    "bond_lengths",
    "c2st",
    "coverage_levels",
    "expected_coverage",
    "pair_distances",
    "pixel_pdf",
    "power_spectrum",
    "radial_average",
    "radius_of_gyration",
    "sbc_ranks",
    "sbc_uniformity",
    "wasserstein_relative",
]


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


def radial_average(
    values: Any, box: float | None = None, bins: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Average of values on the DFT grid of ``N`` x ``N`` maps in bins of :math:`|k|`.

    Args:
        values: ``(n, N, N)`` (or ``(N, N)``) values at the wave vectors :math:`k_m` of
            ``numpy.fft.fft2`` (e.g. squared DFTs, or a model spectrum on the grid).
        box: Side length :math:`L` of the maps (default ``N``: k in units of 1 / pixel).
        bins: Linear bins of :math:`|k|` from :math:`k_f = 2\pi / L` to the Nyquist
            frequency :math:`\pi N / L` (default ``N // 2``); the mean mode is left out.

    Returns:
        ``k`` ``(bins,)`` mean :math:`|k|` per bin, the averages ``(n, bins)``, and ``modes``
        ``(bins,)`` wave vectors per bin.
    """
    values = _numpy(values)
    values = values.reshape(-1, *values.shape[-2:])
    n = values.shape[-1]
    box = float(box or n)
    bins = bins or n // 2
    freq = 2 * np.pi * np.fft.fftfreq(n, d=box / n)
    k = np.hypot(freq[:, None], freq[None, :]).ravel()
    edges = np.linspace(2 * np.pi / box, np.pi * n / box, bins + 1)
    edges[-1] *= 1 + 1e-9
    which = np.digitize(k, edges) - 1
    inside = (which >= 0) & (which < bins)
    modes = np.bincount(which[inside], minlength=bins)
    flat = values.reshape(len(values), -1)
    sums = np.stack([np.bincount(which[inside], v[inside], minlength=bins) for v in flat])
    k_mean = np.bincount(which[inside], k[inside], minlength=bins) / np.maximum(modes, 1)
    return k_mean, sums / np.maximum(modes, 1), modes


def power_spectrum(
    maps: Any, box: float | None = None, bins: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Angle-averaged power spectrum of periodic square maps ``(n, N, N)``.

    :math:`\hat P(k_b) = \frac{L^2}{N^4} \langle |\tilde x_m|^2 \rangle_{m \in b}`, the
    mean over the wave vectors of bin :math:`b` of the squared DFT, in the convention where a
    Gaussian field of spectrum :math:`P` has :math:`\langle |\tilde x_m|^2 \rangle = N^4
    P(k_m) / L^2`. Bins and returns as :func:`radial_average` (``power`` per map).
    """
    maps = _numpy(maps)
    n = maps.shape[-1]
    box = float(box or n)
    return radial_average(np.abs(np.fft.fft2(maps)) ** 2 * box**2 / n**4, box, bins)


def pixel_pdf(maps: Any, edges: np.ndarray) -> np.ndarray:
    """Histogram density of all pixel values of ``maps`` over bin ``edges``."""
    return np.histogram(_numpy(maps).ravel(), bins=edges, density=True)[0]


def radius_of_gyration(positions: Any) -> np.ndarray:
    r""":math:`R_g = \sqrt{\langle |r_i - \bar r|^2 \rangle_i}`: ``(n, beads, 3)`` -> ``(n,)``."""
    r = _numpy(positions)
    return np.sqrt(((r - r.mean(1, keepdims=True)) ** 2).sum(-1).mean(-1))


def bond_lengths(positions: Any) -> np.ndarray:
    """Distances between consecutive beads: ``(n, beads, 3)`` -> ``(n, beads - 1)``."""
    return np.linalg.norm(np.diff(_numpy(positions), axis=1), axis=-1)


def pair_distances(positions: Any) -> np.ndarray:
    """All distances between beads: ``(n, beads, 3)`` -> ``(n, beads (beads - 1) / 2)``."""
    r = _numpy(positions)
    i, j = np.triu_indices(r.shape[1], k=1)
    return np.linalg.norm(r[:, i] - r[:, j], axis=-1)


def wasserstein_relative(simulated: Any, emulated: Any) -> float:
    """1-Wasserstein distance between two samples of a scalar, over the standard deviation of
    the simulated one: 0 for equal laws, about 0.1 for a shift of a tenth of the spread."""
    a, b = _numpy(simulated).ravel(), _numpy(emulated).ravel()
    return float(stats.wasserstein_distance(a, b) / max(a.std(), 1e-12))


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
