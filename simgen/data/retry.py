"""Simulate a data file's failed tasks again, after the simulator has been fixed.

A task (``chunk_size`` rows) is a deterministic function of (seed, index): its parameters and
its noise streams are those of the first run. Retrying it with a mended simulator therefore
gives the rows that one uninterrupted run of the mended simulator gives. The file is rebuilt in
task order beside the old one (the old rows of every task that had no failure are copied, each
retried task's rows replace its old ones) and renamed over it when complete; an interrupted
retry resumes from the journal like any run (:mod:`simgen.data.journal`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from simgen.atomic import check_room, fsync_path
from simgen.data.failures import stop_error, whole_task_error
from simgen.data.journal import ChunkResult, Journal
from simgen.data.simulator import Simulator
from simgen.data.store import create, open_store
from simgen.data.tasks import tasks_in_order
from simgen.data.writer import Appender
from simgen.terminal import progress_bar

__all__ = ["failed_tasks", "retry_failed"]


def failed_tasks(chunks: np.ndarray) -> list[int]:
    """Indices of the tasks with a failed row, from a file's ``chunks`` lines ``(task, rows
    kept, rows failed)``, in order."""
    return sorted({int(index) for index, _, failed in chunks if failed})


def _old_rows(f: h5py.File) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Each ``chunks`` line of the old file ``f`` as ``(task, theta, x, ok)``: its kept rows,
    then its failed ones (whose ``x`` is zeros: a failed row has none), read line by line."""
    kept_at = failed_at = 0
    for index, kept, failed in f["chunks"][:]:
        theta = np.concatenate(
            [
                f["theta"][kept_at : kept_at + kept],
                f["failed/theta"][failed_at : failed_at + failed],
            ]
        )
        x = np.zeros((kept + failed, *f["x"].shape[1:]), np.float32)
        x[:kept] = f["x"][kept_at : kept_at + kept]
        ok = np.arange(kept + failed) < kept
        kept_at, failed_at = kept_at + kept, failed_at + failed
        yield int(index), theta, x, ok


def retry_failed(
    sim: Simulator,
    path: Path,
    journal: Journal,
    identity: dict[str, Any],
    workers: int | None,
    scheduler: str | None,
    progress: bool | None,
    given: np.ndarray | None,
) -> tuple[int, int, int, int, int, int | None]:
    """Simulate again every task of the data file ``path`` that has a failed row, and rebuild
    the file with their new rows (under the journal's lock; ``identity`` checked already).

    Returns:
        ``(tasks retried, rows retried, of those rows still failing, rows in x, rows in
        failed/theta, worker processes)``: all zeros (workers 0) when no row had failed.

    Raises:
        SimulatorError: a retried task still fails on every row (the file holds its rows).
        RunError: interrupted (the journal keeps the retried tasks), or the disk filled.
    """
    old = open_store(path)
    try:
        chunks, metadata = old.file["chunks"][:], old.metadata
    finally:
        old.close()
    retried = failed_tasks(chunks)
    if not retried:
        return 0, 0, 0, 0, 0, 0
    nbytes = path.stat().st_size
    check_room(path, nbytes)
    journal.open({**identity, "retry": retried})
    journal.building.unlink(missing_ok=True)
    rows_of = {i: int(sum(k + f for j, k, f in chunks if j == i)) for i in retried}
    errors = [e for e in metadata.get("failed_errors", []) if e[0] not in rows_of]
    still, whole, used, offset = 0, [], [], dict.fromkeys(retried, 0)
    with progress_bar(sum(rows_of.values()), f"retry {sim.name}", enabled=progress) as bar:
        try:
            with (
                h5py.File(path, "r") as f,
                Appender(lambda: create(journal.building, metadata)) as appender,
            ):
                tasks = tasks_in_order(
                    sim, identity["seed"], identity["chunk_size"], retried, journal, workers,
                    scheduler, on_done=lambda i: bar.advance(rows_of[i]), given=given,
                    on_workers=used.append,
                )  # fmt: skip
                new: dict[int, ChunkResult] = {}
                for index, theta, x, ok in _old_rows(f):
                    if index in rows_of:  # its lines take the new task's rows in turn
                        if index not in new:
                            task, new[index] = next(tasks)
                            assert task == index, "tasks come in the order of the file"
                        rows = slice(offset[index], offset[index] + len(ok))
                        offset[index] = rows.stop
                        result = new[index]
                        theta, x, ok = result.theta[rows], result.x[rows], result.ok[rows]
                        failed = int((~ok).sum())
                        still += failed
                        if result.error and failed:
                            errors.append([index, failed, result.error])
                            if failed == len(ok):
                                whole.append(errors[-1])
                    appender.add(index, theta, x, ok)
                if next(tasks, None) is not None:  # runs the generator's clean-up
                    raise RuntimeError("a retried task is missing from the file's chunks")
                appender.close({"failed_errors": json.dumps(errors)})
        except BaseException as error:
            journal.building.unlink(missing_ok=True)
            failure = stop_error(error, journal, path, nbytes)
            if failure is None:
                raise
            raise failure from None
    os.replace(journal.building, path)
    fsync_path(path.parent)
    journal.remove()
    if whole:
        raise whole_task_error(sim.name, whole, path)
    rows_total, failed_total = appender.rows
    workers_used = None if scheduler is not None else used[0]
    return len(retried), sum(rows_of.values()), still, rows_total, failed_total, workers_used
