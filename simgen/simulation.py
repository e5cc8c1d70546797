"""``simulate()``: run a simulator into a data file, in parallel, resumably.

Rows are simulated in tasks of ``chunk_size`` rows. Task ``i`` draws its parameters from the
prior and its simulations from streams seeded by ``numpy.random.SeedSequence(seed,
spawn_key=(i,))`` (the ``i``-th child of ``SeedSequence(seed).spawn``), so a data set is a
function of (simulator, options, seed, chunk size, n) alone: not of the number of workers, the
executor, or how often the run was interrupted. Tasks run in this process (one worker), a process
pool, or a Dask cluster; one writer, this process, owns the file. See :mod:`simgen.journal` for
how stops are survived.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch

import simgen
from simgen import executors
from simgen.atomic import check_room, fsync_path, no_room
from simgen.errors import RunError, SimulatorError, StoreError, UsageError
from simgen.executors import (
    default_workers,
    executor,
    one_torch_thread,
    pool_pays,
    task_and_payload,
)
from simgen.journal import ChunkResult, Journal
from simgen.merging import check_not_merged
from simgen.progress import progress_bar
from simgen.simulator import Simulator, describe_prior, get_simulator
from simgen.store import Store, check_writable, create, open_store
from simgen.writer import Appender

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["SimulationReport", "default_workers", "run_chunk", "simulate"]


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
    """

    rows_new: int
    failed_new: int
    rows_total: int
    failed_total: int
    seconds: float
    resumed_chunks: int
    workers: int | None = 0


# torch.distributions sample from torch's global generator: seeding it is only safe one thread
# at a time, and fork_rng gives the caller's state back untouched.
_TORCH_RNG_LOCK = threading.Lock()

# The prior of the simulator of the last task, built once (as in a loop of one's own): building
# a distribution validates its arguments, 0.2 ms a task for two_moons, 4% of its simulation.
_PRIOR: dict[int, tuple[Simulator, torch.distributions.Distribution]] = {}


def _prior(sim: Simulator) -> torch.distributions.Distribution:
    """``sim.prior()``, built once per simulator object (call under ``_TORCH_RNG_LOCK``)."""
    found = _PRIOR.get(id(sim))
    if found is None or found[0] is not sim:
        _PRIOR.clear()
        found = _PRIOR[id(sim)] = (sim, sim.prior())
    return found[1]


@functools.cache
def _keep_freed_memory() -> None:
    """Let this process reuse task-sized memory instead of faulting it in afresh each task.

    glibc serves large blocks by ``mmap`` and gives freed heap back to the system beyond a trim
    threshold; both thresholds rise (to the block's size, and twice that) when the program
    frees an mmapped block, up to 32 MiB. While one task's arrays wait for the writer, the next
    task's allocations overshoot the low initial thresholds, so every task faulted its memory
    in again, page by page: thousands of page faults per million two_moons rows, 5-10% of
    the run. Freeing one untouched 31 MiB block raises the thresholds at once (the process
    then keeps up to 62 MiB of freed heap for reuse); other allocators ignore it.
    """
    block = np.empty(31 << 20, np.uint8)
    del block


def _streams(seed: int, index: int) -> list[np.random.SeedSequence]:
    """The seeds of task ``index``'s prior draws and of its simulations."""
    return np.random.SeedSequence(seed, spawn_key=(index,)).spawn(2)


def draw_prior(sim: Simulator, seed: int, index: int, size: int) -> np.ndarray:
    """The parameters ``(size, d_theta)`` of task ``index``, drawn from ``sim.prior()`` with
    torch's CPU generator seeded from the task's stream (the caller's torch state is kept)."""
    prior_seq = _streams(seed, index)[0]
    with _TORCH_RNG_LOCK, torch.random.fork_rng(devices=[]):
        # the CPU generator alone: torch.manual_seed would also queue seeds for accelerators
        torch.default_generator.manual_seed(int(prior_seq.generate_state(1, np.uint64)[0] >> 1))
        theta = _prior(sim).sample((size,))
    return np.asarray(theta.detach().cpu().numpy(), dtype=np.float32).reshape(size, -1)


