r"""A held standardisation of x given theta, fitted by maximum likelihood before training.

The EDM diffusion models :math:`z = T_\theta(x)` instead of x, with :math:`T_\theta` the
flow's :class:`~simgen.models.flow.ConditionalAffine`: its linear part the least-squares (or
heteroscedastic) Gaussian of x given theta, its MLP a correction in theta (``affine_hidden``).
With ``affine_steps``, :func:`fit_standardization` trains that MLP alone on

.. math::
    \max \; \mathbb{E}\big[\log N(T_\theta(x); 0, I)
        + \log |\det \partial T_\theta / \partial x|\big],

i.e. the best Gaussian of x given theta whose mean, scales (and correlations) are any smooth
function of theta, and then the map is held: the model after it learns only how x given theta
departs from a Gaussian. A Gaussian linear in theta misses most of a simulator whose mean and
noise are nonlinear in theta (the oscillator's: 173 nats per row), and what it misses the
diffusion must learn from unit-scale z where it is hardest, near the data. Where the linear
Gaussian misses little (``min_gain``), the MLP is dropped: its scales and correlations then
vary with theta where the data's shape does not, which the diffusion must undo.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor
from zuko.distributions import DiagNormal, NormalizingFlow

from simgen.models.flow import ConditionalAffine

__all__ = ["fit_standardization", "standardization_nll"]

CHECKS = 20  # held-out evaluations over a fit
EPOCHS_PER_CHECK = 20  # at most this many passes over the rows between two of them
PATIENCE = 4  # checks without a lower held-out loss before the fit stops


def standardization_nll(affine: ConditionalAffine, theta: Tensor, x: Tensor) -> Tensor:
    """:math:`-\\log p(x \\mid \\theta)` under the Gaussian that ``affine`` maps to
    :math:`N(0, I)`, per row: ``theta (b, d_theta)``, ``x (b, d)`` -> ``(b,)``."""
    zeros = torch.zeros_like(x)
    return -NormalizingFlow(affine(theta), DiagNormal(zeros, torch.ones_like(x))).log_prob(x)


def fit_standardization(
    affine: ConditionalAffine,
    theta: Tensor,
    x: Tensor,
    steps: int,
    batch: int = 1024,
    lr: float = 1e-3,
    holdout: float = 0.1,
    patience: int = PATIENCE,
    min_gain: float = 0.0,
) -> float:
    """Train ``affine``'s MLP (its linear part as :meth:`~ConditionalAffine.fit_linear` left
    it) by maximum likelihood on rows ``theta (n, d_theta)``, ``x (n, d)``: up to ``steps``
    Adam steps of ``batch`` random rows (cosine-decayed rate, seeded: the same rows give the
    same fit), the ``holdout`` share of the rows kept aside and the MLP's weights taken where
    their loss was lowest (checked :data:`CHECKS` times, or every :data:`EPOCHS_PER_CHECK`
    epochs where that is sooner; the fit stops after ``patience`` checks in a row without a
    lower one: few rows overfit long before the budget ends).
    ``min_gain``: the MLP is kept only where it lowers the held-out loss of its start by more
    than this many nats per row, and the fit ends at the first check that falls short (the
    rest of the budget rarely closes the gap; the start's weights are restored, an MLP whose
    last layer is zero: the linear Gaussian). Returns the held-out loss, nats per row.
    """
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=generator).to(x.device)
    n_val = max(int(holdout * len(x)), 1)
    val, train = order[:n_val], order[n_val:]
    params = list(affine.hyper.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)

    @torch.no_grad()
    def held_out() -> float:
        losses = [
            standardization_nll(affine, theta[rows], x[rows]).sum() for rows in val.split(8192)
        ]
        return float(torch.stack(losses).sum()) / n_val

    best = start = held_out()
    state = initial = copy.deepcopy(affine.hyper.state_dict())
    epoch = math.ceil(len(train) / batch)
    check, stale = max(min(steps // CHECKS, EPOCHS_PER_CHECK * epoch), 1), 0
    with torch.enable_grad():
        for step in range(1, steps + 1):
            pick = torch.randint(len(train), (min(batch, len(train)),), generator=generator)
            rows = train[pick.to(x.device)]
            loss = standardization_nll(affine, theta[rows], x[rows]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % check == 0 or step == steps:
                current, stale = held_out(), stale + 1
                if current < best:
                    best, state, stale = current, copy.deepcopy(affine.hyper.state_dict()), 0
                if stale >= patience or start - best <= min_gain:
                    break
    if start - best <= min_gain:
        best, state = start, initial
    affine.hyper.load_state_dict(state)
    for p in params:
        p.requires_grad_(False)
    return best
