"""fit(): parameter isolation, replica equivalence, early stopping, best-state restore."""

import pyro
import pytest
import torch
from conftest import assert_close, linear_gaussian

from pyro_ima import data, inference, mixings, models, priors


def _pair(family="diagonal", replicas=None, seed=0, gamma2=100.0, learn_noise=False,
          fixed=False, prior=None):
    d = 2
    p0 = prior or priors.gaussian(d)
    dec = mixings.Moebius(d, seed=1) if fixed else models.MLP(d, d, (16,), replicas=replicas,
                                                              seed=seed)
    vae = models.GaussianVAE(dec, p0, gamma2, replicas=replicas, learn_noise=learn_noise,
                             data_dim=d)
    cls = models.GUIDES[family]
    enc_seed = [s + 100 for s in seed] if isinstance(seed, list) else seed + 100
    enc = models.MLP(d, cls.num_outputs(d), (16,), replicas=replicas, seed=enc_seed)
    return vae, cls(vae, enc)


def _data(n=512, seed=0):
    ds = data.make_dataset(mixings.Moebius(2, seed=1), priors.uniform(2), n=n, seed=seed)
    return ds


def test_two_models_in_one_process_both_learn():
    ds = _data()
    store_before = set(pyro.get_param_store().keys())
    before = []
    for _ in range(2):
        vae, guide = _pair()
        params = inference.trainable_parameters(vae, guide)
        start = {k: p.detach().clone() for k, p in params.items()}
        e0 = inference.elbo_per_point(vae, guide, ds.val.x, num_particles=5).mean()
        inference.fit(vae, guide, ds.train, ds.val, epochs=3, batch_size=64, lr=3e-3)
        moved = [float((p.detach() - start[k]).abs().max()) for k, p in params.items()]
        assert min(moved) > 1e-4, "some parameter was silently not trained"
        e1 = inference.elbo_per_point(vae, guide, ds.val.x, num_particles=5).mean()
        assert e1 > e0 + 1.0
        before.append(float(e1))
    assert set(pyro.get_param_store().keys()) == store_before  # nothing leaks into the store


def test_a_fixed_module_decoder_is_not_trained_and_a_trainable_one_is_saved_once():
    ds = _data(n=200)
    net = models.MLP(2, 2, (8,), seed=3)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    vae = models.GaussianVAE(net, priors.gaussian(2), 100.0, fixed_decoder=True)
    guide = models.DiagonalGuide(vae, models.MLP(2, 4, (8,), seed=4))
    assert not any(p is q for p in vae.parameters() for q in net.parameters())
    assert not any("decoder" in k for k in vae.state_dict())
    inference.fit(vae, guide, ds.train, epochs=2, batch_size=32, lr=1e-2, seed=0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, start[k]), k  # the ground truth stays as given
    trainable = models.GaussianVAE(models.MLP(2, 2, (8,), seed=3), priors.gaussian(2), 100.0)
    keys = [k for k in trainable.state_dict() if "decoder" in k]
    assert keys == [f"decoder.{k}" for k in trainable.decoder.state_dict()]
    # a state saved while the decoder was also kept as `_decoder_source` still loads strictly
    old = {**trainable.state_dict(),
           **{f"_decoder_source.{k[len('decoder.'):]}": v.clone() + 1
              for k, v in trainable.state_dict().items()}}
    fresh = models.GaussianVAE(models.MLP(2, 2, (8,), seed=5), priors.gaussian(2), 100.0)
    fresh.load_state_dict(old)
    for k, v in trainable.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_pyro_param_store_trap_is_avoided_for_same_architecture():
    # The classic trap: a second module under an existing pyro.module name is not trained.
    ds = _data()
    vae1, g1 = _pair(seed=0)
    inference.fit(vae1, g1, ds.train, epochs=1)
    with pyro.get_param_store().scope():
        pyro.module(vae1.pyro_name, vae1)  # even a stale global entry must not matter
        vae2, g2 = _pair(seed=0)
        w0 = vae2.decoder.layers[0].weight.detach().clone()
        inference.fit(vae2, g2, ds.train, epochs=1)
        assert float((vae2.decoder.layers[0].weight.detach() - w0).abs().max()) > 1e-4
    assert vae1.pyro_name != vae2.pyro_name


