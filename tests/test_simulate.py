"""simulate(): determinism across workers and executors, resume, extension, failed rows."""

from __future__ import annotations

import errno
import os
import shutil
import threading

import numpy as np
import pytest

import simgen
import simgen.data.executors
from simgen.data import tasks as simulation_tasks
from simgen.data.executors import pool_pays
from simgen.data.journal import Journal
from simgen.data.tasks import HELD_WINDOWS, run_chunk, tasks_in_order
from simgen.errors import RunError, SimulatorError, StoreError, UsageError


def _same(a, b):
    np.testing.assert_array_equal(a.theta, b.theta)
    np.testing.assert_array_equal(a.x[:], b.x[:])
    np.testing.assert_array_equal(a.failed_theta, b.failed_theta)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted single-thread run of 1,000 rows of slcp in tasks of 128."""
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    return simgen.simulate("slcp", 1000, path, workers=1, chunk_size=128, progress=False)


def test_workers_do_not_change_the_data(reference, tmp_path):
    two = simgen.simulate(
        "slcp", 1000, tmp_path / "w2.h5", workers=2, chunk_size=128, progress=False
    )
    _same(reference, two)


def test_the_pool_is_chosen_only_where_it_finishes_sooner():
    # two_moons' tasks (5.6 ms, 1.7 MB): this process takes results in no faster than one
    # process makes them, so no number of tasks or workers repays the pool
    assert not pool_pays(5.6e-3, 1_700_000, 10**6, 64)
    # a slow simulator: 3 tasks of 0.5 s do not repay the pool's start; 100 do
    assert not pool_pays(0.5, 10_000, 3, 2)
    assert pool_pays(0.5, 10_000, 100, 2)


def test_default_workers_stay_here_for_fast_tasks(reference, tmp_path):
    reports = []
    fast = simgen.simulate(
        "slcp", 1000, tmp_path / "a.h5", chunk_size=128, progress=False, on_report=reports.append
    )
    _same(reference, fast)
    assert reports[-1].workers == 1  # tasks of about 1 ms: this process alone


@pytest.mark.parametrize("start", [0.0, 0.5])
def test_default_workers_take_all_cores_for_slow_tasks(tmp_path, monkeypatch, start):
    """Tasks of 50 ms. With a pool that starts at once, the first task outlasts the start and
    the pool starts meanwhile; with a start of 0.5 s, the first task ends first and
    ``pool_pays`` chooses the pool for the 29 others (0.5 + 15 x 0.05 s < 29 x 0.05 s)."""
    monkeypatch.setattr(simgen.data.executors, "POOL_START_SECONDS", start)
    slow, reports = simgen.get_simulator("sims_for_tests:Slow"), []
    path, alone = tmp_path / "s.h5", tmp_path / "s1.h5"
    simgen.simulate(slow, 600, path, progress=False, on_report=reports.append)
    assert reports[-1].workers == simgen.data.executors.default_workers()
    one = simgen.simulate(slow, 600, alone, workers=1, progress=False, on_report=reports.append)
    assert reports[-1].workers == 1
    _same(simgen.open_store(path), one)


def test_dask_local_cluster_gives_the_same_data(reference, tmp_path):
    distributed = pytest.importorskip("distributed")  # part of the [dev] extra, so always there
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        store = simgen.simulate(
            "slcp",
            1000,
            tmp_path / "dask.h5",
            chunk_size=128,
            scheduler=cluster.scheduler_address,
            progress=False,
        )
    _same(reference, store)


def test_extending_equals_one_run(reference, tmp_path):
    path = tmp_path / "grow.h5"
    for n in (100, 300, 300, 1000):  # 300 twice: nothing to do the second time
        store = simgen.simulate("slcp", n, path, workers=1, chunk_size=128, progress=False)
        assert len(store) == n
    _same(reference, store)
    assert store.metadata["n_requested"] == 1000
    assert not Journal(path).dir.exists()


def test_resume_from_journal_and_damaged_parts(reference, tmp_path):
    """A journal as a stop leaves it (some tasks saved, one damaged, a stray temporary file, a
    half-built HDF5) resumes to the reference."""
    path = tmp_path / "resume.h5"
    sim = simgen.get_simulator("slcp")
    journal = Journal(path)
    journal.open({"simulator": "slcp", "simulator_options": {}, "seed": 0, "chunk_size": 128})
    for index in (0, 2, 5):
        journal.write(index, run_chunk(sim, 0, index, 128))
    (journal.dir / "task-000000002.npy").write_bytes(b"damaged")
    (journal.dir / "task-000000003.npy.tmp").write_bytes(b"half")
    journal.building.write_bytes(b"half an hdf5 file")
    reports = []
    store = simgen.simulate(
        sim, 1000, path, workers=1, chunk_size=128, progress=False, on_report=reports.append
    )
    _same(reference, store)
    assert reports[0].resumed_chunks == 3


def test_a_different_run_is_refused_and_nothing_is_overwritten(reference, tmp_path):
    path = tmp_path / "d.h5"
    simgen.simulate("slcp", 200, path, workers=1, chunk_size=128, progress=False)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"seed=0 \(you asked 1\)"):
        simgen.simulate("slcp", 400, path, seed=1, workers=1, chunk_size=128, progress=False)
    with pytest.raises(StoreError, match="simulator='slcp' \\(you asked 'two_moons'\\)"):
        simgen.simulate("two_moons", 400, path, workers=1, chunk_size=128, progress=False)
    with pytest.raises(StoreError, match="chunk_size=128 \\(you asked 64\\)"):
        simgen.simulate("slcp", 400, path, workers=1, chunk_size=64, progress=False)
    sim = simgen.get_simulator("gaussian_linear", dim=3)
    other = tmp_path / "g.h5"
    simgen.simulate(sim, 10, other, workers=1, progress=False)
    with pytest.raises(StoreError, match="simulator_options"):
        simgen.simulate(
            simgen.get_simulator("gaussian_linear", dim=4), 20, other, workers=1, progress=False
        )
    assert path.read_bytes() == before


def test_unfinished_run_of_another_identity_is_refused(tmp_path):
    path = tmp_path / "d.h5"
    Journal(path).open(
        {"simulator": "slcp", "simulator_options": {}, "seed": 5, "chunk_size": 128}
    )
    with pytest.raises(StoreError, match="unfinished run with seed=5 \\(now 0\\)"):
        simgen.simulate("slcp", 100, path, workers=1, chunk_size=128, progress=False)


def test_failed_rows_are_counted_and_kept_apart(tmp_path):
    sim = simgen.get_simulator("sims_for_tests:Flaky")
    reports = []
    store = simgen.simulate(
        sim, 1000, tmp_path / "f.h5", workers=1, progress=False, on_report=reports.append
    )
    theta_all = np.concatenate([store.theta, store.failed_theta])
    bad = (theta_all[:, 0] > 0.8) | (theta_all[:, 0] < -0.8)
    assert len(theta_all) == 1000
    assert store.n_failed == bad.sum() > 150  # ~20% of a uniform prior on [-1, 1]
    assert ((store.failed_theta[:, 0] > 0.8) | (store.failed_theta[:, 0] < -0.8)).all()
    assert np.abs(store.theta[:, 0]).max() <= 0.8
    assert np.isfinite(store.x[:]).all()
    np.testing.assert_array_equal(store.x[:, :2], store.theta)
    assert reports[0].failed_new == reports[0].failed_total == store.n_failed
    assert store.file["chunks"][:, 1:].sum() == 1000
    two = simgen.simulate(sim, 1000, tmp_path / "f2.h5", workers=2, progress=False)
    _same(store, two)


def test_large_finite_rows_are_kept():
    """The quick finiteness check sums a task's x in float32; near float32's maximum that sum
    overflows to inf, and the rows, all finite, must still be kept."""
    slow = simgen.get_simulator("sims_for_tests:Slow")
    slow.simulate = lambda theta, rng: np.full((len(theta), 2), 3e38)
    result = run_chunk(slow, 0, 0, 20)
    with np.errstate(over="ignore"):
        assert np.isinf(result.x.sum())
    assert result.ok.all()
    np.testing.assert_array_equal(result.x, np.float32(3e38))


def test_contract_violations_stop_the_run(tmp_path):
    with pytest.raises(SimulatorError, match="'bad_shape' returned shape"):
        simgen.simulate(
            "sims_for_tests:BadShape", 10, tmp_path / "a.h5", workers=1, progress=False
        )
    assert not (tmp_path / "a.h5").exists()


def test_a_simulator_that_raises_on_every_row_loses_no_row(tmp_path):
    """The run fails (a bug, not bad parameters), but the file accounts for every row: the
    parameters under failed/theta, each task's error in the attribute failed_errors."""
    path = tmp_path / "b.h5"
    with pytest.raises(SimulatorError, match=r"every row of 100 task\(s\).*ZeroDivisionError"):
        simgen.simulate(
            "sims_for_tests:AlwaysRaises", 200, path, workers=1, chunk_size=2, progress=False
        )
    store = simgen.open_store(path)
    assert len(store) == 0 and store.n_failed == 200
    errors = store.metadata["failed_errors"]
    assert [e[0] for e in errors] == list(range(100)) and all(e[1] == 2 for e in errors)
    assert errors[0][2].startswith("ZeroDivisionError")
    again = []  # the rows are done: a rerun has nothing to simulate
    simgen.simulate("sims_for_tests:AlwaysRaises", 200, path, workers=1, chunk_size=2,
                    progress=False, on_report=again.append)  # fmt: skip
    assert again[0].rows_new == 0
    # the simulator mended, a retry simulates the failed tasks again: the file one run gives
    mended, retried = simgen.get_simulator("sims_for_tests:Mended"), []
    simgen.simulate(mended, None, path, workers=1, chunk_size=2, progress=False,
                    retry_failed=True, on_report=retried.append)  # fmt: skip
    assert (retried[0].retried_tasks, retried[0].rows_new, retried[0].failed_new) == (100, 200, 0)
    fresh = simgen.simulate(mended, 200, tmp_path / "fresh.h5", workers=1, chunk_size=2,
                            progress=False)  # fmt: skip
    _same(simgen.open_store(path), fresh)
    assert simgen.open_store(path).metadata["failed_errors"] == []


