"""Gap analytics: the theory's predictions, the refined ELBO*, and self-consistency metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._utils import check_int, check_positive, generator
from ..metrics import conformal_contrast, ima_contrast, jacobian, row_contrast
from ..models.guides import AmortizedGaussianGuide, narrow_guide
from ..models.vae import VAE, GaussianVAE, squeezes_replicas
from .elbo import as_replica_batch, check_chunks, vae_elbo_per_point
from .likelihood import (
    exact_log_px,
    require_gaussian,
    std_error,
    vae_importance_log_px,
)
from .posterior import ModeConfig, log_joint, posterior_mode, value_grad_hessian

__all__ = ["refine_elbo", "RefineConfig", "gap_report", "self_consistency", "decoder_inverse"]


_SOFTPLUS_INV_1 = math.log(math.e - 1.0)


@dataclass(frozen=True)
class RefineConfig:
    """Settings of :func:`refine_elbo` (reachable from :func:`gap_report`).

    Arguments:
        steps: Adam steps per point (0: the start, the family's fit to the Laplace posterior at
            the mode, which is the optimum for a linear decoder).
        lr, lr_end: Adam's step size, decayed exponentially from ``lr`` to ``lr_end``.
        particles: antithetic pairs of draws per step for the Monte Carlo part.
        eval_particles: antithetic pairs for the final estimate.
        mode: how the posterior mode is found (:class:`~pyro_ima.inference.posterior.ModeConfig`).
    """

    steps: int = 200
    lr: float = 0.05
    lr_end: float = 1e-3
    particles: int = 8
    eval_particles: int = 512
    mode: ModeConfig = ModeConfig()

    def __post_init__(self):
        check_int("steps", self.steps, minimum=0)
        check_positive("lr", self.lr)
        check_positive("lr_end", self.lr_end)
        check_int("particles", self.particles)
        check_int("eval_particles", self.eval_particles)


class _BoundTable(nn.Module):
    """The 'encoder' of a refined guide: each point's own parameters, for those points only.

    ``x`` ``(R, N, D)`` are the points, ``table`` ``(R, N, k)`` their guide outputs (means,
    then raw scales). :meth:`narrow_points` gives the table of a run of consecutive points,
    which chunked estimators use through :meth:`AmortizedGaussianGuide.narrow`.
    """

    def __init__(self, x: torch.Tensor, table: torch.Tensor):
        super().__init__()
        self.register_buffer("x", x.detach())
        self.register_buffer("table", table.detach())

    def narrow_points(self, start: int, length: int) -> _BoundTable:
        """The table of points ``start .. start + length - 1`` only."""
        n = self.x.shape[1]
        check_int("start", start, minimum=0)
        check_int("length", length)
        if start + length > n:
            raise ValueError(f"length: points {start}..{start + length - 1} asked of a refined "
                             f"guide that holds {n} points")
        return _BoundTable(self.x.narrow(1, start, length), self.table.narrow(1, start, length))

    def forward(self, x):
        if x.dim() == self.x.dim() - 1 and x.shape == self.x.shape[1:]:
            x = x.expand(self.x.shape)
        if x.shape != self.x.shape or not torch.equal(x, self.x):
            raise ValueError(f"x: this refined guide holds the parameters of the "
                             f"{self.x.shape[1]} points it was refined on and answers for "
                             f"exactly those (same order; guide.narrow(start, length) for a "
                             f"run of them), got other data of shape {tuple(x.shape)}")
        return self.table


def _expected_quadratic(f0, g0, H0, u0, m, L):
    """``E_q[Q(u)]`` for ``q = N(m, L L^T)`` and ``Q(u) = f0 + g0 (u - u0) + (u - u0)^T H0
    (u - u0) / 2``, per point."""
    dm = m - u0
    quad = (dm.unsqueeze(-2) @ H0 @ dm.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    trace = (H0 * (L @ L.transpose(-1, -2))).sum((-2, -1))
    return f0 + (g0 * dm).sum(-1) + 0.5 * (quad + trace)


def _elbo_cv(f, f0, g0, H0, u0, m, L, eps, prior_weight):
    """The ELBO of ``q_u = N(m, L L^T)`` per point with the second-order expansion of ``f`` at
    ``u0`` as control variate: ``E[f - Q] + E[Q] + w H(q)``; exact when ``f`` is quadratic (a
    linear decoder with a Gaussian prior). ``eps`` ``(S, R, B, d)`` antithetic draws."""
    u = m + (L @ eps.unsqueeze(-1)).squeeze(-1)  # (S, R, B, d)
    du = u - u0
    Q = f0 + (g0 * du).sum(-1) + 0.5 * (du.unsqueeze(-2) @ H0 @ du.unsqueeze(-1)).squeeze(
        -1).squeeze(-1)
    d = m.shape[-1]
    entropy = L.diagonal(dim1=-2, dim2=-1).log().sum(-1) + 0.5 * d * math.log(
        2 * math.pi * math.e)
    return (f(u) - Q).mean(0) + _expected_quadratic(f0, g0, H0, u0, m, L) + \
        prior_weight * entropy


@squeezes_replicas
def refine_elbo(vae: VAE, guide: AmortizedGaussianGuide, x, *,
                config: RefineConfig = RefineConfig(), seed: int = 0, chunk_size: int | None = 2048,
                beta_weighted: bool = False, return_guides: bool = False):
    """ELBO* per point: the best guide of the family for each point on its own.

    Works in the guide's unconstrained coordinates ``u`` with ``f(u) = log p(x, u)`` (see
    :mod:`~pyro_ima.inference.posterior`). Each point starts at its posterior mode ``u*``
    (Newton from the encoder mean) with the family's KL-optimal fit to the Laplace posterior
    ``N(u*, P^-1)`` (eq. 12 for the diagonal family), which is the optimum when ``f`` is
    quadratic; then ``config.steps`` Adam steps with a decaying step size refine the mean and
    scales on the point's own ELBO. The ELBO is estimated with the second-order expansion of
    ``f`` at ``u*`` as control variate, whose expectation under a Gaussian is exact, and
    antithetic draws: the estimate is exact for a linear decoder and has the variance of the
    posterior's departure from a Gaussian otherwise, so the refinement does not drift from the
    optimum it starts on. Points whose mode is not found start from the encoder instead.

    Returns ``elbo_star`` ``(R, N)`` (``(N,)`` for ``replicas=None``) in the model's dtype; with
    ``beta_weighted`` the beta-VAE objective ``E[log p(x|z)] - beta KL`` is maximized and
    returned; with ``return_guides`` also a guide of the same family holding every point's
    refined parameters, bound to ``x``: it refuses other data, and the estimators that work in
    chunks of points narrow it to each chunk (:meth:`AmortizedGaussianGuide.narrow`).
    """
    check_chunks(chunk_size)
    x = as_replica_batch(vae, x)
    n, d = x.shape[1], vae.latent_dim
    chunk_size = chunk_size or n
    w = vae.beta.reshape(-1, 1) if beta_weighted else 1.0
    T = guide.bijection
    g = generator(seed, vae.device)
    result, locs, raws = [], [], []
    for start in range(0, n, chunk_size):
        xs = x.narrow(1, start, min(chunk_size, n - start))
        gs = narrow_guide(guide, start, xs.shape[1])

        def f(u, xs=xs):
            return log_joint(vae, xs, u, T, w)

        with torch.no_grad():
            loc0 = gs.loc(xs)
            mode = posterior_mode(vae, xs, loc0, T, config=config.mode, prior_weight=w)
            u0 = torch.where(mode.found.unsqueeze(-1), mode.u, loc0)
            f0, g0, H0 = value_grad_hessian(f, u0)
            P = torch.where(mode.found[..., None, None], mode.precision,
                            torch.eye(d, dtype=x.dtype, device=x.device))
            L0 = torch.where(mode.found[..., None, None],
                             torch.linalg.cholesky(guide.optimal_covariance(P)),
                             gs.scale_tril(xs))
        delta = torch.zeros_like(u0, requires_grad=True)
        raw = u0.new_zeros(u0.shape[:-1] + (guide.num_scale_params(d),)).requires_grad_(True)

        def q(delta=delta, raw=raw, u0=u0, L0=L0):
            m = u0 + (L0 @ delta.unsqueeze(-1)).squeeze(-1)
            return m, L0 @ guide.tril_from_raw(raw, _SOFTPLUS_INV_1, d)

        opt = torch.optim.Adam([delta, raw], lr=config.lr)
        decay = (config.lr_end / config.lr) ** (1 / max(config.steps - 1, 1))
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, decay)
        for _ in range(config.steps):
            e = torch.randn((config.particles,) + u0.shape, generator=g, device=x.device,
                            dtype=x.dtype)
            m, L = q()
            loss = -_elbo_cv(f, f0, g0, H0, u0, m, L, torch.cat([e, -e]), w).sum()
            # gradients of the refined (mean, scale) only: nothing lands on the model's or
            # the guide's parameters, whose training may go on after this
            delta.grad, raw.grad = torch.autograd.grad(loss, [delta, raw])
            opt.step()
            sched.step()
        with torch.no_grad():
            e = torch.randn((config.eval_particles,) + u0.shape, generator=g, device=x.device,
                            dtype=x.dtype)
            m, L = q()
            result.append(_elbo_cv(f, f0, g0, H0, u0, m, L, torch.cat([e, -e]), w))
            locs.append(m)
            raws.append(type(guide).raw_from_tril(L, 0.0))
    elbo_star = torch.cat(result, -1)
    if not return_guides:
        return elbo_star
    table = torch.cat([torch.cat(locs, -2), torch.cat(raws, -2)], -1)
    refined = type(guide)(vae, _BoundTable(x, table))
    return elbo_star, refined


def decoder_inverse(decoder, x: torch.Tensor, z0: torch.Tensor, *, steps: int = 30,
                    tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``g(x)``, the preimage of ``x`` under a square decoder ``f``, by Newton's method on
    ``f(z) = x`` started at ``z0`` (e.g. the encoder mean); the inverse of a *learned* decoder,
    which has no closed form. Stops when every step is below ``tol`` (relative to ``1 + |z|``).

    Returns ``(z, residual)`` with ``residual = ||f(z) - x||`` per point: a point whose
    residual is not small has no preimage near ``z0`` (``x`` outside the decoder's range there).
    """
    check_int("steps", steps)
    z = z0.detach().clone()
    with torch.no_grad():
        for _ in range(steps):
            r = decoder(z) - x
            J = jacobian(decoder, z)
            if J.shape[-1] != J.shape[-2]:
                raise ValueError(f"decoder: expected a square Jacobian (D = d), got "
                                 f"{tuple(J.shape[-2:])}")
            step = torch.linalg.lstsq(J, r.unsqueeze(-1)).solution.squeeze(-1)
            z = z - step
            if float((step.abs() / (1 + z.abs())).max()) < tol:
                break
        residual = torch.linalg.vector_norm(decoder(z) - x, dim=-1)
    return z, residual


