"""One training run from a plain config: build, train, evaluate, save. Shared by CLI and demo.

A run directory holds ``state.pt`` (model and guide state) and ``results.json``, both stamped
with the same run id and config; ``results.json`` is written last, each file atomically. So a
run killed (or a disk filled) between the two leaves a directory that :func:`load_run`
refuses, never a new model beside old results. Only one process writes a directory at a time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
import uuid
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
from .fileio import (
    RUN_FILES,
    STUDY_FILES,
    DirLock,
    atomic_torch_save,
    atomic_write_json,
    check_out_dir,
    file_sha256,
    package_versions,
    read_json,
)
from .progress import EpochProgress

__all__ = ["RunConfig", "build", "train_run", "evaluate", "load_run", "load_results",
           "prepare_out_dir", "RUN_FILES"]

MIXING_NAMES = sorted([*mixings.MIXINGS, "sprites", "data"])
MAX_N = 10_000_000
MAX_SIZE = 1_000_000  # epochs, batch size, hidden width, dims, evaluation sizes
MAX_SEED = 2**31 - 1  # seeds are offset (encoder: seed + 10,000) and stay far below 2^63


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run; the CLI's flags map onto these fields.

    ``mixing="data"`` with ``data=PATH`` trains on a user's own ``(N, D)`` array (``.npy`` or
    ``.pt``; ``dim`` is then the latent size and there are no true latents, so no MCC).
    ``hidden`` lists the MLPs' hidden widths.
    """

    mixing: str = "moebius"
    prior: str = "uniform"
    dim: int = 3
    guide: str = "diagonal"
    gamma2: float = 1e4
    beta: float = 1.0
    learn_noise: bool = False
    fixed_decoder: bool = False
    hidden: tuple[int, ...] = (50, 50)
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
    data: str | None = None

    def eval_config(self) -> inference.EvalConfig:
        """The evaluation sizes (``train`` and ``evaluate`` share these defaults)."""
        small = self.mixing == "sprites"
        return inference.EvalConfig(points=self.eval_points or (100 if small else 500),
                                    is_samples=self.eval_samples or (100 if small else 500))

    def fit_config(self) -> inference.FitConfig:
        return inference.FitConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                   patience=self.patience)

    @classmethod
    def from_dict(cls, d, where: str = "config") -> RunConfig:
        """A config read back from a file, checked as strictly as the command line: every field
        present with a value of its type (no silent defaults), then :meth:`validate`."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected an object of run settings, got "
                             f"{type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing, unknown = [k for k in names if k not in d], [k for k in d if k not in names]
        if missing or unknown:
            raise ValueError(f"{where}: {'missing ' + ', '.join(missing) if missing else ''}"
                             f"{'; ' if missing and unknown else ''}"
                             f"{'unknown ' + ', '.join(unknown) if unknown else ''} "
                             f"(written by another version of pyro-ima?)")
        hints = typing.get_type_hints(cls)
        values = {k: _typed(k, d[k], hints[k], where) for k in names}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if self.mixing not in MIXING_NAMES:
            raise ValueError(f"mixing: expected one of {MIXING_NAMES}, got {self.mixing!r}")
        if (self.mixing == "data") != (self.data is not None):
            raise ValueError("data: a user's data file goes with --mixing data (set by --data), "
                             f"got mixing {self.mixing!r} and data {self.data!r}")
        if self.mixing == "sprites" and (self.prior != "beta" or self.dim != 4
                                         or self.fixed_decoder or self.learn_noise):
            raise ValueError("mixing: sprites needs --prior beta --dim 4 and a learned decoder "
                             "with isotropic noise")
        if self.mixing == "data" and self.fixed_decoder:
            raise ValueError("fixed_decoder: a user's data has no known decoder to fix")
        if self.prior not in priors.PRIORS:
            raise ValueError(f"prior: expected one of {sorted(priors.PRIORS)}, got {self.prior!r}")
        if self.mixing == "moebius" and self.prior not in ("uniform", "beta"):
            raise ValueError(f"prior: the moebius mixing needs a bounded prior (uniform or "
                             f"beta) that keeps latents away from its pole, got {self.prior!r}")
        if self.guide not in models.GUIDES:
            raise ValueError(f"guide: expected one of {sorted(models.GUIDES)}, got {self.guide!r}")
        for name in ("dim", "epochs", "batch_size"):
            check_int(name, getattr(self, name), maximum=MAX_SIZE)
        if not self.hidden:
            raise ValueError("hidden: expected at least one hidden layer width")
        for h in self.hidden:
            check_int("hidden", h, maximum=MAX_SIZE)
        check_int("n", self.n, minimum=1, maximum=MAX_N)
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        if self.patience is not None:
            check_int("patience", self.patience, maximum=MAX_SIZE)
        for name in ("gamma2", "beta", "lr"):
            check_positive(name, getattr(self, name))
        if self.init_scale is not None:
            check_positive("init_scale", self.init_scale)
            if self.init_scale < 1e-9:
                raise ValueError(f"init_scale: expected at least 1e-9, got {self.init_scale}")
        for name in ("eval_points", "eval_samples"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), maximum=MAX_SIZE)
        parse_device(self.device)
        parse_dtype(self.dtype)
        if self.mixing != "data":  # a user's file is checked when it is read
            n_train, _, _ = data.split_sizes(self.n)
            if self.batch_size > n_train:
                raise ValueError(f"batch_size: expected at most the {n_train} training points "
                                 f"(70% of n={self.n}), got {self.batch_size}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out


def _typed(name: str, value, hint, where: str):
    """``value`` checked against a field's type hint (``int``, ``float``, ``str``, ``bool``,
    ``tuple[int, ...]``, optional ones); ``hidden`` lists become tuples."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for t in options:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number in {where}, got {value}")
            return float(value)
        if t is str and isinstance(value, str):
            return value
        if typing.get_origin(t) is tuple and isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
    expected = " or ".join("null" if t is type(None) else getattr(t, "__name__", str(t))
                           for t in options)
    raise ValueError(f"{name}: expected {expected} in {where}, got {value!r}")


