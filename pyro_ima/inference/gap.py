"""Gap analytics: the theory's predictions, the refined ELBO*, and self-consistency metrics."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._utils import check_int, generator
from ..metrics import conformal_contrast, ima_contrast, jacobian, row_contrast
from ..models.guides import AmortizedGaussianGuide
from ..models.vae import GaussianVAE, squeezes_replicas
from .elbo import as_replica_batch, log_weights, standard_noise, vae_elbo_per_point
from .likelihood import (
    exact_log_px,
    laplace_precision,
    require_gaussian,
    vae_importance_log_px,
)

__all__ = ["refine_elbo", "gap_report", "self_consistency", "decoder_inverse"]


class _PointTable(nn.Module):
    """An 'encoder' holding free variational parameters for each point.

    Everything is stored whitened by the starting Gaussian ``N(mu0, L0 L0^T)``: the mean is
    ``mu0 + L0 delta`` and the Cholesky factor ``L0 M`` with ``M`` lower-triangular of the
    family's form (``M = I`` at the start), so one Adam learning rate suits every gamma.
    """

    _SOFTPLUS_INV_1 = math.log(math.e - 1.0)

    def __init__(self, guide: AmortizedGaussianGuide, loc0: torch.Tensor,
                 scale_tril0: torch.Tensor):
        super().__init__()
        object.__setattr__(self, "guide", guide)
        self.loc0, self.scale_tril0 = loc0.detach(), scale_tril0.detach()
        d = loc0.shape[-1]
        k = guide.num_scale_params(d)
        self.table = nn.Parameter(loc0.new_zeros(loc0.shape[:-1] + (d + k,)))

    def forward(self, x):
        d = self.loc0.shape[-1]
        delta, raw = self.table[..., :d], self.table[..., d:]
        loc = self.loc0 + (self.scale_tril0 @ delta.unsqueeze(-1)).squeeze(-1)
        M = self.guide.tril_from_raw(raw, self._SOFTPLUS_INV_1, d)
        return torch.cat([loc, self.guide.raw_from_scale_tril(self.scale_tril0 @ M)], -1)


@squeezes_replicas
def refine_elbo(vae: GaussianVAE, guide: AmortizedGaussianGuide, x: torch.Tensor, *,
                steps: int = 300, lr: float = 1e-2, num_particles: int = 8,
                eval_particles: int = 256, init: str = "laplace", seed: int = 0,
                chunk_size: int = 2048, beta_weighted: bool = False,
                return_guides: bool = False):
    """ELBO* per point: the guide's parameters optimized for each point separately.

    Each point's variational parameters (same family) start from the amortized encoder's mean
    and either the encoder's scales (``init="encoder"``) or the family's optimal fit to the
    Laplace posterior ``N(mu(x), P^-1)`` (``init="laplace"``, the theory's prediction: eq. 12
    for the diagonal family), then take ``steps`` Adam steps on that point's own ELBO (all
    points of a chunk batched: their ELBOs do not interact). The model stays fixed. Returns
    ``elbo_star``, ``(N,)`` / ``(R, N)``, from ``eval_particles`` fresh draws.

    With ``beta_weighted`` each point's parameters maximize the beta-VAE objective instead (and
    that is what is returned); with ``return_guides`` the refined per-chunk guides come back
    too, as ``(elbo_star, [(start, guide), ...])``.
    """
    require_gaussian(vae)
    if init not in ("laplace", "encoder"):
        raise ValueError(f"init: expected 'laplace' or 'encoder', got {init!r}")
    check_int("steps", steps, minimum=0)
    x = as_replica_batch(vae, x)
    n = x.shape[1]
    g = generator(seed)

    def next_seed():
        return int(torch.randint(2**62, (), generator=g, device="cpu"))

    result, guides = [], []
    for start in range(0, n, chunk_size):
        xs = x.narrow(1, start, min(chunk_size, n - start))
        with torch.no_grad():
            loc = guide.loc(xs)
            if init == "laplace":  # the family's optimal fit to N(loc, P^-1)
                raw = guide.raw_from_covariance(torch.linalg.inv(
                    laplace_precision.batched(vae, guide, loc)))
                fixed = torch.cat([loc, raw], -1)
                scale_tril0 = guide.with_encoder(lambda _, h=fixed: h).scale_tril(xs)
            else:
                scale_tril0 = guide.scale_tril(xs)
        table = _PointTable(guide, loc, scale_tril0)
        local = guide.with_encoder(table)
        local.fix_loc(None)
        opt = torch.optim.Adam(table.parameters(), lr=lr)
        b = xs.shape[1]
        for _ in range(steps):
            eps = standard_noise(vae, num_particles, b, next_seed())
            loss = -log_weights(vae, local, xs, eps, beta_weighted=beta_weighted).mean(0).sum()
            (table.table.grad,) = torch.autograd.grad(loss, table.table)
            opt.step()
        with torch.no_grad():
            eps = standard_noise(vae, eval_particles, b, next_seed())
            result.append(log_weights(vae, local, xs, eps, beta_weighted=beta_weighted).mean(0))
        guides.append((start, local))
    elbo_star = torch.cat(result, -1)
    return (elbo_star, guides) if return_guides else elbo_star


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
def gap_report(vae: GaussianVAE, guide: AmortizedGaussianGuide, x: torch.Tensor, *,
               mixing=None, num_samples: int = 1000, refine_steps: int = 300,
               elbo_particles: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Everything about the ELBO gap at each point: ``(R, N)`` tensors (``(N,)`` for
    ``replicas=None``).

    Keys: ``elbo`` (amortized), ``elbo_star`` (refined, :func:`refine_elbo`), ``log_px_is``
    (Laplace-proposal importance sampling at this gamma, float64) and its ``khat`` and ``ess``,
    ``log_px_exact`` (change of variables, with ``mixing``), ``gap`` = ``log_px - elbo``,
    ``amortization_gap`` = ``elbo_star - elbo``, ``approximation_gap`` = ``log_px - elbo_star``,
    ``predicted_gap`` (the family's linearized gap at the posterior mode ``g(x)`` if ``mixing``
    is given, else at ``mu(x)``), ``c_ima``, ``c_conf``, ``c_row`` of the decoder there,
    ``log_px_minus_c_ima`` and ``predicted_variances`` ``(R, N, d)`` (eq. 12 for the diagonal
    family). ``log_px`` is the IS estimate.
    """
    require_gaussian(vae)
    x = as_replica_batch(vae, x)
    elbo = vae_elbo_per_point.batched(vae, guide, x, num_particles=elbo_particles, seed=seed)
    elbo_star = refine_elbo.batched(vae, guide, x, steps=refine_steps, seed=seed + 1,
                                    eval_particles=elbo_particles)
    is_res = vae_importance_log_px.batched(vae, guide, x, num_samples=num_samples,
                                       proposal="laplace", seed=seed + 2)
    with torch.no_grad():
        if mixing is not None:
            z0 = mixing.inv(x)
            u0 = z0 if guide.bijection is None else guide.bijection.inv(z0)
        else:
            u0 = guide.loc(x)
        P = laplace_precision.batched(vae, guide, u0)
        J = jacobian(vae.decoder, u0 if guide.bijection is None else guide.bijection(u0))
    log_px = is_res.log_px
    rep = {"elbo": elbo, "elbo_star": elbo_star, "log_px_is": log_px,
           "khat": is_res.khat, "ess": is_res.ess}
    if mixing is not None:
        rep["log_px_exact"] = exact_log_px(mixing, vae.prior, x)
    rep.update(gap=log_px - elbo.double(), amortization_gap=elbo_star - elbo,
               approximation_gap=log_px - elbo_star.double(),
               predicted_gap=guide.predicted_gap(P),
               predicted_variances=guide.predicted_variances(P),
               c_ima=ima_contrast(J), c_conf=conformal_contrast(J))
    if J.shape[-1] == J.shape[-2]:  # the row contrast needs a square Jacobian
        rep["c_row"] = row_contrast(J)
    rep["log_px_minus_c_ima"] = log_px - rep["c_ima"].double()
    return rep
