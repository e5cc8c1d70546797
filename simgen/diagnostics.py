"""Diagnostics of emulators and posteriors.

``c2st``: the classifier two-sample test (Lopez-Paz & Oquab 2017, arXiv:1610.06545), as used to
score simulation-based inference (Lueckmann et al. 2021, arXiv:2101.04653): the cross-validated
accuracy of a classifier telling two sample sets apart; 0.5 when they are indistinguishable, 1
when they are disjoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["c2st"]


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
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples, dtype=np.float64)
    return samples.reshape(len(samples), -1)
