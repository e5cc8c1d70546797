"""Where simulation tasks run: in this process, a process pool, or a Dask cluster.

Every executor is a ``concurrent.futures.Executor`` (Dask's through ``Client.get_executor()``),
so one loop drives them all. Processes and Dask workers get the simulator by value
(cloudpickle), so classes defined in a notebook or a script work there too.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Any

import cloudpickle
import numpy as np
import torch

from simgen.errors import UsageError
from simgen.journal import ChunkResult
from simgen.simulator import Simulator

__all__ = ["default_workers", "executor", "one_torch_thread", "task_and_payload"]


def default_workers() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (as one worker does), and restore the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_WORKER_SIMULATORS: dict[bytes, Simulator] = {}


def _run_pickled(
    payload: bytes, seed: int, index: int, size: int, theta: np.ndarray | None = None
) -> ChunkResult:
    """:func:`simgen.simulation.run_chunk` in a worker, the simulator sent once by value."""
    from simgen.simulation import run_chunk

    key = hashlib.sha256(payload).digest()
    if key not in _WORKER_SIMULATORS:
        _WORKER_SIMULATORS.clear()
        _WORKER_SIMULATORS[key] = cloudpickle.loads(payload)
    return run_chunk(_WORKER_SIMULATORS[key], seed, index, size, theta)


def task_and_payload(
    run_chunk: Callable[..., ChunkResult], sim: Simulator, local: bool
) -> tuple[Callable[..., ChunkResult], Any]:
    """The function to submit and its first argument: the simulator itself in this process,
    its cloudpickle bytes for other processes."""
    return (run_chunk, sim) if local else (_run_pickled, cloudpickle.dumps(sim))


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
            with client.get_executor(pure=False) as executor:
                yield executor, 2 * slots
        finally:
            client.close()
    elif workers == 1:
        with one_torch_thread():  # one worker, one core, as in the worker processes
            yield _InlineExecutor(), 1
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_sigint)
        try:
            yield executor, 2 * workers
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
