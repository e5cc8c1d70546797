"""The single writer of a data file: appends simulation tasks from a background thread."""

from __future__ import annotations

import os
import queue
import threading
from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Appender"]


def _extend(dataset: h5py.Dataset, rows: list[np.ndarray]) -> None:
    """Append the row blocks ``rows`` to ``dataset`` with one resize, no concatenation."""
    total = sum(block.shape[0] for block in rows)
    if total == 0:
        return
    start = dataset.shape[0]
    dataset.resize(start + total, axis=0)
    for block in rows:
        if block.shape[0]:
            _write(dataset, start, block)
            start += block.shape[0]


def _write(dataset: h5py.Dataset, start: int, block: np.ndarray) -> None:
    """``dataset[start : start + len(block)] = block``, the HDF5 chunks that the rows cover
    whole written straight to the file (``H5Dwrite_chunk``: no chunk cache, no conversion),
    which halves the cost of writing; the rest through the usual path."""
    size = dataset.chunks[0]
    direct = (
        start % size == 0
        and dataset.chunks[1:] == block.shape[1:]  # a chunk holds whole rows
        and block.dtype == dataset.dtype
        and block.flags.c_contiguous
        and dataset.id.get_create_plist().get_nfilters() == 0
    )
    whole = block.shape[0] // size * size if direct else 0
    zeros = (0,) * (block.ndim - 1)
    for lo in range(0, whole, size):
        dataset.id.write_direct_chunk((start + lo, *zeros), block[lo : lo + size])
    if whole < block.shape[0]:
        dataset[start + whole : start + block.shape[0]] = block[whole:]


class Appender:
    """Appends simulation tasks to an open data file, in a background thread.

    Successful rows go to ``theta`` and ``x``, failed ones to ``failed/theta``, and a line
    ``(task index, rows kept, rows failed)`` to ``chunks``. A writer thread buffers rows up to
    ``buffer_bytes``, writes them with one resize per dataset, and (``sync``) flushes the file to
    disk as it goes, so that writing overlaps simulating (h5py and fsync release the GIL) and the
    final fsync has little left to do. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, f: h5py.File, buffer_bytes: int = 4 << 20, sync: bool = True) -> None:
        self.f, self.buffer_bytes, self.sync = f, buffer_bytes, sync
        self._buffers: dict[str, list[np.ndarray]] = {
            "theta": [],
            "x": [],
            "failed/theta": [],
            "chunks": [],
        }
        self._bytes = 0
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="simgen-writer", daemon=True)
        self._thread.start()

    def add(self, chunk: int, theta: np.ndarray, x: np.ndarray, ok: np.ndarray) -> None:
        """Queue one task's rows ``theta (m, d)``, ``x (m, *x_shape)``, ``ok (m,)``."""
        if self._error is not None:
            raise self._error
        self._queue.put((chunk, theta, x, ok))

    def close(self) -> None:
        """Write everything queued, stop the thread, and raise its error if it had one."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        item = ()
        try:
            while (item := self._queue.get()) is not None:
                self._buffer(*item)
                if self._bytes >= self.buffer_bytes:
                    self._flush()
            self._flush()
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread)
            self._error = error
            while item is not None:  # unblock a producer waiting on a full queue, up to close()
                item = self._queue.get()

    def _buffer(self, chunk: int, theta: np.ndarray, x: np.ndarray, ok: np.ndarray) -> None:
        if ok.all():
            self._buffers["theta"].append(theta)
            self._buffers["x"].append(x)
        else:
            self._buffers["theta"].append(theta[ok])
            self._buffers["x"].append(x[ok])
            self._buffers["failed/theta"].append(theta[~ok])
        self._buffers["chunks"].append(np.array([[chunk, ok.sum(), (~ok).sum()]], np.int64))
        self._bytes += theta.nbytes + x.nbytes

    def _flush(self) -> None:
        for name, rows in self._buffers.items():
            _extend(self.f[name], rows)
            rows.clear()
        self._bytes = 0
        if self.sync:
            self.f.flush()
            os.fsync(self.f.id.get_vfd_handle())
