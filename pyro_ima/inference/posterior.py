"""The posterior of a Gaussian VAE at each point: its log density, its mode and its curvature.

Everything lives in the guide's unconstrained coordinates ``u`` (``z = T(u)`` with ``T`` the
prior's support bijection, the identity on R^d), where the log joint is

    f(u) = log p(x | T(u)) + log p0(T(u)) + log |det dT/du|.

The posterior mode ``u*`` per point is found by damped Newton steps (Levenberg-Marquardt on the
exact Hessian, batched over points and replicas, each point with its own damping) started from
the amortized encoder's mean; a point counts as converged when its Newton decrement
``g^T (-H)^-1 g / 2`` (the log density still to gain) is below ``tol`` and ``-H`` is positive
definite there. The Laplace proposal and the ELBO* refinement are centred at ``u*``, so they do
not inherit the encoder's error.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch

from .._utils import check_int, check_positive
from ..metrics import jacobian
from ..models.vae import GaussianVAE

__all__ = ["log_joint", "posterior_mode", "PosteriorMode", "ModeConfig", "mahalanobis"]


@dataclass(frozen=True)
class ModeConfig:
    """Settings of :func:`posterior_mode`.

    Arguments:
        max_iter: Newton steps at most.
        tol: a point's mode is found when its Newton decrement (the log density a full Newton
            step would still gain, in nats) is below this.
    """

    max_iter: int = 100
    tol: float = 1e-5

    def __post_init__(self):
        check_int("max_iter", self.max_iter)
        check_positive("tol", self.tol)


@dataclass
class PosteriorMode:
    """The posterior mode of every point (``(R, N, ...)`` tensors).

    ``u``: the mode in unconstrained coordinates; ``precision``: ``-Hessian`` of the log joint
    there (the Laplace precision); ``log_joint``: ``f(u*)``; ``decrement``: the Newton
    decrement at the end (nats); ``found``: converged to a local maximum; ``iterations``.
    """

    u: torch.Tensor
    precision: torch.Tensor
    log_joint: torch.Tensor
    decrement: torch.Tensor
    found: torch.Tensor
    iterations: int


def log_joint(vae: GaussianVAE, x: torch.Tensor, u: torch.Tensor, bijection=None,
              prior_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``log p(x | T(u)) + w (log p0(T(u)) + log|det dT/du|)`` per point, ``(R, N)``.

    ``x`` ``(R, N, ...)``, ``u`` ``(R, N, d)``; ``w = prior_weight`` is 1 for the posterior
    (``beta`` for the beta-VAE objective).
    """
    z = u if bijection is None else bijection(u)
    log_prior = vae.prior.log_prob(z)
    if bijection is not None:
        log_prior = log_prior + bijection.log_abs_det_jacobian(u, z)
    return vae.likelihood(z).log_prob(x) + prior_weight * log_prior


def _grad_fn(fn):
    """``u -> d f(u) / du`` for a pointwise ``f`` (the gradient of its sum over points)."""
    return torch.func.grad(lambda u: fn(u).sum())


def value_grad_hessian(fn, u: torch.Tensor):
    """``f(u)`` ``(R, N)``, its gradient ``(R, N, d)`` and Hessian ``(R, N, d, d)`` per point."""
    u = u.detach()
    grad = _grad_fn(fn)
    with torch.no_grad():
        value = fn(u)
    g = grad(u)
    H = jacobian(grad, u, mode="fwd")  # forward over reverse: d Hessian-vector products
    return value, g.detach(), 0.5 * (H + H.transpose(-1, -2)).detach()


