"""Crash-safe journal of finished simulation tasks, kept beside a data file while it grows.

``simgen simulate`` never writes into a finished data file: the new HDF5 file is built inside
the folder ``<data>.parts`` and renamed over ``<data>`` only when complete, so a stop at any
moment (Ctrl-C, ``kill -9``, power loss) leaves the old file untouched. Every task (a chunk of
rows) is a deterministic function of (seed, index), so what a stop loses can always be simulated
again; the journal only saves time. A task is saved, atomically (temporary name, then rename),
as ``<data>.parts/task-<index>.npy`` when simulating it again would cost clearly more than
saving it (:meth:`Journal.worth_saving`): slow simulators resume where they stopped, while fast
ones are not slowed down by writing everything twice. A saved task that cannot be read is simulated again.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simgen.atomic import replacing
from simgen.errors import StoreError, UsageError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

__all__ = ["ChunkResult", "Journal"]


@dataclass
class ChunkResult:
    """One simulation task: all ``chunk_size`` rows, successful or not.

    Attributes:
        theta: Parameters, ``(m, d_theta)`` float32.
        x: Simulations, ``(m, *x_shape)`` float32; NaN where ``ok`` is False.
        ok: Whether each row's simulation succeeded, ``(m,)`` bool.
        seconds: Time it took to simulate.
        error: The first exception a row raised, ``"Type: message"`` ("" when none did).
    """

    theta: np.ndarray
    x: np.ndarray
    ok: np.ndarray
    seconds: float = 0.0
    error: str = ""

    @property
    def nbytes(self) -> int:
        """Size of the arrays in bytes."""
        return self.theta.nbytes + self.x.nbytes + self.ok.nbytes


class Journal:
    """The folder ``<data>.parts`` of finished tasks of one run identity."""

    def __init__(self, data_path: Path) -> None:
        self.dir = Path(f"{data_path}.parts")
        self.manifest = self.dir / "manifest.json"
        self.building = self.dir / "building.h5"

    def exists(self) -> bool:
        """Whether an earlier run left a journal."""
        return self.manifest.exists()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the journal folder (made if missing) for one run: an exclusive advisory lock
        (``flock``), released on exit, also when the process dies, so that a second run on the
        same data file is refused instead of mixing its tasks into the first one's.

        On a file system that takes no locks (NFS without its lock daemon), it warns and goes
        on without one.

        Raises:
            StoreError: another run holds the lock.
            UsageError: the folder cannot be made (a file in its place, a file system that
                takes no new files).
        """
        try:
            self.dir.mkdir(exist_ok=True)
        except OSError as error:
            raise UsageError(
                f"cannot write {str(self.dir).removesuffix('.parts')}: its journal folder "
                f"{self.dir} cannot be made ({error.strerror}); choose another -o path"
            ) from None
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StoreError(
                        f"another simgen run is writing {self.dir.name.removesuffix('.parts')} "
                        f"(it holds {self.dir}): wait for it to finish, or stop it first"
                    ) from None
                except OSError as error:  # a network file system without locks (NFS, no lockd)
                    warnings.warn(
                        f"{self.dir} cannot be locked ({error.strerror}): make sure that one run "
                        f"at a time writes {self.dir.name.removesuffix('.parts')}",
                        stacklevel=3,
                    )
            yield
        finally:
            os.close(fd)
            try:
                self.dir.rmdir()  # only when empty: a refused run leaves no folder behind
            except OSError:
                pass

    def identity(self) -> dict[str, Any] | None:
        """The run identity recorded by the run that started the journal."""
        try:
            return json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return None

    def open(self, identity: dict[str, Any]) -> None:
        """Start the journal, or check that an existing one belongs to the same run.

        Raises:
            StoreError: an unfinished run with another simulator, options, seed or chunk size.
        """
        self.dir.mkdir(exist_ok=True)
        found = self.identity()
        if found is not None:
            # a key missing on one side reads as None (journals that predate theta_sha256)
            diff = ", ".join(
                f"{k}={found.get(k)!r} (now {identity.get(k)!r})"
                for k in sorted({*identity, *found})
                if found.get(k) != identity.get(k)
            )
            if diff:
                raise StoreError(
                    f"{self.dir} holds an unfinished run with {diff}: rerun with the same "
                    "arguments to finish it, or delete that folder to start over"
                )
        else:
            with replacing(self.manifest) as tmp:
                tmp.write_text(json.dumps(identity, sort_keys=True))
        for stale in self.dir.glob("*.tmp"):  # of a run that was killed
            stale.unlink()

    def _task_path(self, index: int) -> Path:
        return self.dir / f"task-{index:09d}.npy"

    def indices(self) -> set[int]:
        """Indices of the tasks saved so far."""
        return {int(p.stem.split("-")[1]) for p in self.dir.glob("task-*.npy")}

    @staticmethod
    def worth_saving(
        result: ChunkResult, write_bytes_per_s: float = 2e8, payoff: float = 3.0
    ) -> bool:
        """Whether simulating the task again would take ``payoff`` times longer than saving it
        (about 1 ms plus the bytes at 200 MB/s). Every run pays for its saves, but only a
        stopped run gains from them, so a task is saved only where that clearly pays; a stop
        then loses at most ``payoff`` times the time its saves would have taken."""
        return result.seconds > payoff * (1e-3 + result.nbytes / write_bytes_per_s)

    def write(self, index: int, result: ChunkResult) -> None:
        """Save one task atomically: four consecutive ``.npy`` arrays in one file, ``theta``,
        ``x``, ``ok`` and the error text (none, and no partial file left behind, when that
        fails: a full disk)."""
        with replacing(self._task_path(index)) as tmp, open(tmp, "wb") as f:
            for array in (result.theta, result.x, result.ok, np.array(result.error)):
                np.save(f, array, allow_pickle=False)

    def read(self, index: int) -> ChunkResult | None:
        """Load one task, or None when its file is missing or damaged."""
        try:
            with open(self._task_path(index), "rb") as f:
                theta, x, ok, error = (np.load(f, allow_pickle=False) for _ in range(4))
        except (OSError, ValueError, EOFError):
            return None
        if not (len(theta) == len(x) == len(ok)):
            return None
        return ChunkResult(theta, x, ok, error=str(error))

    def discard(self, keep_from: int) -> None:
        """Delete saved tasks with index below ``keep_from`` (already in the data file)."""
        for index in self.indices():
            if index < keep_from:
                self._task_path(index).unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the journal folder."""
        shutil.rmtree(self.dir, ignore_errors=True)