# the geometry `train --mixing sprites` renders (recorded in results.json; runs trained before
# it was the triangle have no record and were on the large square)
SPRITES_GEOMETRY = "triangle"


def _build_sprites(cfg: RunConfig):
    """Sprites: rendered images, a Beta prior with the generator's own (a, b), conv nets."""
    scfg = sprites.SpritesConfig(n=cfg.n, seed=cfg.seed, geometry=SPRITES_GEOMETRY)
    ds = sprites.sprites_dataset(scfg)
    a, b = sprites.default_beta_params(cfg.seed)
    p0 = priors.beta(4, a=a.tolist(), b=b.tolist())
    vae = models.GaussianVAE(models.ConvDecoder(4, seed=cfg.seed), p0, cfg.gamma2,
                             beta=cfg.beta, obs_event_dim=3)
    family = models.GUIDES[cfg.guide]
    encoder = models.ConvEncoder(family.num_outputs(4), seed=cfg.seed + 10_000)
    return ds, vae, family(vae, encoder, init_scale=cfg.init_scale)


def _build_vector(cfg: RunConfig, ds: data.Dataset, mix=None):
    """A VAE with MLP encoder and decoder (or the fixed true ``mix``) for vector data."""
    p0 = priors.PRIORS[cfg.prior](cfg.dim)
    D = ds.train.x.shape[-1]
    decoder = mix if cfg.fixed_decoder else models.MLP(cfg.dim, D, cfg.hidden, seed=cfg.seed)
    vae = models.GaussianVAE(decoder, p0, cfg.gamma2, beta=cfg.beta,
                             learn_noise=cfg.learn_noise, data_dim=D)
    family = models.GUIDES[cfg.guide]
    encoder = models.MLP(D, family.num_outputs(cfg.dim), cfg.hidden, seed=cfg.seed + 10_000)
    return ds, vae, family(vae, encoder, init_scale=cfg.init_scale)


def build(cfg: RunConfig):
    """Dataset, model and guide for ``cfg`` (seeded), on its device and in its dtype."""
    cfg.validate()
    with torch_defaults(parse_device(cfg.device), parse_dtype(cfg.dtype)):
        if cfg.mixing == "sprites":
            return _build_sprites(cfg)
        if cfg.mixing == "data":
            ds = data.dataset_from_array(data.load_array(cfg.data), seed=cfg.seed)
            if cfg.batch_size > len(ds.train):
                raise ValueError(f"batch_size: expected at most the {len(ds.train)} training "
                                 f"points of {cfg.data!r}, got {cfg.batch_size}")
            return _build_vector(cfg, ds)
        mix = mixings.MIXINGS[cfg.mixing](cfg.dim, seed=cfg.seed)
        ds = data.make_dataset(mix, priors.PRIORS[cfg.prior](cfg.dim), n=cfg.n, seed=cfg.seed)
        return _build_vector(cfg, ds, mix)


def evaluate(ds, vae, guide, *, config: inference.EvalConfig = inference.EvalConfig(),
             seed: int = 0) -> dict:
    """The headline numbers of a trained run on its test set, through
    :func:`pyro_ima.inference.evaluate` (MCC where the true latents are known and contrasts on
    every test point; ELBO, importance-sampled ``log p`` with its k-hat summary, the share of
    flagged estimates and the gap on the first ``config.points``; the exact ``log p`` when the
    decoder is the known mixing)."""
    groups = ("contrasts", "likelihood") if ds.test.z is None else inference.METRIC_GROUPS
    values = inference.evaluate(vae, guide, ds.test.x, ds.test.z, mixing=ds.mixing,
                                config=config, seed=seed, metrics=groups)
    out = {k: float(v[0]) for k, v in values.items()}
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"non-finite evaluation results: {', '.join(bad)} (the model "
                                 f"or guide produced NaN or inf)")
    n_points = ds.test.x.shape[0] if config.points is None else min(config.points,
                                                                    ds.test.x.shape[0])
    return {**out, "is_points": n_points, "is_samples": config.is_samples}


