"""A file's record of its simulator and prior is data: rebuilding them imports no code that the
file names."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import simgen
from simgen.data.provenance import recorded_prior, recorded_simulator
from simgen.data.simulator import describe_prior
from simgen.errors import UsageError

EVIL = """
from pathlib import Path
Path(__file__).with_name("MARKER").write_text("imported")
import simgen
class Evil(simgen.Simulator):
    name = "evil"
"""


@pytest.mark.parametrize("name", ["two_moons", "gaussian_linear", "slcp", "cosmology"])
def test_priors_are_rebuilt_exactly_from_their_descriptions(name):
    prior = simgen.get_simulator(name).prior()
    rebuilt = recorded_prior(describe_prior(prior))
    theta = prior.sample((200,))
    assert torch.equal(prior.log_prob(theta), rebuilt.log_prob(theta))
    assert type(rebuilt.support) is type(prior.support)


def test_a_prior_of_a_users_own_class_is_refused_in_one_line():
    class Mine(torch.distributions.Normal):
        pass

    with pytest.raises(UsageError, match="not a torch.distributions class"):
        recorded_prior(describe_prior(Mine(torch.zeros(2), torch.ones(2))))


def test_only_registered_names_are_rebuilt():
    sim = recorded_simulator({"name": "gaussian_linear", "options": {"dim": 3}})
    assert sim.x_shape == (3,)
    for record in ({"name": "evilmod:Evil"}, {"name": "nope", "path": "evilmod:Evil"}):
        with pytest.raises(UsageError, match="imports no code a file names"):
            recorded_simulator(record)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """A folder holding a module that leaves a marker when imported, and a model file whose
    record names that module as its simulator (by name and by import path)."""
    folder = tmp_path_factory.mktemp("crafted")
    store = simgen.simulate("two_moons", 500, folder / "d.h5", workers=1, progress=False)
    simgen.fit(store, "flow", folder / "m.pt", train={"epochs": 1}, progress=False)
    state = torch.load(folder / "m.pt", weights_only=True)
    state["info"]["simulator"].update(name="evilmod:Evil", path="evilmod:Evil")
    with open(folder / "m.pt", "wb") as f:
        torch.save(state, f)
    (folder / "evilmod.py").write_text(EVIL)
    np.save(folder / "obs.npy", np.array([0.1, 0.2], np.float32))
    return folder


@pytest.mark.parametrize(
    "args",
    [
        ["sample", "m.pt", "--theta", "0.1,0.2", "-n", "5", "-o", "s.h5"],
        ["sample", "m.pt", "--observed", "obs.npy", "-n", "20", "--warmup", "5", "-o", "p.h5"],
        ["check", "m.pt", "-o", "r", "--pairs", "2", "--draws", "3", "--samples", "20"],
        ["log-prob", "m.pt", "d.h5"],
    ],
)
def test_a_crafted_model_imports_nothing_it_names(crafted, args):
    (crafted / "MARKER").unlink(missing_ok=True)
    run = subprocess.run(
        [sys.executable, "-m", "simgen", *args, "--quiet"],
        cwd=crafted,  # python -m puts this folder, which holds the module, on the path
        capture_output=True,
        text=True,
        check=False,
    )
    assert not (crafted / "MARKER").exists(), run.stderr
    if args[0] == "check":  # needs the simulator: one line that says how to name it
        assert run.returncode == 2 and "name it yourself" in run.stderr, run.stderr
    else:
        assert run.returncode == 0, run.stderr


def test_a_script_beside_the_module_imports_nothing_either(crafted):
    (crafted / "MARKER").unlink(missing_ok=True)
    script = (
        "import simgen\n"
        "emu = simgen.load('m.pt')\n"
        "emu.sample([0.1, 0.2], n=3)\n"
        "simgen.Posterior(emu).log_prob([[0.1, 0.2]], [0.1, 0.2])\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=crafted, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert not (crafted / "MARKER").exists()
