"""Priors: event shape (d,), samples in the support, log-densities equal to scipy's."""

import numpy as np
import pytest
import torch
from conftest import assert_close
from scipy import stats

from pyro_ima import priors

CASES = [
    ("gaussian", priors.gaussian(3, scale=0.5), lambda z: stats.norm(0, 0.5).logpdf(z)),
    ("laplace", priors.laplace(3, scale=2.0), lambda z: stats.laplace(0, 2.0).logpdf(z)),
    ("logistic", priors.logistic(3), lambda z: stats.logistic().logpdf(z)),
    ("uniform", priors.uniform(3, -1.0, 2.0), lambda z: stats.uniform(-1.0, 3.0).logpdf(z)),
    ("beta", priors.beta(3, a=[2.0, 3.0, 5.0], b=[4.0, 2.0, 1.5]),
     lambda z: stats.beta([2.0, 3.0, 5.0], [4.0, 2.0, 1.5]).logpdf(z)),
    ("beta-box", priors.beta(3, a=2.0, b=7.0, low=-2.0, high=3.0),
     lambda z: stats.beta(2.0, 7.0, loc=-2.0, scale=5.0).logpdf(z)),
]


@pytest.mark.parametrize("name,prior,ref", CASES, ids=[c[0] for c in CASES])
def test_prior_samples_in_support_and_matches_scipy(name, prior, ref):
    assert prior.event_shape == (3,)
    z = prior.sample((500,))
    assert bool(prior.support.check(z).all())
    expected = np.sum(ref(z.double().numpy()), axis=-1)
    assert_close(prior.log_prob(z), expected, atol=1e-4, rtol=1e-5)


def test_bad_prior_arguments():
    with pytest.raises(ValueError, match="high"):
        priors.uniform(2, 1.0, 1.0)
    with pytest.raises(ValueError, match="a: expected"):
        priors.beta(2, a=-1.0)
    with pytest.raises(ValueError, match="dim"):
        priors.gaussian(0)
    assert torch.equal(priors.beta(2, low=-1.0, high=1.0).mean, torch.zeros(2))


def test_dataset_save_load_round_trip_and_refusals(tmp_path):
    from pyro_ima import data, mixings
    ds = data.make_dataset(mixings.SmoothLeakyMLP(2, seed=1), priors.gaussian(2), n=100, seed=3)
    again = data.make_dataset(mixings.SmoothLeakyMLP(2, seed=1), priors.gaussian(2), n=100,
                              seed=3)
    assert torch.equal(ds.train.x, again.train.x) and torch.equal(ds.test.z, again.test.z)
    assert len(ds.train) == 70 and len(ds.val) == 20 and len(ds.test) == 10
    path = tmp_path / "ds.pt"
    data.save_dataset(ds, path)
    back = data.load_dataset(path)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(back, name).x, getattr(ds, name).x)
        assert torch.equal(getattr(back, name).z, getattr(ds, name).z)
    assert back.config["seed"] == 3 and "SmoothLeakyMLP" in back.config["mixing"]
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        data.load_dataset(tmp_path / "bad.pt")
    torch.save({"hello": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a pyro-ima dataset"):
        data.load_dataset(tmp_path / "foreign.pt")
