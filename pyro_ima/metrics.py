"""Jacobians (torch.func), IMA / conformal / row contrasts, and the MCC."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import ortho_group, rankdata

from ._utils import check_int

__all__ = ["jacobian", "ima_contrast", "conformal_contrast", "row_contrast",
           "diagonality", "mcc", "MCCResult", "rotation_chance_mcc"]


def jacobian(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, *,
             chunk_size: int = 4096, mode: str = "auto") -> torch.Tensor:
    """Jacobians of a pointwise map at every point: ``(*, N, D, d)`` for ``z`` ``(*, N, d)``.

    ``fn`` must act pointwise along the leading dims (row ``i`` of the output depends on row
    ``i`` of the input only), as the decoders and encoders here do, replica-batched ones included.
    Then one Jacobian-vector product per input direction, vectorized over those directions with
    ``torch.func.vmap``, gives every point's Jacobian at once (``mode="fwd"``: ``d`` JVPs); with
    ``mode="rev"`` one vector-Jacobian product per output direction (``D`` VJPs). ``"auto"``
    picks the smaller. Points are processed in chunks of ``chunk_size`` along the second-to-last
    dim, so memory stays bounded. Outputs with several trailing dims (images ``(*, N, C, H,
    W)``) are flattened: ``D = C H W``.
    """
    check_int("chunk_size", chunk_size)
    if z.dim() < 2:
        raise ValueError(f"z: expected (*, N, d), got shape {tuple(z.shape)}")
    if mode not in ("auto", "fwd", "rev"):
        raise ValueError(f"mode: expected 'auto', 'fwd' or 'rev', got {mode!r}")
    n, d = z.shape[-2], z.shape[-1]
    out = []
    for start in range(0, n, chunk_size):
        zc = z.narrow(-2, start, min(chunk_size, n - start)).detach()
        y = None
        m = mode
        if m == "auto":
            with torch.no_grad():
                y = fn(zc[..., :1, :])
            m = "fwd" if d <= math.prod(y.shape[zc.dim() - 1:]) else "rev"
        if m == "fwd":
            basis = torch.eye(d, dtype=zc.dtype, device=zc.device)
            basis = basis.reshape((d,) + (1,) * (zc.dim() - 1) + (d,))
            basis = basis.expand((d,) + zc.shape)

            def column(t, zc=zc):
                return torch.func.jvp(fn, (zc,), (t,))[1]

            cols = torch.func.vmap(column)(basis)  # (d, *, n, *event)
            cols = cols.reshape(cols.shape[:zc.dim()] + (-1,))  # (d, *, n, D)
            out.append(torch.movedim(cols, 0, -1))  # (*, n, D, d)
        else:
            y, vjp_fn = torch.func.vjp(fn, zc)
            lead, event = y.shape[:zc.dim() - 1], y.shape[zc.dim() - 1:]
            D = math.prod(event)
            basis = torch.eye(D, dtype=y.dtype, device=y.device)
            basis = basis.reshape((D,) + (1,) * len(lead) + event)
            rows = torch.func.vmap(lambda c, f=vjp_fn: f(c)[0])(basis.expand((D,) + y.shape))
            out.append(torch.movedim(rows, 0, -2))  # (*, n, D, d)
    return torch.cat(out, dim=-3)


def _square(name: str, J: torch.Tensor) -> None:
    if J.dim() < 2 or J.shape[-1] != J.shape[-2]:
        raise ValueError(f"{name}: expected square Jacobians (*, d, d), got {tuple(J.shape)}")


def _log_volume(name: str, J: torch.Tensor) -> torch.Tensor:
    """``log |det J|`` for square ``J``; ``1/2 log det(J^T J)`` for tall ``J`` ``(*, D, d)``."""
    if J.dim() < 2 or J.shape[-2] < J.shape[-1]:
        raise ValueError(f"{name}: expected square or tall Jacobians (*, D, d) with D >= d, "
                         f"got {tuple(J.shape)}")
    if J.shape[-1] == J.shape[-2]:
        return torch.linalg.slogdet(J)[1]
    return 0.5 * torch.linalg.slogdet(J.transpose(-1, -2) @ J)[1]


def _finish(value: torch.Tensor, logabsdet: torch.Tensor, name: str) -> torch.Tensor:
    singular = ~torch.isfinite(logabsdet)
    if bool(singular.any()):
        warnings.warn(f"{name}: {int(singular.sum())} singular Jacobian(s); their contrast is +inf",
                      RuntimeWarning, stacklevel=3)
        value = torch.where(singular, torch.full_like(value, float("inf")), value)
    return value


def ima_contrast(J: torch.Tensor) -> torch.Tensor:
    """``c_IMA = sum_k log ||J[:, k]|| - log |det J|`` (columns), shape ``J.shape[:-2]``.

    Zero iff the columns are orthogonal; invariant to column scaling and permutation. For a
    tall ``J`` (``D > d``: a decoder into a larger space) ``log |det J|`` becomes
    ``1/2 log det(J^T J)``. Singular ``J`` gives ``+inf`` with a warning.
    """
    logabsdet = _log_volume("J", J)
    value = torch.linalg.vector_norm(J, dim=-2).log().sum(-1) - logabsdet
    return _finish(value, logabsdet, "ima_contrast")


def row_contrast(J: torch.Tensor) -> torch.Tensor:
    """``c_row = sum_i log ||J[i, :]|| - log |det J|`` (rows): the IMA contrast of ``J^T``.

    Zero iff the rows of ``J_f`` are orthogonal, i.e. iff the inverse's Jacobian ``J_f^-1`` has
    orthogonal columns (the encoder is in the IMA class).
    """
    _square("J", J)
    return ima_contrast(J.transpose(-1, -2))


def conformal_contrast(J: torch.Tensor) -> torch.Tensor:
    """``c_conf = (d/2) log(||J||_F^2 / d) - log |det J|``; zero iff ``J = s O`` (conformal).

    By the AM-GM inequality on the column norms, ``c_conf >= c_IMA``. Tall ``J`` as in
    :func:`ima_contrast`.
    """
    d = J.shape[-1]
    logabsdet = _log_volume("J", J)
    fro2 = J.square().sum((-2, -1))
    value = 0.5 * d * torch.log(fro2 / d) - logabsdet
    return _finish(value, logabsdet, "conformal_contrast")


def diagonality(A: torch.Tensor) -> torch.Tensor:
    """The KL measure of diagonality ``D(A) = 1/2 (sum log A_ii - log det A)`` of SPD ``A``.

    ``c_IMA(J) = D(J^T J)`` and ``c_row(J) = D(J J^T)``; the diagonal guide's linearized gap is
    ``D(P)`` for the posterior precision ``P``.
    """
    _square("A", A)
    return 0.5 * (A.diagonal(dim1=-2, dim2=-1).log().sum(-1) - torch.linalg.slogdet(A)[1])


@dataclass(frozen=True)
class MCCResult:
    """``score``: mean matched |correlation|; ``matching[k]``: the inferred dim matched to true
    dim ``k``; ``correlations``: the ``(d_true, d_est)`` matrix of |correlations|."""

    score: float
    matching: np.ndarray
    correlations: np.ndarray
    per_factor: np.ndarray


def _as_numpy(name, a) -> np.ndarray:
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a (N, d) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values, found NaN/inf")
    return a.astype(np.float64)


def mcc(z_true, z_est, method: str = "pearson") -> MCCResult:
    """Mean correlation coefficient between true and inferred latents on a whole dataset.

    Absolute Pearson (or Spearman: Pearson on ranks) correlations between every true and every
    inferred dimension, matched one-to-one by ``scipy.optimize.linear_sum_assignment``, averaged
    over the true dimensions. Invariant to permutation and (for Spearman, monotone) rescaling of
    the inferred latents. A constant inferred dimension correlates 0.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method: expected 'pearson' or 'spearman', got {method!r}")
    a, b = _as_numpy("z_true", z_true), _as_numpy("z_est", z_est)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"z_est: expected {a.shape[0]} rows like z_true, got {b.shape[0]}")
    if a.shape[0] < 3:
        raise ValueError(f"z_true: expected at least 3 points, got {a.shape[0]}")
    if method == "spearman":
        a, b = rankdata(a, axis=0), rankdata(b, axis=0)
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.abs((a.T @ b) / np.outer(na, nb))
    corr = np.nan_to_num(corr, nan=0.0, posinf=0.0)
    rows, cols = linear_sum_assignment(-corr)
    per_factor = np.zeros(a.shape[1])
    matching = np.full(a.shape[1], -1)
    per_factor[rows], matching[rows] = corr[rows, cols], cols
    return MCCResult(float(per_factor.mean()), matching, corr, per_factor)


def rotation_chance_mcc(d: int, *, rotations: int = 1000, n: int = 5000,
                        seed: int = 0) -> np.ndarray:
    """The MCC of uniformly random orthogonal maps (Haar on O(d); a reflection does not change
    the MCC) of ``n`` standard Gaussian latents: one value per map, what recovering the
    latents only up to an unidentified rotation scores (e.g. on a conformal mixing with
    Gaussian sources, where no contrast prefers one rotation). In 2-D the mean tends to
    ``2 sqrt(2) / pi`` = 0.900 (``E max(|cos t|, |sin t|)`` for a uniform angle ``t``)."""
    check_int("d", d, maximum=1024)
    check_int("rotations", rotations, maximum=10**6)
    check_int("n", n, minimum=3, maximum=10**7)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    qs = ortho_group.rvs(d, size=rotations, random_state=rng) if d > 1 else \
        np.sign(rng.standard_normal((rotations, 1, 1)))
    qs = qs.reshape(rotations, d, d)
    return np.array([mcc(z, z @ q).score for q in qs])
