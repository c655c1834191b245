"""Study 4 (paper Fig. 3 right): MCC against the contrast of a linear map after the Moebius.

Mixing ``L_c o Moebius`` with ``L_c = VolumePreservingLinear.with_contrast(c)`` (|det| = 1,
c_IMA = c), d = 3, uniform latents and prior, gamma2 = 1e5, learned decoder, diagonal guide; 100
seeds in total over the grid of c. Per replica: MCC, the composed mixing's C_IMA (at the test
latents) and the learned decoder's c_IMA. Expected: MCC falls as the mixing leaves the IMA class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import ComposeTransform

from .. import inference, metrics, mixings, priors
from .common import (
    Runtime,
    TrainingConfig,
    fit_values,
    format_table,
    grid_settings,
    precision_warmup,
    replica_datasets,
    replica_vae,
    train,
    training_summary,
)
from .figures import caption, pyplot, save_figure, trend_line

__all__ = ["Config", "QUICK", "FULL", "settings", "run_setting", "summarize", "plot", "claim"]


@dataclass(frozen=True)
class Config(TrainingConfig):
    contrasts: tuple = (0.0, 0.4, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 6.8, 8.0)
    seeds_per_contrast: int = 10  # 100 in total
    gamma2: float = 1e5
    replicas_per_setting: int = 100
    # precision warm-up as in study 3 (common.precision_warmup; None: none)
    warmup_gamma2: float | None = None
    warmup_epochs: int = 10


# Study 3's protocol: lr 3e-3, per-replica plateau halving (patience 3, 4 halvings; the
# 60-epoch cap a safety net) after a precision warm-up (10 epochs at 1e3, then at 1e4).
FULL = Config(epochs=60, patience=3, lr=3e-3, lr_halvings=4, warmup_gamma2=1e3)
QUICK = Config(contrasts=(0.0, 6.0), seeds_per_contrast=3, n=6000, epochs=20, patience=5)


def settings(cfg: Config) -> list[dict]:
    """Every (contrast, seed) pair; seeds differ across contrasts (``1000 i + s``)."""
    return grid_settings(cfg.contrasts, range(cfg.seeds_per_contrast),
                         cfg.replicas_per_setting, paired=False)


def _mixing(c: float, seed: int):
    return ComposeTransform([mixings.Moebius(3, seed=seed),
                             mixings.VolumePreservingLinear.with_contrast(c, 3, seed=seed)])


def run_setting(setting: dict, cfg: Config, rt: Runtime = Runtime()) -> list[dict]:
    d = 3
    cs = {s: float(c) for c, s in setting["grid"]}
    seeds = [s for _, s in setting["grid"]]
    p0 = priors.uniform(d)
    tr, va, te, tz, mixes = replica_datasets(lambda s: _mixing(cs[s], s), p0, cfg.n, seeds)
    R = len(seeds)
    first = cfg.gamma2 if cfg.warmup_gamma2 is None else min(cfg.gamma2, cfg.warmup_gamma2)
    vae, guide = replica_vae(d, p0, torch.full((R,), cfg.gamma2), seeds,
                             init_scale=min(0.1, 1 / math.sqrt(first)))
    warm_failed, warm_epochs = precision_warmup(vae, guide, tr, va, cfg, seeds, rt,
                                                cfg.warmup_gamma2, cfg.warmup_epochs)
    fit = train(vae, guide, tr, va, cfg, seeds, rt, desc="linear contrast")
    m = inference.evaluate(vae, guide, te, tz, metrics=("mcc", "contrasts"))
    with torch.no_grad():
        c_mix = torch.stack([metrics.ima_contrast(metrics.jacobian(mixes[r], tz[r])).mean()
                             for r in range(R)])
    values = {"mcc": m["mcc_pearson"], "mixing_c_ima": c_mix, "decoder_c_ima": m["c_ima"],
              **fit_values(fit), "warmup_epochs": warm_epochs}
    return inference.tidy_rows(values, {"contrast": [cs[s] for s in seeds], "seed": seeds},
                               failed=fit.failed | warm_failed, study="linear_contrast",
                               gamma2=cfg.gamma2)


def summarize(rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        out.setdefault(r["contrast"], {}).setdefault(r["metric"], []).append(r["value"])
    per_c = {c: {m: float(np.mean(v)) for m, v in ms.items()} for c, ms in sorted(out.items())}
    mcc = np.array([r["value"] for r in rows if r["metric"] == "mcc"])
    cm = np.array([r["value"] for r in rows if r["metric"] == "mixing_c_ima"])
    from scipy.stats import spearmanr
    rho = float(spearmanr(cm, mcc).statistic) if len(mcc) > 2 else float("nan")
    return {"per_contrast": per_c, "spearman_mcc_vs_mixing_c_ima": rho,
            "training": training_summary(rows)}


def table(summary: dict) -> str:
    rows = [(float(c), v["mixing_c_ima"], v["mcc"], v["decoder_c_ima"])
            for c, v in summary["per_contrast"].items()]
    return format_table(("target c", "mixing C_IMA", "MCC", "decoder c_IMA"), rows,
                        f"MCC against the mixing's contrast (paper Fig. 3 right); Spearman "
                        f"{summary['spearman_mcc_vs_mixing_c_ima']:.3f}")


def claim(summary: dict) -> str:
    rho = summary["spearman_mcc_vs_mixing_c_ima"]
    return (f"Spearman(MCC, mixing C_IMA) = {rho:.2f}: MCC falls as the mixing leaves the IMA "
            f"class: {'held' if rho < 0 else 'not held'}")


def plot(rows: list[dict], summary: dict, path_stem) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    by = {}
    for r in rows:
        by.setdefault((r["contrast"], r["seed"]), {})[r["metric"]] = r["value"]
    pts = np.array([(v["mixing_c_ima"], v["mcc"]) for v in by.values()])
    ax.plot(pts[:, 0], pts[:, 1], "o", ms=3.5, alpha=0.6, label="one seed")
    if len(pts) > 2:
        trend_line(ax, pts[:, 0], pts[:, 1])
    ax.set_xlabel(r"$C_{\mathrm{IMA}}$ of the mixing (Moebius, then a linear map)")
    ax.set_ylabel("MCC (Pearson)")
    ax.set_ylim(min(0.4, float(pts[:, 1].min()) - 0.05), 1.02)
    ax.legend(loc="lower left")
    caption(fig, f"Leaving the IMA class (paper Fig. 3 right): a volume-preserving linear map "
                 f"of growing contrast after a Moebius mixing, gamma^2 = {rows[0]['gamma2']:g}, "
                 f"d = 3, uniform source and prior; {len(pts)} seeds. Spearman correlation of MCC "
                 f"with C_IMA: {summary['spearman_mcc_vs_mixing_c_ima']:.2f}.", width=80)
    fig.tight_layout()
    save_figure(fig, path_stem)
