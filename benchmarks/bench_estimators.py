"""Estimator truth: ELBO* and log p(x) against closed forms and quadrature.

    python benchmarks/bench_estimators.py [--quick]

1. Linear Gaussian VAEs, d in {2, 4, 6}, gamma2 in {1e1, 1e3, 1e5}, fresh random W (3 draws
   each): ELBO* of every guide family (``refine_elbo``, from an encoder that was never trained)
   against the closed form ``log p(x) - gap``; the largest error over all points.
2. 2-D nonlinear decoders with the decoder fixed and the encoder trained by ``fit`` for a few
   epochs as a user would (its mean ends several posterior standard deviations off the mode at
   large gamma2): importance-sampled log p(x) with the Laplace proposal at the posterior mode
   (K = 10,000) against numerical quadrature, in float64 and float32, with the share of points
   the reliability flag passes; and the IWAE bound with the trained guide as proposal.
3. The approximation gap ``log p - ELBO*`` at gamma2 = 1e5 against each family's limit
   (diagonal: C_IMA, isotropic: C_conf, full: 0) on two fixed nonlinear decoders.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.distributions import ComposeTransform

from pyro_ima import data, inference, mixings, models, priors
from pyro_ima._utils import torch_defaults
from pyro_ima.linear_gaussian import LinearGaussian
from pyro_ima.quadrature import gaussian_log_joint, quadrature_log_px


def linear_elbo_star(quick: bool) -> None:
    worst, t = 0.0, time.perf_counter()
    for d in (2, 4) if quick else (2, 4, 6):
        for g2 in (1e1, 1e3, 1e5):
            for draw in range(1 if quick else 3):
                lg = LinearGaussian.random(d, g2, seed=100 * d + 10 * draw + int(math.log10(g2)))
                x = lg.sample(50, seed=draw)
                for cls in models.GUIDES.values():
                    vae = lg.vae()
                    enc = models.MLP(d, cls.num_outputs(d), (16,), seed=draw)
                    star = inference.refine_elbo(vae, cls(vae, enc), x)
                    err = (star.double() - (lg.log_px(x) - lg.gap(cls))).abs().max()
                    worst = max(worst, float(err))
    print(f"1. linear Gaussian VAEs: largest |ELBO* - closed form| over every family, d, gamma2 "
          f"and point: {worst:.2e} nats (target 0.002; {time.perf_counter() - t:.0f}s)")


def _moebius_shear():
    """A Moebius map then a shear (built in the current default dtype)."""
    shear = mixings.Linear(torch.tensor([[1.0, 1.2], [0.0, 1.0]]))
    return ComposeTransform([mixings.Moebius(2, seed=3, alpha=4.0), shear])


def _decoders():
    return {"triangular MLP, Gaussian prior": (
        lambda: mixings.TriangularMLP(2, seed=0, shear=3.0), lambda: priors.gaussian(2)),
        "Moebius + shear, uniform prior": (_moebius_shear, lambda: priors.uniform(2))}


def nonlinear_log_px(quick: bool) -> None:
    K = 10_000
    print(f"2. 2-D nonlinear decoders, encoder trained by fit (3 epochs), 40 test points, "
          f"K = {K}: |IS log p - quadrature|")
    print(f"   {'decoder':32s} {'gamma2':>7s} {'dtype':>8s} {'max':>8s} {'median':>8s} "
          f"{'reliable':>9s} {'max reliable':>13s} {'IWAE max':>9s}")
    for name, (make_f, make_p) in _decoders().items():
        for g2 in (1e2, 1e6) if quick else (1e2, 1e4, 1e6):
            for dtype in (torch.float64, torch.float32):
                with torch_defaults(dtype=dtype):
                    f, p0 = make_f(), make_p()
                    ds = data.make_dataset(f, p0, n=1500, noise_std=1 / math.sqrt(g2), seed=0)
                    vae = models.GaussianVAE(f, p0, g2)
                    guide = models.DiagonalGuide(vae, models.MLP(2, 4, (32, 32), seed=0),
                                                 init_scale=1 / math.sqrt(g2))
                inference.fit(vae, guide, ds.train, ds.val, epochs=3, lr=3e-3, seed=0)
                x, z = ds.test.x[:40], ds.test.z[:40]
                with torch_defaults(dtype=torch.float64):
                    f64, p64 = make_f(), make_p()
                exact = quadrature_log_px(gaussian_log_joint(f64, p64, g2), x, z)
                res = inference.importance_log_px(vae, guide, x, num_samples=K,
                                                  proposal="laplace", sample_chunk=2500,
                                                  khat_warn=1.0)
                iwae = inference.importance_log_px(vae, guide, x, num_samples=1000,
                                                   khat_warn=1.0)
                err = (res.log_px - exact).abs()
                rel = res.reliable
                worst_rel = float(err[rel].max()) if bool(rel.any()) else float("nan")
                print(f"   {name:32s} {g2:7.0e} {str(dtype)[6:]:>8s} {float(err.max()):8.4f} "
                      f"{float(err.median()):8.4f} {float(rel.double().mean()):9.0%} "
                      f"{worst_rel:13.4f} {float((iwae.log_px - exact).abs().max()):9.2f}")


def gap_limits(quick: bool) -> None:
    print("3. approximation gap log p - ELBO* at gamma2 = 1e5 vs each family's limit "
          "(60 points, untrained encoder)")
    decs = {"Moebius + shear": _moebius_shear(),
            "triangular MLP": mixings.TriangularMLP(2, seed=0, shear=3.0)}
    scales = {"Moebius + shear": 0.2, "triangular MLP": 1.0}
    for name, f in decs.items():
        p0 = priors.gaussian(2, scale=scales[name])
        g = torch.Generator().manual_seed(0)
        z = scales[name] * torch.randn(60, 2, generator=g)
        x = f(z) + torch.randn(60, 2, generator=g) / math.sqrt(1e5)
        for family, target in (("diagonal", "c_ima"), ("isotropic", "c_conf"), ("full", None)):
            vae = models.GaussianVAE(f, p0, 1e5)
            cls = models.GUIDES[family]
            guide = cls(vae, models.MLP(2, cls.num_outputs(2), seed=0))
            rep = inference.gap_report(vae, guide, x, num_samples=1000 if quick else 5000,
                                       refine=inference.RefineConfig(steps=100))
            ok = rep["mode_found"] & rep["reliable"]
            gap = float(rep["approximation_gap"][ok].mean())
            if target is None:
                print(f"   {name:16s} {family:9s} gap {gap:8.4f} vs 0 "
                      f"({int(ok.sum())} of 60 points reliable)")
            else:
                limit = float(rep[target][ok].mean())
                print(f"   {name:16s} {family:9s} gap {gap:8.4f} vs {target} {limit:8.4f}: "
                      f"ratio {gap / limit:.4f} ({int(ok.sum())} of 60 points reliable)")


def main(args):
    t = time.perf_counter()
    linear_elbo_star(args.quick)
    nonlinear_log_px(args.quick)
    gap_limits(args.quick)
    print(f"total {time.perf_counter() - t:.0f}s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    main(p.parse_args())
