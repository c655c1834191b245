"""Guide densities: normalized, matching independent formulas, inside the prior's support."""


import numpy as np
import pytest
import torch
from conftest import FAMILIES, assert_close
from scipy import stats

from pyro_ima import models, priors


def _guide(family, prior, seed=0):
    d = prior.event_shape[0]
    vae = models.GaussianVAE(models.MLP(d, d, seed=seed), prior, gamma2=10.0)
    cls = models.GUIDES[family]
    return cls(vae, models.MLP(d, cls.num_outputs(d), hidden=(16,), seed=seed + 1))


def _grid(low, high, n=400):
    t = torch.linspace(low, high, n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    return zz, (t[1] - t[0]) ** 2


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_gaussian_guide_density_integrates_to_one_and_matches_scipy(family):
    torch.set_default_dtype(torch.float64)
    try:
        guide = _guide(family, priors.gaussian(2))
        x = torch.tensor([[0.3, -0.2]])
        q = guide.posterior(x)
        loc, cov = guide.loc(x)[0], guide.covariance(x)[0]
        sd = float(cov.diagonal().max().sqrt())
        zz, cell = _grid(-8 * sd, 8 * sd)
        zz = zz + loc
        lp = q.log_prob(zz.unsqueeze(1)).squeeze(1)  # (G,) with batch (1,)
        assert_close(lp.exp().sum() * cell, 1.0, atol=2e-3)
        ref = stats.multivariate_normal(loc.detach().numpy(), cov.detach().numpy()).logpdf(
            zz.detach().numpy())
        assert_close(lp.detach(), ref, atol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("low,high", [(0.0, 1.0), (-2.0, 3.0)])
@torch.no_grad()
def test_bounded_guide_is_normalized_on_the_box_and_stays_inside(family, low, high):
    torch.set_default_dtype(torch.float64)
    try:
        guide = _guide(family, priors.uniform(2, low, high))
        x = torch.tensor([[0.1, 0.4]])
        q = guide.posterior(x)
        eps = 1e-9
        zz, cell = _grid(low + eps, high - eps, n=600)
        lp = q.log_prob(zz.unsqueeze(1)).squeeze(1)
        assert_close(lp.exp().sum() * cell, 1.0, atol=5e-3)
        # Independent formula: u = logit((z - a) / (b - a)) is N(loc, cov), and
        # log q(z) = log N(u) + log|du/dz| with du/dz = (b-a) / ((z-a)(b-z)) per coordinate.
        loc, cov = guide.loc(x)[0].detach().numpy(), guide.covariance(x)[0].detach().numpy()
        z = zz.numpy()
        u = np.log(z - low) - np.log(high - z)
        ref = stats.multivariate_normal(loc, cov).logpdf(u) + np.sum(
            np.log(high - low) - np.log(z - low) - np.log(high - z), -1)
        assert_close(lp.detach(), ref, atol=1e-7)
        s = q.sample((2000,))
        assert bool(((s > low) & (s < high)).all())
    finally:
        torch.set_default_dtype(torch.float32)


def test_provided_noise_gives_the_reparameterized_sample():
    guide = _guide("full", priors.gaussian(3))
    x = torch.randn(5, 3)
    eps = torch.randn(5, 3)
    z = guide.posterior(x, eps=eps).rsample()
    expected = guide.loc(x) + (guide.scale_tril(x) @ eps.unsqueeze(-1)).squeeze(-1)
    assert_close(z.detach(), expected.detach(), atol=1e-6)


def test_init_scale_sets_the_initial_standard_deviation():
    vae = models.GaussianVAE(models.MLP(2, 2), priors.gaussian(2), gamma2=1e4)
    for cls in models.GUIDES.values():
        enc = models.MLP(2, cls.num_outputs(2), seed=0)
        torch.nn.init.zeros_(enc.layers[-1].weight)
        torch.nn.init.zeros_(enc.layers[-1].bias)
        g = cls(vae, enc, init_scale=0.01)
        cov = g.covariance(torch.randn(4, 2)).detach()
        assert_close(cov.diagonal(dim1=-2, dim2=-1).sqrt(), torch.full((4, 2), 0.01), rtol=1e-4)
        if cls.family == "full":  # off-diagonals of L stay at softplus-free raw 0
            assert float(cov[..., 0, 1].abs().max()) < 1e-8


def test_init_scale_per_replica():
    R = 3
    vae = models.GaussianVAE(models.MLP(2, 2, replicas=R), priors.gaussian(2), gamma2=1e4,
                             replicas=R)
    want = torch.tensor([0.3, 0.01, 0.002])
    for cls in models.GUIDES.values():
        enc = models.MLP(2, cls.num_outputs(2), replicas=R, seed=[0, 1, 2])
        for p in enc.layers[-1].parameters():
            torch.nn.init.zeros_(p)
        g = cls(vae, enc, init_scale=want)
        std = g.covariance(torch.randn(R, 4, 2)).detach().diagonal(dim1=-2, dim2=-1).sqrt()
        assert_close(std, want[:, None, None].expand(R, 4, 2), rtol=1e-4)
        # the per-replica shift is undone by raw_from_scale_tril (used by ELBO* refinement)
        if cls.family != "full":
            raw = g.raw_from_scale_tril(g.scale_tril(torch.randn(R, 4, 2)).detach())
            assert_close(raw, torch.zeros_like(raw), atol=1e-3, rtol=0)


def test_guide_rejects_encoder_with_wrong_output_size():
    vae = models.GaussianVAE(models.MLP(3, 3), priors.gaussian(3), gamma2=1.0)
    with pytest.raises(ValueError, match="encoder: expected 9 outputs"):
        models.FullCovGuide(vae, models.MLP(3, 6))
    assert models.FullCovGuide.num_outputs(3) == 3 + 6 == 9
    assert models.IsotropicGuide.num_outputs(3) == 4
    assert models.DiagonalGuide.num_outputs(3) == 6
