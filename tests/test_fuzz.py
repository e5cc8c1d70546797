"""Bad input, generated: every command answers with one line and exit status 2, never a
traceback, and changes nothing on disk."""

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import simgen
from simgen.cli import app

runner = CliRunner()
FUZZ = settings(  # derandomize: the same examples on every run (fixed seeds)
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    store = simgen.simulate("two_moons", 300, folder / "d.h5", workers=1, progress=False)
    simgen.fit(store, "flow", folder / "m.pt", train={"epochs": 1}, progress=False)
    return folder


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _one_line_2(result):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output


observations = st.one_of(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=5)
    .filter(lambda v: len(v) != 2)
    .map(lambda v: np.array(v, np.float32)),  # the wrong size
    st.sampled_from([np.nan, np.inf, -np.inf]).map(lambda v: np.array([v, 0.1], np.float32)),
    st.just(np.zeros((2, 3, 2), np.float32)),  # the wrong rank
)


@FUZZ
@given(x=observations)
def test_bad_observations(files, x):
    np.save(files / "obs.npy", x)
    before = _digests(files)
    result = runner.invoke(
        app, ["sample", str(files / "m.pt"), "--observed", str(files / "obs.npy"), "-n", "10",
              "-o", str(files / "post.h5"), "--quiet"],
    )  # fmt: skip
    _one_line_2(result)
    assert _digests(files) == before


@FUZZ
@given(
    text=st.one_of(
        st.text(alphabet="0123456789.,-eE x", max_size=12).filter(
            lambda t: len(t.split(",")) != 2 or not all(_number(v) for v in t.split(","))
        ),
        st.sampled_from(["nan,0", "inf,1", "0.1", "0.1,0.2,0.3", "1E100", "1e39,0"]),
    )
)
def test_bad_thetas(files, text):
    before = _digests(files)
    result = runner.invoke(
        app, ["sample", str(files / "m.pt"), "--theta", text, "-n", "5",
              "-o", str(files / "x.h5"), "--quiet"],
    )  # fmt: skip
    _one_line_2(result)
    assert _digests(files) == before


def _number(text):
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


@FUZZ
@given(
    option=st.one_of(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_=0123456789", max_size=15).filter(
            lambda t: t not in ("dim=2", "dim=3")
        ),
        st.sampled_from(["dim=x", "dim=", "=3", "dim", "noise_var=abc"]),
    )
)
def test_bad_simulator_options(tmp_path, option):
    result = runner.invoke(
        app, ["simulate", "gaussian_linear", "-n", "10", "-o", str(tmp_path / "g.h5"),
              "--option", option, "--quiet"],
    )  # fmt: skip
    if result.exit_code == 0:  # a valid option after all (e.g. prior_var=5)
        return
    _one_line_2(result)
    assert not (tmp_path / "g.h5").exists()
