"""Closed-form oracles: the linear Gaussian VAE (THEORY.md, appendix 10.1)."""

import pyro.optim
import pytest
import torch
from conftest import FAMILIES, OracleEncoder, assert_close, linear_gaussian

from pyro_ima import inference, models
from pyro_ima.linear_gaussian import LinearGaussian


@pytest.mark.parametrize("family", FAMILIES)
def test_elbo_at_closed_form_optimum_equals_logp_minus_gap(family):
    lg = linear_gaussian(d=3, gamma2=1e3, seed=0)
    vae = lg.vae()
    guide = models.GUIDES[family](vae, OracleEncoder(lg, family))
    x = lg.sample(8)
    elbo = inference.elbo_per_point(vae, guide, x, num_particles=4000, seed=0)
    expected = lg.log_px(x) - lg.gap(models.GUIDES[family])
    # MC std of the mean over 4000 particles is < 0.02 nats here; the full family is exact
    # (every log-weight equals log p(x)), up to float32 rounding.
    atol = 2e-3 if family == "full" else 0.05
    assert_close(elbo, expected, atol=atol)
    if family != "full":  # the gaps are far from zero, so the check above is not vacuous
        assert lg.gap(models.GUIDES[family]) > 0.5


def test_closed_form_gaps_order_and_zero_cases():
    # THEORY.md quotes, for its own random W, diagonal 1.19186 and isotropic 1.22731; ours
    # uses a different W, so check the ordering and zero cases that hold for every W instead.
    diag, iso = models.DiagonalGuide, models.IsotropicGuide
    lg = linear_gaussian(d=3, gamma2=1e3, seed=0)
    assert lg.gap(iso) >= lg.gap(diag) > 0
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(1)))
    lg = LinearGaussian(q * torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), 1e3)
    assert abs(float(lg.gap(diag))) < 1e-9  # column-orthogonal: Corollary 1
    assert lg.gap(iso) > 0.1  # unequal column norms: not conformal
    lg = LinearGaussian(2.5 * q, 1e3)  # conformal: the isotropic gap closes too
    assert abs(float(lg.gap(iso))) < 1e-9


def test_only_the_diagonal_family_prefers_one_rotation_of_the_latents():
    # x = W R z has the same distribution for every rotation R (isotropic prior): log p is the
    # same, and so are the optimal isotropic and full ELBOs (tr and det of R^T M R), while the
    # diagonal one is best at the R giving W R orthogonal columns (the IMA bias). Study 6B
    # rests on this: with Gaussian sources only the diagonal family can pick the true axes.
    diag, iso, full = models.DiagonalGuide, models.IsotropicGuide, models.FullCovGuide
    lg = linear_gaussian(d=3, gamma2=1e3, seed=0)
    g = torch.Generator().manual_seed(2)
    R, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=g))
    _, _, Vh = torch.linalg.svd(lg.W, full_matrices=False)
    x = lg.sample(5)
    for rot in (R, Vh.T):  # a random rotation; the one making the columns orthogonal
        other = LinearGaussian(lg.W @ rot, lg.gamma2)
        assert_close(other.log_px(x), lg.log_px(x), atol=1e-9)
        for family in (iso, full):
            assert abs(float(other.gap(family) - lg.gap(family))) < 1e-10
    assert abs(float(LinearGaussian(lg.W @ R, lg.gamma2).gap(diag) - lg.gap(diag))) > 0.05
    assert abs(float(LinearGaussian(lg.W @ Vh.T, lg.gamma2).gap(diag))) < 1e-9 < lg.gap(diag)


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_reaches_closed_form_optimum(family):
    # A well-conditioned W (singular values 0.5, 1, 2; cond(W)^4 sets how hard the mean is for
    # Adam) whose columns are far from orthogonal: closed-form gaps 0.67 / 0.82 / 0. At
    # gamma2 = 1e2 SGD reaches the optimum in 60 epochs; at 1e3 the full family's strongly
    # correlated posterior needs ~3x more (measured: variances 0.7-1.1x after 60 epochs).
    lg = linear_gaussian(d=3, gamma2=1e2, seed=0, singular_values=[0.5, 1.0, 2.0])
    vae = lg.vae()
    enc = models.MLP(3, models.GUIDES[family].num_outputs(3), hidden=(), seed=0)  # linear
    guide = models.GUIDES[family](vae, enc, init_scale=0.1)
    x = lg.sample(2048, seed=1)
    xv = lg.sample(512, seed=2)
    optim = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 3e-2},
                                      "gamma": 0.03 ** (1 / 60)})
    inference.fit(vae, guide, x, xv, epochs=60, batch_size=64, optim=optim, seed=0)
    with torch.no_grad():
        cov = guide.covariance(xv[:1])[0].double()
        loc = guide.loc(xv).double()
    opt = lg.optimal_covariance(models.GUIDES[family])
    # Variances within 12% of the closed form, means within 0.25 posterior std.
    assert_close(torch.diagonal(cov), torch.diagonal(opt), rtol=0.12)
    if family == "full":
        corr = cov / torch.outer(cov.diagonal().sqrt(), cov.diagonal().sqrt())
        ocorr = opt / torch.outer(opt.diagonal().sqrt(), opt.diagonal().sqrt())
        assert_close(corr, ocorr, atol=0.05)
    err = (loc - lg.posterior_mean(xv)) / torch.diagonal(lg.P.inverse()).sqrt()
    assert float(err.abs().mean()) < 0.25  # costs < 0.1 nats of ELBO
    elbo = inference.elbo_per_point(vae, guide, xv, num_particles=200, seed=3).double()
    expected = lg.log_px(xv) - lg.gap(models.GUIDES[family])
    assert abs(float((elbo - expected).mean())) < 0.05
    if family != "full":
        # far from the full family's 0: the check discriminates
        assert lg.gap(models.GUIDES[family]) > 0.6


