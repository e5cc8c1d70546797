"""Thread counts: the default of a CPU fit, and that a fit leaves torch's count as it was."""

import torch
from torch import nn

import simgen
from simgen.threads import fit_threads, torch_threads


def test_fit_threads_default_by_network():
    mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    with torch_threads(4):
        assert fit_threads(mlp) == 1
        assert fit_threads(conv) == 3  # all cores but one: one left for a busy neighbour
        assert fit_threads(mlp, requested=3) == 3
    with torch_threads(1):
        assert fit_threads(conv) == 1


def test_a_fit_runs_on_its_threads_and_restores_the_count(tmp_path, monkeypatch):
    store = simgen.simulate("two_moons", 300, tmp_path / "d.h5", workers=1, progress=False)
    seen = []
    from simgen.models.flow import Flow

    loss = Flow.loss

    def recording(self, theta, x):
        seen.append(torch.get_num_threads())
        return loss(self, theta, x)

    monkeypatch.setattr(Flow, "loss", recording)
    before = torch.get_num_threads()
    simgen.fit(store, "flow", train={"epochs": 1}, device="cpu", progress=False)
    assert set(seen) == {1}  # an MLP flow: one thread
    seen.clear()
    simgen.fit(store, "flow", train={"epochs": 1, "threads": 2}, device="cpu", progress=False)
    assert set(seen) == {2}
    assert torch.get_num_threads() == before
