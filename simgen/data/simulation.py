"""``simulate()``: run a simulator into a data file, in parallel, resumably.

Rows are simulated in tasks of ``chunk_size`` rows. Task ``i`` draws its parameters from the
prior and its simulations from streams seeded by ``numpy.random.SeedSequence(seed,
spawn_key=(i,))`` (the ``i``-th child of ``SeedSequence(seed).spawn``), so a data set is a
function of (simulator, options, seed, chunk size, n) alone: not of the number of workers, the
executor, or how often the run was interrupted. Tasks run in this process (one worker), a process
pool, or a Dask cluster (:mod:`simgen.data.tasks`); one writer, this process, owns the file. See
:mod:`simgen.data.journal` for how stops are survived.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

import simgen
from simgen.atomic import check_room, fsync_path
from simgen.data.executors import default_workers
from simgen.data.failures import stop_error, whole_task_error
from simgen.data.journal import Journal
from simgen.data.merging import check_not_merged
from simgen.data.retry import retry_failed as retry_failed_tasks
from simgen.data.samples import read_theta_rows
from simgen.data.simulator import Simulator, describe_prior, get_simulator
from simgen.data.store import Store, check_writable, create, open_store
from simgen.data.tasks import tasks_in_order
from simgen.data.writer import Appender
from simgen.errors import StoreError, UsageError
from simgen.terminal import progress_bar

__all__ = ["SimulationReport", "default_workers", "simulate"]


@dataclass
class SimulationReport:
    """What a call to :func:`simulate` did.

    Attributes:
        rows_new: Rows attempted by this call.
        failed_new: Of those, rows that raised or gave NaN/inf.
        rows_total: Successful rows now in the file.
        failed_total: Failed rows now in the file.
        seconds: Wall-clock time of this call.
        resumed_chunks: Tasks taken from the journal of an interrupted run.
        workers: Processes of this machine that simulated (1: this process; 0: nothing was
            left to simulate); None when a Dask cluster did.
        retried_tasks: Failed tasks simulated again (``retry_failed``); their rows count in
            ``rows_new`` and those still failing in ``failed_new``.
    """

    rows_new: int
    failed_new: int
    rows_total: int
    failed_total: int
    seconds: float
    resumed_chunks: int
    workers: int | None = 0
    retried_tasks: int = 0

    def describe(self, path: str | os.PathLike) -> str:
        """One line for people: rows written to ``path``, time, rate, where, and failures."""
        if self.rows_new == 0:
            return f"{path} already holds {self.rows_total:,} simulated rows; nothing to do"
        where = {None: "on the Dask cluster", 1: "in this process"}.get(
            self.workers, f"in {self.workers} worker processes"
        )
        rate = self.rows_new / self.seconds if self.seconds > 0 else float("nan")
        took = f"{self.seconds:.3g}" if self.seconds < 100 else f"{self.seconds:,.0f}"
        retried = f" ({self.retried_tasks:,} failed tasks again)" if self.retried_tasks else ""
        line = (
            f"wrote {self.rows_new:,} rows{retried} to {path} in {took} s ({rate:,.0f} rows/s, {where}); "
            f"{self.rows_total:,} rows in the file"
        )
        if self.failed_new:
            line += (
                f"\nwarning: {self.failed_new:,} of {self.rows_new:,} rows failed (the simulator "
                "raised or gave NaN/inf); their theta is kept under failed/theta"
            )
        return line


def _identity(
    sim: Simulator, seed: int, chunk_size: int, given: np.ndarray | None = None
) -> dict[str, Any]:
    """What makes two runs the same run; with ``given`` parameters, their SHA-256 digest."""
    digest = None if given is None else hashlib.sha256(given.tobytes()).hexdigest()
    return {
        "simulator": sim.name,
        "simulator_options": json.loads(json.dumps(sim.options)),
        "seed": int(seed),
        "chunk_size": int(chunk_size),
        "theta_sha256": digest,
    }


def _check_identity(store: Store, identity: dict[str, Any]) -> None:
    meta = store.metadata
    found = {k: meta.get(k) for k in identity}

    def shown(key: str, value: Any) -> str:
        if key == "theta_sha256":  # a digest says little: say what it stands for
            return "prior draws" if value is None else f"given parameters {value[:12]}..."
        return repr(value)

    if found != identity:
        diff = ", ".join(
            f"{k}={shown(k, found[k])} (you asked {shown(k, identity[k])})"
            for k in identity
            if found[k] != identity[k]
        )
        raise StoreError(
            f"{store.path} was made with {diff}; it is never overwritten: choose another -o "
            "path, or the same arguments to add rows to it"
        )


def _metadata(sim: Simulator, identity: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        **{k: v for k, v in identity.items() if v is not None},
        "simulator_path": f"{type(sim).__module__}:{type(sim).__qualname__}",
        "parameters": list(sim.parameters),
        "x_shape": list(sim.x_shape),
        "prior": describe_prior(sim.prior()),
        "n_requested": n,
        "n_simulated": 0,
        "simgen_version": simgen.__version__,
    }


def _given_parameters(sim: Simulator, theta: Any, n: int) -> np.ndarray:
    """``theta`` as a float32 ``(n, d_theta)`` array, after checking it fits ``sim``.

    Raises:
        UsageError: another shape, NaN/inf, or a row outside the prior's support.
    """
    given = np.ascontiguousarray(np.asarray(theta, dtype=np.float32))
    d = sim.d_theta
    if given.ndim != 2 or given.shape[1] != d:
        raise UsageError(
            f"theta has shape {given.shape}; simulator '{sim.name}' needs (n, {d}) parameters "
            f"({', '.join(sim.parameters)})"
        )
    if len(given) != n:
        raise UsageError(f"theta has {len(given):,} rows but n = {n:,}: they must agree")
    if not np.isfinite(given).all():
        row = int(np.flatnonzero(~np.isfinite(given).all(axis=1))[0])
        raise UsageError(f"theta row {row} is not finite ({given[row].tolist()})")
    inside = sim.prior().support.check(torch.from_numpy(given).double())
    if inside.ndim > 1:
        inside = inside.all(-1)
    if not bool(inside.all()):
        row = int(np.flatnonzero(~inside.numpy())[0])
        raise UsageError(
            f"theta row {row} ({given[row].tolist()}) lies outside the prior's support; "
            "the prior's density there is 0, so no posterior can use it"
        )
    return given


def _rows_done(path: Path, identity: dict[str, Any]) -> tuple[int, int]:
    """Rows attempted and rows failed in an existing file of the same run (0, 0 if none)."""
    if not path.exists():
        return 0, 0
    old = open_store(path)
    try:
        check_not_merged(old)
        _check_identity(old, identity)
        return int(old.metadata["n_simulated"]), old.n_failed
    finally:
        old.close()


def simulate(
    simulator: Simulator | str,
    n: int | None,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    workers: int | None = None,
    chunk_size: int | None = None,
    scheduler: str | None = None,
    progress: bool | None = None,
    on_report: Callable[[SimulationReport], None] | None = None,
    theta: Any = None,
    retry_failed: bool = False,
) -> Store:
    """Simulate ``n`` rows ``(theta ~ prior, x ~ simulator(theta))`` into the HDF5 file ``path``,
    or the simulations of given parameters ``theta``.

    Resumable and extendable: rerunning after any stop finishes the same rows, and asking a
    finished file for more rows appends them, in both cases giving exactly the file that one
    uninterrupted run gives. A file made with another simulator, options, seed or chunk size is
    refused, never overwritten.

    Args:
        simulator: A :class:`Simulator` or a registered name / import path (default options).
        n: Rows to attempt in total (failed rows count, and are kept under ``failed/theta``);
            None: one per row of ``theta``.
        path: The data file.
        seed: Root seed of all random streams.
        workers: Processes simulating in parallel, each with one torch thread; 1 runs in
            this process (also with one torch thread, restored after). Default: the first
            task runs in this process, and the others in a pool of all cores where that
            finishes sooner (long runs of slow simulators), else here too
            (:func:`simgen.data.tasks.tasks_in_order`, :func:`simgen.data.executors.pool_pays`).
        chunk_size: Rows per task (default: the simulator's ``chunk_size``).
        scheduler: Address of a Dask scheduler (``tcp://host:8786``): run the tasks there.
        progress: Show a progress bar on stderr (default: when stderr is a terminal).
        on_report: Called with the :class:`SimulationReport` at the end.
        theta: Parameters to simulate instead of prior draws, ``(n, d_theta)`` (array-like, or
            a file of them: :func:`simgen.data.samples.read_theta_rows`),
            inside the prior's support: e.g. posterior samples, for a second round of
            simulations where the posterior is (``examples/sequential.py``), with a seed of
            its own (with the first round's, every row reuses that round's noise, and
            :func:`simgen.merge` refuses the pair). The file's ``prior`` stays the
            simulator's; the parameters' digest is part of the run's identity, so a file is
            resumed only with the same parameters.
        retry_failed: First simulate again every task of the file that has a failed row (after
            the simulator was fixed: :mod:`simgen.data.retry`); ``n`` may then be None.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "d.h5"
        >>> store = simulate("two_moons", 2000, path, workers=1, progress=False)
        >>> len(store), store.parameters, store.x_shape
        (2000, ('theta_1', 'theta_2'), (2,))

    Returns:
        The data file, opened for reading.

    Raises:
        UsageError: a bad argument (sizes, options that are not JSON values), or less free
            space on the disk of ``path`` than the rows need.
        StoreError: the file belongs to another run identity, or another run is writing it
            right now (one run per data file: :meth:`Journal.locked`).
        SimulatorError: the simulator broke its contract (shape, dtype, every row raised).
        RunError: interrupted (the journal keeps finished tasks), a worker process died, or
            the disk filled.
    """
    started = time.perf_counter()
    sim = get_simulator(simulator) if isinstance(simulator, str) else simulator
    path = Path(path)
    chunk_size = int(chunk_size or sim.chunk_size)
    workers = None if workers is None else int(workers)
    if isinstance(theta, str | os.PathLike):
        theta = read_theta_rows(theta)
    if retry_failed and n is None and theta is None and path.exists():
        old = open_store(path)
        n = int(old.metadata.get("n_simulated", 0)) or None  # the file's own rows
        old.close()
    if n is None and theta is None:
        raise UsageError(
            "give the rows to simulate (n; -n on the command line) or the parameters to "
            "simulate (theta; --theta-file)"
        )
    n = len(theta) if n is None else n
    if n < 1 or chunk_size < 1 or (workers is not None and workers < 1):
        raise UsageError("n, chunk_size and workers must be positive integers")
    given = None if theta is None else _given_parameters(sim, theta, n)
    check_writable(path)
    try:
        identity = _identity(sim, seed, chunk_size, given)
    except TypeError as error:
        raise UsageError(
            f"options of simulator '{sim.name}' must be JSON values: {error}"
        ) from None
    journal = Journal(path)
    with journal.locked():
        retried = (0, 0, 0, 0, 0, 0)
        if retry_failed and _rows_done(path, identity)[1]:
            retried = retry_failed_tasks(
                sim, path, journal, identity, workers, scheduler, progress, given
            )
        report = _run(sim, n, path, journal, identity, workers, scheduler, progress, given)
    if retried[0]:
        tasks, rows, still, _, _, used = retried
        report.retried_tasks, report.rows_new = tasks, report.rows_new + rows
        report.failed_new += still
        report.workers = report.workers if report.workers != 0 else used
    report.seconds = time.perf_counter() - started
    if on_report is not None:
        on_report(report)
    return Store(path)  # checked when found (_rows_done) or just written


def _row_bytes(sim: Simulator) -> int:
    """Bytes of one row in the data file: float32 ``theta`` and ``x``."""
    return 4 * (sim.d_theta + math.prod(sim.x_shape))


def _run(
    sim: Simulator,
    n: int,
    path: Path,
    journal: Journal,
    identity: dict[str, Any],
    workers: int | None,
    scheduler: str | None,
    progress: bool | None,
    given: np.ndarray | None,
) -> SimulationReport:
    """The body of :func:`simulate`, under the journal's lock (``seconds`` left at 0)."""
    seed, chunk_size = identity["seed"], identity["chunk_size"]
    n_old, failed_old = _rows_done(path, identity)
    if n <= n_old:
        if journal.identity() in (identity, None):  # a stop between the rename and clean-up
            journal.remove()
        return SimulationReport(0, 0, n_old - failed_old, failed_old, 0.0, 0)
    # the new file, beside the old one until it replaces it
    nbytes = (path.stat().st_size if n_old else 0) + (n - n_old) * _row_bytes(sim)
    check_room(path, nbytes)

    journal.open(identity)
    indices = range(n_old // chunk_size, math.ceil(n / chunk_size))
    journal.discard(keep_from=indices.start)
    resumed = len(journal.indices() & set(indices))
    journal.building.unlink(missing_ok=True)

    def open_building() -> h5py.File:
        """The file being built (in the writer thread, so that this overlaps simulating)."""
        if n_old:
            shutil.copyfile(path, journal.building)
            return h5py.File(journal.building, "r+")
        return create(journal.building, _metadata(sim, identity, n))

    def rows_of(index: int) -> slice:
        """The rows of task ``index`` that belong to rows ``[n_old, n)`` of the file."""
        return slice(max(n_old - index * chunk_size, 0), min(n - index * chunk_size, chunk_size))

    failed_new, used = 0, []
    errors = Store(path).metadata.get("failed_errors", []) if n_old else []
    whole = []  # (task, rows, error) of the tasks whose every row raised
    with progress_bar(n - n_old, f"simulate {sim.name}", enabled=progress) as bar:
        try:
            with Appender(open_building) as appender:
                tasks = tasks_in_order(
                    sim,
                    seed,
                    chunk_size,
                    indices,
                    journal,
                    workers,
                    scheduler,
                    on_done=lambda i: bar.advance(rows_of(i).stop - rows_of(i).start),
                    given=given,
                    on_workers=used.append,
                )
                for index, result in tasks:
                    rows = rows_of(index)
                    appender.add(index, result.theta[rows], result.x[rows], result.ok[rows])
                    failed = int((~result.ok[rows]).sum())
                    failed_new += failed
                    if result.error and failed:
                        errors.append([index, failed, result.error])
                        if failed == rows.stop - rows.start:
                            whole.append(errors[-1])
                attrs = {"n_requested": n, "n_simulated": n, "failed_errors": json.dumps(errors)}
                appender.close(attrs)
        except BaseException as error:
            journal.building.unlink(missing_ok=True)  # a rerun builds it afresh: free its space
            if not journal.indices():  # nothing to resume: leave no folder to refuse other runs
                journal.remove()
            failure = stop_error(error, journal, path, nbytes)
            if failure is None:
                raise
            raise failure from None
    rows_total, failed_total = appender.rows
    os.replace(journal.building, path)
    fsync_path(path.parent)
    journal.remove()
    if whole:  # a bug rather than a failure of some parameters: the run fails, nothing lost
        raise whole_task_error(sim.name, whole, path)
    workers_used = None if scheduler is not None else used[0]
    return SimulationReport(
        n - n_old, failed_new, rows_total, failed_total, 0.0, resumed, workers_used
    )
