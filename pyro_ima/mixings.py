"""Ground-truth mixing functions as torch Transforms: forward, exact inverse, log|det J|."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.optimize import brentq
from torch.distributions import constraints
from torch.distributions.transforms import Transform

from ._utils import check_int, check_positive, map_tensors
from .models.networks import smooth_leaky_relu

__all__ = ["Mixing", "Linear", "Moebius", "SmoothLeakyMLP", "TriangularMLP", "OrthogonalMLP",
           "VolumePreservingLinear", "LeakyLinear", "random_orthogonal",
           "inverse_smooth_leaky_relu", "MIXINGS"]


def _default(t: torch.Tensor) -> torch.Tensor:
    """``t`` in PyTorch's default dtype (if floating) on its default device: parameters are
    drawn on the CPU from seeded generators (the same numbers on every machine), then placed."""
    dtype = torch.get_default_dtype() if t.is_floating_point() else None
    return t.to(torch.get_default_device(), dtype)


def random_orthogonal(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-distributed random orthogonal ``(dim, dim)`` matrix (QR with sign correction),
    drawn with a CPU ``generator``."""
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64, device="cpu")
    q, r = torch.linalg.qr(a)
    return _default(q * torch.sign(torch.diagonal(r)))


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

    def to(self, device=None, dtype: torch.dtype | None = None) -> Mixing:
        """A copy with every tensor on ``device`` and floating ones in ``dtype``."""
        return map_tensors(self, lambda t: t.to(device, dtype if t.is_floating_point() else None))

    def double(self) -> Mixing:
        """A float64 copy (for precise checks)."""
        return self.to(dtype=torch.float64)


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
        weight = _default(torch.as_tensor(weight).double())
        if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
            raise ValueError(f"weight: expected a square (d, d) matrix, got {tuple(weight.shape)}")
        super().__init__(weight.shape[0])
        if not bool(torch.isfinite(weight).all()):
            raise ValueError("weight: expected finite entries")
        sign, logabsdet = torch.linalg.slogdet(weight.double())
        if sign == 0 or not math.isfinite(float(logabsdet)):
            raise ValueError("weight: expected an invertible matrix, got a singular one")
        self.weight = weight
        self.shift = torch.zeros_like(weight[0]) if shift is None else \
            torch.as_tensor(shift).to(weight)
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
            torch.as_tensor(scales).to(o)
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
            pole = high + width * (0.25 + 0.25 * torch.rand(dim, generator=g, device="cpu",
                                                            dtype=torch.float32))
        self.pole = _default(torch.as_tensor(pole).double())
        if self.pole.shape != (dim,) or not bool(torch.isfinite(self.pole).all()):
            raise ValueError(f"pole: expected {dim} finite coordinates, got {pole}")
        if bool(((self.pole >= low) & (self.pole <= high)).all()):
            raise ValueError(f"pole: expected b outside the latent box {box}, got {self.pole}")
        self.shift = torch.zeros_like(self.pole) if shift is None else \
            _default(torch.as_tensor(shift).double())
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


def _smooth_leaky_log_grad(x, slope):
    return torch.log(slope + (1.0 - slope) * torch.sigmoid(x))


def inverse_smooth_leaky_relu(y: torch.Tensor, slope: float = 0.2, tol: float = 1e-6,
                              max_iter: int = 100) -> torch.Tensor:
    """Solves ``a x + (1 - a) log(1 + e^x) = y`` for ``x`` by safeguarded Newton iterations.

    The map is strictly increasing with slope in ``[a, 1]``, so Newton from ``x0 = y`` (for
    ``y > 0``) or ``y / a`` converges; iterates until ``|step| < tol * (1 + |x|)`` (float32: about
    1e-6 relative), raising if it has not after ``max_iter`` steps.
    """
    x = torch.where(y > 0, y, y / slope)
    for _ in range(max_iter):
        fx = smooth_leaky_relu(x, slope) - y
        step = fx / (slope + (1.0 - slope) * torch.sigmoid(x))
        x = x - step
        if bool((step.abs() <= tol * (1 + x.abs())).all()):
            return x
    raise FloatingPointError("inverse_smooth_leaky_relu: Newton did not converge")


