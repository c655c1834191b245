"""Study 5 (paper Fig. 5): a conv VAE on the locally rendered Sprites, Beta prior, gamma2 = 1.

Per seed: MCC (overall and per factor: x, y, scale, hue) and the decoder's c_IMA at the
inferred latents (tall Jacobians, 12,288 x 4) over training, and a latent-traversal figure.
Conv networks are not replica-batched, so seeds run one after another. Reference (paper):
per-factor MCC 0.989 / 0.996 / 0.933 / 0.989 (y, x, scale, colour). Each seed also writes
``traversal_seed{S}.png``: one row per latent, swept over the prior's 5-95% quantiles from a test
image's inferred latents, labelled with the factor the MCC matching assigns to it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import inference, metrics, models, priors, sprites
from .._utils import seeded_rng
from ..fileio import atomic_write_bytes
from .common import Runtime, TrainingConfig, format_table, pyplot, save_figure, train

__all__ = ["Config", "QUICK", "FULL", "settings", "run_setting", "summarize", "plot", "claim",
           "traversal", "plot_traversal"]


@dataclass(frozen=True)
class Config(TrainingConfig):
    gamma2s: tuple = (1.0,)
    seeds: int = 10
    lr: float = 1e-5
    eval_points: int = 1000
    checkpoints: int = 10  # MCC / c_IMA measured this many times over training


FULL = Config()
QUICK = Config(seeds=2, n=600, epochs=4, patience=4, lr=1e-3, eval_points=100, checkpoints=2)


def settings(cfg: Config) -> list[dict]:
    return [{"gamma2": g, "seed": s} for g in cfg.gamma2s for s in range(cfg.seeds)]


def traversal(vae, guide, x0: torch.Tensor, steps: int = 7,
              quantiles: tuple = (0.05, 0.95)) -> torch.Tensor:
    """Decoded mean images ``(d, steps, C, H, W)``: latent ``k`` swept over the prior's
    ``quantiles`` (estimated from 4,000 prior draws), the others held at ``x0``'s inferred
    latents."""
    with torch.no_grad(), seeded_rng(0, vae.device):
        z0 = guide.point_estimate(x0[None].to(vae.device, vae.dtype))[0]
        draws = vae.prior.sample((4000,))
        q = torch.linspace(*quantiles, steps, device=vae.device, dtype=vae.dtype)
        grid = torch.quantile(draws, q, dim=0)  # (steps, d)
        rows = []
        for k in range(z0.shape[-1]):
            z = z0.expand(steps, -1).clone()
            z[:, k] = grid[:, k]
            rows.append(vae.decoder(z))
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


def run_setting(setting: dict, cfg: Config, rt: Runtime = Runtime()) -> list[dict]:
    """Train one seed, measuring over training; with ``rt.out_dir``, also write the seed's
    latent-traversal figure there."""
    g2, seed = float(setting["gamma2"]), int(setting["seed"])
    ds = sprites.sprites_dataset(sprites.SpritesConfig(n=cfg.n, seed=0))
    a, b = sprites.default_beta_params(0)
    p0 = priors.beta(4, a=a.tolist(), b=b.tolist())
    vae = models.GaussianVAE(models.ConvDecoder(4, seed=seed), p0, g2, obs_event_dim=3)
    guide = models.DiagonalGuide(vae, models.ConvEncoder(8, seed=seed + 10_000))
    x, z = ds.test.x[: cfg.eval_points], ds.test.z[: cfg.eval_points]
    rows = []
    every = max(1, cfg.epochs // cfg.checkpoints)
    failed = torch.zeros(1, dtype=torch.bool)
    for start in range(0, cfg.epochs, every):
        fit = train(vae, guide, ds.train, ds.val, cfg, seed + start, rt, desc="sprites",
                    epochs=min(every, cfg.epochs - start))
        failed |= fit.failed
        m = inference.evaluate(vae, guide, x, z, metrics=("mcc", "contrasts"),
                               config=inference.EvalConfig(jacobian_chunk=50))
        values = {"mcc": m["mcc_pearson"], "c_ima": m["c_ima"],
                  **{f"mcc_{name}": m[f"mcc_factor{k}"]
                     for k, name in enumerate(sprites.FACTORS)}}
        rows += inference.tidy_rows(values, failed=failed, study="sprites", seed=seed,
                                    gamma2=g2, epoch=start + fit.epochs_run)
    if rt.out_dir is not None:
        with torch.no_grad():
            z_hat = guide.point_estimate(x.to(vae.device, vae.dtype))
        matching = metrics.mcc(z, z_hat).matching
        factor_of = {int(matching[k]): name for k, name in enumerate(sprites.FACTORS)}
        labels = [f"z{j} ~ {factor_of.get(j, '?')}" for j in range(4)]
        plot_traversal(traversal(vae, guide, x[0]), labels,
                       Path(rt.out_dir) / f"traversal_seed{seed}.png")
    return rows


def summarize(rows: list[dict]) -> dict:
    last = max(r["epoch"] for r in rows)
    final = [r for r in rows if r["epoch"] == last]
    out = {}
    for m in ["mcc", "c_ima"] + [f"mcc_{f}" for f in sprites.FACTORS]:
        vals = [r["value"] for r in final if r["metric"] == m]
        out[m] = float(np.mean(vals))
    return {"final": out, "epochs": last}


def table(summary: dict) -> str:
    f = summary["final"]
    rows = [("all", f["mcc"])] + [(k, f[f"mcc_{k}"]) for k in sprites.FACTORS]
    return format_table(("factor", "MCC"), rows,
                        f"Sprites after {summary['epochs']} epochs (mean over seeds; decoder "
                        f"c_IMA {f['c_ima']:.3f})")


def claim(summary: dict) -> str:
    f = summary["final"]
    per = " / ".join(f"{f['mcc_' + k]:.3f}" for k in sprites.FACTORS)
    return (f"after {summary['epochs']} epochs: MCC {f['mcc']:.3f} (x / y / scale / hue "
            f"{per}; paper 0.996 / 0.989 / 0.933 / 0.989), decoder c_IMA {f['c_ima']:.3f}")


def plot(rows: list[dict], summary: dict, path_stem) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, m in zip(axes, ("mcc", "c_ima"), strict=True):
        for s in sorted({r["seed"] for r in rows}):
            pts = sorted((r["epoch"], r["value"]) for r in rows
                         if r["metric"] == m and r["seed"] == s)
            ax.plot(*zip(*pts, strict=True), "o-", alpha=0.7, label=f"seed {s}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
    axes[0].set_title("Sprites: MCC over training")
    axes[1].set_title("decoder c_IMA over training")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path_stem)
