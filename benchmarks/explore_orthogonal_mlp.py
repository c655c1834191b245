"""Exploration behind study 6B's repaired protocol: why the diagonal encoder missed OrthogonalMLP.

    python benchmarks/explore_orthogonal_mlp.py [VARIANT] [--family diagonal] [--seeds 10]
        [--seed-offset 0] [--draw 0] [--prior-scale 0.2] [--kl-warmup-beta B]
        [--kl-warmup-epochs 10] [--patience 3] [--epochs 60] [--true-decoder]

Trains part B of ``guide_families`` (``FULL`` at n = 20k: learned MLP decoders, gamma2 = 1e4,
Gaussian sources and prior of sd ``--prior-scale``, one replica batch of ``--seeds`` seeds) on
one draw of a mixing, and prints per seed the MCC, the best validation ELBO (nats per point)
and the mean posterior sd of each latent, marking a latent collapsed onto the prior (mean
posterior sd above half the prior's). With ``--true-decoder`` the decoder is the mixing itself,
held fixed, and only the encoder trains: the ELBO the true factors reach.

VARIANT (``W``, a random orthogonal matrix from ``--draw``, and ``s``, log-spaced in
``[10^-0.5, 10^0.5]``, as in the study):

- ``orthogonal_mlp``: the study's ``W (s * sigma(z))``, ``sigma`` the smooth leaky ReLU (slope
  0.2), whose slope at 0 is 0.6 and whose value there is ``0.8 log 2``;
- ``linear``: ``W (s * z)`` (the study's ``orthogonal_linear``);
- ``linear-scaled``: ``W (0.6 s * z)``; ``linear-offset``: ``W (s * z) + W (0.8 log 2 s)``;
  ``linear-matched``: ``W (0.6 s * z) + W (0.8 log 2 s)``, the first-order Taylor expansion
  of ``orthogonal_mlp`` at 0.

It trains with ``guide_families.learned_fit``, part B's own training (the same seeds, data and
steps), so ``orthogonal_mlp`` and ``linear`` reproduce that study's numbers for the same options
(``guide-families --mixings orthogonal_mlp`` etc. in ``reproduce_results.py``; part B there runs
one thread per worker: use ``--threads 1`` here to match it bit for bit).
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch

VARIANTS = ("orthogonal_mlp", "linear", "linear-scaled", "linear-offset", "linear-matched")


class _Shifted:
    """``x = f(z) + shift``: a mixing plus a constant offset."""

    def __init__(self, f, shift):
        self.f, self.shift = f, shift

    def __call__(self, z):
        return self.f(z) + self.shift


def mixing(variant: str, d: int, draw: int):
    from pyro_ima.experiments.guide_families import make_mixing
    if variant in ("orthogonal_mlp", "linear"):
        return make_mixing("orthogonal_mlp" if variant == "orthogonal_mlp"
                           else "orthogonal_linear", d, seed=draw)
    scale = 0.6 if variant in ("linear-scaled", "linear-matched") else 1.0
    f = make_mixing("orthogonal_linear", d, seed=draw)
    s = f.scales
    f.scales = scale * s
    if variant in ("linear-offset", "linear-matched"):  # sigma(0) = 0.8 log 2
        return _Shifted(f, (0.8 * math.log(2) * s) @ f.weight.T)
    return f


def main(argv: list[str] | None = None) -> dict:
    from pyro_ima import inference
    from pyro_ima.experiments import guide_families
    from pyro_ima.experiments.common import Runtime

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant", nargs="?", default="orthogonal_mlp", choices=VARIANTS)
    p.add_argument("--family", default="diagonal", choices=guide_families.FAMILIES)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--seed-offset", type=int, default=0)
    p.add_argument("--draw", type=int, default=0)
    p.add_argument("--prior-scale", type=float, default=guide_families.PRIOR_SCALE)
    p.add_argument("--kl-warmup-beta", type=float, default=None)
    p.add_argument("--kl-warmup-epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=guide_families.FULL.patience)
    p.add_argument("--epochs", type=int, default=guide_families.FULL.epochs)
    p.add_argument("--n", type=int, default=20_000, help=argparse.SUPPRESS)  # tests: tiny
    p.add_argument("--true-decoder", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    if a.kl_warmup_beta is None and a.kl_warmup_epochs != 10:
        p.error("--kl-warmup-epochs: given without --kl-warmup-beta")
    cfg = dataclasses.replace(guide_families.FULL, n=a.n, patience=a.patience, epochs=a.epochs,
                              seeds=a.seeds, seed_offset=a.seed_offset,
                              learned_mixings=("orthogonal_mlp",),  # part B: not Moebius
                              learned_prior_scale=a.prior_scale,
                              kl_warmup_beta=a.kl_warmup_beta,
                              kl_warmup_epochs=a.kl_warmup_epochs)
    try:
        guide_families.settings(cfg)  # checks the config before any work
    except (TypeError, ValueError) as e:
        p.error(str(e))
    f = mixing(a.variant, guide_families.LEARNED_D, a.draw)
    r = guide_families.learned_fit(f, a.family, cfg, a.draw, Runtime(),
                                   decoder=f if a.true_decoder else None)
    guide, ds, seeds, fit, failed = r.guide, r.dataset, r.seeds, r.fit, r.failed
    m = inference.evaluate(r.vae, guide, ds.test.x, ds.test.z, metrics=("mcc",))
    with torch.no_grad():
        sd = guide.covariance(ds.test.x).diagonal(dim1=-2, dim2=-1).sqrt().mean(-2)
    collapsed = sd > 0.5 * a.prior_scale
    mcc = m["mcc_pearson"]
    print(f"{a.variant}, {a.family}, prior sd {a.prior_scale:g}, draw {a.draw}"
          + (", true decoder held fixed" if a.true_decoder else "")
          + (f", KL warm-up beta {a.kl_warmup_beta:g} x {a.kl_warmup_epochs} epochs"
             if a.kl_warmup_beta else "")
          + f", patience {a.patience}, cap {a.epochs} ({fit.epochs_run} run)")
    for i, s in enumerate(seeds):
        flag = " FAILED" if bool(failed[i]) else ""
        print(f"  seed {s}: MCC {float(mcc[i]):.3f}, best validation ELBO "
              f"{float(fit.best_val_elbo[i]):.3f}, posterior sd per latent "
              f"{', '.join(f'{float(v):.3f}' for v in sd[i])}"
              + (f" ({int(collapsed[i].sum())} collapsed)" if bool(collapsed[i].any()) else "")
              + flag)
    ok = ~failed
    print(f"mean MCC {float(mcc[ok].mean()):.3f} over {int(ok.sum())} seeds; "
          f"{int(collapsed[ok].any(-1).sum())} with a collapsed latent")
    return {"mcc": mcc, "best_val_elbo": fit.best_val_elbo, "collapsed": collapsed,
            "failed": failed}


if __name__ == "__main__":
    main()