def test_retry_failed_rebuilds_an_extended_file_in_task_order(tmp_path):
    """Failed rows in a file grown by two runs (task 2 split over both): a retry with the
    mended simulator gives the rows of one run of it; a retry with nothing failed does
    nothing; tasks that still fail stay failed and counted."""
    path, flaky = tmp_path / "f.h5", simgen.get_simulator("sims_for_tests:Flaky")
    simgen.simulate(flaky, 130, path, workers=1, progress=False)
    store = simgen.simulate(flaky, 200, path, workers=1, progress=False)
    failed_before = store.n_failed
    assert store.file["chunks"][:, 0].tolist() == [0, 1, 2, 2, 3] and failed_before > 0
    store.close()
    again, reports = simgen.get_simulator("sims_for_tests:Flaky"), []
    simgen.simulate(again, 200, path, workers=1, progress=False, retry_failed=True,
                    on_report=reports.append)  # fmt: skip
    assert reports[0].failed_new == failed_before == simgen.open_store(path).n_failed
    mended = simgen.get_simulator("sims_for_tests:MendedFlaky")
    simgen.simulate(mended, None, path, workers=1, progress=False, retry_failed=True,
                    on_report=reports.append)  # fmt: skip
    assert reports[1].retried_tasks == 4 and reports[1].failed_new == 0
    fresh = simgen.simulate(mended, 200, tmp_path / "fresh.h5", workers=1, progress=False)
    _same(simgen.open_store(path), fresh)
    simgen.simulate(mended, 200, path, workers=1, progress=False, retry_failed=True,
                    on_report=reports.append)  # fmt: skip
    assert reports[2].rows_new == reports[2].retried_tasks == 0


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError, match="positive"):
        simgen.simulate("slcp", 0, tmp_path / "a.h5")
    with pytest.raises(UsageError, match="does not exist"):
        simgen.simulate("slcp", 10, tmp_path / "no" / "a.h5")
    with pytest.raises(UsageError, match="is a folder"):
        simgen.simulate("slcp", 10, tmp_path)


