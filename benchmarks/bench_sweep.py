"""Benchmark: one quick study in this process, on a process pool and on a Dask LocalCluster.

    python benchmarks/bench_sweep.py [--study self_consistency] [--workers 2]

Each executor runs the same quick-size study from scratch (wall clock includes starting the
workers, their imports, and the summary and figure); the rows carry every setting's compute
time, so the executor's overhead per setting is ``(wall x workers - sum of setting times) /
settings``. Printed as ratios to the in-process run, measured in this one process.

Then a projection of the full suite (studies 1-5 at the paper's seed counts) on N workers
from measured full-size times (README: the settings' compute seconds of studies 1-4, one or
two settings of 25-120 replicas each; Sprites: the reference sweep
(``sprites_study.REFERENCE_SWEEP``), 4 gamma2 x 10 seeds of ~6.4 h each, from ~0.4 s per
batch-512 step on 2 cores and 700 epochs of 42,000 images):
a study with fewer settings than workers is split into smaller replica batches, whose cost
follows the replica-batch scaling measured by ``bench_replicas.py`` (4.8 ms + 0.19 ms per
replica per step; Sprites' conv nets: linear in the replicas), plus this benchmark's overhead
per setting; settings are placed longest
first on the least loaded worker. Every worker is assumed to be a 2-core machine like this one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from pyro_ima.experiments import run_study
from pyro_ima.experiments.executors import Executor

# (study, settings at full size as (replicas, seconds)), measured here (README). Sprites: the
# reference sweep, 4 gamma2 x 10 seeds in settings of 10 replicas, ~6.4 h per seed on 2 cores
# (700 x 82 steps of ~0.4 s; a CPU batch of conv nets is no faster than its seeds one after
# another).
FULL = {"self_consistency": [(100, 2189.0)], "elbo_vs_lima": [(25, 163.5), (25, 163.5)],
        "moebius": [(60, 2071.0), (60, 2742.0)], "linear_contrast": [(100, 2991.0)],
        "sprites": [(10, 10 * 700 * 82 * 0.4)] * 4}
LINEAR_COST = {"sprites"}  # studies whose batch costs its replicas' sum (conv nets on a CPU)
STEP_A, STEP_B = 4.8e-3, 0.19e-3  # seconds per step: a + b R (bench_replicas.py, 2 cores)


def run_once(study: str, kind: str, workers: int) -> dict:
    out = Path(tempfile.mkdtemp())
    try:
        t = time.perf_counter()
        if kind == "local":
            meta = run_study(study, out, quick=True, progress=False)
        else:
            with Executor(kind, workers=workers) as ex:
                meta = run_study(study, out, quick=True, progress=False, executor=ex)
        wall = time.perf_counter() - t
        seconds = [json.loads(f.read_text())["seconds"]
                   for f in (out / "settings").glob("*.json")]
        return {"wall": wall, "compute": sum(seconds), "settings": len(seconds),
                "claim": meta["claim"]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def split_time(replicas: int, seconds: float, k: int, linear: bool = False) -> list[float]:
    """A setting of ``replicas`` split into ``k`` batches: each batch's time (``linear``: a
    batch costs its share of the replicas)."""
    size = -(-replicas // k)
    ratio = size / replicas if linear else \
        (STEP_A + STEP_B * size) / (STEP_A + STEP_B * replicas)
    return [seconds * ratio] * k


def project(workers: int, overhead: float) -> float:
    """Projected wall clock of studies 1-5 at full size on ``workers`` workers."""
    jobs = []
    for study, settings in FULL.items():
        k = max(1, workers // len(settings))
        for replicas, seconds in settings:
            jobs += split_time(replicas, seconds, min(k, replicas), study in LINEAR_COST)
    load = [0.0] * workers
    for t in sorted(jobs, reverse=True):
        i = load.index(min(load))
        load[i] += t + overhead
    return max(load)


def main(args):
    W = args.workers
    print(f"quick {args.study}, {W} workers (1 PyTorch thread each) vs this process (its "
          f"default threads)")
    res = {kind: run_once(args.study, kind, W) for kind in ("local", "processes", "dask")}
    base = res["local"]
    for kind, r in res.items():
        workers = 1 if kind == "local" else W
        overhead = (r["wall"] * workers - r["compute"]) / r["settings"]
        r["overhead"] = overhead
        print(f"  {kind:9s} wall {r['wall']:6.1f}s (ratio {r['wall'] / base['wall']:.2f})  "
              f"settings {r['settings']}, compute {r['compute']:6.1f}s, overhead per setting "
              f"{overhead:5.1f}s")
    full_setting = min(s for settings in FULL.values() for _, s in settings)
    worst = max(res["processes"]["overhead"], res["dask"]["overhead"])
    print(f"overhead per setting vs the shortest full-size setting ({full_setting:.0f}s): "
          f"processes {res['processes']['overhead'] / full_setting:.1%}, dask "
          f"{res['dask']['overhead'] / full_setting:.1%} (goal below 5%)")
    print("projected wall clock of studies 1-5 at full size (2-core workers):")
    for n in (1, 2, 4, 8, 16, 32):
        t = project(n, max(worst, 0.0))
        print(f"  {n:3d} workers: {t / 3600:6.2f} h")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--study", default="self_consistency")
    p.add_argument("--workers", type=int, default=2)
    main(p.parse_args())
