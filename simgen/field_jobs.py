"""``simgen sample --observed ... --mask/--beam``: maps given a measurement with a diffusion
emulator as the prior, written to an HDF5 file of samples (and a figure)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simgen.data.samples import read_array, read_theta_rows, write_samples
from simgen.data.store import check_writable
from simgen.diagnostics.plots import plot_field_posterior
from simgen.emulator import Emulator
from simgen.errors import UsageError
from simgen.inference.field_posterior import FieldPosterior
from simgen.inference.measurement import Beam, Mask, Measurement

__all__ = ["field_file", "measurement_of"]


def measurement_of(
    x_shape: tuple[int, ...], mask: Any = None, beam: float | None = None,
    noise: float | None = None,
) -> Measurement:  # fmt: skip
    """The measurement named by exactly one of ``mask`` (an array, or a ``.npy`` file, True
    where a pixel is seen) and ``beam`` (a FWHM in pixels), with white noise ``noise``.

    Raises:
        UsageError: neither or both, no noise, or a mask of another shape than the maps.
    """
    if (mask is None) == (beam is None):
        raise UsageError("name the measurement with exactly one of --mask and --beam")
    if noise is None:
        raise UsageError("a measurement needs --noise, the standard deviation of its noise")
    if beam is not None:
        return Beam(x_shape, beam, noise)
    seen = read_array(mask)
    if seen.shape != tuple(x_shape):
        raise UsageError(f"the mask has shape {seen.shape}; the model's maps are {x_shape}")
    return Mask(torch.as_tensor(seen), noise)


def field_file(
    emulator: Emulator,
    observed: Any,
    out: str | os.PathLike,
    theta: Any,
    n: int = 100,
    *,
    mask: Any = None,
    beam: float | None = None,
    noise: float | None = None,
    sampler: str = "gibbs",
    steps: int | None = None,
    chains: int | None = None,
    seed: int = 0,
    plot: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Draw ``n`` maps given the observation ``observed`` (an array or ``.npy`` file) seen by
    the measurement of ``mask``/``beam`` and ``noise`` (:func:`measurement_of`), at each
    parameter row of ``theta`` (rows, or a file of them: :func:`read_theta_rows`), and write
    them (``x``, ``(m, n, *x_shape)``) with the observation, the thetas and the sampler's
    diagnostics to ``out``; with ``plot``, a figure of the first row beside it (``.png``).

    Returns:
        A summary: ``path``, ``draws``, ``sampler`` and its diagnostics (and ``plot``).
    """
    out = Path(out)
    check_writable(out)
    is_file = isinstance(theta, str | os.PathLike)
    rows = read_theta_rows(theta) if is_file else np.atleast_2d(np.asarray(theta, np.float64))
    measurement = measurement_of(emulator.x_shape, mask, beam, noise)
    y = read_array(observed).astype(np.float64)
    method = "gibbs" if sampler == "auto" else sampler
    result = FieldPosterior(emulator, measurement).sample(
        y, torch.as_tensor(rows, dtype=torch.float32), n, method=method, steps=steps,
        chains=chains or 32, seed=seed, progress=progress,
    )  # fmt: skip
    datasets = {"x": result.x.numpy(), "theta": rows.astype(np.float32), "observed": y,
                "seen": measurement.seen.numpy()}  # fmt: skip
    attrs = {"kind": "field_posterior", "model": emulator.identity, "family": emulator.family,
             "seed": seed, "parameters": list(emulator.parameters_names), "noise": noise,
             "measurement": "beam" if beam is not None else "mask", "sampler": method,
             "diagnostics": result.diagnostics}  # fmt: skip
    if beam is not None:
        attrs["beam_fwhm"] = beam
    write_samples(out, datasets, attrs)
    summary = {"path": str(out), "draws": n, "sampler": method, **result.diagnostics}
    if plot:
        picture = out.with_suffix(".png")
        seen = measurement.seen.numpy()
        plot_field_posterior(y, seen, result.x[0].numpy(), picture)
        summary["plot"] = str(picture)
    shown = {k: v for k, v in result.diagnostics.items() if k in ("rhat", "ess")}
    summary["message"] = (
        f"wrote {n:,} maps per theta ({len(rows)} theta) given the measurement to {out} by "
        f"{method}" + "".join(f"; {k} {max(v) if k == 'rhat' else min(v):.3g}"
                              for k, v in shown.items())
    )  # fmt: skip
    return summary
