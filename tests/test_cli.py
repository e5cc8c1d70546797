"""The command line: commands, JSON output, exit statuses, one-line errors, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import HELPERS, run_cli
from typer.testing import CliRunner

import simgen
from simgen.cli import app
from simgen.data.journal import Journal

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def one_line_error(result, code):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_help_is_instant_and_imports_no_torch():
    code = (
        "import sys, simgen.cli; assert 'torch' not in sys.modules and 'h5py' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    out = subprocess.run(
        [sys.executable, "-m", "simgen", "--help"], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0 and "simulate" in out.stdout


def test_simulators_json():
    result = invoke("simulators", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["gaussian_linear"]["x_shape"] == [10]
    assert rows["gaussian_linear"]["options"]["dim"] == {"type": "int", "default": 10}
    assert (
        rows["two_moons"]["exact_log_likelihood"]
        and not rows["lotka_volterra"]["exact_log_likelihood"]
    )
    table = invoke("simulators")  # not a terminal: tab-separated lines, nothing cut
    assert table.exit_code == 0
    lines = [line.split("\t") for line in table.stdout.splitlines()]
    assert lines[0][0] == "name" and {line[0] for line in lines[1:]} == set(rows)
    assert all(len(line) == len(lines[0]) for line in lines)


def test_help_is_plain_text():
    help_text = invoke("fit", "--help").stdout
    assert "[train] and [model] tables" in help_text
    assert "<bool>" not in help_text and "Usage: simgen fit [OPTIONS] DATA" in help_text


def test_simulate_and_info(tmp_path):
    path = tmp_path / "d.h5"
    result = invoke(
        "simulate",
        "gaussian_linear",
        "-n",
        "300",
        "-o",
        str(path),
        "--workers",
        "1",
        "--option",
        "dim=3",
        "--seed",
        "7",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows_new"] == 300 and summary["failed_new"] == 0
    info = invoke("info", str(path), "--json")
    assert info.exit_code == 0
    described = json.loads(info.stdout)
    assert described["rows"] == 300 and described["seed"] == 7 and described["x_shape"] == [3]
    assert described["simulator_options"]["dim"] == 3 and described["complete"]
    assert [row["name"] for row in described["theta_summary"]] == ["theta_1", "theta_2", "theta_3"]
    human = invoke("info", str(path))
    assert human.exit_code == 0 and "gaussian_linear" in human.stdout
    again = invoke(
        "simulate",
        "gaussian_linear",
        "-n",
        "300",
        "-o",
        str(path),
        "--option",
        "dim=3",
        "--seed",
        "7",
    )
    assert again.exit_code == 0 and "nothing to do" in again.stderr


def test_simulate_given_thetas_then_merge(tmp_path):
    first = tmp_path / "a.h5"
    assert (
        invoke("simulate", "two_moons", "-n", "200", "-o", str(first), "--workers", "1").exit_code
        == 0
    )
    with h5py.File(tmp_path / "posterior.h5", "w") as f:  # as `simgen sample --observed` writes
        f["theta"] = np.full((50, 2), 0.25, np.float32)
    second = tmp_path / "b.h5"
    result = invoke(
        "simulate", "two_moons", "-o", str(second), "--theta-file", str(tmp_path / "posterior.h5"),
        "--seed", "1", "--workers", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows_new"] == 50
    assert (simgen.open_store(second).theta == 0.25).all()
    merged = tmp_path / "ab.h5"
    result = invoke("merge", str(first), str(second), "-o", str(merged), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 250 == len(simgen.open_store(merged))
    one_line_error(invoke("merge", str(first), str(second), "-o", str(merged)), 2)
    line = one_line_error(invoke("simulate", "two_moons", "-o", str(tmp_path / "c.h5")), 2)
    assert "rows to simulate" in line and "-n" in line
    np.save(tmp_path / "far.npy", np.full((3, 2), 7.0))
    far = invoke(
        "simulate",
        "two_moons",
        "-o",
        str(tmp_path / "c.h5"),
        "--theta-file",
        str(tmp_path / "far.npy"),
    )
    assert "outside the prior's support" in one_line_error(far, 2)


def test_failed_rows_are_reported(tmp_path):
    result = invoke(
        "simulate",
        "sims_for_tests:Flaky",
        "-n",
        "200",
        "-o",
        str(tmp_path / "f.h5"),
        "--workers",
        "1",
    )
    assert result.exit_code == 0
    assert "rows failed" in result.stderr and "failed/theta" in result.stderr
    out = tmp_path / "f.h5"
    mended = invoke("simulate", "sims_for_tests:MendedFlaky", "-o", str(out), "--retry-failed",
                    "--workers", "1", "--json")  # fmt: skip
    assert mended.exit_code == 0, mended.output
    summary = json.loads(mended.stdout)
    assert summary["retried_tasks"] == 4 and summary["failed_new"] == 0
    assert simgen.open_store(out).n_failed == 0 and len(simgen.open_store(out)) == 200


def test_bad_input_exits_2_with_one_line(tmp_path):
    line = one_line_error(
        invoke("simulate", "two_moon", "-n", "5", "-o", str(tmp_path / "a.h5")), 2
    )
    assert "Did you mean 'two_moons'?" in line
    line = one_line_error(
        invoke(
            "simulate", "two_moons", "-n", "5", "-o", str(tmp_path / "a.h5"), "--option", "size=64"
        ),
        2,
    )
    assert "has no option 'size'" in line
    line = one_line_error(
        invoke(
            "simulate",
            "gaussian_linear",
            "-n",
            "5",
            "-o",
            str(tmp_path / "a.h5"),
            "--option",
            "dim=ten",
        ),
        2,
    )
    assert "expects int, got 'ten'" in line
    line = one_line_error(
        invoke("simulate", "two_moons", "-n", "5", "-o", str(tmp_path / "no/a.h5")), 2
    )
    assert "does not exist" in line
    (tmp_path / "text.h5").write_text("not hdf5")
    assert "not an HDF5 file" in one_line_error(invoke("info", str(tmp_path / "text.h5")), 2)
    assert "not an HDF5 file" in one_line_error(
        invoke("simulate", "two_moons", "-n", "5", "-o", str(tmp_path / "text.h5")), 2
    )
    assert (tmp_path / "text.h5").read_text() == "not hdf5"
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["a"] = 1
    assert "not a simgen data file" in one_line_error(
        invoke("info", str(tmp_path / "other.h5")), 2
    )
    good = tmp_path / "good.h5"
    simgen.simulate("two_moons", 50, good, workers=1, progress=False)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:5000])
    assert "is truncated" in one_line_error(invoke("info", str(cut)), 2)
    line = one_line_error(
        invoke("simulate", "two_moons", "-n", "100", "-o", str(good), "--seed", "3"), 2
    )
    assert "seed=0 (you asked 3)" in line
    assert "no such file" in one_line_error(invoke("info", str(tmp_path / "none.h5")), 2)
    usage = invoke("simulate", "two_moons", "-o", str(good))  # missing -n
    assert usage.exit_code == 2


def test_counts_take_scientific_notation(tmp_path):
    path = tmp_path / "a.h5"
    args = ("simulate", "two_moons", "-o", str(path), "--workers", "1", "--json")
    result = invoke(*args, "-n", "2.5e2")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows_total"] == 250
    assert json.loads(invoke(*args, "-n", "1_000").stdout)["rows_total"] == 1000
    for bad, says in (("1.5", "not a whole number"), ("ten", "1e5"), ("0", "below the minimum")):
        usage = invoke(*args, "-n", bad)
        assert usage.exit_code == 2 and says in " ".join(usage.output.split()), usage.output
    assert len(simgen.open_store(path)) == 1000


def test_an_unmakeable_journal_folder_is_one_line(tmp_path):
    (tmp_path / "a.h5.parts").write_text("in the way")
    line = one_line_error(
        invoke("simulate", "two_moons", "-n", "5", "-o", str(tmp_path / "a.h5")), 2
    )
    assert "journal folder" in line and "choose another -o path" in line
    assert (tmp_path / "a.h5.parts").read_text() == "in the way"
    assert not (tmp_path / "a.h5").exists()


def test_a_broken_simulator_exits_1_with_one_line(tmp_path):
    line = one_line_error(
        invoke(
            "simulate",
            "sims_for_tests:BadShape",
            "-n",
            "5",
            "-o",
            str(tmp_path / "a.h5"),
            "--workers",
            "1",
        ),
        1,
    )
    assert "'bad_shape' returned shape (5, 1)" in line or "returned shape" in line


def test_demo_is_the_same_twice_and_runs_every_stage(tmp_path, monkeypatch):
    import simgen.demo

    monkeypatch.setattr(simgen.demo, "ROWS", 2000)
    monkeypatch.setattr(simgen.demo, "TRAIN", {**simgen.demo.TRAIN, "epochs": 2})
    monkeypatch.setattr(simgen.demo, "DRAWS", 200)
    runs = []
    for name in ("a", "b"):
        result = invoke("demo", "-o", str(tmp_path / name), "--json")
        assert result.exit_code == 0, result.output
        runs.append(json.loads(result.stdout))
    a, b = (
        {k: v for k, v in run.items() if k not in ("data", "model", "pictures")} for run in runs
    )
    assert a == b  # budgets in epochs and seeded streams: the same numbers on any machine
    for picture in ("data.png", "emulation.png", "posterior.png"):
        assert (tmp_path / "a" / picture).stat().st_size > 10_000
    assert len(simgen.open_store(tmp_path / "a" / "data.h5")) == 2000
    assert simgen.load(tmp_path / "a" / "model.pt").family == a["family"] == "flow"
    assert a["epochs"] == 2 and a["posterior_draws"] == 200


@pytest.mark.slow
def test_demo_is_accurate(tmp_path):
    """The demo as users run it. C2ST of 1,000 against 1,000 draws has a standard deviation of
    about 0.011 when the two agree, so 0.55 and 0.6 leave room for noise but not for a wrong
    crescent; 0.2 nats is twice the flow's density error at this budget."""
    result = invoke("demo", "-o", str(tmp_path / "demo"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["emulation_c2st"] <= 0.55
    assert summary["density_abs_error_nats"] <= 0.2
    assert summary["posterior_c2st"] <= 0.6


ARGS = [
    "simulate",
    "sims_for_tests:Slow",
    "-n",
    "400",
    "--chunk-size",
    "10",
    "--workers",
    "1",
    "--option",
    "delay=0.02",
    "--quiet",
]


def _start(path):
    env = {**os.environ, "PYTHONPATH": str(HELPERS)}
    return subprocess.Popen(
        [sys.executable, "-m", "simgen", *ARGS, "-o", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after(proc, journal, parts):
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal.dir.exists() and len(list(journal.dir.glob("task-*.npy"))) >= parts:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # waits, and closes the stderr pipe


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    return simgen.simulate(
        simgen.get_simulator("sims_for_tests:Slow", delay=0.0),
        400,
        path,
        workers=1,
        chunk_size=10,
        progress=False,
    )


@pytest.mark.parametrize("kills", [[1], [12, 25], [39]])
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, uninterrupted, kills):
    path = tmp_path / "d.h5"
    journal = Journal(path)
    for parts in kills:
        _kill_after(_start(path), journal, parts)
    finished = _start(path)
    _, stderr = finished.communicate(timeout=120)
    assert finished.returncode == 0, stderr
    store = simgen.open_store(path)
    np.testing.assert_array_equal(store.theta, uninterrupted.theta)
    np.testing.assert_array_equal(store.x[:], uninterrupted.x[:])
    assert not journal.dir.exists()


def test_sigkill_while_extending_leaves_the_old_file_intact(tmp_path, uninterrupted):
    path = tmp_path / "d.h5"
    simgen.simulate(
        simgen.get_simulator("sims_for_tests:Slow", delay=0.02),
        100,
        path,
        workers=1,
        chunk_size=10,
        progress=False,
    )
    before = path.read_bytes()
    journal = Journal(path)
    _kill_after(_start(path), journal, 20)  # extending to 400 rows
    assert path.read_bytes() == before and journal.dir.exists()
    assert len(simgen.open_store(path)) == 100
    rerun = _start(path)
    _, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    np.testing.assert_array_equal(simgen.open_store(path).x[:], uninterrupted.x[:])


def test_two_moons_workers_2_equals_workers_1(tmp_path, cli):
    """The issue's acceptance command, verbatim: 100,000 rows with 2 workers and with 1."""
    for workers in ("2", "1"):
        done = cli(
            "simulate",
            "two_moons",
            "-n",
            "100000",
            "-o",
            str(tmp_path / f"{workers}.h5"),
            "--workers",
            workers,
        )
        assert done.returncode == 0, done.stderr
    one, two = simgen.open_store(tmp_path / "1.h5"), simgen.open_store(tmp_path / "2.h5")
    assert len(one) == 100_000
    np.testing.assert_array_equal(one.theta, two.theta)
    np.testing.assert_array_equal(one.x[:], two.x[:])


def _under_a_size_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    """``python -m simgen ARGS`` where no file may pass ``limit`` bytes (``ulimit -f``): writes
    beyond it fail with EFBIG, as writes to a full disk fail with ENOSPC."""
    code = (
        "import resource, runpy, sys; limit = int(sys.argv[1]); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
        "sys.argv = ['simgen', *sys.argv[2:]]; runpy.run_module('simgen', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(limit), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("limit_mb", [1, 4])
def test_a_full_disk_is_one_line_and_the_rerun_finishes(tmp_path, limit_mb):
    """Extending a 20,000-row file (1.6 MB: one chunk of 100,000 rows) to 300,000 rows
    (4.8 MB) where no file may pass 1 MB (the copy of the old file fails) or 4 MB (writing
    the new rows fails): one line that says what to do, exit 1, the old file untouched and no
    partial file left to fill the disk; the same command with room gives the file of one
    uninterrupted run."""
    path = tmp_path / "d.h5"
    simgen.simulate("two_moons", 20_000, path, workers=1, progress=False)
    before = path.read_bytes()
    args = ["simulate", "two_moons", "-n", "300000", "-o", str(path), "--workers", "1"]
    limited = _under_a_size_limit(limit_mb << 20, *args)
    assert limited.returncode == 1, limited.stderr
    lines = limited.stderr.strip().splitlines()
    assert len(lines) == 1 and "ulimit -f" in lines[0] and "rerun" in lines[0], limited.stderr
    assert path.read_bytes() == before
    assert not Journal(path).building.exists()
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    one = simgen.simulate("two_moons", 300_000, tmp_path / "one.h5", workers=1, progress=False)
    np.testing.assert_array_equal(simgen.open_store(path).theta, one.theta)
    np.testing.assert_array_equal(simgen.open_store(path).x[:], one.x[:])


@pytest.mark.parametrize("command", ["merge", "fit"])
def test_files_that_do_not_fit_are_one_line_and_leave_nothing(tmp_path, command):
    """Under a 64 KB file-size limit: a merged data file (whose writes, left in HDF5's chunk
    cache, failed again from every dataset's deallocation and crashed the interpreter at exit)
    and a model's checkpoint (which torch reported as ``unexpected pos``) fail in one line,
    exit 1, and leave no temporary file."""
    a, b, out = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "out"
    simgen.simulate("two_moons", 5000, a, workers=1, progress=False)
    simgen.simulate("two_moons", 3000, b, seed=1, workers=1, progress=False)
    out.mkdir()
    args = {
        "merge": ["merge", str(a), str(b), "-o", str(out / "m.h5")],
        "fit": ["fit", str(a), "-o", str(out / "model.pt"), "--model", "flow", "--epochs", "1"],
    }[command]
    done = _under_a_size_limit(64 << 10, *args)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ulimit -f" in lines[0], done.stderr
    assert list(out.iterdir()) == []


def test_ctrl_c_stops_worker_processes_at_once(tmp_path):
    """Ctrl-C while two worker processes are each inside a 30 s task: the run stops within
    15 s (it waited for the tasks, or forever: python/cpython#94440), says how to resume, and
    leaves no worker running."""
    started = tmp_path / "started"
    started.mkdir()
    path = tmp_path / "d.h5"
    args = ["sims_for_tests:Announced", "--option", "delay=30", "--option", f"folder={started}"]
    env = {**os.environ, "PYTHONPATH": str(HELPERS)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simgen", "simulate", *args, "-n", "200", "--workers", "2"]
        + ["-o", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while len(list(started.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
    workers = [int(p.name) for p in started.iterdir()]
    assert len(workers) == 2, "the worker processes did not start within 60 s"
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=15)
        running = [pid for pid in workers if _running(pid)]
    finally:  # after a failure, leave no process behind either
        for pid in [proc.pid, *workers]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 1 and "rerun the same command to resume" in stderr, stderr
    assert running == []


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    line = one_line_error(invoke("demo", "-o", str(blocker / "demo")), 2)
    assert "cannot make the folder" in line
