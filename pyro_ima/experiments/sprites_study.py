"""Study 5 (paper Fig. 5): a conv VAE on the locally rendered Sprites, Beta prior, and the
gamma2 sweep of the public reference (0.1, 1, 10, 100).

The images are spriteworld's triangle as the official code draws it
(``sprites.SpritesConfig.geometry``): the first renderer here drew small squares in the frame's
middle, which carry 8x less pixel variance than the triangle and hundreds of times less signal
about the size (``sprites.factor_signal``); on it the VAE collapsed at gamma2 = 1. Per seed:
MCC (overall and per factor: x, y, scale, hue) and the decoder's c_IMA at the inferred latents
(tall Jacobians, 12,288 x 4) over training, and a latent-traversal figure. The seeds of a setting
train as one replica batch (``Config.replicas_per_setting``: 10 in the GPU protocols, 1 on a
CPU). Reference (paper): per-factor MCC 0.989 / 0.996 / 0.933 / 0.989 (y, x, scale,
colour). Each seed also writes ``traversal_gamma2_{G}_seed{S}.png``: one row per latent, swept
over the prior's 5-95% quantiles from a test image's inferred latents, labelled with the
factor the MCC matching assigns to it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .. import inference, metrics, models, priors, sprites
from .._utils import seeded_rng
from ..fileio import atomic_write_bytes
from .common import Runtime, TrainingConfig, format_table, grid_settings, save_figure, train
from .figures import GAMMA2, SWEEP, caption, pyplot

__all__ = ["Config", "QUICK", "FULL", "PAPER", "REFERENCE_SWEEP", "settings", "run_setting",
           "summarize", "mcc_at_best_val_elbo", "plot", "claim", "traversal", "plot_traversal",
           "headline"]


@dataclass(frozen=True)
class Config(TrainingConfig):
    gamma2s: tuple = (1.0,)
    seeds: int = 10
    lr: float = 1e-5
    eval_points: int = 1000
    checkpoints: int = 10  # MCC / c_IMA measured this many times over training
    geometry: str = "triangle"  # sprites.GEOMETRIES
    # seeds trained as one replica batch (replica-batched conv networks; on a CPU a batch is
    # no faster than one seed after another, benchmarks/bench_conv_batching.py)
    replicas_per_setting: int = 1
    # learn the Beta prior's (a, b) per latent and seed from the generator's (the official
    # code's `fix_prior: false`); False: the generator's prior, fixed
    learn_prior: bool = False
    # with learn_prior: keep the learned (a, b) above this (the official code's |t| + 2: 2.0)
    prior_floor: float | None = None

    # added after results were computed; their defaults reproduce them
    FINGERPRINT_OMITS_DEFAULT: ClassVar[tuple] = ("learn_prior", "prior_floor")


# GPU protocols; run one with ``run_study("sprites", out, config=sprites_study.PAPER)``.
# REFERENCE_SWEEP: the public sweep whose MCCs are REFERENCE_MCC (its MCC at the best
# validation ELBO, `mcc4min_neg_elbo` in the official code's export
# notebooks/dsprites_sweep_7qg2q0aw.csv). That export fits one sweep file of the official
# code's history (rpatrik96/ima-vae b9fd2ac, 9 May 2022, `sweeps/image/`): decoder variance
# 10 ... 0.001, lr 5e-4, batch 512, 700 epochs, 10 seeds, validation every 25 epochs; the
# grid's earlier files are at lr 5e-4 too, the lr 1e-5 / 800-epoch files are later sweeps
# over other grids. It learns its Beta prior (``fix_prior: false``: (a, b) = |t| + 2 of an
# output t), so does this one (``learn_prior``, from the generator's (a, b), kept above 2 by
# ``prior_floor``).
REFERENCE_SWEEP = Config(gamma2s=(0.1, 1.0, 10.0, 100.0), seeds=10, n=60_000, epochs=700,
                         patience=None, batch_size=512, lr=5e-4, checkpoints=28,
                         replicas_per_setting=10, learn_prior=True, prior_floor=2.0)
# PAPER: the paper's Table 5 (its Sprites experiment): gamma2 = 1, 10 seeds, 42k/12k/6k
# images, batch 64, lr 1e-5, early stopping on the validation ELBO (here an 800-epoch cap, no
# patience: the study trains in chunks between its MCC checkpoints).
PAPER = Config(gamma2s=(1.0,), seeds=10, n=60_000, epochs=800, patience=None, batch_size=64,
               lr=1e-5, checkpoints=32, replicas_per_setting=10)
# CPU (2 cores): the gamma2 sweep, one seed each, 4,200 training images, 12 epochs at lr 1e-3
# (about 4-5 min per gamma2 on one core). docs/results.md has what longer runs gave.
FULL = Config(gamma2s=(0.1, 1.0, 10.0, 100.0), seeds=1, n=6000, epochs=12, patience=None,
              lr=1e-3, eval_points=500, checkpoints=6)
QUICK = Config(seeds=2, n=600, epochs=4, patience=4, lr=1e-3, eval_points=100, checkpoints=2,
               replicas_per_setting=2)


def settings(cfg: Config) -> list[dict]:
    priors.check_learned_prior(cfg.learn_prior, cfg.prior_floor)  # before rendering anything
    return grid_settings(cfg.gamma2s, range(cfg.seeds), cfg.replicas_per_setting)


def traversal(vae, guide, x0: torch.Tensor, steps: int = 7,
              quantiles: tuple = (0.05, 0.95), *, replica: int = 0) -> torch.Tensor:
    """Decoded mean images ``(d, steps, C, H, W)`` of replica ``replica``: latent ``k`` swept
    over the prior's ``quantiles`` (estimated from 4,000 draws of that replica's prior, when it
    is learned), the others held at ``x0``'s inferred latents."""
    batched = getattr(vae.decoder, "replicas", None) is not None
    with torch.no_grad(), seeded_rng(0, vae.device):
        z0 = guide.point_estimate(vae.as_replica_batch(x0[None]))[replica]  # (1, d)
        draws = vae.replica_prior(replica).sample((4000,))
        q = torch.linspace(*quantiles, steps, device=vae.device, dtype=vae.dtype)
        grid = torch.quantile(draws, q, dim=0)  # (steps, d)
        rows = []
        for k in range(z0.shape[-1]):
            z = z0.expand(steps, -1).clone()
            z[:, k] = grid[:, k]
            # a replica-batched decoder decodes every replica's copy; keep this replica's
            rows.append(vae.decoder(z.expand(vae.replicas, -1, -1))[replica] if batched
                        else vae.decoder(z))
    return torch.stack(rows).clamp(0, 1)


