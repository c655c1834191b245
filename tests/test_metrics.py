"""Contrasts, Jacobians and MCC against closed forms and extreme cases."""

import numpy as np
import pytest
import torch
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_ima import metrics, mixings, models, priors


def _orth(d, seed=0):
    return mixings.random_orthogonal(d, torch.Generator().manual_seed(seed)).double()


def test_contrasts_zero_cases_and_shear():
    O = _orth(3)
    S = O * torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)  # column-scaled orthogonal
    shear = torch.tensor([[1.0, 0.9, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    J = torch.stack([O, 2.5 * O, S, shear])
    ima, conf = metrics.ima_contrast(J), metrics.conformal_contrast(J)
    assert_close(ima[:3], torch.zeros(3), atol=1e-12)
    assert_close(conf[:2], torch.zeros(2), atol=1e-12)
    assert conf[2] > 0.3  # unequal column norms: not conformal
    assert ima[3] > 0.1 and conf[3] > ima[3]
    assert_close(metrics.row_contrast(O), 0.0, atol=1e-12)
    assert metrics.row_contrast(S) > 0.1  # rows of O diag(s) are not orthogonal in general


def test_linear_map_contrasts_match_closed_forms():
    W = torch.tensor([[1.0, 0.5, 0.2], [0.3, 2.0, -0.4], [0.0, 0.7, 1.5]], dtype=torch.float64)
    norms = torch.sqrt((W**2).sum(0))
    det = torch.det(W).abs()
    expected_ima = torch.log(norms).sum() - torch.log(det)
    expected_conf = 1.5 * torch.log((W**2).sum() / 3) - torch.log(det)
    expected_row = torch.log(torch.sqrt((W**2).sum(1))).sum() - torch.log(det)
    assert_close(metrics.ima_contrast(W), expected_ima, atol=1e-12)
    assert_close(metrics.conformal_contrast(W), expected_conf, atol=1e-12)
    assert_close(metrics.row_contrast(W), expected_row, atol=1e-12)
    assert_close(metrics.diagonality(W.T @ W), expected_ima, atol=1e-10)
    assert_close(metrics.diagonality(W @ W.T), expected_row, atol=1e-10)
    # d = 2: the row contrast equals the encoder's (inverse's) IMA contrast
    W2 = W[:2, :2]
    assert_close(metrics.row_contrast(W2), metrics.ima_contrast(torch.linalg.inv(W2)),
                 atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5), st.integers(0, 10_000))
def test_conformal_at_least_ima_and_both_nonnegative(d, seed):
    J = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ima, conf = metrics.ima_contrast(J), metrics.conformal_contrast(J)
    assert ima >= -1e-10 and conf >= ima - 1e-10


def test_singular_jacobian_gives_inf_with_warning_not_nan():
    J = torch.tensor([[[1.0, 2.0], [2.0, 4.0]], [[0.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    for fn in (metrics.ima_contrast, metrics.conformal_contrast, metrics.row_contrast):
        with pytest.warns(RuntimeWarning, match="singular"):
            c = fn(J)
        assert torch.isinf(c).all() and (c > 0).all()


def test_non_square_jacobians():
    with pytest.raises(ValueError, match="J: expected square or tall"):
        metrics.ima_contrast(torch.zeros(4, 2, 3))
    with pytest.raises(ValueError, match="J: expected square"):
        metrics.row_contrast(torch.zeros(4, 3, 2))
    # tall: orthogonal columns of any norms give 0, a shear > 0; equals the Gram form D(J^T J)
    q = _orth(5)[:, :3] * torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    assert abs(float(metrics.ima_contrast(q))) < 1e-12
    assert float(metrics.conformal_contrast(q)) > 0.5
    J = torch.randn(6, 3, dtype=torch.float64)
    assert_close(metrics.ima_contrast(J), metrics.diagonality(J.T @ J), atol=1e-10)


def test_moebius_contrasts_are_zero():
    f = mixings.Moebius(3, seed=2)
    z = priors.uniform(3).sample((500,))
    J = metrics.jacobian(f, z).double()
    assert float(metrics.ima_contrast(J).abs().max()) < 1e-5
    assert float(metrics.conformal_contrast(J).abs().max()) < 1e-5


@pytest.mark.parametrize("mode", ["fwd", "rev", "auto"])
def test_jacobian_matches_per_point_autograd(mode):
    net = models.MLP(3, 4, (8, 8), seed=0)
    z = torch.randn(37, 3)
    J = metrics.jacobian(net, z, chunk_size=10, mode=mode)
    ref = torch.stack([torch.autograd.functional.jacobian(net, zi) for zi in z])
    assert J.shape == (37, 4, 3)
    assert_close(J, ref, atol=1e-6)


def test_jacobian_of_replica_batched_network():
    net = models.MLP(2, 2, (8,), replicas=3, seed=[0, 1, 2])
    z = torch.randn(3, 5, 2)
    J = metrics.jacobian(net, z)
    assert J.shape == (3, 5, 2, 2)
    single = models.MLP(2, 2, (8,), seed=1)
    assert_close(J[1], metrics.jacobian(single, z[1]), atol=1e-6)


def test_mcc_extremes():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2000, 3))
    perm = z[:, [2, 0, 1]] * np.array([3.0, -0.5, 2.0]) + 1.0
    res = metrics.mcc(z, perm)
    assert res.score == pytest.approx(1.0, abs=1e-12)
    assert list(res.matching) == [1, 2, 0]
    mono = np.stack([np.exp(z[:, 1]), z[:, 0] ** 3, np.tanh(z[:, 2])], 1)
    assert metrics.mcc(z, mono, "spearman").score == pytest.approx(1.0, abs=1e-12)
    assert metrics.mcc(z, mono, "pearson").score < 0.95
    noise = rng.normal(size=(2000, 3))
    assert metrics.mcc(z, noise).score < 0.08
    const = np.concatenate([z[:, :2], np.ones((2000, 1))], 1)
    assert metrics.mcc(z, const).score == pytest.approx(2 / 3, abs=1e-12)


def test_rotation_chance_mcc_matches_the_2d_closed_form():
    # Haar rotations in 2-D: angle t uniform, MCC -> max(|cos t|, |sin t|), mean 2 sqrt(2) / pi
    v = metrics.rotation_chance_mcc(2, rotations=2000, n=4000)
    assert v.mean() == pytest.approx(2 * np.sqrt(2) / np.pi, abs=0.006)
    assert v.min() > 1 / np.sqrt(2) - 0.03 and v.max() <= 1.0
    assert np.all(metrics.rotation_chance_mcc(1, rotations=5, n=100) == pytest.approx(1.0))
    # 3-D against an independent Haar sampler (QR of a Gaussian matrix, signs fixed)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4000, 3))
    ref = []
    for _ in range(1000):
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        ref.append(metrics.mcc(z, z @ (q * np.sign(np.diag(r)))).score)
    v3 = metrics.rotation_chance_mcc(3, rotations=1000, n=4000)
    se = np.hypot(np.std(ref), v3.std()) / np.sqrt(1000)
    assert abs(v3.mean() - np.mean(ref)) < 4 * se and v3.mean() < v.mean() - 0.05
