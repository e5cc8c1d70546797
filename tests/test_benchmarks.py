"""Benchmarks run in --quick mode and write records in the format of DESIGN.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

KEYS = {
    "benchmark",
    "task",
    "method",
    "metric",
    "value",
    "unit",
    "budget",
    "seed",
    "machine",
    "date",
}


def run_quick(name: str, tmp_path: Path, *extra: str, timeout: int) -> tuple[list[dict], str]:
    """Run ``python -m benchmarks.NAME --quick [EXTRA]`` in ``tmp_path`` (where sbi writes its
    logs); return its records (checked against the record format) and its stdout."""
    root = Path(__file__).parent.parent
    out = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(tmp_path), *extra],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    records = json.loads((tmp_path / f"{name}-quick.json").read_text())
    assert records and all(set(r) == KEYS for r in records)
    return records, out.stdout


def assert_records(records: list[dict]) -> None:
    """Every value finite, every budget a count of simulations (training is budgeted in
    epochs by each benchmark, never in seconds)."""
    assert all(np.isfinite(r["value"]) for r in records)
    assert all(r["budget"] is None or isinstance(r["budget"], int) for r in records)


def test_simulate_benchmark_quick(tmp_path):
    records, stdout = run_quick("simulate", tmp_path, timeout=300)
    metrics = {r["metric"] for r in records}
    expected = {
        "pipeline_efficiency",
        "vs_simulate_alone",
        "worker_scaling",
        "default_vs_best",
        "simulator_samples_per_s",
    }
    assert expected <= metrics
    assert all(r["value"] > 0 for r in records)
    assert "| pipeline_efficiency |" in stdout


def test_report_renders_results(tmp_path, monkeypatch):
    from benchmarks import records, report

    rows = [
        records.record("emulators", "t", "simgen flow", "emulation_c2st", 0.512, "accuracy", 10),
        records.record("emulators", "t", "sbi NLE", "emulation_c2st", 0.6, "accuracy", 10),
        records.record("emulators", "t", "simgen flow", "log_prob_per_s", 1234.0, "evals/s", 10),
    ]
    records.save("emulators", rows, tmp_path)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{report.START}\nold\n{report.END}\ntail\n")
    monkeypatch.setattr(report, "README", readme)
    report.main()
    text = readme.read_text()
    assert "old" not in text and "| t | simgen flow | 0.512 |" in text
    assert "| task | method | emulation C2ST |" in text  # only the columns with results
    assert "sbi NLE" not in text  # the README's short table shows simgen's rows
    assert text.startswith("head\n") and text.endswith("tail\n")
    page = report.pages()["results/emulators.md"]
    assert "| simgen flow | 0.512 | 1,234 |" in page and "| sbi NLE | 0.6 |  |" in page
    assert "[emulators](emulators.md)" in report.pages()["results/index.md"]


def test_emulators_benchmark_quick(tmp_path):
    records, _ = run_quick("emulators", tmp_path, timeout=600)
    found = {(r["method"], r["metric"]) for r in records}
    for family in ("flow", "vae", "diffusion"):
        for metric in (
            "density_abs_error_nats",
            "emulation_c2st",
            "train_samples_per_s",
            "emulate_samples_per_s",
            "log_prob_per_s",
        ):
            assert (f"simgen {family}", metric) in found
    assert ("simulator", "simulator_samples_per_s") in found
    assert_records(records)


def test_posterior_benchmark_quick(tmp_path):
    records, _ = run_quick("posterior", tmp_path, timeout=600)
    found = {(r["method"], r["metric"]) for r in records}
    for metric in (
        "posterior_c2st",
        "posterior_samples_per_s",
        "posterior_ess_fraction",
        "posterior_fallbacks",
        "sbc_min_pvalue",
        "coverage_max_deviation",
    ):
        assert ("simgen flow (auto)", metric) in found
    assert ("simgen exact likelihood (auto)", "posterior_c2st") in found
    assert_records(records)


def test_scientific_benchmark_quick(tmp_path):
    records, _ = run_quick("scientific", tmp_path, timeout=600)
    found = {(r["task"], r["metric"]) for r in records}
    for metric in ("energy_wasserstein", "rg_wasserstein", "emulator_speedup"):
        assert ("molecular", metric) in found
    methods = {(r["method"], r["metric"]) for r in records if r["task"] == "molecular"}
    assert ("simgen flow + Metropolis (exact density)", "metropolis_acceptance") in methods
    assert ("simulator, independent run", "energy_wasserstein") in methods
    for metric in (
        "power_spectrum_rel_error",
        "field_log_prob_error_per_pixel",
        "coverage_max_deviation",
        "emulator_speedup",
        "train_epochs",
    ):
        assert ("cosmology", metric) in found
    assert_records(records)


def test_threads_benchmark_quick(tmp_path):
    records, stdout = run_quick("threads", tmp_path, timeout=300)
    methods = {(r["task"], r["method"]) for r in records}
    for threads in {1, len(os.sched_getaffinity(0))}:
        for load in ("idle", "busy"):
            assert ("two_moons", f"simgen flow (threads={threads}, {load})") in methods
            assert ("cosmology", f"simgen vae (threads={threads}, {load})") in methods
    assert_records(records)
    assert "| seconds_per_step |" in stdout


def test_scale_benchmark_quick(tmp_path):
    records, stdout = run_quick("scale", tmp_path, timeout=300)
    values = {r["metric"]: r["value"] for r in records if r["method"].startswith("simgen")}
    for metric in ("fit_peak_rss_ratio", "loader_efficiency", "train_samples_per_s"):
        assert values[metric] > 0, metric
    assert "| fit_peak_rss_ratio |" in stdout


def test_gpu_benchmark_quick(tmp_path):
    """The GPU benchmark; without CUDA it measures the CPU alone (every step but the field's).
    A second run of one step replaces that step's records and keeps the others."""
    import torch

    records, stdout = run_quick("gpu", tmp_path, timeout=300)
    errors = {(r["task"], r["method"]): r["value"] for r in records
              if r["metric"] == "density_abs_error_nats"}  # fmt: skip
    on = f"{torch.cuda.get_device_name(0)}, bf16" if torch.cuda.is_available() else "cpu, fp32"
    assert ("slcp", f"simgen diffusion ({on})") in errors
    assert_records(records)
    assert any(r["metric"] == "posterior_samples_per_s" for r in records)
    assert "| density_abs_error_nats |" in stdout
    again, _ = run_quick("gpu", tmp_path, "--steps", "batch", timeout=300)
    assert len(again) == len(records)
    batch = [r for r in again if r["method"].startswith("simgen flow (cpu, batch")]
    assert len(batch) == 2 and all(r not in records for r in batch)


@pytest.mark.slow  # 19 s: slice sampling of the exact likelihood
def test_slcp_reference_agrees_with_mcmc_on_the_exact_likelihood():
    """The slcp reference posterior (a zoomed grid in log|theta_3|, log|theta_4|, theta_5)
    against simgen's slice sampler on the simulator's exact likelihood, for an observation with
    theta_3 ~ 0.015, whose posterior of theta_3 is a peak narrower than the cells of a uniform
    grid of the prior (such a grid, 0.02 cells, gave C2ST 0.90 on such an observation).
    Threshold: C2ST < 0.6; both sides sample the same posterior, so only the sampler's mode
    shares and the classifier's noise separate them (100 cells here, 300 in the benchmark)."""
    import torch

    import simgen
    from benchmarks.posterior import ExactLikelihood
    from benchmarks.references import _slcp
    from simgen.diagnostics.metrics import c2st
    from simgen.inference.posterior import Posterior

    sim = simgen.get_simulator("slcp")
    theta_o = np.array([[2.979, -0.376, -0.015, -0.518, 1.493]])
    x_obs = sim.simulate(theta_o, np.random.default_rng(3))[0]

    reference = _slcp(sim, x_obs, 1000, seed=0, cells=100)
    exact = ExactLikelihood(sim, torch.zeros(8), torch.full((8,), 3.0))
    result = Posterior(exact).sample(
        x_obs, 1000, sampler="slice", chains=200, seed=0, progress=False
    )
    assert c2st(reference, result.theta.numpy(), seed=0) < 0.6


def test_field_prior_benchmark_quick(tmp_path):
    records, _ = run_quick("field_prior", tmp_path, timeout=300)
    found = {(r["method"], r["metric"]) for r in records}
    samplers = ("gibbs", "smc", "dps")
    for method in [f"simgen diffusion ({s})" for s in samplers] + ["exact score (gibbs)"]:
        for metric in ("field_posterior_mean_z", "field_posterior_std_ratio"):
            assert (method, metric) in found
    assert ("simgen diffusion (gibbs)", "sampler_rhat") in found
    assert (tmp_path / "field_prior-gibbs.png").stat().st_size > 0
    assert ("simgen diffusion (joint)", "theta_posterior_c2st") in found
    for metric in ("sampler_rhat", "true_map_within_2std"):  # the log-normal maps
        assert ("simgen diffusion (gibbs)", metric) in {
            (r["method"], r["metric"])
            for r in records
            if r["task"] == "cosmology_lognormal_masked"
        }
    assert (tmp_path / "field_prior-lognormal-theta.png").stat().st_size > 0
    assert_records(records)