def test_journal_saves_only_tasks_worth_saving():
    import dataclasses

    result = run_chunk(simgen.get_simulator("two_moons"), 0, 0, 1000)
    # 1,000 rows of 17 bytes cost 1.1 ms to save: tasks under 3.3 ms are redone, dearer ones
    # saved (the simulation's own time is set here, not measured: it depends on the load)
    assert not Journal.worth_saving(dataclasses.replace(result, seconds=1e-4))
    assert not Journal.worth_saving(dataclasses.replace(result, seconds=3e-3))
    assert Journal.worth_saving(dataclasses.replace(result, seconds=4e-3))
    slow = run_chunk(simgen.get_simulator("sims_for_tests:Slow", delay=0.05), 0, 0, 10)
    assert Journal.worth_saving(slow)


def test_a_second_run_on_the_same_file_is_refused(tmp_path):
    """While one run holds a data file's journal, another run on that file stops with a clear
    error and touches nothing; once the lock is released, the run goes through."""
    path = tmp_path / "d.h5"
    with Journal(path).locked():
        with pytest.raises(StoreError, match="another simgen run is writing d.h5"):
            simgen.simulate("two_moons", 100, path, workers=1, progress=False)
        assert not path.exists()
    store = simgen.simulate("two_moons", 100, path, workers=1, progress=False)
    assert len(store) == 100 and not Journal(path).dir.exists()


