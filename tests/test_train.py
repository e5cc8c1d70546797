"""fit(): resume after an interruption, NaN losses, configuration files, the CLI around it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import simgen
import simgen.train.loop as train_module
from simgen.cli import app
from simgen.emulator import load
from simgen.errors import RunError, UsageError
from simgen.inference.metropolis import LOW_ACCEPTANCE
from simgen.train.config import read_config
from simgen.train.loop import fit

FLOW = {"transforms": 2, "hidden": [16, 16]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "moons.h5"
    return simgen.simulate("two_moons", 2000, path, workers=1, progress=False)


def test_interrupted_fit_resumes_to_the_same_model(data, tmp_path, monkeypatch):
    settings = {"epochs": 4, "batch_size": 256}
    reference = fit(data, "flow", tmp_path / "ref.pt", train=settings, config=FLOW, progress=False)
    calls = {"n": 0}
    validate = train_module._validate

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return validate(*args, **kwargs)

    out = tmp_path / "model.pt"
    monkeypatch.setattr(train_module, "_validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(data, "flow", out, train=settings, config=FLOW, progress=False)
    assert not out.exists() and out.with_name("model.pt.ckpt").exists()
    monkeypatch.setattr(train_module, "_validate", validate)
    resumed = fit(data, "flow", out, train=settings, config=FLOW, progress=False)
    assert resumed.info["metrics"]["val_loss"] == reference.info["metrics"]["val_loss"]
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert not out.with_name("model.pt.ckpt").exists()


def test_nan_loss_stops_without_writing_a_model(data, tmp_path, monkeypatch):
    from simgen.models.flow import Flow

    monkeypatch.setattr(Flow, "loss", lambda self, theta, x: torch.full(x.shape[:1], float("nan")))
    out = tmp_path / "m.pt"
    with pytest.raises(RunError, match="loss became nan at epoch 0; no model was written"):
        fit(data, "flow", out, train={"epochs": 2}, config=FLOW, progress=False)
    assert not out.exists()


def test_streaming_equals_in_memory_statistics(data):
    a = fit(data, "flow", None, train={"epochs": 1}, config=FLOW, progress=False)
    b = fit(
        data, "flow", None, train={"epochs": 1, "in_memory_bytes": 0}, config=FLOW, progress=False
    )
    torch.testing.assert_close(a.x_mean, b.x_mean)
    assert np.isfinite(b.info["metrics"]["best_val_loss"])


def test_settings_are_validated(data, tmp_path):
    with pytest.raises(UsageError, match="unknown model family 'gan'"):
        fit(data, "gan", None)
    with pytest.raises(UsageError, match=r"unknown training setting\(s\) \['epoch'\]"):
        fit(data, "flow", None, train={"epoch": 3})
    with pytest.raises(UsageError, match=r"unknown flow setting\(s\) \['layers'\]"):
        fit(data, "flow", None, config={"layers": 3})
    with pytest.raises(UsageError, match="parameterization must be one of"):
        fit(data, "diffusion", None, config={"parameterization": "v"})
    toml = tmp_path / "fit.toml"
    toml.write_text("[train]\nepochs = 2\n[model]\ntransforms = 1\nhidden = [8]\n")
    assert read_config(toml) == ({"epochs": 2}, {"transforms": 1, "hidden": [8]})
    toml.write_text("[trian]\nepochs = 2\n")
    with pytest.raises(UsageError, match="unknown table"):
        read_config(toml)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "score"])
def test_diffusion_parameterizations_train(data, parameterization):
    emulator = fit(
        data,
        "diffusion",
        None,
        train={"epochs": 2},
        config={"hidden": [16], "embedding": 8, "parameterization": parameterization, "steps": 5},
        progress=False,
    )
    losses = emulator.info["metrics"]["val_loss"]
    assert all(np.isfinite(losses)) and losses[-1] < 1.2  # eps-MSE starts at ~1


runner = CliRunner()


def test_cli_fit_sample_log_prob(data, tmp_path):
    model = tmp_path / "m.pt"
    toml = tmp_path / "fit.toml"
    toml.write_text("[model]\ntransforms = 2\nhidden = [16, 16]\n")
    done = runner.invoke(
        app,
        [
            "fit",
            str(data.path),
            "-o",
            str(model),
            "--epochs",
            "2",
            "--config",
            str(toml),
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["epochs_run"] == 2
    assert load(model).info["model_config"]["transforms"] == 2
    samples = tmp_path / "s.h5"
    done = runner.invoke(
        app,
        ["sample", str(model), "--theta", "0.1,-0.3", "-n", "50", "-o", str(samples), "--json"],
    )
    assert done.exit_code == 0, done.output
    import h5py

    with h5py.File(samples) as f:
        assert f["x"].shape == (1, 50, 2) and f["log_prob"].shape == (1, 50)
        assert f.attrs["model"] == load(model).identity and f.attrs["kind"] == "emulation"
    # --metropolis: the same emulator, corrected by two_moons' exact density; a warning says
    # when the acceptance rate is low (the emulator far from the crescent), and only then
    # (the CLI prints each warning as one line "warning: ...")
    exact = tmp_path / "exact.h5"
    done = runner.invoke(
        app,
        ["sample", str(model), "--theta", "0.1,-0.3", "-n", "200", "-o", str(exact)]
        + ["--metropolis", "--json"],
    )
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert 0 < summary["mean_acceptance"] <= 1 and 1 <= summary["mean_distinct"] <= 200
    warned = [line for line in done.stderr.splitlines() if "acceptance rate" in line]
    assert len(warned) == (summary["mean_acceptance"] < LOW_ACCEPTANCE)
    assert all(line.startswith("warning: ") for line in warned)
    far = runner.invoke(
        app,
        ["sample", str(model), "--theta", "5,5", "-n", "3", "-o", str(tmp_path / "far.h5")]
        + ["--quiet"],
    )
    assert far.exit_code == 0, far.output
    assert far.stderr.splitlines() == [
        "warning: 1 of 1 theta lie outside the prior's support: the emulator extrapolates there"
    ]
    with h5py.File(exact) as f:
        assert f["x"].shape == (1, 200, 2) and f.attrs["metropolis"]
        assert np.isfinite(f["log_prob"][()]).all() and f["acceptance"].shape == (1,)
    np.save(tmp_path / "thetas.npy", np.zeros((3, 2), np.float32))
    done = runner.invoke(
        app,
        [
            "sample",
            str(model),
            "--theta-file",
            str(tmp_path / "thetas.npy"),
            "-n",
            "4",
            "-o",
            str(samples),
            "--no-log-prob",
        ],
    )
    assert done.exit_code == 0, done.output
    done = runner.invoke(
        app, ["sample", str(model), "--from-prior", "2", "-n", "3", "-o", str(samples)]
    )
    assert done.exit_code == 0, done.output
    done = runner.invoke(
        app, ["log-prob", str(model), str(data.path), "-o", str(tmp_path / "lp.h5"), "--json"]
    )
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["rows"] == 2000 and summary["mean_abs_error_nats"] > 0
    info = runner.invoke(app, ["info", str(model), "--json"])
    assert json.loads(info.stdout)["family"] == "flow"


def test_cli_bad_input(data, tmp_path):
    model = tmp_path / "m.pt"
    fit(data, "flow", model, train={"epochs": 1}, config=FLOW, progress=False)
    cases = [
        (
            ["sample", str(model), "--theta", "1,2,3", "-o", str(tmp_path / "s.h5")],
            "theta should hold 2 finite numbers",
        ),
        (
            ["sample", str(model), "--theta", "a,b", "-o", str(tmp_path / "s.h5")],
            "should be numbers separated by commas",
        ),
        (["sample", str(model), "-o", str(tmp_path / "s.h5")], "give exactly one of"),
        (
            ["sample", str(model), "--theta", "0,0", "--steps", "5", "-o", str(tmp_path / "s.h5")],
            "apply to diffusion models only",
        ),
        (
            ["sample", str(data.path), "--theta", "0,0", "-o", str(tmp_path / "s.h5")],
            "not a simgen model file",
        ),
        (
            ["sample", str(model), "--observed", str(tmp_path / "o.npy"), "--metropolis"]
            + ["-o", str(tmp_path / "s.h5")],
            "drop --theta/--from-prior/--metropolis",
        ),
        (["fit", str(data.path), "-o", str(tmp_path / "no" / "m.pt")], "cannot write"),
        (
            ["fit", str(data.path), "-o", str(tmp_path / "m2.pt"), "--model", "gan"],
            "unknown model family",
        ),
        (
            ["fit", str(data.path), "-o", str(tmp_path / "m2.pt"), "--device", "cuda"],
            "no CUDA GPU" if not torch.cuda.is_available() else "__skip__",
        ),
    ]
    for args, message in cases:
        if message == "__skip__":
            continue
        done = runner.invoke(app, args)
        assert done.exit_code == 2, (args, done.output)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    other = simgen.simulate("slcp", 20, tmp_path / "slcp.h5", workers=1, progress=False)
    done = runner.invoke(app, ["log-prob", str(model), str(other.path)])
    assert done.exit_code == 2 and "the model expects (2,) and 2" in done.stderr


def test_prefetch_keeps_order_raises_errors_and_stops_early():
    import threading

    from simgen.train.batches import prefetch

    assert list(prefetch(range(10), depth=2, transform=lambda i: 2 * i)) == list(range(0, 20, 2))

    def broken():
        yield 0
        raise ValueError("reader failed")

    with pytest.raises(ValueError, match="reader failed"):
        list(prefetch(broken()))
    stream = prefetch(iter(range(10**6)), depth=2)
    next(stream)
    stream.close()  # leaving early: the thread must end, not block on a full queue
    assert not any(t.name == "simgen-prefetch" for t in threading.enumerate())


@pytest.mark.slow
def test_compiled_fit_matches_eager(data):
    """torch.compile changes kernels, not the maths: the flow's (noise-free) loss after one
    epoch agrees with eager execution to float32 round-off accumulated over the steps."""
    settings = {"epochs": 1, "batch_size": 256}
    eager = fit(data, "flow", None, train=settings, config=FLOW, progress=False)
    compiled = fit(
        data, "flow", None, train={**settings, "compile": True}, config=FLOW, progress=False
    )
    a, b = (m.info["metrics"]["best_val_loss"] for m in (eager, compiled))
    assert abs(a - b) <= 1e-3 * max(1.0, abs(a))


def test_auto_device_follows_simgen_device(monkeypatch):
    from simgen.errors import UsageError
    from simgen.train.config import resolve_device

    monkeypatch.setenv("SIMGEN_DEVICE", "cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("SIMGEN_DEVICE", "tpu")
    with pytest.raises(UsageError, match="SIMGEN_DEVICE=tpu: unknown device 'tpu'"):
        resolve_device("auto")
    monkeypatch.delenv("SIMGEN_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_a_finished_fit_rerun_keeps_the_model_unless_forced(data, tmp_path):
    from typer.testing import CliRunner

    from simgen.cli import app

    model = tmp_path / "m.pt"
    args = ["fit", str(data.path), "-o", str(model), "--epochs", "1", "--json"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    written = model.read_bytes()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already holds this fit" in again.stderr
    assert model.read_bytes() == written  # kept, not trained again
    assert json.loads(again.stdout)["epochs_run"] == 1
    other = runner.invoke(app, [*args[:-2], "2", "--json"])  # other settings: a new fit
    assert other.exit_code == 0 and json.loads(other.stdout)["epochs_run"] == 2
    forced = runner.invoke(app, [*args[:-2], "2", "--force", "--json"])
    assert forced.exit_code == 0 and "already holds" not in forced.stderr
