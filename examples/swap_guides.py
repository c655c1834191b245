"""Swap guide families on a fixed linear decoder and compare the gap with its closed form.

For x = W z + noise (z ~ N(0, I)) the optimal ELBO of each family is log p(x) minus a known gap
(pyro_ima.linear_gaussian): diagonal 1/2 (sum log P_kk - log det P), isotropic
1/2 (d log(tr P / d) - log det P), full 0, with P = I + gamma2 W^T W.

    python examples/swap_guides.py --gamma2 100
"""

import argparse

import torch

from pyro_ima import inference, models
from pyro_ima.linear_gaussian import LinearGaussian


def main(args):
    d = args.dim
    W = torch.eye(d) + 0.8 * torch.triu(torch.ones(d, d), 1)  # a shear: columns not orthogonal
    lg = LinearGaussian(W, args.gamma2)
    x = lg.sample(args.n, seed=args.seed)
    log_px = lg.log_px(x).mean()
    for family, cls in models.GUIDES.items():  # the only thing that changes is the class
        vae = lg.vae()
        guide = cls(vae, models.MLP(d, cls.num_outputs(d), hidden=(), seed=args.seed),
                    init_scale=0.1)
        inference.fit(vae, guide, x, x, epochs=args.epochs, lr=1e-2, seed=args.seed)
        elbo = inference.elbo_per_point(vae, guide, x, num_particles=50).mean()
        print(f"{family:9s} gap {float(log_px - elbo):6.3f}   "
              f"closed form {float(lg.gap(cls)):6.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dim", type=int, default=3)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--gamma2", type=float, default=100.0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    main(p.parse_args())
