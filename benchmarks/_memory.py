"""Peak memory of a function run in a fresh process (shared by the benchmark scripts)."""

from __future__ import annotations

import multiprocessing as mp
import resource


def vm_hwm_mb() -> float:
    """This process's peak resident set in MB (VmHWM; ru_maxrss can carry a parent's over exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(fn, args, queue):
    fn(*args)
    queue.put(vm_hwm_mb())


def peak_mb(fn, *args) -> float:
    """Peak RSS (MB) of a fresh spawned process that imports everything and runs ``fn(*args)``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(fn, args, q))
    p.start()
    result = q.get()
    p.join()
    return result