def _damped_solve(A: torch.Tensor, g: torch.Tensor, lam: torch.Tensor):
    """Solve ``(A + lam diag(|A|)) s = g`` per point, raising ``lam`` where the damped matrix
    is not positive definite. Returns ``(s, lam)``."""
    d = A.shape[-1]
    eye = torch.eye(d, dtype=A.dtype, device=A.device)
    scale = A.diagonal(dim1=-2, dim2=-1).abs().clamp(min=torch.finfo(A.dtype).tiny)
    scale = torch.maximum(scale, 1e-8 * scale.amax(-1, keepdim=True))
    for _ in range(40):
        M = A + lam[..., None, None] * torch.diag_embed(scale) + \
            torch.finfo(A.dtype).eps * scale.amax(-1)[..., None, None] * eye
        L, info = torch.linalg.cholesky_ex(M)
        bad = info != 0
        if not bool(bad.any()):
            break
        lam = torch.where(bad, torch.clamp(lam * 10, min=1e-3), lam)
    s = torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
    return torch.where(bad.unsqueeze(-1), torch.zeros_like(s), s), lam


def posterior_mode(vae: GaussianVAE, x: torch.Tensor, start: torch.Tensor, bijection=None, *,
                   config: ModeConfig = ModeConfig(),
                   prior_weight: float | torch.Tensor = 1.0) -> PosteriorMode:
    """The posterior mode of every point by damped Newton steps from ``start`` ``(R, N, d)``
    (e.g. the encoder mean ``guide.loc(x)``); see the module docstring.

    ``x`` is a replica batch ``(R, N, ...)``. Points that do not converge keep their best
    iterate and are marked ``found = False``: use their numbers only knowingly.
    """
    def f(u):  # candidate steps may leave the support: -inf or NaN there, never an error
        with pyro.validation_enabled(False):
            return log_joint(vae, x, u, bijection, prior_weight)

    u = start.detach().clone()
    value, g, H = value_grad_hessian(f, u)
    lam = torch.zeros(value.shape, dtype=value.dtype, device=value.device)
    floor = 16 * torch.finfo(value.dtype).eps
    it = 0
    while True:
        decrement, pd = _newton_decrement(-H, g)
        done = pd & (decrement < config.tol) & torch.isfinite(value)
        if bool(done.all()) or it == config.max_iter:
            break
        it += 1
        step, lam = _damped_solve(-H, g, lam)
        # Backtrack along the step: on a curved ridge (an ill-conditioned posterior) the full
        # Newton step leaves the ridge, and raising the damping alone would shrink the step
        # along the ridge to a crawl. The largest of 1, 1/2, ..., 1/256 that does not lower
        # the log density is taken; if none does, the damping rises for the next step.
        ok = torch.zeros_like(done)
        u_next = u
        with torch.no_grad():
            for t in (2.0 ** -k for k in range(9)):
                u_new = u + t * step
                v_new = f(u_new)
                take = torch.isfinite(v_new) & torch.isfinite(u_new).all(-1) & ~done & ~ok & \
                    (v_new >= value - floor * value.abs())
                u_next = torch.where(take.unsqueeze(-1), u_new, u_next)
                ok |= take
                if bool((ok | done).all()):
                    break
        u = u_next
        lam = torch.where(ok, lam / 10, torch.clamp(lam * 10, min=1e-3))
        lam = torch.where(lam < 1e-6, torch.zeros_like(lam), lam)
        value, g, H = value_grad_hessian(f, u)
    return PosteriorMode(u.detach(), -H, value, decrement, done, it)


def _newton_decrement(P: torch.Tensor, g: torch.Tensor):
    """``g^T P^-1 g / 2`` per point and whether ``P`` is positive definite (else ``inf``)."""
    L, info = torch.linalg.cholesky_ex(P)
    pd = info == 0
    s = torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
    dec = 0.5 * (g * s).sum(-1)
    return torch.where(pd, dec.abs(), torch.full_like(dec, float("inf"))), pd


def mahalanobis(a: torch.Tensor, b: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """``sqrt((a - b)^T P (a - b))`` per point: a distance in posterior standard deviations."""
    diff = (a - b).unsqueeze(-1)
    return (diff.transpose(-1, -2) @ precision @ diff).squeeze(-1).squeeze(-1).clamp(
        min=0).sqrt()
