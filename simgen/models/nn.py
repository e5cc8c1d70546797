"""Network blocks: an MLP, a sinusoidal time embedding, full-precision output layers, and the
least-squares fit that starts the Gaussian parts of the flow and the diffusion denoiser.

Conditioning is by concatenation: a block that needs ``theta`` (or ``t``) receives it as extra
input features.
"""

from __future__ import annotations

import itertools
import math
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MLP", "TimeEmbedding", "cholesky_ridge", "full_precision", "linear_gaussian_fit"]


_HALF = (torch.bfloat16, torch.float16)


def _autocast_on(device: str) -> bool:
    try:
        return torch.is_autocast_enabled(device)
    except TypeError:  # torch < 2.4 takes no device
        return torch.is_autocast_cpu_enabled() if device == "cpu" else torch.is_autocast_enabled()


def _float32_forward(self: nn.Module, *inputs: Tensor) -> Any:
    device = inputs[0].device.type
    if not _autocast_on(device):  # the common case: no context to enter
        return type(self).forward(self, *inputs)
    with torch.autocast(device, enabled=False):
        return type(self).forward(self, *(t.float() if t.dtype in _HALF else t for t in inputs))


def full_precision(module: nn.Module) -> nn.Module:
    """Run ``module`` in float32 even under autocast (half-precision inputs cast up, autocast off
    inside; a float64 module stays float64).

    bf16 autocast rounds a matrix product's outputs to 8 significant bits (relative error up to
    :math:`2^{-9}`): harmless in hidden layers, but in a layer whose outputs are a density's
    parameters it sets a floor on how exactly they can be fitted (a mean in standardised units
    known to 2e-3 where slcp's noise is 2e-4; a triangular solve zuko's transforms would even
    refuse in bf16). So every output layer goes through this, and the hidden layers keep the
    bf16 speed. The instance's ``forward`` is rebound (a bound method, so ``copy.deepcopy``
    binds it to the copy); parameters and state-dict keys are unchanged. Returns ``module``.
    """
    module.forward = types.MethodType(_float32_forward, module)
    return module


class MLP(nn.Sequential):
    """A multi-layer perceptron ``in_features -> hidden... -> out_features`` with SiLU, its last
    layer in float32 under autocast (:func:`full_precision`).

    Args:
        in_features: Input size.
        out_features: Output size.
        hidden: Sizes of the hidden layers.
        zero_last: Initialise the last layer at zero (residual-style heads start at identity).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (128, 128),
        zero_last: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        sizes = [in_features, *hidden]
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(full_precision(nn.Linear(sizes[-1], out_features)))
        super().__init__(*layers)
        if zero_last:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)

    @property
    def bilinear_trace(self) -> bool:
        """Whether :meth:`forward_and_trace` costs one matrix-vector product more than the
        forward pass, whatever ``d`` (two hidden layers), rather than ``d`` times its cost."""
        return sum(isinstance(layer, nn.Linear) for layer in self) == 3

    def forward_and_trace(self, inputs: Tensor, d: int) -> tuple[Tensor, Tensor]:
        r"""The output ``(n, out)`` for ``inputs (n, in)`` and the trace of its Jacobian with
        respect to the first ``d`` inputs, :math:`\sum_{i < d} \partial y_i / \partial x_i`
        ``(n,)``, exactly, in one pass.

        With :math:`s_l = \mathrm{SiLU}'(a_l)` at the pre-activations :math:`a_l`, the Jacobian
        is :math:`W_{L+1} \mathrm{diag}(s_L) W_L \cdots \mathrm{diag}(s_1) W_1`. With two
        hidden layers its trace is a bilinear form in the activations' slopes,

        .. math::
            \mathrm{tr}\, J = s_2^\top C s_1, \qquad
            C = W_2 \circ (W_{1,:d}\, W_{3,:d})^\top ,

        with :math:`C` independent of the input: one more matrix-vector product per row,
        whatever ``d``. Otherwise the Jacobian's ``d`` columns are carried through the layers
        (:math:`T \leftarrow T W^\top` through a linear layer, times :math:`s` through an
        activation), as batched matrix products."""
        if not self.bilinear_trace:
            return self._carried_trace(inputs, d)
        slopes = []
        h = inputs
        for layer in self:
            if isinstance(layer, nn.SiLU):
                slopes.append(_silu_slope(h))
            h = layer(h)
        first, middle, last = (layer.weight for layer in self if isinstance(layer, nn.Linear))
        bilinear = middle * (first[:, :d] @ last[:d]).T  # (h2, h1)
        return h, ((slopes[0] @ bilinear.T) * slopes[1]).sum(-1)

    def _carried_trace(self, inputs: Tensor, d: int) -> tuple[Tensor, Tensor]:
        """:meth:`forward_and_trace` by the Jacobian's ``d`` columns carried forward."""
        h, tangent = inputs, None  # tangent: (n, d, features)
        for layer in self:
            if isinstance(layer, nn.Linear):
                weight = layer.weight
                if tangent is None:
                    tangent = weight[:, :d].T.expand(len(h), d, -1)
                else:
                    tangent = tangent @ weight.T
            else:
                tangent = tangent * _silu_slope(h)[:, None, :]
            h = layer(h)
        return h, tangent.diagonal(dim1=1, dim2=2).sum(-1)


