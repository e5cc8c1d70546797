"""The commands of ``simgen``: each parses its arguments, calls one API function, prints."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer

from simgen.cli.base import Device, JsonOut, Quiet, Seed, bars, command, counted, opt, show
from simgen.terminal import table

__all__: list[str] = []

Model = Annotated[Path, typer.Argument(help="A simgen model file.")]
Data = Annotated[Path, typer.Argument(help="A simgen data file.")]


def _load(model: Path, device: str):  # noqa: ANN202 (an Emulator; torch loads lazily)
    from simgen.emulator import load
    from simgen.train.config import resolve_device

    return load(model, device=resolve_device(device))


@command("simulators")
def simulators_command(as_json: JsonOut = False) -> None:
    """List registered simulators: parameters, x shape, options, exact likelihood."""
    from simgen.jobs import describe_simulators

    rows = describe_simulators()
    if as_json:
        return show(rows, True, False)
    header = {"x_shape": "x shape", "exact_log_likelihood": "exact log p(x|θ)"}
    for row in rows:
        row["options"] = {k: v["default"] for k, v in row.pop("options").items()}
    table("", [{header.get(k, k): v for k, v in row.items() if k != "class"} for row in rows])


@command("simulate")
def simulate_command(
    name: Annotated[str, typer.Argument(help="Registered name or import path pkg.module:Class.")],
    out: Annotated[Path, opt("HDF5 file to write or extend.", "-o", "--out")],
    n: Annotated[int | None, counted("Rows in the file (1e6 = 1000000).", "-n")] = None,
    theta_file: Annotated[Path | None, opt("Simulate these thetas (see below).")] = None,
    seed: Annotated[int, opt("Root random seed.")] = 0,
    workers: Annotated[int | None, opt("Worker processes (see below).", min=1)] = None,
    option: Annotated[list[str] | None, opt("Simulator option key=value.", "--option")] = None,
    chunk_size: Annotated[int | None, counted("Rows per task (default: the simulator's).")] = None,
    scheduler: Annotated[str | None, opt("Dask scheduler address, e.g. tcp://host:8786.")] = None,
    retry_failed: Annotated[bool, opt("First simulate the failed tasks again.")] = False,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Simulate (theta, x) pairs into an HDF5 file; rerun to resume or to add rows.

    -n counts rows in total (default with --theta-file: one per row). --theta-file takes a
    .npy (n, d), .csv rows, or the HDF5 file of `simgen sample --observed` (its posterior
    draws); give it a --seed of its own, or every row reuses the first round's noise.
    --workers defaults to all cores where they finish sooner (long runs of slow simulators),
    else this process alone. --retry-failed, once the simulator is fixed, redoes the tasks
    with failed rows (same seeds): the file one run of the fixed simulator gives."""
    from simgen.data.simulation import simulate
    from simgen.data.simulator import get_simulator, parse_options

    sim, reports = get_simulator(name, **parse_options(name, option or [])), []
    simulate(sim, n, out, theta=theta_file, seed=seed, workers=workers, chunk_size=chunk_size,
             scheduler=scheduler, retry_failed=retry_failed, progress=bars(quiet, as_json),
             on_report=reports.append)  # fmt: skip
    summary = {"path": str(out), "simulator": sim.name, **vars(reports[0])}
    show(summary, as_json, quiet, reports[0].describe(out))


@command("merge")
def merge_command(
    files: Annotated[list[Path], typer.Argument(help="Data files of one simulator and prior.")],
    out: Annotated[Path, opt("New HDF5 file to write.", "-o", "--out")],
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Merge data files (runs with other seeds, rounds of sequential inference) into one.

    The merged file is for `simgen fit`, whose validation rows are the last file's last rows."""
    from simgen.data.merging import merge

    store = merge(files, out, progress=bars(quiet, as_json))
    summary = {"path": str(out), "rows": len(store), "sources": [str(f) for f in files]}
    show(summary, as_json, quiet, f"wrote {len(store):,} rows of {len(files)} files to {out}")


@command("info")
def info_command(
    file: Annotated[Path, typer.Argument(help="A simgen data, model or samples file.")],
    as_json: JsonOut = False,
) -> None:
    """Describe what a simgen file holds."""
    from simgen.summary import describe_file

    description = describe_file(file)
    if as_json:
        return show(description, True, False)
    stats = description.pop("theta_summary", [])
    plain = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in description.items()}
    table(str(file), [{"": k, " ": v} for k, v in plain.items()], header=False)
    if stats:
        table(
            "theta", [{**r, **{k: f"{r[k]:.4g}" for k in ("min", "mean", "max")}} for r in stats]
        )


