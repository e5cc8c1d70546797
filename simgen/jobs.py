"""What each ``simgen`` command runs, callable from Python with the same defaults.

Every command of the command line parses its arguments, calls one function (here, or the API's
own: :func:`simgen.simulate`, :func:`simgen.fit`, :func:`simgen.check`, ...) and prints the
summary dict it returns. These functions read and write the files the commands take.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simgen.data.samples import read_array, read_theta_rows, write_samples
from simgen.data.simulator import option_spec, simulators
from simgen.data.store import check_finite, check_writable, open_store
from simgen.diagnostics.plots import plot_corner
from simgen.diagnostics.report import check
from simgen.emulation import emulate, evaluate
from simgen.emulator import Emulator
from simgen.errors import UsageError
from simgen.field_jobs import field_file
from simgen.inference.metropolis import emulate_exact
from simgen.inference.posterior import Posterior
from simgen.train.config import read_config
from simgen.train.distributed import is_main_process
from simgen.train.loop import fit

__all__ = [
    "check_file",
    "describe_simulators",
    "emulate_file",
    "fit_file",
    "log_prob_file",
    "posterior_file",
    "sample_file",
]


def describe_simulators() -> list[dict[str, Any]]:
    """Every registered simulator with its parameters, x shape, options (type and default) and
    whether it has an exact log-likelihood (``simgen simulators``). A simulator that cannot be
    built with its default options is left out with a warning."""
    rows = []
    for name, cls in simulators(load=True).items():  # type: ignore[union-attr]
        try:
            sim = cls()
        except Exception as error:  # noqa: BLE001 (user code can raise anything)
            warnings.warn(
                f"simulator '{name}' cannot be built with default options: {error}", stacklevel=2
            )
            continue
        rows.append(
            {
                "name": name,
                "parameters": list(sim.parameters),
                "x_shape": list(sim.x_shape),
                "options": option_spec(cls),
                "exact_log_likelihood": sim.has_log_likelihood,
                "class": f"{cls.__module__}:{cls.__qualname__}",
            }
        )
    return rows


def fit_file(
    data: str | os.PathLike,
    out: str | os.PathLike,
    model: str = "flow",
    *,
    config: str | os.PathLike | None = None,
    train: dict[str, Any] | None = None,
    device: str = "auto",
    progress: bool | None = None,
    force: bool = False,
    proposal: bool = True,
) -> dict[str, Any]:
    """Fit a ``model`` emulator to the data file ``data`` and write it to ``out``
    (``simgen fit``): :func:`simgen.fit` with the ``[train]`` and ``[model]`` tables of the TOML
    file ``config``, ``train`` (the command's flags) over its ``[train]``.

    Returns:
        A summary: ``path``, ``family`` and the training metrics (empty on the ranks of a
        data-parallel fit other than the first).
    """
    settings, model_config = read_config(config) if config is not None else ({}, {})
    settings.update(train or {})
    emulator = fit(
        data, model, out, train=settings, config=model_config, device=device, progress=progress,
        force=force, proposal=proposal,
    )  # fmt: skip
    if not is_main_process():
        return {}
    m = {k: v for k, v in emulator.info["metrics"].items() if not isinstance(v, list)}
    message = (
        f"{out}: {model}, best validation loss {m['best_val_loss']:.4f} at epoch "
        f"{m['best_epoch']} of {m['epochs_run']} ({m['train_samples_per_s']:,.0f} samples/s)"
    )
    return {"path": str(out), "family": model, **m, "message": message}


def check_file(
    emulator: Emulator, out: str | os.PathLike, simulator: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`simgen.check` of ``emulator`` against its simulator (or the simulator named
    ``simulator``) into the folder ``out`` (``simgen check``); ``kwargs`` go to
    :func:`simgen.check`.

    Returns:
        The report, with a one-line ``message``.
    """
    report = check(emulator, out, simulator=emulator.simulator(simulator), **kwargs)
    cal, emu = report["calibration"], report["emulation"]
    c2st = "-" if emu["c2st_mean"] is None else f"{emu['c2st_mean']:.3f}"
    uniform = "uniform" if cal["sbc_uniform"] else "NOT uniform"
    message = (
        f"wrote {out}/report.json: emulation C2ST {c2st} (0.5 = indistinguishable); SBC "
        f"{uniform} (min p {min(cal['sbc_pvalues'].values()):.3g}); coverage within its 95% "
        f"band at {cal['coverage_within_band']:.0%} of levels"
    )
    return {**report, "message": message}


def _thetas(emulator: Emulator, theta: Any, seed: int) -> np.ndarray:
    """Rows of theta ``(m, d)`` from an array, a file of them, or a count of prior draws."""
    if isinstance(theta, int):
        torch.manual_seed(seed)
        values = emulator.prior().sample((theta,)).numpy()
    elif isinstance(theta, str | os.PathLike):
        values = read_theta_rows(Path(theta))
    else:
        values = np.atleast_2d(np.asarray(theta, np.float64))
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
        values = values.astype(np.float32)
    if values.ndim != 2 or values.shape[-1] != emulator.d_theta or not np.isfinite(values).all():
        raise UsageError(
            f"theta should hold {emulator.d_theta} finite numbers per row "
            f"({', '.join(emulator.parameters_names)}); got shape {values.shape}"
        )
    return values


def emulate_file(
    emulator: Emulator,
    out: str | os.PathLike,
    theta: Any,
    n: int = 1000,
    *,
    steps: int | None = None,
    sampler: str | None = None,
    metropolis: bool = False,
    log_prob: bool = True,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    r"""Emulate ``n`` draws :math:`x \sim p(x \mid \theta)` for each theta and write them, with
    their log densities, to the samples file ``out`` (``simgen sample --theta``).

    Args:
        theta: Rows ``(m, d)`` (or one ``(d,)``), a file of them (``.npy``, ``.csv``, HDF5 with
            ``theta``), or a count of draws from the prior.
        steps: The diffusion sampler's steps.
        sampler: The diffusion sampler, ``"ode"`` or ``"sde"``.
        metropolis: Make the draws exact with the simulator's unnormalised density
            (:func:`simgen.inference.metropolis.emulate_exact`).

    Returns:
        A summary: ``path``, ``thetas``, ``samples_per_theta`` and ``mean_log_prob``.
    """
    out = Path(out)
    check_writable(out)
    thetas = _thetas(emulator, theta, seed)
    kwargs = {k: v for k, v in (("steps", steps), ("sampler", sampler)) if v is not None}
    if kwargs and emulator.family != "diffusion":
        raise UsageError("steps and sampler (--steps, --method) apply to diffusion models only")
    if sampler not in (None, "ode", "sde"):
        raise UsageError(f"the diffusion sampler must be ode or sde, not '{sampler}'")
    torch.manual_seed(seed)
    if metropolis:
        result = emulate_exact(
            emulator, emulator.simulator(), thetas, n, seed=seed, progress=progress
        )
        if not log_prob:
            del result["log_prob"]
    else:
        result = emulate(emulator, thetas, n, log_prob=log_prob, progress=progress, **kwargs)
    attrs = {
        "kind": "emulation",
        "model": emulator.identity,
        "family": emulator.family,
        "seed": seed,
        "parameters": list(emulator.parameters_names),
        "metropolis": metropolis,
    }
    write_samples(out, result, attrs)
    summary: dict[str, Any] = {"path": str(out), "thetas": len(thetas), "samples_per_theta": n}
    if metropolis:
        summary["mean_acceptance"] = float(result["acceptance"].mean())
        summary["mean_distinct"] = float(result["distinct"].mean())
    if log_prob:
        summary["mean_log_prob"] = float(result["log_prob"].mean())
    summary["message"] = f"wrote {n:,} samples for each of {len(thetas):,} thetas to {out}"
    return summary


def posterior_file(
    emulator: Emulator,
    observed: Any,
    out: str | os.PathLike,
    n: int = 1000,
    *,
    sampler: str = "auto",
    chains: int | None = None,
    warmup: int | None = None,
    seed: int = 0,
    plot: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    r"""Draw ``n`` samples of :math:`p(\theta \mid x_{obs})` with the emulator as the likelihood
    and write them, with their log densities and the sampler's diagnostics, to ``out``
    (``simgen sample --observed``); with ``plot``, a corner plot beside it (``.png``).

    Args:
        observed: The observation ``x_obs`` (``x_shape``), or a ``.npy`` file holding it.

    Returns:
        A summary: ``path``, ``draws``, ``sampler`` (the engine's path), ``reason`` (why it
        left importance sampling, or None), ``ess``, ``khat``, ``log_evidence`` and
        ``log_evidence_se`` (and ``plot``).
    """
    out = Path(out)
    check_writable(out)
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused by Posterior
        x_obs = read_array(observed).astype(np.float32)
    result = Posterior(emulator).sample(
        x_obs, n, sampler=sampler, chains=chains, warmup=warmup, seed=seed, progress=progress
    )
    diagnostics = result.diagnostics
    datasets = {"theta": result.theta.numpy(), "log_prob": result.log_prob.numpy()}
    attrs = {
        "kind": "posterior",
        "model": emulator.identity,
        "family": emulator.family,
        "seed": seed,
        "parameters": list(emulator.parameters_names),
        "diagnostics": diagnostics,
    }
    write_samples(out, {**datasets, "observed": x_obs}, attrs)
    keys = ("sampler", "reason", "ess", "khat", "log_evidence", "log_evidence_se")
    summary = {"path": str(out), "draws": len(result.theta), **{k: diagnostics[k] for k in keys}}
    if plot:
        picture = out.with_suffix(".png")
        plot_corner(result.theta.numpy(), emulator.parameters_names, picture)
        summary["plot"] = str(picture)
    how = f"by {summary['sampler']}" + (f" ({summary['reason']})" if summary["reason"] else "")
    se = summary["log_evidence_se"]
    summary["message"] = (
        f"wrote {summary['draws']:,} posterior draws to {out} {how}; importance sampling ESS "
        f"{summary['ess']:.0f}, Pareto k {summary['khat']:.2f}, log evidence "
        f"{summary['log_evidence']:.3f}" + ("" if se is None else f" +- {se:.3f}")
    )
    return summary


def log_prob_file(
    emulator: Emulator,
    data: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    r""":math:`\log p(x \mid \theta)` of the emulator for each row of the data file ``data``,
    beside the simulator's exact log-likelihood where it has one (``simgen log-prob``), written
    to ``out`` when given.

    Returns:
        A summary: ``rows``, ``mean_log_prob`` and, with an exact likelihood,
        ``mean_abs_error_nats`` (and ``path``).
    """
    store = open_store(data)
    emulator.check_data(store)
    if out is not None:
        check_writable(Path(out))
    check_finite(store, limit)
    result = evaluate(emulator, store, limit=limit, progress=progress)
    lp = result["log_prob"]
    summary: dict[str, Any] = {"rows": len(lp), "mean_log_prob": float(lp.mean())}
    if "exact_log_prob" in result:
        summary["mean_abs_error_nats"] = float(abs(lp - result["exact_log_prob"]).mean())
    if out is not None:
        attrs = {"kind": "log_prob", "model": emulator.identity, "data": str(data)}
        write_samples(out, result, attrs)
        summary["path"] = str(out)
    summary["message"] = f"mean log p(x|theta) = {lp.mean():.4f} over {len(lp):,} rows"
    if "mean_abs_error_nats" in summary:
        summary["message"] += (
            f"; mean |learned - exact| = {summary['mean_abs_error_nats']:.4f} nats"
        )
    return summary


def sample_file(
    emulator: Emulator,
    out: str | os.PathLike,
    n: int = 1000,
    *,
    theta: str | None = None,
    theta_file: str | os.PathLike | None = None,
    from_prior: int | None = None,
    observed: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``simgen sample``: :func:`emulate_file` at the thetas of exactly one of ``theta`` (one
    row, comma-separated numbers), ``theta_file`` or ``from_prior`` (a count of prior draws),
    or :func:`posterior_file` given ``observed`` (a ``.npy`` file), or
    :func:`simgen.field_jobs.field_file` given ``observed`` and a measurement (``mask``,
    ``beam``, ``noise`` in ``kwargs``); ``kwargs`` go to the one called.

    Raises:
        UsageError: none or several of the thetas, or thetas or ``metropolis`` beside
            ``observed``.
    """
    if theta is not None:
        try:
            theta = [[float(v) for v in theta.split(",")]]
        except ValueError:
            raise UsageError(f"--theta '{theta}' should be numbers separated by commas") from None
    chosen = [v for v in (theta, theta_file, from_prior) if v is not None]
    if observed is not None and {"mask", "beam", "noise"} & set(kwargs):
        if len(chosen) > 1 or from_prior is not None:
            raise UsageError("maps given a measurement: give --theta or --theta-file (maps at "
                             "those parameters), or neither (parameters and maps)")  # fmt: skip
        return field_file(emulator, observed, out, chosen[0] if chosen else None, n, **kwargs)
    if observed is not None:
        if chosen or kwargs.pop("metropolis", False):
            raise UsageError(
                "--observed samples the posterior: drop --theta/--from-prior/--metropolis"
            )
        return posterior_file(emulator, observed, out, n, **kwargs)
    if len(chosen) != 1:
        raise UsageError("give exactly one of --theta, --theta-file or --from-prior")
    return emulate_file(emulator, out, chosen[0], n, **kwargs)
