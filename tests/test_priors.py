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


def test_learnable_prior_densities_match_scipy_and_keep_their_constraints():
    # the learned Beta's density is scipy's at the learned (a, b), per replica; a box-Beta's
    # through the affine map; concentrations and scales stay positive whatever the raw values
    learned = priors.LearnablePrior(priors.beta(3, a=[2.0, 3.0, 4.0], b=5.0), replicas=2)
    with torch.no_grad():
        learned.raw_concentration1[1].fill_(-3.0)  # replica 1: raw -3
    z = torch.tensor([[0.2, 0.5, 0.9]])
    lp = learned().log_prob(z).detach()  # (R, 1)
    a, b = learned.values()["concentration1"], learned.values()["concentration0"]
    assert a[0].tolist() == pytest.approx([2.0, 3.0, 4.0], rel=1e-5)
    assert float(a[1, 0]) == pytest.approx(np.exp(-3.0), rel=1e-5)  # the positive bijection
    for r in range(2):
        ref = stats.beta(a[r].numpy(), b[r].numpy()).logpdf(z[0].numpy()).sum()
        assert float(lp[r, 0]) == pytest.approx(ref, rel=1e-5)
    box = priors.LearnablePrior(priors.beta(2, a=2.0, b=3.0, low=-1.0, high=3.0), replicas=1)
    u = torch.tensor([0.0, 2.0])
    ref = stats.beta(2.0, 3.0, loc=-1.0, scale=4.0).logpdf(u.numpy()).sum()
    assert float(box().log_prob(u).detach()) == pytest.approx(ref, rel=1e-5)
    normal = priors.LearnablePrior(priors.gaussian(2, scale=0.5), replicas=3)
    assert normal().batch_shape == (3, 1) and normal().event_shape == (2,)
    assert_close(normal.values()["scale"], torch.full((3, 2), 0.5), atol=1e-6)


def test_a_floor_keeps_learned_concentrations_above_it():
    # floor=2 (the official code's (a, b) = |t| + 2): the bijection is 2 + exp(raw), so no
    # raw value, however far training pushes it, takes a or b below 2; the start is kept
    floored = priors.LearnablePrior(priors.beta(3, a=[2.5, 3.0, 14.0], b=5.0), replicas=2,
                                    floor=2)
    values = floored.values()
    assert_close(values["concentration1"], torch.tensor([[2.5, 3.0, 14.0]] * 2), rtol=1e-6,
                 atol=0)
    with torch.no_grad():
        floored.raw_concentration1.fill_(-30.0)
        floored.raw_concentration0[1].fill_(-3.0)
    values = floored.values()
    assert (values["concentration1"] >= 2).all()  # 2 + e^-30 rounds to 2 in float32
    assert_close(values["concentration1"], torch.full((2, 3), 2.0), atol=1e-6, rtol=0)
    assert float(values["concentration0"][1, 0]) == pytest.approx(2 + np.exp(-3.0), rel=1e-6)
    # trained on points near 0 and 1, which favour small a and b: with the floor they settle
    # just above 2, without it at the maximum likelihood 0.24
    z = torch.tensor([[0.01], [0.99]])
    ends = []
    for floor in (2, None):
        learned = priors.LearnablePrior(priors.beta(1, a=2.2, b=2.2), replicas=1, floor=floor)
        opt = torch.optim.SGD(learned.parameters(), lr=0.3)
        for _ in range(50):
            opt.zero_grad()
            (-learned().log_prob(z).sum()).backward()
            opt.step()
        ends.append([float(v) for v in learned.values().values()])
    assert all(2 <= v < 2.05 for v in ends[0]) and all(v < 0.3 for v in ends[1])
    # a Normal's loc is unconstrained: only its scale gets the floor
    normal = priors.LearnablePrior(priors.gaussian(2, scale=3.0), replicas=1, floor=2)
    assert normal._constraints["loc"] is torch.distributions.constraints.real
    assert normal._constraints["scale"].lower_bound == 2
    with pytest.raises(ValueError, match="floor: the prior's concentration1 must start above "
                                         "the floor 2, got a minimum of 1.5"):
        priors.LearnablePrior(priors.beta(2, a=[1.5, 3.0], b=5.0), replicas=1, floor=2)


def test_learnable_prior_refuses_what_it_cannot_learn():
    with pytest.raises(ValueError, match="prior: cannot learn a Uniform prior"):
        priors.LearnablePrior(priors.uniform(2), replicas=1)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="prior: learn_prior needs a prior of independent"):
        priors.LearnablePrior(mvn, replicas=1)


