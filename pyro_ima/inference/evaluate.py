"""The one evaluation path: headline metrics per replica, and tidy rows of them."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import metrics as _metrics
from .._utils import as_tensor_on, check_int, map_tensors, to_like
from ..models.guides import AmortizedGaussianGuide, narrow_guide
from ..models.vae import VAE, GaussianVAE
from .elbo import as_replica_batch, vae_elbo_per_point
from .likelihood import KHAT_THRESHOLD, exact_log_px, khat_summary, vae_importance_log_px

__all__ = ["EvalConfig", "evaluate", "tidy_rows", "evaluate_replicas", "summary_line",
           "METRIC_GROUPS"]

METRIC_GROUPS = ("mcc", "contrasts", "likelihood")
FLAG_WARN = 0.1
"""``evaluate`` warns when more than this share of points' log p(x) estimates are flagged."""


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of the evaluation (the CLI's ``train`` and ``evaluate`` share these defaults).

    Arguments:
        points: how many of the points the ELBO and importance-sampled ``log p`` use (the first
            ones; ``None``: all). MCC and contrasts always use every point.
        elbo_particles: particles of the per-point ELBO.
        is_samples: importance samples per point.
        proposal: the IS proposal, ``"laplace"`` or ``"guide"`` (see ``importance_log_px``);
            ``"auto"``: the Laplace proposal for Gaussian VAEs, the guide (IWAE) otherwise.
        jacobian_chunk: points per Jacobian chunk (bounds memory for image decoders).
    """

    points: int | None = 500
    elbo_particles: int = 100
    is_samples: int = 500
    proposal: str = "auto"
    jacobian_chunk: int = 256

    def __post_init__(self):
        if self.points is not None:
            check_int("points", self.points)
        check_int("elbo_particles", self.elbo_particles)
        check_int("is_samples", self.is_samples)
        check_int("jacobian_chunk", self.jacobian_chunk)
        if self.proposal not in ("auto", "laplace", "guide"):
            raise ValueError(f"proposal: expected 'auto', 'laplace' or 'guide', got "
                             f"{self.proposal!r}")


def evaluate(vae: VAE, guide: AmortizedGaussianGuide, x, z_true=None, *,
             mixing=None, config: EvalConfig = EvalConfig(), seed: int = 0,
             metrics: Sequence[str] = METRIC_GROUPS) -> dict[str, torch.Tensor]:
    """Headline metrics of every replica, each a float64 tensor ``(R,)`` (means over points).

    Groups (``metrics``):

    - ``"mcc"`` (needs ``z_true``): ``mcc_pearson``, ``mcc_spearman`` between the true latents
      and ``guide.point_estimate(x)``, and ``mcc_factor{k}``: true latent ``k``'s matched
      |Pearson correlation|;
    - ``"contrasts"``: ``c_ima``, ``c_conf`` of the decoder at the inferred latents (and
      ``c_row`` where its Jacobian is square);
    - ``"likelihood"``: on the first ``config.points`` points, ``elbo``, the
      importance-sampled ``log_px_is`` with ``ess_median``, ``khat_median`` and
      ``khat_frac_above`` (the share of points with k-hat > 0.7; see ``khat_summary``),
      ``flagged_frac`` (the share of points whose estimate ``inference.reliability`` flags as
      untrustworthy; a ``RuntimeWarning`` when above 10%), the ``gap = log_px_is - elbo``, and
      ``log_px_exact`` (change of variables) when ``mixing`` is the model's fixed decoder.

    ``x`` and ``z_true`` may be shared ``(N, ...)`` or per replica ``(R, N, ...)``.
    """
    unknown = set(metrics) - set(METRIC_GROUPS)
    if unknown:
        raise ValueError(f"metrics: expected groups from {METRIC_GROUPS}, got {sorted(unknown)}")
    xr = as_replica_batch(vae, x)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        z_hat = guide.point_estimate(xr)  # (R, N, d)
    if "mcc" in metrics:
        if z_true is None:
            raise ValueError("z_true: the 'mcc' metrics need the true latents")
        zt = as_tensor_on(z_true, z_hat.device)
        zt = zt.expand(z_hat.shape) if zt.dim() == 2 else zt
        for method in ("pearson", "spearman"):
            res = [_metrics.mcc(zt[r], z_hat[r], method) for r in range(vae.replicas)]
            out[f"mcc_{method}"] = torch.tensor([m.score for m in res], dtype=torch.float64,
                                                device="cpu")
            if method == "pearson":  # each true latent's matched |correlation|
                for k in range(zt.shape[-1]):
                    out[f"mcc_factor{k}"] = torch.tensor([m.per_factor[k] for m in res],
                                                         dtype=torch.float64, device="cpu")
    if "contrasts" in metrics:
        with torch.no_grad():
            J = _metrics.jacobian(vae.decoder, z_hat, chunk_size=config.jacobian_chunk).double()
        out["c_ima"] = _metrics.ima_contrast(J).mean(-1)
        out["c_conf"] = _metrics.conformal_contrast(J).mean(-1)
        if J.shape[-1] == J.shape[-2]:
            out["c_row"] = _metrics.row_contrast(J).mean(-1)
    if "likelihood" in metrics:
        xs = xr[:, : config.points]
        guide = narrow_guide(guide, 0, xs.shape[1])  # a guide bound to points: its first ones
        elbo = vae_elbo_per_point.batched(vae, guide, xs, num_particles=config.elbo_particles,
                                      seed=seed).double()
        proposal = config.proposal if config.proposal != "auto" else (
            "laplace" if isinstance(vae, GaussianVAE) else "guide")
        is_res = vae_importance_log_px.batched(vae, guide, xs, num_samples=config.is_samples,
                                               proposal=proposal, seed=seed + 1,
                                               khat_warn=1.0)
        k = khat_summary(is_res.khat, KHAT_THRESHOLD)
        flagged = (~is_res.reliable).double().mean(-1)
        out.update(elbo=elbo.mean(-1), log_px_is=is_res.log_px.mean(-1),
                   gap=(is_res.log_px - elbo).mean(-1), ess_median=is_res.ess.median(-1).values,
                   khat_median=k["khat_median"], khat_frac_above=k["khat_frac_above"],
                   flagged_frac=flagged)
        if bool((flagged > FLAG_WARN).any()):
            warnings.warn(f"evaluate: {float(flagged.max()):.0%} of the points' importance-"
                          f"sampled log p(x) are flagged unreliable (see inference.reliability); "
                          f"log_px_is and gap are not to be trusted there (more is_samples help)",
                          RuntimeWarning, stacklevel=2)
        if mixing is not None and not vae.decoder_trainable:
            mixing = map_tensors(mixing, to_like(vae.gamma2))
            with torch.no_grad():  # a learned prior's parameters need no graph here
                out["log_px_exact"] = exact_log_px(mixing, vae.prior, xs).double().mean(-1)
    return {k: v.double().cpu() for k, v in out.items()}


def tidy_rows(values: dict[str, torch.Tensor], labels: dict[str, Sequence] | None = None, *,
              failed: torch.Tensor | None = None, **constants) -> list[dict]:
    """``{metric: (R,)}`` as tidy rows ``{replica, **labels[r], **constants, metric, value}``,
    replica by replica.

    With ``failed`` (``FitResult.failed``) every row says whether its replica's training
    failed; such a replica's non-finite values become ``None``. Any other non-finite value
    raises ``FloatingPointError`` naming it: nothing NaN is written silently.
    """
    labels = labels or {}
    R = len(next(iter(values.values()))) if values else 0
    rows = []
    for r in range(R):
        gave_up = failed is not None and bool(failed[r])
        for name, v in values.items():
            value = float(v[r])
            if not math.isfinite(value):
                if not gave_up:
                    raise FloatingPointError(f"{name}: non-finite value {value} for replica {r}")
                value = None
            row = {"replica": r, **{k: lab[r] for k, lab in labels.items()}, **constants,
                   "metric": name, "value": value}
            if failed is not None:
                row["failed"] = gave_up
            rows.append(row)
    return rows


def replica_labels(vae: VAE, seeds: Sequence[int] | None = None) -> dict[str, list]:
    """The default labels of a model's replicas: ``seed``, ``gamma2``, ``beta``."""
    seeds = list(range(vae.replicas)) if seeds is None else [int(s) for s in seeds]
    return {"seed": seeds, "gamma2": vae.gamma2.tolist(), "beta": vae.beta.tolist()}


def evaluate_replicas(vae: VAE, guide: AmortizedGaussianGuide, x, z_true=None, *,
                      seeds=None, mixing=None, config: EvalConfig = EvalConfig(),
                      seed: int = 0) -> list[dict]:
    """:func:`evaluate` as tidy rows ``{replica, seed, gamma2, beta, metric, value}``."""
    groups = METRIC_GROUPS if z_true is not None else ("contrasts", "likelihood")
    return tidy_rows(evaluate(vae, guide, x, z_true, mixing=mixing, config=config, seed=seed,
                              metrics=groups), replica_labels(vae, seeds))


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def summary_line(m: dict) -> str:
    """One line of the headline metrics of one replica (a dict of floats)."""
    parts = []
    if "mcc_pearson" in m:
        parts.append(f"MCC {m['mcc_pearson']:.3f} (Spearman {m['mcc_spearman']:.3f})")
    if "c_ima" in m:
        parts.append(f"c_IMA {m['c_ima']:.3f}  c_conf {m['c_conf']:.3f}")
    if "elbo" in m:
        on = f"on {m['is_points']} test points: " if "is_points" in m else ""
        parts.append(f"{on}ELBO {m['elbo']:.3f}  IS log p {m['log_px_is']:.3f} (k-hat median "
                     f"{_fmt(m.get('khat_median'), '.2f')}, {m['khat_frac_above']:.0%} > "
                     f"{KHAT_THRESHOLD}; {m['flagged_frac']:.0%} flagged unreliable)  "
                     f"gap {m['gap']:.3f}")
    if "log_px_exact" in m:
        parts.append(f"exact log p {m['log_px_exact']:.3f}")
    return "  ".join(parts)
