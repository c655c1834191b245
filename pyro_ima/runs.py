"""One training run from a plain config: build, train, evaluate, save. Shared by CLI and demo."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data, inference, mixings, models, priors, sprites
from ._utils import (
    check_int,
    check_positive,
    parse_device,
    parse_dtype,
    short_reason,
    torch_defaults,
)
from .fileio import atomic_torch_save, atomic_write_json, check_out_dir, package_versions
from .progress import EpochProgress

__all__ = ["RunConfig", "build", "train_run", "evaluate", "load_run", "load_results"]


MIXING_NAMES = sorted([*mixings.MIXINGS, "sprites"])


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run; the CLI's flags map onto these fields."""

    mixing: str = "moebius"
    prior: str = "uniform"
    dim: int = 3
    guide: str = "diagonal"
    gamma2: float = 1e4
    beta: float = 1.0
    learn_noise: bool = False
    fixed_decoder: bool = False
    hidden: int = 50
    n: int = 6000
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    patience: int | None = 10
    init_scale: float | None = None
    seed: int = 0
    eval_points: int | None = None  # IS evaluation size; None: 500 (vectors) or 100 (images)
    eval_samples: int | None = None  # IS samples per point; None: 500 (vectors) or 100 (images)
    device: str = "cpu"
    dtype: str = "float32"

    def eval_config(self) -> inference.EvalConfig:
        """The evaluation sizes (``train`` and ``evaluate`` share these defaults)."""
        small = self.mixing == "sprites"
        return inference.EvalConfig(points=self.eval_points or (100 if small else 500),
                                    is_samples=self.eval_samples or (100 if small else 500))

    def fit_config(self) -> inference.FitConfig:
        return inference.FitConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                   patience=self.patience)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if self.mixing not in MIXING_NAMES:
            raise ValueError(f"mixing: expected one of {MIXING_NAMES}, got {self.mixing!r}")
        if self.mixing == "sprites" and (self.prior != "beta" or self.dim != 4
                                         or self.fixed_decoder or self.learn_noise):
            raise ValueError("mixing: sprites needs --prior beta --dim 4 and a learned decoder "
                             "with isotropic noise")
        if self.prior not in priors.PRIORS:
            raise ValueError(f"prior: expected one of {sorted(priors.PRIORS)}, got {self.prior!r}")
        if self.mixing == "moebius" and self.prior not in ("uniform", "beta"):
            raise ValueError(f"prior: the moebius mixing needs a bounded prior (uniform or "
                             f"beta) that keeps latents away from its pole, got {self.prior!r}")
        if self.guide not in models.GUIDES:
            raise ValueError(f"guide: expected one of {sorted(models.GUIDES)}, got {self.guide!r}")
        check_int("dim", self.dim)
        check_int("hidden", self.hidden)
        check_int("n", self.n, minimum=10)
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_int("seed", self.seed, minimum=0)
        if self.patience is not None:
            check_int("patience", self.patience)
        for name in ("gamma2", "beta", "lr"):
            check_positive(name, getattr(self, name))
        if self.init_scale is not None:
            check_positive("init_scale", self.init_scale)
        for name in ("eval_points", "eval_samples"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        parse_device(self.device)
        parse_dtype(self.dtype)
        n_train = int(round(0.7 * self.n))
        if self.batch_size > n_train:
            raise ValueError(f"batch_size: expected at most the {n_train} training points "
                             f"(70% of n={self.n}), got {self.batch_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build_sprites(cfg: RunConfig):
    """Sprites: rendered images, a Beta prior with the generator's own (a, b), conv nets."""
    scfg = sprites.SpritesConfig(n=cfg.n, seed=cfg.seed)
    ds = sprites.sprites_dataset(scfg)
    a, b = sprites.default_beta_params(cfg.seed)
    p0 = priors.beta(4, a=a.tolist(), b=b.tolist())
    vae = models.GaussianVAE(models.ConvDecoder(4, seed=cfg.seed), p0, cfg.gamma2,
                             beta=cfg.beta, obs_event_dim=3)
    family = models.GUIDES[cfg.guide]
    encoder = models.ConvEncoder(family.num_outputs(4), seed=cfg.seed + 10_000)
    return ds, vae, family(vae, encoder, init_scale=cfg.init_scale)


def build(cfg: RunConfig):
    """Dataset, model and guide for ``cfg`` (seeded), on its device and in its dtype."""
    cfg.validate()
    with torch_defaults(parse_device(cfg.device), parse_dtype(cfg.dtype)):
        return _build_sprites(cfg) if cfg.mixing == "sprites" else _build_synthetic(cfg)


def _build_synthetic(cfg: RunConfig):
    p0 = priors.PRIORS[cfg.prior](cfg.dim)
    mix = mixings.MIXINGS[cfg.mixing](cfg.dim, seed=cfg.seed)
    ds = data.make_dataset(mix, p0, n=cfg.n, seed=cfg.seed)
    hidden = (cfg.hidden, cfg.hidden)
    decoder = mix if cfg.fixed_decoder else models.MLP(cfg.dim, cfg.dim, hidden, seed=cfg.seed)
    vae = models.GaussianVAE(decoder, p0, cfg.gamma2, beta=cfg.beta, learn_noise=cfg.learn_noise,
                             data_dim=cfg.dim)
    family = models.GUIDES[cfg.guide]
    encoder = models.MLP(cfg.dim, family.num_outputs(cfg.dim), hidden, seed=cfg.seed + 10_000)
    guide = family(vae, encoder, init_scale=cfg.init_scale)
    return ds, vae, guide


def evaluate(ds, vae, guide, *, config: inference.EvalConfig = inference.EvalConfig(),
             seed: int = 0) -> dict:
    """The headline numbers of a trained run on its test set, through
    :func:`pyro_ima.inference.evaluate` (MCC and contrasts on every test point; ELBO,
    importance-sampled ``log p`` with its k-hat summary and the gap on the first
    ``config.points``; the exact ``log p`` when the decoder is the known mixing)."""
    values = inference.evaluate(vae, guide, ds.test.x, ds.test.z, mixing=ds.mixing,
                                config=config, seed=seed)
    out = {k: float(v[0]) for k, v in values.items()}
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"non-finite evaluation results: {bad}")
    n_points = ds.test.x.shape[0] if config.points is None else min(config.points,
                                                                    ds.test.x.shape[0])
    return {**out, "is_points": n_points, "is_samples": config.is_samples}


def train_run(cfg: RunConfig, out: str | os.PathLike | None = None, *, progress: bool = False):
    """Build, train and evaluate one run; write ``results.json`` and ``state.pt`` to ``out``."""
    cfg.validate()
    out_dir = None if out is None else check_out_dir(out)
    ds, vae, guide = build(cfg)
    callbacks = [EpochProgress(cfg.epochs, "train")] if progress else []
    fit = inference.fit(vae, guide, ds.train, ds.val, config=cfg.fit_config(), seed=cfg.seed,
                        callbacks=callbacks)
    if bool(fit.failed.any()):
        raise FloatingPointError(f"training failed after {len(fit.faults)} numerical faults "
                                 f"(first at epoch {fit.faults[0]['epoch']}); try a smaller "
                                 f"--lr or --init-scale")
    elbos = {}
    for name in ("train", "val", "test"):
        split = getattr(ds, name)
        e = inference.elbo_per_point(vae, guide, split.x, num_particles=10, seed=cfg.seed)
        if not bool(torch.isfinite(e).all()):
            raise FloatingPointError(f"the {name} ELBO is not finite: training diverged")
        elbos[name] = float(e.mean())
    results = {"kind": "pyro_ima.train", "config": cfg.to_dict(), "versions": package_versions(),
               "elbo": elbos, "best_epoch": int(fit.best_epoch[0]),
               "epochs_run": fit.epochs_run, "seconds": fit.seconds, "history": fit.history,
               "faults": fit.faults,
               "metrics": evaluate(ds, vae, guide, config=cfg.eval_config(), seed=cfg.seed)}
    if out_dir is not None:
        atomic_torch_save(out_dir / "state.pt", {"config": cfg.to_dict(),
                                                 "model": vae.state_dict(),
                                                 "guide": guide.state_dict()})
        atomic_write_json(out_dir / "results.json", results)
    return results, (ds, vae, guide, fit)


def load_results(path: str | os.PathLike) -> dict:
    """Read a ``results.json`` written by :func:`train_run`, checking that it is one."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"results: cannot read {str(path)!r} as JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("kind") != "pyro_ima.train":
        raise ValueError(f"results: {str(path)!r} is not a pyro-ima results file")
    return obj


def load_run(run_dir: str | os.PathLike, *, device: str | None = None,
             dtype: str | None = None):
    """Rebuild a run written by :func:`train_run`: ``(results, cfg, ds, vae, guide)``,
    optionally on another ``device`` or in another ``dtype`` than it was trained."""
    run_dir = Path(run_dir)
    results = load_results(run_dir / "results.json")
    try:
        cfg = RunConfig(**results["config"])
    except TypeError as e:
        raise ValueError(f"results: {str(run_dir)!r} has a config this version cannot read "
                         f"({e})") from None
    moved = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    cfg = dataclasses.replace(cfg, **moved)
    ds, vae, guide = build(cfg)
    try:
        state = torch.load(run_dir / "state.pt", weights_only=True, map_location=vae.device)
        vae.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except Exception as e:  # torch.load raises many types for corrupt or foreign files
        raise ValueError(f"state: cannot load {str(run_dir / 'state.pt')!r} "
                         f"({short_reason(e)})") from None
    return results, cfg, ds, vae, guide
