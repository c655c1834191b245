"""The estimators on plain Pyro models and guides (no library classes), against closed forms."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_close, linear_gaussian

from pyro_ima import inference, models, priors, sprites
from pyro_ima.inference import traces


def _linear_pair(lg, guide_scale=None):
    """A plain Pyro linear Gaussian model and, as guide, its exact posterior (or, with
    ``guide_scale``, the posterior mean with an isotropic, deliberately wide covariance)."""
    W, g = lg.W.float(), math.sqrt(lg.gamma2)
    cov = torch.linalg.inv(lg.P).float() if guide_scale is None else \
        guide_scale ** 2 * torch.eye(lg.d)

    def model(x, subsample=None):
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([lg.d]).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T, 1.0 / g).to_event(1), obs=x[idx])

    def guide(x, subsample=None):
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            loc = lg.posterior_mean(x[idx]).float()
            pyro.sample("z", dist.MultivariateNormal(loc, cov))

    return model, guide


def test_exact_posterior_guide_gives_log_px_for_elbo_and_iwae():
    lg = linear_gaussian(d=3, gamma2=1e2, seed=0)
    model, guide = _linear_pair(lg)
    x = lg.sample(40).float()
    truth = lg.log_px(x)
    elbo = inference.elbo_per_point(model, guide, x, num_particles=5)
    res = inference.importance_log_px(model, guide, x, num_samples=20)
    assert elbo.shape == res.log_px.shape == (40,)
    assert_close(elbo, truth, atol=2e-3)  # float32 model: every weight equals log p(x)
    assert_close(res.log_px, truth, atol=2e-3)
    assert_close(res.ess, torch.full((40,), 20.0), atol=1e-2)


def test_wide_guide_iwae_rises_to_the_exact_value_and_stays_below():
    lg = linear_gaussian(d=2, gamma2=10.0, seed=1)
    model, guide = _linear_pair(lg, guide_scale=1.0)  # the posterior std is about 0.3
    x = lg.sample(50).float()
    truth = lg.log_px(x)
    err = {k: (inference.importance_log_px(model, guide, x, num_samples=k, seed=k,
                                           khat_warn=1.0).log_px - truth) for k in (1, 30, 3000)}
    mean = {k: float(v.mean()) for k, v in err.items()}
    assert mean[1] < mean[30] < mean[3000]
    assert mean[1] < -1.0  # K = 1: the ELBO of a poor guide, far below
    assert abs(mean[3000]) < 0.03
    # below the truth in expectation: the mean error is under three standard errors above 0
    for k in (1, 30):
        assert mean[k] < 3 * float(err[k].std()) / math.sqrt(50)


def test_subsampled_and_chunked_evaluation_equal_the_full_batch_per_point():
    lg = linear_gaussian(d=3, gamma2=1e2, seed=2)
    model, guide = _linear_pair(lg)
    x = lg.sample(30).float()
    full = inference.elbo_per_point(model, guide, x)
    idx = torch.tensor([3, 17, 4, 29])
    sub = inference.elbo_per_point(model, guide, x, subsample=idx)
    assert_close(sub, full[idx], atol=1e-4)
    chunked = inference.importance_log_px(model, guide, x, num_samples=8, chunk_size=7)
    assert_close(chunked.log_px, full, atol=1e-4)
    # a model that subsamples itself cannot be chunked from outside
    with pytest.raises(ValueError, match="chunk_size"):
        inference.elbo_per_point(model, guide, x, subsample=idx, chunk_size=2)


def test_chunking_with_an_imperfect_guide_changes_nothing_but_the_draws():
    lg = linear_gaussian(d=2, gamma2=10.0, seed=3)
    model, guide = _linear_pair(lg, guide_scale=0.5)
    x = lg.sample(40).float()
    a = inference.importance_log_px(model, guide, x, num_samples=2000, seed=0, khat_warn=1.0)
    b = inference.importance_log_px(model, guide, x, num_samples=2000, seed=1, chunk_size=9,
                                    sample_chunk=300, khat_warn=1.0)
    assert abs(float((a.log_px - b.log_px).mean())) < 0.02
    assert abs(float((a.log_px - lg.log_px(x)).mean())) < 0.03


def test_bernoulli_elbo_equals_a_hand_written_computation():
    # A point-mass guide at z0 makes the ELBO deterministic: log p(x | z0) + log p(z0).
    torch.manual_seed(0)
    d, D, n = 2, 6, 5
    W = torch.randn(D, d)
    z0 = torch.randn(n, d)
    x = (torch.rand(n, D) < 0.4).float()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ W.T).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(z0).to_event(1))

    elbo = inference.elbo_per_point(model, guide, x)
    logits = z0 @ W.T
    log_lik = (x * torch.log(torch.sigmoid(logits))
               + (1 - x) * torch.log(1 - torch.sigmoid(logits))).sum(-1)
    log_prior = (-0.5 * z0.square() - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert_close(elbo, log_lik + log_prior, atol=1e-5)


def test_replica_plate_and_inner_plates_keep_the_right_dims():
    # a replica plate at -3 outside the data plate at -2 and a "pixels" plate at -1 inside it:
    # per-point values are (R, N), the pixel plate summed
    R, n, D = 2, 4, 3
    x = torch.arange(R * n * D, dtype=torch.float32).reshape(R, n, D) / 10
    shift = torch.tensor([0.0, 1.0]).reshape(R, 1, 1)

    def model(x):
        with pyro.plate("replicas", R, dim=-3), pyro.plate("data", n, dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("pixels", D, dim=-1):
                pyro.sample("x", dist.Normal(z + shift, 1.0), obs=x)

    def guide(x):
        with pyro.plate("replicas", R, dim=-3), pyro.plate("data", n, dim=-2):
            pyro.sample("z", dist.Delta(torch.zeros(R, n, 1)))

    elbo = inference.elbo_per_point(model, guide, x)
    want = (dist.Normal(shift, 1.0).log_prob(x).sum(-1) + dist.Normal(0.0, 1.0).log_prob(
        torch.zeros(R, n)))
    assert elbo.shape == (R, n)
    assert_close(elbo, want, atol=1e-5)


def test_global_latents_and_models_without_a_data_plate_are_refused():
    x = torch.randn(5, 2)

    def global_model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([2]).to_event(1), obs=x)

    def global_guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="latent site 'mu' is outside the 'data' plate"):
        inference.elbo_per_point(global_model, global_guide, x)

    def no_plate(x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([5, 2]).to_event(2), obs=x)

    with pytest.raises(ValueError, match="outside the 'data' plate"):
        inference.importance_log_px(no_plate, lambda x: None, x, num_samples=5)
    with pytest.raises(ValueError, match="no sample site inside"):
        traces.plate_structure(lambda x: None, lambda x: None, x)
    with pytest.raises(TypeError, match="model: expected a Pyro model"):
        inference.elbo_per_point(3, global_guide, x)
    with pytest.raises(TypeError, match="proposal"):
        inference.importance_log_px(global_model, global_guide, x, proposal="laplace")


def test_a_guide_whose_sites_are_not_the_models_latents_is_refused_naming_them():
    x = torch.randn(6, 2)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, s.unsqueeze(-1)).to_event(1), obs=x)

    def guide(*names):
        def fn(x):
            with pyro.plate("data", x.shape[0]):
                for name in names:
                    if name == "s":
                        pyro.sample("s", dist.LogNormal(torch.zeros(x.shape[0]), 1.0))
                    else:
                        pyro.sample(name, dist.Normal(torch.zeros(x.shape[0], 2), 1.0)
                                    .to_event(1))
        return fn

    guide_w = guide("w", "s")  # samples "w" where the model has "z"
    guide_z_only = guide("z")  # forgets "s": it would be drawn from its prior on replay
    guide_obs = guide("z", "s", "x")  # also samples the observed site
    good = guide("z", "s")

    with pytest.raises(ValueError, match="guide: .*does not sample the model's latent 'z'; "
                                         "the guide samples 'w', which the model does not"):
        inference.elbo_per_point(model, guide_w, x)
    with pytest.raises(ValueError, match="guide: .*does not sample the model's latent 's'"):
        inference.importance_log_px(model, guide_z_only, x, num_samples=4)
    with pytest.raises(ValueError, match="guide: .*samples 'x', which the model observes"):
        inference.elbo_per_point(model, guide_obs, x)
    assert inference.elbo_per_point(model, good, x).shape == (6,)


def test_a_pyro_style_encoder_returning_loc_and_scale_is_read_as_such():
    # Pyro's VAE example encoders return (loc, exp(log_scale)); the guide reads the pair as a
    # mean and a positive scale, never reinterpreting it through softplus.
    d = 2
    vae = models.GaussianVAE(models.MLP(d, 3, (8,)), priors.gaussian(d), gamma2=10.0)
    scale = torch.tensor([0.3, 0.05])

    class PairEncoder(torch.nn.Module):
        def forward(self, x):
            return x[..., :d] * 0.5, scale.expand(x.shape[:-1] + (d,))

    guide = models.DiagonalGuide(vae, PairEncoder())
    x = torch.randn(4, 3)
    assert_close(guide.covariance(x).diagonal(dim1=-2, dim2=-1), scale.square().expand(4, d),
                 rtol=1e-5)
    assert_close(guide.loc(x), x[:, :d] * 0.5, atol=0)

    class LogScaleEncoder(torch.nn.Module):
        def forward(self, x):
            return x[..., :d], torch.full(x.shape[:-1] + (d,), -1.0)

    with pytest.raises(ValueError, match="not positive"):
        models.DiagonalGuide(vae, LogScaleEncoder()).loc(x)


def test_bernoulli_vae_on_binary_sprites_trains_and_gets_per_point_estimates():
    ds = sprites.binary_sprites(300, size=12, seed=0)
    D = ds.train.x.shape[1]
    vae = models.BernoulliVAE(models.MLP(3, D, (32,), seed=0), priors.gaussian(3))
    guide = models.DiagonalGuide(vae, models.MLP(D, 6, (32,), seed=1))
    e0 = inference.elbo_per_point(vae, guide, ds.val.x, num_particles=5).mean()
    inference.fit(vae, guide, ds.train, ds.val, epochs=5, batch_size=30, lr=1e-2, seed=0)
    e1 = inference.elbo_per_point(vae, guide, ds.val.x, num_particles=5)
    assert e1.shape == (len(ds.val),) and float(e1.mean()) > float(e0) + 5
    res = inference.importance_log_px(vae, guide, ds.test.x, num_samples=50, khat_warn=1.0)
    assert bool((res.log_px >= res.elbo - 1e-6).all())  # log-mean-exp >= mean, per point
    assert bool(torch.isfinite(res.khat).any())
    with pytest.warns(RuntimeWarning, match="flagged unreliable"):  # K = 50, 5 epochs
        m = inference.evaluate(vae, guide, ds.test.x, ds.test.z,
                               config=inference.EvalConfig(is_samples=50))
    assert float(m["flagged_frac"][0]) > 0.1
    assert m["log_px_is"].shape == (1,) and float(m["gap"][0]) >= -1e-6
    # the Laplace proposal needs only the log joint and its Hessian at the mode: it works here
    lap = inference.importance_log_px(vae, guide, ds.test.x, num_samples=50, khat_warn=1.0,
                                      proposal="laplace")
    assert bool(lap.mode_found.all()) and bool(torch.isfinite(lap.log_px).all())
    with pytest.raises(TypeError, match="needs a GaussianVAE"):  # the theory's predictions
        inference.gap_report(vae, guide, ds.test.x)


def test_binary_sprites_are_binary_seeded_and_carry_their_factors():
    a, b = sprites.binary_sprites(200, seed=3), sprites.binary_sprites(200, seed=3)
    assert torch.equal(a.train.x, b.train.x)
    x = a.train.x.reshape(-1, 28, 28)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    cols = torch.arange(28) + 0.5
    mass = x.sum((1, 2)).clamp(min=1)
    cx = (x.sum(1) * cols).sum(1) / mass
    assert float(torch.corrcoef(torch.stack([cx, a.train.z[:, 0]]))[0, 1]) > 0.9


@pytest.mark.parametrize("family", ["diagonal", "isotropic", "full"])
def test_gap_report_on_a_tall_decoder_matches_the_closed_form(family):
    # D = 5 > d = 2: c_IMA and c_conf through J^T J, no c_row, and the linearized prediction is
    # exact for a linear decoder
    from conftest import oracle_pair

    from pyro_ima.linear_gaussian import LinearGaussian
    lg = LinearGaussian.random(2, gamma2=1e3, seed=4, data_dim=5)
    vae, guide = oracle_pair(lg, family)
    x = lg.sample(20)
    rep = inference.gap_report(vae, guide, x, num_samples=200, elbo_particles=2000,
                               refine=inference.RefineConfig(steps=0))
    cls = models.GUIDES[family]
    assert "c_row" not in rep
    assert_close(rep["predicted_gap"], lg.gap(cls).expand(20), atol=1e-3)
    assert_close(rep["log_px_is"], lg.log_px(x), atol=5e-3)
    assert abs(float((rep["log_px_is"] - rep["elbo"]).mean() - lg.gap(cls))) < 0.05
    J = lg.W
    assert_close(rep["c_ima"], torch.full((20,), float(0.5 * (
        J.square().sum(0).log().sum() - torch.logdet(J.T @ J)))), atol=1e-4)
