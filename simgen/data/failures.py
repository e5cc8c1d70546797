"""The errors of a simulation run that stopped or whose simulator failed whole tasks.

Shared by a run (:func:`simgen.data.simulation.simulate`) and a retry of its failed tasks
(:mod:`simgen.data.retry`): both say in one line what happened and what was kept.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from simgen.atomic import no_room
from simgen.data.journal import Journal
from simgen.errors import RunError, SimulatorError

__all__ = ["stop_error", "whole_task_error"]


def stop_error(error: BaseException, journal: Journal, path: Path, nbytes: int) -> RunError | None:
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


def whole_task_error(name: str, whole: list[list], path: Path) -> SimulatorError:
    """The error of a run whose simulator ``name`` raised on every row of the tasks ``whole``
    (``[task, rows, error]`` each): a bug rather than a failure of some parameters. The file
    at ``path`` already holds those rows under ``failed/theta``."""
    rows = sum(w[1] for w in whole)
    return SimulatorError(
        f"simulator '{name}' raised on every row of {len(whole)} task(s) ({whole[0][2]}); their "
        f"{rows:,} rows are under failed/theta of {path} (attribute failed_errors names each "
        "task's error): fix the simulator, then rerun with --retry-failed (retry_failed=True)"
    )
