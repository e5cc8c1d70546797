"""How many CPU threads torch runs on: a block with a set count, and the count a fit uses.

torch's default, one intra-op thread per core, splits every matrix product across all cores.
For the small products of MLP training (batches of a few hundred rows by layers of a few
hundred units) the split costs more than it saves, and beside any other busy process it
collapses: each step waits for the thread whose core is taken (measured on 2 cores:
``benchmarks/results/threads.json``, ``python -m benchmarks.threads``). Convolutional
networks on maps have products large enough to pay for more cores, as long as none of them
is taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["fit_threads", "torch_threads"]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads inside the block, and restore the count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_threads(net: nn.Module, requested: int | None = None) -> int:
    """Intra-op threads of a CPU fit of ``net``: ``requested`` when given, else one for
    networks without convolutions, and for networks with them all cores but one (at least
    one), which leaves a core to another busy process instead of waiting for it at every
    product."""
    if requested is not None:
        return requested
    convolutional = any(isinstance(m, nn.Conv2d) for m in net.modules())
    return max(1, torch.get_num_threads() - 1) if convolutional else 1
