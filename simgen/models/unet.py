r"""A small conditional U-Net for square maps (Ronneberger et al. 2015, arXiv:1505.04597, in
the residual form of Ho et al. 2020, arXiv:2006.11239: residual blocks at each resolution,
self-attention at the coarsest), the denoiser of the diffusion family when x is a 2-D field.

The conditioning vector (time embedding and theta) modulates every residual block by a
per-channel scale and shift (FiLM, Perez et al. 2017, arXiv:1709.07871):
:math:`h \mapsto h \odot (1 + \gamma(c)) + \beta(c)`. Convolutions share weights across
positions, so the network learns a translation-equivariant denoiser from far fewer examples than
an MLP over the flattened pixels; with ``circular`` padding it also respects periodic boundaries
(the maps of ``cosmology`` are periodic).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from simgen.models.nn import full_precision

__all__ = ["UNet"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, FiLM-modulated by the conditioning, with a residual path."""

    def __init__(self, c_in: int, c_out: int, cond: int, padding_mode: str) -> None:
        super().__init__()
        conv = {"kernel_size": 3, "padding": 1, "padding_mode": padding_mode}
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, **conv)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, **conv)
        self.film = nn.Linear(cond, 2 * c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        """``h`` ``(b, c_in, s, s)``, ``c`` ``(b, cond)`` -> ``(b, c_out, s, s)``."""
        out = self.conv1(nn.functional.silu(self.norm1(h)))
        scale, shift = self.film(c)[..., None, None].chunk(2, dim=1)
        out = self.norm2(out) * (1 + scale) + shift
        return self.skip(h) + self.conv2(nn.functional.silu(out))


class _Attention(nn.Module):
    """Self-attention over the positions of a (coarse) feature map, with a residual path:
    long-range structure that convolutions of a few pixels reach only through depth."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        nn.init.zeros_(self.attention.out_proj.weight)  # starts as the identity
        nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, h: Tensor) -> Tensor:
        """``h`` ``(b, c, s, s)`` -> ``(b, c, s, s)``."""
        b, c, height, width = h.shape
        tokens = self.norm(h).flatten(2).transpose(1, 2)  # (b, s*s, c)
        out, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return h + out.transpose(1, 2).reshape(b, c, height, width)


class UNet(nn.Module):
    """Maps ``(x (b, side * side), c (b, cond))`` to ``(b, side * side)``.

    Args:
        side: The maps are ``side x side``; ``side`` must be divisible by
            ``2 ** (len(channels) - 1)``.
        cond: Size of the conditioning vector.
        channels: Channels at each resolution, finest first; each further entry halves the
            resolution.
        circular: Periodic (circular) padding instead of zeros.
        attention: Self-attention between the two residual blocks at the coarsest resolution.
    """

    def __init__(
        self,
        side: int,
        cond: int,
        channels: Sequence[int] = (32, 64),
        circular: bool = True,
        attention: bool = True,
    ) -> None:
        super().__init__()
        self.side = side
        pad = "circular" if circular else "zeros"
        self.stem = nn.Conv2d(1, channels[0], 3, padding=1, padding_mode=pad)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        for a, b in itertools.pairwise(channels):
            self.down.append(_ResBlock(a, a, cond, pad))
            self.pool.append(nn.Conv2d(a, b, 3, stride=2, padding=1, padding_mode=pad))
        self.middle = _ResBlock(channels[-1], channels[-1], cond, pad)
        self.attention = _Attention(channels[-1]) if attention else nn.Identity()
        self.middle2 = _ResBlock(channels[-1], channels[-1], cond, pad)
        self.up = nn.ModuleList()
        self.unpool = nn.ModuleList()
        for a, b in itertools.pairwise(reversed(channels)):
            self.unpool.append(nn.ConvTranspose2d(a, b, 2, stride=2))
            self.up.append(_ResBlock(2 * b, b, cond, pad))
        self.head = nn.Sequential(
            _norm(channels[0]), nn.SiLU(), full_precision(nn.Conv2d(channels[0], 1, 1))
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x`` ``(b, side * side)``, ``c`` ``(b, cond)`` -> ``(b, side * side)``."""
        h = self.stem(x.reshape(-1, 1, self.side, self.side))
        skips = []
        for block, pool in zip(self.down, self.pool, strict=True):
            h = block(h, c)
            skips.append(h)
            h = pool(h)
        h = self.middle2(self.attention(self.middle(h, c)), c)
        for unpool, block in zip(self.unpool, self.up, strict=True):
            h = block(torch.cat([unpool(h), skips.pop()], dim=1), c)
        return self.head(h).reshape(x.shape)
