r"""Training and validation batches for :func:`simgen.fit`, standardised, from memory or
streamed from the HDF5 file.

Rows ``[0, n_train)`` train and the last ``round(val_fraction * N)`` validate (rows are i.i.d.
draws from the prior, so the tail is a fair hold-out). Under data-parallel training each of the
``W`` ranks takes its own contiguous share of ``n_train // W`` training rows (the remainder,
fewer than ``W`` rows, is left out) and of the validation rows, and reads only those: every rank
then makes the same number of steps per epoch, as DistributedDataParallel requires.

Standardisation :math:`v = (\theta - \mu_\theta) / s_\theta`, :math:`u = (x - \mu_x) / s_x` uses
the moments of all training rows, summed over the ranks.

A data set that fits in ``in_memory_bytes`` (per rank) is read once onto the training device; a
larger one streams every epoch: a background thread reads chunk-aligned spans in shuffled order,
mixes rows within a buffer of spans (:meth:`Store.batches`) and prefetches batches (into pinned
memory on CUDA) while the model trains, so memory stays bounded by the buffer whatever the size
of the file. (A DataLoader worker process would copy every batch through shared memory: on
64x64 maps that capped the loader at a quarter of a thread's rate.)
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch import Tensor

from simgen.data.store import Store
from simgen.errors import UsageError
from simgen.train.distributed import Ranks

if TYPE_CHECKING:
    from simgen.train.config import TrainConfig

__all__ = ["TrainingData", "prefetch"]

VALIDATION_BATCH = 4096
MOMENT_BYTES = 32 << 20  # of x per batch while summing the moments
T, U = TypeVar("T"), TypeVar("U")


def prefetch(
    items: Iterable[T], depth: int = 4, transform: Callable[[T], U] | None = None
) -> Iterator[U]:
    """Iterate over ``transform(item)`` for ``items`` while a background thread produces the
    next ``depth`` (HDF5 reads, shuffling and the transform overlap the training step, whose
    torch kernels release the GIL). An error in the thread is raised here; leaving the loop
    early stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item if transform is None else transform(item)):
                    return
            put(end)
        except BaseException as error:  # noqa: BLE001 (handed to the consumer, raised there)
            put(error)

    worker = threading.Thread(target=produce, name="simgen-prefetch", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _moments(
    store: Store, rows: tuple[int, int], ranks: Ranks, pool_x: bool = False
) -> dict[str, Tensor]:
    """Means and standard deviations of theta and flattened x over this rank's ``rows``,
    combined over the ranks: :math:`\\mu = \\sum x / n`, :math:`s^2 = \\sum x^2 / n - \\mu^2`;
    with ``pool_x`` one mean and standard deviation over all of x's values."""
    d_theta, d_x = len(store.parameters), math.prod(store.x_shape)
    sums = np.zeros(2 * (d_theta + d_x) + 1)
    batch = max(1, MOMENT_BYTES // (4 * d_x))
    for theta, x in store.batches(batch, start=rows[0], stop=rows[1]):
        t, u = theta.double().numpy(), x.reshape(len(x), -1).double().numpy()
        sums += np.concatenate([t.sum(0), (t**2).sum(0), u.sum(0), (u**2).sum(0), [len(t)]])
    sums = ranks.sum(torch.from_numpy(sums)).numpy()
    n = sums[-1]
    parts = np.split(sums[:-1], np.cumsum([d_theta, d_theta, d_x]))
    if pool_x:
        parts[2:] = [np.full(d_x, part.mean()) for part in parts[2:]]
    out = {}
    for key, (first, second) in (("theta", parts[:2]), ("x", parts[2:])):
        mean = first / n
        std = np.sqrt(np.maximum(second / n - mean**2, 0.0)).clip(min=1e-6)
        out[f"{key}_mean"] = torch.as_tensor(mean, dtype=torch.float32)
        out[f"{key}_std"] = torch.as_tensor(std, dtype=torch.float32)
    return out


class TrainingData:
    """This rank's standardised training and validation batches.

    Args:
        store: The data file.
        tc: The training settings (``batch_size``, ``val_fraction``, ``in_memory_bytes``,
            ``shuffle_buffer``).
        ranks: This process among the data-parallel ranks.

    Attributes:
        n_train: Training rows of all ranks together.
        batch_size: Rows per step on this rank (``tc.batch_size / world``).
        norm: ``theta_mean``, ``theta_std``, ``x_mean``, ``x_std`` (flat float32 tensors).
        streaming: Whether batches stream from the file (the data exceed ``in_memory_bytes``).
        pool_x: Standardise every value of x with one mean and standard deviation (a
            stationary field: a pixel-wise standardisation would differ from pixel to pixel
            by sampling noise alone, and break the symmetry a spectral model relies on).
        norm: A standardisation to use instead of the training rows' moments (an emulator's,
            for a model trained beside it).
    """

    def __init__(
        self,
        store: Store,
        tc: TrainConfig,
        ranks: Ranks,
        pool_x: bool = False,
        norm: dict[str, Tensor] | None = None,
    ) -> None:
        self.store, self.tc, self.ranks = store, tc, ranks
        n = len(store)
        n_val = max(ranks.world, round(tc.val_fraction * n))
        if tc.batch_size % ranks.world:
            raise UsageError(
                f"batch size {tc.batch_size} does not split evenly over {ranks.world} processes; "
                f"use a multiple of {ranks.world}"
            )
        self.batch_size = tc.batch_size // ranks.world
        share, val_share = (n - n_val) // ranks.world, n_val // ranks.world
        if share < 1 or val_share < 1:
            raise UsageError(
                f"{store.path} has {n} rows: too few to share over {ranks.world} processes; "
                "simulate more or start fewer"
            )
        self.n_train = share * ranks.world
        r = ranks.rank
        self.train_rows = (r * share, (r + 1) * share)
        self.val_rows = (n - n_val + r * val_share, n - n_val + (r + 1) * val_share)
        self.norm = norm if norm is not None else _moments(store, self.train_rows, ranks, pool_x)
        scale = 1 / torch.cat([self.norm["theta_std"], self.norm["x_std"]])
        shift = -torch.cat([self.norm["theta_mean"], self.norm["x_mean"]]) * scale
        self._affine = (scale.to(ranks.device), shift.to(ranks.device))
        row_bytes = 4 * (math.prod(store.x_shape) + len(store.parameters))
        self.streaming = (share + val_share) * row_bytes > tc.in_memory_bytes
        self.cached: dict[str, tuple[Tensor, Tensor]] = {}
        if not self.streaming:
            for name, (lo, hi) in (("train", self.train_rows), ("val", self.val_rows)):
                theta = torch.from_numpy(store.file["theta"][lo:hi])
                self.cached[name] = self.standardise(theta, torch.from_numpy(store.x[lo:hi]))

    def standardise(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(theta (b, d_theta), x (b, *x_shape))`` -> ``(v (b, d_theta), u (b, d_x))`` on
        this rank's device (the copy is asynchronous from pinned memory)."""
        device, d = self.ranks.device, theta.shape[-1]
        theta, x = theta.to(device, non_blocking=True), x.to(device, non_blocking=True)
        scale, shift = self._affine
        v = torch.addcmul(shift[:d], theta, scale[:d])
        u = torch.addcmul(shift[d:], x.reshape(len(x), -1), scale[d:])
        return v, u

    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (the same on every rank)."""
        return math.ceil((self.train_rows[1] - self.train_rows[0]) / self.batch_size)

    def epoch(self, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled pass over this rank's training rows, in :meth:`steps_per_epoch`
        batches of ``(v (b, d_theta), u (b, d_x))`` on this rank's device."""
        if not self.streaming:
            v, u = self.cached["train"]
            order = torch.randperm(len(v), generator=torch.Generator().manual_seed(seed))
            order = order.to(v.device)
            for i in range(0, len(v), self.batch_size):
                idx = order[i : i + self.batch_size]
                yield v[idx], u[idx]
            return
        lo, hi = self.train_rows
        batches = self.store.batches(
            self.batch_size,
            start=lo,
            stop=hi,
            shuffle=True,
            seed=seed,
            buffer=self.tc.shuffle_buffer,
        )
        if self.ranks.device.type == "cuda":  # page-locked, then copied asynchronously
            for theta, x in prefetch(batches, transform=lambda b: [t.pin_memory() for t in b]):
                yield self.standardise(theta, x)
        else:
            yield from prefetch(batches, transform=lambda b: self.standardise(*b))

    def validation(self) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's validation rows in order, in batches of ``(v, u)`` on its device."""
        if not self.streaming:
            v, u = self.cached["val"]
            for i in range(0, len(v), VALIDATION_BATCH):
                yield v[i : i + VALIDATION_BATCH], u[i : i + VALIDATION_BATCH]
            return
        lo, hi = self.val_rows
        for theta, x in self.store.batches(VALIDATION_BATCH, start=lo, stop=hi):
            yield self.standardise(theta, x)
