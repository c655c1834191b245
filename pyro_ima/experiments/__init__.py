"""One module per study; each returns a tidy table (one row per replica x metric)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..fileio import atomic_write_json, check_out_dir, package_versions
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
from .common import Runtime, run_sweep, write_table

__all__ = ["STUDIES", "run_study"]

STUDIES = {"self_consistency": self_consistency, "elbo_vs_lima": elbo_vs_lima,
           "moebius": moebius, "linear_contrast": linear_contrast,
           "guide_families": guide_families, "encoder_side": encoder_side,
           "beta_gamma": beta_gamma, "sprites": sprites_study}


def run_study(name: str, out_dir: str | Path, *, quick: bool = False, progress: bool = True,
              device: str = "cpu", dtype: str = "float32") -> dict:
    """Run (or resume) study ``name``; write results.csv/json, the figure and a summary.

    Every setting runs with ``device`` and ``dtype`` as PyTorch's defaults (its data and
    models are built there)."""
    if name not in STUDIES:
        raise ValueError(f"name: expected one of {sorted(STUDIES)}, got {name!r}")
    mod = STUDIES[name]
    cfg = mod.QUICK if quick else mod.FULL
    out = check_out_dir(out_dir)
    rt = Runtime(progress=progress, device=device, dtype=dtype, out_dir=out)
    t = time.perf_counter()

    def run_one(setting):
        with rt.defaults():
            return mod.run_setting(setting, cfg, rt)

    rows = run_sweep(name, mod.settings(cfg), run_one, out, progress=progress)
    summary = mod.summarize(rows)
    meta = {"kind": "pyro_ima.study", "study": name, "quick": quick,
            "config": dataclasses.asdict(cfg), "versions": package_versions(),
            "summary": summary, "claim": mod.claim(summary)}
    write_table(rows, out, meta)
    mod.plot(rows, summary, out / name)
    meta["seconds"] = time.perf_counter() - t
    atomic_write_json(out / "summary.json", meta)
    return meta