@squeezes_replicas
def self_consistency(vae: GaussianVAE, guide: AmortizedGaussianGuide, x: torch.Tensor,
                     inverse=None) -> dict[str, torch.Tensor]:
    """Per-point self-consistency of the encoder and decoder (Prop. 1), ``(R, N)`` tensors
    (``(N,)`` for ``replicas=None``).

    Keys: ``reconstruction_error`` ``||f(mu(x)) - x||``; ``decoder_inverse_error``
    ``||mu(x) - g(x)||`` with ``g`` the *learned* decoder's inverse (:func:`decoder_inverse`
    from ``mu(x)``; square decoders only) and ``decoder_inverse_residual`` (how exactly ``g(x)``
    was found); ``inverse_error`` ``||mu(x) - inverse(x)||`` for a known ``inverse`` (e.g. the
    true mixing's); ``encoder_variance`` (mean over latents) and ``inverse_gamma2`` ``(R,)``.
    """
    x = as_replica_batch(vae, x)
    with torch.no_grad():
        z = guide.point_estimate(x)
        out = {"reconstruction_error": torch.linalg.vector_norm(vae.decoder(z) - x, dim=-1),
               "encoder_variance": guide.covariance(x).diagonal(dim1=-2, dim2=-1).mean(-1),
               "inverse_gamma2": 1.0 / vae.gamma2}
        if x.shape[-1] == z.shape[-1] and vae.obs_event_dim == 1:
            g, res = decoder_inverse(vae.decoder, x, z)
            out["decoder_inverse_error"] = torch.linalg.vector_norm(z - g, dim=-1)
            out["decoder_inverse_residual"] = res
        if inverse is not None:
            out["inverse_error"] = torch.linalg.vector_norm(z - inverse(x), dim=-1)
    return out


