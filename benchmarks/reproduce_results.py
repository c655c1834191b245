"""The commands behind the numbers in docs/results.md that are not a study's own full size.

    python benchmarks/reproduce_results.py reference-moebius-scale
    python benchmarks/reproduce_results.py moebius-protocol [--lr 3e-3 --patience 3 --halvings 4
                                                            --init-scale S]
    python benchmarks/reproduce_results.py sprites-geometry
    python benchmarks/reproduce_results.py sprites-long [--lr 1e-3] [--geometry triangle]
    python benchmarks/reproduce_results.py sprites-diagnostic [--sprites-prior symmetric]
                                                              [--sprites-anneal]
                                                              [--geometry triangle]
    python benchmarks/reproduce_results.py sprites-oracle [--geometry triangle]
                                                          [--arm both|true|random --epochs 30]
                                                          [--data-seed 0]
                                                          [--lr 1e-3 --batch-size 64]
                                                          [--sprites-init default|xavier]
                                                          [--sprites-prior true|symmetric|
                                                           learned|learned-floor]
                                                          [--sprites-n 6000 --val-points N]
    python benchmarks/reproduce_results.py elbo-vs-lima [--out-root runs/results]
    python benchmarks/reproduce_results.py is-vs-quadrature
    python benchmarks/reproduce_results.py tau-joint [--tau-warmup 30]
    python benchmarks/reproduce_results.py conjectures [--out-root runs/results]
    python benchmarks/reproduce_results.py guide-families [--seeds 10] [--workers 1]
                                                          [--warmup-epochs 0] [--seed-offset 0]
                                                          [--mixings moebius,orthogonal_mlp]
                                                          [--mixing-seeds 0]
                                                          [--kl-warmup-beta B]
                                                          [--kl-warmup-epochs 10]
                                                          [--patience 3] [--epochs 60]
                                                          [--prior-scale 0.2]

``conjectures`` runs studies 6 and 7 at the sizes of docs/results.md (a rerun in the same
``--out-root`` only re-summarizes) and prints the 95% Welch intervals the criteria use
(``scipy.stats.ttest_ind(..., equal_var=False).confidence_interval()``).
``guide-families`` runs study 6 alone with ``--seeds`` replicas per family (study 6B's 100-seed
rerun: ``--seeds 100 --workers 2``); with ``--mixing-seeds A-B`` it trains them on each
draw A..B of every mixing (``W`` and data) and adds the per-draw means and, with the draws as
the units, t-intervals of the differences between families (``scipy.stats.ttest_1samp``): the
6B sweep is ``--seeds 10 --workers 2 --mixings
orthogonal_linear,orthogonal_mlp --seed-offset 200 --mixing-seeds 1-10``. The protocol
options change part B's training (a KL warm-up, the plateau patience, the epoch cap, the
latent scale) and name the output directory after themselves.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time

import numpy as np
import torch
from scipy import stats
from scipy.stats import ortho_group

from pyro_ima import sprites


def reference_moebius_scale(args) -> None:
    """Per-dimension sd of Moebius data built as the official code does (sources uniform on
    [-0.5, 0.5], an orthogonal A, a pole with entries |a_i| > 0.5, x = A (z - a) / |z - a|^2)
    against ours (``mixings.Moebius`` on the unit box)."""
    from pyro_ima import data, mixings, priors
    ref = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        A = ortho_group.rvs(3, random_state=seed)
        a = []
        while len(a) < 3:
            s = rng.standard_normal()
            if abs(s) > 0.5:
                a.append(s)
        z = rng.uniform(-0.5, 0.5, (20_000, 3)) - np.array(a)
        ref.append(((A @ z.T).T / (z ** 2).sum(1, keepdims=True)).std(0).mean())
    ours = [float(data.make_dataset(mixings.Moebius(3, seed=s), priors.uniform(3), n=6000,
                                    seed=s).train.x.std(0).mean()) for s in range(20)]
    print(f"reference-style Moebius: per-dimension sd median {np.median(ref):.3f} "
          f"(range {min(ref):.3f}-{max(ref):.3f}); ours: median {np.median(ours):.3f} "
          f"(range {min(ours):.3f}-{max(ours):.3f}); squared ratio of medians "
          f"{(np.median(ours) / np.median(ref)) ** 2:.2f}")


def _moebius(seed: int, pole: str):
    """``mixings.Moebius`` on the unit box; ``pole="reference"`` places the pole as the official
    code does (``b = a + 1/2`` with each ``a_i`` standard normal, redrawn until ``|a_i| > 1/2``:
    the same map as its sources on [-0.5, 0.5] with pole ``a``), farther away on average."""
    from pyro_ima import mixings
    if pole == "ours":
        return mixings.Moebius(3, seed=seed)
    rng = np.random.default_rng(seed)
    a = []
    while len(a) < 3:
        v = rng.standard_normal()
        if abs(v) > 0.5:
            a.append(v)
    return mixings.Moebius(3, seed=seed, pole=np.array(a) + 0.5)


def moebius_protocol(args) -> None:
    """4 seeds at gamma2 1e4 and 1e5 (8 replicas, 60k points): mean MCC every 5 epochs.
    ``--warmup-epochs K`` first trains K epochs at ``--warmup-gamma2`` (no early stopping;
    with ``--warmup-ramp`` K epochs at each of 1e3, 1e4, ... below the target);
    ``--pole reference`` builds the data with the official code's pole."""
    from pyro_ima import inference, priors
    from pyro_ima.experiments.common import replica_datasets, replica_vae
    grid = [(g, s) for g in (1e4, 1e5) for s in range(4 if args.seeds is None else args.seeds)]
    seeds = [s for _, s in grid]
    p0 = priors.uniform(3)
    tr, va, te, tz, _ = replica_datasets(lambda s: _moebius(s, args.pole), p0, 60_000, seeds)
    gamma2 = torch.tensor([g for g, _ in grid])
    start = gamma2 if args.warmup_epochs == 0 else gamma2.clamp(max=args.warmup_gamma2)
    init = start.rsqrt().clamp(max=0.1) if args.init_scale is None else \
        torch.full_like(gamma2, args.init_scale)
    vae, guide = replica_vae(3, p0, start, seeds, init_scale=init)

    def report(epoch, rec):
        if epoch % 5 == 0:
            m = inference.evaluate(vae, guide, te[:, :2000], tz[:, :2000], metrics=("mcc",))
            mcc = m["mcc_pearson"]
            print(f"epoch {epoch}: mean MCC 1e4 {float(mcc[:4].mean()):.3f}, "
                  f"1e5 {float(mcc[4:].mean()):.3f}", flush=True)

    cfg = inference.FitConfig(epochs=args.epochs or 60, lr=args.lr or 3e-3,
                              patience=3 if args.patience is None else args.patience,
                              lr_halvings=args.halvings)
    stage = args.warmup_gamma2
    while args.warmup_epochs and bool((gamma2 > stage).any()):
        # epochs at a lower precision (raised tenfold per stage), then the plateau protocol
        vae.gamma2.copy_(gamma2.clamp(max=stage))
        inference.fit(vae, guide, tr, va, seed=seeds, callbacks=[report],
                      config=dataclasses.replace(cfg, epochs=args.warmup_epochs, patience=None))
        print(f"stage gamma2 <= {stage:g} done", flush=True)
        stage *= 10 if args.warmup_ramp else float("inf")
    vae.gamma2.copy_(gamma2)
    fit = inference.fit(vae, guide, tr, va, config=cfg, seed=seeds, callbacks=[report])
    print("stopped on their own:", fit.stopped_early.tolist(), "best epochs:",
          fit.best_epoch.tolist())


