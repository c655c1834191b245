"""Ground-truth mixing functions as torch Transforms: forward, exact inverse, log|det J|."""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints
from torch.distributions.transforms import Transform

from ._utils import check_int, check_positive

__all__ = ["Mixing", "Linear", "Moebius", "random_orthogonal", "MIXINGS"]


def random_orthogonal(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-distributed random orthogonal ``(dim, dim)`` matrix (QR with sign correction)."""
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return (q * torch.sign(torch.diagonal(r))).to(torch.get_default_dtype())


class Mixing(Transform):
    """Base class: a bijection of R^d with event dim 1, batched over leading dims."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, dim: int):
        super().__init__(cache_size=0)
        check_int("dim", dim)
        self.dim = dim

    def _check(self, z: torch.Tensor) -> None:
        if z.shape[-1] != self.dim:
            raise ValueError(f"z: expected last dim {self.dim}, got shape {tuple(z.shape)}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self._repr_params().items())
        return f"{type(self).__name__}({params})"

    def _repr_params(self) -> dict:
        return {"dim": self.dim}


class Linear(Mixing):
    """Creates the map ``x = W z + t`` for an invertible ``(d, d)`` matrix ``W``.

    Arguments:
        weight: ``W``, ``(d, d)``, invertible.
        shift: ``t``, ``(d,)`` (default zero).

    Example:
        >>> f = Linear(torch.eye(2) * 2)
        >>> f(torch.ones(2))
        tensor([2., 2.])
    """

    def __init__(self, weight: torch.Tensor, shift: torch.Tensor | None = None):
        weight = torch.as_tensor(weight, dtype=torch.get_default_dtype())
        if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
            raise ValueError(f"weight: expected a square (d, d) matrix, got {tuple(weight.shape)}")
        super().__init__(weight.shape[0])
        sign, logabsdet = torch.linalg.slogdet(weight.double())
        if sign == 0 or not math.isfinite(float(logabsdet)):
            raise ValueError("weight: expected an invertible matrix, got a singular one")
        self.weight = weight
        self.shift = torch.zeros(self.dim) if shift is None else torch.as_tensor(shift).to(weight)
        self._logabsdet = logabsdet.to(weight.dtype)

    @classmethod
    def orthogonal(cls, dim: int, seed: int = 0) -> Linear:
        """``W`` a random orthogonal matrix (IMA class and conformal: contrasts 0)."""
        return cls(random_orthogonal(dim, torch.Generator().manual_seed(seed)))

    @classmethod
    def column_orthogonal(cls, dim: int, seed: int = 0, scales=None) -> Linear:
        """``W = O diag(s)``: orthogonal columns of unequal norms ``s`` (IMA class, not conformal).

        Default ``s`` spaced log-uniformly in ``[0.5, 2]``.
        """
        o = random_orthogonal(dim, torch.Generator().manual_seed(seed))
        s = torch.logspace(math.log10(0.5), math.log10(2.0), dim) if scales is None else \
            torch.as_tensor(scales, dtype=o.dtype)
        return cls(o * s)

    def _call(self, z):
        self._check(z)
        return z @ self.weight.T + self.shift

    def _inverse(self, x):
        self._check(x)
        return torch.linalg.solve(self.weight, (x - self.shift).unsqueeze(-1)).squeeze(-1)

    def log_abs_det_jacobian(self, z, x):
        return self._logabsdet.expand(z.shape[:-1])

    def _repr_params(self):
        return {"dim": self.dim, "weight": self.weight.tolist(), "shift": self.shift.tolist()}


class Moebius(Mixing):
    """Creates the map ``x = t + alpha W (z - b) / ||z - b||^2`` (W orthogonal; a conformal map).

    Its Jacobian is ``alpha / ||v||^2 W (I - 2 v v^T / ||v||^2)`` with ``v = z - b``: a scaled
    orthogonal matrix, so its IMA and conformal contrasts are 0, and
    ``log|det J| = d log|alpha| - 2 d log||v||``. The inverse is closed form:
    ``z = b + u / ||u||^2`` with ``u = W^T (x - t) / alpha``. The pole ``b`` is placed outside
    the latent box so the map is smooth on the prior's support.

    References:
        Gresele et al., "Independent mechanism analysis", NeurIPS 2021.

    Arguments:
        dim: ``d``.
        seed: draws ``W`` (Haar orthogonal) and ``b``.
        box: the latent support ``[low, high]^d`` that ``b`` must stay away from.
        alpha: the scale ``alpha``.
        shift: ``t`` (default zero).
        pole: ``b`` (default: each coordinate uniform in ``[high + w/4, high + w/2]``,
            ``w = high - low``).
    """

    def __init__(self, dim: int, seed: int = 0, *, box: tuple[float, float] = (0.0, 1.0),
                 alpha: float = 1.0, shift=None, pole=None):
        super().__init__(dim)
        check_positive("alpha", alpha)
        low, high = float(box[0]), float(box[1])
        if not high > low:
            raise ValueError(f"box: expected (low, high) with low < high, got {box}")
        g = torch.Generator().manual_seed(seed)
        self.weight = random_orthogonal(dim, g)
        width = high - low
        if pole is None:
            pole = high + width * (0.25 + 0.25 * torch.rand(dim, generator=g))
        self.pole = torch.as_tensor(pole, dtype=torch.get_default_dtype())
        if bool(((self.pole >= low) & (self.pole <= high)).all()):
            raise ValueError(f"pole: expected b outside the latent box {box}, got {self.pole}")
        self.shift = torch.zeros(dim) if shift is None else torch.as_tensor(shift).float()
        self.alpha, self.box, self.seed = float(alpha), (low, high), seed

    def _call(self, z):
        self._check(z)
        v = z - self.pole
        return self.shift + self.alpha * (v / v.square().sum(-1, keepdim=True)) @ self.weight.T

    def _inverse(self, x):
        self._check(x)
        u = ((x - self.shift) / self.alpha) @ self.weight
        return self.pole + u / u.square().sum(-1, keepdim=True)

    def log_abs_det_jacobian(self, z, x):
        sq = (z - self.pole).square().sum(-1)
        return self.dim * math.log(abs(self.alpha)) - self.dim * torch.log(sq)

    def _repr_params(self):
        return {"dim": self.dim, "seed": self.seed, "alpha": self.alpha,
                "pole": [round(v, 4) for v in self.pole.tolist()], "box": self.box}


MIXINGS = {"linear": Linear.orthogonal, "moebius": Moebius}
