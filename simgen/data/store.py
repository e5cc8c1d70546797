"""The HDF5 data schema: create, append, validate and read ``(theta, x)`` data sets.

A data file holds ``theta`` ``(N, d_theta)`` and ``x`` ``(N, *x_shape)`` (float32, chunked along
rows, resizable), ``failed/theta`` for rows whose simulation raised or gave NaN/inf, and
``chunks`` ``(n_chunks, 3)`` (task index, rows kept, rows failed): the record of finished
simulation tasks. Root attributes carry the provenance listed in :data:`REQUIRED_ATTRS`.

Files are opened lazily, once per process, so a :class:`Store` can be handed to data-loader
workers; reads go in blocks aligned with the HDF5 chunks, so data sets larger than memory work.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from simgen.errors import StoreError, UsageError

__all__ = [
    "FORMAT",
    "JSON_ATTRS",
    "REQUIRED_ATTRS",
    "Store",
    "StoreDataset",
    "check_finite",
    "check_hdf5",
    "check_writable",
    "create",
    "open_store",
]

FORMAT = "simgen-data/1"
FORMAT_FAMILY = "simgen-data/"
REQUIRED_ATTRS = (
    "format",
    "simulator",
    "simulator_path",
    "simulator_options",
    "parameters",
    "x_shape",
    "prior",
    "seed",
    "chunk_size",
    "n_requested",
    "n_simulated",
    "simgen_version",
)
BLOCK_BYTES = 4 << 20  # largest HDF5 chunk of x


JSON_ATTRS = ("simulator_options", "prior", "failed_errors")  # attributes stored as JSON


def _block_rows(task_rows: int, row_bytes: int) -> int:
    """Rows per HDF5 chunk: the largest divisor of the task size whose chunk of x fits in
    :data:`BLOCK_BYTES`, so that each task's rows fill whole HDF5 chunks (a write covering part
    of a chunk makes HDF5 read and rewrite it), unless that divisor is small."""
    limit = max(1, BLOCK_BYTES // row_bytes)
    if task_rows <= limit:
        return task_rows
    divisor = max(d for d in range(1, limit + 1) if task_rows % d == 0)
    return divisor if divisor >= limit // 4 else limit  # an awkward task size: don't align


def check_hdf5(path: str | os.PathLike, kind: str = "data") -> Path:
    """Check that ``path`` exists and is a complete HDF5 file; one clear line otherwise.

    Raises:
        StoreError: missing, a folder, not HDF5, or truncated.
    """
    path = Path(path)
    if not path.exists():
        hint = ""
        if Path(f"{path}.parts").is_dir():
            hint = (
                "; an interrupted `simgen simulate` left its progress in "
                f"{path}.parts: rerun the same command to finish it"
            )
        raise StoreError(f"no such file: {path}{hint}")
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a {kind} file")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file, so not a simgen {kind} file")
    try:
        with h5py.File(path, "r"):
            pass
    except OSError as error:
        if "truncated" in str(error):
            raise StoreError(
                f"{path} is truncated ({path.stat().st_size} bytes; it was cut short while "
                "being copied or written): copy it again, or simulate it anew"
            ) from None
        raise StoreError(f"{path} cannot be read as HDF5: {error}") from None
    return path


def check_writable(path: Path) -> None:
    """Refuse, in one line, a path that is a folder, in a missing folder, or not writable."""
    parent = path.parent
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name such as {path / 'data.h5'}")
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")


def create(
    path: str | os.PathLike, metadata: dict[str, Any], cache_bytes: int | None = None
) -> h5py.File:
    """Create an empty data file with the schema above; ``metadata`` fills the attributes.

    ``metadata`` needs ``parameters`` (names) and ``x_shape`` besides the provenance keys; its
    ``chunk_size`` (rows per task) sets the HDF5 chunking (:func:`_block_rows`).
    ``cache_bytes``: HDF5's chunk cache per dataset (None: h5py's default, 1 MiB); with 0,
    each write reaches the file at once, so that a write that fails (a full disk) raises
    there, not while the cache is flushed on close (HDF5 then reports it from every dataset's
    deallocation and can crash the interpreter at exit).
    """
    d_theta = len(metadata["parameters"])
    x_shape = tuple(int(s) for s in metadata["x_shape"])
    row_bytes = 4 * max(1, math.prod(x_shape))
    block = _block_rows(int(metadata.get("chunk_size", 65_536)), row_bytes)
    f = h5py.File(path, "w", rdcc_nbytes=cache_bytes)
    f.create_dataset(
        "theta", (0, d_theta), np.float32, maxshape=(None, d_theta), chunks=(block, d_theta)
    )
    f.create_dataset(
        "x", (0, *x_shape), np.float32, maxshape=(None, *x_shape), chunks=(block, *x_shape)
    )
    f.create_dataset(
        "failed/theta", (0, d_theta), np.float32, maxshape=(None, d_theta), chunks=(1024, d_theta)
    )
    f.create_dataset("chunks", (0, 3), np.int64, maxshape=(None, 3), chunks=(1024, 3))
    for key, value in metadata.items():
        if isinstance(value, dict) or key in JSON_ATTRS:
            value = json.dumps(value, sort_keys=True)
        f.attrs[key] = value
    f.attrs["format"] = FORMAT
    return f


class Store:
    """A simgen data file, opened lazily (once per process) for reading.

    Attributes:
        path: The file's path.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid = -1

    @property
    def file(self) -> h5py.File:
        """The open ``h5py.File``; reopened in a new process (e.g. a data-loader worker)."""
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        """Close the file (it reopens on next use)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    @property
    def metadata(self) -> dict[str, Any]:
        """Root attributes, with JSON attributes decoded and arrays as lists."""
        out: dict[str, Any] = {}
        for key, value in self.file.attrs.items():
            value = value.tolist() if isinstance(value, np.ndarray | np.generic) else value
            if isinstance(value, list):
                value = [v.decode() if isinstance(v, bytes) else v for v in value]
            if key in JSON_ATTRS:
                value = json.loads(value)
            out[key] = value
        return out

    @property
    def parameters(self) -> tuple[str, ...]:
        """Names of theta's components."""
        return tuple(self.metadata["parameters"])

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Event shape of one x."""
        return tuple(self.file["x"].shape[1:])

    @property
    def theta(self) -> np.ndarray:
        """All parameters, ``(N, d_theta)`` float32 (read into memory; N x d_theta is small)."""
        return self.file["theta"][:]

    @property
    def x(self) -> h5py.Dataset:
        """The simulations, ``(N, *x_shape)``, as a lazy HDF5 dataset: slicing reads."""
        return self.file["x"]

    @property
    def failed_theta(self) -> np.ndarray:
        """Parameters whose simulation raised or gave NaN/inf, ``(n_failed, d_theta)``."""
        return self.file["failed/theta"][:]

    @property
    def n_failed(self) -> int:
        """Number of failed rows."""
        return int(self.file["failed/theta"].shape[0])

    @property
    def block_rows(self) -> int:
        """Rows per HDF5 chunk of ``x``: reads aligned to this are efficient."""
        return int(self.file["x"].chunks[0])

    def __len__(self) -> int:
        return int(self.file["x"].shape[0])

    def nonfinite_rows(self, stop: int | None = None, batch_size: int = 65_536) -> int:
        """Rows among the first ``stop`` (default: all) whose theta or x hold NaN or inf, read
        in chunk-aligned batches. ``simulate`` never writes such rows (they go to
        ``failed/theta``); a file edited or made elsewhere may hold them."""
        bad = 0
        for theta, x in self.batches(batch_size, stop=stop):
            finite = torch.isfinite(theta).all(1) & torch.isfinite(x.flatten(1)).all(1)
            bad += int((~finite).sum())
        return bad

    def batches(
        self,
        batch_size: int,
        *,
        start: int = 0,
        stop: int | None = None,
        shuffle: bool = False,
        seed: int | None = None,
        shard: tuple[int, int] = (0, 1),
        buffer: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over rows ``[start, stop)`` in batches of ``(theta, x)`` float32 tensors.

        Rows are read in spans aligned with the HDF5 chunks (a span holds at least one batch),
        so memory stays bounded. With ``shuffle``, spans come in random order and rows are
        permuted within a buffer of ``buffer`` consecutive (shuffled) spans: a chunk-local
        shuffle whose memory is ``buffer`` spans, whatever the size of the file.

        Args:
            batch_size: Rows per batch; the last batch may be smaller.
            start: First row.
            stop: One past the last row (default: all).
            shuffle: Randomise span order and rows within spans.
            seed: Seed of the shuffle.
            shard: ``(k, m)``: only every m-th span from the k-th, for data-loader workers.
            buffer: Spans mixed together by the shuffle (more: closer to a global shuffle).

        Yields:
            ``theta`` of shape ``(b, d_theta)`` and ``x`` of shape ``(b, *x_shape)``.
        """
        stop = len(self) if stop is None else min(stop, len(self))
        block = self.block_rows
        span = block * max(1, math.ceil(batch_size / block))
        first = (start // block) * block
        edges = [(max(a, start), min(a + span, stop)) for a in range(first, stop, span)]
        edges = edges[shard[0] :: shard[1]]
        rng = np.random.default_rng(seed)
        if shuffle:
            edges = [edges[i] for i in rng.permutation(len(edges))]
        theta_ds, x_ds = self.file["theta"], self.file["x"]
        carry: tuple[np.ndarray, np.ndarray] | None = None
        group = max(1, buffer) if shuffle else 1
        for g in range(0, len(edges), group):
            spans = edges[g : g + group]
            theta, x = (_read(ds, spans) for ds in (theta_ds, x_ds))
            if shuffle:
                order = rng.permutation(len(theta))
                theta, x = theta[order], x[order]
            if carry is not None:
                theta, x = np.concatenate([carry[0], theta]), np.concatenate([carry[1], x])
            full = (len(theta) // batch_size) * batch_size
            for i in range(0, full, batch_size):
                yield (
                    torch.from_numpy(theta[i : i + batch_size]),
                    torch.from_numpy(x[i : i + batch_size]),
                )
            carry = (theta[full:], x[full:]) if full < len(theta) else None
        if carry is not None:
            yield torch.from_numpy(carry[0]), torch.from_numpy(carry[1])

    def dataset(self, batch_size: int, **kwargs: Any) -> StoreDataset:
        """A torch ``IterableDataset`` of batches, for ``DataLoader(ds, batch_size=None)``."""
        return StoreDataset(self, batch_size, **kwargs)

    def __repr__(self) -> str:
        return f"Store('{self.path}')"


def _read(ds: h5py.Dataset, spans: list[tuple[int, int]]) -> np.ndarray:
    """Rows ``[lo, hi)`` of each span of ``ds``, one after the other, read straight into one
    array (no intermediate copies)."""
    out = np.empty((sum(hi - lo for lo, hi in spans), *ds.shape[1:]), ds.dtype)
    at = 0
    for lo, hi in spans:
        ds.read_direct(out, np.s_[lo:hi], np.s_[at : at + hi - lo])
        at += hi - lo
    return out


class StoreDataset(torch.utils.data.IterableDataset):
    """Batches of a :class:`Store` as a torch ``IterableDataset``; each data-loader worker reads
    its own share of spans through its own file handle."""

    def __init__(self, store: Store, batch_size: int, **kwargs: Any) -> None:
        super().__init__()
        self.store, self.batch_size, self.kwargs = store, batch_size, kwargs

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        shard = (0, 1) if info is None else (info.id, info.num_workers)
        return self.store.batches(self.batch_size, shard=shard, **self.kwargs)


def open_store(path: str | os.PathLike) -> Store:
    """Open a simgen data file for reading, after checking that it is one.

    Raises:
        StoreError: a missing, truncated, non-HDF5 or non-simgen file, or a newer format, each
            with one line saying what to do.
    """
    path = check_hdf5(path, "data")
    with h5py.File(path, "r") as f:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt is None:
            raise StoreError(f"{path} is an HDF5 file but not a simgen data file (no 'format')")
        if not str(fmt).startswith(FORMAT_FAMILY):
            raise StoreError(f"{path} is a '{fmt}' file, not a simgen data file")
        if fmt != FORMAT:
            raise StoreError(
                f"{path} has format '{fmt}', newer than this simgen reads ({FORMAT}): "
                "upgrade simgen (pip install -U simgen)"
            )
        missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
        missing += [d for d in ("theta", "x", "failed/theta", "chunks") if d not in f]
        if missing:
            raise StoreError(f"{path} is a damaged simgen data file: missing {', '.join(missing)}")
        _check_shapes(path, f)
    return Store(path)


def check_finite(store: Store, stop: int | None = None) -> None:
    """Refuse, in one line with the count, data whose first ``stop`` rows (default: all) hold
    NaN or inf: a fit would stop on a NaN loss, a density would be NaN."""
    bad = store.nonfinite_rows(stop)
    if bad:
        rows = len(store) if stop is None else min(stop, len(store))
        raise StoreError(
            f"{bad:,} of {rows:,} rows of {store.path} hold NaN or inf: remove them, or simulate "
            "the file again (simgen simulate keeps failed rows out of x, under failed/theta)"
        )


def _check_shapes(path: Path, f: h5py.File) -> None:
    """Refuse, in one line, a file whose ``theta`` and ``x`` disagree with each other or with
    the recorded ``parameters`` and ``x_shape``."""
    theta, x = f["theta"].shape, f["x"].shape
    d_theta, x_shape = len(f.attrs["parameters"]), tuple(int(v) for v in f.attrs["x_shape"])
    if len(theta) != 2 or theta[1] != d_theta:
        raise StoreError(
            f"{path}: theta has shape {theta}, not (rows, {d_theta}) for its parameters"
        )
    if tuple(x[1:]) != x_shape:
        raise StoreError(f"{path}: x has shape {x}, not (rows, *{x_shape}) as the file records")
    if theta[0] != x[0]:
        raise StoreError(
            f"{path}: theta has {theta[0]:,} rows and x {x[0]:,}: the file is damaged; "
            "simulate it again"
        )
