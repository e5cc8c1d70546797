"""Batch jobs with a trained emulator: emulate many thetas, evaluate the density of a data file.

These are what ``simgen sample --theta`` and ``simgen log-prob`` run; both go in batches with a
progress bar, under ``torch.no_grad``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from simgen.data.provenance import data_record, recorded_simulator
from simgen.data.store import Store
from simgen.emulator import Emulator
from simgen.terminal import progress_bar

__all__ = ["emulate", "evaluate"]


def emulate(
    emulator: Emulator,
    theta: np.ndarray,
    n: int,
    *,
    log_prob: bool = True,
    batch_size: int = 4096,
    progress: bool | None = None,
    **sampler: Any,
) -> dict[str, np.ndarray]:
    """Draw ``n`` emulated x for each row of ``theta`` ``(m, d)``.

    Returns:
        ``x`` ``(m, n, *x_shape)``, ``theta`` ``(m, d)`` and, with ``log_prob``, the emulator's
        ``log_prob`` ``(m, n)`` of each sample.
    """
    theta = np.atleast_2d(np.asarray(theta, np.float32))
    m = len(theta)
    xs, lps = [], []
    per = max(1, batch_size // max(n, 1))
    with progress_bar(m * n, "emulate", unit="samples", enabled=progress) as bar:
        for start in range(0, m, per):
            t = torch.from_numpy(theta[start : start + per])
            x = emulator.sample(t, n, **sampler).transpose(0, 1)  # (b, n, *x_shape)
            xs.append(x.cpu().numpy())
            if log_prob:
                with torch.no_grad():
                    lps.append(emulator.log_prob(x, t[:, None, :]).cpu().numpy())
            bar.advance(len(t) * n)
    out = {"x": np.concatenate(xs), "theta": theta}
    if log_prob:
        out["log_prob"] = np.concatenate(lps)
    return out


def evaluate(
    emulator: Emulator,
    store: Store,
    *,
    batch_size: int = 4096,
    limit: int | None = None,
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """``log p(x | theta)`` of the emulator for each row of a data file, and the simulator's
    exact log-likelihood beside it when the simulator has one.

    Returns:
        ``log_prob`` ``(N,)``, and ``exact_log_prob`` ``(N,)`` where available.
    """
    stop = len(store) if limit is None else min(limit, len(store))
    try:
        sim = recorded_simulator(data_record(store.metadata))
    except Exception:  # noqa: BLE001 (the exact likelihood is a bonus, never a failure)
        sim = None
    exact = sim is not None and sim.has_log_likelihood
    lps, exacts = [], []
    with progress_bar(stop, "log-prob", enabled=progress) as bar:
        for theta, x in store.batches(batch_size, stop=stop):
            with torch.no_grad():
                lps.append(emulator.log_prob(x, theta).cpu().numpy())
            if exact:
                exacts.append(sim.log_likelihood(x.double().numpy(), theta.double().numpy()))
            bar.advance(len(theta))
    out = {"log_prob": np.concatenate(lps) if lps else np.zeros(0)}
    if exact:
        out["exact_log_prob"] = np.concatenate(exacts)
    return out
