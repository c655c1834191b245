"""Shared machinery for studies: resumable sweeps, tidy tables, output files."""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import data, inference, models
from .._utils import parse_device, parse_dtype, torch_defaults
from ..fileio import atomic_write_bytes, atomic_write_json
from ..progress import EpochProgress, Progress
from .figures import pyplot, save_figure

__all__ = ["TrainingConfig", "Runtime", "grid_settings", "fit_values", "training_summary",
           "run_sweep", "write_table", "replica_datasets", "replica_vae", "setting_key",
           "check_rows", "pyplot", "save_figure", "train", "format_table", "SettingTask",
           "execute_setting", "load_setting", "precision_warmup", "kl_warmup"]


@dataclass(frozen=True)
class TrainingConfig:
    """The training fields every study shares; defaults are the paper's synthetic setting
    (60k points split 0.7/0.2/0.1, batch 64, lr 1e-3, early stopping)."""

    n: int = 60_000
    epochs: int = 100
    patience: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    lr_end: float | None = None
    min_delta: float = 0.0
    lr_halvings: int = 0

    def fit_config(self, **overrides) -> inference.FitConfig:
        """The :class:`~pyro_ima.inference.FitConfig` of these fields."""
        fields = dict(epochs=self.epochs, patience=self.patience, batch_size=self.batch_size,
                      lr=self.lr, lr_end=self.lr_end, min_delta=self.min_delta,
                      lr_halvings=self.lr_halvings)
        return inference.FitConfig(**{**fields, **overrides})


@dataclass(frozen=True)
class Runtime:
    """Where and how a study's settings run (not part of what they compute, except dtype).

    ``progress``: show per-fit progress on a terminal; ``device``/``dtype``: PyTorch's
    defaults while a setting builds its data and models (everything then follows the models);
    ``out_dir``: for studies that write per-setting files (figures); ``threads``: PyTorch
    threads per setting (``None``: leave as is).
    """

    progress: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    out_dir: Path | None = None
    threads: int | None = None

    def defaults(self):
        """The context a setting runs in: its device and dtype as PyTorch's defaults."""
        return torch_defaults(parse_device(self.device), parse_dtype(self.dtype))

    def callbacks(self, epochs: int, desc: str) -> list:
        """``fit`` callbacks: a progress bar on a terminal, nothing in a log."""
        return [EpochProgress(epochs, desc, lines=False)] if self.progress else []


def train(vae, guide, train_x, val_x, cfg: TrainingConfig, seeds, rt: Runtime, desc: str = "fit",
          train_mask=None, **overrides):
    """``inference.fit`` with a study's training fields (``overrides`` replace them)."""
    fit_cfg = cfg.fit_config(**overrides)
    return inference.fit(vae, guide, train_x, val_x, config=fit_cfg, seed=seeds,
                         callbacks=rt.callbacks(fit_cfg.epochs, desc), train_mask=train_mask)


def precision_warmup(vae, guide, train_x, val_x, cfg: TrainingConfig, seeds, rt: Runtime,
                     start: float | None, epochs: int, desc: str = "warm-up"):
    """Train each replica whose target ``gamma2`` exceeds ``start`` for ``epochs`` epochs at
    each precision ``start, 10 start, 100 start, ...`` below its target (no early stopping;
    the best validation state of each stage is kept), then restore the targets. Replicas at or
    below ``start`` are left untouched, so a replica trains the same in any batch.

    Returns ``(failed, epochs_run)``, both ``(R,)``: replicas that failed during the warm-up
    and each replica's warm-up epochs. With ``start=None`` nothing is trained.
    """
    target = vae.gamma2.clone()
    failed = torch.zeros(len(target), dtype=torch.bool)
    run = torch.zeros(len(target))
    stage = start
    try:
        while stage is not None and epochs > 0 and bool((target > stage).any()):
            mask = target > stage
            vae.gamma2.copy_(torch.where(mask, torch.full_like(target, stage), target))
            fit = train(vae, guide, train_x, val_x, cfg, seeds, rt, desc=f"{desc} {stage:g}",
                        train_mask=mask.cpu(), epochs=epochs, patience=None)
            failed |= fit.failed & mask.cpu()
            run += mask.cpu() * fit.epochs_run
            stage *= 10
    finally:
        vae.gamma2.copy_(target)
    return failed, run


def kl_warmup(vae, guide, train_x, val_x, cfg: TrainingConfig, seeds, rt: Runtime,
              beta: float | None, epochs: int, desc: str = "KL warm-up"):
    """Train every replica for ``epochs`` epochs with the latent site's weight multiplied by
    ``beta < 1`` (a KL warm-up against posterior collapse; at the model's current precision,
    no early stopping, the best validation state kept), then restore the model's own
    ``beta``, also if training raises. With ``beta=None`` nothing is trained.

    Returns ``(failed, epochs_run)``, both ``(R,)``: replicas that failed in the warm-up, and
    the warm-up's epochs (the same for every replica, failed ones included).
    """
    R = len(vae.beta)
    if beta is None or epochs <= 0:
        return torch.zeros(R, dtype=torch.bool), torch.zeros(R)
    if not 0 < beta < 1:
        raise ValueError(f"beta: expected a KL warm-up weight in (0, 1), got {beta!r}")
    own = vae.beta.clone()
    try:
        vae.set_beta(own * beta)
        fit = train(vae, guide, train_x, val_x, cfg, seeds, rt, desc=desc, epochs=epochs,
                    patience=None)
    finally:
        vae.set_beta(own)
    return fit.failed.clone(), torch.full((R,), float(fit.epochs_run))


