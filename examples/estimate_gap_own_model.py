"""Your own Pyro model: per-point ELBO, IWAE log p(x) with PSIS k-hat, and the gap.

A VAE written as plain Pyro code in the style of Pyro's VAE example (an MLP encoder and
decoder, a Bernoulli likelihood, a "data" plate), trained with plain `pyro.infer.SVI` on the
binarized Sprites images the library renders itself. The library then reads per-point
estimates from the traces of that model and guide. Last, Pyro's own `RenyiELBO` (alpha = 0, the
IWAE bound) is computed on minibatches of the same points: its subsample scale sits inside the
logsumexp, so its estimate of the total log-likelihood moves with the batch size.

    python examples/estimate_gap_own_model.py --n 5000 --epochs 30
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_ima import inference, sprites


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, hidden), nn.Linear(hidden, z_dim), \
            nn.Linear(hidden, z_dim)

    def forward(self, x):
        h = torch.nn.functional.softplus(self.fc1(x))
        return self.fc21(h), torch.exp(self.fc22(h))  # Pyro's convention: loc, scale


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(z_dim, hidden), nn.Linear(hidden, 784)

    def forward(self, z):
        return torch.sigmoid(self.fc21(torch.nn.functional.softplus(self.fc1(z))))


def make_model_and_guide(z_dim=4, hidden=200):
    encoder, decoder = Encoder(z_dim, hidden), Decoder(z_dim, hidden)

    def model(x, batch_size=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0], subsample_size=batch_size) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([z_dim]).to_event(1))
            pyro.sample("obs", dist.Bernoulli(decoder(z), validate_args=False).to_event(1),
                        obs=x[idx])

    def guide(x, batch_size=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0], subsample_size=batch_size) as idx:
            loc, scale = encoder(x[idx])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide


def main(args):
    pyro.clear_param_store()
    torch.manual_seed(args.seed)  # a script: it may seed the global state
    ds = sprites.binary_sprites(args.n, seed=args.seed)
    x_train, x_test = ds.train.x, ds.test.x[: args.test_points]
    model, guide = make_model_and_guide(args.z_dim, args.hidden)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    steps = args.epochs * (len(x_train) // 64)
    for _ in range(steps):
        loss = svi.step(x_train, batch_size=64)
    print(f"trained {steps} SVI steps; last minibatch loss per point "
          f"{loss / len(x_train):.2f}")

    # per-point estimates from the traces of the user's own model and guide
    elbo = inference.elbo_per_point(model, guide, x_test, num_particles=args.particles,
                                    seed=1)
    iwae = inference.importance_log_px(model, guide, x_test, num_samples=args.samples, seed=2,
                                       khat_warn=1.0)
    gap = iwae.log_px - elbo
    k = inference.khat_summary(iwae.khat)
    print(f"{len(x_test)} test points: ELBO {float(elbo.mean()):.3f}  IWAE log p(x) "
          f"{float(iwae.log_px.mean()):.3f} (K = {args.samples}; k-hat median "
          f"{float(k['khat_median']):.2f}, {float(k['khat_frac_above']):.0%} > 0.7)  "
          f"gap {float(gap.mean()):.3f} nats per point")

    # Pyro's RenyiELBO under subsampling vs the per-point sum, on the same test points
    ours = float(iwae.log_px.sum())
    print(f"sum of per-point log p(x) (IWAE, K = {args.samples}): {ours:.1f}")
    renyi = pyro.infer.RenyiELBO(alpha=0, num_particles=args.samples,
                                 vectorize_particles=True, max_plate_nesting=1)
    results = {"ours": ours}
    for batch in args.renyi_batches:
        b = min(batch, len(x_test))
        repeats = args.renyi_repeats if b < len(x_test) else 1  # random minibatches
        with torch.no_grad(), pyro.poutine.seed(rng_seed=3):
            est = [-renyi.loss(model, guide, x_test, batch_size=b) for _ in range(repeats)]
        results[b] = sum(est) / len(est)
        print(f"RenyiELBO(alpha=0), subsample {b:4d}: {results[b]:.1f} "
              f"(mean over {len(est)} minibatches)")
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=5000, help="binarized Sprites images in all")
    p.add_argument("--z-dim", type=int, default=4)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--test-points", type=int, default=500)
    p.add_argument("--particles", type=int, default=100, help="particles of the ELBO")
    p.add_argument("--samples", type=int, default=1000, help="importance samples K")
    p.add_argument("--renyi-batches", type=int, nargs="+", default=[500, 50, 10])
    p.add_argument("--renyi-repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    main(p.parse_args())
