"""The main job (``make demo``): a closed-form gap check and a Moebius VAE, printed and drawn."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import inference, metrics, models
from ._utils import parse_device, parse_dtype, torch_defaults
from .fileio import (
    RUN_FILES,
    STUDY_FILES,
    DirLock,
    atomic_write_json,
    atomic_write_with,
    check_out_dir,
    package_versions,
)
from .linear_gaussian import LinearGaussian
from .progress import EpochProgress
from .runs import RunConfig, train_run

__all__ = ["run_demo", "linear_gaussian_check"]


def linear_gaussian_check(d: int = 3, gamma2: float = 1e2, seed: int = 0, n: int = 2048,
                          epochs: int = 60, progress: bool = False) -> list[dict]:
    """Train each guide family against a fixed linear decoder and compare with closed forms.

    ``x = W z + e`` with ``z ~ N(0, I)``, ``e ~ N(0, 1/gamma2 I)``: ``log p(x)`` is Gaussian and
    the optimal ELBO of each family is ``log p(x) - gap`` (:class:`LinearGaussian`). ``W`` has
    singular values log-spaced in ``[0.5, 2]`` and random singular vectors (seeded).
    """
    lg = LinearGaussian.random(d, gamma2, seed=seed,
                               singular_values=torch.logspace(-0.30103, 0.30103, d))
    x = lg.sample(n + 512, seed=seed + 1)
    x_train, x_val = x[:n], x[n:]
    log_px = lg.log_px(x_val).mean()
    rows = []
    for family, cls in models.GUIDES.items():
        vae = lg.vae()
        guide = cls(vae, models.MLP(d, cls.num_outputs(d), hidden=(), seed=seed),
                    init_scale=0.1)
        callbacks = [EpochProgress(epochs, f"linear VAE, {family}")] if progress else []
        inference.fit(vae, guide, x_train, x_val, epochs=epochs, lr=3e-2, lr_end=1e-3,
                      seed=seed, callbacks=callbacks)
        elbo = inference.elbo_per_point(vae, guide, x_val, num_particles=100, seed=seed + 1)
        gap = float(lg.gap(cls))
        rows.append({"family": family, "elbo": float(elbo.mean()),
                     "closed_form_elbo": float(log_px) - gap, "log_px": float(log_px),
                     "closed_form_gap": gap,
                     "measured_gap": float(log_px - elbo.double().mean())})
    return rows


def _figure(path: Path, rows: list[dict], history: list[dict], z_true, z_est) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    fams = [r["family"] for r in rows]
    xs = range(len(rows))
    ax.bar([i - 0.2 for i in xs], [r["measured_gap"] for r in rows], 0.4, label="measured")
    ax.bar([i + 0.2 for i in xs], [r["closed_form_gap"] for r in rows], 0.4,
           label="closed form")
    ax.set_xticks(list(xs), fams)
    ax.set_ylabel("log p(x) - ELBO (nats)")
    ax.set_title("Linear Gaussian VAE: gap by guide family")
    ax.legend()
    ax = axes[1]
    ax.plot([h["epoch"] for h in history], [h["train_elbo"] for h in history], label="train")
    ax.plot([h["epoch"] for h in history], [h["val_elbo"][0] for h in history],
            label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per point")
    last = history[-1]["val_elbo"][0]
    ax.set_ylim(last - 20, last + 5)
    ax.set_title("Moebius VAE training")
    ax.legend()
    ax = axes[2]
    for k in range(z_true.shape[1]):
        ax.scatter(z_true[:, k], z_est[:, k], s=2, alpha=0.4, label=f"z{k}")
    ax.set_xlabel("true latent")
    ax.set_ylabel("inferred latent (matched by MCC)")
    ax.set_title("Moebius VAE: latents (test set)")
    ax.legend(markerscale=4)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def run_demo(out: str = "runs/demo", progress: bool = True, device: str = "cpu",
             dtype: str = "float32", force: bool = False) -> dict:
    """Runs the main job and writes ``demo.json``, ``demo.png`` and the Moebius run
    (``moebius/``) to ``out``. Rerunning into the demo's own directory replaces its outputs; a
    directory holding another run or a study is refused unless ``force``."""
    out_dir = check_out_dir(out)
    with DirLock(out_dir):
        from .runs import prepare_out_dir
        prepare_out_dir(out_dir, (*RUN_FILES, *STUDY_FILES), force, "run or study")
        return _demo(out_dir, progress, device, dtype)


def _demo(out_dir: Path, progress: bool, device: str, dtype: str) -> dict:
    t0 = time.perf_counter()
    print("1) Linear Gaussian VAE (d=3, gamma2=1e2, decoder fixed): ELBO per guide family "
          "vs closed form")
    with torch_defaults(parse_device(device), parse_dtype(dtype)):
        rows = linear_gaussian_check(progress=progress)
    print(f"   {'family':10s} {'ELBO':>9s} {'closed form':>12s} {'gap':>7s} {'predicted':>10s}")
    for r in rows:
        print(f"   {r['family']:10s} {r['elbo']:9.3f} {r['closed_form_elbo']:12.3f} "
              f"{r['measured_gap']:7.3f} {r['closed_form_gap']:10.3f}")
    cfg = RunConfig(mixing="moebius", prior="uniform", dim=3, guide="diagonal", gamma2=1e4,
                    n=20_000, epochs=40, patience=10, init_scale=0.01, seed=0, device=device,
                    dtype=dtype)
    print(f"2) VAE on Moebius data (d={cfg.dim}, uniform prior, gamma2={cfg.gamma2:g}, "
          f"{cfg.guide} guide, n={cfg.n})")
    results, (ds, vae, guide, fit) = train_run(cfg, out_dir / "moebius", progress=progress,
                                               force=True)  # the demo's own run, replaced
    e = results["elbo"]
    print(f"   {fit.epochs_run} epochs ({fit.seconds:.1f}s), best epoch {int(fit.best_epoch[0])}: "
          f"ELBO train {e['train']:.3f}  val {e['val']:.3f}  test {e['test']:.3f}")
    print(f"   {inference.summary_line(results['metrics'])}")
    with torch.no_grad():
        z_est = guide.point_estimate(ds.test.x.to(vae.device, vae.dtype)).cpu().numpy()
    matching = metrics.mcc(ds.test.z, z_est).matching
    _figure(out_dir / "demo.png", rows, fit.history, ds.test.z.cpu().numpy(), z_est[:, matching])
    summary = {"kind": "pyro_ima.demo", "versions": package_versions(), "linear_gaussian": rows,
               "moebius": {"config": cfg.to_dict(), "elbo": e, "epochs_run": fit.epochs_run,
                           "metrics": results["metrics"]},
               "seconds": time.perf_counter() - t0}
    atomic_write_json(out_dir / "demo.json", summary)
    print(f"   figure: {out_dir / 'demo.png'}; summary: {out_dir / 'demo.json'} "
          f"({summary['seconds']:.0f}s in all)")
    return summary