class SmoothLeakyMLP(Mixing):
    """Creates ``f(z) = W_L s(... s(W_1 z))``: L orthogonal layers with the smooth leaky ReLU
    ``s(x) = a x + (1 - a) log(1 + e^x)``, ``a = 0.2`` after every layer but the last.

    The paper's self-consistency mixing: invertible and smooth but not in the IMA class (its
    Jacobian's columns are not orthogonal). The inverse is layer by layer, with ``s^-1`` solved
    numerically (:func:`inverse_smooth_leaky_relu`, tolerance 1e-6 relative).

    Arguments:
        dim: ``d``.
        layers: ``L`` (default 3, as in the paper).
        seed: draws the Haar-orthogonal ``W_l``.
        slope: ``a``.
    """

    def __init__(self, dim: int, layers: int = 3, seed: int = 0, slope: float = 0.2):
        super().__init__(dim)
        check_int("layers", layers)
        if not 0 < slope < 1:
            raise ValueError(f"slope: expected 0 < slope < 1, got {slope}")
        g = torch.Generator().manual_seed(seed)
        self.weights = [random_orthogonal(dim, g) for _ in range(layers)]
        self.slope, self.seed = float(slope), seed

    def _call(self, z):
        self._check(z)
        h = z
        for i, w in enumerate(self.weights):
            h = h @ w.T
            if i < len(self.weights) - 1:
                h = smooth_leaky_relu(h, self.slope)
        return h

    def _inverse(self, x):
        self._check(x)
        h = x
        for i, w in reversed(list(enumerate(self.weights))):
            if i < len(self.weights) - 1:
                h = inverse_smooth_leaky_relu(h, self.slope)
            h = h @ w  # W orthogonal: W^-1 = W^T
        return h

    def log_abs_det_jacobian(self, z, x):
        total = z.new_zeros(z.shape[:-1])
        h = z
        for w in self.weights[:-1]:
            h = h @ w.T
            total = total + _smooth_leaky_log_grad(h, self.slope).sum(-1)
            h = smooth_leaky_relu(h, self.slope)
        return total

    def _repr_params(self):
        return {"dim": self.dim, "layers": len(self.weights), "seed": self.seed,
                "slope": self.slope}


def _random_upper_triangular(dim, g, shear=1.0, low=0.5, high=1.5):
    """Upper-triangular with diagonal in ``+-[low, high]`` and N(0, shear^2) entries above it."""
    # drawn in float32 whatever the default dtype, so a float64 build is the same mixing
    draw = {"generator": g, "device": "cpu", "dtype": torch.float32}
    u = shear * torch.triu(torch.randn(dim, dim, **draw), diagonal=1)
    diag = low + (high - low) * torch.rand(dim, **draw)
    sign = torch.where(torch.rand(dim, **draw) < 0.5, -1.0, 1.0)
    return _default(u + torch.diag(sign * diag))


