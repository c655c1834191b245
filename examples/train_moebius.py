"""Train a VAE on Moebius-mixed uniform latents and report the ELBO per split.

    python examples/train_moebius.py --gamma2 1e4 --epochs 50
"""

import argparse

from pyro_ima import data, inference, mixings, models, priors
from pyro_ima.progress import EpochProgress


def main(args):
    p0 = priors.uniform(args.dim)
    ds = data.make_dataset(mixings.Moebius(args.dim, seed=args.seed), p0, n=args.n,
                           seed=args.seed)
    vae = models.GaussianVAE(models.MLP(args.dim, args.dim, seed=args.seed), p0, args.gamma2)
    family = models.GUIDES[args.guide]
    guide = family(vae, models.MLP(args.dim, family.num_outputs(args.dim), seed=args.seed + 1))
    progress = [] if args.quiet else [EpochProgress(args.epochs, "train")]
    run = inference.fit(vae, guide, ds.train, ds.val, epochs=args.epochs, patience=10,
                        seed=args.seed, callbacks=progress)
    for name in ("train", "val", "test"):
        elbo = inference.elbo_per_point(vae, guide, getattr(ds, name).x, num_particles=10)
        print(f"{name:5s} ELBO {float(elbo.mean()):8.3f}")
    print(f"best epoch {int(run.best_epoch[0])} of {run.epochs_run}")
    return run


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dim", type=int, default=3)
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--gamma2", type=float, default=1e4)
    p.add_argument("--guide", choices=sorted(models.GUIDES), default="diagonal")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    main(p.parse_args())
