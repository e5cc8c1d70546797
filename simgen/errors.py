"""Exceptions that carry a user-facing message and a command-line exit status.

Every error a user can cause or fix is one of these, with a message of one line that says what
was wrong and how to fix it. The command line prints the message and exits with ``exit_code``:
2 for bad usage or bad input, 1 for a run that failed.
"""

from __future__ import annotations

__all__ = ["RunError", "SimgenError", "SimulatorError", "StoreError", "UsageError"]


class SimgenError(Exception):
    """Base class of simgen's user-facing errors."""

    exit_code: int = 1


class UsageError(SimgenError, ValueError):
    """Bad usage or bad input: an unknown name, a wrong option, a file that cannot be used."""

    exit_code = 2


class StoreError(UsageError):
    """A data file that is missing, unreadable, not simgen's, truncated or of another run."""


class SimulatorError(SimgenError):
    """A simulator broke its contract (wrong shape or dtype) or failed on every row."""


class RunError(SimgenError):
    """A run that started and then failed or was interrupted."""
