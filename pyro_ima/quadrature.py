"""log p(x) of a 2-D latent model by numerical quadrature: an oracle independent of sampling.

For ``d = 2`` the marginal ``p(x) = int p(x | z) p0(z) dz`` can be integrated on a grid. The grid
is centred at each point's posterior mode found by SciPy's BFGS on ``-log p(x, z)`` in float64
(not by the library's own mode finder) and aligned with the eigenvectors of the Hessian there,
spanning ``+-half_width`` posterior standard deviations in each direction; the integral is the
rectangle rule in those coordinates (exponentially accurate for smooth, light-tailed
integrands), computed with ``logsumexp``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize

__all__ = ["quadrature_log_px", "gaussian_log_joint"]


def quadrature_log_px(log_joint, x: torch.Tensor, start: torch.Tensor, *,
                      half_width: float = 10.0, n: int = 401) -> torch.Tensor:
    """``log int exp(log_joint(x_i, z)) dz`` for every point, float64 ``(N,)``.

    Arguments:
        log_joint: ``(x (D,), z (..., 2)) -> log p(x, z)`` ``(...)`` in float64 (e.g. a
            decoder and prior converted with ``.double()``); ``-inf`` outside the support.
        x: ``(N, D)`` observations.
        start: ``(N, 2)`` starting points for the mode search (e.g. the true latents).
        half_width: the grid's half width in posterior standard deviations.
        n: grid points per dimension.
    """
    x, start = x.double().cpu(), start.double().cpu()
    if start.shape[-1] != 2:
        raise ValueError(f"start: expected (N, 2) latents (the quadrature is 2-D), got "
                         f"{tuple(start.shape)}")
    t = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    tt = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)  # (n^2, 2)
    out = []
    for xi, z0 in zip(x, start, strict=True):
        def neg(z, xi=xi):
            zt = torch.as_tensor(z, dtype=torch.float64)
            return float(-log_joint(xi, zt))

        def neg_grad(z, xi=xi):
            zt = torch.as_tensor(z, dtype=torch.float64).requires_grad_(True)
            (g,) = torch.autograd.grad(-log_joint(xi, zt), zt)
            return g.numpy()

        res = minimize(neg, z0.numpy(), jac=neg_grad, method="BFGS",
                       options={"gtol": 1e-10, "maxiter": 500})
        mode = torch.as_tensor(res.x, dtype=torch.float64)
        H = torch.autograd.functional.hessian(lambda z, xi=xi: -log_joint(xi, z), mode)
        evals, evecs = torch.linalg.eigh(0.5 * (H + H.T))
        if not bool((evals > 0).all()):
            raise FloatingPointError("quadrature: no local maximum of log p(x, z) found")
        A = evecs * evals.rsqrt()  # z = mode + A t covers +-half_width sd along each axis
        z = mode + tt @ A.T
        lp = log_joint(xi, z)
        cell = (t[1] - t[0]) ** 2 * torch.linalg.det(A).abs()
        out.append(torch.logsumexp(lp, 0) + torch.log(cell))
    return torch.stack(out)


def gaussian_log_joint(decoder, prior, gamma2: float):
    """``(x, z) -> log N(x; f(z), gamma^-2 I) + log p0(z)`` for :func:`quadrature_log_px`."""
    scale = 1.0 / math.sqrt(gamma2)

    def fn(x, z):
        f = decoder(z)
        ll = (-0.5 * ((x - f) / scale).square() - math.log(scale)
              - 0.5 * math.log(2 * math.pi)).sum(-1)
        inside = prior.support.check(z)
        safe = torch.where(inside.unsqueeze(-1), z, prior.mean.expand_as(z))
        return torch.where(inside, ll + prior.log_prob(safe), torch.full_like(ll, -np.inf))
    return fn
