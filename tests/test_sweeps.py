"""Studies on other executors: a process pool and Dask, with workers and schedulers that die."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pyro_ima.experiments import run_study
from pyro_ima.experiments.executors import Executor

pytest.importorskip("distributed")
if os.environ.get("PYRO_IMA_TEST_DEVICE", "cpu") != "cpu":
    pytest.skip("the executor tests run on the CPU", allow_module_level=True)

VOLATILE = ("value", "setting_seconds")  # float rounding (BLAS threads), wall clock
pytestmark = pytest.mark.filterwarnings(
    # distributed's own shutdown notices, not ours
    "ignore::DeprecationWarning", "ignore::ResourceWarning",
    "ignore:.*unclosed.*:pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The quick elbo_vs_lima study in this process: the rows every executor must give."""
    out = tmp_path_factory.mktemp("ref")
    run_study("elbo_vs_lima", out, quick=True, progress=False)
    return json.loads((out / "results.json").read_text())["rows"]


def _same_rows(rows, ref):
    assert [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows] == \
        [{k: v for k, v in r.items() if k not in VOLATILE} for r in ref]
    for a, b in zip(rows, ref, strict=True):
        assert abs(a["value"] - b["value"]) <= 1e-4 * (1 + abs(b["value"]))


def _kill_one_worker_when_busy(pids_fn, started: threading.Event, killed: list):
    """Wait until a setting runs on a worker, then SIGKILL that worker's process."""
    started.wait(timeout=120)
    time.sleep(2.0)  # well inside the setting (each takes several seconds)
    pid = pids_fn()
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


def test_dask_local_cluster_with_a_worker_killed_gives_the_in_process_rows(tmp_path,
                                                                            reference):
    out = tmp_path / "dask"
    killed: list = []
    with Executor("dask", workers=2) as ex:
        client = ex._client
        started = threading.Event()

        def busy_worker_pid():
            deadline = time.time() + 60
            while time.time() < deadline:
                busy = [w for w, tasks in client.processing().items() if tasks]
                if busy:
                    return client.run(os.getpid, workers=[busy[0]])[busy[0]]
                time.sleep(0.1)
            raise AssertionError("no setting started")

        killer = threading.Thread(target=_kill_one_worker_when_busy,
                                  args=(busy_worker_pid, started, killed))
        killer.start()
        started.set()
        meta = run_study("elbo_vs_lima", out, quick=True, progress=False, executor=ex)
        killer.join()
    assert killed, "no worker was killed"
    rows = json.loads((out / "results.json").read_text())["rows"]
    _same_rows(rows, reference)
    assert meta["claim"]


def test_process_pool_with_a_worker_killed_gives_the_in_process_rows(tmp_path, reference):
    out = tmp_path / "procs"
    killed: list = []
    with Executor("processes", workers=2) as ex:
        started = threading.Event()

        def pool_pid():
            deadline = time.time() + 60
            while time.time() < deadline:
                procs = list(getattr(ex.pool, "_processes", {}) or {})
                if procs:
                    return procs[0]
                time.sleep(0.1)
            raise AssertionError("no worker process")

        restarts = []
        real_restart = ex.restart
        ex.restart = lambda: (restarts.append(1), real_restart())
        killer = threading.Thread(target=_kill_one_worker_when_busy,
                                  args=(pool_pid, started, killed))
        killer.start()
        started.set()
        run_study("elbo_vs_lima", out, quick=True, progress=False, executor=ex)
        killer.join()
    assert killed and restarts == [1]  # the broken pool was started again once
    _same_rows(json.loads((out / "results.json").read_text())["rows"], reference)


@pytest.mark.slow  # a Dask cluster, a subprocess run and a resumed run
def test_a_scheduler_that_goes_away_ends_the_run_in_one_line_and_a_rerun_resumes(tmp_path):
    from distributed import LocalCluster
    out = tmp_path / "sc"
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    cmd = [sys.executable, "-m", "pyro_ima", "experiment", "self_consistency", "--quick",
           "--quiet", "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--executor", "dask", "--scheduler",
                             cluster.scheduler_address], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    settings = out / "settings"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if settings.exists() and list(settings.glob("*.json")):
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    cluster.close()  # the scheduler goes away with two settings left
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.startswith("pyro-ima")]
    assert len(lines) == 1 and "rerun to resume" in lines[0], err
    done = {p.name: p.stat().st_mtime_ns for p in settings.glob("*.json")}
    assert 1 <= len(done) < 3
    r = subprocess.run(cmd, capture_output=True, text=True)  # resumes, in this process
    assert r.returncode == 0, r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in settings.glob("*.json")
            if p.name in done} == done
    assert len(list(settings.glob("*.json"))) == 3


def test_executor_options_are_checked():
    with pytest.raises(ValueError, match="scheduler"):
        Executor("processes", scheduler="tcp://x:1")
    with pytest.raises(ValueError, match="workers"):
        Executor("local", workers=2)
    with pytest.raises(ValueError, match="executor"):
        Executor("ray")


@pytest.mark.parametrize("opts", [[], ["--executor", "processes", "--workers", "3",
                                        "--threads-per-worker", "2"],
                                  ["--executor", "dask", "--scheduler", "tcp://10.0.0.5:8786",
                                   "--threads-per-worker", "1"]])
def test_executor_cli_options_parse_back_to_the_same_executor(opts):
    # the headline file's `command` names the executor with these options
    from pyro_ima.cli import build_parser
    a = build_parser().parse_args(["experiment", "moebius", *opts])
    ex = Executor(a.executor, scheduler=a.scheduler, workers=a.workers,
                  threads_per_worker=a.threads_per_worker)
    assert ex.cli_options() == opts
