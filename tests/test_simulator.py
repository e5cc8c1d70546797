"""The Simulator base class, options, and the registry (decorator, entry points, import paths)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import BUILTINS

import simgen
from simgen.data.simulator import describe_prior, option_spec, parse_option, simulator_class
from simgen.errors import SimulatorError, UsageError


def test_builtins_come_through_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="simgen.simulators")}
    assert set(BUILTINS) <= names
    assert set(BUILTINS) <= set(simgen.simulators())


def test_register_decorator_and_options():
    @simgen.register
    class Coin(simgen.Simulator):
        name = "coin_for_test"
        parameters = ("p",)
        x_shape = (1,)

        def __init__(self, flips: int = 10, fair: bool = False) -> None:
            self.flips, self.fair = flips, fair

        def prior(self):
            return torch.distributions.Independent(
                torch.distributions.Uniform(torch.zeros(1), torch.ones(1)), 1
            )

        def simulate(self, theta, rng):
            return rng.binomial(self.flips, theta).astype(float)

    assert "coin_for_test" in simgen.simulators()
    sim = simgen.get_simulator("coin_for_test", flips=3)
    assert sim.options == {"flips": 3, "fair": False}
    assert repr(sim) == "Coin(flips=3, fair=False)"
    assert option_spec(Coin) == {
        "flips": {"type": "int", "default": 10},
        "fair": {"type": "bool", "default": False},
    }
    assert parse_option(Coin, "flips=7") == ("flips", 7)
    assert parse_option(Coin, "fair=true") == ("fair", True)
    with pytest.raises(
        UsageError, match="option 'flips' of simulator 'coin_for_test' expects int, got 'many'"
    ):
        parse_option(Coin, "flips=many")
    with pytest.raises(
        UsageError, match="has no option 'size'; its options: flips \\(int\\), fair"
    ):
        parse_option(Coin, "size=3")
    with pytest.raises(UsageError, match="should look like key=value"):
        parse_option(Coin, "flips")
    with pytest.raises(UsageError, match="bad options for simulator 'coin_for_test'"):
        simgen.get_simulator("coin_for_test", nonsense=1)


def test_unknown_name_lists_available_and_closest():
    with pytest.raises(UsageError) as info:
        simgen.get_simulator("two_moon")
    message = str(info.value)
    assert "Did you mean 'two_moons'?" in message and "gaussian_linear" in message
    assert "\n" not in message


def test_import_path():
    sim = simgen.get_simulator("sims_for_tests:Slow", delay=0.0)
    assert type(sim).__name__ == "Slow" and sim.options == {"delay": 0.0}
    with pytest.raises(UsageError, match="cannot import simulator 'no_such_module:X'"):
        simulator_class("no_such_module:X")
    with pytest.raises(UsageError, match="is not a subclass of simgen.Simulator"):
        simulator_class("numpy:ndarray")


def test_check_output_names_simulator_and_what_it_returned():
    sim = simgen.get_simulator("sims_for_tests:BadShape")
    with pytest.raises(
        SimulatorError,
        match=r"simulator 'bad_shape' returned shape \(4, 1\) for 4 rows; expected \(4, 2\)",
    ):
        sim.check_output(sim.simulate(np.zeros((4, 2)), np.random.default_rng()), 4)
    bad = simgen.get_simulator("sims_for_tests:BadDtype")
    with pytest.raises(SimulatorError, match="simulator 'bad_dtype' returned dtype <U1"):
        bad.check_output(bad.simulate(np.zeros((4, 2)), np.random.default_rng()), 4)
    with pytest.raises(SimulatorError, match="returned list"):
        sim.check_output([[1.0, 2.0]], 1)
    out = sim.check_output(np.ones((2, 2), dtype=np.int64), 2)
    assert out.dtype == np.float32


def test_describe_prior_is_json():
    d = describe_prior(simgen.get_simulator("two_moons").prior())
    assert d["type"] == "Independent" and d["base"]["low"] == [-1.0, -1.0]
    json.dumps(describe_prior(simgen.get_simulator("gaussian_linear").prior()))


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """pip-install tests/plugin_package into a folder and put it on sys.path."""
    from pathlib import Path

    target = tmp_path_factory.mktemp("site")
    source = Path(__file__).parent / "plugin_package"
    build = tmp_path_factory.mktemp("build")
    import shutil

    shutil.copytree(source, build / "pkg")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(build / "pkg"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))


def test_installed_plugin_by_entry_point(installed_plugin):
    assert "random_walk" in simgen.simulators()
    sim = simgen.get_simulator("random_walk", steps=4)
    assert sim.x_shape == (4,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = simgen.simulators(load=True)
    assert "random_walk" in loaded and set(BUILTINS) <= set(loaded)
    assert "broken_plugin" not in loaded
    assert any(
        "broken_plugin" in str(w.message) and "broken on purpose" in str(w.message) for w in caught
    )
    with pytest.raises(UsageError, match="simulator plugin 'broken_plugin'.*failed to load"):
        simgen.get_simulator("broken_plugin")


def test_installed_plugin_from_the_command_line(installed_plugin, cli, tmp_path):
    env = {"PYTHONPATH": str(installed_plugin)}
    listed = cli("simulators", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    names = {row["name"] for row in json.loads(listed.stdout)}
    assert "random_walk" in names and set(BUILTINS) <= names
    assert "broken_plugin" in listed.stderr
    made = cli(
        "simulate",
        "random_walk",
        "-n",
        "30",
        "-o",
        str(tmp_path / "w.h5"),
        "--workers",
        "1",
        "--option",
        "steps=3",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert simgen.open_store(tmp_path / "w.h5").x.shape == (30, 3)
