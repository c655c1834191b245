"""Device and dtype: everything follows the model's parameters.

On a machine without a GPU the device half is checked with PyTorch's ``meta`` device: while it
is the default device, any tensor the library creates without ``device=`` lands there and the
first operation mixing it with the model's CPU tensors raises. A run that completes therefore
created every tensor where the model lives (what a CUDA run needs). The whole suite also runs on
a GPU with ``PYRO_IMA_TEST_DEVICE=cuda`` (see conftest.py).
"""

import json

import numpy as np
import pytest
import torch
from conftest import DEVICE, FAMILIES, assert_close, linear_gaussian, oracle_pair

from pyro_ima import data, inference, mixings, models, priors
from pyro_ima._utils import torch_defaults
from pyro_ima.cli import main


def _pair(family, R=2, learn_noise=True, prior=None):
    p0 = prior or priors.uniform(3)
    vae = models.GaussianVAE(models.MLP(3, 3, (8,), replicas=R, seed=list(range(R))), p0,
                             gamma2=torch.logspace(2, 3, R), replicas=R,
                             learn_noise=learn_noise, data_dim=3)
    cls = models.GUIDES[family]
    guide = cls(vae, models.MLP(3, cls.num_outputs(3), (8,), replicas=R,
                                seed=list(range(10, 10 + R))), init_scale=0.05)
    return vae, guide


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the meta-device check runs on a CPU model")
@pytest.mark.filterwarnings("ignore:importance_log_px:RuntimeWarning")  # 2 epochs: poor fits
@pytest.mark.filterwarnings("ignore:evaluate:RuntimeWarning")
@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_is_created_on_the_default_device(family):
    mix = mixings.Moebius(3, seed=0)
    ds = data.make_dataset(mix, priors.uniform(3), n=300, seed=0)
    vae, guide = _pair(family)
    x, z = ds.test.x, ds.test.z
    small = inference.EvalConfig(points=10, is_samples=20)
    with torch.device("meta"):
        res = inference.fit(vae, guide, ds.train, ds.val, epochs=2, batch_size=32, lr_end=1e-4,
                            seed=[0, 1])
        inference.elbo_per_point(vae, guide, x, num_particles=2)
        for proposal in ("guide", "laplace"):
            inference.importance_log_px(vae, guide, x[:10], num_samples=20, proposal=proposal)
        values = inference.evaluate(vae, guide, x, z, config=small)
        inference.gap_report(vae, guide, x[:5], num_samples=20,
                             refine=inference.RefineConfig(steps=3))
        inference.self_consistency(vae, guide, x[:5])
    assert res.epochs_run == 2 and values["mcc_pearson"].shape == (2,)
    assert all(v.device.type == "cpu" for v in values.values())


def test_float64_end_to_end_reaches_float64_accuracy():
    # The full-covariance oracle guide is the exact posterior of the linear Gaussian VAE: every
    # importance weight equals log p(x). Built in float64 that holds to ~1e-12; a float32
    # constant anywhere on the path would leave errors of ~1e-5 (measured: 3.8e-6 when the
    # decoder's weights are float32 numbers).
    lg = linear_gaussian(d=3, gamma2=1e3)
    with torch_defaults(dtype=torch.float64):
        vae, guide = oracle_pair(lg, "full")
    assert vae.prior.base_dist.loc.dtype == torch.float64
    assert vae.decoder.weight.dtype == torch.float64
    x = lg.sample(20)
    truth = lg.log_px(x)
    res = inference.importance_log_px(vae, guide, x, num_samples=10, proposal="laplace")
    assert_close(res.log_px, truth, atol=1e-9)
    elbo = inference.elbo_per_point(vae, guide, x, num_particles=4)
    assert elbo.dtype == torch.float64
    assert_close(elbo, truth, atol=1e-9)


@pytest.mark.filterwarnings("ignore:importance_log_px:RuntimeWarning")  # 2 epochs: a poor fit
def test_float64_training_and_evaluation_run_in_float64():
    ds = data.make_dataset(mixings.Moebius(3, seed=0), priors.uniform(3), n=300, seed=0)
    vae, guide = _pair("diagonal")
    vae.double()
    guide.double()
    res = inference.fit(vae, guide, ds.train, ds.val, epochs=2, batch_size=32, seed=[0, 1])
    assert all(p.dtype == torch.float64 for p in inference.trainable_parameters(vae, guide)
               .values())
    assert bool(torch.isfinite(res.best_val_elbo).all())
    rep = inference.gap_report(vae, guide, ds.test.x[:5], num_samples=20,
                               refine=inference.RefineConfig(steps=3))
    assert rep["elbo"].dtype == rep["elbo_star"].dtype == torch.float64
    assert rep["log_px_is"].dtype == torch.float64


