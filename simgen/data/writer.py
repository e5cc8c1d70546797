"""The single writer of a data file: appends simulation tasks from a background thread."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from simgen.atomic import fsync_path

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Appender"]

_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class _Column:
    """An HDF5 dataset that grows by rows, its properties read once: each of h5py's high-level
    accessors costs tens of microseconds while holding the GIL that the simulating thread
    needs."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset, self.rows, self.tail = dataset, dataset.shape[0], dataset.shape[1:]
        self.chunk_rows = dataset.chunks[0]
        self.direct = (  # chunks of whole rows, stored as they are
            dataset.chunks[1:] == self.tail and dataset.id.get_create_plist().get_nfilters() == 0
        )

    def extend(self, blocks: list[np.ndarray]) -> None:
        """Append the row blocks ``blocks`` with one resize; blocks smaller than a chunk are
        joined first (one write instead of one per block: 65 us each)."""
        total = sum(block.shape[0] for block in blocks)
        if total == 0:
            return
        if len(blocks) > 1 and all(block.shape[0] < self.chunk_rows for block in blocks):
            blocks = [np.concatenate(blocks)]
        start = self.rows
        self.rows += total
        self.dataset.id.set_extent((self.rows, *self.tail))
        for block in blocks:
            self._write(start, block)
            start += block.shape[0]

    def _write(self, start: int, block: np.ndarray) -> None:
        """``dataset[start : start + len(block)] = block``, the HDF5 chunks that the rows cover
        whole written straight to the file (``H5Dwrite_chunk``: no chunk cache, no conversion),
        which halves the cost of writing; the rest through the usual path."""
        size = self.chunk_rows
        direct = (
            self.direct
            and start % size == 0
            and block.dtype == self.dataset.dtype
            and block.flags.c_contiguous
        )
        whole = block.shape[0] // size * size if direct else 0
        zeros = (0,) * (block.ndim - 1)
        for lo in range(0, whole, size):
            self.dataset.id.write_direct_chunk((start + lo, *zeros), block[lo : lo + size])
        if whole < block.shape[0]:
            self.dataset[start + whole : start + block.shape[0]] = block[whole:]


class Appender:
    """Opens a data file and appends simulation tasks to it, in a background thread.

    Successful rows go to ``theta`` and ``x``, failed ones to ``failed/theta``, and a line
    ``(task index, rows kept, rows failed)`` to ``chunks``. The writer thread first opens the
    file (``open_file()``: creating it, or copying an old one to extend, overlaps the first
    tasks), then writes the tasks as soon as they arrive, each time all those already waiting
    (at most ``buffer_bytes``) with one resize per dataset, so that writing overlaps simulating
    (h5py's dataset calls and fsync release the GIL) and a task's arrays are released at once.
    With ``sync``, it pushes the rows to disk as it goes (:meth:`_write`), so that the final
    fsync, after :meth:`close` has closed the file, has little left to do. Use as a context
    manager, or call :meth:`close`.

    Attributes:
        rows: ``(rows in x, rows in failed/theta)`` of the closed file; ``None`` before.
    """

    def __init__(
        self,
        open_file: Callable[[], h5py.File],
        buffer_bytes: int = 4 << 20,
        sync: bool = True,
    ) -> None:
        self.buffer_bytes, self.sync = buffer_bytes, sync
        self.rows: tuple[int, int] | None = None
        self._open_file = open_file
        self._buffers: dict[str, list[np.ndarray]] = {
            "theta": [],
            "x": [],
            "failed/theta": [],
            "chunks": [],
        }
        self._bytes = self._unsynced = 0
        self._attrs: dict[str, Any] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="simgen-writer", daemon=True)
        self._thread.start()

    def add(self, chunk: int, theta: np.ndarray, x: np.ndarray, ok: np.ndarray) -> None:
        """Queue one task's rows ``theta (m, d)``, ``x (m, *x_shape)``, ``ok (m,)``."""
        if self._error is not None:
            raise self._error
        self._queue.put((chunk, theta, x, ok))

    def close(self, attrs: dict[str, Any] | None = None) -> None:
        """Write everything queued, then the root attributes ``attrs``; close the file (and
        fsync it, with ``sync``), stop the thread, and raise its error if it had one."""
        if self._thread.is_alive():
            self._attrs = dict(attrs or {})
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
        f = None
        try:
            f = self._open_file()
            columns = {name: _Column(f[name]) for name in self._buffers}
            while item is not None:
                item = self._queue.get()
                while item is not None:  # take the tasks already waiting, up to buffer_bytes
                    self._buffer(*item)
                    if self._bytes >= self.buffer_bytes or self._queue.empty():
                        break
                    item = self._queue.get()
                self._write(f, columns, final=item is None)
            f.attrs.update(self._attrs)
            self.rows = (columns["x"].rows, columns["failed/theta"].rows)
            name = f.filename
            f.close()
            if self.sync:
                fsync_path(Path(name))
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread)
            self._error = error
            if f is not None:
                with contextlib.suppress(Exception):  # a full disk fails the close too:
                    f.close()  # the first error says what happened
            while item is not None:  # unblock a producer waiting on a full queue, up to close()
                item = self._queue.get()

    def _buffer(self, chunk: int, theta: np.ndarray, x: np.ndarray, ok: np.ndarray) -> None:
        if ok.all():
            self._buffers["theta"].append(theta)
            self._buffers["x"].append(x)
            kept = len(ok)
        else:
            self._buffers["theta"].append(theta[ok])
            self._buffers["x"].append(x[ok])
            self._buffers["failed/theta"].append(theta[~ok])
            kept = int(ok.sum())
        self._buffers["chunks"].append(np.array([[chunk, kept, len(ok) - kept]], np.int64))
        self._bytes += theta.nbytes + x.nbytes

    def _write(self, f: h5py.File, columns: dict[str, _Column], final: bool) -> None:
        """Append the buffered rows (the small ``chunks`` lines only at the end: the file is
        renamed into place only when complete). With ``sync``, push the data written so far to
        disk (``fdatasync``; the file's metadata is flushed when it closes) once
        ``buffer_bytes`` are pending, or a quarter of that when no task is waiting, so that
        this keeps the writer busy only while the simulator would leave it idle."""
        for name, rows in self._buffers.items():
            if name != "chunks" or final:
                columns[name].extend(rows)
                rows.clear()
        self._unsynced += self._bytes
        self._bytes = 0
        due = self._unsynced >= (
            self.buffer_bytes // 4 if self._queue.empty() else self.buffer_bytes
        )
        if self.sync and due and not final:
            _datasync(f.id.get_vfd_handle())
            self._unsynced = 0
