"""Benchmark: a replica-batched Sprites conv VAE step, grouped convolutions against a loop.

    python benchmarks/bench_conv_batching.py [--replicas 1 4 10] [--batch 64] [--steps 5]
                                             [--device cpu] [--threads N]

Times forward + backward of ``ConvEncoder`` -> ``ConvDecoder`` (replicas=R) on ``(R, B, 3, 64,
64)`` images, with ``batching="grouped"`` (one convolution with ``groups=R`` per layer) and
``"loop"`` (one convolution per replica), and prints the ratio grouped / loop; ``"auto"`` in
``pyro_ima.models.networks`` follows what this measures per device. The baseline also runs
``R`` separate unbatched networks one after another (what the Sprites study did before).
"""

from __future__ import annotations

import argparse
import time

import torch

from pyro_ima import models


def step_time(enc, dec, x, steps: int) -> float:
    def once():
        h = enc(x)
        loss = (dec(h[..., :4]) - x).square().sum()
        loss.backward()

    once()  # warm-up
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        once()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    for R in args.replicas:
        x = torch.rand(R, args.batch, 3, 64, 64, device=dev)
        times = {}
        for mode in ("grouped", "loop"):
            with torch.device(dev):
                enc = models.ConvEncoder(8, seed=0, replicas=R, batching=mode)
                dec = models.ConvDecoder(4, seed=100, replicas=R, batching=mode)
            times[mode] = step_time(enc, dec, x, args.steps)
        with torch.device(dev):
            nets = [(models.ConvEncoder(8, seed=r), models.ConvDecoder(4, seed=100 + r))
                    for r in range(R)]
        t_sep = sum(step_time(e, d, x[r], args.steps) for r, (e, d) in enumerate(nets))
        print(f"R = {R:3d}, batch {args.batch}, {dev.type}: grouped {1e3 * times['grouped']:.0f} "
              f"ms, loop {1e3 * times['loop']:.0f} ms, separate networks {1e3 * t_sep:.0f} ms "
              f"per step -> ratio grouped / loop {times['grouped'] / times['loop']:.2f}, "
              f"loop / separate {times['loop'] / t_sep:.2f}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 10])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    main(p.parse_args())