def test_to_moves_the_prior_and_a_fixed_decoder_and_keeps_the_given_precision():
    W = torch.tensor([[1.0, 1 / 3], [0.0, 1.0]], dtype=torch.float64)
    vae = models.GaussianVAE(mixings.Linear(W), priors.gaussian(2), 10.0)
    assert vae.decoder.weight.dtype == torch.float32
    vae.double()
    assert vae.prior.base_dist.scale.dtype == torch.float64
    assert vae.decoder.weight.dtype == torch.float64
    vae.float()
    assert vae.prior.base_dist.scale.dtype == vae.decoder.weight.dtype == torch.float32


def test_data_of_another_dtype_or_kind_is_converted():
    vae, guide = _pair("diagonal", R=1, learn_noise=False)
    x64 = np.random.default_rng(0).uniform(0.1, 0.9, size=(40, 3))  # float64 numpy
    res = inference.fit(vae, guide, x64, x64, epochs=1, batch_size=8, seed=[0])
    assert res.epochs_run == 1
    e = inference.elbo_per_point(vae, guide, x64)
    assert e.dtype == torch.float32 and e.shape == (1, 40)


def test_a_guide_in_another_dtype_is_refused_before_training():
    vae, guide = _pair("diagonal", R=1)
    vae.double()
    with pytest.raises(ValueError, match="guide.encoder.*float32.*model is torch.float64"):
        inference.fit(vae, guide, torch.rand(40, 3), epochs=1, batch_size=8, seed=[0])


def test_cli_trains_and_evaluates_in_float64(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = ["--n", "200", "--epochs", "1", "--batch-size", "32", "--hidden", "8", "--quiet",
            "--eval-points", "10", "--eval-samples", "20"]
    assert main(["train", *tiny, "--dtype", "float64", "--device", DEVICE.type,
                 "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["dtype"] == "float64"
    assert main(["evaluate", str(out), "--dtype", "float64"]) == 0
    assert main(["train", *tiny, "--device", "nonsense", "--out", str(out)]) == 2
    assert "device" in capsys.readouterr().err


def test_a_learned_prior_follows_the_model_and_keeps_its_values():
    vae = models.GaussianVAE(models.MLP(2, 3, (4,)), priors.beta(2, a=3.0, b=2.0), 1.0,
                             learn_prior=True)
    with torch.no_grad():
        vae.learned_prior.raw_concentration1.add_(0.5)
    before = vae.learned_prior.values()
    vae.double()
    assert vae.prior.base_dist.concentration1.dtype == torch.float64
    assert_close(vae.learned_prior.values()["concentration1"], before["concentration1"],
                 atol=1e-6)
    assert float(before["concentration1"][0, 0]) == pytest.approx(3.0 * np.exp(0.5), rel=1e-5)
    vae.float()
    assert vae.prior.base_dist.concentration0.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:importance_log_px:RuntimeWarning")  # an untrained guide
@pytest.mark.filterwarnings("ignore:evaluate:RuntimeWarning")
def test_estimators_leave_no_graph_or_gradient_on_a_learned_prior():
    # gap_report's ELBO* refinement differentiates only its own (mean, scale); the noiseless
    # log p(x) comes back without a graph, so training can go on and results convert to numpy
    mix = mixings.Moebius(2, seed=0)
    ds = data.make_dataset(mix, priors.beta(2, a=2.0, b=2.0), n=60, seed=0)
    vae = models.GaussianVAE(mix, priors.beta(2, a=2.0, b=2.0), 1e3, replicas=2,
                             learn_prior=True)
    guide = models.DiagonalGuide(vae, models.MLP(2, 4, (8,), replicas=2, seed=[0, 1]))
    x = ds.test.x[:4]
    rep = inference.gap_report(vae, guide, x, mixing=mix, num_samples=20, elbo_particles=4,
                               refine=inference.RefineConfig(steps=3))
    out = inference.evaluate(vae, guide, x, ds.test.z[:4], mixing=mix,
                             config=inference.EvalConfig(points=4, is_samples=20))
    for name, v in (("gap_report", rep["log_px_exact"]), ("evaluate", out["log_px_exact"])):
        assert not v.requires_grad, name
        assert np.isfinite(v.numpy()).all(), name
    params = list(vae.parameters()) + list(guide.parameters())
    assert any(p is vae.learned_prior.raw_concentration1 for p in params)
    assert all(p.grad is None for p in params)
