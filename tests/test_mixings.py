"""Generic properties of every mixing: inverse, log|det J| against autograd, shapes, seeds."""

import math

import pytest
import torch
from conftest import assert_close
from torch.distributions import ComposeTransform

from pyro_ima import metrics, mixings, priors

torch.set_default_dtype(torch.float32)


def _instances():
    return [
        ("linear-orthogonal", lambda s: mixings.Linear.orthogonal(3, seed=s), priors.gaussian(3)),
        ("linear-colorth", lambda s: mixings.Linear.column_orthogonal(4, seed=s),
         priors.gaussian(4)),
        ("linear-general", lambda s: mixings.Linear(
            torch.randn(3, 3, generator=torch.Generator().manual_seed(s)) + 2 * torch.eye(3)),
         priors.gaussian(3)),
        ("moebius-3", lambda s: mixings.Moebius(3, seed=s), priors.uniform(3)),
        ("moebius-2-box", lambda s: mixings.Moebius(2, seed=s, box=(-1.0, 2.0), alpha=2.0),
         priors.uniform(2, -1.0, 2.0)),
        ("smooth-leaky-mlp", lambda s: mixings.SmoothLeakyMLP(3, seed=s), priors.gaussian(3)),
        ("triangular-mlp", lambda s: mixings.TriangularMLP(2, seed=s), priors.gaussian(2)),
        ("orthogonal-mlp", lambda s: mixings.OrthogonalMLP(3, seed=s), priors.gaussian(3)),
        ("volume-preserving", lambda s: mixings.VolumePreservingLinear.with_contrast(
            1.0, 3, seed=s), priors.gaussian(3)),
        ("leaky-linear", lambda s: mixings.LeakyLinear.with_row_contrast(1.5, 3, seed=s),
         priors.logistic(3)),
        ("moebius-then-linear", lambda s: ComposeTransform([
            mixings.Moebius(3, seed=s),
            mixings.VolumePreservingLinear.with_contrast(0.5, 3, seed=s)]), priors.uniform(3)),
    ]


def _double(f):
    """A float64 copy of a mixing or a composition of mixings."""
    parts = getattr(f, "parts", None)
    return ComposeTransform([p.double() for p in parts]) if parts else f.double()


INSTANCES = _instances()
IDS = [i[0] for i in INSTANCES]