def run_chunk(
    sim: Simulator, seed: int, index: int, size: int, theta: np.ndarray | None = None
) -> ChunkResult:
    r"""Simulate task ``index``: ``size`` rows with their own deterministic random streams.

    The parameters are drawn from ``sim.prior()`` under a torch seed (or are the given
    ``theta (size, d_theta)``), and the simulations from a numpy ``Generator``, both derived
    from ``SeedSequence(seed, spawn_key=(index,))``. When the
    batched call raises, each row is retried alone with its own stream, so that only the rows
    that raise are lost; rows that raise or contain NaN/inf are marked failed.

    Raises:
        SimulatorError: the output breaks the contract, or every row of the task raised (a bug
            in the simulator rather than a failure of some parameters).
    """
    _keep_freed_memory()
    started = time.perf_counter()
    if theta is None:
        theta = draw_prior(sim, seed, index, size)
    sim_seq = _streams(seed, index)[1]
    theta = np.asarray(theta, dtype=np.float32).reshape(size, -1)
    if theta.shape[1] != sim.d_theta:
        raise SimulatorError(
            f"simulator '{sim.name}': prior draws have {theta.shape[1]} components, but "
            f"{sim.d_theta} parameters are named"
        )
    theta64 = theta.astype(np.float64)
    try:
        x = sim.simulate(theta64, np.random.default_rng(sim_seq))
    except SimulatorError:
        raise
    except Exception:  # noqa: BLE001 (user code can raise anything)
        x = _row_by_row(sim, theta64, sim_seq)
    else:
        x = sim.check_output(x, size)
    with np.errstate(over="ignore"):  # an overflow of this float32 sum: checked below
        total = x.sum()
    if np.isfinite(total):  # fast path: a NaN or inf makes the sum NaN/inf
        ok = np.ones(size, dtype=bool)
    else:
        ok = np.isfinite(x.reshape(size, -1)).all(axis=1)
        x = np.where(ok.reshape(-1, *[1] * len(sim.x_shape)), x, np.float32(np.nan))
    return ChunkResult(theta, x, ok, seconds=time.perf_counter() - started)


def _row_by_row(sim: Simulator, theta: np.ndarray, seq: np.random.SeedSequence) -> np.ndarray:
    x = np.full((theta.shape[0], *sim.x_shape), np.nan, dtype=np.float32)
    errors = []
    for j, row_seq in enumerate(seq.spawn(theta.shape[0])):
        try:
            out = sim.simulate(theta[j : j + 1], np.random.default_rng(row_seq))
        except Exception as error:  # noqa: BLE001 (user code can raise anything)
            errors.append(error)
            continue
        x[j] = sim.check_output(out, 1)[0]
    if theta.shape[0] > 1 and len(errors) == theta.shape[0]:
        first = errors[0]
        raise SimulatorError(
            f"simulator '{sim.name}' raised on every row of a task "
            f"({type(first).__name__}: {first}); fix the simulator"
        )
    return x


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


# Results held in memory, waiting for an earlier task, are at most this many windows of tasks
# (tasks in flight included): a straggler stalls the workers instead of filling the memory.
HELD_WINDOWS = 4


def _in_thread(fn: Callable[..., ChunkResult], *args: Any) -> Future:
    """``fn(*args)`` in a daemon thread of this process, on one torch thread as in a worker
    (a daemon, so that Ctrl-C does not wait for it to finish), its outcome in a Future."""
    future: Future = Future()

    def run() -> None:
        try:
            with one_torch_thread():
                future.set_result(fn(*args))
        except BaseException as error:  # noqa: BLE001 (handed to the caller via the future)
            future.set_exception(error)

    threading.Thread(target=run, name="simgen-first", daemon=True).start()
    return future


def _first_task_decides(
    sim: Simulator,
    seed: int,
    index: int,
    arguments: tuple[int, np.ndarray | None],
    remaining: int,
) -> tuple[int, Future]:
    """Run task ``index`` here, in a thread, and choose how many processes simulate the
    ``remaining`` tasks: all cores if it outlasts the pool's start (the pool pays whatever
    follows, so it starts meanwhile) or where :func:`~simgen.executors.pool_pays`, else 1
    (this process). Returns that number and the task's Future."""
    cores = default_workers()
    probe = _in_thread(run_chunk, sim, seed, index, *arguments)
    try:
        result = probe.result(timeout=executors.POOL_START_SECONDS)
    except TimeoutError:
        return cores, probe
    return (cores if pool_pays(result.seconds, result.nbytes, remaining, cores) else 1), probe