@squeezes_replicas
def gap_report(vae: GaussianVAE, guide: AmortizedGaussianGuide, x, *, mixing=None,
               num_samples: int = 1000, refine: RefineConfig = RefineConfig(),
               elbo_particles: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Everything about the ELBO gap at each point: ``(R, N)`` tensors (``(N,)`` for
    ``replicas=None``).

    Keys: ``elbo`` (amortized), ``elbo_star`` (refined, :func:`refine_elbo` with ``refine``),
    ``log_px_is`` (importance sampling with the Laplace proposal at the posterior mode, float64)
    with its ``khat``, ``ess``, ``std_error`` and ``reliable`` flag, ``mode_found``,
    ``log_px_exact`` (change of variables, with ``mixing``: the noiseless limit), ``gap`` =
    ``log_px - elbo``, ``amortization_gap`` = ``elbo_star - elbo``, ``approximation_gap`` =
    ``log_px - elbo_star``, ``predicted_gap`` (the family's linearized gap for the precision at
    the posterior mode), ``c_ima``, ``c_conf`` and (square Jacobians) ``c_row`` of the decoder
    at the mode, ``log_px_minus_c_ima`` and ``predicted_variances`` ``(R, N, d)`` (eq. 12 for the
    diagonal family). Points whose mode was not found (``mode_found`` false) or whose estimate
    is not ``reliable`` should be left out of averages.
    """
    require_gaussian(vae)
    x = as_replica_batch(vae, x)
    elbo = vae_elbo_per_point.batched(vae, guide, x, num_particles=elbo_particles, seed=seed)
    elbo_star = refine_elbo.batched(vae, guide, x, config=refine, seed=seed + 1)
    is_res = vae_importance_log_px.batched(vae, guide, x, num_samples=num_samples,
                                           proposal="laplace", seed=seed + 2, mode=refine.mode)
    with torch.no_grad():
        mode = posterior_mode(vae, x, guide.loc(x), guide.bijection, config=refine.mode)
        found = mode.found
        # predictions only where a maximum was found (a singular or indefinite Hessian has none)
        P = torch.where(found[..., None, None], mode.precision,
                        torch.eye(vae.latent_dim, dtype=x.dtype, device=x.device))
        z = mode.u if guide.bijection is None else guide.bijection(mode.u)
        J = jacobian(vae.decoder, z)
    log_px = is_res.log_px
    rep = {"elbo": elbo, "elbo_star": elbo_star, "log_px_is": log_px, "khat": is_res.khat,
           "ess": is_res.ess, "std_error": std_error(is_res.ess, num_samples),
           "reliable": is_res.reliable, "mode_found": mode.found}
    if mixing is not None:
        with torch.no_grad():  # a learned prior's parameters need no graph here
            rep["log_px_exact"] = exact_log_px(mixing, vae.prior, x)
    rep.update(gap=log_px - elbo.double(), amortization_gap=elbo_star - elbo,
               approximation_gap=log_px - elbo_star.double(),
               predicted_gap=torch.where(found, guide.predicted_gap(P), torch.nan),
               predicted_variances=torch.where(found.unsqueeze(-1),
                                               guide.predicted_variances(P), torch.nan),
               c_ima=ima_contrast(J), c_conf=conformal_contrast(J))
    if J.shape[-1] == J.shape[-2]:  # the row contrast needs a square Jacobian
        rep["c_row"] = row_contrast(J)
    rep["log_px_minus_c_ima"] = log_px - rep["c_ima"].double()
    return rep
