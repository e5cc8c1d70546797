"""Simulation tasks: what one task simulates, and how a run's tasks run in order.

Task ``i`` of a run simulates ``chunk_size`` rows: its parameters are drawn from the prior under
a torch seed, and its simulations from a numpy ``Generator``, both from
``numpy.random.SeedSequence(seed, spawn_key=(i,))`` (:func:`run_chunk`, :func:`draw_prior`), so a
task's rows do not depend on where it runs. :func:`tasks_in_order` runs a run's tasks in this
process, a process pool or a Dask cluster (:mod:`simgen.data.executors`), saves the slow ones in the
journal (:mod:`simgen.data.journal`), and yields them in order to the one writer.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from simgen.data import executors
from simgen.data.executors import (
    default_workers,
    executor,
    pool_pays,
    task_and_payload,
)
from simgen.data.journal import ChunkResult, Journal
from simgen.data.simulator import Simulator
from simgen.errors import SimulatorError
from simgen.threads import torch_threads

if TYPE_CHECKING:
    from typing import Self

__all__ = ["HELD_WINDOWS", "draw_prior", "run_chunk", "tasks_in_order"]

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
    _keep_freed_memory()
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
        SimulatorError: the output breaks the contract (shape, dtype).
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
    theta64, error = theta.astype(np.float64), ""
    try:
        x = sim.simulate(theta64, np.random.default_rng(sim_seq))
    except SimulatorError:
        raise
    except Exception:  # noqa: BLE001 (user code can raise anything)
        x, error = _row_by_row(sim, theta64, sim_seq)
    else:
        x = sim.check_output(x, size)
    with np.errstate(over="ignore"):  # an overflow of this float32 sum: checked below
        total = x.sum()
    if np.isfinite(total):  # fast path: a NaN or inf makes the sum NaN/inf
        ok = np.ones(size, dtype=bool)
    else:
        ok = np.isfinite(x.reshape(size, -1)).all(axis=1)
        x = np.where(ok.reshape(-1, *[1] * len(sim.x_shape)), x, np.float32(np.nan))
    return ChunkResult(theta, x, ok, seconds=time.perf_counter() - started, error=error)


def _row_by_row(
    sim: Simulator, theta: np.ndarray, seq: np.random.SeedSequence
) -> tuple[np.ndarray, str]:
    """Each row alone with its own stream: ``x`` (NaN where a row raised) and the first
    error's ``"Type: message"`` ("" when no row raised)."""
    x = np.full((theta.shape[0], *sim.x_shape), np.nan, dtype=np.float32)
    errors = []
    for j, row_seq in enumerate(seq.spawn(theta.shape[0])):
        try:
            out = sim.simulate(theta[j : j + 1], np.random.default_rng(row_seq))
        except Exception as error:  # noqa: BLE001 (user code can raise anything)
            errors.append(error)
            continue
        x[j] = sim.check_output(out, 1)[0]
    return x, (f"{type(errors[0]).__name__}: {errors[0]}" if errors else "")


# Results held in memory, waiting for an earlier task, are at most this many windows of tasks
# (tasks in flight included): a straggler stalls the workers instead of filling the memory.
HELD_WINDOWS = 4


def _in_thread(fn: Callable[..., ChunkResult], *args: Any) -> Future:
    """``fn(*args)`` in a daemon thread of this process, on one torch thread as in a worker
    (a daemon, so that Ctrl-C does not wait for it to finish), its outcome in a Future."""
    future: Future = Future()

    def run() -> None:
        try:
            with torch_threads(1):
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
    follows, so it starts meanwhile) or where :func:`~simgen.data.executors.pool_pays`, else 1
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


def tasks_in_order(
    sim: Simulator,
    seed: int,
    chunk_size: int,
    indices: Sequence[int],
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
    that simulate (1: this one). In this process, each task's prior draws are made in a
    thread while the task before it simulates (:class:`_DrawsAhead`).

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
