"""``merge()``: one data file from several of the same simulator and prior, e.g. runs with
different seeds on different machines, or the rounds of sequential inference
(``examples/sequential.py``), so that :func:`simgen.fit` trains on all of them.

The rows keep their order, file after file; :func:`simgen.fit` validates on the last rows, so
the last file holds the validation rows. The merged file records where its rows came from
(``sources``: path, seed, rows and, for given parameters, their digest; a merged input
contributes its own sources) and is written atomically; it is not extended by
:func:`simgen.simulate` (which would continue only one of the runs): simulate into a new file
and merge again. Runs of one seed are refused: they drew the same random numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from simgen.atomic import check_room, replacing
from simgen.data.store import Store, check_writable, create, open_store
from simgen.errors import UsageError
from simgen.terminal import progress_bar

__all__ = ["SAME", "check_not_merged", "merge"]

# what the files must share: their rows are then draws of the same x given theta, and the
# posterior of a model fitted to all of them has the same prior
SAME = ("simulator", "simulator_options", "parameters", "x_shape", "prior")


def merge(
    paths: Sequence[str | os.PathLike], out: str | os.PathLike, progress: bool | None = None
) -> Store:
    """Write the rows of the data files ``paths``, in order, into the new data file ``out``.

    Args:
        paths: Data files of the same simulator, options and prior (:data:`SAME`), each
            simulated with its own seed.
        out: The merged file; it must not exist yet.
        progress: Progress bar on stderr (default: when stderr is a terminal).

    Returns:
        The merged file, opened for reading.

    Raises:
        UsageError: fewer than two files, files that differ in :data:`SAME` or share a
            seed, ``out`` already there (one of the inputs, say), or too little free space.
        RunError: the disk filled while writing (nothing is left behind).
        StoreError: a path that is not a simgen data file.
    """
    out = Path(out)
    if len(paths) < 2:
        raise UsageError("merge needs at least two data files")
    stores = [open_store(p) for p in paths]
    if out.exists():  # the inputs among them
        raise UsageError(f"{out} exists; merge writes a new file: choose another -o path")
    check_writable(out)
    metas = [s.metadata for s in stores]  # each reads the file's attributes
    first = metas[0]
    for store, meta in zip(stores[1:], metas[1:], strict=True):
        for key in SAME:
            if meta.get(key) != first.get(key):
                raise UsageError(
                    f"{stores[0].path} and {store.path} differ in {key} ({first.get(key)!r} "
                    f"against {meta.get(key)!r}); only data of the same simulator and prior merge"
                )
    sources = [run for s, meta in zip(stores, metas, strict=True) for run in _runs(s, meta)]
    _check_streams(sources)
    attempted = sum(int(meta["n_simulated"]) for meta in metas)
    metadata = {k: v for k, v in first.items() if k not in ("format", "theta_sha256")}
    errors = [e for m in metas for e in m.get("failed_errors", [])]  # of each source's tasks
    metadata.update(
        n_requested=attempted,
        n_simulated=attempted,
        sources=json.dumps(sources),
        failed_errors=errors,
    )
    check_room(out, sum(s.path.stat().st_size for s in stores))
    with replacing(out, sync=True) as tmp:
        _copy(stores, tmp, metadata, progress)
    return open_store(out)


def _runs(store: Store, meta: dict) -> list[dict]:
    """The runs whose rows ``store`` holds: its ``sources`` if it is a merge, else itself."""
    if "sources" in meta:
        return json.loads(meta["sources"])
    run = {"path": str(store.path), "seed": meta["seed"], "rows": len(store)}
    return [run | ({"theta_sha256": meta["theta_sha256"]} if "theta_sha256" in meta else {})]


def _check_streams(sources: list[dict]) -> None:
    """Refuse runs that share a seed: their task ``i`` drew the same random numbers, so their
    rows are the same simulations (prior draws) or share their noise (given parameters), and
    a model fitted to both would count them twice.

    Raises:
        UsageError: two runs with one seed.
    """
    first: dict[int, dict] = {}
    for run in sources:
        other = first.setdefault(run["seed"], run)
        if other is not run:
            raise UsageError(
                f"{other['path']} and {run['path']} were both simulated with seed {run['seed']}, "
                "so their rows draw the same random numbers (the same simulations, or the same "
                "noise for other parameters): simulate one of them again with another --seed"
            )


def _copy(stores: list[Store], tmp: Path, metadata: dict, progress: bool | None) -> None:
    """Create ``tmp`` with ``metadata`` and copy the rows of ``stores`` into it, block by
    block (memory stays bounded by one HDF5 chunk of x)."""
    total = sum(len(s) for s in stores)
    with (
        create(tmp, metadata, cache_bytes=0) as f,
        progress_bar(total, "merge", enabled=progress) as bar,
    ):
        for name in ("theta", "x", "failed/theta", "chunks"):
            f[name].resize(sum(s.file[name].shape[0] for s in stores), axis=0)
        start, failed, chunks = 0, 0, 0
        for store in stores:
            for lo in range(0, len(store), store.block_rows):
                hi = min(lo + store.block_rows, len(store))
                f["theta"][start + lo : start + hi] = store.file["theta"][lo:hi]
                f["x"][start + lo : start + hi] = store.x[lo:hi]
                bar.advance(hi - lo)
            start += len(store)
            for name, offset in (("failed/theta", failed), ("chunks", chunks)):
                part = store.file[name][:]
                f[name][offset : offset + len(part)] = part
            failed += store.n_failed
            chunks += store.file["chunks"].shape[0]
            store.close()


def check_not_merged(store: Store) -> None:
    """Refuse to extend a merged file (:func:`simgen.simulate` would continue one run only).

    Raises:
        UsageError: ``store`` is the output of :func:`merge`.
    """
    if "sources" in store.file.attrs:
        names = ", ".join(s["path"] for s in json.loads(store.file.attrs["sources"]))
        raise UsageError(f"{store.path} merges {names}: simulate into a new file and merge again")