def sprites_geometry(args) -> None:
    """Per geometry: the generator's Jacobian Gram (sprites.factor_gram, 1,000 draws) per unit
    of each factor and per sd, the largest |cosine| between columns, and the pixel variance."""
    for g in ("compact", "large-square", "square", "triangle"):
        info = sprites.factor_signal(g, n=1000)
        gram = info["gram"] / np.outer(info["sd"], info["sd"])  # per unit of the factors
        d = np.sqrt(np.diag(gram))
        cos = np.abs(gram / np.outer(d, d) - np.eye(4)).max()
        per_sd = " / ".join(f"{v:,.0f}" for v in np.diag(info["gram"]))
        print(f"{g}: per unit x / y / size / hue {' / '.join(f'{v:,.0f}' for v in d ** 2)}; "
              f"size / x {d[2] ** 2 / d[0] ** 2:.2f}; per sd {per_sd}; "
              f"max |cos| {cos:.3f}; pixel variance {info['pixel_variance']:,.0f}; "
              f"lit {info['lit_fraction']:.0%}")


def sprites_long(args) -> None:
    """gamma2 = 1, one seed, 14,000 training images, 20 epochs: MCC every 2 epochs."""
    from pyro_ima.experiments import sprites_study
    cfg = sprites_study.Config(n=20_000, epochs=20, checkpoints=10, lr=args.lr or 1e-3,
                               patience=None, eval_points=500, geometry=args.geometry)
    t = time.perf_counter()
    rows = sprites_study.run_setting({"grid": [[1.0, 0]]}, cfg)
    for epoch in sorted({r["epoch"] for r in rows}):
        vals = {r["metric"]: round(r["value"], 3) for r in rows if r["epoch"] == epoch}
        print(epoch, vals)
    print(f"{time.perf_counter() - t:.0f} s")


