"""Benchmark: replica-batched SVI against sequential runs and against hand-written torch.

    python benchmarks/bench_replicas.py [--replicas 100] [--steps 300]

Workload: the paper's synthetic setting, d = 3, batch 64, MLP decoder and encoder (two hidden
layers of 50, smooth leaky ReLU), diagonal guide, Adam. Everything below is measured in this one
process and printed as ratios:

1. replica-steps per second of one batched ``fit`` with R replicas vs sequential single runs
   (the sequential side is extrapolated from a few single runs: they are identical in cost);
2. the library's training step (``fit``: minibatch gather + ``pyro.infer.SVI.step``) vs a
   hand-written torch step on the same batched workload, for R replicas and for one;
3. peak resident memory of the batched run (VmHWM of a fresh process), next to a process that
   only builds the model.
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import torch
import torch.nn.functional as F
from _memory import peak_mb

from pyro_ima import data, inference, mixings, models, priors

D = 3


def build(replicas, seed=0):
    seeds = list(range(seed, seed + (replicas or 1)))
    s = seeds if replicas else seed
    s_enc = [x + 1000 for x in seeds] if replicas else seed + 1000
    p0 = priors.gaussian(D)
    vae = models.GaussianVAE(models.MLP(D, D, replicas=replicas, seed=s), p0, gamma2=1e3,
                             replicas=replicas)
    guide = models.DiagonalGuide(vae, models.MLP(D, 2 * D, replicas=replicas, seed=s_enc))
    return vae, guide, seeds


def dataset(n):
    return data.make_dataset(mixings.Linear.orthogonal(D, seed=0), priors.gaussian(D), n=n,
                             seed=0)


def library_step_time(replicas, steps, batch=64):
    """Seconds per training step of ``fit`` (no validation), after one warm-up epoch."""
    vae, guide, seeds = build(replicas)
    n_train = steps * batch
    x = dataset(int(n_train / 0.7) + 10).train.x[:n_train]
    inference.fit(vae, guide, x[: 4 * batch], epochs=1, batch_size=batch, seed=seeds if
                  replicas else 0)
    t = time.perf_counter()
    res = inference.fit(vae, guide, x, epochs=1, batch_size=batch,
                        seed=seeds if replicas else 0)
    return (time.perf_counter() - t) / res.steps


def torch_step_time(replicas, steps, batch=64, lr=1e-3):
    """The same model, loss and Adam written directly in torch (no Pyro)."""
    vae, guide, seeds = build(replicas)
    n_train = steps * batch
    x = dataset(int(n_train / 0.7) + 10).train.x[:n_train]
    params = list(vae.parameters()) + list(guide.parameters())
    opt = torch.optim.Adam(params, lr=lr, fused=True)  # torch's fastest, as fit's default
    R = replicas or 1
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    obs_scale = vae.obs_scale()
    log2pi = math.log(2 * math.pi)

    def run(num_steps):
        perms = torch.stack([torch.randperm(n_train, generator=g)[: num_steps * batch]
                             for g in gens]).view(R, num_steps, batch)
        noise = torch.stack([torch.randn(num_steps, batch, D, generator=g) for g in gens], 1)
        for t in range(num_steps):
            xb = x[perms[:, t]] if replicas else x[perms[0, t]]
            eps = noise[t] if replicas else noise[t, 0]
            h = guide.encoder(xb)
            loc, scale = h[..., :D], F.softplus(h[..., D:])
            z = loc + scale * eps
            xm = vae.decoder(z)
            log_lik = (-0.5 * ((xb - xm) / obs_scale).square() - obs_scale.log()
                       - 0.5 * log2pi).sum(-1)
            log_prior = (-0.5 * z.square() - 0.5 * log2pi).sum(-1)
            log_q = (-0.5 * eps.square() - scale.log() - 0.5 * log2pi).sum(-1)
            loss = -(log_lik + log_prior - log_q).sum() * (n_train / batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

    run(4)
    t = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t) / steps


def _build_or_train(replicas, steps, train):
    if train:
        library_step_time(replicas, steps)
    else:
        build(replicas)


def best_of(fns, repeats):
    """Interleaved repeats of each timing function; the best (minimum) of each."""
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], fn())
    return best


def main(args):
    R, steps = args.replicas, args.steps
    print(f"torch threads {torch.get_num_threads()}, pyro {pyro.__version__}, "
          f"R = {R}, batch 64, d = {D}, {steps} steps per measurement, best of {args.repeats}")
    t_batched, t_torch_r, t_single, t_torch_1 = best_of(
        [lambda: library_step_time(R, steps), lambda: torch_step_time(R, steps),
         lambda: library_step_time(None, steps), lambda: torch_step_time(None, steps)],
        args.repeats)
    print(f"1. batched fit: {t_batched * 1e3:.2f} ms/step = {R / t_batched:.0f} replica-steps/s; "
          f"single fit: {t_single * 1e3:.2f} ms/step = {1 / t_single:.0f} replica-steps/s "
          f"({R} sequential runs extrapolated from single runs of identical cost) -> "
          f"speed-up {t_single * R / t_batched:.1f}x")
    print(f"2. library vs hand-written torch step: R = {R}: {t_batched * 1e3:.2f} vs "
          f"{t_torch_r * 1e3:.2f} ms -> {t_batched / t_torch_r:.2f}x; R = 1: "
          f"{t_single * 1e3:.2f} vs {t_torch_1 * 1e3:.2f} ms -> {t_single / t_torch_1:.2f}x")
    print(f"3. peak RSS: batched run R = {R}: {peak_mb(_build_or_train, R, steps, True):.0f} MB; "
          f"process that only builds the model: "
          f"{peak_mb(_build_or_train, R, steps, False):.0f} MB")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--replicas", type=int, default=100)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    main(p.parse_args())
