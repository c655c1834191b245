"""Shared test helpers: the device under test, closed-form oracles and one assert_close."""

from __future__ import annotations

import os

import torch
from hypothesis import settings
from torch import nn

from pyro_ima import models
from pyro_ima.linear_gaussian import LinearGaussian
from pyro_ima.models.guides import softplus_inverse

# Property tests draw the same examples on every run, so CI cannot go red on a lucky draw;
# `--hypothesis-seed` or a local profile can still explore new ones.
settings.register_profile("repeatable", derandomize=True)
settings.load_profile("repeatable")

# The whole suite can run on another device, as Pyro's own tests do with PYRO_DEVICE:
# PYRO_IMA_TEST_DEVICE=cuda python -m pytest. Tensors the tests and the library create without
# an explicit device then land there, so every model, guide and estimator is exercised on it.
DEVICE = torch.device(os.environ.get("PYRO_IMA_TEST_DEVICE", "cpu"))
if DEVICE.type != "cpu":
    torch.set_default_device(DEVICE)


def assert_close(actual, expected, *, atol=0.0, rtol=0.0, msg=""):
    """Tolerances are always stated by the caller."""
    actual = torch.as_tensor(actual, dtype=torch.float64).detach().cpu()
    expected = torch.as_tensor(expected, dtype=torch.float64).detach().cpu()
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=msg or None)


def linear_gaussian(d=3, gamma2=1e3, seed=0, singular_values=None) -> LinearGaussian:
    """A random linear Gaussian VAE (``W`` standard normal, or with given singular values)."""
    return LinearGaussian.random(d, gamma2, seed=seed, singular_values=singular_values)


class OracleEncoder(nn.Module):
    """Outputs the exact posterior mean and the family's closed-form optimal scale params."""

    def __init__(self, lg: LinearGaussian, family: str):
        super().__init__()
        self.lg = lg
        cov = lg.optimal_covariance(models.GUIDES[family])
        if family == "diagonal":
            raw = softplus_inverse(torch.diagonal(cov).sqrt())
        elif family == "isotropic":
            raw = softplus_inverse(cov[0, 0].sqrt()).reshape(1)
        else:
            L = torch.linalg.cholesky(cov).clone()
            L.diagonal().copy_(softplus_inverse(L.diagonal()))
            rows, cols = torch.tril_indices(lg.d, lg.d)
            raw = L[rows, cols]
        self.register_buffer("raw", raw.to(torch.get_default_dtype()))

    def forward(self, x):
        loc = self.lg.posterior_mean(x).to(x)
        return torch.cat([loc, self.raw.to(x).expand(x.shape[:-1] + self.raw.shape)], -1)


def oracle_pair(lg: LinearGaussian, family: str, **vae_kwargs):
    """The linear VAE with its decoder fixed and the family's closed-form optimal guide."""
    vae = lg.vae(**vae_kwargs)
    return vae, models.GUIDES[family](vae, OracleEncoder(lg, family))


FAMILIES = ["diagonal", "isotropic", "full"]