class TriangularMLP(Mixing):
    """Creates ``f(z) = a U_2 sigmoid(U_1 z + c)``, ``U_1``, ``U_2`` upper-triangular, invertible.

    The paper's non-IMA mixing for the gap study (its Fig. 3/4). Closed-form inverse
    ``z = U_1^-1 (logit(U_2^-1 x / a) - c)``; ``log|det J| = d log a + log|det U_2| +
    sum log sigma'(h) + log|det U_1|``. Both ``U`` have diagonals of magnitude in ``[0.5, 1.5]``
    with random signs; above the diagonal ``U_1`` has ``N(0, 1)`` entries (so the sigmoid stays
    unsaturated) and ``U_2`` ``N(0, shear^2)`` ones; ``c`` is zero. Its global IMA contrast under
    a standard Gaussian prior grows like ``log(shear)``: ``C_IMA`` = 1.75 for ``d = 2``, seed 0,
    ``shear = 10``. :meth:`with_contrast` builds one with a given contrast, e.g. the paper's 7.07
    (its weights are not published).

    Arguments:
        dim: ``d`` (the paper uses 2).
        seed: draws ``U_1``, ``U_2``.
        shear: scale of the off-diagonal entries of ``U_2``.
        unit_columns: rescale ``U_2``'s columns to unit length, so that a strong shear makes
            them nearly parallel (a large contrast) without also stretching the output: the
            Jacobian's condition number is then about the least a contrast allows (~2 e^C in
            2-D) instead of growing with ``shear^2``.
        scale: ``a``, an output scale (it leaves every contrast unchanged and moves the
            gamma2 at which the near-deterministic limit sets in by ``1 / a^2``).
    """

    def __init__(self, dim: int, seed: int = 0, shear: float = 10.0, *,
                 unit_columns: bool = False, scale: float = 1.0):
        super().__init__(dim)
        check_positive("shear", shear)
        check_positive("scale", scale)
        g = torch.Generator().manual_seed(seed)
        self.u1 = _random_upper_triangular(dim, g)  # mild: keeps sigmoid(U_1 z) unsaturated
        u2 = _random_upper_triangular(dim, g, shear).double()
        if unit_columns:
            u2 = u2 / torch.linalg.vector_norm(u2, dim=0)
        self.u2 = _default(u2 * scale)
        self.seed, self.shear, self.unit_columns = seed, float(shear), bool(unit_columns)
        self.scale = float(scale)

    @classmethod
    def with_contrast(cls, target: float, dim: int = 2, *, seed: int = 0, scale: float = 1.0,
                      samples: int = 4000) -> TriangularMLP:
        """The unit-column mixing of ``seed`` whose mean ``c_IMA`` over ``samples`` standard
        Gaussian latents (a fixed draw, float64) is ``target``: its shear is found by Brent's
        method on ``log(shear)``."""
        from .metrics import ima_contrast, jacobian  # metrics imports this module

        check_positive("target", target)
        z = torch.randn(samples, dim, generator=torch.Generator().manual_seed(12345),
                        dtype=torch.float32).double()

        def excess(log_shear: float) -> float:
            m = cls(dim, seed, math.exp(log_shear), unit_columns=True).to(dtype=torch.float64)
            return float(ima_contrast(jacobian(m, z)).mean()) - target

        lo, hi = math.log(1e-3), math.log(1e8)
        if not excess(lo) < 0 < excess(hi):
            raise ValueError(f"target: expected a contrast this mixing can reach "
                             f"({excess(lo) + target:.3g} to {excess(hi) + target:.3g}), "
                             f"got {target}")
        shear = math.exp(brentq(excess, lo, hi, xtol=1e-10))
        return cls(dim, seed, shear, unit_columns=True, scale=scale)

    def _call(self, z):
        self._check(z)
        return torch.sigmoid(z @ self.u1.T) @ self.u2.T

    def _inverse(self, x):
        self._check(x)
        s = torch.linalg.solve_triangular(self.u2, x.unsqueeze(-1), upper=True).squeeze(-1)
        h = torch.logit(s)
        return torch.linalg.solve_triangular(self.u1, h.unsqueeze(-1), upper=True).squeeze(-1)

    def log_abs_det_jacobian(self, z, x):
        h = z @ self.u1.T
        log_sig_grad = F.logsigmoid(h) + F.logsigmoid(-h)
        const = (self.u1.diagonal().abs().log().sum() + self.u2.diagonal().abs().log().sum())
        return log_sig_grad.sum(-1) + const

    def _repr_params(self):
        return {"dim": self.dim, "seed": self.seed, "shear": self.shear,
                "unit_columns": self.unit_columns, "scale": self.scale,
                "u1": self.u1.tolist(), "u2": self.u2.tolist()}


class OrthogonalMLP(Mixing):
    """Creates ``f(z) = W (s * sigma(z))``: one elementwise layer, then an orthogonal ``W``.

    ``sigma`` is the elementwise smooth leaky ReLU (invertible). The Jacobian
    ``W diag(s * sigma'(z))`` has orthogonal columns (IMA class, ``c_IMA = 0``) of unequal norms
    (not conformal, ``c_conf > 0``) whenever the ``s_k sigma'(z_k)`` differ.

    Arguments:
        dim: ``d``.
        seed: draws ``W``.
        scales: ``s`` (default log-spaced in ``[0.5, 2]``).
        slope: the leaky slope of ``sigma``.
    """

    def __init__(self, dim: int, seed: int = 0, scales=None, slope: float = 0.2):
        super().__init__(dim)
        g = torch.Generator().manual_seed(seed)
        self.weight = random_orthogonal(dim, g)
        self.scales = torch.logspace(math.log10(0.5), math.log10(2.0), dim) if scales is None \
            else _default(torch.as_tensor(scales).double())
        check_positive("scales", self.scales)
        self.slope, self.seed = float(slope), seed

    def _call(self, z):
        self._check(z)
        return (self.scales * smooth_leaky_relu(z, self.slope)) @ self.weight.T

    def _inverse(self, x):
        self._check(x)
        return inverse_smooth_leaky_relu((x @ self.weight) / self.scales, self.slope)

    def log_abs_det_jacobian(self, z, x):
        return (self.scales.log() + _smooth_leaky_log_grad(z, self.slope)).sum(-1)

    def _repr_params(self):
        return {"dim": self.dim, "seed": self.seed, "scales": self.scales.tolist(),
                "slope": self.slope}