def test_noise_scales_tau_whiten_the_model():
    # x = W z + e, e ~ N(0, gamma^-2 diag(tau^2)) is x' = x / tau under W' = diag(1/tau) W with
    # unit noise: log p moves by -sum log tau, and every family's gap is unchanged.
    from pyro_ima.linear_gaussian import optimal_tau  # noqa: F401  (public)
    g = torch.Generator().manual_seed(4)
    W = torch.randn(3, 3, generator=g, dtype=torch.float64)
    tau = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    lg, white = LinearGaussian(W, 1e2, tau=tau), LinearGaussian(W / tau[:, None], 1e2)
    x = lg.sample(6)
    assert_close(lg.log_px(x), white.log_px(x / tau) - tau.log().sum(), atol=1e-10)
    for family in (models.DiagonalGuide, models.IsotropicGuide, models.FullCovGuide):
        assert_close(lg.gap(family), white.gap(family), atol=1e-10)
    assert float(lg.gap(models.IsotropicGuide)) > 0.1
    # E[log p(x)] under the model's own data is minus its entropy
    ent = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64),
                                                 lg.cov_x).entropy()
    assert_close(lg.expected_log_px(), -ent, atol=1e-10)


def test_optimal_tau_moves_the_isotropic_penalty_to_the_encoder_rows():
    # THEORY.md's third conjecture, exactly: learned per-dimension noise with an isotropic
    # encoder leaves the row contrast of W (c_row) as the gap in the limit, and none for
    # orthogonal rows, where tau* is the row norms (geometric mean 1).
    from pyro_ima.linear_gaussian import optimal_tau
    from pyro_ima.metrics import conformal_contrast, row_contrast
    W = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tau, gap = optimal_tau(W, 1e8, models.IsotropicGuide)
    assert abs(gap - float(row_contrast(W))) < 1e-3
    assert gap < float(conformal_contrast(W)) - 0.1  # learned tau beats isotropic noise
    q, _ = torch.linalg.qr(W)
    Wr = torch.diag(torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)) @ q
    tau, gap = optimal_tau(Wr, 1e3, models.IsotropicGuide)
    norms = Wr.norm(dim=1)
    assert abs(gap) < 1e-8
    assert_close(tau, norms / norms.log().mean().exp(), atol=1e-5)


def test_a_learned_gaussian_prior_trains_to_its_closed_form_optimum():
    # For a fixed guide q(z | x_i) = N(m_i, diag v_i) the ELBO depends on a N(mu, diag s^2)
    # prior only through sum_i E_q log p(z), which is largest at mu = mean_i m_i and
    # s^2 = mean_i [(m_i - mu)^2 + v_i]. The oracle guide and the decoder are fixed (buffers
    # only), so SVI trains the prior alone; the sources are drawn off the N(0, I) it starts at.
    lg = linear_gaussian(d=2, gamma2=100.0, seed=0)
    g = torch.Generator().manual_seed(3)
    z = torch.tensor([1.0, -0.5]) + torch.tensor([0.5, 2.0]) * torch.randn(600, 2, generator=g)
    x = (z.double() @ lg.W.T + torch.randn(600, 2, generator=g).double() / 10.0).float()
    vae = lg.vae(replicas=2, learn_prior=True)
    guide = models.DiagonalGuide(vae, OracleEncoder(lg, "diagonal"))
    assert list(inference.trainable_parameters(vae, guide)) == [
        "model.learned_prior.raw_loc", "model.learned_prior.raw_scale"]
    # full batches: the gradient's noise is the guide's draws only; no validation set, so the
    # last state is kept (not the best on other points)
    fit = inference.fit(vae, guide, x, epochs=300, batch_size=600, lr=0.05, lr_end=1e-3,
                        seed=[0, 1])
    assert not bool(fit.failed.any())
    with torch.no_grad():
        xr = vae.as_replica_batch(x)
        m = guide.loc(xr)  # (R, N, d); the same for both replicas
        v = torch.diagonal(guide.covariance(xr), dim1=-2, dim2=-1)
    mu = m.mean(1)
    s = ((m - mu[:, None]).square() + v).mean(1).sqrt()
    learned = vae.learned_prior.values()
    assert_close(learned["loc"], mu, atol=0.01)
    assert_close(learned["scale"], s, atol=0.01)
    # far from the N(0, I) it started at, by much more than the tolerance
    assert float(mu.abs().min()) > 0.3 and float((s - 1).abs().max()) > 0.4
