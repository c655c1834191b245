"""Training only the replicas still training: ReplicaSubset and fit's drop_stopped."""

import pytest
import torch
from test_train import _data, _pair
from torch.testing import assert_close

from pyro_ima import data, inference, mixings, models, priors
from pyro_ima.inference.elbo import vae_elbo_per_point
from pyro_ima.inference.optim import Adam, JointOptim
from pyro_ima.inference.train import _Replicas
from pyro_ima.models.subset import ReplicaSubset, why_not


def _rich_pair(R=4, family="full"):
    """Every kind of per-replica tensor: MLP weights, beta/gamma2 buffers, learned noise,
    a learned prior, the guide's scale shift."""
    d = 2
    vae = models.GaussianVAE(models.MLP(d, d, (8,), replicas=R, seed=list(range(R))),
                             priors.gaussian(d), torch.tensor([10.0, 20, 30, 40])[:R],
                             learn_noise=True, data_dim=d, replicas=R, learn_prior=True,
                             beta=torch.tensor([1.0, 0.5, 1.0, 0.25])[:R])
    cls = models.GUIDES[family]
    enc = models.MLP(d, cls.num_outputs(d), (8,), replicas=R, seed=[10 + r for r in range(R)])
    guide = cls(vae, enc, init_scale=torch.tensor([0.1, 0.2, 0.3, 0.4])[:R])
    with torch.no_grad():  # distinct values per replica everywhere
        for p in inference.trainable_parameters(vae, guide).values():
            p.add_(torch.randn(p.shape) * 0.1)
    return vae, guide


def test_a_subset_is_the_model_of_its_rows_and_writes_back_only_them():
    vae, guide = _rich_pair()
    x = torch.randn(4, 7, 2)
    eps = torch.randn(1, 4, 7, 2)
    full = vae_elbo_per_point.batched(vae, guide, x, eps=eps)
    start = {k: p.detach().clone() for k, p in inference.trainable_parameters(vae, guide).items()}
    rows = torch.tensor([1, 3])
    sub = ReplicaSubset(vae, guide, rows)
    with sub.installed():
        assert vae.replicas == guide.replicas == vae.decoder.replicas == 2
        assert vae.learned_prior.replicas == 2 and vae.gamma2.tolist() == [20.0, 40.0]
        part = vae_elbo_per_point.batched(vae, guide, x[rows], eps=eps[:, rows])
        for p in inference.trainable_parameters(vae, guide).values():
            assert p.shape[0] == 2
            with torch.no_grad():
                p.add_(1.0)
    assert_close(part, full[rows], rtol=1e-6, atol=1e-6)
    assert vae.replicas == guide.replicas == vae.decoder.replicas == 4
    for k, p in inference.trainable_parameters(vae, guide).items():
        assert p.shape[0] == 4, k
        assert torch.equal(p[rows], start[k][rows] + 1.0), k
        assert torch.equal(p[[0, 2]], start[k][[0, 2]]), k
    assert set(sub.parameters()) == set(inference.trainable_parameters(vae, guide).values())


def test_a_subset_is_undone_by_an_exception_and_sees_changes_made_between_entries():
    vae, guide = _rich_pair(family="diagonal")
    w = vae.decoder.layers[0].weight
    sub = ReplicaSubset(vae, guide, torch.tensor([0, 2]))
    with pytest.raises(KeyError), sub.installed():
        with torch.no_grad():
            vae.decoder.layers[0].weight.zero_()
        raise KeyError("boom")
    assert vae.decoder.layers[0].weight is w and vae.replicas == 4
    assert torch.equal(w[[0, 2]], torch.zeros_like(w[[0, 2]])) and bool(w[1].abs().sum() > 0)
    with torch.no_grad():
        w[2] = 7.0  # changed outside: the next entry starts from it
    with sub.installed():
        assert torch.equal(vae.decoder.layers[0].weight[1], torch.full_like(w[2], 7.0))


class _Plain(torch.nn.Module):  # a user's module: may keep per-replica state anywhere
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.lin(x)


