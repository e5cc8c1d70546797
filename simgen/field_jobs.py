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
from simgen.diagnostics.plots import plot_corner, plot_field_posterior
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
    parameter row of ``theta`` (rows, or a file of them: :func:`read_theta_rows`), or with
    ``theta`` None ``n`` pairs of parameters and maps
    (:meth:`~simgen.inference.field_posterior.FieldPosterior.sample_joint`), and write them
    (``x``, ``(m, n, *x_shape)``; ``m = 1`` for pairs, whose ``theta`` is ``(n, d)`` with
    ``log_prob``) with the observation and the sampler's diagnostics to ``out``; with
    ``plot``, figures beside it (``.png``: the maps of the first row; ``-theta.png``: the
    parameters' corner plot).

    Returns:
        A summary: ``path``, ``draws``, ``sampler`` and its diagnostics (and ``plot``).
    """
    out = Path(out)
    check_writable(out)
    measurement = measurement_of(emulator.x_shape, mask, beam, noise)
    y = read_array(observed).astype(np.float64)
    posterior = FieldPosterior(emulator, measurement)
    if theta is None:
        method = "smc"
        result = posterior.sample_joint(y, n, steps=steps or 50, seed=seed, progress=progress)
        rows = result.theta.numpy()
    else:
        is_file = isinstance(theta, str | os.PathLike)
        rows = read_theta_rows(theta) if is_file else np.atleast_2d(np.asarray(theta))
        method = "gibbs" if sampler == "auto" else sampler
        result = posterior.sample(
            y, torch.as_tensor(rows, dtype=torch.float32), n, method=method, steps=steps,
            chains=chains or 32, seed=seed, progress=progress,
        )  # fmt: skip
    datasets = {"x": result.x.numpy(), "theta": rows.astype(np.float32), "observed": y,
                "seen": measurement.seen.numpy()}  # fmt: skip
    if result.log_prob is not None:
        datasets["log_prob"] = result.log_prob.numpy()
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
        plot_field_posterior(y, measurement.seen.numpy(), result.x[0].numpy(), picture)
        summary["plot"] = str(picture)
        if theta is None:
            corner = out.with_name(out.stem + "-theta.png")
            plot_corner(rows, emulator.parameters_names, corner)
            summary["plot_theta"] = str(corner)
    shown = {k: v for k, v in result.diagnostics.items() if k in ("rhat", "ess")}
    what = f"{n:,} (theta, map) pairs" if theta is None else f"{n:,} maps per theta"
    summary["message"] = f"wrote {what} given the measurement to {out} by {method}" + "".join(
        f"; {k} {max(v) if k == 'rhat' else min(v):.3g}" if isinstance(v, list)
        else f"; {k} {v:.3g}" for k, v in shown.items()
    )  # fmt: skip
    return summary
