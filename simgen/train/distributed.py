"""Data-parallel training under ``torchrun``: joining the process group, and the reductions
that keep every rank's decisions identical.

``torchrun --nproc-per-node N -m simgen fit ...`` starts N copies of the same command with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment; :func:`setup` reads them and
joins the group (NCCL on GPUs, gloo on CPU). A plain run sees no ``WORLD_SIZE`` and stays a
single process with no ``torch.distributed`` at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from simgen.errors import UsageError

__all__ = ["Ranks", "is_main_process", "setup"]


def is_main_process() -> bool:
    """True outside torchrun, and on rank 0 under it (the rank that prints and writes)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the ``world`` processes of a data-parallel fit.

    Attributes:
        device: The device this rank trains on (``cuda:LOCAL_RANK`` on GPUs).
        rank: This process's index, 0 .. world - 1; rank 0 prints and writes files.
        world: Number of processes (1: no process group).
        owns_group: Whether :func:`setup` created the process group (and tears it down).
    """

    device: torch.device
    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints, checkpoints and writes the model."""
        return self.rank == 0

    def sum(self, values: Tensor) -> Tensor:
        """Element-wise sum of ``values`` over the ranks (identical on every rank after)."""
        if self.world == 1:
            return values
        out = values.detach().to(self.device, torch.float64).clone()
        torch.distributed.all_reduce(out)
        return out.cpu()

    def mean(self, values: Tensor) -> Tensor:
        """Element-wise mean of ``values`` over the ranks."""
        return self.sum(values) / self.world if self.world > 1 else values

    def close(self) -> None:
        """Leave the process group when :func:`setup` created it."""
        if self.owns_group:
            torch.distributed.destroy_process_group()


def setup(device: torch.device) -> Ranks:
    """Join the torchrun process group described by the environment, if any.

    Args:
        device: The device asked for (``cpu`` or ``cuda``); under torchrun on GPUs each rank
            takes ``cuda:LOCAL_RANK``.

    Returns:
        The rank, world size and device of this process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UsageError(
                f"rank {rank} wants GPU {local}, but this node has {torch.cuda.device_count()}: "
                "give torchrun --nproc-per-node at most the number of GPUs"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(device, rank=rank, world=world, owns_group=owns)
