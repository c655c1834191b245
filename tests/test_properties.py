"""Property tests (hypothesis) for the pure functions."""

import numpy as np
import torch
from conftest import OracleEncoder, linear_gaussian
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_ima import inference, metrics, models

seeds = st.integers(0, 10_000)


def _matrix(d, seed):
    return torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 5), seeds)
def test_contrasts_nonnegative_and_invariant(d, seed):
    J = _matrix(d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    scales = torch.exp(torch.randn(d, generator=g, dtype=torch.float64))
    perm = torch.randperm(d, generator=g)
    ima = metrics.ima_contrast(J)
    assert ima >= -1e-9 and metrics.conformal_contrast(J) >= -1e-9
    assert metrics.row_contrast(J) >= -1e-9
    # c_IMA: invariant to scaling and permuting columns; c_row: to scaling/permuting rows
    assert torch.isclose(metrics.ima_contrast(J[:, perm] * scales), ima, atol=1e-8)
    assert torch.isclose(metrics.row_contrast(J[perm] * scales[:, None]),
                         metrics.row_contrast(J), atol=1e-8)
    # c_conf: invariant to a common scale and to orthogonal maps on either side
    q, _ = torch.linalg.qr(_matrix(d, seed + 2))
    assert torch.isclose(metrics.conformal_contrast(3.0 * q @ J), metrics.conformal_contrast(J),
                         atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(50, 200), seeds)
def test_mcc_invariant_to_permutation_and_rescaling(d, n, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    est = z @ rng.normal(size=(d, d)) + rng.normal(size=(n, d))
    base = metrics.mcc(z, est)
    perm = rng.permutation(d)
    scale = rng.uniform(0.1, 10, size=d) * rng.choice([-1, 1], size=d)
    moved = metrics.mcc(z, est[:, perm] * scale + rng.normal(size=d))
    assert abs(base.score - moved.score) < 1e-9
    assert 0 <= base.score <= 1 + 1e-12
    mono = metrics.mcc(z, np.exp(est[:, perm] / est.std(0)[perm]), "spearman")
    assert abs(mono.score - metrics.mcc(z, est, "spearman").score) < 1e-9


@settings(max_examples=10, deadline=None)
@given(seeds, st.sampled_from([1, 5, 50]))
def test_is_estimate_never_above_the_truth_in_expectation(seed, k):
    lg = linear_gaussian(d=2, gamma2=30.0, seed=seed % 50)
    vae = lg.vae()
    guide = models.DiagonalGuide(vae, OracleEncoder(lg, "diagonal"))
    x = lg.sample(20, seed=seed)
    res = inference.importance_log_px(vae, guide, x, num_samples=k, seed=seed, khat_warn=1.0)
    # Jensen: E[log p_K] <= log p. The mean over 20 points carries Monte Carlo noise (standard
    # error ~0.05-0.08 here), so the bound is three standard errors above 0; a bias such as a
    # missing -log K (+1.6 for K = 5) would still fail it.
    diff = res.log_px - lg.log_px(x)
    assert float(diff.mean()) < 3 * float(diff.std()) / len(diff) ** 0.5
