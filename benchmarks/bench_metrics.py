"""Benchmark: contrasts and the IS estimator against hand-written baselines, in one run.

    python benchmarks/bench_metrics.py [--points 10000] [--samples 1000]

Prints, for each pair, the wall-clock time of the library and of the baseline measured in this
process (after a small warm-up call of each, best of two), their ratio, and the peak resident
memory of each (measured in a fresh subprocess so the two do not share a high-water mark).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _memory import peak_mb

from pyro_ima import inference, metrics, models, priors


def _setup(points, seed=0):
    torch.manual_seed(seed)
    d = 3
    vae = models.GaussianVAE(models.MLP(d, d, seed=seed), priors.gaussian(d), gamma2=1e3)
    guide = models.DiagonalGuide(vae, models.MLP(d, 2 * d, seed=seed + 1), init_scale=0.05)
    x = torch.randn(points, d)
    return vae, guide, x


def contrasts_library(points, samples):
    vae, _, x = _setup(points)
    with torch.no_grad():
        return metrics.ima_contrast(metrics.jacobian(vae.decoder, x))


def contrasts_loop(points, samples):
    vae, _, x = _setup(points)
    out = torch.empty(points)
    for i in range(points):
        J = torch.autograd.functional.jacobian(vae.decoder, x[i])
        out[i] = J.norm(dim=0).log().sum() - torch.linalg.slogdet(J)[1]
    return out


def is_library(points, samples):
    """Includes the per-point PSIS k-hat (ArviZ), which the baseline does not compute."""
    vae, guide, x = _setup(points)
    return inference.importance_log_px(vae, guide, x, num_samples=samples, khat_warn=1.0).log_px


def is_handwritten(points, samples, chunk=100):
    """The same estimator in plain torch: no Pyro, no PSIS."""
    vae, guide, x = _setup(points)
    g = torch.Generator().manual_seed(0)
    out = []
    prior = torch.distributions.Normal(0.0, 1.0)
    with torch.no_grad():
        for s in range(0, points, chunk):
            xs = x[s:s + chunk]
            h = guide.encoder(xs)
            loc, scale = h[:, :3], torch.nn.functional.softplus(h[:, 3:] + guide.raw_shift)
            eps = torch.randn(samples, xs.shape[0], 3, generator=g)
            z = loc + scale * eps
            obs = torch.distributions.Normal(vae.decoder(z), vae.obs_scale())
            lw = (obs.log_prob(xs).sum(-1) + prior.log_prob(z).sum(-1)
                  - torch.distributions.Normal(loc, scale).log_prob(z).sum(-1))
            out.append(torch.logsumexp(lw, 0) - math.log(samples))
    return torch.cat(out)


def noop(points, samples):
    _setup(10)


def seconds(fn, points, samples):
    """Best of two timed calls, after a small warm-up call."""
    fn(50, 10)
    best = math.inf
    for _ in range(2):
        t = time.perf_counter()
        fn(points, samples)
        best = min(best, time.perf_counter() - t)
    return best


def main(args):
    torch.set_num_threads(torch.get_num_threads())
    print(f"threads {torch.get_num_threads()}, points {args.points}, IS samples {args.samples}")
    print(f"peak RSS of a process that only imports and builds the model: "
          f"{peak_mb(noop, 0, 0):.0f} MB")
    pairs = [("contrasts (jacobian + c_IMA)", contrasts_library, contrasts_loop),
             ("importance-sampled log p", is_library, is_handwritten)]
    for name, lib, base in pairs:
        t_lib, t_base = seconds(lib, args.points, args.samples), seconds(
            base, args.points, args.samples)
        m_lib, m_base = (peak_mb(f, args.points, args.samples) for f in (lib, base))
        print(f"{name}: library {t_lib:.2f}s ({m_lib:.0f} MB peak), baseline {t_base:.2f}s "
              f"({m_base:.0f} MB peak), ratio library/baseline {t_lib / t_base:.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--points", type=int, default=10_000)
    p.add_argument("--samples", type=int, default=1000)
    main(p.parse_args())
