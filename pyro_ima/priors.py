"""Latent priors: torch/Pyro distributions with event shape ``(d,)``."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from ._utils import check_int, check_positive

__all__ = ["gaussian", "uniform", "PRIORS"]


def gaussian(dim: int, scale: float = 1.0) -> dist.Distribution:
    """``N(0, scale^2 I_d)``."""
    check_int("dim", dim)
    check_positive("scale", scale)
    return dist.Normal(torch.zeros(dim), torch.full((dim,), float(scale))).to_event(1)


def uniform(dim: int, low: float = 0.0, high: float = 1.0) -> dist.Distribution:
    """Uniform on the box ``[low, high]^d``."""
    check_int("dim", dim)
    if not float(high) > float(low):
        raise ValueError(f"high: expected high > low, got low={low}, high={high}")
    return dist.Uniform(torch.full((dim,), float(low)), torch.full((dim,), float(high))).to_event(1)


PRIORS = {"gaussian": gaussian, "uniform": uniform}
