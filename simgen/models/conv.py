"""Convolutional encoder and decoder for square maps, the networks of the VAE when x is a 2-D
field: strided convolutions halve the resolution level by level (translation-equivariant
features, far fewer weights than an MLP over the pixels), an MLP joins theta at the bottleneck.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from simgen.models.nn import MLP, full_precision

__all__ = ["ConvDecoder", "ConvEncoder"]


def _padding(circular: bool) -> str:
    return "circular" if circular else "zeros"


class ConvEncoder(nn.Module):
    """``(x (*, side * side), theta (*, d_theta))`` -> ``(*, out_features)``.

    Args:
        side: The maps are ``side x side``; divisible by ``2 ** len(channels)``.
        d_theta: Size of theta.
        out_features: Output size (the encoder's Gaussian parameters).
        channels: Channels after each halving of the resolution.
        hidden: Hidden sizes of the MLP after the convolutions.
        circular: Periodic padding.
    """

    def __init__(
        self,
        side: int,
        d_theta: int,
        out_features: int,
        channels: Sequence[int] = (16, 32, 64),
        hidden: Sequence[int] = (256,),
        circular: bool = True,
    ) -> None:
        super().__init__()
        self.side = side
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1, padding_mode=_padding(circular)),
                nn.SiLU(),
            ]
            c_in = c
        self.convs = nn.Sequential(*layers, nn.Flatten())
        flat = channels[-1] * (side // 2 ** len(channels)) ** 2
        self.head = MLP(flat + d_theta, out_features, tuple(hidden))

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        batch = x.shape[:-1]
        h = self.convs(x.reshape(-1, 1, self.side, self.side))
        out = self.head(torch.cat([h, theta.reshape(-1, theta.shape[-1])], dim=-1))
        return out.reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """``(z (*, latent), theta (*, d_theta))`` -> ``(*, maps * side * side)``: ``maps`` output
    maps per input, flattened map after map (for the VAE: the mean map, then the log-scale map).

    Args:
        side: The maps are ``side x side``; divisible by ``2 ** len(channels)``.
        in_features: Size of ``z`` and theta together.
        maps: Output maps.
        channels: Channels at each resolution, coarsest last (the mirror of the encoder's).
        hidden: Hidden sizes of the MLP before the convolutions.
    """

    def __init__(
        self,
        side: int,
        in_features: int,
        maps: int = 2,
        channels: Sequence[int] = (16, 32, 64),
        hidden: Sequence[int] = (256,),
    ) -> None:
        super().__init__()
        self.side, self.coarse, self.top = side, side // 2 ** len(channels), channels[-1]
        self.head = MLP(in_features, self.top * self.coarse**2, tuple(hidden))
        layers: list[nn.Module] = []
        widths = [*reversed(channels), channels[0]]
        for a, b in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.SiLU()]
        layers.append(full_precision(nn.Conv2d(channels[0], maps, 3, padding=1)))
        self.convs = nn.Sequential(*layers)

    def forward(self, z: Tensor, theta: Tensor) -> Tensor:
        batch = z.shape[:-1]
        h = self.head(torch.cat([z, theta], dim=-1).reshape(-1, z.shape[-1] + theta.shape[-1]))
        out = self.convs(h.reshape(-1, self.top, self.coarse, self.coarse))
        return out.reshape(*batch, -1)