def test_why_not_names_each_pair_it_cannot_narrow():
    vae, guide = _rich_pair(family="diagonal")
    assert why_not(vae, guide) is None
    with pytest.raises(ValueError, match="rows: expected increasing replica indices"):
        ReplicaSubset(vae, guide, torch.tensor([2, 1]))
    guide.fix_loc(lambda x: x)
    assert "pinned" in why_not(vae, guide)
    one, g1 = _pair()
    assert why_not(one, g1) == "one replica"
    fixed = models.GaussianVAE(mixings.Moebius(2, seed=1), priors.gaussian(2), 10.0, replicas=2)
    g = models.DiagonalGuide(fixed, models.MLP(2, 4, (8,), replicas=2, seed=[0, 1]))
    assert "not a module" in why_not(fixed, g)
    for dec, says in ((torch.nn.Linear(2, 2), "no `replicas` attribute"),
                      (_Plain(), "not one of the library's networks")):
        plain = models.GaussianVAE(dec, priors.gaussian(2), 10.0, replicas=2,
                                   fixed_decoder=True)
        g = models.DiagonalGuide(plain, models.MLP(2, 4, (8,), replicas=2, seed=[0, 1]))
        assert says in why_not(plain, g)

    shared = models.GaussianVAE(models.MLP(2, 2, (8,)), priors.gaussian(2), 10.0, replicas=2)
    g = models.DiagonalGuide(shared, models.MLP(2, 4, (8,), replicas=2, seed=[0, 1]))
    assert "a trainable parameter shared by the replicas" in why_not(shared, g)

    class MyMLP(models.MLP):  # a subclass may keep per-replica state of its own
        pass

    mine = models.GaussianVAE(MyMLP(2, 2, (8,), replicas=2, seed=[0, 1]), priors.gaussian(2),
                              10.0, replicas=2)
    g = models.DiagonalGuide(mine, models.MLP(2, 4, (8,), replicas=2, seed=[0, 1]))
    assert why_not(mine, g) == "model.decoder: a MyMLP is not one of the library's networks"

    class MyVAE(models.GaussianVAE):
        pass

    mine = MyVAE(models.MLP(2, 2, (8,), replicas=2, seed=[0, 1]), priors.gaussian(2), 10.0,
                 replicas=2)
    g = models.DiagonalGuide(mine, models.MLP(2, 4, (8,), replicas=2, seed=[0, 1]))
    assert "only the library's own" in why_not(mine, g)
    with pytest.raises(ValueError, match="vae, guide: cannot run on a subset"):
        ReplicaSubset(mine, g, torch.tensor([0]))


def test_a_narrowed_book_absorbs_its_faults_in_full_numbering():
    w = torch.nn.Parameter(torch.randn(4, 3))
    book = _Replicas({"w": w}, 4, inference.FitConfig(max_faults=0), optim=None)
    rows = torch.tensor([1, 3])
    copy = torch.nn.Parameter(w.detach()[rows].clone())
    sub = book.narrow(rows, {"w": copy})
    sub.start_epoch()
    sub.fault(torch.tensor([False, True]), epoch=5, step=2)
    book.absorb(sub, rows)
    assert book.faults == [{"epoch": 5, "step": 2, "replica": 3, "action": "failed"}]
    assert book.failed.tolist() == [False, False, False, True]
    assert book.active.tolist() == [True, True, True, False]
    assert book.step_scale.tolist() == [1.0, 1.0, 1.0, 0.5]


def test_adam_state_follows_the_rows_it_carries():
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = Adam({"lr": 0.1})
    w.grad = torch.randn(4, 3)
    opt([w])
    before = {k: v.clone() for k, v in opt._joint.state[w].items()}
    new = torch.nn.Parameter(w.detach()[[0, 2]].clone())
    opt.carry_rows({w: new}, torch.tensor([0, 2]))
    state = opt._joint.state[new]
    assert w not in opt._joint.state
    assert torch.equal(state["exp_avg"], before["exp_avg"][[0, 2]])
    assert torch.equal(state["exp_avg_sq"], before["exp_avg_sq"][[0, 2]])
    assert torch.equal(state["step"], before["step"])


@pytest.fixture
def foreach_kernels(monkeypatch):
    """Adam's foreach kernels: fused Adam's scalar tail rounds differently from its vector
    body, so bit-identity across narrowing holds only without it (see JointOptim)."""
    monkeypatch.setattr(JointOptim, "fused_kernels", False)


