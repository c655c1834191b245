"""Latent priors: torch/Pyro distributions with event shape ``(d,)``, no hand-written densities."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.distributions.transforms import AffineTransform

from ._utils import check_int, check_positive

__all__ = ["gaussian", "laplace", "logistic", "uniform", "beta", "BoxBeta", "PRIORS"]


def _dim(dim):
    check_int("dim", dim)
    return dim


def gaussian(dim: int, scale: float = 1.0) -> dist.Distribution:
    """``N(0, scale^2 I_d)``."""
    check_positive("scale", scale)
    return dist.Normal(torch.zeros(_dim(dim)), torch.full((dim,), float(scale))).to_event(1)


def laplace(dim: int, scale: float = 1.0) -> dist.Distribution:
    """Independent ``Laplace(0, scale)`` coordinates (log-concave, heavier tails)."""
    check_positive("scale", scale)
    return dist.Laplace(torch.zeros(_dim(dim)), torch.full((dim,), float(scale))).to_event(1)


def logistic(dim: int, scale: float = 1.0) -> dist.Distribution:
    """Independent standard logistic coordinates, ``sigmoid(z) ~ U(0, 1)`` (log-concave)."""
    check_positive("scale", scale)
    return dist.Logistic(torch.zeros(_dim(dim)), torch.full((dim,), float(scale))).to_event(1)


def _box(low, high) -> None:
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")
    if not float(high) > float(low):
        raise ValueError(f"high: expected high > low, got low={low}, high={high}")


def uniform(dim: int, low: float = 0.0, high: float = 1.0) -> dist.Distribution:
    """Uniform on the box ``[low, high]^d`` (finite bounds)."""
    _box(low, high)
    return dist.Uniform(torch.full((_dim(dim),), float(low)),
                        torch.full((dim,), float(high))).to_event(1)


class BoxBeta(dist.TransformedDistribution):
    """``low + (high - low) B`` with ``B ~ Beta(a, b)`` per coordinate, on the box
    ``[low, high]^d``; the density is the Beta's through an affine transform."""

    arg_constraints: dict = {}

    def __init__(self, a: torch.Tensor, b: torch.Tensor, low: float, high: float,
                 validate_args=None):
        self.low, self.high = float(low), float(high)
        base = dist.Beta(a, b).to_event(1)
        super().__init__(base, AffineTransform(self.low, self.high - self.low, event_dim=1),
                         validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return constraints.independent(constraints.interval(self.low, self.high), 1)

    @property
    def mean(self):
        return self.low + (self.high - self.low) * self.base_dist.mean


def beta(dim: int, a=2.0, b=2.0, low: float = 0.0, high: float = 1.0) -> dist.Distribution:
    """Independent ``Beta(a_k, b_k)`` coordinates on ``[low, high]`` (a, b scalars or ``(d,)``)."""
    a = torch.as_tensor(a, dtype=torch.get_default_dtype()).expand(_dim(dim)).clone()
    b = torch.as_tensor(b, dtype=torch.get_default_dtype()).expand(dim).clone()
    check_positive("a", a)
    check_positive("b", b)
    _box(low, high)
    if low == 0.0 and high == 1.0:
        return dist.Beta(a, b).to_event(1)
    return BoxBeta(a, b, low, high)


PRIORS = {"gaussian": gaussian, "laplace": laplace, "logistic": logistic, "uniform": uniform,
          "beta": beta}
