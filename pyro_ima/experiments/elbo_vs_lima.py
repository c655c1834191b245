"""Study 2 (paper Fig. 3/4, appendix Fig. 5): ELBO* against L_IMA and log p as gamma^2 grows.

d = 2, Gaussian latents and prior, decoder fixed to the ground truth (TriangularMLP: not IMA;
OrthogonalMLP: IMA class, the control), encoder trained alone, the mean encoder pinned to the
true inverse for the first epochs (the paper's warm-up for stability). Per replica: the
amortized ELBO, the refined ELBO*, the exact log p (change of variables), the IS log p at this
gamma2, the mixing's C_IMA and L_IMA = log p - C_IMA. Expected: ``log p - ELBO* -> C_IMA`` for
the triangular mixing and ``-> 0`` for the orthogonal one.

The triangular mixing has the paper's contrast, C_IMA = 7.07 (``TriangularMLP.with_contrast``:
unit columns of U_2 sheared until nearly parallel). A contrast of 7 in 2-D forces a Jacobian
condition number of ~2e3, so the study runs in float64 whatever the runtime's dtype, and the
output scale 100 puts the onset of the near-deterministic limit (gamma times the smallest
singular value well above 1) inside the paper's grid, log10 gamma2 = 1 to 5 in steps of 0.5.
Finding the posterior mode of such a curved, ill-conditioned posterior takes up to a few
hundred Newton steps (``mode_iterations``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import data, inference, metrics, mixings, models, priors
from .._utils import torch_defaults
from .common import (
    Runtime,
    TrainingConfig,
    fit_values,
    format_table,
    train,
    training_summary,
)
from .figures import GAMMA2, PAPER, caption, errorbar_by, pyplot, save_figure

__all__ = ["Config", "QUICK", "FULL", "settings", "run_setting", "summarize", "plot", "claim"]

PAPER_C_IMA = 7.07  # the paper's triangular decoder (log p 14.85, L_IMA 7.78)
MIXES = {"triangular": lambda: mixings.TriangularMLP.with_contrast(PAPER_C_IMA, 2, seed=0,
                                                                   scale=100.0),
         "orthogonal": lambda: mixings.OrthogonalMLP(2, seed=0)}
GRID = tuple(10.0 ** (1 + 0.5 * k) for k in range(9))  # the paper's: 1e1, 10^1.5, ..., 1e5


@dataclass(frozen=True)
class Config(TrainingConfig):
    gamma2s: tuple = GRID
    seeds: int = 5
    n: int = 145_000  # 100k / 30k / 15k as in the paper
    split: tuple = (100 / 145, 30 / 145, 15 / 145)
    warmup_epochs: int = 30
    lr: float = 1e-4
    eval_points: int = 500
    refine_steps: int = 300
    is_samples: int = 500
    mode_iterations: int = 1000


# The paper warms up for 30 epochs and trains to a plateau; our caps (10 warm-up epochs of ~1.6k
# steps, 20 in all) are set by the 2-core time budget. ELBO* is refined per point after
# training, so it does not depend on how far the amortized encoder got.
FULL = Config(epochs=20, warmup_epochs=10, patience=5)
QUICK = Config(gamma2s=(1e1, 1e3, 1e5), seeds=2, n=3000, split=(0.7, 0.2, 0.1), epochs=12,
               warmup_epochs=4, patience=4, lr=3e-3, eval_points=60, refine_steps=150,
               is_samples=200)


def settings(cfg: Config) -> list[dict]:
    return [{"mixing": m, "gamma2s": list(cfg.gamma2s), "seeds": list(range(cfg.seeds))}
            for m in MIXES]


def run_setting(setting: dict, cfg: Config, rt: Runtime = Runtime()) -> list[dict]:
    with torch_defaults(dtype=torch.float64):  # see the module docstring
        return _run_setting(setting, cfg, rt)


def _run_setting(setting: dict, cfg: Config, rt: Runtime) -> list[dict]:
    d = 2
    mix = MIXES[setting["mixing"]]()
    p0 = priors.gaussian(d)
    grid = [(g, s) for g in setting["gamma2s"] for s in setting["seeds"]]  # replicas
    R = len(grid)
    ds = data.make_dataset(mix, p0, n=cfg.n, split=cfg.split, seed=0)
    gamma2 = torch.tensor([g for g, _ in grid])
    seeds = [s for _, s in grid]
    vae = models.GaussianVAE(mix, p0, gamma2, replicas=R)
    enc = models.MLP(d, 2 * d, (50, 50), replicas=R, seed=[1000 * i + s for i, s in
                                                            enumerate(seeds)],
                     activation=torch.nn.ReLU())
    guide = models.DiagonalGuide(vae, enc, init_scale=gamma2.rsqrt())
    guide.fix_loc(mix.inv)
    fit_seeds = [1000 * i + s for i, s in enumerate(seeds)]
    # warm-up: the mean is pinned to the true inverse, only the scales train
    warm = train(vae, guide, ds.train, ds.val, cfg, fit_seeds, rt, desc="warm-up",
                 epochs=cfg.warmup_epochs, patience=None)
    guide.fix_loc(None)
    fit = train(vae, guide, ds.train, ds.val, cfg, [s + 1 for s in fit_seeds], rt,
                desc="elbo vs L_IMA", epochs=cfg.epochs - cfg.warmup_epochs)
    x = ds.test.x[: cfg.eval_points]
    elbo = inference.elbo_per_point(vae, guide, x, num_particles=64, seed=1).mean(-1)
    # ELBO* and the Laplace IS proposal are centred at the posterior mode, which for the known
    # decoder is the true inverse g(x) up to O(1/gamma^2): pin the mean there for both.
    guide.fix_loc(mix.inv)
    elbo_star = inference.refine_elbo(vae, guide, x, seed=2, config=inference.RefineConfig(
        steps=cfg.refine_steps, mode=inference.ModeConfig(max_iter=cfg.mode_iterations))
    ).mean(-1)
    log_px = inference.exact_log_px(mix, p0, x).mean().expand(R)
    is_px = inference.importance_log_px(vae, guide, x, num_samples=cfg.is_samples,
                                        proposal="laplace", seed=3, khat_warn=1.0,
                                        mode=inference.ModeConfig(max_iter=cfg.mode_iterations)
                                        ).log_px.mean(-1)
    guide.fix_loc(None)
    with torch.no_grad():
        c_ima = metrics.ima_contrast(metrics.jacobian(mix, mix.inv(x))).mean().expand(R)
    values = {"elbo": elbo, "elbo_star": elbo_star, "log_px_exact": log_px, "log_px_is": is_px,
              "c_ima": c_ima, "l_ima": log_px - c_ima, "approximation_gap": is_px - elbo_star,
              "gap_exact": log_px - elbo_star, "lima_minus_elbo_star": log_px - c_ima - elbo_star,
              "amortized_gap": log_px - elbo,
              **fit_values(fit)}
    return inference.tidy_rows(values, {"seed": seeds, "gamma2": [float(g) for g, _ in grid]},
                               failed=warm.failed | fit.failed, study="elbo_vs_lima",
                               mixing=setting["mixing"])


_SUMMARIZED = ("elbo_star", "log_px_exact", "log_px_is", "l_ima", "c_ima", "approximation_gap",
               "gap_exact", "lima_minus_elbo_star", "amortized_gap")


def _values(rows, mixing, metric):
    out = {}
    for r in rows:
        if r["mixing"] == mixing and r["metric"] == metric:
            out.setdefault(r["gamma2"], []).append(r["value"])
    return sorted(out.items())


def _mean(rows, mixing, metric):
    return {g: float(np.mean(v)) for g, v in _values(rows, mixing, metric)}


def _sd(rows, mixing, metric):
    """Standard deviation over seeds (each seed: a mean over the evaluation points)."""
    return {g: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
            for g, v in _values(rows, mixing, metric)}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for m in MIXES:
        out[m] = {k: _mean(rows, m, k) for k in _SUMMARIZED}
        out[m]["gap_exact_sd"] = _sd(rows, m, "gap_exact")
    return {**out, "training": training_summary(rows)}


def table(summary: dict) -> str:
    rows = []
    for m in MIXES:
        s = summary[m]
        for g in s["elbo_star"]:
            rows.append((m, f"{float(g):g}", s["elbo_star"][g], s["log_px_is"][g],
                         s["log_px_exact"][g], s["gap_exact"][g], s["lima_minus_elbo_star"][g],
                         s["approximation_gap"][g], s["amortized_gap"][g], s["c_ima"][g]))
    return format_table(("mixing", "gamma2", "ELBO*", "log p_gamma (IS)", "log p (exact)",
                         "log p - ELBO*", "L_IMA - ELBO*", "log p_gamma - ELBO*",
                         "log p - ELBO (amortized)", "C_IMA"), rows,
                        "ELBO* against L_IMA and log p (paper Fig. 3/4), means over seeds")


def claim(summary: dict) -> str:
    parts = []
    for m, target in (("triangular", "C_IMA"), ("orthogonal", "0")):
        s = summary[m]
        g = max(s["gap_exact"], key=float)
        gap, c = s["gap_exact"][g], s["c_ima"][g]
        parts.append(f"{m}: log p - ELBO* = {gap:.3f} at gamma2={float(g):g} vs {target} "
                     f"({c if m == 'triangular' else 0:.3f}), L_IMA - ELBO* = "
                     f"{s['lima_minus_elbo_star'][g]:.3f}")
    return "; ".join(parts)


def plot(rows: list[dict], summary: dict, path_stem) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.5))

    def pairs(mixing, metric):
        return [(r["gamma2"], r["value"]) for r in rows
                if r["mixing"] == mixing and r["metric"] == metric]

    for ax, m in zip(axes[:2], MIXES, strict=True):
        for key, color, label in (
                ("elbo_star", "C0", r"ELBO$^*$ (best diagonal encoder per point)"),
                ("log_px_is", "C2", r"$\log p_\gamma(x)$, importance sampled"),
                ("log_px_exact", "k", r"$\log p(x)$, change of variables"),
                ("l_ima", "C3", r"$\mathcal{L}_{\mathrm{IMA}} = \log p - C_{\mathrm{IMA}}$")):
            errorbar_by(ax, pairs(m, key), label=label, color=color, points=False,
                        ls="-" if key in ("elbo_star", "log_px_is") else "--")
        ax.set_xscale("log")
        ax.set_xlabel(GAMMA2)
        ax.set_ylabel("nats per point (mean over test points)")
        c = next(iter(summary[m]["c_ima"].values()))
        # + 0.0: a contrast of -1e-17 (rounding) is shown as 0.00, not -0.00
        ax.set_title(f"{m} mixing, $C_{{\\mathrm{{IMA}}}}$ = {round(c, 2) + 0.0:.2f}")
        ax.legend(loc="best")
    ax = axes[2]
    for m, color in zip(MIXES, ("C0", "C1"), strict=True):
        errorbar_by(ax, pairs(m, "gap_exact"), label=f"{m}", color=color)
        c = next(iter(summary[m]["c_ima"].values()))
        ax.axhline(c, color=color, ls=":", lw=1)
    ax.axhline(PAPER_C_IMA, color="C3", ls="--", lw=1,
               label=f"paper's triangular mixing: $C_{{\\mathrm{{IMA}}}}$ = {PAPER_C_IMA}")
    ax.set_xscale("log")
    ax.set_xlabel(GAMMA2)
    ax.set_ylabel(r"$\log p(x) - $ELBO$^*$ (nats)")
    ax.legend(loc="center right")
    caption(fig, "ELBO* against the IMA-regularized and plain log-likelihoods (paper Fig. 3/4 "
                 "and appendix Fig. 5; d = 2, Gaussian source and prior, decoder fixed to the "
                 "true mixing, mean +- sd over seeds). Right: the gap tends to the mixing's "
                 "C_IMA (dotted) as gamma^2 grows, 0 for the IMA-class orthogonal mixing. The "
                 f"paper's triangular mixing had C_IMA 7.072, log p 14.85, L_IMA 7.78 ({PAPER}); "
                 "ours has the same contrast at another output scale (log p differs, the gap "
                 "does not).")
    fig.tight_layout()
    save_figure(fig, path_stem)