def _silu_slope(a: Tensor) -> Tensor:
    r""":math:`\mathrm{SiLU}'(a) = s (1 + a (1 - s))`, :math:`s = \sigma(a)`."""
    s = torch.sigmoid(a)
    return s * (1 + a * (1 - s))


class TimeEmbedding(nn.Module):
    r"""Sinusoidal features of a time :math:`t \in [0, 1]` (Vaswani et al. 2017, arXiv:1706.03762):
    :math:`(\sin(\omega_k t), \cos(\omega_k t))_k` with log-spaced :math:`\omega_k \in [1, 1000]`.

    Args:
        features: Output size (even).
    """

    def __init__(self, features: int = 32) -> None:
        super().__init__()
        half = features // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half))
        self.register_buffer("freqs", freqs)

    def forward(self, t: Tensor) -> Tensor:
        """``t`` of shape ``(*,)`` -> features ``(*, features)``."""
        angles = t[..., None] * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


@torch.no_grad()
def linear_gaussian_fit(
    theta: Tensor, x: Tensor, full: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The least-squares fit :math:`x \approx W \theta + b` over a batch ``theta (n, d_theta)``,
    ``x (n, d_x)``, in double precision.

    Returns:
        ``W (d_x, d_theta)``, ``b (d_x,)`` and the standard deviation of each feature's
        residuals ``(d_x,)`` (at least 1e-6), all double; ``full``: instead of the standard
        deviations, the lower Cholesky factor ``(d_x, d_x)`` of the residuals' covariance (a
        ridge of 1e-6 of its mean variance where the features are collinear).
    """
    design = torch.cat([theta, torch.ones_like(theta[:, :1])], dim=1).double()
    coef = torch.linalg.lstsq(design, x.double()).solution  # (d_theta + 1, d_x)
    residual = x.double() - design @ coef
    if not full:
        return coef[:-1].T, coef[-1], residual.std(0).clamp_min(1e-6)
    return coef[:-1].T, coef[-1], cholesky_ridge(torch.cov(residual.T).reshape(x.shape[1], -1))


def cholesky_ridge(covariance: Tensor) -> Tensor:
    """The lower Cholesky factor of ``covariance (d, d)``, with a ridge of 1e-6 of its mean
    variance added where it is singular (collinear features)."""
    factor, singular = torch.linalg.cholesky_ex(covariance)
    if singular:
        ridge = 1e-6 * covariance.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(len(covariance), dtype=covariance.dtype, device=covariance.device)
        factor = torch.linalg.cholesky(covariance + ridge * eye)
    return factor