@pytest.mark.parametrize("kernels", ["foreach", "fused"])
@pytest.mark.parametrize("family,learn_prior", [("diagonal", False), ("full", True)])
def test_dropping_stopped_replicas_changes_no_result(family, learn_prior, kernels, request):
    # patience 1 and two halvings stop replicas at different epochs; replica 2 is outside
    # train_mask (as in a precision warm-up): at these sizes (activations multiples of the
    # vector width) dropping them must not change a single bit with foreach Adam, and nothing
    # beyond float rounding with fused Adam (whose scalar tail covers the output biases).
    if kernels == "foreach":
        request.getfixturevalue("foreach_kernels")

        def same(a, b, msg):
            assert torch.equal(a, b), msg
    else:
        def same(a, b, msg):
            assert_close(a, b, rtol=1e-5, atol=1e-6, msg=str(msg))
    ds = _data(n=400)
    seeds = [0, 1, 2, 3]
    out = {}
    for drop in (False, True):
        gamma2 = torch.tensor([10.0, 1e4, 100.0, 30.0])
        if learn_prior:
            vae = models.GaussianVAE(models.MLP(2, 2, (16,), replicas=4, seed=seeds),
                                     priors.gaussian(2), gamma2, replicas=4, learn_prior=True)
            cls = models.GUIDES[family]
            guide = cls(vae, models.MLP(2, cls.num_outputs(2), (16,), replicas=4,
                                        seed=[s + 100 for s in seeds]))
        else:
            vae, guide = _pair(family, replicas=4, seed=seeds, gamma2=gamma2)
        seen = []  # what callbacks see: the full model, stopped replicas at their best

        def look(epoch, record, vae=vae, guide=guide, seen=seen):
            seen.append({k: p.detach().clone()
                         for k, p in inference.trainable_parameters(vae, guide).items()})

        res = inference.fit(vae, guide, ds.train, ds.val, epochs=25, batch_size=32, lr=3e-2,
                            patience=1, lr_halvings=2, seed=seeds, drop_stopped=drop,
                            train_mask=[True, True, False, True], callbacks=[look])
        out[drop] = res, {k: p.detach().clone()
                          for k, p in inference.trainable_parameters(vae, guide).items()}
        for e in range(len(res.history)):
            for r in (0, 1, 3):
                if not res.stopped_early[r] or e < max(
                        i for i, g in enumerate(res.history) if g["val_elbo"][r] is not None):
                    continue  # still training at epoch e
                for k, p in out[drop][1].items():
                    assert torch.equal(seen[e][k][r], p[r]), (drop, e, r, k)
    (kept, p_kept), (dropped, p_dropped) = out[False], out[True]
    computed = [h["computed"] for h in dropped.history]
    assert computed[0] == 3 and computed[-1] < 3  # narrowed from the start, then again
    assert all(h["computed"] == 4 for h in kept.history)
    for k in p_kept:
        same(p_kept[k], p_dropped[k], k)
    # (with fused kernels, rounding could in principle flip a close comparison on some other
    # CPU; at these sizes and seeds every decision comes out the same)
    for f in ("best_epoch", "lr_halvings", "stopped_early", "failed"):
        assert torch.equal(getattr(kept, f), getattr(dropped, f)), f
    same(kept.best_val_elbo.nan_to_num(), dropped.best_val_elbo.nan_to_num(), "best_val_elbo")
    assert kept.epochs_run == dropped.epochs_run
    for hk, hd in zip(kept.history, dropped.history, strict=True):
        for r, v in enumerate(hd["val_elbo"]):
            if v is None:  # not computed: stopped or outside the mask
                assert r == 2 or hd["active"] < 3
            else:
                same(torch.tensor(v), torch.tensor(hk["val_elbo"][r]), (r, "val_elbo"))


