"""The benchmark scripts run (tiny sizes) and print their ratios."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "benchmarks"


@pytest.mark.parametrize("script,args,needle", [
    ("bench_metrics.py", ["--points", "200", "--samples", "20"], "ratio library/baseline"),
    ("bench_replicas.py", ["--replicas", "3", "--steps", "5", "--repeats", "1"], "speed-up"),
    ("bench_sprites.py", ["--n", "300", "--baseline-n", "100"], "max pixel difference 0"),
])
def test_benchmark_runs(script, args, needle):
    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert needle in r.stdout
