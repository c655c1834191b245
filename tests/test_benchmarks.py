"""The benchmark scripts run (tiny sizes) and print their ratios."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "benchmarks"


SLOW = pytest.mark.slow  # fresh processes for memory, Dask clusters, many estimates


@pytest.mark.parametrize("script,args,needle", [
    pytest.param("bench_metrics.py", ["--points", "200", "--samples", "20"],
                 "ratio library/baseline", marks=SLOW),
    ("bench_replicas.py", ["--replicas", "3", "--steps", "5", "--repeats", "1"], "speed-up"),
    ("bench_sprites.py", ["--n", "300", "--baseline-n", "100", "--geometry", "square"],
     "max pixel difference 0"),
    ("bench_sprites.py", ["--n", "300", "--baseline-n", "100"], "ratio"),
    ("bench_conv_batching.py", ["--replicas", "2", "--batch", "2", "--steps", "1"],
     "ratio grouped / loop"),
    ("reproduce_results.py", ["reference-moebius-scale"], "squared ratio of medians"),
    pytest.param("reproduce_results.py", ["is-vs-quadrature"], "log p_gamma quadrature",
                 marks=SLOW),
    pytest.param("bench_sweep.py", ["--study", "beta_gamma"], "goal below 5%", marks=SLOW),
    pytest.param("bench_estimators.py", ["--quick"], "approximation gap", marks=SLOW),
    pytest.param("calibrate_reliability.py", ["--quick", "--points", "10"],
                 "inference.reliability", marks=SLOW),
])
def test_benchmark_runs(script, args, needle):
    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert needle in r.stdout
