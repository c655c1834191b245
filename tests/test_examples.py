"""Every example runs with tiny settings."""

import argparse
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name,args", [
    ("train_moebius", dict(dim=2, n=300, gamma2=100.0, guide="full", epochs=2, seed=0,
                           quiet=True)),
    ("swap_guides", dict(dim=2, n=200, gamma2=10.0, epochs=2, seed=0)),
    ("estimate_gap_own_model", dict(n=300, z_dim=2, hidden=16, epochs=1, test_points=20,
                                    particles=5, samples=30, renyi_batches=[20, 5],
                                    renyi_repeats=2, seed=0)),
])
def test_example_runs(name, args, capsys):
    _load(name).main(argparse.Namespace(**args))
    out = capsys.readouterr().out
    assert ("ELBO" in out) or ("gap" in out)
