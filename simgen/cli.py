"""The ``simgen`` command line: parses, calls the Python API, prints. No logic of its own.

Exit status: 0 success, 1 a run that failed, 2 bad usage or bad input, always with one line on
stderr that says what was wrong and how to fix it. Heavy modules (torch, h5py) are imported
inside the commands, so ``simgen --help`` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
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


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn simgen's errors into one line on stderr and the right exit status."""
    try:
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
    n: Annotated[int, typer.Option("-n", "--n", help="Rows to simulate in total.", min=1)],
    out: Annotated[Path, typer.Option("-o", "--out", help="HDF5 file to write or extend.")],
    seed: Annotated[int, typer.Option(help="Root random seed.")] = 0,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: all cores).", min=1)
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Simulator option key=value (repeat).")
    ] = None,
    chunk_size: Annotated[
        int | None, typer.Option(help="Rows per task (default: the simulator's).", min=1)
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address, e.g. tcp://host:8786.")
    ] = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Simulate (theta, x) pairs into an HDF5 file; rerun to resume or to add rows."""
    with _errors():
        from simgen.simulation import simulate
        from simgen.simulator import get_simulator, parse_option, simulator_class

        cls = simulator_class(name)
        options = dict(parse_option(cls, text) for text in option or [])
        sim = get_simulator(name, **options)
        reports = []
        simulate(
            sim,
            n,
            out,
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
                typer.echo(
                    f"wrote {report.rows_new:,} rows of {sim.name} to {out} in "
                    f"{report.seconds:.1f} s ({rate:,.0f} rows/s); "
                    f"{report.rows_total:,} rows in the file",
                    err=True,
                )
        if report.failed_new and not quiet:
            typer.echo(
                f"warning: {report.failed_new:,} of {report.rows_new:,} rows failed (the "
                "simulator raised or gave NaN/inf); their theta is kept under failed/theta",
                err=True,
            )


@app.command("info")
def info_command(
    file: Annotated[Path, typer.Argument(help="A simgen data file.")],
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
        head = Table(show_header=False, title=f"{file}  ({description['format']})")
        for key, value in description.items():
            if key != "theta_summary":
                head.add_row(
                    key, json.dumps(value) if isinstance(value, dict | list) else str(value)
                )
        console.print(head)
        stats = Table("parameter", "min", "mean", "max", title="theta")
        for row in description.get("theta_summary", []):
            stats.add_row(row["name"], *(f"{row[k]:.4g}" for k in ("min", "mean", "max")))
        console.print(stats)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the demo's files.")] = Path(
        "simgen-demo"
    ),
    n: Annotated[int, typer.Option("-n", "--n", help="Rows to simulate.", min=100)] = 20_000,
    quiet: Quiet = False,
) -> None:
    """Run the pipeline end to end on the built-in two_moons simulator."""
    with _errors():
        from simgen.plots import plot_data
        from simgen.simulation import simulate

        out.mkdir(parents=True, exist_ok=True)
        typer.echo(f"1/2 simulating {n:,} rows of two_moons into {out / 'data.h5'}", err=True)
        store = simulate("two_moons", n, out / "data.h5", progress=False if quiet else None)
        plot_data(store, out / "data.png")
        typer.echo(f"2/2 summary (picture: {out / 'data.png'})", err=True)
        info_command(out / "data.h5", as_json=False)


def main() -> None:
    """Entry point of the ``simgen`` console script."""
    app(prog_name="simgen")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