_SPRITES_N = 6000  # the diagnostics' Sprites set: 4,200 / 1,200 / 600 images


def _sprites_vae(geometry: str, prior: str = "true", data_seed: int = 0, init: str = "default",
                 n: int = _SPRITES_N):
    """gamma2 = 1, the study's networks (seed 0), the ``n``-image set (70/20/10 split) of
    ``geometry`` drawn under ``data_seed`` (its Beta parameters and images).
    ``init="xavier"``: the linear layers' weights redrawn Xavier-uniform, as the official
    code's ``weights_init`` does (biases and convolutions keep PyTorch's defaults)."""
    from pyro_ima import models, priors, sprites
    ds = sprites.sprites_dataset(sprites.SpritesConfig(n=n, seed=data_seed, geometry=geometry))
    a, b = sprites.default_beta_params(data_seed)
    p0 = (priors.beta(4, a=a.tolist(), b=b.tolist()) if prior == "true"
          else priors.beta(4, a=float(a.mean()), b=float(b.mean())))
    decoder, encoder = models.ConvDecoder(4, seed=0), models.ConvEncoder(8, seed=10_000)
    if init == "xavier":
        for net, seed in ((decoder, 0), (encoder, 10_000)):
            gen = torch.Generator().manual_seed(seed)
            for m in net.modules():
                if isinstance(m, torch.nn.Linear):
                    torch.nn.init.xavier_uniform_(m.weight, generator=gen)
    vae = models.GaussianVAE(decoder, p0, 1.0, obs_event_dim=3,
                             learn_prior=prior.startswith("learned"),
                             prior_floor=2.0 if prior == "learned-floor" else None)
    return ds, vae, models.DiagonalGuide(vae, encoder)


