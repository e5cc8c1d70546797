"""The ``simgen`` command line: parses, calls the Python API, prints. No logic of its own.

Exit status: 0 success, 1 a run that failed, 2 bad usage or bad input, always with one line on
stderr that says what was wrong and how to fix it. Heavy modules (torch, h5py) are imported
inside the commands, so ``simgen --help`` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from simgen.errors import SimgenError

__all__ = ["app", "main"]

app = typer.Typer(
    name="simgen",
    help="Simulation-based inference with deep generative models: simulate, fit, sample.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")]
Device = Annotated[
    str, typer.Option(help="Where the model runs: auto (CUDA when present), cpu or cuda.")
]


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def _count(minimum: int) -> Callable[[str], int]:
    """A parser of counts of at least ``minimum`` that takes what people type for large ones:
    ``100000``, ``100_000``, ``1e5``, ``2.5e4``."""

    def count(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise typer.BadParameter(
                    f"{text!r} is not a whole number (write e.g. 100000, 100_000 or 1e5)"
                ) from None
            if not value.is_integer():
                raise typer.BadParameter(f"{text!r} is not a whole number") from None
            number = int(value)
        if number < minimum:
            raise typer.BadParameter(f"{number} is below the minimum, {minimum}")
        return number

    return count


@contextmanager
def _errors() -> Iterator[None]:
    """Turn simgen's errors into one line on stderr and the right exit status, and warnings
    into one line each (``warning: ...``, each text once: not Python's file and source line)."""
    shown: set[str] = set()

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        if str(message) not in shown:
            shown.add(str(message))
            typer.echo(f"warning: {message}", err=True)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    except SimgenError as error:
        _err(str(error))
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(1) from None
    except typer.Exit:
        raise
    except Exception as error:
        if os.environ.get("SIMGEN_DEBUG"):
            raise
        _err(f"{type(error).__name__}: {error} (set SIMGEN_DEBUG=1 for the traceback)")
        raise typer.Exit(1) from None


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _progress(quiet: bool, as_json: bool) -> bool | None:
    return False if quiet or as_json else None


@app.command("simulators")
def simulators_command(as_json: JsonOut = False) -> None:
    """List registered simulators: parameters, x shape, options, exact likelihood."""
    with _errors():
        from simgen.simulator import option_spec, simulators

        rows = []
        for name, cls in simulators(load=True).items():  # type: ignore[union-attr]
            try:
                sim = cls()
            except Exception as error:  # noqa: BLE001 (user code can raise anything)
                _err(f"simulator '{name}' cannot be built with default options: {error}")
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
        if as_json:
            _print_json(rows)
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("name", "parameters", "x shape", "options", "exact log p(x|θ)")
        for row in rows:
            options = ", ".join(f"{k}={v['default']!r}" for k, v in row["options"].items())
            table.add_row(
                row["name"],
                ", ".join(row["parameters"]),
                str(tuple(row["x_shape"])),
                options or "-",
                "yes" if row["exact_log_likelihood"] else "-",
            )
        Console().print(table)


@app.command("simulate")
def simulate_command(
    name: Annotated[str, typer.Argument(help="Registered name or import path pkg.module:Class.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="HDF5 file to write or extend.")],
    n: Annotated[
        int | None,
        typer.Option(
            "-n",
            "--n",
            help="Rows to simulate in total (with --theta-file: all); 1e6 is read as 1000000.",
            parser=_count(1),
            metavar="<int>",
        ),
    ] = None,
    theta_file: Annotated[
        Path | None,
        typer.Option(
            help="Simulate these thetas instead of prior draws: .npy (n, d), .csv rows, or the "
            "HDF5 file of `simgen sample --observed` (its posterior draws). Give a --seed of its "
            "own: with the first round's, every row reuses that round's noise."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Root random seed.")] = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes (default: all cores where they finish sooner, as in long runs "
            "of slow simulators; else this process alone).",
            min=1,
        ),
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Simulator option key=value (repeat).")
    ] = None,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            help="Rows per task (default: the simulator's).", parser=_count(1), metavar="<int>"
        ),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address, e.g. tcp://host:8786.")
    ] = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Simulate (theta, x) pairs into an HDF5 file; rerun to resume or to add rows."""
    with _errors():
        from simgen.errors import UsageError
        from simgen.simulation import simulate
        from simgen.simulator import get_simulator, parse_option, simulator_class

        cls = simulator_class(name)
        options = dict(parse_option(cls, text) for text in option or [])
        sim = get_simulator(name, **options)
        given = None if theta_file is None else _theta_rows(theta_file)
        if n is None and given is None:
            raise UsageError("give -n (rows to simulate) or --theta-file")
        n = len(given) if n is None else n
        reports = []
        simulate(
            sim,
            n,
            out,
            theta=given,
            seed=seed,
            workers=workers,
            chunk_size=chunk_size,
            scheduler=scheduler,
            progress=_progress(quiet, as_json),
            on_report=reports.append,
        )
        report = reports[0]
        summary = {"path": str(out), "simulator": sim.name, **vars(report)}
        if as_json:
            _print_json(summary)
        elif not quiet:
            rate = report.rows_new / report.seconds if report.seconds > 0 else float("nan")
            if report.rows_new == 0:
                typer.echo(f"{out} already holds {n:,} simulated rows; nothing to do", err=True)
            else:
                where = {None: "on the Dask cluster", 1: "in this process"}.get(
                    report.workers, f"in {report.workers} worker processes"
                )
                took = report.seconds
                took = f"{took:.3g}" if took < 100 else f"{took:,.0f}"
                typer.echo(
                    f"wrote {report.rows_new:,} rows of {sim.name} to {out} in "
                    f"{took} s ({rate:,.0f} rows/s, {where}); "
                    f"{report.rows_total:,} rows in the file",
                    err=True,
                )
        if report.failed_new and not quiet:
            typer.echo(
                f"warning: {report.failed_new:,} of {report.rows_new:,} rows failed (the "
                "simulator raised or gave NaN/inf); their theta is kept under failed/theta",
                err=True,
            )


@app.command("merge")
def merge_command(
    files: Annotated[list[Path], typer.Argument(help="Data files of one simulator and prior.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="New HDF5 file to write.")],
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Merge data files (runs with other seeds, rounds of sequential inference) into one.

    The merged file is for `simgen fit`, whose validation rows are the last file's last rows."""
    with _errors():
        from simgen.merging import merge

        store = merge(files, out, progress=_progress(quiet, as_json))
        summary = {"path": str(out), "rows": len(store), "sources": [str(f) for f in files]}
        if as_json:
            _print_json(summary)
        elif not quiet:
            typer.echo(f"wrote {len(store):,} rows of {len(files)} files to {out}", err=True)


@app.command("info")
def info_command(
    file: Annotated[Path, typer.Argument(help="A simgen data, model or samples file.")],
    as_json: JsonOut = False,
) -> None:
    """Describe what a simgen file holds."""
    with _errors():
        from simgen.summary import describe_file

        description = describe_file(file)
        if as_json:
            _print_json(description)
            return
        from rich.console import Console
        from rich.table import Table

        console = Console()
        head = Table(show_header=False, title=f"{file}  ({description.get('format', '')})")
        for key, value in description.items():
            if key != "theta_summary":
                text = json.dumps(value, default=str) if isinstance(value, dict | list) else value
                head.add_row(key, str(text))
        console.print(head)
        if "theta_summary" in description:
            stats = Table("parameter", "min", "mean", "max", title="theta")
            for row in description["theta_summary"]:
                stats.add_row(row["name"], *(f"{row[k]:.4g}" for k in ("min", "mean", "max")))
            console.print(stats)


@app.command("fit")
def fit_command(
    data: Annotated[Path, typer.Argument(help="A simgen data file.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Model file to write.")],
    model: Annotated[str, typer.Option(help="Family: flow, vae or diffusion.")] = "flow",
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per step.", min=1)] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Training time limit.")] = None,
    device: Device = "auto",
    precision: Annotated[
        str | None,
        typer.Option(help="Training arithmetic on CUDA: auto (bf16 for conv nets), bf16 or fp32."),
    ] = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="Compile the training loss (torch.compile).")
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with [train] and [model] tables.")
    ] = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Fit an emulator of p(x | theta) to a data file; rerun to resume an interrupted fit.

    Data-parallel: torchrun --nproc-per-node N -m simgen fit ... (--batch-size is the total
    over the N processes)."""
    with _errors():
        from simgen.distributed import is_main_process
        from simgen.train import fit, read_config

        train, model_config = read_config(config) if config is not None else ({}, {})
        flags = {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "max_seconds": max_seconds,
            "compile": compile_ or None,
            "precision": precision,
        }
        train.update({k: v for k, v in flags.items() if v is not None})
        _writable(out)
        emulator = fit(
            data,
            model,
            out,
            train=train,
            config=model_config,
            device=device,
            progress=_progress(quiet, as_json),
        )
        if not is_main_process():
            return
        metrics = {k: v for k, v in emulator.info["metrics"].items() if not isinstance(v, list)}
        if as_json:
            _print_json({"path": str(out), "family": model, **metrics})
        elif not quiet:
            typer.echo(
                f"wrote {out}: {model}, best validation loss {metrics['best_val_loss']:.4f} at "
                f"epoch {metrics['best_epoch']} of {metrics['epochs_run']} "
                f"({metrics['train_samples_per_s']:,.0f} samples/s)",
                err=True,
            )


def _writable(path: Path) -> None:
    from simgen.store import check_writable  # lazy: h5py and torch

    check_writable(path)


def _theta_rows(path: Path) -> Any:
    """Parameters from ``path``: a .npy array, .csv rows, or the ``theta`` of an HDF5 file
    (posterior samples of ``simgen sample --observed``, or a data file)."""
    import h5py
    import numpy as np

    from simgen.errors import UsageError

    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                if "theta" not in f:
                    raise UsageError(f"{path} holds no 'theta' data set")
                values = f["theta"][:]
        else:
            values = np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as error:
        raise UsageError(f"cannot read thetas from {path}: {error}") from None
    return np.atleast_2d(values)


def _thetas(
    emulator: Any, theta: str | None, theta_file: Path | None, from_prior: int | None, seed: int
) -> Any:
    import numpy as np
    import torch

    from simgen.errors import UsageError

    given = [x is not None for x in (theta, theta_file, from_prior)]
    if sum(given) != 1:
        raise UsageError("give exactly one of --theta, --theta-file or --from-prior")
    if theta is not None:
        try:
            values = np.array([[float(v) for v in theta.split(",")]], np.float32)
        except ValueError:
            raise UsageError(f"--theta '{theta}' should be numbers separated by commas") from None
    elif theta_file is not None:
        values = _theta_rows(theta_file).astype(np.float32)
    else:
        torch.manual_seed(seed)
        values = emulator.prior().sample((from_prior,)).numpy().astype(np.float32)
    if values.shape[-1] != emulator.d_theta or not np.isfinite(values).all():
        raise UsageError(
            f"theta should hold {emulator.d_theta} finite numbers per row "
            f"({', '.join(emulator.parameters_names)}); got shape {values.shape}"
        )
    return values


@app.command("sample")
def sample_command(
    model: Annotated[Path, typer.Argument(help="A simgen model file.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="HDF5 file of samples to write.")],
    n: Annotated[
        int,
        typer.Option("-n", "--n", help="Samples per theta.", parser=_count(1), metavar="<int>"),
    ] = 1000,
    theta: Annotated[str | None, typer.Option(help="One theta, comma-separated.")] = None,
    theta_file: Annotated[
        Path | None, typer.Option(help="Many thetas: .npy (m, d) or .csv rows.")
    ] = None,
    from_prior: Annotated[
        int | None,
        typer.Option(
            help="Draw this many thetas from the prior.", parser=_count(1), metavar="<int>"
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Diffusion sampler steps.", min=1)] = None,
    method: Annotated[str | None, typer.Option(help="Diffusion sampler: ode or sde.")] = None,
    metropolis: Annotated[
        bool,
        typer.Option(
            help="Make the samples exact: Metropolis-Hastings with the simulator's "
            "unnormalised density (flow models of simulators that have one, e.g. molecular)."
        ),
    ] = False,
    observed: Annotated[
        Path | None, typer.Option(help="Observation(s) .npy: sample the posterior instead.")
    ] = None,
    sampler: Annotated[str, typer.Option(help="Posterior MCMC: slice or hmc.")] = "slice",
    warmup: Annotated[
        int | None,
        typer.Option(help="Posterior warm-up iterations (default: the sampler's).", min=0),
    ] = None,
    chains: Annotated[
        int | None,
        typer.Option(help="Posterior chains (default: n / 5, at most 200).", min=1),
    ] = None,
    plot: Annotated[bool, typer.Option(help="Write a corner plot PNG beside -o.")] = False,
    log_prob: Annotated[bool, typer.Option(help="Store log p(x|theta) of each sample.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Device = "auto",
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Emulate x ~ p(x | theta), or sample theta ~ p(theta | x_obs) with --observed.

    Both write the log density of every sample."""
    with _errors():
        import torch

        from simgen.emulation import emulate
        from simgen.emulator import load
        from simgen.errors import UsageError
        from simgen.samples import write_samples
        from simgen.train import resolve_device

        emulator = load(model, device=resolve_device(device))
        _writable(out)
        if observed is not None:
            if any(v is not None for v in (theta, theta_file, from_prior)) or metropolis:
                raise UsageError(
                    "--observed samples the posterior: drop --theta/--from-prior/--metropolis"
                )
            summary = _posterior(
                emulator, observed, n, sampler, warmup, chains, seed, out, plot, quiet, as_json
            )
        else:
            thetas = _thetas(emulator, theta, theta_file, from_prior, seed)
            kwargs = {k: v for k, v in (("steps", steps), ("sampler", method)) if v is not None}
            if kwargs and emulator.family != "diffusion":
                raise UsageError("--steps and --method apply to diffusion models only")
            if method not in (None, "ode", "sde"):
                raise UsageError(f"--method must be ode or sde, not '{method}'")
            torch.manual_seed(seed)
            if metropolis:
                from simgen.check import simulator_of
                from simgen.metropolis import emulate_exact

                sim = simulator_of(emulator)
                progress = _progress(quiet, as_json)
                result = emulate_exact(emulator, sim, thetas, n, seed=seed, progress=progress)
                if not log_prob:
                    del result["log_prob"]
            else:
                result = emulate(
                    emulator,
                    thetas,
                    n,
                    log_prob=log_prob,
                    progress=_progress(quiet, as_json),
                    **kwargs,
                )
            attrs = {
                "kind": "emulation",
                "model": emulator.identity,
                "family": emulator.family,
                "seed": seed,
                "parameters": list(emulator.parameters_names),
                "metropolis": metropolis,
            }
            write_samples(out, result, attrs)
            summary = {"path": str(out), "thetas": len(thetas), "samples_per_theta": n}
            if metropolis:
                summary["mean_acceptance"] = float(result["acceptance"].mean())
                summary["mean_distinct"] = float(result["distinct"].mean())
            if log_prob:
                summary["mean_log_prob"] = float(result["log_prob"].mean())
            if not quiet and not as_json:
                typer.echo(
                    f"wrote {n:,} samples for each of {len(thetas):,} thetas to {out}", err=True
                )
        if as_json:
            _print_json(summary)


