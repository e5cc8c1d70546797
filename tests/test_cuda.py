"""The CUDA path end to end: fits in bf16 and fp32, evaluation and sampling on the GPU, models
moved between devices, posteriors with a GPU emulator, the command line with --device cuda.

Skipped, with the reason shown, where PyTorch sees no CUDA GPU (CI); run on a GPU machine.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import simgen
from simgen.cli import app
from simgen.emulator import load
from simgen.inference.posterior import Posterior
from simgen.train.loop import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = {
    "flow": {"transforms": 2, "hidden": [16, 16], "correlated": True},
    "vae": {"latent": 2, "hidden": [16, 16], "iw_samples": 64},
    "diffusion": {"hidden": [32, 32], "embedding": 8, "steps": 8, "affine_steps": 50},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "gl.h5"
    return simgen.simulate("gaussian_linear", 2000, path, workers=1, progress=False)


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
@pytest.mark.parametrize("family", ["flow", "vae", "diffusion"])
def test_fit_evaluate_sample_and_move_between_devices(data, family, precision, tmp_path):
    out = tmp_path / "m.pt"
    train = {"epochs": 2, "batch_size": 256, "precision": precision}
    emulator = fit(data, family, out, train=train, config=TINY[family], device="cuda")
    assert emulator.theta_mean.device.type == "cuda"
    assert all(np.isfinite(emulator.info["metrics"]["val_loss"]))
    theta, x = torch.from_numpy(data.theta[:8]), torch.from_numpy(data.x[:8])
    with torch.no_grad():
        lp = emulator.log_prob(x, theta)
    assert lp.device.type == "cuda" and lp.shape == (8,) and torch.isfinite(lp).all()
    drawn = emulator.sample(theta, 3)
    assert drawn.device.type == "cuda" and drawn.shape == (3, 8, 10)
    on_gpu, on_cpu = load(out, device="cuda"), load(out)
    if family != "vae":  # the VAE's importance sampling draws different noise per device
        with torch.no_grad():
            a, b = on_gpu.log_prob(x, theta).cpu(), on_cpu.log_prob(x, theta)
        # float32 on both devices (no TF32: PyTorch's default for matrix products)
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:posterior sampling may not have converged")
def test_posterior_with_a_gpu_emulator(data):
    emulator = fit(data, "flow", train={"epochs": 2}, config=TINY["flow"], device="cuda")
    posterior = Posterior(emulator)
    x_obs = data.x[-1]
    result = posterior.sample(x_obs, 200, chains=20, warmup=20, progress=False)
    assert result.theta.device.type == "cpu" and result.theta.shape == (200, 10)
    assert torch.isfinite(result.log_prob).all()
    assert result.diagnostics["sampler"] == "importance"
    # the draws' log densities are the unnormalised log posterior less the evidence estimate
    lp = posterior.log_prob(result.theta[:5], x_obs) - result.diagnostics["log_evidence"]
    torch.testing.assert_close(lp, result.log_prob[:5], atol=1e-3, rtol=1e-4)
    batch = posterior.sample_batch(data.x[-3:], 20, chains=4, warmup=10, progress=False)
    assert batch.theta.shape == (3, 20, 10)


@pytest.mark.filterwarnings("ignore:posterior sampling may not have converged")
def test_cli_on_cuda(data, tmp_path):
    runner = CliRunner()
    model, samples, posterior, lps = (tmp_path / n for n in ("m.pt", "s.h5", "p.h5", "l.h5"))
    done = runner.invoke(
        app,
        ["fit", str(data.path), "-o", str(model), "--epochs", "2", "--device", "cuda"]
        + ["--precision", "fp32", "--json"],
    )
    assert done.exit_code == 0, done.output
    assert load(model).info["train_config"]["precision"] == "fp32"
    theta = ",".join(["0.1"] * 10)
    done = runner.invoke(
        app,
        [
            "sample",
            str(model),
            "--theta",
            theta,
            "-n",
            "50",
            "-o",
            str(samples),
            "--device",
            "cuda",
        ],
    )
    assert done.exit_code == 0, done.output
    with h5py.File(samples) as f:
        assert f["x"].shape == (1, 50, 10) and np.isfinite(f["log_prob"][:]).all()
    np.save(tmp_path / "obs.npy", data.x[-1])
    done = runner.invoke(
        app,
        ["sample", str(model), "--observed", str(tmp_path / "obs.npy"), "-n", "100"]
        + ["--chains", "10", "--warmup", "20", "-o", str(posterior), "--device", "cuda", "--json"],
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)
    done = runner.invoke(
        app, ["log-prob", str(model), str(data.path), "-o", str(lps), "--device", "cuda"]
    )
    assert done.exit_code == 0, done.output


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    path = tmp_path_factory.mktemp("moons") / "moons.h5"
    return simgen.simulate("two_moons", 2000, path, workers=1, progress=False)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_check_metropolis_and_latent_picture_with_gpu_emulators(moons, tmp_path):
    from simgen.diagnostics.report import check
    from simgen.inference.metropolis import metropolized_sample

    flow = fit(moons, "flow", train={"epochs": 2}, config=TINY["flow"], device="cuda")
    sim = simgen.get_simulator("two_moons")
    corrected = metropolized_sample(flow, sim.log_unnormalized, np.zeros(2), 100, seed=0)
    assert corrected.x.shape == (100, 2) and np.isfinite(corrected.x.cpu().numpy()).all()
    report = check(flow, tmp_path / "flow", pairs=4, draws=9, thetas=1, samples=50,
                   metropolis=True)  # fmt: skip
    assert "sbc_pvalues" in report["calibration"]
    vae = fit(moons, "vae", train={"epochs": 2}, config=TINY["vae"], device="cuda")
    report = check(vae, tmp_path / "vae", pairs=4, draws=9, thetas=1, samples=50)
    assert "latent.png" in report["files"]