@pytest.mark.parametrize("name,make,prior", INSTANCES, ids=IDS)
def test_inverse_round_trip(name, make, prior):
    f = make(0)
    z = prior.sample((256,))
    assert_close(f.inv(f(z)), z, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,make,prior", INSTANCES, ids=IDS)
def test_log_abs_det_matches_autograd(name, make, prior):
    f = _double(make(0))  # evaluate the map itself in float64
    z = prior.sample((16,)).double()
    jac = torch.func.vmap(torch.func.jacrev(f))(z)
    # Parameters were drawn in float32: 1e-6 is their rounding, a wrong formula is off by O(1).
    assert_close(f.log_abs_det_jacobian(z, f(z)), torch.linalg.slogdet(jac)[1], atol=1e-6)


@pytest.mark.parametrize("name,make,prior", INSTANCES, ids=IDS)
def test_batch_shapes(name, make, prior):
    f = make(0)
    d = prior.event_shape[0]
    z = prior.sample((2, 5))
    assert f(z).shape == (2, 5, d)
    assert f.inv(f(z)).shape == (2, 5, d)
    assert f.log_abs_det_jacobian(z, f(z)).shape == (2, 5)
    with pytest.raises(ValueError, match="z: expected last dim"):
        f(torch.zeros(4, d + 1))


@pytest.mark.parametrize("name,make,prior", INSTANCES, ids=IDS)
def test_seed_determinism(name, make, prior):
    z = prior.sample((8,))
    assert torch.equal(make(3)(z), make(3)(z))
    if not name.startswith("linear-general"):
        assert not torch.allclose(make(3)(z), make(4)(z))
    if not isinstance(make(0), ComposeTransform):
        assert type(make(0)).__name__ in repr(make(0))


def test_moebius_jacobian_is_a_scaled_orthogonal_matrix():
    f = mixings.Moebius(3, seed=0)
    z = priors.uniform(3).sample((32,)).double()
    f.weight, f.pole, f.shift = f.weight.double(), f.pole.double(), f.shift.double()
    J = torch.func.vmap(torch.func.jacrev(f))(z)
    JtJ = J.transpose(-1, -2) @ J
    s2 = JtJ.diagonal(dim1=-2, dim2=-1).mean(-1)
    eye = torch.eye(3, dtype=torch.float64)
    assert_close(JtJ / s2[:, None, None], eye.expand_as(JtJ), atol=1e-6)  # float32 W


def test_moebius_pole_must_lie_outside_the_box():
    with pytest.raises(ValueError, match="pole"):
        mixings.Moebius(2, pole=[0.5, 0.5])
    with pytest.raises(ValueError, match="weight: expected an invertible"):
        mixings.Linear(torch.zeros(2, 2))


def _contrasts(f, prior, n=400):
    z = prior.sample((n,)).double()
    J = metrics.jacobian(_double(f), z)
    return metrics.ima_contrast(J), metrics.conformal_contrast(J)


def test_contrasts_per_mixing():
    ima, conf = _contrasts(mixings.Moebius(3, seed=1), priors.uniform(3))
    assert float(ima.abs().max()) < 1e-9 and float(conf.abs().max()) < 1e-9
    ima, conf = _contrasts(mixings.OrthogonalMLP(3, seed=1), priors.gaussian(3))
    assert float(ima.abs().max()) < 1e-9 and float(conf.mean()) > 0.1
    ima, _ = _contrasts(mixings.SmoothLeakyMLP(3, seed=1), priors.gaussian(3))
    assert float(ima.mean()) > 0.01
    ima, _ = _contrasts(mixings.TriangularMLP(2, seed=0), priors.gaussian(2), n=4000)
    assert abs(float(ima.mean()) - 1.75) < 0.1  # the value the docstring reports


@pytest.mark.parametrize("target", [0.0, 0.7, 3.0])
def test_leaky_linear_row_contrast_is_the_target_everywhere(target):
    f = _double(mixings.LeakyLinear.with_row_contrast(target, 3, seed=2))
    z = 3 * priors.logistic(3).sample((200,)).double()
    J = metrics.jacobian(f, z)
    assert_close(metrics.row_contrast(J), torch.full((200,), target, dtype=torch.float64),
                 atol=1e-6, rtol=0)
    if target > 0:  # the columns are not orthogonal: the mixing itself is not IMA
        assert float(metrics.ima_contrast(J).mean()) > 0.05


@pytest.mark.parametrize("dim", [2, 3, 4, 5])
@pytest.mark.parametrize("target", [0.0, 0.4, 2.0, 6.7])
def test_with_contrast_hits_target_with_unit_determinant(dim, target):
    f = mixings.VolumePreservingLinear.with_contrast(target, dim, seed=dim)
    W = f.weight64
    assert abs(float(metrics.ima_contrast(W)) - target) < 1e-6
    assert abs(float(torch.linalg.det(W).abs()) - 1.0) < 1e-6
    assert abs(float(metrics.ima_contrast(f.weight.double())) - target) < 1e-4  # float32 copy
    assert abs(float(f.log_abs_det_jacobian(torch.zeros(dim), None))) < 1e-6


def test_inverse_smooth_leaky_relu_round_trip():
    x = torch.linspace(-30, 30, 1001, dtype=torch.float64)
    y = torch.lerp(torch.nn.functional.softplus(x), x, 0.2)
    assert_close(mixings.inverse_smooth_leaky_relu(y, 0.2, tol=1e-12), x, atol=1e-9)


def test_triangular_with_contrast_hits_target_and_inverts_in_float64():
    f = mixings.TriangularMLP.with_contrast(7.07, 2, seed=0).to(dtype=torch.float64)
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(12345)).double()
    J = metrics.jacobian(f, z)
    assert abs(float(metrics.ima_contrast(J).mean()) - 7.07) < 1e-6
    zz = torch.randn(500, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert_close(f.inv(f(zz)), zz, atol=1e-6)
    # the output scale moves no contrast and adds d log a to log|det J|
    g = mixings.TriangularMLP.with_contrast(7.07, 2, seed=0, scale=100.0).to(dtype=torch.float64)
    assert_close(metrics.ima_contrast(metrics.jacobian(g, zz)),
                 metrics.ima_contrast(metrics.jacobian(f, zz)), rtol=1e-5)  # float32 weights
    assert_close(g.log_abs_det_jacobian(zz, None) - f.log_abs_det_jacobian(zz, None),
                 torch.full((500,), 2 * math.log(100.0), dtype=torch.float64), atol=1e-5)
    with pytest.raises(ValueError, match="target"):
        mixings.TriangularMLP.with_contrast(1e6, 2)