@command("fit")
def fit_command(
    data: Data,
    out: Annotated[Path, opt("Model file to write.", "-o", "--out")],
    model: Annotated[str, opt("Family: flow, vae or diffusion.")] = "flow",
    epochs: Annotated[int | None, opt("Maximum epochs.", min=1)] = None,
    batch_size: Annotated[int | None, opt("Rows per step.", min=1)] = None,
    lr: Annotated[float | None, opt("Peak learning rate.")] = None,
    seed: Annotated[int | None, opt("Training seed.")] = None,
    max_seconds: Annotated[float | None, opt("Stop after this much training time.")] = None,
    threads: Annotated[int | None, opt("CPU threads (1; conv nets: cores - 1).", min=1)] = None,
    device: Device = "auto",
    precision: Annotated[str | None, opt("CUDA arithmetic: auto, bf16 or fp32.")] = None,
    compile_: Annotated[bool, opt("Compile the loss (torch.compile).", "--compile")] = False,
    force: Annotated[bool, opt("Fit again even when -o holds this fit.", "--force")] = False,
    proposal: Annotated[bool, opt("Also fit q(theta|x), the posterior's proposal.")] = True,
    config: Annotated[Path | None, opt("TOML file with [train] and [model] tables.")] = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Fit an emulator of p(x | theta) to a data file; rerun to resume an interrupted fit.

    --precision auto trains convolutional networks in bf16 on CUDA, the rest in fp32.
    Data-parallel: torchrun --nproc-per-node N -m simgen fit ... (--batch-size is the total
    over the N processes)."""
    from simgen.jobs import fit_file

    flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
             "max_seconds": max_seconds, "threads": threads, "compile": compile_ or None,
             "precision": precision}  # fmt: skip
    train, shown = {k: v for k, v in flags.items() if v is not None}, bars(quiet, as_json)
    summary = fit_file(data, out, model, config=config, train=train, device=device,
                       progress=shown, force=force, proposal=proposal)  # fmt: skip
    if summary:  # the first rank of a data-parallel fit, or a fit of one process
        show(summary, as_json, quiet)


@command("sample")
def sample_command(
    model: Model,
    out: Annotated[Path, opt("HDF5 file of samples to write.", "-o", "--out")],
    n: Annotated[int, counted("Samples per theta, or posterior draws.", "-n")] = 1000,
    theta: Annotated[str | None, opt("One theta, comma-separated.")] = None,
    theta_file: Annotated[Path | None, opt("Many thetas: .npy (m, d) or .csv rows.")] = None,
    from_prior: Annotated[int | None, counted("Draw this many thetas from the prior.")] = None,
    steps: Annotated[int | None, opt("Diffusion sampler steps.", min=1)] = None,
    method: Annotated[str | None, opt("Diffusion sampler: ode or sde.")] = None,
    metropolis: Annotated[bool, opt("Exact samples by the simulator's density (flows).")] = False,
    observed: Annotated[Path | None, opt("Observation .npy: sample the posterior.")] = None,
    mask: Annotated[Path | None, opt("Map seen through this .npy mask (True: seen).")] = None,
    beam: Annotated[float | None, opt("Map seen through a Gaussian beam (FWHM, pixels).")] = None,
    noise: Annotated[float | None, opt("The mask's or beam's noise level.")] = None,
    sampler: Annotated[str, opt("Posterior: auto, importance, smc, slice or hmc.")] = "auto",
    warmup: Annotated[int | None, opt("Posterior MCMC warm-up iterations.", min=0)] = None,
    chains: Annotated[int | None, opt("Posterior MCMC chains (n / 10, <= 64).", min=1)] = None,
    plot: Annotated[bool, opt("Write a corner plot PNG beside -o.")] = False,
    log_prob: Annotated[bool, opt("Store log p(x|theta) of each sample.")] = True,
    seed: Seed = 0,
    device: Device = "auto",
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Emulate x ~ p(x | theta), or sample theta ~ p(theta | x_obs) with --observed.

    Both write the log density of every sample. --metropolis corrects emulated samples by
    Metropolis-Hastings with the simulator's unnormalised density (flow models of simulators
    that have one, e.g. molecular). With --mask or --beam and --noise, --observed is a map seen
    so: maps given it (--theta: by --sampler auto/gibbs, smc or dps; none: theta too, by SMC)."""
    from simgen.jobs import sample_file

    given = {"theta": theta, "theta_file": theta_file, "from_prior": from_prior}
    sampling = {"sampler": sampler, "chains": chains, "plot": plot}
    if observed is None:
        sampling = {"steps": steps, "sampler": method, "metropolis": metropolis,
                    "log_prob": log_prob}  # fmt: skip
    elif mask is not None or beam is not None or noise is not None:  # a measured map
        sampling |= {"mask": mask, "beam": beam, "noise": noise, "steps": steps}
    else:  # the posterior
        sampling |= {"warmup": warmup, "metropolis": metropolis}
    s = sample_file(_load(model, device), out, n, **given, observed=observed, **sampling,
                    seed=seed, progress=bars(quiet, as_json))  # fmt: skip
    show(s, as_json, quiet)


@command("log-prob")
def log_prob_command(
    model: Model,
    data: Data,
    out: Annotated[Path | None, opt("HDF5 file to write.", "-o", "--out")] = None,
    limit: Annotated[int | None, opt("Only the first rows.", min=1)] = None,
    device: Device = "auto",
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Evaluate log p(x | theta) of each (theta, x) row; compare with the exact likelihood."""
    from simgen.jobs import log_prob_file

    shown = bars(quiet, as_json)
    s = log_prob_file(_load(model, device), data, out, limit=limit, progress=shown)
    show(s, as_json, quiet, err=False)


@command("check")
def check_command(
    model: Model,
    out: Annotated[Path, opt("Folder for the report.", "-o", "--out")] = Path("check"),
    simulator: Annotated[str | None, opt("Simulator (default: the model's).")] = None,
    pairs: Annotated[int, counted("Simulated pairs for SBC and coverage.", minimum=2)] = 100,
    draws: Annotated[int, counted("Posterior draws per pair.")] = 99,
    thetas: Annotated[int, opt("Parameters for emulation checks.", min=1)] = 3,
    samples: Annotated[int, counted("x per side at each of them.", minimum=2)] = 1000,
    sampler: Annotated[str, opt("Posterior: auto, importance, smc, slice or hmc.")] = "auto",
    seed: Seed = 0,
    metropolis: Annotated[bool, opt("Correct emulated x by the simulator's density.")] = False,
    device: Device = "auto",
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Fidelity and calibration report of an emulator: report.json and PNG figures.

    Emulated vs simulated x (C2ST), SBC ranks and expected coverage of the posterior."""
    from simgen.jobs import check_file

    report = check_file(_load(model, device), out, simulator, pairs=pairs, draws=draws,
                        thetas=thetas, samples=samples, sampler=sampler, seed=seed,
                        progress=bars(quiet, as_json), metropolis=metropolis)  # fmt: skip
    show(report, as_json, quiet)


@command("demo")
def demo_command(
    out: Annotated[Path, opt("Folder for the demo's files.", "-o", "--out")] = Path("simgen-demo"),
    seed: Seed = 0,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Run the pipeline end to end on two_moons: simulate, fit, emulate, evaluate the density,
    sample a posterior."""
    from simgen.demo import run_demo

    say = functools.partial(show, None, False, quiet or as_json)  # step lines on stderr
    summary = run_demo(out, seed=seed, progress=bars(quiet, as_json), say=say)
    if as_json:
        return show(summary, True, False)
    table("simgen demo: two_moons", [{"": k, " ": v} for k, v in summary.items()], header=False)