@pytest.mark.parametrize("family,learn_noise,fixed", [
    ("diagonal", False, False), ("isotropic", True, False), ("full", False, True)])
def test_replica_r_equals_a_single_run_with_its_seed(family, learn_noise, fixed):
    ds = _data(n=600)
    seeds = [3, 7, 11]
    gammas = torch.tensor([10.0, 100.0, 1000.0])
    vae_b, guide_b = _pair(family, replicas=3, seed=seeds, gamma2=gammas,
                           learn_noise=learn_noise, fixed=fixed)
    rb = inference.fit(vae_b, guide_b, ds.train, ds.val, epochs=4, batch_size=32, lr=3e-3,
                       seed=seeds)
    assert rb.steps == 4 * (420 // 32)  # > 50 steps per replica
    pb = inference.trainable_parameters(vae_b, guide_b)
    for r, s in enumerate(seeds):
        vae, guide = _pair(family, seed=s, gamma2=float(gammas[r]), learn_noise=learn_noise,
                           fixed=fixed)
        rs = inference.fit(vae, guide, ds.train, ds.val, epochs=4, batch_size=32, lr=3e-3,
                           seed=s)
        for k, p in inference.trainable_parameters(vae, guide).items():
            assert_close(pb[k][r].reshape(p.shape), p.detach(), atol=2e-5, rtol=1e-4, msg=k)
        assert_close([h["val_elbo"][r] for h in rb.history],
                      [h["val_elbo"][0] for h in rs.history], rtol=1e-4)


def test_per_replica_early_stopping_freezes_and_restores_best():
    ds = _data(n=400)
    # Replica 1 has a huge learning-signal scale (gamma2) and a tiny lr cannot fix it quickly;
    # patience 1 makes the replicas stop at different epochs.
    vae, guide = _pair(replicas=3, seed=[0, 1, 2], gamma2=torch.tensor([10.0, 1e4, 100.0]))
    snapshots = []

    def record(epoch, rec):
        snapshots.append({k: p.detach().clone()
                          for k, p in inference.trainable_parameters(vae, guide).items()})

    r = inference.fit(vae, guide, ds.train, ds.val, epochs=30, batch_size=32, lr=3e-2,
                      patience=1, seed=[0, 1, 2], callbacks=[record])
    actives = [h["active"] for h in r.history]
    assert actives[-1] < 3 or r.epochs_run == 30
    final = inference.trainable_parameters(vae, guide)
    for rep in range(3):
        best = int(r.best_epoch[rep])
        vals = [h["val_elbo"][rep] for h in r.history]
        # the best epoch is the argmax of the validation ELBO while the replica was active
        assert vals[best] == max(vals[: best + 2])
        for k, p in final.items():  # restored to the best epoch's parameters
            assert_close(p[rep], snapshots[best][k][rep], atol=0.0, msg=k)
    # a replica that stopped did not change afterwards
    stop_epochs = [next((e for e, h in enumerate(r.history) if h["active"] <= i), None)
                   for i in range(3)]
    assert any(s is not None for s in stop_epochs)


def test_plateau_halving_is_per_replica_and_matches_lone_runs():
    # patience 1 with two halvings: replicas hit plateaus at different epochs, halve their
    # steps (back at their best state) and stop after the second halving's plateau; each
    # replica's schedule is its own, so a batch equals its replicas trained alone.
    ds = _data(n=400)
    seeds, gammas = [0, 1, 2], torch.tensor([10.0, 1e4, 100.0])
    kw = dict(epochs=25, batch_size=32, lr=3e-2, patience=1, lr_halvings=2)
    vae_b, guide_b = _pair(replicas=3, seed=seeds, gamma2=gammas)
    rb = inference.fit(vae_b, guide_b, ds.train, ds.val, seed=seeds, **kw)
    assert int(rb.lr_halvings.max()) == 2 and int(rb.lr_halvings.min()) >= 1
    pb = inference.trainable_parameters(vae_b, guide_b)
    for r, s in enumerate(seeds):
        vae, guide = _pair(seed=s, gamma2=float(gammas[r]))
        rs = inference.fit(vae, guide, ds.train, ds.val, seed=s, **kw)
        assert int(rs.lr_halvings[0]) == int(rb.lr_halvings[r])
        assert int(rs.best_epoch[0]) == int(rb.best_epoch[r])
        for k, p in inference.trainable_parameters(vae, guide).items():
            assert_close(pb[k][r].reshape(p.shape), p.detach(), atol=2e-5, rtol=1e-4, msg=k)


def test_train_mask_leaves_other_replicas_untouched_and_precision_warmup_stages(monkeypatch):
    from pyro_ima.experiments.common import Runtime, TrainingConfig, precision_warmup
    ds = _data(n=300)
    seeds, gammas = [0, 1, 2], torch.tensor([10.0, 1e4, 1e5])
    vae, guide = _pair(replicas=3, seed=seeds, gamma2=gammas)
    params = inference.trainable_parameters(vae, guide)
    start = {k: p.detach().clone() for k, p in params.items()}
    r = inference.fit(vae, guide, ds.train, ds.val, seed=seeds, epochs=2, batch_size=50,
                      train_mask=[False, True, True])
    for k, p in params.items():  # replica 0 bit-identical, the others moved
        assert torch.equal(p[0], start[k][0]), k
    assert any(not torch.equal(p[1], start[k][1]) for k, p in params.items())
    assert r.best_epoch.tolist()[0] == -1 and not bool(r.stopped_early[0])
    with pytest.raises(ValueError, match="train_mask: expected 3 booleans"):
        inference.fit(vae, guide, ds.train, ds.val, epochs=1, train_mask=[True, False])
    # the warm-up: replica 0 (gamma2 10) untouched; 1 trains at 1e3; 2 at 1e3 then 1e4
    seen = []
    orig_fit = inference.fit

    def spy(*a, **kw):
        seen.append((vae.gamma2.tolist(), kw["train_mask"].tolist()))
        return orig_fit(*a, **kw)

    monkeypatch.setattr(inference, "fit", spy)
    failed, run = precision_warmup(vae, guide, ds.train, ds.val, TrainingConfig(batch_size=50),
                                   seeds, Runtime(), 1e3, 2)
    assert seen == [([10.0, 1e3, 1e3], [False, True, True]),
                    ([10.0, 1e4, 1e4], [False, False, True])]
    assert run.tolist() == [0.0, 2.0, 4.0] and not bool(failed.any())
    assert vae.gamma2.tolist() == gammas.tolist()  # the targets are back


def test_set_beta_reweights_the_latent_site_and_kl_warmup_restores_it(monkeypatch):
    from pyro_ima.experiments.common import Runtime, TrainingConfig, kl_warmup
    from pyro_ima.inference.elbo import vae_elbo_per_point
    ds = _data(n=300)
    x = ds.val.x[:20]
    vae, guide = _pair(replicas=2, seed=[0, 1])
    ref = models.GaussianVAE(vae.decoder, vae.prior, vae.gamma2, replicas=2, data_dim=2,
                             beta=torch.tensor([0.5, 0.25]))
    kw = dict(num_particles=3, seed=4, beta_weighted=True)
    before = vae_elbo_per_point(vae, guide, x, **kw)
    vae.set_beta(torch.tensor([0.5, 0.25]))  # the same objective as a model built with them
    assert_close(vae_elbo_per_point(vae, guide, x, **kw),
                 vae_elbo_per_point(ref, guide, x, **kw))
    assert not torch.allclose(vae_elbo_per_point(vae, guide, x, **kw), before)
    vae.set_beta(1.0)
    assert_close(vae_elbo_per_point(vae, guide, x, **kw), before)
    with pytest.raises(ValueError, match="beta"):
        vae.set_beta(0.0)
    seen = []
    orig_fit = inference.fit

    def spy(*a, **kw):
        seen.append((vae.beta.tolist(), kw["config"].patience, kw["config"].epochs))
        return orig_fit(*a, **kw)

    monkeypatch.setattr(inference, "fit", spy)
    cfg = TrainingConfig(batch_size=50, patience=3)
    failed, run = kl_warmup(vae, guide, ds.train, ds.val, cfg, [0, 1], Runtime(), 0.1, 2)
    assert seen == [(pytest.approx([0.1, 0.1]), None, 2)]  # at beta 0.1, no early stopping
    assert run.tolist() == [2.0, 2.0] and not bool(failed.any())
    assert vae.beta.tolist() == [1.0, 1.0] and vae._unit_beta  # its own beta is back
    seen.clear()
    assert not bool(kl_warmup(vae, guide, ds.train, ds.val, cfg, [0, 1], Runtime(), None,
                              2)[0].any())
    assert seen == []  # None: nothing trained
    with pytest.raises(ValueError, match="beta"):
        kl_warmup(vae, guide, ds.train, ds.val, cfg, [0, 1], Runtime(), 1.5, 2)
    vae.set_beta(torch.tensor([2.0, 0.5]))  # a beta-VAE's own weights: multiplied, restored

    def boom(*a, **kw):
        seen.append(vae.beta.tolist())
        raise RuntimeError("interrupted")

    monkeypatch.setattr(inference, "fit", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        kl_warmup(vae, guide, ds.train, ds.val, cfg, [0, 1], Runtime(), 0.5, 2)
    assert seen == [[1.0, 0.25]] and vae.beta.tolist() == [2.0, 0.5]
    assert not vae._unit_beta


def test_plateau_schedule_and_min_delta():
    ds = _data(n=300)
    vae, guide = _pair(seed=0, gamma2=100.0)
    r = inference.fit(vae, guide, ds.train, ds.val, epochs=8, batch_size=32, lr=1e-2,
                      patience=1, lr_halvings=3, min_delta=1e9)  # only the first counts
    # epoch 0 improves on -inf; epochs 1-3 are plateaus that halve, epoch 4's stops it
    assert int(r.lr_halvings[0]) == 3 and r.epochs_run == 5
    vals = [h["val_elbo"][0] for h in r.history]
    assert int(r.best_epoch[0]) == vals.index(max(vals))  # best state: any rise at all
    r0 = inference.fit(*_pair(seed=0, gamma2=100.0), ds.train, ds.val, epochs=8,
                       batch_size=32, lr=1e-2, patience=1, min_delta=1e9)
    assert int(r0.lr_halvings[0]) == 0 and r0.epochs_run == 2
    with pytest.raises(ValueError, match="min_delta"):
        inference.FitConfig(min_delta=-1.0)
    with pytest.raises(ValueError, match="lr_halvings"):
        inference.FitConfig(lr_halvings=-1)


def test_a_halved_replica_takes_half_the_proposed_step_and_others_are_untouched():
    from pyro_ima.inference.train import _Replicas
    w = torch.nn.Parameter(torch.randn(3, 4, 5))
    book = _Replicas({"w": w}, 3, inference.FitConfig(), optim=None)
    book.step_scale[1] = 0.5
    before = book._snapshot()
    step = torch.randn(3, 4, 5)
    with torch.no_grad():
        w.add_(step)  # the optimizer's proposal
    proposed = w.detach().clone()
    assert book.after_step(1.0, None, before, epoch=0, step=0)
    assert torch.equal(w[0], proposed[0]) and torch.equal(w[2], proposed[2])
    assert_close(w[1], before["w"][1] + 0.5 * step[1], atol=1e-6)


def test_elbo_per_point_does_not_depend_on_chunking():
    lg = linear_gaussian(d=3, gamma2=1e3)
    vae = lg.vae()
    guide = models.DiagonalGuide(vae, models.MLP(3, 6, seed=0))
    x = lg.sample(100)
    a = inference.elbo_per_point(vae, guide, x, num_particles=3, seed=1, chunk_size=100)
    b = inference.elbo_per_point(vae, guide, x, num_particles=3, seed=1, chunk_size=7)
    assert a.shape == (100,)
    assert_close(a, b, rtol=1e-6)


def test_minibatch_scaling_gives_an_unbiased_full_data_elbo():
    # SVI's loss on a minibatch of B out of N points is N/B times the minibatch sum.
    lg = linear_gaussian(d=3, gamma2=10.0)
    vae = lg.vae()
    guide = models.DiagonalGuide(vae, models.MLP(3, 6, seed=0))
    x = lg.sample(64)
    eps = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    elbo = pyro.infer.Trace_ELBO(max_plate_nesting=2)
    with pyro.get_param_store().scope():
        loss_mb = elbo.loss(vae.model, guide.guide, x[:16], full_size=64, eps=eps[:16])
    per_point = inference.elbo_per_point(vae, guide, x[:16], eps=eps[:16].unsqueeze(0))
    assert_close(-loss_mb, per_point.sum() * 4, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:evaluate:RuntimeWarning")  # 2 epochs: some estimates flagged
def test_replica_evaluation_matches_single_models():
    ds = _data(n=400)
    seeds = [3, 7]
    vae_b, guide_b = _pair("diagonal", replicas=2, seed=seeds, gamma2=torch.tensor([10.0, 1e3]))
    inference.fit(vae_b, guide_b, ds.train, ds.val, epochs=2, batch_size=32, seed=seeds)
    small = inference.EvalConfig(is_samples=50)
    rows = inference.evaluate_replicas(vae_b, guide_b, ds.test.x, ds.test.z, seeds=seeds,
                                       config=small)
    table = {(r["replica"], r["metric"]): r for r in rows}
    assert table[(1, "elbo")]["gamma2"] == 1e3 and table[(1, "elbo")]["seed"] == 7
    for r, s in enumerate(seeds):
        vae, guide = _pair("diagonal", seed=s, gamma2=[10.0, 1e3][r])
        inference.fit(vae, guide, ds.train, ds.val, epochs=2, batch_size=32, seed=s)
        single = {row["metric"]: row["value"] for row in inference.evaluate_replicas(
            vae, guide, ds.test.x, ds.test.z, config=small)}
        for metric in ("mcc_pearson", "mcc_spearman", "c_ima", "c_conf"):
            assert table[(r, metric)]["value"] == pytest.approx(single[metric], abs=1e-4), metric
        assert set(single) == {m for (_, m) in table}


def test_batched_linear_gives_each_replica_its_own_layer_on_every_input_form():
    layer = models.BatchedLinear(3, 5, [torch.Generator().manual_seed(s) for s in range(4)],
                                 replicas=4)
    x = torch.randn(4, 6, 3)
    each = torch.stack([x[r] @ layer.weight[r] + layer.bias[r] for r in range(4)])
    assert_close(layer(x), each, rtol=1e-6, atol=1e-6)  # (R, B, in): the fused path
    assert_close(layer(x.expand(2, 4, 6, 3)), each.expand(2, 4, 6, 5), rtol=1e-6, atol=1e-6)
    assert_close(layer(x[0]), torch.stack([layer.replica(x[0], r) for r in range(4)]),
                 rtol=1e-6, atol=1e-6)  # (B, in) shared by the replicas