def _sprites_report(vae, guide, ds, label: str, t0: float, last: int | None = None):
    """A callback printing MCC per factor and the validation ELBO every 2 epochs; after epoch
    ``last`` also the |Pearson correlation| of each factor with each inferred latent."""
    from pyro_ima import inference, metrics
    x, z = ds.test.x[:1000], ds.test.z[:1000]

    def report(epoch, rec):
        if epoch % 2 == 1:
            m = inference.evaluate(vae, guide, x, z, metrics=("mcc",))
            per = " / ".join(f"{float(m[f'mcc_factor{j}']):.2f}" for j in range(4))
            print(f"{label}, epoch {epoch + 1}: MCC {float(m['mcc_pearson']):.3f} (x / y / size "
                  f"/ hue {per}), validation ELBO {rec['val_elbo'][0]:.1f}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        if epoch + 1 == last:
            with torch.no_grad():
                corr = metrics.mcc(z, guide.point_estimate(x)).correlations
            print("|corr| of each factor (row) with latents z0..z3:")
            for name, row in zip(("x", "y", "size", "hue"), corr, strict=True):
                print(f"  {name:>5}: " + "  ".join(f"{c:.2f}" for c in row), flush=True)
            if vae.learned_prior is not None:
                learned = vae.learned_prior.values()
                print("learned prior (a, b) of z0..z3: " + "  ".join(
                    f"({a:.2f}, {b:.2f})" for a, b in zip(learned["concentration1"][0].tolist(),
                                                          learned["concentration0"][0].tolist(),
                                                          strict=True)), flush=True)
    return report


def sprites_diagnostic(args) -> None:
    """gamma2 = 1, one seed, 4,200 training images, 24 epochs at lr 1e-3 (batch 64), MCC per
    factor every 3 epochs. ``--sprites-prior symmetric``: one Beta (the mean of the generator's
    parameters) for every latent instead of the generator's own per factor; ``learned``: that
    symmetric Beta to start from, its ``(a, b)`` per latent learned with the networks
    (``learned-floor``: kept at or above 2, as the official code's ``|t| + 2``);
    ``--sprites-anneal``: 3 epochs at gamma2 100, 3 at 10, then 1 (a KL warm-up in effect)."""
    from pyro_ima import inference
    torch.set_num_threads(args.threads or torch.get_num_threads())
    ds, vae, guide = _sprites_vae(args.geometry, args.sprites_prior, args.data_seed)
    x, z = ds.test.x[:500], ds.test.z[:500]
    stages = [(100.0, 3), (10.0, 3), (1.0, 18)] if args.sprites_anneal else [(1.0, 24)]
    epoch, t0 = 0, time.perf_counter()
    for g2, n_epochs in stages:
        vae.gamma2.fill_(g2)
        for _ in range(0, n_epochs, 3):
            fit = inference.fit(vae, guide, ds.train, ds.val, epochs=3, batch_size=64, lr=1e-3,
                                seed=epoch)
            epoch += 3
            m = inference.evaluate(vae, guide, x, z, metrics=("mcc",))
            per = " / ".join(f"{float(m[f'mcc_factor{j}']):.2f}" for j in range(4))
            print(f"gamma2 {g2:g}, epoch {epoch}: MCC {float(m['mcc_pearson']):.3f} (x / y / "
                  f"size / hue {per}), validation ELBO {float(fit.best_val_elbo):.1f}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)


def sprites_oracle(args) -> None:
    """Does the ELBO keep the true factors, and is their ELBO better than what training finds?
    gamma2 = 1, the generator's prior (``--sprites-prior``: as in sprites-diagnostic),
    ``--sprites-n`` images in all (default 6,000: 4,200 training images; split 70/20/10),
    validated on the first ``--val-points`` validation images (default all). Arm 1: the
    decoder fitted to map the true factors to their images and the encoder's mean to their
    logits (squared error, Adam at 1e-3, batch 64, ``--sup-epochs`` epochs), then ``--epochs``
    of ELBO training (``--lr``, default 1e-3; ``--batch-size``, default 64); arm 2: the same
    networks from their random initialization (``--sprites-init xavier``: the official
    code's), the same ELBO training. MCC per factor and validation ELBO every 2 epochs, and
    after the last epoch each factor's |correlation| with each latent (and a learned prior's
    ``(a, b)`` per latent, ``--sprites-prior learned``). ``--arm`` runs one of them."""
    from pyro_ima import data, inference
    batch = args.batch_size or 64
    try:
        n_train, n_val, _ = data.split_sizes(args.sprites_n, sprites.SpritesConfig().split)
    except ValueError as err:
        # split_sizes names its argument "n"; here that is --sprites-n
        raise SystemExit(f"--sprites-n: {str(err).removeprefix('n: ')}") from None
    if batch > n_train:
        raise SystemExit(f"--batch-size: expected at most {n_train} (the training images), got "
                         f"{batch}")
    val_points = args.val_points or n_val
    if val_points > n_val:
        raise SystemExit(f"--val-points: expected at most {n_val} (the validation images), got "
                         f"{val_points}")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    epochs = args.epochs or 30
    t0 = time.perf_counter()
    arms = {"both": ("true factors first", "random initialization"),
            "true": ("true factors first",), "random": ("random initialization",)}[args.arm]
    for arm in arms:
        ds, vae, guide = _sprites_vae(args.geometry, args.sprites_prior, args.data_seed,
                                      init=args.sprites_init, n=args.sprites_n)
        if arm == "true factors first":
            X, Z = ds.train.x, ds.train.z
            params = [*vae.decoder.parameters(), *guide.encoder.parameters()]
            opt = torch.optim.Adam(params, lr=1e-3)
            gen = torch.Generator().manual_seed(0)
            for _ in range(args.sup_epochs):
                perm = torch.randperm(len(X), generator=gen)
                for i in range(0, len(X) - 63, 64):
                    idx = perm[i:i + 64]
                    loss = ((vae.decoder(Z[idx]) - X[idx]).square().sum((1, 2, 3)).mean()
                            + (guide.loc(X[idx]) - torch.logit(Z[idx])).square().sum(1).mean())
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            print(f"{arm}: {args.sup_epochs} supervised epochs, {time.perf_counter() - t0:.0f} s",
                  flush=True)
        inference.fit(vae, guide, ds.train, ds.val.x[:val_points], epochs=epochs,
                      batch_size=batch, lr=args.lr or 1e-3, seed=0,
                      callbacks=[_sprites_report(vae, guide, ds, arm, t0, epochs)])


def elbo_vs_lima(args) -> None:
    from pyro_ima.experiments import elbo_vs_lima as study
    from pyro_ima.experiments import run_study
    cfg = dataclasses.replace(study.FULL, seeds=2, n=29_000, epochs=10, warmup_epochs=5,
                              eval_points=200)
    meta = run_study("elbo_vs_lima", f"{args.out_root}/elbo_vs_lima", progress=False,
                     config=cfg)
    print(meta["table"])


def is_vs_quadrature(args) -> None:
    """Study 2's triangular mixing (C_IMA 7.07, output scale 100, float64), 20 test points:
    log p_gamma(x) by 2-D quadrature (``pyro_ima.quadrature``) against Laplace IS (K = 5000) and
    the change-of-variables limit, at gamma2 1e3 / 1e5 / 1e7."""
    from pyro_ima import data, inference, metrics, mixings, models, priors, quadrature
    torch.set_default_dtype(torch.float64)
    mix = mixings.TriangularMLP.with_contrast(7.07, 2, seed=0, scale=100.0)
    p0 = priors.gaussian(2)
    x = data.make_dataset(mix, p0, n=2000, seed=0).test.x[:20]
    sv = torch.linalg.svdvals(metrics.jacobian(mix, mix.inv(x)))
    print(f"decoder Jacobian singular values at the test points: median smallest "
          f"{float(sv[:, -1].median()):.4f}, median largest {float(sv[:, 0].median()):.1f}")
    limit = inference.exact_log_px(mix, p0, x)
    for g2 in (1e3, 1e5, 1e7):
        vae = models.GaussianVAE(mix, p0, g2)
        quad = quadrature.quadrature_log_px(quadrature.gaussian_log_joint(mix, p0, g2), x,
                                            mix.inv(x))
        guide = models.DiagonalGuide(vae, models.MLP(2, 4, (8,), seed=0), init_scale=g2 ** -0.5)
        guide.fix_loc(mix.inv)
        r = inference.importance_log_px(vae, guide, x, num_samples=5000, proposal="laplace",
                                        seed=3, khat_warn=1.0)
        sd = float((1 / (g2 ** 0.5 * sv[:, -1])).median())
        print(f"gamma2 {g2:g}: log p_gamma quadrature {float(quad.mean()):.3f}, Laplace IS "
              f"{float(r.log_px.mean()):.3f} (flagged {r.summary()['flagged_frac']:.0%}), "
              f"change-of-variables limit {float(limit.mean()):.3f}; posterior sd along the "
              f"weakest direction ~{sd:.3g}")


def tau_joint(args) -> None:
    """Study 7 part A's generic-W setting with learned tau trained jointly from the start
    (``tau_warmup=0``), at the size of ``conjectures``: the exact gap per seed at the learned
    tau against the best tau's."""
    from pyro_ima.experiments import encoder_side
    cfg = dataclasses.replace(encoder_side.FULL, n=4096, epochs=60, tau_warmup=args.tau_warmup)
    setting = next(s for s in encoder_side.settings(cfg)
                   if s.get("decoder") == "generic" and s.get("learn_noise"))
    rows = encoder_side.run_setting(setting, cfg)
    for metric in ("gap_exact", "gap_optimum"):
        vals = [r["value"] for r in rows if r["metric"] == metric]
        print(f"tau_warmup {args.tau_warmup}: {metric} per seed "
              + ", ".join(f"{v:.4f}" for v in vals))


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _mixings(text: str) -> str:
    from pyro_ima.experiments.guide_families import MIXINGS
    bad = [m for m in text.split(",") if m not in MIXINGS]
    if bad:
        raise argparse.ArgumentTypeError(f"expected names from {list(MIXINGS)}, got {bad}")
    return text


def _seed_range(text: str) -> tuple:
    """``"A-B"`` (inclusive) or ``"A"``: a range of seeds >= 0."""
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    lo, hi = (int(m[1]), int(m[2] or m[1])) if m else (0, -1)
    if hi < lo:
        raise argparse.ArgumentTypeError(f"expected A or A-B with 0 <= A <= B, got {text!r}")
    return tuple(range(lo, hi + 1))


def _mcc_by(out: str, part: str, key) -> dict:
    """The per-seed MCC rows of a study's ``part`` in ``out/results.json``, grouped by
    ``key(row)``; failed replicas are left out (their numbers must not be used) and counted."""
    from pyro_ima.fileio import read_json
    groups: dict = {}
    failed = 0
    for r in read_json(f"{out}/results.json", "results")["rows"]:
        if r.get("part") == part and r["metric"] == "mcc":
            if r.get("failed"):  # a study's rows hold None only where marked failed
                failed += 1
                continue
            groups.setdefault(key(r), []).append(r["value"])
    if failed:
        print(f"{out}: {failed} failed replica(s) left out")
    return groups


_FAMILY_PAIRS = (("diagonal", "isotropic"), ("diagonal", "full"), ("isotropic", "full"))


def _welch(a, b) -> str:
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    return f"{np.mean(a) - np.mean(b):.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def _study6(out_root: str, seeds: int, executor=None, warmup_epochs: int = 0,
            warmup_gamma2: float = 1e3, mixings: tuple | None = None,
            seed_offset: int = 0, mixing_seeds: tuple = (0,),
            protocol: dict | None = None) -> None:
    """Study 6 at n = 20k with ``seeds`` replicas per family from ``seed_offset`` (part B on
    ``mixings``, default the study's, each drawn under every one of ``mixing_seeds``, with a
    precision warm-up if ``warmup_epochs``); print its table and the 6B intervals. The default
    size (10 seeds) writes ``guide_families`` (the conjectures'), others
    ``guide_families_<seeds>seeds[_warmup][_<mixings>][_from<offset>][_draws<A>-<B>]``. With
    more than one draw, also the draws-as-units interval: the t-interval of the mean over draws
    of each draw's difference in mean MCC. ``protocol``: other part-B training fields
    (``kl_warmup_beta``, ``kl_warmup_epochs``, ``patience``, ``epochs``,
    ``learned_prior_scale``), each named in the output directory (``_<field><value>``)."""

    from pyro_ima.experiments import guide_families, run_study
    full = guide_families.FULL
    mixings = tuple(mixings or full.learned_mixings)
    out = f"{out_root}/guide_families" + ("" if seeds == 10 else f"_{seeds}seeds") \
        + ("_warmup" if warmup_epochs else "") \
        + ("" if mixings == full.learned_mixings else "_" + "_".join(mixings)) \
        + (f"_from{seed_offset}" if seed_offset else "") \
        + ("" if mixing_seeds == (0,) else f"_draws{mixing_seeds[0]}-{mixing_seeds[-1]}") \
        + "".join(f"_{k}{v:g}" for k, v in sorted((protocol or {}).items()))
    cfg = dataclasses.replace(full, n=20_000, seeds=seeds, seed_offset=seed_offset,
                              learned_mixings=mixings, mixing_seeds=mixing_seeds,
                              warmup_gamma2=warmup_gamma2 if warmup_epochs else None,
                              warmup_epochs=warmup_epochs or full.warmup_epochs,
                              **(protocol or {}))
    gf = run_study("guide_families", out, progress=False, executor=executor, config=cfg)
    print(gf["table"])
    mcc = _mcc_by(out, "learned", lambda r: (r["mixing"], r["family"]))
    draws = "" if len(mixing_seeds) == 1 else f" x {len(mixing_seeds)} draws, pooled"
    for mix in mixings:
        for one, other in _FAMILY_PAIRS:
            print(f"study 6B {mix} ({seeds} seeds{draws}): "
                  f"MCC({one}) - MCC({other}) = {_welch(mcc[(mix, one)], mcc[(mix, other)])}")
    if len(mixing_seeds) > 1:
        _by_draw(_mcc_by(out, "learned", lambda r: (r["mixing"], r["mixing_seed"], r["family"])),
                 mixings, mixing_seeds)


def _by_draw(mcc: dict, mixings: tuple, draws: tuple) -> None:
    """Per draw of each mixing, the families' mean MCCs; then, with the draws as the units,
    the mean over draws of each difference between families with its 95% t-interval."""
    for mix in mixings:
        means = {f: np.array([np.mean(mcc[(mix, k, f)]) for k in draws])
                 for f in ("diagonal", "isotropic", "full")}
        for i, k in enumerate(draws):
            print(f"  {mix} draw {k}: diagonal {means['diagonal'][i]:.3f}, isotropic "
                  f"{means['isotropic'][i]:.3f}, full {means['full'][i]:.3f}")
        print(f"study 6B {mix} over {len(draws)} draws: diagonal {means['diagonal'].mean():.3f} "
              f"(draws with >= 0.85: {int((means['diagonal'] >= 0.85).sum())}), isotropic "
              f"{means['isotropic'].mean():.3f}, full {means['full'].mean():.3f}")
        for one, other in _FAMILY_PAIRS:
            d = means[one] - means[other]
            ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
            print(f"  mean over draws of MCC({one}) - MCC({other}) = {d.mean():.3f} "
                  f"[{ci.low:.3f}, {ci.high:.3f}] (draws above 0: {int((d > 0).sum())})")


def guide_families_seeds(args) -> None:
    from pyro_ima.experiments.executors import Executor
    if args.kl_warmup_epochs is not None and args.kl_warmup_beta is None:
        raise SystemExit("reproduce_results.py: error: --kl-warmup-epochs: given without "
                         "--kl-warmup-beta")
    seeds = 10 if args.seeds is None else args.seeds
    warm = {"warmup_epochs": args.warmup_epochs, "warmup_gamma2": args.warmup_gamma2,
            "mixings": tuple(args.mixings.split(",")) if args.mixings else None,
            "seed_offset": args.seed_offset, "mixing_seeds": args.mixing_seeds,
            "protocol": {k: v for k, v in (("kl_warmup_beta", args.kl_warmup_beta),
                                           ("kl_warmup_epochs", args.kl_warmup_epochs),
                                           ("patience", args.patience),
                                           ("epochs", args.epochs),
                                           ("learned_prior_scale", args.prior_scale))
                         if v is not None}}
    if args.workers == 1:
        return _study6(args.out_root, seeds, **warm)
    with Executor("processes", workers=args.workers, threads_per_worker=1) as ex:
        _study6(args.out_root, seeds, ex, **warm)


def conjectures(args) -> None:

    from pyro_ima.experiments import encoder_side, run_study
    es = run_study("encoder_side", f"{args.out_root}/encoder_side", progress=False,
                   config=dataclasses.replace(encoder_side.FULL, learned_n=20_000, n=4096,
                                              epochs=60, tau_warmup=30))
    print(es["table"])
    _study6(args.out_root, 10)
    mcc = _mcc_by(f"{args.out_root}/encoder_side", "learned_decoder",
                  lambda r: (r["learner"], float(r["contrast"])))
    for learner in ("isotropic_learned_tau", "diagonal_isotropic_noise"):
        print(f"study 7B {learner}: MCC(c=0) - MCC(c=4) = "
              f"{_welch(mcc[(learner, 0.0)], mcc[(learner, 4.0)])}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["reference-moebius-scale", "moebius-protocol",
                                    "sprites-geometry", "sprites-long", "sprites-diagnostic",
                                    "sprites-oracle",
                                    "elbo-vs-lima",
                                    "is-vs-quadrature",
                                    "tau-joint", "conjectures", "guide-families"])
    p.add_argument("--out-root", default="runs/results",
                   help="elbo-vs-lima, conjectures, guide-families: where the studies write")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="moebius-protocol: 3e-3 by default; sprites-long, sprites-oracle "
                        "(ELBO training): 1e-3")
    p.add_argument("--batch-size", type=_at_least_one, default=None,
                   help="sprites-oracle: the ELBO training's batch size (default 64)")
    p.add_argument("--patience", type=_at_least_one, default=None,
                   help="moebius-protocol, guide-families (part B): plateau patience in "
                        "epochs (default 3)")
    p.add_argument("--halvings", type=int, default=4, help="moebius-protocol: plateau halvings")
    p.add_argument("--epochs", type=_at_least_one, default=None,
                   help="moebius-protocol: epoch cap (60); sprites-oracle: ELBO epochs (30); "
                        "guide-families: part B's epoch cap (60)")
    p.add_argument("--arm", choices=["both", "true", "random"], default="both",
                   help="sprites-oracle: which start to train (default both)")
    p.add_argument("--sup-epochs", type=int, default=15,
                   help="sprites-oracle: supervised epochs before the ELBO")
    p.add_argument("--geometry", default="triangle", choices=sprites.GEOMETRIES,
                   help="sprites-long, sprites-diagnostic, sprites-oracle: the sprite's geometry")
    p.add_argument("--data-seed", type=int, default=0,
                   help="sprites-diagnostic, sprites-oracle: the data draw (Beta parameters "
                        "and images; default 0, the study's)")
    p.add_argument("--sprites-n", type=_at_least_one, default=_SPRITES_N,
                   help="sprites-oracle: images in all, split 70/20/10 (default 6,000)")
    p.add_argument("--val-points", type=_at_least_one, default=None,
                   help="sprites-oracle: validate on the first N validation images (default all)")
    p.add_argument("--init-scale", type=float, default=None,
                   help="moebius-protocol: initial encoder sd (default: the study's)")
    p.add_argument("--sprites-prior", choices=["true", "symmetric", "learned", "learned-floor"],
                   default="true",
                   help="sprites-diagnostic, sprites-oracle: the generator's Beta per factor, "
                        "one for all, or one for all to start from and learned (a, b) per "
                        "latent (learned-floor: kept above 2, as the official code's |t| + 2)")
    p.add_argument("--sprites-init", choices=["default", "xavier"], default="default",
                   help="sprites-oracle: the networks' initialization (xavier: linear weights "
                        "Xavier-uniform, as the official code)")
    p.add_argument("--sprites-anneal", action="store_true",
                   help="sprites-diagnostic: start at gamma2 100, then 10, then 1")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    p.add_argument("--tau-warmup", type=int, default=0,
                   help="tau-joint: epochs with tau held at 1 first (default 0: joint)")
    p.add_argument("--seeds", type=_at_least_one, default=None,
                   help="moebius-protocol: seeds per gamma2 (4); guide-families: seeds per "
                        "family (10)")
    p.add_argument("--workers", type=_at_least_one, default=1,
                   help="guide-families: worker processes, one thread each (default 1: this "
                        "process)")
    p.add_argument("--mixings", type=_mixings, default=None,
                   help="guide-families: part B's mixings, comma-separated, of moebius, "
                        "orthogonal_mlp, orthogonal_linear (default: moebius,orthogonal_mlp)")
    p.add_argument("--seed-offset", type=int, default=0,
                   help="guide-families: the first seed of part B (default 0)")
    p.add_argument("--mixing-seeds", type=_seed_range, default=(0,),
                   help="guide-families: draws of each mixing (W and data), A or A-B "
                        "(default 0, one draw)")
    p.add_argument("--kl-warmup-beta", type=float, default=None,
                   help="guide-families: part B first trains --kl-warmup-epochs epochs with "
                        "the latent site weighted by this beta in (0, 1) (default: none)")
    p.add_argument("--kl-warmup-epochs", type=_at_least_one, default=None,
                   help="guide-families: the KL warm-up's epochs (default 10)")
    p.add_argument("--prior-scale", type=float, default=None,
                   help="guide-families: part B's latent scale, the sd of its Gaussian "
                        "sources and prior (default 0.2)")
    p.add_argument("--warmup-epochs", type=int, default=0,
                   help="moebius-protocol, guide-families: epochs at --warmup-gamma2 first "
                        "(default 0: none; guide-families: at each precision below the target)")
    p.add_argument("--warmup-gamma2", type=float, default=1e3,
                   help="moebius-protocol, guide-families: the warm-up's (first) precision")
    p.add_argument("--warmup-ramp", action="store_true",
                   help="moebius-protocol: raise the warm-up gamma2 tenfold per stage")
    p.add_argument("--pole", choices=["ours", "reference"], default="ours",
                   help="moebius-protocol: the Moebius pole (default: ours)")
    a = p.parse_args(argv)
    {"reference-moebius-scale": reference_moebius_scale, "moebius-protocol": moebius_protocol,
     "sprites-long": sprites_long, "sprites-diagnostic": sprites_diagnostic,
     "sprites-oracle": sprites_oracle, "sprites-geometry": sprites_geometry,
     "elbo-vs-lima": elbo_vs_lima,
     "is-vs-quadrature": is_vs_quadrature, "tau-joint": tau_joint,
     "conjectures": conjectures, "guide-families": guide_families_seeds}[a.what](a)


if __name__ == "__main__":
    main()