def test_a_simulator_that_cannot_be_pickled_is_one_clear_error(tmp_path):
    """Worker processes need the simulator pickled: one holding a lock is refused with what to
    do, and the failed run leaves no journal folder (it saved nothing) that would refuse a run
    with other arguments; in this process it runs."""
    sim = simgen.get_simulator("sims_for_tests:Slow", delay=0.0)
    sim.lock = threading.Lock()
    path = tmp_path / "d.h5"
    with pytest.raises(UsageError, match="cannot be sent to worker processes .*workers=1"):
        simgen.simulate(sim, 100, path, workers=2, progress=False)
    assert not path.exists() and not Journal(path).dir.exists()
    assert len(simgen.simulate(sim, 100, path, seed=1, workers=1, progress=False)) == 100


def test_a_slow_task_holds_a_bounded_number_of_later_results(tmp_path):
    """Task 0 takes 3 s, the 99 others none: while it runs, the other worker finishes later
    tasks only until HELD_WINDOWS windows of them (in flight included) wait in memory, not
    all 99; then the run goes on in order."""
    sim = simgen.get_simulator("sims_for_tests:Straggler", delay=3.0)
    given = np.full((2000, 2), 0.1, np.float32)
    given[:20] = 0.95
    journal = Journal(tmp_path / "d.h5")
    journal.dir.mkdir()
    finished: list[int] = []
    tasks = tasks_in_order(
        sim, 0, 20, range(100), journal, 2, None, on_done=finished.append, given=given
    )
    index, _ = next(tasks)
    window = 2 * 2  # tasks in flight on two workers
    assert index == 0 and len(finished) <= HELD_WINDOWS * window
    assert [i for i, _ in tasks] == list(range(1, 100))


def test_one_worker_draws_the_next_tasks_parameters_while_a_task_simulates(tmp_path, monkeypatch):
    """In this process, task ``i + 1``'s prior draw runs in a thread while task ``i``
    simulates: each simulation waits (10 s at most) for the next task's draw, which never
    comes when draws are made only as tasks start; each task gets its own draw."""
    draws: list[tuple[int, str]] = []
    drawn = threading.Condition()
    draw_prior = simulation_tasks.draw_prior

    def recorded(sim, seed, index, size):
        theta = draw_prior(sim, seed, index, size)
        with drawn:
            draws.append((index, threading.current_thread().name))
            drawn.notify_all()
        return theta

    monkeypatch.setattr(simulation_tasks, "draw_prior", recorded)
    tasks, ahead = 5, []

    class WaitsForTheNextDraw(type(simgen.get_simulator("sims_for_tests:Slow"))):
        def simulate(self, theta, rng):
            with drawn:
                wanted = min(len(ahead) + 2, tasks)
                ahead.append(drawn.wait_for(lambda: len(draws) >= wanted, timeout=10))
            return super().simulate(theta, rng)

    sim = WaitsForTheNextDraw(delay=0.0)
    store = simgen.simulate(sim, 20 * tasks, tmp_path / "d.h5", workers=1, progress=False)
    assert ahead == [True] * tasks
    assert [i for i, _ in draws] == list(range(tasks))
    assert all(name.startswith("simgen-prior") for _, name in draws)
    expected = np.concatenate([draw_prior(sim, 0, i, 20) for i in range(tasks)])
    np.testing.assert_array_equal(store.theta, expected)