class VolumePreservingLinear(Linear):
    """A linear map with ``|det W| = 1`` (see :meth:`with_contrast`)."""

    @classmethod
    def with_contrast(cls, target: float, dim: int, seed: int = 0) -> VolumePreservingLinear:
        """``W = Q (I + t S)`` with IMA contrast ``target`` (to 1e-6) and ``|det W| = 1``.

        ``Q`` is Haar-orthogonal and ``S`` strictly upper-triangular with standard normal
        entries (both from ``seed``), so ``det(I + t S) = 1`` for every ``t`` and left
        multiplication by ``Q`` keeps the column norms: ``c_IMA(W) = sum_k log ||(I + t S)_k||``,
        0 at ``t = 0`` and growing without bound in ``t``. ``t >= 0`` is found by Brent's method
        in float64; ``weight64`` keeps that matrix (``weight`` is it in the default dtype, whose
        rounding moves the contrast by up to ~1e-5 for large targets).
        """
        check_int("dim", dim, minimum=2)
        if not math.isfinite(target) or target < 0:
            raise ValueError(f"target: expected a finite contrast >= 0, got {target}")
        g = torch.Generator().manual_seed(seed)
        q = random_orthogonal(dim, g).double()
        S = torch.triu(torch.randn(dim, dim, generator=g, dtype=torch.float64, device="cpu"),
                       diagonal=1).to(q.device)
        eye = torch.eye(dim, dtype=torch.float64, device=q.device)

        def contrast(t):
            return float(torch.linalg.vector_norm(eye + t * S, dim=0).log().sum())

        hi = 1.0
        while contrast(hi) < target:
            hi *= 2.0
        t = 0.0 if target == 0 else brentq(lambda t: contrast(t) - target, 0.0, hi,
                                           xtol=1e-14, rtol=1e-14)
        w64 = q @ (eye + t * S)
        m = cls(w64)
        m.target, m.seed, m.weight64 = float(target), seed, w64.to(m.weight.device)
        m._logabsdet = m.weight.new_zeros(())  # exact: det(Q (I + t S)) = +-1
        return m


class LeakyLinear(Mixing):
    """Creates ``f(z) = sigma(W z)``: a linear map, then the elementwise smooth leaky ReLU.

    The Jacobian ``diag(sigma'(W z)) W`` has the rows of ``W`` rescaled, so the row contrast is
    that of ``W`` at every point: ``c_row(f, z) = c_row(W)``. With ``W = diag(s) O`` the rows are
    orthogonal and the inverse ``g`` is in the IMA class (the encoder-side conjecture's class);
    :meth:`with_row_contrast` sets ``c_row`` to any target.

    Arguments:
        weight: ``W`` ``(d, d)``, invertible.
        slope: the leaky slope of ``sigma``.
    """

    def __init__(self, weight: torch.Tensor, slope: float = 0.2):
        weight = _default(torch.as_tensor(weight).double())
        if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
            raise ValueError(f"weight: expected a square (d, d) matrix, got {tuple(weight.shape)}")
        super().__init__(weight.shape[0])
        self.weight, self.slope = weight, float(slope)
        self._inv_weight = torch.linalg.inv(weight.double()).to(weight.dtype)
        self._logabsdet = torch.linalg.slogdet(weight.double())[1].to(weight.dtype)

    @classmethod
    def with_row_contrast(cls, target: float, dim: int, seed: int = 0) -> LeakyLinear:
        """``W = V^T`` for ``V = VolumePreservingLinear.with_contrast(target)``: rows of
        ``W`` are ``V``'s columns, so ``c_row(f) = target`` everywhere and ``|det W| = 1``."""
        m = cls(VolumePreservingLinear.with_contrast(target, dim, seed=seed).weight64.T)
        m.target, m.seed = float(target), seed
        return m

    def _call(self, z):
        self._check(z)
        return smooth_leaky_relu(z @ self.weight.T, self.slope)

    def _inverse(self, x):
        self._check(x)
        return inverse_smooth_leaky_relu(x, self.slope) @ self._inv_weight.T

    def log_abs_det_jacobian(self, z, x):
        return self._logabsdet + _smooth_leaky_log_grad(z @ self.weight.T, self.slope).sum(-1)

    def _repr_params(self):
        extra = {"target": self.target, "seed": self.seed} if hasattr(self, "target") else {}
        return {"dim": self.dim, "slope": self.slope, **extra}


MIXINGS = {"linear": Linear.orthogonal, "moebius": Moebius, "smooth_leaky_mlp": SmoothLeakyMLP,
           "triangular_mlp": TriangularMLP, "orthogonal_mlp": OrthogonalMLP}