def _posterior(
    emulator: Any,
    observed: Path,
    n: int,
    sampler: str,
    warmup: int | None,
    chains: int | None,
    seed: int,
    out: Path,
    plot: bool,
    quiet: bool,
    as_json: bool,
) -> dict[str, Any]:
    import numpy as np

    from simgen.errors import UsageError
    from simgen.posterior import Posterior
    from simgen.samples import write_samples

    if not observed.is_file():
        raise UsageError(f"no such file: {observed}")
    try:
        x_obs = np.load(observed, allow_pickle=False)
    except ValueError as error:
        raise UsageError(f"cannot read {observed} as a .npy array: {error}") from None
    result = Posterior(emulator).sample(
        x_obs,
        n,
        sampler=sampler,
        chains=chains,
        warmup=warmup,
        seed=seed,
        progress=_progress(quiet, as_json),
    )
    diagnostics = result.diagnostics
    write_samples(
        out,
        {
            "theta": result.theta.numpy(),
            "log_prob": result.log_prob.numpy(),
            "observed": np.asarray(x_obs, np.float32),
        },
        {
            "kind": "posterior",
            "model": emulator.identity,
            "family": emulator.family,
            "seed": seed,
            "parameters": list(emulator.parameters_names),
            "diagnostics": diagnostics,
        },
    )
    summary = {
        "path": str(out),
        "draws": len(result.theta),
        "max_rhat": max(diagnostics["rhat"]),
        "min_ess": min(diagnostics["ess"]),
        "acceptance": diagnostics["acceptance"],
    }
    if plot:
        from simgen.plots import plot_corner

        picture = out.with_suffix(".png")
        plot_corner(result.theta.numpy(), emulator.parameters_names, picture)
        summary["plot"] = str(picture)
    if not quiet and not as_json:
        typer.echo(
            f"wrote {len(result.theta):,} posterior draws to {out} (max R-hat "
            f"{summary['max_rhat']:.3f}, min ESS {summary['min_ess']:.0f})",
            err=True,
        )
    return summary