def plot_traversal(images: torch.Tensor, labels, path) -> None:
    """Write the traversal grid ``(d, steps, C, H, W)`` as a PNG (atomically)."""
    plt = pyplot()
    d, steps = images.shape[:2]
    fig, axes = plt.subplots(d, steps, figsize=(steps * 0.9, d * 0.95), squeeze=False)
    for k in range(d):
        for j in range(steps):
            ax = axes[k, j]
            ax.imshow(images[k, j].permute(1, 2, 0).cpu().float().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        axes[k, 0].set_ylabel(labels[k], fontsize=8)
    fig.suptitle("latent traversals (5% -> 95% prior quantile)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def _prior_label(cfg: Config) -> str:
    """The rows' ``prior``: the generator's, or learned (with its floor, if any)."""
    if not cfg.learn_prior:
        return "generator"
    return "learned" if cfg.prior_floor is None else f"learned (a, b >= {cfg.prior_floor:g})"


def run_setting(setting: dict, cfg: Config, rt: Runtime = Runtime()) -> list[dict]:
    """Train the setting's seeds as one replica batch (``grid`` of ``[gamma2, seed]``),
    measuring over training; with ``rt.out_dir``, also write each seed's latent-traversal
    figure there."""
    g2s = [float(g) for g, _ in setting["grid"]]
    seeds = [int(s) for _, s in setting["grid"]]
    R = len(seeds)
    ds = sprites.sprites_dataset(sprites.SpritesConfig(n=cfg.n, seed=0, geometry=cfg.geometry))
    a, b = sprites.default_beta_params(0)
    p0 = priors.beta(4, a=a.tolist(), b=b.tolist())
    vae = models.GaussianVAE(models.ConvDecoder(4, seed=seeds, replicas=R), p0,
                             torch.tensor(g2s), replicas=R, obs_event_dim=3,
                             learn_prior=cfg.learn_prior, prior_floor=cfg.prior_floor)
    guide = models.DiagonalGuide(vae, models.ConvEncoder(8, seed=[s + 10_000 for s in seeds],
                                                         replicas=R))
    x, z = ds.test.x[: cfg.eval_points], ds.test.z[: cfg.eval_points]
    rows = []
    every = max(1, cfg.epochs // cfg.checkpoints)
    failed = torch.zeros(R, dtype=torch.bool)
    for start in range(0, cfg.epochs, every):
        fit = train(vae, guide, ds.train, ds.val, cfg, [s + start for s in seeds], rt,
                    desc="sprites", epochs=min(every, cfg.epochs - start))
        failed |= fit.failed
        m = inference.evaluate(vae, guide, x, z, metrics=("mcc", "contrasts"),
                               config=inference.EvalConfig(jacobian_chunk=50))
        values = {"mcc": m["mcc_pearson"], "c_ima": m["c_ima"],
                  **{f"mcc_{name}": m[f"mcc_factor{k}"]
                     for k, name in enumerate(sprites.FACTORS)}}
        labels = {"seed": seeds, "gamma2": g2s}
        const = dict(study="sprites", epoch=start + fit.epochs_run, geometry=cfg.geometry,
                     prior=_prior_label(cfg))
        rows += inference.tidy_rows(values, labels, failed=failed, **const)
        # the validation ELBO of the state measured (fit restores each replica's best of the
        # chunk), so the summary can also give the MCC at the best one, as the reference does;
        # none for a replica that did not validate in the chunk
        elbo = fit.best_val_elbo
        done = ~torch.isnan(elbo)
        rows += [row for row in inference.tidy_rows(
                     {"val_elbo": torch.where(done, elbo, 0.0)}, labels, failed=failed, **const)
                 if done[row["replica"]]]
    if rt.out_dir is not None:
        with torch.no_grad():
            z_hat = guide.point_estimate(x.to(vae.device, vae.dtype))  # (R, N, d)
        for r, (g2, seed) in enumerate(zip(g2s, seeds, strict=True)):
            matching = metrics.mcc(z, z_hat[r]).matching
            factor_of = {int(matching[k]): name for k, name in enumerate(sprites.FACTORS)}
            labels = [f"z{j} ~ {factor_of.get(j, '?')}" for j in range(4)]
            plot_traversal(traversal(vae, guide, x[0], replica=r), labels,
                           Path(rt.out_dir) / f"traversal_gamma2_{g2:g}_seed{seed}.png")
    return rows


# The public sweep of the official code (mean MCC; sd where it was reported), and the paper's
# Fig. 5 per-factor MCC at gamma2 = 1.
REFERENCE_MCC = {0.1: 0.058, 1.0: 0.974, 10.0: 0.869, 100.0: 0.646}
REFERENCE_SD = {1.0: 0.003}
PAPER_PER_FACTOR = {"x": 0.996, "y": 0.989, "scale": 0.933, "hue": 0.989}
_METRICS = ["mcc", "c_ima"] + [f"mcc_{f}" for f in sprites.FACTORS]


def mcc_at_best_val_elbo(rows: list[dict]) -> dict[int, float]:
    """Per seed of one gamma2, the MCC at the checkpoint with the highest validation ELBO,
    what the reference sweep reports (``mcc4min_neg_elbo``). Seeds without a validation ELBO
    (rows cached before it was recorded) and seeds whose training failed at any checkpoint
    give none."""
    gamma2s = sorted({float(r["gamma2"]) for r in rows})
    if len(gamma2s) > 1:
        raise ValueError(f"rows: expected the rows of one gamma2, got {gamma2s}")
    out = {}
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        if any(r.get("failed") for r in mine):
            continue
        at = {(r["epoch"], r["metric"]): r["value"] for r in mine}
        elbos = [(v, e) for (e, m), v in at.items() if m == "val_elbo" and v is not None]
        mcc = at.get((max(elbos)[1], "mcc")) if elbos else None
        if mcc is not None:
            out[seed] = float(mcc)
    return out


def _mean_sd(values, name: str) -> tuple[float, float]:
    """Mean and sample sd (0 for a single value); a ``ValueError`` naming ``name`` when there
    is no value (every replica failed)."""
    vals = np.array(list(values), dtype=float)
    if not len(vals):
        raise ValueError(f"{name}: no replica has a value (every one failed)")
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def summarize(rows: list[dict]) -> dict:
    """Per gamma2, the mean (and sd, seed count) of every metric at the last checkpoint, and
    of the MCC at each seed's best validation ELBO (``mcc_at_best_val_elbo``, when recorded)."""
    last = max(r["epoch"] for r in rows)
    final = [r for r in rows if r["epoch"] == last]
    by: dict = {}
    for g in sorted({float(r["gamma2"]) for r in final}):
        mine = [r for r in final if float(r["gamma2"]) == g]
        stats_ = {}
        for m in _METRICS:
            # a failed replica's numbers are not used (FitResult.failed)
            stats_[m], stats_[f"{m}_sd"] = _mean_sd([r["value"] for r in mine
                                                     if r["metric"] == m and not r.get("failed")],
                                                    f"{m} at gamma2 {g:g}")
        stats_["seeds"] = len({r["seed"] for r in mine})
        stats_["failed"] = len({r["seed"] for r in mine if r.get("failed")})
        best = mcc_at_best_val_elbo([r for r in rows if float(r["gamma2"]) == g])
        if best:
            stats_["mcc_at_best_val_elbo"], stats_["mcc_at_best_val_elbo_sd"] = \
                _mean_sd(best.values(), "mcc_at_best_val_elbo")
            stats_["mcc_at_best_val_elbo_seeds"] = len(best)
        by[g] = stats_
    # the sprite's geometry and the prior ("generator", "learned" or "learned (a, b >= F)");
    # rows cached before either was recorded have none
    geometry = next((r["geometry"] for r in rows if "geometry" in r), None)
    prior = next((r["prior"] for r in rows if "prior" in r), None)
    return {"by_gamma2": by, "epochs": last, "reference_mcc": REFERENCE_MCC,
            "geometry": geometry, "prior": prior}


def headline(summary: dict) -> dict:
    """What ``--summary-to`` commits (``docs/results/sprites.json``): mean MCC and per-factor
    MCC at gamma2 = 1 (the paper's Fig. 5 setting; else the first gamma2), MCC by gamma2 with
    the reference sweep's values, all at the last checkpoint; and by gamma2 the mean MCC at each
    seed's best validation ELBO, the reference's own measure (``None`` where not recorded)."""
    by = {float(g): v for g, v in summary["by_gamma2"].items()}
    g0 = 1.0 if 1.0 in by else min(by)
    names = {"x": "x", "y": "y", "scale": "size", "hue": "hue"}
    return {"gamma2": g0, "mcc_mean": by[g0]["mcc"],
            "mcc_per_factor": {names[f]: by[g0][f"mcc_{f}"] for f in sprites.FACTORS},
            "mcc_by_gamma2": {f"{g:g}": v["mcc"] for g, v in by.items()},
            "mcc_sd_by_gamma2": {f"{g:g}": v["mcc_sd"] for g, v in by.items()},
            # the reference's own measure (its MCC at the best validation ELBO)
            "mcc_at_best_val_elbo_by_gamma2": {f"{g:g}": v.get("mcc_at_best_val_elbo")
                                               for g, v in by.items()},
            "seeds_by_gamma2": {f"{g:g}": v["seeds"] for g, v in by.items()},
            "reference_mcc_by_gamma2": {f"{g:g}": v for g, v in REFERENCE_MCC.items()},
            "paper_per_factor": {names[f]: v for f, v in PAPER_PER_FACTOR.items()},
            "epochs": summary["epochs"], "geometry": summary.get("geometry")}


def table(summary: dict) -> str:
    """Per gamma2: the MCC at the last checkpoint and at each seed's best validation ELBO (the
    reference sweep's measure, set beside its value; empty where not recorded), the per-factor
    MCCs and c_IMA at the last checkpoint."""
    ref = {float(g): v for g, v in summary["reference_mcc"].items()}
    rows = [(f"{float(g):g}", v["mcc"], v.get("mcc_at_best_val_elbo"), ref.get(float(g)),
             *(v[f"mcc_{f}"] for f in sprites.FACTORS), v["c_ima"])
            for g, v in summary["by_gamma2"].items()]
    return format_table(("gamma2", "MCC", "MCC at best val ELBO", "reference (at best val ELBO)",
                         *(f"MCC {f}" for f in sprites.FACTORS), "decoder c_IMA"), rows,
                        f"Sprites after {summary['epochs']} epochs (mean over seeds)")


def claim(summary: dict) -> str:
    ref = {float(g): v for g, v in summary["reference_mcc"].items()}
    parts = []
    for g, v in summary["by_gamma2"].items():
        per = " / ".join(f"{v['mcc_' + k]:.2f}" for k in sprites.FACTORS)
        r, best = ref.get(float(g)), v.get("mcc_at_best_val_elbo")
        measures = ([f"at the best validation ELBO {best:.3f}"] if best is not None else []) \
            + ([f"reference {r:.3f}"] if r is not None else [])
        parts.append(f"gamma2 {float(g):g}: MCC {v['mcc']:.3f}"
                     + (f" ({'; '.join(measures)})" if measures else "")
                     + f", x / y / scale / hue {per}")
    return f"after {summary['epochs']} epochs: " + "; ".join(parts)


_GEOMETRY_WORDS = {"triangle": "spriteworld's triangle", "square": "spriteworld's square",
                   "large-square": r"a square of side $\sqrt{2}\,B_s$ (large-square)",
                   "compact": "a small square (compact)"}


def plot(rows: list[dict], summary: dict, path_stem) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    ax = axes[0]
    for j, g in enumerate(sorted({float(r["gamma2"]) for r in rows})):
        for s in sorted({r["seed"] for r in rows}):
            pts = sorted((r["epoch"], r["value"]) for r in rows if r["metric"] == "mcc"
                         and r["seed"] == s and float(r["gamma2"]) == g)
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", ms=3, color=f"C{j}", alpha=0.8,
                        label=rf"$\gamma^2$ = {g:g}" if s == min(r["seed"] for r in rows)
                        else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MCC (Pearson)")
    ax.set_ylim(0, 1.02)
    ax.set_title("MCC over training")
    ax.legend(loc="lower right")
    ax = axes[1]
    by = {float(g): v for g, v in summary["by_gamma2"].items()}
    gs = sorted(by)
    ax.errorbar(gs, [by[g]["mcc"] for g in gs], yerr=[by[g]["mcc_sd"] for g in gs], fmt="o-",
                capsize=3, color="C0", label=r"ours, last checkpoint: mean $\pm$ sd")
    best = [g for g in gs if by[g].get("mcc_at_best_val_elbo") is not None]
    if best:  # the reference's own measure
        ax.errorbar(best, [by[g]["mcc_at_best_val_elbo"] for g in best],
                    yerr=[by[g]["mcc_at_best_val_elbo_sd"] for g in best], fmt="^:", ms=5,
                    capsize=3, color="C2", label="ours, at the best validation ELBO")
    ref = {float(g): v for g, v in summary["reference_mcc"].items()}
    ax.errorbar(list(ref), list(ref.values()), yerr=[REFERENCE_SD.get(g, 0.0) for g in ref],
                fmt="s--", color="C3", ms=4, capsize=3,
                label="official code, at the best validation ELBO")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(GAMMA2)
    ax.set_ylabel("MCC (Pearson)")
    ax.set_title(r"MCC by $\gamma^2$")
    ax.legend(loc="lower right")
    ax = axes[2]
    g0 = 1.0 if 1.0 in by else gs[0]
    xs = np.arange(len(sprites.FACTORS))
    ax.bar(xs - 0.2, [by[g0][f"mcc_{f}"] for f in sprites.FACTORS], 0.4,
           yerr=[by[g0][f"mcc_{f}_sd"] for f in sprites.FACTORS], capsize=3, color="C0",
           label=rf"ours, $\gamma^2$ = {g0:g}")
    ax.bar(xs + 0.2, [PAPER_PER_FACTOR[f] for f in sprites.FACTORS], 0.4, color="C3",
           label=r"paper Fig. 5, $\gamma^2$ = 1")
    ax.set_xticks(xs, ["x position", "y position", "size", "hue"])
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("MCC of the matched latent")
    ax.set_title("per factor")
    ax.legend(loc="upper center", ncol=2)
    seeds = max(v["seeds"] for v in by.values())
    drawn = _GEOMETRY_WORDS.get(summary.get("geometry"), "one sprite")
    learned = str(summary.get("prior") or "")
    prior = (f"Beta factors, a Beta prior learned in each run{learned[len('learned'):]}"
             if learned.startswith("learned") else "Beta factors and prior")
    caption(fig, f"Sprites (64 x 64 RGB, {drawn}, {prior}"
                 f"), conv VAE with a diagonal Gaussian encoder, {seeds} "
                 f"seed(s) per gamma^2, {summary['epochs']} epochs. Red: {SWEEP} (middle) and "
                 f"the paper's Fig. 5 (right).")
    fig.tight_layout()
    save_figure(fig, path_stem)
