"""Study 7 (new): an isotropic guide with learnable per-dimension observation noise.

The conjecture (THEORY.md): with Sigma_x = gamma^-2 diag(tau^2), tau learned, an isotropic guide
pays the *row* contrast c_row (the IMA contrast of the encoder side) instead of c_conf. Linear
decoders (d = 3, Gaussian latents, decoder fixed; exact at any gamma): ``W_row = diag(s) O``
(rows orthogonal: c_row = 0, c_conf > 0) and a generic ``W`` (c_row > 0). For each, an isotropic
guide (linear encoder) is trained with fixed isotropic noise and with learnable tau; the gap
``log p - ELBO*`` is compared with c_conf and c_row. Learned decoders (MCC on mixings whose
inverse is or is not IMA) are not part of this version.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.optim
import torch

from .. import inference, metrics, mixings, models, priors
from .common import pyplot, save_figure

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


FULL = Config()
QUICK = Config(gamma2=1e2, n=2048, epochs=60, seeds=1)


def settings(cfg: Config) -> list[dict]:
    return [{"decoder": dec, "learn_noise": ln, "seeds": list(range(cfg.seeds))}
            for dec in cfg.decoders for ln in (False, True)]


def run_setting(setting: dict, cfg: Config, progress: bool = False) -> list[dict]:
    d = 3
    W = _weight(setting["decoder"], d)
    f = mixings.Linear(W)
    p0 = priors.gaussian(d)
    seeds = setting["seeds"]
    R = len(seeds)
    g = torch.Generator().manual_seed(0)
    cov_x = W @ W.T + torch.eye(d) / cfg.gamma2
    x = torch.randn(cfg.n, d, generator=g) @ torch.linalg.cholesky(cov_x).T
    x_val = torch.randn(512, d, generator=g) @ torch.linalg.cholesky(cov_x).T
    vae = models.GaussianVAE(f, p0, cfg.gamma2, replicas=R, learn_noise=setting["learn_noise"],
                             data_dim=d)
    enc = models.MLP(d, models.IsotropicGuide.num_outputs(d), hidden=(), replicas=R,
                     seed=seeds)
    guide = models.IsotropicGuide(vae, enc, init_scale=0.1)
    optim = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 3e-2},
                                      "gamma": (1 / 30) ** (1 / cfg.epochs)})
    fit = inference.fit(vae, guide, x, x_val, epochs=cfg.epochs, batch_size=64, optim=optim,
                        seed=seeds, progress=progress)
    xe = x_val[:200]
    guide.fix_loc(lambda v: f.inv(v))  # ELBO* and the Laplace proposal at the posterior mode
    elbo_star = inference.refine_elbo(vae, guide, xe, steps=150, seed=1).mean(-1)
    log_px = inference.importance_log_px(vae, guide, xe, num_samples=50, proposal="laplace",
                                         seed=2, khat_warn=1.0).log_px.mean(-1)
    J = W.double()
    rows = []
    tau = None if vae.tau() is None else vae.tau().detach()
    for r, s in enumerate(seeds):
        values = {"gap": float(log_px[r] - elbo_star[r]),
                  "c_row": float(metrics.row_contrast(J)),
                  "c_conf": float(metrics.conformal_contrast(J)),
                  "c_ima": float(metrics.ima_contrast(J))}
        if tau is not None:  # learned relative scales vs the prediction tau_i^2 ~ ||J[i,:]||^2
            pred = (J.square().sum(1)).sqrt()
            pred = pred / pred.log().mean().exp()
            values["tau_error"] = float((tau[r, 0].double() - pred).abs().max())
        rows += [{"study": "encoder_side", "decoder": setting["decoder"],
                  "learn_noise": setting["learn_noise"], "replica": r, "seed": s,
                  "gamma2": cfg.gamma2, "metric": k, "value": v} for k, v in values.items()]
    for row in rows:
        row["failed"] = bool(fit.failed[row["replica"]])
    return rows


def summarize(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        key = f"{r['decoder']}/{'learned_tau' if r['learn_noise'] else 'isotropic_noise'}"
        out.setdefault(key, {}).setdefault(r["metric"], []).append(r["value"])
    return {k: {m: sum(v) / len(v) for m, v in ms.items()} for k, ms in sorted(out.items())}


def claim(summary: dict) -> str:
    parts = []
    for key, m in summary.items():
        target = "c_row" if key.endswith("learned_tau") else "c_conf"
        parts.append(f"{key}: gap {m['gap']:.3f} vs {target} {m[target]:.3f}")
    return "; ".join(parts)


def plot(rows: list[dict], summary: dict, path_stem) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.8))
    keys = list(summary)
    xs = range(len(keys))
    ax.bar([i - 0.27 for i in xs], [summary[k]["gap"] for k in keys], 0.27, label="gap")
    ax.bar(list(xs), [summary[k]["c_conf"] for k in keys], 0.27, label="c_conf")
    ax.bar([i + 0.27 for i in xs], [summary[k]["c_row"] for k in keys], 0.27, label="c_row")
    ax.set_xticks(list(xs), [k.replace("/", "\\n") for k in keys], fontsize=7)
    ax.set_ylabel("nats")
    ax.set_title("isotropic guide: fixed vs learned observation scales")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path_stem)
