"""Writing files atomically: a temporary file beside the target, renamed over it when complete.

A reader finds the old file or the new one, never a part of one. A write that fails (a full
disk, a quota, a file-size limit) leaves no temporary file behind to hold the space, and stops
with one line that says what to do instead of the library's report of the failed call.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simgen.errors import RunError, UsageError

__all__ = ["check_room", "fsync_path", "make_folder", "no_room", "replacing"]

# errno of a write that failed for want of room, and what to do about it
_NO_ROOM = {
    errno.ENOSPC: "no space is left on its device: make room",
    errno.EFBIG: "it reached the file-size limit of this shell: raise `ulimit -f`",
    getattr(errno, "EDQUOT", errno.ENOSPC): "the disk quota is used up: make room",
}


def check_room(path: Path, nbytes: int) -> None:
    """Refuse, in one line, to start writing about ``nbytes`` bytes to ``path`` where its disk
    has less free space: a run would otherwise stop when the disk fills, maybe hours later.

    Raises:
        UsageError: less free space than ``nbytes``.
    """
    free = shutil.disk_usage(path.parent).free
    if free < nbytes:
        raise UsageError(
            f"{path} needs about {nbytes / 1e6:,.1f} MB but its disk has {free / 1e6:,.1f} MB "
            "free: make room or choose another -o path"
        )


def fsync_path(path: Path) -> None:
    """Flush a file or folder to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def no_room(error: BaseException) -> str | None:
    """What to do when ``error``, or an error that it was raised while handling, is a write that
    failed for want of room; None for any other error. (Libraries report such a failure in
    their own words: torch as a RuntimeError raised while handling the OSError of the write,
    HDF5 again when the file's close, after the failed write, fails too.)"""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_ROOM:
            return _NO_ROOM[seen.errno]
        seen = seen.__context__
    return None


@contextmanager
def replacing(path: Path, sync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write the new file to; when the block ends,
    rename it over ``path``, and with ``sync`` fsync the file before and its folder after (the
    new file then survives a power loss). When the block raises, delete the temporary file.

    Raises:
        RunError: a write failed for want of room (:func:`no_room`), in one line.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        if sync:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        cause = no_room(error)
        if cause is None:
            raise
        raise RunError(f"cannot write {path}: {cause} and run again") from None
    if sync:
        fsync_path(path.parent)


def make_folder(path: str | os.PathLike) -> Path:
    """The folder ``path``, made with its parents when missing, and writable.

    Raises:
        UsageError: it cannot be made (a file in the way, a read-only or missing parent) or
            written, in one line.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot make the folder {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"cannot write in the folder {path}: permission denied")
    return path
