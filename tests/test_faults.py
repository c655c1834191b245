"""Numerical faults during training: detected at the step, rolled back, isolated per replica."""

import math

import torch
from conftest import assert_close
from torch import nn

from pyro_ima import data, inference, mixings, models, priors


class FaultyDecoder(nn.Module):
    """An MLP decoder whose replica ``bad`` outputs NaN on training calls ``at`` (or from
    ``at`` on, when ``forever``)."""

    def __init__(self, net, bad, at, forever=False):
        super().__init__()
        self.net, self.bad, self.at, self.forever = net, bad, at, forever
        self.replicas, self.calls = net.replicas, 0

    def forward(self, z):
        out = self.net(z)
        if torch.is_grad_enabled():  # count training steps only
            self.calls += 1
            if self.calls == self.at or (self.forever and self.calls >= self.at):
                mask = torch.zeros(out.shape[-3], 1, 1, dtype=torch.bool)
                mask[self.bad] = True
                out = torch.where(mask, torch.full_like(out, float("nan")), out)
        return out


def _setup(decoder_wrap=None, gamma2=(10.0, 100.0, 30.0)):
    ds = data.make_dataset(mixings.Moebius(2, seed=1), priors.uniform(2), n=400, seed=0)
    R = len(gamma2)
    net = models.MLP(2, 2, (16,), replicas=R, seed=[0, 1, 2][:R])
    dec = decoder_wrap(net) if decoder_wrap else net
    vae = models.GaussianVAE(dec, priors.uniform(2), torch.tensor(gamma2), replicas=R)
    guide = models.DiagonalGuide(vae, models.MLP(2, 4, (16,), replicas=R,
                                                 seed=[10, 11, 12][:R]))
    return ds, vae, guide


def _params(vae, guide):
    return {k: p.detach().clone() for k, p in inference.trainable_parameters(vae, guide).items()}


def test_one_nan_step_is_rolled_back_and_spares_the_other_replicas():
    ds, vae, guide = _setup()
    ref = inference.fit(vae, guide, ds.train, ds.val, epochs=3, batch_size=32, seed=[0, 1, 2])
    clean = _params(vae, guide)
    ds, vae, guide = _setup(lambda net: FaultyDecoder(net, bad=1, at=20))
    res = inference.fit(vae, guide, ds.train, ds.val, epochs=3, batch_size=32, seed=[0, 1, 2])
    # 8 steps per epoch: the 20th training call is epoch 2, step 3
    assert res.faults == [{"epoch": 2, "step": 3, "replica": 1, "action": "rollback"}]
    assert res.failed.tolist() == [False, False, False]
    faulty = _params(vae, guide)
    assert len(faulty) == len(clean)
    for (k, a), b in zip(faulty.items(), clean.values(), strict=True):  # same order
        assert_close(a[[0, 2]], b[[0, 2]], atol=1e-6, msg=k)  # replicas 0, 2 never noticed
        assert bool(torch.isfinite(a).all())
    assert all(math.isfinite(v) for h in res.history for v in h["val_elbo"])
    assert float(res.best_val_elbo[0]) == float(ref.best_val_elbo[0])


def test_a_replica_that_keeps_failing_is_marked_failed_and_frozen():
    ds, vae, guide = _setup(lambda net: FaultyDecoder(net, bad=2, at=5, forever=True))
    res = inference.fit(vae, guide, ds.train, ds.val, epochs=3, batch_size=32, seed=[0, 1, 2],
                        max_faults=2)
    assert res.failed.tolist() == [False, False, True]
    actions = [f["action"] for f in res.faults]
    assert actions == ["rollback", "rollback", "failed"]
    assert all(f["replica"] == 2 for f in res.faults)
    for p in _params(vae, guide).values():
        assert bool(torch.isfinite(p).all())
    assert res.history[-1]["active"] == 2


def test_extreme_gamma2_never_leaves_nan_in_results():
    ds, vae, guide = _setup(gamma2=(10.0, 1e8))
    res = inference.fit(vae, guide, ds.train, ds.val, epochs=2, batch_size=32, seed=[0, 1],
                        lr=0.05)
    for p in _params(vae, guide).values():
        assert bool(torch.isfinite(p).all())
    assert bool(torch.isfinite(res.best_val_elbo).all())
    e = inference.elbo_per_point(vae, guide, ds.test.x)
    assert bool(torch.isfinite(e[0]).all())
    assert not bool(res.failed[0])
