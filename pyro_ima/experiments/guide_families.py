"""Study 6 (new): the gap of each guide family against its predicted limit, and MCC by family.

Part A, fixed decoders (SmoothLeakyMLP: not IMA; OrthogonalMLP: IMA, not conformal; Moebius:
conformal), Gaussian latents (scale 0.2 around the origin, away from the Moebius pole), d = 2,
gamma2 on a grid: for each family, ELBO* (per-point optimum, started at the family's fit to the
Laplace posterior centred at the true inverse) and the IS log p, so the approximation gap
``log p - ELBO*`` against the family's predicted limit: C_IMA (diagonal), C_conf (isotropic:
the paper's conformal conjecture), 0 (full).

Part B, learned decoders: MCC by guide family on a conformal mixing (Moebius) and on an
IMA-but-not-conformal one (OrthogonalMLP with unequal column scales), gamma2 = 1e4; with
``mixing_seeds``, on several independent draws of each mixing (its ``W`` and its dataset),
each draw's mean over seeds then being the unit of the figure's intervals. The latents' scale
(``learned_prior_scale``, default 0.2: there OrthogonalMLP's nonlinearity is nearly linear over
the data), a KL warm-up and the plateau patience are options; :func:`learned_fit` is part B's
training on any mixing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .. import data, inference, metrics, mixings, models, priors
from .._utils import check_int, check_positive
from .common import (
    Runtime,
    TrainingConfig,
    format_table,
    kl_warmup,
    precision_warmup,
    replica_vae,
    train,
)
from .figures import GAMMA2, caption, mean_ci95, pyplot, save_figure

__all__ = ["Config", "QUICK", "FULL", "settings", "run_setting", "summarize", "plot", "claim",
           "make_mixing", "learned_fit", "LearnedFit"]

FAMILIES = ("diagonal", "isotropic", "full")
PRIOR_SCALE = 0.2
LEARNED_D = 3  # part B's latent (and data) dimension


MIXINGS = ("smooth_leaky_mlp", "orthogonal_mlp", "orthogonal_linear", "moebius")


def make_mixing(name: str, d: int, seed: int = 0):
    """The mixing ``name`` in ``d`` dimensions, its random parts (``W``, Moebius's) from
    ``seed``."""
    if name not in MIXINGS:
        raise ValueError(f"mixing: expected one of {list(MIXINGS)}, got {name!r}")
    if name == "smooth_leaky_mlp":
        return mixings.SmoothLeakyMLP(d, seed=seed)
    if name in ("orthogonal_mlp", "orthogonal_linear"):  # the latter: slope 1, no nonlinearity
        return mixings.OrthogonalMLP(d, seed=seed, scales=torch.logspace(-0.5, 0.5, d),
                                     slope=1.0 if name == "orthogonal_linear" else 0.2)
    return mixings.Moebius(d, seed=seed, alpha=4.0)


@dataclass(frozen=True)
class Config(TrainingConfig):
    decoders: tuple = ("smooth_leaky_mlp", "orthogonal_mlp", "moebius")
    gamma2s: tuple = (1e1, 1e2, 1e3, 1e4, 1e5)
    points: int = 1000
    refine_steps: int = 300
    is_samples: int = 1000
    learned_mixings: tuple = ("moebius", "orthogonal_mlp")
    learned_gamma2: float = 1e4
    seeds: int = 10
    seed_offset: int = 0  # part B trains seeds seed_offset, ..., seed_offset + seeds - 1
    # part B's draws of each mixing: its random parts (W) and its dataset from each of these
    # seeds, one setting per draw (0: the draw of every 6B run before the sweep over draws)
    mixing_seeds: tuple = (0,)
    # part B's precision warm-up (common.precision_warmup; None: none, the 6B runs so far)
    warmup_gamma2: float | None = None
    warmup_epochs: int = 10
    # part B's KL warm-up (common.kl_warmup: the latent site weighted by this beta < 1 for
    # kl_warmup_epochs epochs first, against posterior collapse; None: none, the runs so far)
    kl_warmup_beta: float | None = None
    kl_warmup_epochs: int = 10
    # part B's latent scale: the sd of its Gaussian sources and prior (PRIOR_SCALE, 0.2, the
    # runs so far: there OrthogonalMLP's nonlinearity is nearly linear over the data; at 1 its
    # slope sigma' ranges over (0.2, 1))
    learned_prior_scale: float = PRIOR_SCALE

    # added after results were computed; at these defaults the numbers are the earlier ones
    FINGERPRINT_OMITS_DEFAULT: ClassVar[tuple] = ("kl_warmup_beta", "kl_warmup_epochs",
                                                  "learned_prior_scale")


# Part B trains with the Moebius study's protocol (lr 3e-3, per-replica plateau halving).
FULL = Config(epochs=60, patience=3, lr=3e-3, lr_halvings=4)
QUICK = Config(gamma2s=(1e2, 1e4), points=100, refine_steps=100, is_samples=300, seeds=2,
               n=2000, epochs=8, patience=4)


def settings(cfg: Config) -> list[dict]:
    if (not isinstance(cfg.mixing_seeds, (tuple, list)) or not cfg.mixing_seeds
            or len(set(cfg.mixing_seeds)) != len(cfg.mixing_seeds)):
        raise ValueError("mixing_seeds: expected distinct seeds (ints >= 0), at least one, got "
                         f"{cfg.mixing_seeds!r}")
    for k in cfg.mixing_seeds:
        check_int("mixing_seeds", k, minimum=0)
    if cfg.kl_warmup_beta is not None:
        b = cfg.kl_warmup_beta
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < 1:
            raise ValueError(f"kl_warmup_beta: expected None or a weight in (0, 1), got {b!r}")
        check_int("kl_warmup_epochs", cfg.kl_warmup_epochs)
    cfg.fit_config()  # the training fields (epochs, patience, ...), checked before any work
    ps = cfg.learned_prior_scale
    check_positive("learned_prior_scale", ps, allow_tensor=False)
    if ps > PRIOR_SCALE and "moebius" in cfg.learned_mixings:
        raise ValueError(f"learned_prior_scale: the moebius mixing needs latents near the "
                         f"origin, away from its pole (at most {PRIOR_SCALE}), got {ps!r}")
    fixed = [{"part": "fixed", "decoder": n, "family": f} for n in cfg.decoders
             for f in FAMILIES]
    learned = [{"part": "learned", "mixing": m, "mixing_seed": k, "family": f}
               for m in cfg.learned_mixings for k in cfg.mixing_seeds for f in FAMILIES]
    return fixed + learned


def _fixed(setting: dict, cfg: Config) -> list[dict]:
    d = 2
    f = make_mixing(setting["decoder"], d)
    p0 = priors.gaussian(d, scale=PRIOR_SCALE)
    R = len(cfg.gamma2s)
    vae = models.GaussianVAE(f, p0, torch.tensor(cfg.gamma2s), replicas=R)
    cls = models.GUIDES[setting["family"]]
    guide = cls(vae, models.MLP(d, cls.num_outputs(d), (8,), replicas=R, seed=list(range(R))))
    guide.fix_loc(f.inv)
    x = data.make_dataset(f, p0, n=max(10, 10 * cfg.points), seed=0).train.x[: cfg.points]
    elbo_star = inference.refine_elbo(vae, guide, x, seed=1,
                                      config=inference.RefineConfig(steps=cfg.refine_steps))
    is_px = inference.importance_log_px(vae, guide, x, num_samples=cfg.is_samples,
                                        proposal="laplace", seed=2, khat_warn=1.0)
    with torch.no_grad():
        J = metrics.jacobian(f, f.inv(x))
    # the family's gap as gamma -> infinity: its linearized gap for P = gamma^2 J^T J, which is
    # scale-free: D(J^T J) = c_IMA (diagonal), c_conf (isotropic), 0 (full)
    limit = cls.predicted_gap(J.transpose(-1, -2) @ J).mean()
    c_ima, c_conf = metrics.ima_contrast(J).mean(), metrics.conformal_contrast(J).mean()
    values = {"approximation_gap": (is_px.log_px - elbo_star).mean(-1),
              "predicted_limit": limit.expand(R), "c_ima": c_ima.expand(R),
              "c_conf": c_conf.expand(R)}
    return inference.tidy_rows(values, {"gamma2": [float(g) for g in cfg.gamma2s]},
                               study="guide_families", part="fixed",
                               decoder=setting["decoder"], family=setting["family"], seed=0)


@dataclass
class LearnedFit:
    """What :func:`learned_fit` trained: the replica batch, its data and seeds, the plateau
    fit and which replicas failed (in a warm-up or the fit; their numbers must not be used)."""

    vae: object
    guide: object
    dataset: data.Dataset
    seeds: list
    fit: inference.FitResult
    failed: torch.Tensor


def learned_fit(f, family: str, cfg: Config, draw: int = 0, rt: Runtime = Runtime(), *,
                decoder=None) -> LearnedFit:
    """Part B's training of guide ``family`` on data from the mixing ``f`` (any callable on
    ``(N, d)`` latents; draw ``draw`` seeds its dataset): seeds ``cfg.seed_offset`` on as one
    replica batch, Gaussian sources and prior of sd ``cfg.learned_prior_scale``, the precision
    warm-up, then the KL warm-up (each if set), then the plateau protocol at
    ``cfg.learned_gamma2``. ``decoder``: a fixed decoder instead of the learned MLP (e.g. ``f``
    itself, to see what ELBO the true factors reach)."""
    d = LEARNED_D
    p0 = priors.gaussian(d, scale=cfg.learned_prior_scale)
    seeds = list(range(cfg.seed_offset, cfg.seed_offset + cfg.seeds))
    ds = data.make_dataset(f, p0, n=cfg.n, seed=draw)
    g2 = cfg.learned_gamma2
    first = g2 if cfg.warmup_gamma2 is None else min(g2, cfg.warmup_gamma2)
    vae, guide = replica_vae(d, p0, torch.full((len(seeds),), g2), seeds, family=family,
                             init_scale=1 / math.sqrt(first), decoder=decoder)
    warm_failed, _ = precision_warmup(vae, guide, ds.train, ds.val, cfg, seeds, rt,
                                      cfg.warmup_gamma2, cfg.warmup_epochs)
    kl_failed, _ = kl_warmup(vae, guide, ds.train, ds.val, cfg, seeds, rt,
                             cfg.kl_warmup_beta, cfg.kl_warmup_epochs)
    fit = train(vae, guide, ds.train, ds.val, cfg, seeds, rt, desc="guide families")
    return LearnedFit(vae, guide, ds, seeds, fit, fit.failed | warm_failed | kl_failed)


def _learned(setting: dict, cfg: Config, rt: Runtime) -> list[dict]:
    draw = setting.get("mixing_seed", 0)
    r = learned_fit(make_mixing(setting["mixing"], LEARNED_D, seed=draw), setting["family"],
                    cfg, draw, rt)
    m = inference.evaluate(r.vae, r.guide, r.dataset.test.x, r.dataset.test.z, metrics=("mcc",))
    return inference.tidy_rows({"mcc": m["mcc_pearson"]}, {"seed": r.seeds}, failed=r.failed,
                               study="guide_families", part="learned",
                               mixing=setting["mixing"], mixing_seed=draw,
                               family=setting["family"], gamma2=cfg.learned_gamma2)


def run_setting(setting: dict, cfg: Config, rt: Runtime = Runtime()) -> list[dict]:
    return _fixed(setting, cfg) if setting["part"] == "fixed" else _learned(setting, cfg, rt)


def summarize(rows: list[dict]) -> dict:
    fixed: dict = {}
    for r in rows:
        if r["part"] == "fixed":
            key = f"{r['decoder']}/{r['family']}"
            fixed.setdefault(key, {}).setdefault(r["metric"], {})[r["gamma2"]] = r["value"]
    learned: dict = {}
    by_draw: dict = {}
    failed = 0
    for r in rows:
        if r["part"] == "learned":
            if r.get("failed"):  # its numbers are not used (check_rows: None only if failed)
                failed += 1
                continue
            learned.setdefault(f"{r['mixing']}/{r['family']}", []).append(r["value"])
            by_draw.setdefault(f"{r['mixing']}/{r.get('mixing_seed', 0)}/{r['family']}",
                               []).append(r["value"])
    draws = len({k.split("/")[1] for k in by_draw})
    # a yardstick for part B (Gaussian sources): the mean MCC of a uniformly random rotation
    # of the true latents, what recovery up to an unidentified rotation scores on average
    chance = float(metrics.rotation_chance_mcc(LEARNED_D).mean()) if learned else None
    out = {"fixed": fixed,
           "learned_mcc": {k: float(np.mean(v)) for k, v in sorted(learned.items())},
           "rotation_chance_mcc": chance, "learned_draws": draws, "learned_failed": failed}
    if draws > 1:  # each draw's own means: with several, they (not the pool) are the units
        out["learned_mcc_by_draw"] = {k: float(np.mean(v)) for k, v in sorted(by_draw.items())}
    return out


def table(summary: dict) -> str:
    rows = []
    for key, m in summary["fixed"].items():
        dec, fam = key.split("/")
        for g in m["approximation_gap"]:
            rows.append((dec, fam, f"{float(g):g}", m["approximation_gap"][g],
                         m["predicted_limit"][g]))
    a = format_table(("decoder", "family", "gamma2", "log p - ELBO*", "predicted limit"), rows,
                     "A: fixed decoders, the approximation gap of each family vs its limit "
                     "(diagonal: C_IMA, isotropic: C_conf, full: 0)")
    pooled = summary.get("learned_draws", 1) > 1
    b = format_table(("mixing", "family", "MCC (mean over seeds"
                      + (f" and {summary['learned_draws']} draws, pooled)" if pooled else ")")),
                     [(*k.split("/"), v) for k, v in summary["learned_mcc"].items()],
                     "B: learned decoders, MCC by guide family (a random rotation of the "
                     f"latents: {summary.get('rotation_chance_mcc') or float('nan'):.3f})")
    return a + "\n" + b


def claim(summary: dict) -> str:
    parts = []
    for key, m in summary["fixed"].items():
        g = max(m["approximation_gap"])
        parts.append(f"{key}: gap {m['approximation_gap'][g]:.3f} vs limit "
                     f"{m['predicted_limit'][g]:.3f}")
    return "; ".join(parts)


def plot(rows: list[dict], summary: dict, path_stem) -> None:
    plt = pyplot()
    decoders = sorted({k.split("/")[0] for k in summary["fixed"]})
    fig, axes = plt.subplots(1, len(decoders) + 1, figsize=(3.6 * (len(decoders) + 1), 3.4))
    for ax, dec in zip(axes, decoders, strict=False):
        for fam, color in zip(FAMILIES, ("C0", "C1", "C2"), strict=True):
            m = summary["fixed"].get(f"{dec}/{fam}")
            if m is None:
                continue
            g = [float(v) for v in m["approximation_gap"]]
            ax.plot(g, list(m["approximation_gap"].values()), "o-", color=color, ms=4,
                    label=f"{fam} encoder")
            ax.plot(g, list(m["predicted_limit"].values()), "--", color=color, lw=1)
        ax.set_xscale("log")
        ax.set_title(dec.replace("_", " ") + " decoder (fixed)")
        ax.set_xlabel(GAMMA2)
        ax.set_ylabel(r"$\log p(x) - $ELBO$^*$ (nats)")
        ax.legend(loc="best")
    ax = axes[-1]
    groups: dict = {}  # the units of each bar: seeds, or each draw's mean over its seeds
    if "learned_mcc_by_draw" in summary:
        for key, v in summary["learned_mcc_by_draw"].items():
            mix, _, fam = key.split("/")
            groups.setdefault((mix, fam), []).append(v)
    else:
        for r in rows:
            if r["part"] == "learned" and r["metric"] == "mcc" and not r.get("failed"):
                groups.setdefault((r["mixing"], r["family"]), []).append(r["value"])
    keys = sorted(groups, key=lambda k: (k[0], FAMILIES.index(k[1])))
    lo_hi = [mean_ci95(groups[k]) for k in keys]
    colors = [f"C{FAMILIES.index(f)}" for _, f in keys]
    ax.bar(range(len(keys)), [m for m, _ in lo_hi], color=colors,
           yerr=[h for _, h in lo_hi], capsize=3)
    ax.set_xticks(range(len(keys)), [f"{mix.replace('_', ' ')}\n{fam}" for mix, fam in keys],
                  fontsize=7, rotation=30, ha="right")
    if summary.get("rotation_chance_mcc") is not None:
        ax.axhline(summary["rotation_chance_mcc"], color="0.3", ls=":", lw=1.2,
                   label="a random rotation of the true latents")
        ax.legend(loc="lower left", fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("MCC (mean, 95% interval)")
    ax.set_title("learned decoders: MCC by encoder family")
    caption(fig, "Guide families (new study; the paper's conjectures). Fixed decoders: the "
                 "approximation gap of each encoder family (solid) against its predicted limit "
                 "(dashed: C_IMA for the diagonal family as proved in the paper, C_conf for the "
                 "isotropic one as conjectured, 0 for the full one). Right: learned decoders at "
                 "gamma^2 = " f"{summary.get('learned_gamma2', 1e4):g}, mean MCC over seeds "
                 + (f"and {summary['learned_draws']} draws of each mixing, with a 95% "
                    "t-interval over the draws' means" if "learned_mcc_by_draw" in summary
                    else "with a 95% t-interval")
                 + "; dotted: the mean MCC of a uniformly random rotation of Gaussian latents "
                   "(chance for rotation-symmetric solutions).")
    fig.tight_layout()
    save_figure(fig, path_stem)