def test_a_fault_in_a_narrowed_batch_is_reported_in_full_numbering():
    # replica 2 is outside train_mask, so the batch is narrowed to replicas 0, 1, 3 from the
    # start; a NaN put into replica 3 between epochs (callbacks see the full model) makes it
    # fail in that narrowed batch, where it is row 2.
    ds = _data(n=400)
    vae, guide = _pair(replicas=4, seed=[0, 1, 2, 3], gamma2=torch.tensor([10.0, 20, 30, 40]))
    start = {k: p.detach().clone() for k, p in inference.trainable_parameters(vae, guide).items()}

    def poison(epoch, record):
        if epoch == 0:
            with torch.no_grad():
                vae.decoder.layers[0].weight[3] = float("nan")

    res = inference.fit(vae, guide, ds.train, ds.val, epochs=3, batch_size=32, seed=[0, 1, 2, 3],
                        train_mask=[True, True, False, True], max_faults=0, callbacks=[poison])
    assert [h["computed"] for h in res.history] == [3, 3, 2]
    assert [(f["replica"], f["action"]) for f in res.faults] == [(3, "failed")]
    assert res.failed.tolist() == [False, False, False, True]
    assert res.history[1]["val_elbo"][2] is None and res.history[2]["val_elbo"][3] is None
    for k, p in inference.trainable_parameters(vae, guide).items():
        assert torch.equal(p[2], start[k][2]), k  # never trained
        assert bool(torch.isfinite(p[[0, 1]]).all()), k


def test_sizes_off_the_vector_width_agree_to_rounding():
    # d = 3, batch 50: per-replica tensors are not multiples of a CPU's vector width, so the
    # last elements of a tensor may round on another path when the batch narrows; replica 2
    # outside train_mask narrows the batch from the start
    ds = data.make_dataset(mixings.Moebius(3, seed=0), priors.gaussian(3), n=500, seed=0)
    out = []
    for drop in (False, True):
        vae = models.GaussianVAE(models.MLP(3, 3, replicas=4, seed=[0, 1, 2, 3]),
                                 priors.gaussian(3), torch.tensor([10.0, 20, 30, 40]),
                                 replicas=4)
        guide = models.DiagonalGuide(vae, models.MLP(3, 6, replicas=4, seed=[4, 5, 6, 7]))
        res = inference.fit(vae, guide, ds.train, ds.val, epochs=4, batch_size=50, lr=1e-2,
                            seed=[0, 1, 2, 3], drop_stopped=drop,
                            train_mask=[True, True, False, True])
        out.append((res, inference.trainable_parameters(vae, guide)))
    (a, pa), (b, pb) = out
    assert [h["computed"] for h in b.history] == [3] * 4
    for k in pa:
        assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6, msg=k)
    assert_close(a.best_val_elbo.nan_to_num(), b.best_val_elbo.nan_to_num(), rtol=1e-6, atol=0)


def test_a_replica_failing_without_validation_ends_the_same_either_way(monkeypatch,
                                                                       foreach_kernels):
    # no validation data: a replica failing at the end-of-epoch check goes back to its best
    # (here: initial) state, whether it is then dropped or stays in the batch
    ds = _data(n=400)
    calls = {"n": 0}
    real = _Replicas.nonfinite

    def nonfinite(self):
        bad = real(self)
        calls["n"] += 1
        if calls["n"] == 3:  # the third epoch's check: replica 1 (row 1 in both modes)
            bad[1] = True
        return bad

    monkeypatch.setattr(_Replicas, "nonfinite", nonfinite)
    finals = []
    for drop in (False, True):
        calls["n"] = 0
        vae, guide = _pair(replicas=3, seed=[0, 1, 2], gamma2=torch.tensor([10.0, 20, 30]))
        start = {k: p.detach().clone()
                 for k, p in inference.trainable_parameters(vae, guide).items()}
        res = inference.fit(vae, guide, ds.train, epochs=5, batch_size=32, seed=[0, 1, 2],
                            max_faults=0, drop_stopped=drop)
        assert res.failed.tolist() == [False, True, False]
        params = inference.trainable_parameters(vae, guide)
        for k, p in params.items():
            assert torch.equal(p[1], start[k][1]), k
        finals.append({k: p.detach().clone() for k, p in params.items()})
    for k in finals[0]:
        assert torch.equal(finals[0][k], finals[1][k]), k


def test_the_validation_chunk_is_whole_vectors_and_the_default_off_the_cpu():
    from pyro_ima.inference.train import _val_chunk
    cpu = torch.device("cpu")
    assert [_val_chunk(r, cpu) for r in (1, 8, 20, 100, 1000)] == [4096, 4096, 1600, 320, 256]
    assert _val_chunk(100, torch.device("meta")) == 4096
