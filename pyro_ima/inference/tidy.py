"""Per-replica evaluation as tidy rows: one row per (replica, metric)."""

from __future__ import annotations

import torch

from .. import metrics
from ..models.guides import AmortizedGaussianGuide
from ..models.vae import GaussianVAE
from .elbo import as_replica_batch, elbo_per_point
from .likelihood import exact_log_px, importance_log_px

__all__ = ["evaluate_replicas"]


def evaluate_replicas(vae: GaussianVAE, guide: AmortizedGaussianGuide, x: torch.Tensor,
                      z_true: torch.Tensor | None = None, *, seeds=None, mixing=None,
                      num_samples: int = 200, elbo_particles: int = 32,
                      seed: int = 0) -> list[dict]:
    """Headline metrics of every replica as tidy rows ``{replica, seed, gamma2, beta, metric,
    value}``.

    Metrics (means over the points of ``x``): ``elbo``, ``log_px_is`` (Laplace proposal),
    ``gap``, ``khat_median`` (-1 counts a point whose weights were all equal),
    ``khat_frac_above_0_7``, ``c_ima`` and ``c_conf`` of the decoder at
    the inferred latents, ``mcc_pearson``/``mcc_spearman`` (with ``z_true``), ``log_px_exact``
    (with a fixed known ``mixing``). Works for a single model too (one replica, index 0).
    ``x`` and ``z_true`` may be shared ``(N, ...)`` or per replica ``(R, N, ...)``.
    """
    R = vae.replicas
    xr = as_replica_batch(vae, x)
    with torch.no_grad():
        z_hat = guide.point_estimate(xr)
        J = metrics.jacobian(vae.decoder, z_hat)
    per = {"c_ima": metrics.ima_contrast(J).mean(-1), "c_conf": metrics.conformal_contrast(J)
           .mean(-1)}
    elbo = elbo_per_point(vae, guide, xr, num_particles=elbo_particles, seed=seed)
    is_res = importance_log_px(vae, guide, xr, num_samples=num_samples, proposal="laplace",
                               seed=seed + 1, khat_warn=1.0)
    per.update(elbo=elbo.mean(-1), log_px_is=is_res.log_px.mean(-1),
               gap=(is_res.log_px - elbo.double()).mean(-1),
               khat_median=torch.where(torch.isneginf(is_res.khat), -1.0, is_res.khat)
               .nanmedian(-1).values,
               khat_frac_above_0_7=(is_res.khat > 0.7).double().mean(-1))
    if mixing is not None and not vae.decoder_trainable:
        per["log_px_exact"] = exact_log_px(mixing, vae.prior, xr).mean(-1)
    n_rep = R or 1
    if z_true is not None:
        zt = z_true if z_true.dim() == 3 else z_true.expand((n_rep,) + z_true.shape)
        zh = z_hat if R is not None else z_hat.unsqueeze(0)
        for method in ("pearson", "spearman"):
            per[f"mcc_{method}"] = torch.tensor(
                [metrics.mcc(zt[r], zh[r], method).score for r in range(n_rep)])
    seeds = list(range(n_rep)) if seeds is None else list(seeds)
    gamma2 = vae.gamma2.reshape(-1).expand(n_rep).tolist()
    beta = vae.beta.reshape(-1).expand(n_rep).tolist()
    rows = []
    for r in range(n_rep):
        for name, values in per.items():
            v = values.reshape(-1)[r] if values.numel() > 1 else values.reshape(-1)[0]
            rows.append({"replica": r, "seed": int(seeds[r]), "gamma2": gamma2[r],
                         "beta": beta[r], "metric": name, "value": float(v)})
    return rows