def test_a_learned_prior_pickles_and_gives_each_replica_as_a_plain_prior():
    # executors and torch.save pickle models; make_dataset and exact_log_px on (N, D) data
    # take one replica's prior (batch shape ()), detached
    import pickle

    from pyro_ima import data, mixings, models
    vae = models.GaussianVAE(models.MLP(2, 2, (4,), replicas=2, seed=[0, 1]),
                             priors.beta(2, a=3.0, b=2.0, low=-1.0, high=2.0), 1.0,
                             replicas=2, learn_prior=True)
    with torch.no_grad():
        vae.learned_prior.raw_concentration0[1].fill_(np.log(5.0))
    back = pickle.loads(pickle.dumps(vae))
    assert_close(back.learned_prior.values()["concentration0"],
                 torch.tensor([[2.0, 2.0], [5.0, 5.0]]), atol=1e-5)
    one = back.replica_prior(1)
    assert one.batch_shape == () and one.event_shape == (2,) and isinstance(one, priors.BoxBeta)
    u = torch.tensor([0.5, 1.0])
    ref = stats.beta(3.0, 5.0, loc=-1.0, scale=3.0).logpdf(u.numpy()).sum()
    assert float(one.log_prob(u)) == pytest.approx(ref, rel=1e-5)
    assert not one.base_dist.base_dist.concentration1.requires_grad
    ds = data.make_dataset(mixings.Linear(torch.eye(2)), one, n=30)
    assert ds.train.x.shape == (21, 2)
    with pytest.raises(ValueError, match=r"prior: expected a distribution of batch shape \(\)"):
        data.make_dataset(mixings.Linear(torch.eye(2)), vae.prior, n=30)
    with pytest.raises(AttributeError, match="prior: set at construction"):
        vae.prior = priors.beta(2)


def _floored_pair(prior, floor=2.0, learn=True):
    from pyro_ima import models
    vae = models.GaussianVAE(models.MLP(2, 2, (16,), replicas=2, seed=[0, 1]), prior, 100.0,
                             replicas=2, learn_prior=learn, prior_floor=floor if learn else None)
    guide = models.DiagonalGuide(vae, models.MLP(2, 4, (16,), replicas=2, seed=[5, 6]))
    return vae, guide


def test_a_floored_prior_trains_narrowed_pickles_and_saves_its_floor():
    import pickle

    from pyro_ima import data, inference, mixings, models
    ds = data.make_dataset(mixings.Moebius(2, seed=1), priors.uniform(2), n=300, seed=0)
    vae, guide = _floored_pair(priors.beta(2, a=2.5, b=3.0))
    assert models.subset.why_not(vae, guide) is None  # fit trains replica 1 alone
    start = vae.learned_prior.values()
    inference.fit(vae, guide, ds.train, epochs=2, batch_size=32, lr=0.3, seed=[0, 1],
                  train_mask=[False, True])
    after = vae.learned_prior.values()
    for k in after:
        assert torch.equal(after[k][0], start[k][0])  # outside train_mask: untouched
        assert float((after[k][1] - start[k][1]).abs().max()) > 1e-3
        assert (after[k] >= 2).all()
    again = pickle.loads(pickle.dumps(vae))
    assert again.learned_prior.floor == 2.0
    assert all(torch.equal(again.learned_prior.values()[k], after[k]) for k in after)
    # the floor goes with the raw parameters in the state_dict, and must match on loading
    same, _ = _floored_pair(priors.beta(2, a=2.5, b=3.0))
    same.load_state_dict(vae.state_dict())
    assert all(torch.equal(same.learned_prior.values()[k], after[k]) for k in after)
    unfloored, _ = _floored_pair(priors.beta(2, a=2.5, b=3.0), floor=None)
    with pytest.raises(ValueError, match="prior_floor: the state was saved with floor 2.0, "
                                         "this prior has None"):
        unfloored.load_state_dict(vae.state_dict())


def test_a_learned_prior_state_saved_before_the_floor_existed_loads_as_unfloored():
    # states written before the floor was saved with the parameters have no extra state
    vae, _ = _floored_pair(priors.beta(2, a=2.5, b=3.0), floor=None)
    with torch.no_grad():
        vae.learned_prior.raw_concentration1.add_(0.5)
    old = {k: v for k, v in vae.state_dict().items() if not k.endswith("_extra_state")}
    assert len(old) == len(vae.state_dict()) - 1
    fresh, _ = _floored_pair(priors.beta(2, a=2.5, b=3.0), floor=None)
    fresh.load_state_dict(old)  # strict: no missing key
    assert torch.equal(fresh.learned_prior.raw_concentration1,
                       vae.learned_prior.raw_concentration1)
    floored, _ = _floored_pair(priors.beta(2, a=2.5, b=3.0))
    for strict in (True, False):  # never silently, whatever strict says
        with pytest.raises(ValueError, match="saved without a floor, this prior has 2.0"):
            floored.load_state_dict(old, strict=strict)


def test_a_box_beta_prior_trains_fixed_and_learned():
    # pyro.sample expands the prior to the plates: BoxBeta.expand keeps its box and density
    from pyro_ima import data, inference, mixings
    box = priors.beta(2, a=2.5, b=3.0, low=-1.0, high=3.0)
    wide = box.expand((3, 5))
    assert isinstance(wide, priors.BoxBeta) and wide.batch_shape == (3, 5)
    u = torch.tensor([[0.5, 2.0]])
    assert_close(wide.log_prob(u), box.log_prob(u).expand(3, 5))
    ds = data.make_dataset(mixings.Moebius(2, seed=1), box, n=300, seed=0)
    for learn in (False, True):  # without BoxBeta.expand, fit raised NotImplementedError
        vae, guide = _floored_pair(box, learn=learn)
        res = inference.fit(vae, guide, ds.train, epochs=1, batch_size=32, lr=0.3,
                            seed=[0, 1])
        assert not res.failed.any()
        if learn:
            moved = vae.learned_prior.values()["concentration1"]
            assert float((moved - 2.5).abs().max()) > 1e-3 and (moved >= 2).all()
