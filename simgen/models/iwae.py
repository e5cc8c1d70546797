r"""Importance-weighted estimates for latent-variable models :math:`p(x) = \int p(x \mid u)
p(u) \, du` with a proposal :math:`q(u \mid x)` (the VAE's encoder; theta left implicit).

With :math:`u_k \sim q` and weights :math:`w_k = p(x \mid u_k) p(u_k) / q(u_k \mid x)`,

.. math::
    \hat p_K = \frac1K \sum_{k=1}^K w_k, \qquad E[\hat p_K] = p(x), \qquad
    \mathcal L_K = E[\log \hat p_K] \le \log p(x),

the importance-weighted bound (IWAE, Burda et al. 2015, arXiv:1509.00519), which rises with K
to :math:`\log p(x)` (:math:`\mathcal L_1` is the ELBO); its gap is
:math:`\approx \mathrm{Var}[w] / (2 K p^2)`. Training maximises :math:`\mathcal L_K` with the
doubly reparameterised gradient of Tucker et al. 2018 (DReG, arXiv:1810.04152): the model's
parameters get :math:`\sum_k \tilde w_k \nabla \log w_k`, the proposal's
:math:`\sum_k \tilde w_k^2 \, \partial_u \log w_k \, \nabla u_k` with its density's parameters
held (:math:`\tilde w = w / \sum w`), which removes the score-function term whose variance makes
the plain IWAE gradient of the proposal vanish in signal as K grows (Rainforth et al. 2018).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["dreg_objective", "iwae_bound", "log_spread"]


def iwae_bound(log_w: Tensor) -> Tensor:
    r""":math:`\log \hat p_K = \log \frac1K \sum_k w_k` from ``log_w (K, *)`` -> ``(*)``."""
    return log_w.logsumexp(0) - math.log(log_w.shape[0])


def log_spread(log_w: Tensor) -> Tensor:
    r"""Standard error of :math:`\log \hat p_K` (delta method: the standard error of the mean
    weight over the mean), ``log_w (K, *)`` -> ``(*)``, in nats."""
    k = log_w.shape[0]
    ratio = (log_w - log_w.logsumexp(0)).exp() * k  # w_k / mean(w)
    return (ratio.var(0) / k).sqrt()


def dreg_objective(log_w: Tensor, u: Tensor) -> Tensor:
    r""":math:`\mathcal L_K` per row, ``(*)``, whose gradient is DReG's.

    ``log_w (K, *)`` must be :math:`\log p(x, u_k) - \log q(u_k)` with :math:`q`'s parameters
    detached and ``u (K, *, latent)`` the reparameterised draws it was computed at: the
    gradients reaching ``u`` are scaled by :math:`\tilde w_k` once more, so that the proposal's
    parameters (which enter only through ``u``) get weights :math:`\tilde w_k^2`."""
    w = torch.softmax(log_w.detach(), dim=0)
    if u.requires_grad:
        u.register_hook(lambda grad: grad * w[..., None])
    surrogate = (w * log_w).sum(0)
    return iwae_bound(log_w).detach() + surrogate - surrogate.detach()