def grid_settings(values: Sequence, seeds: Sequence[int], per_setting: int, *,
                  paired: bool = True) -> list[dict]:
    """The grid ``values x seeds`` as settings of at most ``per_setting`` replicas each.

    Each setting is ``{"grid": [[value, seed], ...]}`` and trains as one replica batch: on a
    CPU a batch of ~100 replicas runs at ~1.8x the replica-steps/s of a batch of 20, while a
    sweep killed part-way still resumes at setting granularity. ``paired``: every value uses
    the same seeds (a paired design, e.g. over gamma2); otherwise value ``i`` uses seeds
    ``1000 i + s`` (e.g. a different mixing per replica).
    """
    grid = [[v, s if paired else 1000 * i + s] for i, v in enumerate(values) for s in seeds]
    return [{"grid": grid[i:i + per_setting]} for i in range(0, len(grid), per_setting)]


def fit_values(fit) -> dict[str, torch.Tensor]:
    """Per-replica training facts ``(R,)`` for the tidy table: the best epoch (the state kept),
    the number of epochs run, the plateau halvings of the step size and whether the plateau
    rule stopped the replica (``stopped_early`` 0: it was still training when the epoch cap
    ended the fit)."""
    best = fit.best_epoch.double()
    return {"best_epoch": best, "epochs_run": torch.full_like(best, float(fit.epochs_run)),
            "lr_halvings": fit.lr_halvings.double(), "stopped_early": fit.stopped_early.double()}


def training_summary(rows: list[dict]) -> dict:
    """How the replicas' training ended: ``still_improving_at_cap`` counts those the epoch cap
    stopped while still training (see :func:`fit_values`), ``epochs_run`` the longest fit."""
    by = {}
    for r in rows:
        if r["metric"] in ("best_epoch", "epochs_run", "stopped_early"):
            key = tuple(sorted((k, v) for k, v in r.items() if k not in ("metric", "value")))
            by.setdefault(key, {})[r["metric"]] = r["value"]
    capped = sum(1 for v in by.values()
                 if (v["stopped_early"] == 0 if "stopped_early" in v
                     else v["best_epoch"] >= v["epochs_run"] - 1))
    return {"replicas": len(by), "still_improving_at_cap": capped,
            "epochs_run": max((v["epochs_run"] for v in by.values()), default=0)}


def format_table(headers: Sequence[str], rows: Sequence[Sequence], title: str = "") -> str:
    """A plain-text table (numbers to 4 significant digits) for a study's printed summary."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)
    body = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(headers)]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=list).encode()).hexdigest()


def setting_key(setting: dict, fingerprint: str = "") -> str:
    """A stable file-name key for one setting of a sweep under a study's ``fingerprint``."""
    return _digest({"setting": setting, "fingerprint": fingerprint})[:16]


def check_rows(rows: list[dict]) -> list[dict]:
    """Refuse rows whose value is missing, NaN or inf unless they are marked as failures."""
    for r in rows:
        v = r.get("value")
        bad = v is None or (isinstance(v, float) and not math.isfinite(v))
        if bad and not r.get("failed"):
            raise FloatingPointError(f"non-finite value in row {r}")
    return rows


