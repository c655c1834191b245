"""Study 7 (new): an isotropic guide with learnable per-dimension observation noise.

The conjecture (docs/theory.md, section 3): with Sigma_x = gamma^-2 diag(tau^2), tau learned, an
isotropic guide pays the *row* contrast c_row (the IMA contrast of the encoder side) instead of
c_conf. Linear
decoders (d = 3, Gaussian latents, decoder fixed; exact at any gamma): ``W_row = diag(s) O``
(rows orthogonal: c_row = 0, c_conf > 0) and a generic ``W`` (c_row > 0). For each, an isotropic
guide (linear encoder) is trained with fixed isotropic noise and with learnable tau; the gap
``log p - ELBO*`` is compared with c_conf and c_row.

Learned decoders (part B): data from ``LeakyLinear.with_row_contrast(c)`` (``sigma(W z)``, whose
row contrast is ``c`` everywhere; ``c = 0`` means the inverse is in the IMA class), logistic
latents and prior (non-Gaussian, so latent rotations are not a symmetry), d = 3. Two learners
per mixing: the isotropic guide with learned tau (the conjecture: its penalty is ``c_row``, so
it should recover the latents when ``c_row = 0`` and lose them as ``c`` grows) and the paper's
diagonal guide with isotropic noise (penalty ``c_IMA``, which these mixings do not zero).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .. import inference, metrics, mixings, models, priors
from ..linear_gaussian import LinearGaussian, optimal_tau
from .common import (
    Runtime,
    TrainingConfig,
    format_table,
    grid_settings,
    replica_datasets,
    replica_vae,
    save_figure,
    train,
)
from .figures import caption, mean_ci95, pyplot

LEARNERS = {"isotropic_learned_tau": ("isotropic", True),
            "diagonal_isotropic_noise": ("diagonal", False)}

__all__ = ["Config", "QUICK", "FULL", "settings", "run_setting", "summarize", "plot", "claim"]


def _weight(name: str, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if name == "row_orthogonal":
        o = mixings.random_orthogonal(d, g)
        return torch.logspace(-0.3, 0.3, d).unsqueeze(-1) * o  # diag(s) O
    u, _, vt = torch.linalg.svd(torch.randn(d, d, generator=g))
    return u @ torch.diag(torch.logspace(-0.3, 0.3, d)) @ vt


@dataclass(frozen=True)
class Config:
    decoders: tuple = ("row_orthogonal", "generic")
    gamma2: float = 1e3
    n: int = 10_000
    epochs: int = 200
    seeds: int = 5
    # part B: learned decoders on LeakyLinear data with row contrast c
    learned_contrasts: tuple = (0.0, 1.0, 2.0, 4.0)
    learned_seeds: int = 10
    learned_gamma2: float = 1e3
    learned_n: int = 60_000
    learned_epochs: int = 60
    learned_patience: int = 3
    learned_lr: float = 3e-3
    learned_lr_halvings: int = 4  # the Moebius study's protocol (per-replica plateau halving)
    # part A with learned tau: the first tau_warmup epochs train the encoder with tau held at 1
    tau_warmup: int = 100


# Linear decoders: Adam at 3e-2 decaying to 1e-3, minibatches of 64, no early stopping.
_LINEAR_TRAINING = TrainingConfig(lr=3e-2, lr_end=1e-3, patience=None)

FULL = Config()
QUICK = Config(gamma2=1e2, n=2048, epochs=60, seeds=1, learned_contrasts=(0.0, 4.0),
               learned_seeds=3, learned_n=6000, learned_epochs=20, learned_patience=5,
               learned_lr=1e-3, learned_lr_halvings=0, tau_warmup=30)


def settings(cfg: Config) -> list[dict]:
    fixed = [{"decoder": dec, "learn_noise": ln, "seeds": list(range(cfg.seeds))}
             for dec in cfg.decoders for ln in (False, True)]
    everything = len(cfg.learned_contrasts) * cfg.learned_seeds  # one batch per learner
    grid = grid_settings(cfg.learned_contrasts, range(cfg.learned_seeds), everything,
                         paired=False)[0]["grid"]
    return fixed + [{"learner": name, "grid": grid} for name in LEARNERS]


def run_setting(setting: dict, cfg: Config, rt: Runtime = Runtime()) -> list[dict]:
    if "learner" in setting:
        return _run_learned(setting, cfg, rt)
    d = 3
    W = _weight(setting["decoder"], d)
    f = mixings.Linear(W)
    p0 = priors.gaussian(d)
    seeds = setting["seeds"]
    R = len(seeds)
    lg = LinearGaussian(W, cfg.gamma2)
    x, x_val = lg.sample(cfg.n, seed=0), lg.sample(512, seed=1)
    vae = models.GaussianVAE(f, p0, cfg.gamma2, replicas=R, learn_noise=setting["learn_noise"],
                             data_dim=d)
    enc = models.MLP(d, models.IsotropicGuide.num_outputs(d), hidden=(), replicas=R,
                     seed=seeds)
    guide = models.IsotropicGuide(vae, enc, init_scale=0.1)
    warmup = cfg.tau_warmup if vae.learn_noise else 0
    failed = torch.zeros(R, dtype=torch.bool)
    if warmup:  # trained jointly from the start, one tau inflates to absorb the encoder's error
        vae.log_tau.requires_grad_(False)
        with warnings.catch_warnings():  # Pyro notes that a frozen parameter is not registered
            warnings.filterwarnings("ignore", "log_tau was not registered", UserWarning)
            failed |= train(vae, guide, x, x_val, _LINEAR_TRAINING, seeds, rt,
                            desc="encoder side (tau held)", epochs=warmup).failed
        vae.log_tau.requires_grad_(True)
    failed |= train(vae, guide, x, x_val, _LINEAR_TRAINING, seeds, rt, desc="encoder side",
                    epochs=cfg.epochs - warmup).failed
    xe = x_val[:200]
    guide.fix_loc(lambda v: f.inv(v))  # ELBO* and the Laplace proposal at the posterior mode
    elbo_star = inference.refine_elbo(vae, guide, xe, seed=1).mean(-1)
    log_px = inference.importance_log_px(vae, guide, xe, num_samples=50, proposal="laplace",
                                         seed=2, khat_warn=1.0).log_px.mean(-1)
    J = W.double()
    values = {"gap": log_px - elbo_star, "c_row": metrics.row_contrast(J).expand(R),
              "c_conf": metrics.conformal_contrast(J).expand(R),
              "c_ima": metrics.ima_contrast(J).expand(R)}
    iso = models.IsotropicGuide
    if vae.learn_noise:  # learned relative scales vs the prediction tau_i^2 ~ ||J[i,:]||^2
        pred = J.square().sum(1).sqrt()
        pred = pred / pred.log().mean().exp()
        tau = vae.tau().detach()[:, 0].double().cpu()
        values["tau_error"] = (tau - pred).abs().amax(-1)
        # exact: the optimal isotropic gap at the learned tau, and at the best tau of all
        values["gap_exact"] = torch.stack([LinearGaussian(W, cfg.gamma2, tau=t).gap(iso)
                                           for t in tau])
        values["gap_optimum"] = torch.full((R,), optimal_tau(W, cfg.gamma2, iso)[1],
                                           dtype=torch.float64)
    else:
        values["gap_exact"] = values["gap_optimum"] = lg.gap(iso).expand(R)
    return inference.tidy_rows(values, {"seed": seeds}, failed=failed, study="encoder_side",
                               decoder=setting["decoder"], learn_noise=setting["learn_noise"],
                               gamma2=cfg.gamma2)


def _run_learned(setting: dict, cfg: Config, rt: Runtime) -> list[dict]:
    d = 3
    family, learn_noise = LEARNERS[setting["learner"]]
    cs = {s: float(c) for c, s in setting["grid"]}
    seeds = [s for _, s in setting["grid"]]
    p0 = priors.logistic(d)
    tr, va, te, tz, mixes = replica_datasets(
        lambda s: mixings.LeakyLinear.with_row_contrast(cs[s], d, seed=s), p0, cfg.learned_n,
        seeds)
    R = len(seeds)
    vae, guide = replica_vae(d, p0, torch.full((R,), cfg.learned_gamma2), seeds, family=family,
                             learn_noise=learn_noise,
                             init_scale=1 / math.sqrt(cfg.learned_gamma2))
    training = TrainingConfig(n=cfg.learned_n, epochs=cfg.learned_epochs,
                              patience=cfg.learned_patience, lr=cfg.learned_lr,
                              lr_halvings=cfg.learned_lr_halvings)
    fit = train(vae, guide, tr, va, training, seeds, rt, desc=setting["learner"])
    m = inference.evaluate(vae, guide, te, tz, metrics=("mcc", "contrasts"))
    contrasts = [cs[s] for s in seeds]
    values = {"mcc": m["mcc_pearson"], "decoder_c_row": m["c_row"], "decoder_c_ima": m["c_ima"],
              "mixing_c_row": torch.tensor(contrasts, dtype=torch.float64)}
    return inference.tidy_rows(values, {"contrast": contrasts, "seed": seeds}, failed=fit.failed,
                               study="encoder_side", part="learned_decoder",
                               learner=setting["learner"], gamma2=cfg.learned_gamma2)


def _summarize_learned(rows: list[dict]) -> dict:
    out = {}
    for name in LEARNERS:
        mine = [r for r in rows if r["learner"] == name]
        per_c: dict = {}
        for r in mine:
            per_c.setdefault(r["contrast"], {}).setdefault(r["metric"], []).append(r["value"])
        mcc = np.array([r["value"] for r in mine if r["metric"] == "mcc"])
        c = np.array([r["contrast"] for r in mine if r["metric"] == "mcc"])
        rho = float(stats.spearmanr(c, mcc).statistic) if len(set(c)) > 1 else float("nan")
        out[name] = {"per_contrast": {k: {m: float(np.mean(v)) for m, v in ms.items()}
                                      for k, ms in sorted(per_c.items())},
                     "spearman_mcc_vs_c_row": rho}
    return out


def summarize(rows: list[dict]) -> dict:
    """Part A: mean gap and contrasts per ``decoder/noise``; part B (``learned_decoder``): mean
    metrics per learner and mixing contrast, and Spearman(MCC, c_row) per learner."""
    out: dict = {}
    for r in rows:
        if r.get("part") != "learned_decoder":
            key = f"{r['decoder']}/{'learned_tau' if r['learn_noise'] else 'isotropic_noise'}"
            out.setdefault(key, {}).setdefault(r["metric"], []).append(r["value"])
    out = {k: {m: sum(v) / len(v) for m, v in ms.items()} for k, ms in sorted(out.items())}
    learned = [r for r in rows if r.get("part") == "learned_decoder"]
    if learned:
        out["learned_decoder"] = _summarize_learned(learned)
    return out


def table(summary: dict) -> str:
    rows = [(k, v["gap"], v.get("gap_exact"), v.get("gap_optimum"), v["c_conf"], v["c_row"],
             v.get("tau_error"))
            for k, v in summary.items() if k != "learned_decoder"]
    out = format_table(("decoder / noise", "gap (estimated)", "gap (exact, as trained)",
                        "gap at best tau", "c_conf", "c_row", "max tau error"), rows,
                       "A: isotropic guide on fixed linear decoders (learned tau: the penalty "
                       "should move from c_conf to c_row)")
    learned = summary.get("learned_decoder")
    if learned:
        rows = [(name, float(c), v["mcc"], v["decoder_c_row"], v["decoder_c_ima"])
                for name, s in learned.items() for c, v in s["per_contrast"].items()]
        out += "\n" + format_table(("learner", "mixing c_row", "MCC", "decoder c_row",
                                    "decoder c_IMA"), rows,
                                   "B: learned decoders on sigma(W z) data with row contrast c")
    return out


def claim(summary: dict) -> str:
    parts = []
    for key, m in summary.items():
        if key == "learned_decoder":
            for name, v in m.items():
                pc = v["per_contrast"]
                lo, hi = min(pc), max(pc)
                parts.append(f"{name}: MCC {pc[lo]['mcc']:.2f} at c_row={lo:g} -> "
                             f"{pc[hi]['mcc']:.2f} at c_row={hi:g} "
                             f"(Spearman {v['spearman_mcc_vs_c_row']:.2f})")
            continue
        target = "c_row" if key.endswith("learned_tau") else "c_conf"
        exact = (f" (exact {m['gap_exact']:.3f}, at the best tau {m['gap_optimum']:.3f})"
                 if "gap_optimum" in m else "")
        parts.append(f"{key}: gap {m['gap']:.3f}{exact} vs {target} {m[target]:.3f}")
    return "; ".join(parts)


def plot(rows: list[dict], summary: dict, path_stem) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    keys = [k for k in summary if k != "learned_decoder"]
    xs = np.arange(len(keys))
    bars = (("gap", r"gap $\log p - \mathrm{ELBO}^*$ (estimated, trained $\tau$)"),
            ("gap_optimum", r"gap at the best $\tau$ (exact)"),
            ("c_conf", r"$c_{\mathrm{conf}}$ of $W$"), ("c_row", r"$c_{\mathrm{row}}$ of $W$"))
    w = 0.2
    for j, (m, label) in enumerate(bars):
        ax.bar(xs + (j - 1.5) * w, [summary[k].get(m, np.nan) for k in keys], w, label=label)
    names = {"row_orthogonal": "rows orthogonal", "generic": "generic $W$",
             "isotropic_noise": r"isotropic noise", "learned_tau": r"learned $\tau$"}
    ax.set_xticks(xs, ["\n".join(names[p] for p in k.split("/")) for k in keys])
    ax.set_ylabel("nats")
    ax.set_ylim(0, 1.25 * max(summary[k].get("c_conf", 0.0) for k in keys) if keys else 1.0)
    ax.set_title(r"A: isotropic encoder, fixed linear decoder, $\gamma^2$ = "
                 f"{rows[0]['gamma2']:g}")
    ax.legend(loc="upper center", ncol=2)
    ax = axes[1]
    learners = (("isotropic_learned_tau", "C0", r"isotropic encoder, learned $\tau$"),
                ("diagonal_isotropic_noise", "C1", "diagonal encoder, isotropic noise"))
    for name, color, label in learners:
        groups: dict = {}
        for r in rows:
            if r.get("learner") == name and r["metric"] == "mcc":
                groups.setdefault(float(r["contrast"]), []).append(r["value"])
        if groups:
            cs = sorted(groups)
            ci = [mean_ci95(groups[c]) for c in cs]
            off = -0.06 if color == "C0" else 0.06
            ax.errorbar(np.array(cs) + off, [m for m, _ in ci], yerr=[h for _, h in ci],
                        fmt="o-", capsize=3, color=color, label=label + " (mean, 95% CI)")
    ax.set_xlabel(r"row contrast $c_{\mathrm{row}}$ of the mixing $\sigma(Wz)$")
    ax.set_ylabel("MCC (Pearson)")
    ax.set_title("B: learned decoders")
    ax.legend(loc="lower left")
    caption(fig, "A (exact where marked): with learned per-dimension noise an isotropic "
                 "encoder's gap moves from the decoder's conformal contrast to its row "
                 "contrast (the conjecture of docs/theory.md, section 3). B: latent recovery "
                 "on mixings whose inverse is IMA (c_row = 0) and less so (c_row > 0).")
    fig.tight_layout()
    save_figure(fig, path_stem)