class _DrawsAhead:
    """Draws the prior parameters of tasks simulated in this process in a thread, a task
    ahead: task ``i + 1``'s while task ``i`` simulates (two_moons: 1.1 of 6.5 ms a task)."""

    def __init__(self, sim: Simulator, seed: int, chunk_size: int, order: list[int]) -> None:
        self.sim, self.seed, self.chunk_size, self.order = sim, seed, chunk_size, order
        self._next = dict(itertools.pairwise(order))
        self._draws: dict[int, Future] = {}
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="simgen-prior")

    def _draw(self, i: int) -> Future:
        if i not in self._draws:
            self._draws[i] = self._thread.submit(
                draw_prior, self.sim, self.seed, i, self.chunk_size
            )
        return self._draws[i]

    def arguments(self, i: int) -> tuple[int, np.ndarray]:
        """The size and parameters of task ``i``, and the next task's draw started."""
        draw = self._draw(i)
        if i in self._next:
            self._draw(self._next[i])
        del self._draws[i]
        return self.chunk_size, draw.result()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)


def _tasks_in_order(
    sim: Simulator,
    seed: int,
    chunk_size: int,
    indices: range,
    journal: Journal,
    workers: int | None,
    scheduler: str | None,
    on_done: Callable[[int], None],
    given: np.ndarray | None = None,
    on_workers: Callable[[int], None] = lambda k: None,
) -> Iterator[tuple[int, ChunkResult]]:
    """Yield ``(index, result)`` for every task in ``indices``, in order (with ``given``
    parameters, task ``i`` simulates rows ``[i * chunk_size, (i + 1) * chunk_size)`` of them).

    Tasks saved in the journal are read back (and simulated again if damaged); the others run on
    the executor, at most a window of them at a time, are saved when
    :meth:`Journal.worth_saving` (by a background thread, so that saving overlaps simulating),
    and are held until their turn. ``on_done(index)`` is called as each task finishes or is
    found in the journal. ``workers=None`` (without a scheduler): the first task to simulate
    decides (:func:`_first_task_decides`); ``on_workers`` is told the number of processes
    that simulate (1: this one).

    Raises:
        OSError: a task could not be saved in the journal (permissions; a full disk is a
            RunError, :func:`simgen.atomic.replacing`).
    """
    saved = journal.indices() & set(indices)
    for index in sorted(saved):
        on_done(index)
    todo = [i for i in indices if i not in saved]
    pending: dict[Future, int] = {}
    ready: dict[int, ChunkResult] = {}
    saves: list[Future] = []

    def arguments(i: int) -> tuple[int, np.ndarray | None]:
        """The size and given parameters of task ``i``."""
        if given is None:
            return chunk_size, None
        part = given[i * chunk_size : (i + 1) * chunk_size]
        return len(part), part

    if workers is None:
        workers = 1
        if scheduler is None and default_workers() > 1 and len(todo) > 1:
            first = todo.pop(0)
            workers, probe = _first_task_decides(sim, seed, first, arguments(first), len(todo))
            pending[probe] = first
    on_workers(workers)
    local = workers == 1 and scheduler is None
    with (
        executor(workers, scheduler) as (pool, window),
        ThreadPoolExecutor(1, thread_name_prefix="simgen-journal") as saver,
        _DrawsAhead(sim, seed, chunk_size, todo if local and given is None else []) as ahead,
    ):
        task, payload = task_and_payload(run_chunk, sim, local=local)
        task_arguments = ahead.arguments if ahead.order else arguments
        remaining = iter(todo)

        def fill() -> None:
            """Submit tasks, in order, while fewer than ``window`` run and fewer than
            ``HELD_WINDOWS`` windows of them wait for an earlier one (a slow task otherwise
            keeps every later result in memory while it runs)."""
            while (
                len(pending) < window
                and len(pending) + len(ready) < HELD_WINDOWS * window
                and (i := next(remaining, None)) is not None
            ):
                pending[pool.submit(task, payload, seed, i, *task_arguments(i))] = i

        fill()
        for index in indices:
            result = ready.pop(index, None)
            if result is None and index in saved:
                result = journal.read(index) or run_chunk(sim, seed, index, *task_arguments(index))
            while result is None:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    ready[i] = future.result()
                    if journal.worth_saving(ready[i]):
                        saves.append(saver.submit(journal.write, i, ready[i]))
                    on_done(i)
                result = ready.pop(index, None)
                if result is None or window > 1:
                    fill()
            yield index, result
            # In this process (window 1) the next task runs only now, so that the writer has
            # this one meanwhile, and the last task reaches it as soon as it is simulated.
            fill()
    for save in saves:
        save.result()


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
    n: int,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    workers: int | None = None,
    chunk_size: int | None = None,
    scheduler: str | None = None,
    progress: bool | None = None,
    on_report: Callable[[SimulationReport], None] | None = None,
    theta: Any = None,
) -> Store:
    """Simulate ``n`` rows ``(theta ~ prior, x ~ simulator(theta))`` into the HDF5 file ``path``,
    or the simulations of given parameters ``theta``.

    Resumable and extendable: rerunning after any stop finishes the same rows, and asking a
    finished file for more rows appends them, in both cases giving exactly the file that one
    uninterrupted run gives. A file made with another simulator, options, seed or chunk size is
    refused, never overwritten.

    Args:
        simulator: A :class:`Simulator` or a registered name / import path (default options).
        n: Rows to attempt in total (failed rows count, and are kept under ``failed/theta``).
        path: The data file.
        seed: Root seed of all random streams.
        workers: Processes simulating in parallel, each with one torch thread; 1 runs in
            this process (also with one torch thread, restored after). Default: the first
            task runs in this process, and the others in a pool of all cores where that
            finishes sooner (long runs of slow simulators), else here too
            (:func:`_first_task_decides`, :func:`simgen.executors.pool_pays`).
        chunk_size: Rows per task (default: the simulator's ``chunk_size``).
        scheduler: Address of a Dask scheduler (``tcp://host:8786``): run the tasks there.
        progress: Show a progress bar on stderr (default: when stderr is a terminal).
        on_report: Called with the :class:`SimulationReport` at the end.
        theta: Parameters to simulate instead of prior draws, ``(n, d_theta)`` (array-like),
            inside the prior's support: e.g. posterior samples, for a second round of
            simulations where the posterior is (``examples/sequential.py``), with a seed of
            its own (with the first round's, every row reuses that round's noise, and
            :func:`simgen.merge` refuses the pair). The file's ``prior`` stays the
            simulator's; the parameters' digest is part of the run's identity, so a file is
            resumed only with the same parameters.

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
        report = _run(sim, n, path, journal, identity, workers, scheduler, progress, given)
    report.seconds = time.perf_counter() - started
    if on_report is not None:
        on_report(report)
    return Store(path)  # checked when found (_rows_done) or just written


def _row_bytes(sim: Simulator) -> int:
    """Bytes of one row in the data file: float32 ``theta`` and ``x``."""
    return 4 * (sim.d_theta + math.prod(sim.x_shape))


def _failure(error: BaseException, journal: Journal, path: Path, nbytes: int) -> RunError | None:
    """The one-line error of a run that ``error`` stopped (``nbytes``: the size of the file it
    was building), or None where ``error`` says it well enough."""
    saved = len(journal.indices())
    kept = f"{saved} tasks are saved in {journal.dir}" if saved else "no task was worth saving"
    if isinstance(error, KeyboardInterrupt):
        return RunError(f"interrupted; {kept}: rerun the same command to resume")
    if isinstance(error, BrokenProcessPool):
        return RunError(
            f"a worker process died ({error}): the simulator may have crashed it (a segfault, "
            "an exit, memory), which workers=1 shows here; and a script that starts simulate() "
            "with worker processes (workers > 1, or the default for a long run of a slow "
            "simulator) must do so under `if __name__ == '__main__':`"
        )
    cause = no_room(error)
    if cause is not None:
        return RunError(
            f"cannot write {path}: {cause} (the run needs about {nbytes / 1e6:,.1f} MB), then "
            f"rerun the same command to resume ({kept})"
        )
    return None


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
    with progress_bar(n - n_old, f"simulate {sim.name}", enabled=progress) as bar:
        try:
            with Appender(open_building) as appender:
                tasks = _tasks_in_order(
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
                    failed_new += int((~result.ok[rows]).sum())
                appender.close({"n_requested": n, "n_simulated": n})
        except BaseException as error:
            journal.building.unlink(missing_ok=True)  # a rerun builds it afresh: free its space
            if not journal.indices():  # nothing to resume: leave no folder to refuse other runs
                journal.remove()
            failure = _failure(error, journal, path, nbytes)
            if failure is None:
                raise
            raise failure from None
    rows_total, failed_total = appender.rows
    os.replace(journal.building, path)
    fsync_path(path.parent)
    journal.remove()
    workers_used = None if scheduler is not None else used[0]
    return SimulationReport(
        n - n_old, failed_new, rows_total, failed_total, 0.0, resumed, workers_used
    )
