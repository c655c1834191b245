"""One module per study; each returns a tidy table (one row per replica x metric)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import shutil
import time
from pathlib import Path

from ..fileio import (
    RUN_FILES,
    STUDY_FILES,
    DirLock,
    atomic_write_json,
    check_out_dir,
    package_versions,
    read_json,
)
from . import (
    beta_gamma,
    elbo_vs_lima,
    encoder_side,
    guide_families,
    linear_contrast,
    moebius,
    self_consistency,
    sprites_study,
)
from .common import Runtime, SettingTask, run_sweep, setting_key, write_table

__all__ = ["STUDIES", "run_study", "study_fingerprint", "STUDY_FILES"]

STUDIES = {"self_consistency": self_consistency, "elbo_vs_lima": elbo_vs_lima,
           "moebius": moebius, "linear_contrast": linear_contrast,
           "guide_families": guide_families, "encoder_side": encoder_side,
           "beta_gamma": beta_gamma, "sprites": sprites_study}


def study_fingerprint(name: str, quick: bool, cfg, dtype: str) -> str:
    """A hash of everything a study's numbers depend on: its name and size, its full config,
    the dtype and the package version (cached settings of another fingerprint are not used)."""
    from .. import __version__
    config = dataclasses.asdict(cfg)
    # fields added after a study's results were computed, whose default reproduces them:
    # left out while at their default, so those study directories still resume
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for k in getattr(cfg, "FINGERPRINT_OMITS_DEFAULT", ()):
        if config[k] == defaults[k]:
            del config[k]
    text = json.dumps({"study": name, "quick": quick, "config": config,
                       "dtype": dtype, "version": __version__}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _outputs(out: Path) -> list[Path]:
    """The study outputs present in ``out`` (files, the settings folder, every study's figures
    and per-seed traversal figures)."""
    found = [out / f for f in STUDY_FILES if (out / f).exists()]
    for stem in STUDIES:
        found += [p for p in (out / f"{stem}.png", out / f"{stem}.pdf") if p.exists()]
    return found + sorted(out.glob("traversal_*.png"))


def _claim(out: Path, name: str, quick: bool, fingerprint: str, force: bool) -> None:
    """Make ``out`` this study's directory: resume one of the same fingerprint; refuse another
    study, config or version (or a training run) unless ``force``, which clears it first (the
    same study's finished settings too: ``force`` always recomputes)."""
    manifest = out / "study.json"
    if manifest.exists():
        held = read_json(manifest, "out")
        if held.get("fingerprint") == fingerprint and not force:
            return
        what = (f"study {held.get('study')!r} ({'quick' if held.get('quick') else 'full'} size)"
                f"{' with another config or version' if held.get('study') == name else ''}")
        if held.get("fingerprint") == fingerprint:
            what = "this study's results"  # only reached with force
    else:
        stale = [p.name for p in _outputs(out)] + [f for f in RUN_FILES if (out / f).exists()]
        if not stale:
            what = None
        else:
            what = f"other pyro-ima outputs ({', '.join(stale[:3])})"
    if what is not None:
        if not force:
            raise ValueError(f"out: {str(out)!r} holds {what}; use --force to replace it or "
                             f"choose another --out")
        for p in dict.fromkeys(_outputs(out) + [out / f for f in RUN_FILES
                                                if (out / f).exists()]):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    atomic_write_json(manifest, {"kind": "pyro_ima.study_dir", "study": name, "quick": quick,
                                 "fingerprint": fingerprint})


def run_study(name: str, out_dir: str | Path, *, quick: bool = False, progress: bool = True,
              device: str = "cpu", dtype: str = "float32", force: bool = False,
              executor=None, summary_to: str | Path | None = None, config=None) -> dict:
    """Run (or resume) study ``name``; write results.csv/json, the figure and a summary.

    Every setting runs with ``device`` and ``dtype`` as PyTorch's defaults (its data and
    models are built there). Finished settings are cached under ``out/settings`` keyed by the
    study's full config, dtype and package version: a rerun of the same study resumes, one of
    another config is refused unless ``force`` (which clears the directory's study outputs),
    and one process at a time writes ``out``. ``executor`` runs the settings (``None``: this
    process; see :mod:`~pyro_ima.experiments.executors`): workers compute and write their
    settings, this process collects and summarizes. ``summary_to``: also write the study's
    headline numbers (its ``headline(summary)``: e.g. ``docs/results/moebius.json``) there,
    atomically, with the study's name, size, config, fingerprint, versions and wall time.
    ``config``: a ``Config`` of the study's module in place of its ``QUICK``/``FULL`` (e.g.
    ``sprites_study.PAPER``, a GPU protocol); it is part of the cache key like any.
    """
    if name not in STUDIES:
        raise ValueError(f"name: expected one of {sorted(STUDIES)}, got {name!r}")
    mod = STUDIES[name]
    if summary_to is not None and not hasattr(mod, "headline"):
        have = sorted(k for k, m in STUDIES.items() if hasattr(m, "headline"))
        raise ValueError(f"summary_to: study {name!r} has no headline summary (those that do: "
                         f"{', '.join(have)})")
    if config is not None and not isinstance(config, mod.Config):
        raise TypeError(f"config: expected a {mod.__name__}.Config, got "
                        f"{type(config).__name__}")
    cfg = config if config is not None else (mod.QUICK if quick else mod.FULL)
    todo = mod.settings(cfg)  # also checks the config, before anything is written
    out = check_out_dir(out_dir)
    rt = Runtime(progress=progress and executor is None, device=device, dtype=dtype,
                 out_dir=out, threads=getattr(executor, "threads", None))
    t = time.perf_counter()
    fingerprint = study_fingerprint(name, quick, cfg, dtype)
    with DirLock(out):
        _claim(out, name, quick, fingerprint, force)
        (out / "settings").mkdir(exist_ok=True)
        tasks = [SettingTask(name, quick, s, str(out / "settings" /
                                                 f"{setting_key(s, fingerprint)}.json"),
                             fingerprint, rt, config) for s in todo]
        rows = run_sweep(tasks, desc=name, progress=progress, executor=executor)
        summary = mod.summarize(rows)
        meta = {"kind": "pyro_ima.study", "study": name, "quick": quick,
                "fingerprint": fingerprint, "config": dataclasses.asdict(cfg),
                "dtype": dtype, "device": device, "versions": package_versions(),
                "summary": summary, "claim": mod.claim(summary), "table": mod.table(summary)}
        write_table(rows, out, meta)
        mod.plot(rows, summary, out / name)
        meta["seconds"] = time.perf_counter() - t
        # what computing the settings took, also when this call only resumed cached ones
        meta["compute_seconds"] = sum(read_json(Path(task.path), "settings")["seconds"]
                                      for task in tasks)
        atomic_write_json(out / "summary.json", meta)
    if summary_to is not None:
        target = Path(summary_to)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(target, {"kind": "pyro_ima.headline", "study": name, "quick": quick,
                                   **mod.headline(summary),
                                   "config": meta["config"], "dtype": dtype,
                                   "fingerprint": fingerprint, "versions": meta["versions"],
                                   "seconds": round(meta["seconds"], 1),
                                   "compute_seconds": round(meta["compute_seconds"], 1),
                                   "command": _command_line(name, quick, out, summary_to,
                                                            device, dtype, executor),
                                   # a config no command-line option gives (run_study(config=))
                                   "custom_config": cfg != (mod.QUICK if quick else mod.FULL)})
    return meta


def _command_line(name, quick, out, summary_to, device, dtype, executor) -> str:
    """The ``pyro-ima experiment`` call that wrote a headline file, executor included (paths
    as given, so relative to where it ran)."""
    words = ["pyro-ima", "experiment", name, *(["--quick"] if quick else []), "--out", str(out)]
    words += ["--device", device] if device != "cpu" else []
    words += ["--dtype", dtype] if dtype != "float32" else []
    words += executor.cli_options() if executor is not None else []
    return shlex.join(words + ["--summary-to", str(summary_to)])
