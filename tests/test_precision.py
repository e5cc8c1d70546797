"""Training arithmetic: under bf16 autocast every network's output layer, so every density's
parameters, stay float32; ``precision`` is checked. (CPU autocast: the same rounding as on CUDA,
so this runs everywhere; tests/test_cuda.py runs the real thing on a GPU.)"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import simgen
from simgen.cli import app
from simgen.errors import UsageError
from simgen.models.nn import full_precision
from simgen.models.registry import build_family, defaults_for
from simgen.train.loop import fit

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def test_full_precision_layer_ignores_autocast_and_follows_deepcopy():
    torch.manual_seed(0)
    layer = full_precision(nn.Linear(4, 3))
    x = torch.randn(5, 4)
    with torch.autocast(**BF16):
        out = layer(x)
        rounded = nn.functional.linear(x, layer.weight, layer.bias)
    assert rounded.dtype == torch.bfloat16  # what the layer would give without the wrapper
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x @ layer.weight.T + layer.bias)
    twin = copy.deepcopy(layer)  # the EMA copy: its forward must use its own weights
    with torch.no_grad():
        layer.weight.add_(1.0)
    torch.testing.assert_close(twin(x), x @ twin.weight.T + twin.bias)
    assert set(twin.state_dict()) == {"weight", "bias"}  # model files keep their keys


@pytest.mark.parametrize(
    ("family", "x_shape", "config"),
    [
        ("flow", (3,), {"correlated": True}),  # spline knots, mean, scale, triangular solve
        ("flow", (8, 8), {}),  # the spectral flow
        ("vae", (3,), {}),
        ("diffusion", (3,), {}),
        ("diffusion", (8, 8), {}),  # the U-Net
    ],
)
def test_every_family_trains_under_bf16_autocast(family, x_shape, config):
    torch.manual_seed(0)
    d_x = math.prod(x_shape)
    net = build_family(family, d_x, 2, {**defaults_for(family, x_shape), **config})
    v, u = torch.randn(64, 2), torch.randn(64, d_x)
    if hasattr(net, "initialize"):
        net.initialize(v, u)
    with torch.autocast(**BF16):
        loss = net.loss(v, u)
        if family == "flow":
            dist = net.dist(v)
            assert dist.log_prob(u).dtype == torch.float32
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    loss.mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "gl.h5"
    return simgen.simulate("gaussian_linear", 200, path, workers=1, progress=False)


def test_unknown_precision_is_refused(data, tmp_path):
    with pytest.raises(UsageError, match="unknown precision 'fp16'; use auto, bf16, fp32"):
        fit(data, "flow", train={"precision": "fp16"}, device="cpu", progress=False)
    out = tmp_path / "m.pt"
    done = CliRunner().invoke(app, ["fit", str(data.path), "-o", str(out), "--precision", "half"])
    assert done.exit_code == 2 and "unknown precision 'half'" in done.output
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:torch.is_autocast_cpu_enabled")
def test_autocast_state_is_read_on_older_torch(monkeypatch):
    """torch < 2.4: ``is_autocast_enabled()`` takes no device (and means CUDA); the CPU state has
    its own call."""
    from simgen.models.nn import _autocast_on

    # autocast entered first: it uses the new signature itself
    with torch.autocast(**BF16), monkeypatch.context() as patch:
        patch.setattr(torch, "is_autocast_enabled", lambda: False)  # the old signature
        assert _autocast_on("cpu") and not _autocast_on("cuda")
    assert not _autocast_on("cpu")


def test_auto_precision_is_bf16_for_convolutional_networks_on_cuda_only():
    from simgen.train.config import TrainConfig, uses_bf16

    mlp = build_family("flow", 3, 2, defaults_for("flow", (3,)))
    unet = build_family("diffusion", 64, 2, defaults_for("diffusion", (8, 8)))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only compared, never allocated on
    auto, bf16, fp32 = (TrainConfig(precision=p) for p in ("auto", "bf16", "fp32"))
    assert uses_bf16(unet, cuda, auto) and not uses_bf16(mlp, cuda, auto)
    assert uses_bf16(mlp, cuda, bf16) and not uses_bf16(unet, cuda, fp32)
    assert not any(uses_bf16(net, cpu, bf16) for net in (mlp, unet))