def load_setting(path: Path, setting: dict, fingerprint: str) -> list[dict] | None:
    """The rows of a finished setting, or ``None`` when its file is missing, unreadable, of
    another setting or config, empty, or holds a non-finite value (then it is recomputed)."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved.get("setting") != setting or saved.get("fingerprint") != fingerprint:
            return None
        rows = saved["rows"]
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            return None
        return check_rows(rows)
    except (OSError, ValueError, KeyError, AttributeError, FloatingPointError):
        return None


@dataclass(frozen=True)
class SettingTask:
    """One setting of a study, everything a worker needs to compute and store it (picklable:
    it can go to another process or machine)."""

    study: str
    quick: bool
    setting: dict
    path: str
    fingerprint: str
    runtime: Runtime
    config: object = None  # the study's Config when it is not its QUICK or FULL


def execute_setting(task: SettingTask) -> dict:
    """Compute one setting where it runs and write its file there (atomically); returns
    ``{"rows", "seconds"}``. The study, its config, the device and the thread count come from
    ``task``; PyTorch's global RNG and Pyro's parameter store are private to the setting."""
    import pyro

    from . import STUDIES
    mod = STUDIES[task.study]
    cfg = task.config if task.config is not None else (mod.QUICK if task.quick else mod.FULL)
    if task.runtime.threads is not None:
        torch.set_num_threads(task.runtime.threads)
    t = time.perf_counter()
    with task.runtime.defaults(), torch.random.fork_rng(devices=[]), \
            pyro.get_param_store().scope():
        torch.manual_seed(int(_digest(task.setting)[:12], 16))  # nothing should draw from it
        rows = check_rows(mod.run_setting(task.setting, cfg, task.runtime))
    seconds = time.perf_counter() - t
    for r in rows:
        r["setting_seconds"] = round(seconds, 3)
    _store(task, rows, seconds)
    return {"rows": rows, "seconds": seconds}


def _store(task: SettingTask, rows: list[dict], seconds: float) -> None:
    atomic_write_json(task.path, {"setting": task.setting, "fingerprint": task.fingerprint,
                                  "rows": rows, "seconds": seconds})


def run_sweep(tasks: Sequence[SettingTask], *, desc: str, progress: bool = True,
              executor=None) -> list[dict]:
    """Run every setting whose file is not already finished; return all rows in task order.

    Each finished setting's rows are written atomically to their own file keyed by the setting
    and the study's config, so a sweep killed at any moment restarts where it stopped, without
    duplicated, partial or stale rows. ``executor`` (``None``: this process, one setting after
    another) is any ``concurrent.futures``-style executor, e.g. an
    :class:`~pyro_ima.experiments.executors.Executor`; a worker lost mid-setting costs that
    setting only (it runs again), and an executor that cannot go on raises
    :class:`~pyro_ima.experiments.executors.ExecutorLost` after saving what finished.
    """
    from .executors import ExecutorLost, lost_scheduler, lost_worker
    results: list[list[dict] | None] = [load_setting(Path(t.path), t.setting, t.fingerprint)
                                        for t in tasks]
    name = getattr(executor, "name", type(executor).__name__ if executor else "local")
    bar = Progress(len(tasks), f"{desc} [{name}]") if progress else None

    def finished(i: int, out: dict) -> None:
        results[i] = out["rows"]
        if not Path(tasks[i].path).exists():  # a remote worker without a shared disk
            _store(tasks[i], out["rows"], out["seconds"])
        if bar is not None:
            bar.update(f"setting {out['seconds']:.0f}s")

    for i in range(len(tasks)):
        if results[i] is not None and bar is not None:
            bar.update("cached")
    todo = [i for i, r in enumerate(results) if r is None]
    if executor is None or getattr(executor, "kind", None) == "local":
        for i in todo:
            finished(i, execute_setting(tasks[i]))
        todo = []
    restarts = 0
    while todo:
        futures = {executor.submit(execute_setting, tasks[i]): i for i in todo}
        try:
            for future in cf.as_completed(futures):
                i = futures[future]
                finished(i, future.result())
                todo.remove(i)
        except Exception as e:
            done = len(tasks) - len(todo)
            if lost_worker(e) and hasattr(executor, "restart") and restarts < 3:
                restarts += 1  # a worker died: start the pool again for what is left
                executor.restart()
                todo = [i for i in todo if load_setting(Path(tasks[i].path), tasks[i].setting,
                                                        tasks[i].fingerprint) is None]
                continue
            if lost_worker(e) or lost_scheduler(e):
                raise ExecutorLost(f"executor: {name} went away after {done} of {len(tasks)} "
                                   f"settings ({type(e).__name__}); they are saved, rerun to "
                                   f"resume") from None
            raise
    if bar is not None:
        bar.close()
    return [r for rows in results for r in rows]


def write_table(rows: list[dict], out_dir: str | Path, meta: dict) -> None:
    """``results.csv`` (tidy) and ``results.json`` (rows + metadata), both atomic."""
    out = Path(out_dir)
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_json(out / "results.json", {**meta, "rows": rows})


def replica_datasets(make_mixing: Callable[[int], object], prior, n: int, seeds: Sequence[int]):
    """One dataset per seed (mixing and data both from that seed), stacked along a replica dim.

    Returns ``(train_x, val_x, test_x, test_z, mixings)`` with ``(R, N, D)`` tensors.
    """
    sets, mixes = [], []
    for s in seeds:
        mix = make_mixing(s)
        sets.append(data.make_dataset(mix, prior, n=n, seed=s))
        mixes.append(mix)
    stack = [torch.stack([getattr(ds, name).x for ds in sets]) for name in ("train", "val",
                                                                            "test")]
    return (*stack, torch.stack([ds.test.z for ds in sets]), mixes)


def replica_vae(dim: int, prior, gamma2: torch.Tensor, seeds: Sequence[int], *,
                family: str = "diagonal", hidden: int = 50, decoder=None,
                init_scale: float | None = None, learn_noise: bool = False):
    """A replica-batched VAE (MLP decoder unless one is given) and guide of ``family``."""
    R = len(seeds)
    dec = decoder if decoder is not None else models.MLP(dim, dim, (hidden, hidden), replicas=R,
                                                         seed=list(seeds))
    vae = models.GaussianVAE(dec, prior, gamma2, replicas=R, learn_noise=learn_noise,
                             data_dim=dim)
    cls = models.GUIDES[family]
    enc = models.MLP(dim, cls.num_outputs(dim), (hidden, hidden), replicas=R,
                     seed=[s + 10_000 for s in seeds])
    return vae, cls(vae, enc, init_scale=init_scale)


