"""Where a study's settings run: in this process, a pool of processes, or a Dask cluster.

A study is a list of independent settings, each computed and written to its own atomic file by
whoever runs it (:func:`~pyro_ima.experiments.common.execute_setting`). Any
``concurrent.futures``-style executor can run them (``submit(fn, task) -> Future``);
:class:`Executor` builds the three the command line offers and knows how to recover from a lost
worker:

- ``local``: one setting after another in this process (the default);
- ``processes``: a ``concurrent.futures.ProcessPoolExecutor`` (spawned workers); a worker that
  dies breaks the pool, which is started again and given the unfinished settings;
- ``dask``: a ``distributed.Client`` on an existing scheduler (``scheduler="tcp://host:8786"``)
  or on a ``LocalCluster`` of worker processes; Dask retries the setting of a worker that dies
  on another worker, and a scheduler that goes away ends the run (a rerun resumes).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os

from .._utils import check_int

__all__ = ["Executor", "EXECUTORS", "ExecutorLost"]

EXECUTORS = ("local", "processes", "dask")


class ExecutorLost(ConnectionError):
    """The executor cannot go on (its scheduler went away, or its pool kept breaking); the
    settings finished so far are on disk and a rerun resumes after them."""


class Executor:
    """An executor of study settings, used as a context manager.

    Arguments:
        kind: ``"local"``, ``"processes"`` or ``"dask"``.
        scheduler: a Dask scheduler address (``dask`` only; without it a ``LocalCluster`` of
            processes is started).
        workers: worker processes (``processes`` and a local Dask cluster; default 2).
        threads_per_worker: PyTorch threads each setting uses on a worker (default 1).
    """

    def __init__(self, kind: str = "local", *, scheduler: str | None = None,
                 workers: int | None = None, threads_per_worker: int | None = None):
        if kind not in EXECUTORS:
            raise ValueError(f"executor: expected one of {list(EXECUTORS)}, got {kind!r}")
        if scheduler is not None and kind != "dask":
            raise ValueError("scheduler: a scheduler address goes with --executor dask")
        if workers is not None:
            check_int("workers", workers, maximum=4096)
        if threads_per_worker is not None:
            check_int("threads_per_worker", threads_per_worker, maximum=1024)
        if kind == "local" and (workers is not None or threads_per_worker is not None):
            raise ValueError("workers: --workers and --threads-per-worker go with "
                             "--executor processes or dask")
        self.kind, self.scheduler = kind, scheduler
        self.workers = workers or 2
        self.threads = threads_per_worker if kind != "local" else None
        if kind != "local" and self.threads is None:
            self.threads = 1
        self.pool = None
        self._client = self._cluster = None

    @property
    def name(self) -> str:
        """A short description for progress lines."""
        if self.kind == "local":
            return "local"
        where = self.scheduler or f"{self.workers} local workers"
        return f"{self.kind}, {where}"

    def cli_options(self) -> list[str]:
        """The ``pyro-ima experiment`` options that make this executor ([] for ``local``)."""
        if self.kind == "local":
            return []
        where = (["--scheduler", self.scheduler] if self.scheduler is not None
                 else ["--workers", str(self.workers)])
        return ["--executor", self.kind, *where, "--threads-per-worker", str(self.threads)]

    def __enter__(self) -> Executor:
        self._open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        if self.kind == "processes":
            self.pool = cf.ProcessPoolExecutor(max_workers=self.workers,
                                               mp_context=multiprocessing.get_context("spawn"))
        elif self.kind == "dask":
            try:
                from distributed import Client, LocalCluster
            except ImportError:
                raise ValueError("executor: dask needs the optional extra: pip install "
                                 "'pyro-ima[dask]'") from None
            try:
                if self.scheduler is None:
                    self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                                 processes=True, dashboard_address=None)
                    self._client = Client(self._cluster)
                else:
                    self._client = Client(self.scheduler, timeout="10s")
            except (OSError, TimeoutError) as e:
                raise ValueError(f"scheduler: cannot reach a Dask scheduler at "
                                 f"{self.scheduler!r} ({e})") from None
            self.pool = self._client.get_executor(pure=False)

    def restart(self) -> None:
        """Start a broken process pool again (a worker died)."""
        self.close()
        self._open()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True) if self.kind == "processes" \
                else self.pool.shutdown(wait=False)
        for obj in (self._client, self._cluster):
            if obj is not None:
                obj.close()
        self.pool = self._client = self._cluster = None

    def submit(self, fn, *args) -> cf.Future:
        return self.pool.submit(fn, *args)


def lost_worker(error: BaseException) -> bool:
    """Whether ``error`` says a worker process died (its setting can be run again)."""
    from concurrent.futures.process import BrokenProcessPool
    return isinstance(error, BrokenProcessPool)


def lost_scheduler(error: BaseException) -> bool:
    """Whether ``error`` says the Dask scheduler or the connection to it is gone."""
    names = {"CommClosedError", "CancelledError", "FutureCancelledError", "TimeoutError",
             "StreamClosedError"}
    return type(error).__name__ in names or isinstance(error, (cf.CancelledError, OSError))


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
