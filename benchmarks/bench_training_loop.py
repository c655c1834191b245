"""Benchmark: the training loop's savings, each against its baseline in this process.

    python benchmarks/bench_training_loop.py [--replicas 100] [--n 6000] [--epochs 12]

Workload: the paper's synthetic setting (d = 3, MLP 50-50, diagonal guide, batch 64), one
thread. Printed as ratios:

1. ``fit`` with ``drop_stopped`` (the default) against ``drop_stopped=False`` on the same
   replica batch, for (a) a precision warm-up stage that trains a quarter of the replicas
   (``train_mask``) and (b) early stopping with plateau halving (patience 1, one halving), where
   replicas stop at different epochs; best epochs are checked identical, parameters equal up
   to float rounding (see FitConfig.drop_stopped) and the best validation ELBOs compared;
2. the validation ELBO at the chunk size ``fit`` picks for ``R`` replicas against the
   estimator's default chunk of 4,096 points (12,000 points, the paper's validation split);
3. a step with half the replicas on a halved step size: ``fit``'s update (one ``lerp``) against
   the earlier arithmetic (a snapshot, ``before + s (p - before)``, then ``where``);
4. one MLP forward + backward with ``BatchedLinear``'s fused ``baddbmm`` against
   ``matmul`` + bias;
5. an epoch of ``fit`` (no validation) with the default Adam (fused kernels on a CPU) against
   ``foreach`` Adam.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_replicas import best_of

from pyro_ima import data, inference, mixings, models, priors
from pyro_ima.inference.elbo import vae_elbo_per_point
from pyro_ima.inference.train import _Replicas, _val_chunk

D = 3


def build(R):
    seeds = list(range(R))
    vae = models.GaussianVAE(models.MLP(D, D, replicas=R, seed=seeds), priors.gaussian(D),
                             gamma2=torch.logspace(1, 3, R), replicas=R)
    guide = models.DiagonalGuide(vae, models.MLP(D, 2 * D, replicas=R,
                                                 seed=[s + 1000 for s in seeds]))
    return vae, guide, seeds


def timed_fit(R, ds, drop, **kw):
    vae, guide, seeds = build(R)
    t = time.perf_counter()
    res = inference.fit(vae, guide, ds.train, ds.val, seed=seeds, drop_stopped=drop, **kw)
    params = {k: p.detach().clone() for k, p in inference.trainable_parameters(vae, guide).items()}
    return time.perf_counter() - t, res, params


def compare_fits(label, R, ds, **kw):
    (t_off, r_off, p_off), (t_on, r_on, p_on) = (timed_fit(R, ds, drop, **kw)
                                                 for drop in (False, True))
    same_epochs = torch.equal(r_off.best_epoch, r_on.best_epoch)
    diff = max((p_off[k] - p_on[k]).abs().max().item() for k in p_off)
    val = (r_off.best_val_elbo - r_on.best_val_elbo).nan_to_num().abs().max().item()
    computed = sum(h["computed"] for h in r_on.history)
    print(f"1{label}: {r_on.epochs_run} epochs, {computed} replica-epochs computed of "
          f"{R * r_on.epochs_run}: {t_on:.2f} s vs {t_off:.2f} s with drop_stopped=False -> "
          f"ratio {t_on / t_off:.2f}; best epochs identical: {same_epochs}, parameters differ "
          f"by at most {diff:.1e} (fused Adam's scalar tail rounds differently, JointOptim), "
          f"best validation ELBOs by at most {val:.1e}")
    if not same_epochs or diff > 1e-4:
        raise SystemExit("drop_stopped changed a result beyond float rounding")


def old_halved_update(params, before, scale):
    scaled = scale < 1
    with torch.no_grad():
        for k, p in params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            s = scale.reshape(shape).to(p.dtype)
            p.copy_(torch.where(scaled.reshape(shape), before[k] + s * (p - before[k]), p))


def main(args):
    torch.set_num_threads(1)
    R = args.replicas
    print(f"torch threads 1, R = {R}, d = {D}, batch 64, n = {args.n}")
    ds = data.make_dataset(mixings.Moebius(D, seed=0), priors.gaussian(D), n=args.n, seed=0)
    timed_fit(R, ds, True, epochs=1)  # the process's first fit pays one-off costs
    mask = torch.arange(R) % 4 == 0
    compare_fits("a (warm-up stage, a quarter trained)", R, ds, epochs=args.epochs // 3,
                 train_mask=mask, patience=None)
    compare_fits("b (early stopping, patience 1, one halving)", R, ds, epochs=args.epochs,
                 patience=1, lr_halvings=1, lr=3e-3)

    vae, guide, _ = build(R)
    xv = torch.randn(R, 12_000, D)
    eps = torch.randn(1, R, 12_000, D)

    def val(chunk):
        def run():
            t = time.perf_counter()
            with torch.no_grad():
                vae_elbo_per_point.batched(vae, guide, xv, eps=eps, beta_weighted=True,
                                           chunk_size=chunk)
            return time.perf_counter() - t
        return run

    chunk = _val_chunk(R, torch.device("cpu"))
    t_fit, t_default = best_of([val(chunk), val(4096)], 3)
    print(f"2. validation ELBO, 12,000 points: chunk {chunk} (fit's) {t_fit:.3f} s vs "
          f"4,096 {t_default:.3f} s -> ratio {t_fit / t_default:.2f}")

    params = inference.trainable_parameters(vae, guide)
    book = _Replicas(params, R, inference.FitConfig(), optim=None)
    book.step_scale[: R // 2] = 0.5

    def halved(new):
        def run(steps=200):
            t = time.perf_counter()
            for _ in range(steps):
                before = book._snapshot()
                if new:
                    book.after_step(1.0, None, before, 0, 0)
                else:
                    old_halved_update(params, before, book.step_scale)
            return (time.perf_counter() - t) / steps
        return run

    t_new, t_old = best_of([halved(True), halved(False)], 5)
    print(f"3. halved-step update, half the replicas halved: {t_new * 1e3:.3f} ms vs "
          f"{t_old * 1e3:.3f} ms per step -> ratio {t_new / t_old:.2f}")

    net = models.MLP(D, D, replicas=R, seed=list(range(R)))
    x = torch.randn(R, 64, D)

    def mlp(fused):
        def run(steps=100):
            t = time.perf_counter()
            for _ in range(steps):
                h = x
                for i, layer in enumerate(net.layers):
                    h = (layer(h) if fused else torch.matmul(h, layer.weight) + layer.bias)
                    h = net.activation(h) if i < len(net.layers) - 1 else h
                h.square().sum().backward()
            return (time.perf_counter() - t) / steps
        return run

    t_fused, t_plain = best_of([mlp(True), mlp(False)], 12)
    print(f"4. MLP forward + backward, batch 64: baddbmm {t_fused * 1e3:.2f} ms vs matmul + "
          f"bias {t_plain * 1e3:.2f} ms -> ratio {t_fused / t_plain:.2f}")

    def epoch(fused):
        def run():
            vae, guide, seeds = build(R)
            before = inference.JointOptim.fused_kernels
            inference.JointOptim.fused_kernels = fused  # fit's default Adam either way
            try:
                t = time.perf_counter()
                res = inference.fit(vae, guide, ds.train, epochs=1, seed=seeds)
                return (time.perf_counter() - t) / res.steps
            finally:
                inference.JointOptim.fused_kernels = before
        return run

    t_fused, t_foreach = best_of([epoch(True), epoch(False)], 4)
    print(f"5. fit step, Adam: fused (default) {t_fused * 1e3:.2f} ms vs foreach "
          f"{t_foreach * 1e3:.2f} ms -> ratio {t_fused / t_foreach:.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--replicas", type=int, default=100)
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=12)
    main(p.parse_args())