@app.command("log-prob")
def log_prob_command(
    model: Annotated[Path, typer.Argument(help="A simgen model file.")],
    data: Annotated[Path, typer.Argument(help="A simgen data file.")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="HDF5 file to write.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first rows.", min=1)] = None,
    device: Device = "auto",
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Evaluate log p(x | theta) of each (theta, x) row; compare with the exact likelihood."""
    with _errors():
        from simgen.emulation import evaluate
        from simgen.emulator import load
        from simgen.errors import UsageError
        from simgen.samples import write_samples
        from simgen.store import open_store
        from simgen.train import resolve_device

        emulator = load(model, device=resolve_device(device))
        store = open_store(data)
        if store.x_shape != emulator.x_shape or len(store.parameters) != emulator.d_theta:
            raise UsageError(
                f"{data} holds x of shape {store.x_shape} and {len(store.parameters)} parameters; "
                f"the model expects {emulator.x_shape} and {emulator.d_theta}"
            )
        if out is not None:
            _writable(out)
        result = evaluate(emulator, store, limit=limit, progress=_progress(quiet, as_json))
        lp = result["log_prob"]
        summary = {"rows": len(lp), "mean_log_prob": float(lp.mean())}
        if "exact_log_prob" in result:
            summary["mean_abs_error_nats"] = float(abs(lp - result["exact_log_prob"]).mean())
        if out is not None:
            attrs = {"kind": "log_prob", "model": emulator.identity, "data": str(data)}
            write_samples(out, result, attrs)
            summary["path"] = str(out)
        if as_json:
            _print_json(summary)
        elif not quiet:
            line = f"mean log p(x|theta) = {summary['mean_log_prob']:.4f} over {len(lp):,} rows"
            if "mean_abs_error_nats" in summary:
                line += f"; mean |learned - exact| = {summary['mean_abs_error_nats']:.4f} nats"
            typer.echo(line)


@app.command("check")
def check_command(
    model: Annotated[Path, typer.Argument(help="A simgen model file.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the report.")] = Path(
        "check"
    ),
    simulator: Annotated[
        str | None, typer.Option(help="Simulator (default: the model's), name or pkg.mod:Class.")
    ] = None,
    pairs: Annotated[
        int,
        typer.Option(
            help="Simulated pairs for SBC and coverage.", parser=_count(2), metavar="<int>"
        ),
    ] = 100,
    draws: Annotated[
        int, typer.Option(help="Posterior draws per pair.", parser=_count(1), metavar="<int>")
    ] = 99,
    thetas: Annotated[int, typer.Option(help="Parameters for emulation checks.", min=1)] = 3,
    samples: Annotated[
        int, typer.Option(help="x per side at each of them.", parser=_count(2), metavar="<int>")
    ] = 1000,
    warmup: Annotated[int, typer.Option(help="Posterior sampler warm-up.", min=0)] = 100,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    metropolis: Annotated[
        bool,
        typer.Option(help="Compare emulated x corrected by the simulator's density (flows)."),
    ] = False,
    device: Device = "auto",
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Fidelity and calibration report of an emulator: report.json and PNG figures.

    Emulated vs simulated x (C2ST), SBC ranks and expected coverage of the posterior."""
    with _errors():
        from simgen.check import check, simulator_of
        from simgen.emulator import load
        from simgen.train import resolve_device

        emulator = load(model, device=resolve_device(device))
        sim = simulator_of(emulator, simulator)
        report = check(
            emulator,
            out,
            simulator=sim,
            pairs=pairs,
            draws=draws,
            thetas=thetas,
            samples=samples,
            warmup=warmup,
            seed=seed,
            progress=_progress(quiet, as_json),
            metropolis=metropolis,
        )
        if as_json:
            _print_json(report)
        elif not quiet:
            cal, emu = report["calibration"], report["emulation"]
            c2st = "-" if emu["c2st_mean"] is None else f"{emu['c2st_mean']:.3f}"
            worst = min(cal["sbc_pvalues"].values())
            typer.echo(
                f"wrote {out}/report.json: emulation C2ST {c2st} (0.5 = indistinguishable); "
                f"SBC {'uniform' if cal['sbc_uniform'] else 'NOT uniform'} (min p {worst:.3g}); "
                f"coverage within its 95% band at {cal['coverage_within_band']:.0%} of levels",
                err=True,
            )


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the demo's files.")] = Path(
        "simgen-demo"
    ),
    n: Annotated[
        int,
        typer.Option("-n", "--n", help="Rows to simulate.", parser=_count(100), metavar="<int>"),
    ] = 20_000,
    seconds: Annotated[float, typer.Option(help="Training time budget.", min=1)] = 60.0,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Run the pipeline end to end on two_moons: simulate, fit, emulate, evaluate."""
    with _errors():
        from simgen.demo import run_demo

        def say(line: str) -> None:
            if not quiet and not as_json:
                typer.echo(line, err=True)

        summary = run_demo(out, n=n, seconds=seconds, progress=_progress(quiet, as_json), say=say)
        if as_json:
            _print_json(summary)
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=False, title="simgen demo: two_moons")
        for key, value in summary.items():
            table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
        Console().print(table)


def main() -> None:
    """Entry point of the ``simgen`` console script."""
    app(prog_name="simgen")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