def test_a_worker_process_that_dies_stops_the_run_in_one_line(tmp_path):
    """A simulator that ends its worker process (a segfault, an exit, memory) stops the run
    with a RunError that says so and how to see the error, and leaves nothing behind."""
    sim = simgen.get_simulator("sims_for_tests:Exits")
    path = tmp_path / "d.h5"
    with pytest.raises(RunError, match="a worker process died .*workers=1 shows here"):
        simgen.simulate(sim, 100, path, workers=2, progress=False)
    assert not path.exists() and not Journal(path).dir.exists()


def test_a_file_system_without_locks_warns_and_runs(tmp_path, monkeypatch):
    """Where flock fails for want of support (NFS without its lock daemon: ENOLCK), the run
    warns that it cannot keep a second run out, and writes the file all the same."""
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / "d.h5"
    with pytest.warns(UserWarning, match="cannot be locked .*one run at a time writes d.h5"):
        store = simgen.simulate("two_moons", 100, path, workers=1, progress=False)
    assert len(store) == 100 and not Journal(path).dir.exists()


def test_too_little_free_space_is_refused_before_simulating(tmp_path, monkeypatch):
    """A run whose file needs more than its disk's free space stops at once, with both sizes,
    and writes nothing. Extending counts the old file, copied while the new one is built:
    one byte fewer than old file + 16 bytes per new two_moons row is refused, that much is
    not."""
    path = tmp_path / "d.h5"
    simgen.simulate("two_moons", 1000, path, workers=1, progress=False)
    before = path.read_bytes()
    need = len(before) + 16 * 99_000
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=need - 1))
    with pytest.raises(UsageError, match=r"needs about 3\.2 MB but its disk has 3\.2 MB free"):
        simgen.simulate("two_moons", 100_000, path, workers=1, progress=False)
    assert path.read_bytes() == before and not Journal(path).dir.exists()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=need))
    assert len(simgen.simulate("two_moons", 100_000, path, workers=1, progress=False)) == 100_000


def test_given_parameters_are_simulated_with_the_runs_streams(reference, tmp_path):
    # the same seed and tasks: the simulator's random streams do not depend on where the
    # parameters came from, so the prior's own draws, given back, give the same x
    theta = reference.theta
    given = simgen.simulate(
        "slcp", len(theta), tmp_path / "g.h5", theta=theta, workers=2, chunk_size=128,
        progress=False,
    )  # fmt: skip
    _same(reference, given)
    assert given.metadata["prior"] == reference.metadata["prior"]
    again = simgen.simulate(
        "slcp", len(theta), tmp_path / "g.h5", theta=theta, workers=1, chunk_size=128,
        progress=False,
    )  # fmt: skip
    _same(reference, again)
    before = (tmp_path / "g.h5").read_bytes()
    with pytest.raises(StoreError, match=r"theta_sha256=given parameters \w{12}\.\.\. \(you"):
        simgen.simulate(
            "slcp", len(theta), tmp_path / "g.h5", theta=theta[::-1], chunk_size=128,
            progress=False,
        )  # fmt: skip
    # nor extended with prior draws
    with pytest.raises(StoreError, match=r"\(you asked prior draws\)"):
        simgen.simulate("slcp", 2000, tmp_path / "g.h5", chunk_size=128, progress=False)
    assert (tmp_path / "g.h5").read_bytes() == before


def test_bad_given_parameters(tmp_path):
    path = tmp_path / "g.h5"
    theta = np.zeros((10, 5), np.float32)
    with pytest.raises(UsageError, match=r"shape \(10, 4\); simulator 'slcp' needs \(n, 5\)"):
        simgen.simulate("slcp", 10, path, theta=theta[:, :4])
    with pytest.raises(UsageError, match="10 rows but n = 20"):
        simgen.simulate("slcp", 20, path, theta=theta)
    theta[3, 1] = np.nan
    with pytest.raises(UsageError, match="row 3 is not finite"):
        simgen.simulate("slcp", 10, path, theta=theta)
    theta[3, 1], theta[7, 0] = 0.0, 5.0  # slcp's prior is U(-3, 3)
    with pytest.raises(UsageError, match=r"row 7 \(\[5.0, 0.0, 0.0, 0.0, 0.0\]\) lies outside"):
        simgen.simulate("slcp", 10, path, theta=theta)
    assert not path.exists()
