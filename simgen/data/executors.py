"""Where simulation tasks run: in this process, a process pool, or a Dask cluster.

Every executor is a ``concurrent.futures.Executor`` (Dask's through ``Client.get_executor()``),
so one loop drives them all. Processes and Dask workers get the simulator by value
(cloudpickle), so classes defined in a notebook or a script work there too.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import cloudpickle
import numpy as np
import torch

from simgen.data.journal import ChunkResult
from simgen.data.simulator import Simulator
from simgen.errors import UsageError
from simgen.threads import torch_threads

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["default_workers", "executor", "pool_pays", "task_and_payload"]

# What a process pool costs, measured on the 2-core machine of the benchmarks, two workers
# simulating beside this process: starting it (spawning processes that import numpy and torch)
# took 1.6 s; then each result costs this process, which receives and writes it, 0.6 ms (tasks
# of 20 rows) plus its bytes at about 300 MB/s (two_moons and slcp, 1.7 and 2.65 MB a task: 5.7
# and 9.4 ms a task over 1e7 to 3e7 rows).
POOL_START_SECONDS = 2.0
RESULT_SECONDS = 6e-4
RESULT_BYTES_PER_S = 3e8


def default_workers() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def pool_pays(task_seconds: float, task_bytes: int, tasks: int, workers: int) -> bool:
    r"""Whether ``workers`` processes finish ``tasks`` tasks like one that took
    ``task_seconds`` in this process and returned ``task_bytes``, sooner than this process
    alone, which takes :math:`m t` for :math:`m` tasks of :math:`t` seconds. The pool takes

    .. math::
        T_\text{start} + \max\left(\lceil m / k \rceil t,\; m (t_0 + b / r)\right):

    its start, then rounds of :math:`k` tasks, unless this process, which receives every
    result (:math:`t_0` plus :math:`b` bytes at :math:`r` bytes/s), is the slower. So
    simulators that make data about as fast as this process can take it in (two_moons, slcp,
    gaussian_linear, gaussian_mixture: two workers were 0.68 to 0.77 times as fast as this
    process alone over 4 s, and no faster per task over 3e7 rows) and short runs stay in this
    process, and long runs of slow simulators (oscillator, lotka_volterra, molecular) get the
    pool."""
    alone = tasks * task_seconds
    rounds = math.ceil(tasks / workers) * task_seconds
    receiving = tasks * (RESULT_SECONDS + task_bytes / RESULT_BYTES_PER_S)
    return POOL_START_SECONDS + max(rounds, receiving) < alone


_WORKER_SIMULATORS: dict[bytes, Simulator] = {}


def _run_pickled(
    run_chunk: Callable[..., ChunkResult],
    payload: bytes,
    seed: int,
    index: int,
    size: int,
    theta: np.ndarray | None = None,
) -> ChunkResult:
    """``run_chunk`` (:func:`simgen.data.tasks.run_chunk`) in a worker, the simulator sent once
    by value."""
    key = hashlib.sha256(payload).digest()
    if key not in _WORKER_SIMULATORS:
        _WORKER_SIMULATORS.clear()
        _WORKER_SIMULATORS[key] = cloudpickle.loads(payload)
    return run_chunk(_WORKER_SIMULATORS[key], seed, index, size, theta)


def task_and_payload(
    run_chunk: Callable[..., ChunkResult], sim: Simulator, local: bool
) -> tuple[Callable[..., ChunkResult], Any]:
    """The function to submit and its first argument: the simulator itself in this process,
    its cloudpickle bytes for other processes.

    Raises:
        UsageError: the simulator cannot be pickled (it holds a lock, an open file, ...).
    """
    if local:
        return run_chunk, sim
    try:
        return functools.partial(_run_pickled, run_chunk), cloudpickle.dumps(sim)
    except Exception as error:  # noqa: BLE001 (pickling user objects can raise anything)
        raise UsageError(
            f"simulator '{sim.name}' cannot be sent to worker processes ({error}): keep "
            "locks, open files and connections out of its attributes (make them in simulate), "
            "or simulate in this process (workers=1)"
        ) from None


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


class _InlineExecutor(Executor):
    """Runs each task in the calling thread when it is submitted (one worker, no overhead)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 (handed to the caller via the future)
            future.set_exception(error)
        return future


@contextmanager
def executor(workers: int, scheduler: str | None) -> Iterator[tuple[Executor, int]]:
    """The executor for the tasks and how many to keep in flight."""
    if scheduler is not None:
        try:
            from distributed import Client
        except ImportError:
            raise UsageError(
                "--scheduler needs Dask distributed: pip install 'simgen[dask]'"
            ) from None
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as error:
            raise UsageError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
        try:
            slots = max(1, sum(client.nthreads().values()))
            tasks = client.get_executor(pure=False)
            try:
                yield tasks, 2 * slots
            except BaseException:
                tasks.shutdown(wait=False)  # cancels the tasks: a stopped run waits for none
                raise
            tasks.shutdown(wait=True)
        finally:
            client.close()
    elif workers == 1:
        with torch_threads(1):  # one worker, one core, as in the worker processes
            yield _InlineExecutor(), 1
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_sigint)
        try:
            yield executor, 2 * workers
        except BaseException:
            _stop_workers(executor)
            raise
        executor.shutdown(wait=True)


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """End a pool at once, its tasks unfinished: a stopped run (Ctrl-C, an error) should not
    wait for tasks that may take hours, and ``shutdown(cancel_futures=True)`` can even wait
    forever (python/cpython#94440: idle workers never get told to exit). The workers ignore
    SIGINT (a task would otherwise end in a KeyboardInterrupt), so they are terminated."""
    terminate = getattr(executor, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    processes = list((executor._processes or {}).values())  # private: no public way < 3.14
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()
