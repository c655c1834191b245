"""Shared test helpers: closed-form linear Gaussian VAE oracles and one assert_close."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import settings
from torch import nn

from pyro_ima import mixings, models, priors

# Property tests draw the same examples on every run, so CI cannot go red on a lucky draw;
# `--hypothesis-seed` or a local profile can still explore new ones.
settings.register_profile("repeatable", derandomize=True)
settings.load_profile("repeatable")


def assert_close(actual, expected, *, atol=0.0, rtol=0.0, msg=""):
    """Tolerances are always stated by the caller."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=msg or None)


class LinearGaussian:
    """``x = W z + e``, ``z ~ N(0, I)``, ``e ~ N(0, gamma^-2 I)``: everything in closed form."""

    def __init__(self, d=3, gamma2=1e3, seed=0, singular_values=None):
        g = torch.Generator().manual_seed(seed)
        self.d, self.gamma2 = d, gamma2
        self.W = torch.randn(d, d, generator=g, dtype=torch.float64)
        if singular_values is not None:  # a well-conditioned W = U diag(s) V^T
            u, _, vt = torch.linalg.svd(self.W)
            self.W = u @ torch.diag(torch.as_tensor(singular_values).double()) @ vt
        self.P = torch.eye(d, dtype=torch.float64) + gamma2 * self.W.T @ self.W

    def log_px(self, x):
        cov = self.W @ self.W.T + torch.eye(self.d, dtype=torch.float64) / self.gamma2
        return torch.distributions.MultivariateNormal(torch.zeros(self.d, dtype=torch.float64),
                                                      cov).log_prob(x.double())

    def post_mean(self, x):
        return torch.linalg.solve(self.P, self.gamma2 * self.W.T @ x.double().T).T

    def optimal_cov(self, family):
        P, d = self.P, self.d
        if family == "diagonal":
            return torch.diag(1 / torch.diagonal(P))
        if family == "isotropic":
            return torch.eye(d, dtype=torch.float64) * d / torch.trace(P)
        return torch.linalg.inv(P)

    def gap(self, family):
        P, d = self.P, self.d
        logdet = torch.logdet(P)
        if family == "diagonal":
            return 0.5 * (torch.log(torch.diagonal(P)).sum() - logdet)
        if family == "isotropic":
            return 0.5 * (d * torch.log(torch.trace(P) / d) - logdet)
        return torch.zeros((), dtype=torch.float64)

    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.d, generator=g, dtype=torch.float64)
        e = torch.randn(n, self.d, generator=g, dtype=torch.float64) / math.sqrt(self.gamma2)
        return (z @ self.W.T + e).float()

    def mixing(self):
        return mixings.Linear(self.W.float())

    def vae(self, **kw):
        return models.GaussianVAE(self.mixing(), priors.gaussian(self.d), self.gamma2, **kw)


def inverse_softplus(y):
    return y + torch.log(-torch.expm1(-y))


class OracleEncoder(nn.Module):
    """Outputs the exact posterior mean and the family's closed-form optimal scale params."""

    def __init__(self, lg: LinearGaussian, family: str):
        super().__init__()
        self.lg, self.family = lg, family
        cov = lg.optimal_cov(family)
        if family == "diagonal":
            raw = inverse_softplus(torch.diagonal(cov).sqrt())
        elif family == "isotropic":
            raw = inverse_softplus(cov[0, 0].sqrt()).reshape(1)
        else:
            L = torch.linalg.cholesky(cov)
            L = L.clone()
            L.diagonal().copy_(inverse_softplus(L.diagonal()))
            rows, cols = torch.tril_indices(lg.d, lg.d)
            raw = L[rows, cols]
        self.register_buffer("raw", raw.float())

    def forward(self, x):
        loc = self.lg.post_mean(x.reshape(-1, self.lg.d)).float().reshape(x.shape[:-1] + (-1,))
        return torch.cat([loc, self.raw.expand(x.shape[:-1] + self.raw.shape)], -1)


@pytest.fixture
def linear_gaussian():
    return LinearGaussian()


FAMILIES = ["diagonal", "isotropic", "full"]
