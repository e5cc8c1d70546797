"""The HDF5 schema: writing, validation of bad files, lazy chunk-aligned reading."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
import torch

import simgen
from simgen.data.store import FORMAT, REQUIRED_ATTRS, open_store
from simgen.errors import StoreError, UsageError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "data.h5"
    return simgen.simulate(
        "gaussian_linear", 2500, path, workers=1, chunk_size=700, progress=False
    )


def test_schema(store):
    f = store.file
    assert f.attrs["format"] == FORMAT
    assert all(key in f.attrs for key in REQUIRED_ATTRS)
    assert f["theta"].shape == (2500, 10) and f["x"].shape == (2500, 10)
    assert f["theta"].dtype == np.float32 and f["x"].dtype == np.float32
    assert f["x"].maxshape == (None, 10) and f["x"].chunks is not None
    np.testing.assert_array_equal(f["chunks"][:, 0], [0, 1, 2, 3])
    assert f["chunks"][:, 1].sum() == 2500
    meta = store.metadata
    assert meta["parameters"][0] == "theta_1" and meta["x_shape"] == [10]
    assert meta["simulator_options"] == {"dim": 10, "prior_var": 0.1, "noise_var": 0.1}
    assert meta["n_requested"] == meta["n_simulated"] == 2500
    assert len(store) == 2500 and store.n_failed == 0 and store.x_shape == (10,)


@pytest.mark.parametrize(("shuffle", "buffer"), [(False, 1), (True, 1), (True, 3)])
def test_batches_cover_every_row_once(store, shuffle, buffer):
    batches = list(store.batches(300, shuffle=shuffle, seed=1, buffer=buffer))
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t, _ in batches)
    assert [len(t) for t, _ in batches[:-1]] == [300] * (len(batches) - 1)
    theta = torch.cat([t for t, _ in batches]).numpy()
    x = torch.cat([x for _, x in batches]).numpy()
    order = np.lexsort(theta.T)
    np.testing.assert_array_equal(theta[order], store.theta[np.lexsort(store.theta.T)])
    np.testing.assert_array_equal(x[order], store.x[:][np.lexsort(store.theta.T)])
    if not shuffle:
        np.testing.assert_array_equal(theta, store.theta)


def test_shuffle_buffer_mixes_spans(store):
    """With a buffer of 4 spans a batch draws rows from several spans; with 1, from one
    (batches of 100 rows tile the 700-row chunks and the 400-row last one)."""
    row = {tuple(t): i for i, t in enumerate(store.theta)}
    block = store.block_rows

    def spans_in_first_batch(buffer: int) -> int:
        theta, _ = next(store.batches(100, shuffle=True, seed=3, buffer=buffer))
        return len({row[tuple(t)] // block for t in theta.numpy()})

    assert spans_in_first_batch(1) == 1
    assert spans_in_first_batch(4) > 1


def test_batches_range_and_shards(store):
    got = torch.cat([t for t, _ in store.batches(128, start=100, stop=1900)]).numpy()
    np.testing.assert_array_equal(got, store.theta[100:1900])
    parts = [torch.cat([t for t, _ in store.batches(64, shard=(k, 3))]).numpy() for k in range(3)]
    np.testing.assert_array_equal(
        np.sort(np.concatenate(parts), axis=0), np.sort(store.theta, axis=0)
    )


def test_torch_dataset_with_dataloader(store):
    loader = torch.utils.data.DataLoader(store.dataset(500, shuffle=True, seed=0), batch_size=None)
    rows = sum(len(t) for t, _ in loader)
    assert rows == 2500


def test_store_pickles_by_path(store):
    import pickle

    clone = pickle.loads(pickle.dumps(store))
    assert clone.path == store.path and len(clone) == len(store)


def test_bad_files(tmp_path, store):
    with pytest.raises(StoreError, match="no such file"):
        open_store(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError, match="is not an HDF5 file"):
        open_store(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["a"] = [1, 2]
    with pytest.raises(StoreError, match="not a simgen data file"):
        open_store(tmp_path / "other.h5")
    newer = tmp_path / "newer.h5"
    newer.write_bytes(store.path.read_bytes())
    with h5py.File(newer, "r+") as f:
        f.attrs["format"] = "simgen-data/9"
    with pytest.raises(StoreError, match="newer than this simgen reads"):
        open_store(newer)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(store.path.read_bytes()[: store.path.stat().st_size // 2])
    with pytest.raises(StoreError, match="is truncated"):
        open_store(cut)
    with pytest.raises(StoreError, match="is a folder"):
        open_store(tmp_path)


def test_appender_writes_in_order_and_reports_writer_errors(tmp_path, store):
    from simgen.data.store import create
    from simgen.data.writer import Appender

    meta = {k: v for k, v in store.metadata.items() if k != "format"}
    with Appender(lambda: create(tmp_path / "a.h5", meta), buffer_bytes=1000) as appender:
        for i in range(5):
            ok = np.arange(10) % 3 != 0
            appender.add(i, np.full((10, 10), i, np.float32), np.full((10, 10), i, np.float32), ok)
        appender.close({"n_simulated": 50})
    assert appender.rows == (5 * 6, 5 * 4)
    a = open_store(tmp_path / "a.h5")
    assert a.metadata["n_simulated"] == 50
    assert len(a) == 5 * 6 and a.n_failed == 5 * 4
    np.testing.assert_array_equal(a.theta[:, 0], np.repeat(np.arange(5), 6))
    np.testing.assert_array_equal(a.file["chunks"][:], [[i, 6, 4] for i in range(5)])
    appender = Appender(lambda: h5py.File(tmp_path / "a.h5", "r"))
    appender.add(0, np.zeros((1, 10), np.float32), np.zeros((1, 10), np.float32), np.ones(1, bool))
    with pytest.raises(Exception, match="[Ww]rite|read-only|permission|[Ff]ile"):
        appender.close()
    missing = tmp_path / "missing" / "b.h5"
    with pytest.raises(FileNotFoundError), Appender(lambda: h5py.File(missing, "w")) as appender:
        for i in range(20):  # the opener's error, raised by an add or by close
            appender.add(i, np.zeros((1, 10), np.float32), np.zeros((1, 10), np.float32), ok[:1])


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_appended_blocks_read_back_whatever_their_alignment(tmp_path, compression):
    """Rows appended in blocks that cover whole HDF5 chunks (written straight to the file),
    part of one, or start inside one, read back as the concatenation; a filtered dataset takes
    the usual path."""
    from simgen.data.writer import _Column

    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((m, 3)).astype(np.float32) for m in (8, 4, 3, 13, 16, 0, 5)]
    with h5py.File(tmp_path / "a.h5", "w") as f:
        dataset = f.create_dataset(
            "x", (0, 3), np.float32, maxshape=(None, 3), chunks=(4, 3), compression=compression
        )
        column = _Column(dataset)
        column.extend(blocks[:2])
        for block in blocks[2:]:
            column.extend([block])
    with h5py.File(tmp_path / "a.h5", "r") as f:
        np.testing.assert_array_equal(f["x"][:], np.concatenate(blocks))


def test_merge_keeps_every_row_in_order_and_refuses_what_does_not_fit(tmp_path):
    a = simgen.simulate("slcp", 300, tmp_path / "a.h5", workers=1, chunk_size=128, progress=False)
    b = simgen.simulate(
        "slcp", 200, tmp_path / "b.h5", seed=1, workers=1, chunk_size=64, progress=False
    )
    merged = simgen.merge([a.path, b.path], tmp_path / "ab.h5", progress=False)
    np.testing.assert_array_equal(merged.theta, np.concatenate([a.theta, b.theta]))
    np.testing.assert_array_equal(merged.x[:], np.concatenate([a.x[:], b.x[:]]))
    assert merged.metadata["prior"] == a.metadata["prior"]
    assert [s["seed"] for s in json.loads(merged.metadata["sources"])] == [0, 1]
    before = merged.path.read_bytes()
    with pytest.raises(UsageError, match="merges .*a.h5.*b.h5: simulate into a new file"):
        simgen.simulate("slcp", 600, merged.path, workers=1, chunk_size=128, progress=False)
    with pytest.raises(UsageError, match="exists; merge writes a new file"):
        simgen.merge([a.path, b.path], merged.path)
    assert merged.path.read_bytes() == before
    other = simgen.simulate("two_moons", 10, tmp_path / "m.h5", workers=1, progress=False)
    with pytest.raises(UsageError, match="differ in simulator"):
        simgen.merge([a.path, other.path], tmp_path / "am.h5")
    with pytest.raises(UsageError, match="at least two"):
        simgen.merge([a.path], tmp_path / "a2.h5")
    assert not (tmp_path / "am.h5").exists() and not (tmp_path / "a2.h5").exists()


def test_merge_refuses_runs_of_one_seed(tmp_path):
    """Task i of a seed draws the same random numbers whatever else differs: two runs of one seed
    repeat the same simulations (prior draws: here the 100 rows of one are the first 100 of the
    other) or the same noise (given parameters), also inside an earlier merge, whose sources
    the new file keeps."""
    a = simgen.simulate("two_moons", 200, tmp_path / "a.h5", workers=1, progress=False)
    b = simgen.simulate("two_moons", 100, tmp_path / "b.h5", workers=1, progress=False)
    np.testing.assert_array_equal(a.x[:100], b.x[:])  # why: the same rows
    with pytest.raises(UsageError, match="a.h5 and .*b.h5 were both simulated with seed 0"):
        simgen.merge([a.path, b.path], tmp_path / "ab.h5")
    given = np.full((50, 2), 0.25, np.float32)
    g = simgen.simulate("two_moons", 50, tmp_path / "g.h5", theta=given, workers=1, progress=False)
    with pytest.raises(UsageError, match="both simulated with seed 0"):
        simgen.merge([a.path, g.path], tmp_path / "ag.h5")
    c = simgen.simulate("two_moons", 100, tmp_path / "c.h5", seed=1, workers=1, progress=False)
    ac = simgen.merge([a.path, c.path], tmp_path / "ac.h5", progress=False)
    with pytest.raises(UsageError, match="c.h5 and .*c.h5 were both simulated with seed 1"):
        simgen.merge([ac.path, c.path], tmp_path / "acc.h5")
    d = simgen.simulate("two_moons", 100, tmp_path / "d.h5", seed=2, workers=1, progress=False)
    acd = simgen.merge([ac.path, d.path], tmp_path / "acd.h5", progress=False)
    assert [run["seed"] for run in json.loads(acd.metadata["sources"])] == [0, 1, 2]
    assert not any((tmp_path / f).exists() for f in ("ab.h5", "ag.h5", "acc.h5"))


def _damaged(tmp_path, name, edit):
    path = tmp_path / f"{name}.h5"
    simgen.simulate("two_moons", 200, path, workers=1, progress=False)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def test_nonfinite_rows_are_counted_and_refused_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from simgen.cli import app

    def poison(f):
        f["x"][3] = np.nan
        f["theta"][7, 1] = np.inf

    path = _damaged(tmp_path, "nan", poison)
    assert simgen.open_store(path).nonfinite_rows() == 2
    with pytest.raises(StoreError, match="2 of 200 rows .* hold NaN or inf"):
        simgen.fit(path, "flow", train={"epochs": 1}, progress=False)
    info = CliRunner().invoke(app, ["info", str(path), "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["nonfinite_rows"] == 2


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f["x"].resize((190, 2)), "theta has 200 rows and x 190"),
        (lambda f: f.attrs.modify("x_shape", [3]), "not (rows, *(3,))"),
    ],
)
def test_mismatched_shapes_are_refused_in_one_line(tmp_path, edit, message):
    path = _damaged(tmp_path, "bad", edit)
    with pytest.raises(StoreError, match=re.escape(message)):
        simgen.open_store(path)