def prepare_out_dir(out: str | os.PathLike, files, force: bool, what: str = "run") -> Path:
    """Create ``out`` if needed; if it already holds any of ``files`` (another run's or study's
    outputs), refuse naming ``out`` unless ``force``, which removes them first."""
    out_dir = check_out_dir(out)
    existing = [f for f in dict.fromkeys(files) if (out_dir / f).exists()]
    if existing and not force:
        raise ValueError(f"out: {str(out_dir)!r} already holds a pyro-ima {what} "
                         f"({', '.join(existing)}); use --force to replace it or choose "
                         f"another --out")
    for f in existing:
        path = out_dir / f
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()
    return out_dir


def train_run(cfg: RunConfig, out: str | os.PathLike | None = None, *, progress: bool = False,
              force: bool = False):
    """Build, train and evaluate one run; write ``state.pt`` then ``results.json`` to ``out``
    (both stamped with one run id). An ``out`` holding another run is refused unless
    ``force``; a second process writing the same ``out`` is refused."""
    cfg.validate()
    if out is None:
        return _train(cfg, None, progress)
    out_dir = check_out_dir(out)
    with DirLock(out_dir):
        prepare_out_dir(out_dir, (*RUN_FILES, *STUDY_FILES), force, "run or study")
        return _train(cfg, out_dir, progress)


def _train(cfg: RunConfig, out_dir: Path | None, progress: bool):
    ds, vae, guide = build(cfg)
    if cfg.mixing == "data":  # the file decides how many points there are
        cfg = dataclasses.replace(cfg, n=sum(getattr(ds, s).x.shape[0]
                                             for s in ("train", "val", "test")))
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
    run_id = uuid.uuid4().hex
    results = {"kind": "pyro_ima.train", "run_id": run_id, "config": cfg.to_dict(),
               "versions": package_versions(), "elbo": elbos,
               "best_epoch": int(fit.best_epoch[0]), "epochs_run": fit.epochs_run,
               "seconds": fit.seconds, "history": fit.history, "faults": fit.faults,
               "metrics": evaluate(ds, vae, guide, config=cfg.eval_config(), seed=cfg.seed)}
    if cfg.data is not None:
        results["data_sha256"] = file_sha256(cfg.data)
    if cfg.mixing == "sprites":
        results["sprites_geometry"] = SPRITES_GEOMETRY
    if out_dir is not None:
        atomic_torch_save(out_dir / "state.pt", {"kind": "pyro_ima.state", "run_id": run_id,
                                                 "config": cfg.to_dict(),
                                                 "model": vae.state_dict(),
                                                 "guide": guide.state_dict()})
        atomic_write_json(out_dir / "results.json", results)  # last: the run is complete
    return results, (ds, vae, guide, fit)


def load_results(path: str | os.PathLike) -> dict:
    """Read a ``results.json`` written by :func:`train_run`, checking that it is one."""
    obj = read_json(path, "results")
    if obj.get("kind") != "pyro_ima.train" or not isinstance(obj.get("run_id"), str):
        raise ValueError(f"results: {str(path)!r} is not a pyro-ima results file (of this "
                         f"version)")
    return obj


def load_run(run_dir: str | os.PathLike, *, device: str | None = None,
             dtype: str | None = None):
    """Rebuild a run written by :func:`train_run`: ``(results, cfg, ds, vae, guide)``,
    optionally on another ``device`` or in another ``dtype`` than it was trained.

    Refuses a directory whose ``state.pt`` and ``results.json`` come from different runs (a
    run killed between its two writes), a config that fails the command line's checks, and a
    user data file that changed since training.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir / "results.json")
    cfg = RunConfig.from_dict(results.get("config"), where="results.json config")
    state_path = run_dir / "state.pt"
    try:
        state = torch.load(state_path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch.load raises many types for corrupt or foreign files
        raise ValueError(f"state: cannot load {str(state_path)!r} ({short_reason(e)})") \
            from None
    if not isinstance(state, dict) or state.get("kind") != "pyro_ima.state":
        raise ValueError(f"state: {str(state_path)!r} is not a pyro-ima state file")
    if state.get("run_id") != results["run_id"] or state.get("config") != results["config"]:
        raise ValueError(f"state: {str(state_path)!r} belongs to another run than results.json "
                         f"(a run stopped between its two writes?); train again")
    if cfg.data is not None and results.get("data_sha256") != file_sha256(cfg.data):
        raise ValueError(f"data: {cfg.data!r} changed since this run was trained")
    if cfg.mixing == "sprites" and results.get("sprites_geometry") != SPRITES_GEOMETRY:
        raise ValueError(f"mixing: this Sprites run was trained on the "
                         f"{results.get('sprites_geometry', 'large-square')} renderer, and "
                         f"runs now use spriteworld's {SPRITES_GEOMETRY}; train again")
    moved = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    cfg = dataclasses.replace(cfg, **moved)
    ds, vae, guide = build(cfg)
    try:
        vae.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"state: {str(state_path)!r} does not fit its config "
                         f"({short_reason(e)})") from None
    return results, cfg, ds, vae, guide
