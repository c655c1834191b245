"""The ``pyro-ima`` command line: train one run, evaluate it, run a study, or the demo.

Every failure is one line on stderr: bad input exits with status 2, a numerical failure or a
file that cannot be written with 1, an interruption with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from . import __version__, models, priors
from .inference import summary_line

__all__ = ["main", "build_parser"]


class _OneLineError(Exception):
    """A usage error reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        raise _OneLineError(message)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every default once: appended where the help text does not state it,
    left out for flags and for options whose default is decided later (``None``)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _int_in(minimum: int, maximum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected an integer in [{minimum}, {maximum}], "
                                             f"got {value}")
        return value
    return parse


def _widths(text: str) -> tuple[int, ...]:
    parse = _int_in(1, 1_000_000)
    try:
        return tuple(parse(part) for part in text.split(","))
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths such as 50,50 ({e})") \
            from None


def _add_run_args(p: argparse.ArgumentParser) -> None:
    from .runs import MAX_N, MAX_SEED, MIXING_NAMES, RunConfig
    d = RunConfig()
    p.add_argument("--mixing", choices=[m for m in MIXING_NAMES if m != "data"], default=None,
                   help="ground-truth mixing, or 'sprites' for the rendered Sprites images "
                        "(with --prior beta --dim 4; conv encoder/decoder); default moebius")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="train on your own (N, D) array instead (.npy, or .pt holding a "
                        "tensor); --dim is then the latent size")
    p.add_argument("--prior", choices=sorted(priors.PRIORS), default=d.prior,
                   help="latent prior, also the data's latent distribution")
    p.add_argument("--dim", type=_int_in(1, 1_000_000), default=d.dim,
                   help="latent dimension (and the data's, for synthetic data)")
    p.add_argument("--guide", choices=sorted(models.GUIDES), default=d.guide,
                   help="guide family")
    p.add_argument("--gamma2", type=_positive_float, default=d.gamma2,
                   help="decoder precision gamma^2")
    p.add_argument("--beta", type=_positive_float, default=d.beta, help="beta-VAE weight")
    p.add_argument("--learn-noise", action="store_true",
                   help="learn per-dimension observation scales (unit geometric mean)")
    p.add_argument("--fixed-decoder", action="store_true",
                   help="fix the decoder to the true mixing and train the encoder alone")
    p.add_argument("--hidden", type=_widths, default=d.hidden,
                   help="MLP hidden layer widths, comma-separated; default 50,50")
    p.add_argument("--n", type=_int_in(1, MAX_N), default=None,
                   help=f"data points in total (split 0.7/0.2/0.1; each split needs >= 3); "
                        f"default {d.n}; with --data, every point of the file")
    p.add_argument("--epochs", type=_int_in(1, 1_000_000), default=d.epochs,
                   help="maximum epochs")
    p.add_argument("--batch-size", type=_int_in(1, 1_000_000), default=d.batch_size,
                   help="points per SVI step")
    p.add_argument("--lr", type=_positive_float, default=d.lr, help="Adam learning rate")
    p.add_argument("--patience", type=_int_in(1, 1_000_000), default=d.patience,
                   help="early-stopping patience in epochs")
    p.add_argument("--init-scale", type=_positive_float, default=None,
                   help="initial guide standard deviation (default: softplus(0) = 0.69)")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=d.seed,
                   help="seeds the data, the initial weights and every draw")
    p.add_argument("--eval-points", type=_int_in(1, 1_000_000), default=None,
                   help="test points for the importance-sampled log p (default: 500; 100 for "
                        "sprites)")
    p.add_argument("--eval-samples", type=_int_in(1, 1_000_000), default=None,
                   help="importance samples per point (default: 500; 100 for sprites)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_device_args(p)


def _add_device_args(p: argparse.ArgumentParser, of_run: bool = False) -> None:
    """``--device`` and ``--dtype``; ``of_run``: they default to the run's own (``evaluate``)."""
    where = " (default: the run's own)" if of_run else ""
    p.add_argument("--device", default=None if of_run else "cpu",
                   help=f"where to compute: cpu, cuda, cuda:1, ...{where}")
    p.add_argument("--dtype", choices=("float32", "float64"),
                   default=None if of_run else "float32",
                   help=f"floating-point precision{where}")


def _add_force(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true",
                   help=f"replace what OUT already holds (another {what}, or this one: computed "
                        f"again); without it another {what} in OUT is refused")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyro-ima", description=__doc__, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"pyro-ima {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="train one VAE and write results.json + state.pt",
                       formatter_class=_Help,
                       description="Train one VAE on a synthetic dataset (or your own with "
                                   "--data); write OUT/state.pt (model and guide) and "
                                   "OUT/results.json (config, versions, train/val/test ELBO, "
                                   "history, metrics).")
    _add_run_args(p)
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    _add_force(p, "run")
    p = sub.add_parser("evaluate", help="re-evaluate a trained run directory",
                       formatter_class=_Help,
                       description="Reload RUN_DIR (results.json + state.pt of one run) "
                                   "on its own device and dtype unless --device/--dtype say "
                                   "otherwise, recompute MCC, contrasts, importance-sampled "
                                   "log p with PSIS k-hat, the share of flagged estimates and "
                                   "the gap, and write RUN_DIR/metrics.json.")
    p.add_argument("run_dir", help="a directory written by `pyro-ima train`")
    p.add_argument("--points", type=_int_in(1, 1_000_000), default=None,
                   help="test points for importance sampling (default: the run's)")
    p.add_argument("--samples", type=_int_in(1, 1_000_000), default=None,
                   help="importance samples per point K (default: the run's)")
    _add_device_args(p, of_run=True)
    from .experiments import STUDIES
    p = sub.add_parser("experiment", help="run (or resume) one study of the paper",
                       formatter_class=_Help,
                       description="Run one study; writes OUT/results.csv, results.json, "
                                   "summary.json and the figure (PNG + PDF). A killed run "
                                   "resumes without redoing finished settings of the same "
                                   "config.")
    p.add_argument("name", nargs="?", choices=sorted(STUDIES), help="the study")
    p.add_argument("--quick", action="store_true", help="small sizes (minutes on 2 cores)")
    p.add_argument("--from", dest="from_file", default=None, metavar="RESULTS_JSON",
                   help="re-run the study (same name and size) that wrote this results.json, "
                        "into --out (default runs/NAME[-quick], not the file's directory)")
    p.add_argument("--out", default=None, help="output directory (default: runs/NAME[-quick])")
    p.add_argument("--summary-to", default=None, metavar="JSON",
                   help="also write the study's headline numbers to this file (moebius and "
                        "sprites: docs/results/NAME.json)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_force(p, "study or config")
    _add_device_args(p)
    p.add_argument("--executor", choices=("local", "processes", "dask"), default="local",
                   help="where settings run: this process, a pool of processes, or Dask (a "
                        "LocalCluster, or the cluster at --scheduler)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (with --executor "
                        "dask; its workers must see OUT)")
    p.add_argument("--workers", type=_int_in(1, 4096), default=None,
                   help="worker processes for processes or a local Dask cluster (default 2)")
    p.add_argument("--threads-per-worker", type=_int_in(1, 1024), default=None,
                   help="PyTorch threads per setting on a worker (default 1)")
    p = sub.add_parser("demo", help="the main job: closed-form gap check + a Moebius VAE, "
                                    "printed and drawn", formatter_class=_Help)
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_force(p, "run")
    _add_device_args(p)
    return parser


def _cmd_train(args) -> int:
    from .runs import RunConfig, train_run
    if args.data is not None and args.mixing is not None:
        raise ValueError("data: --data trains on your file; it goes without --mixing")
    if args.data is not None and args.n is not None:
        raise ValueError("n: --data trains on every point of your file; it goes without --n")
    mixing = "data" if args.data is not None else (args.mixing or "moebius")
    cfg = RunConfig(mixing=mixing, prior=args.prior, dim=args.dim, guide=args.guide,
                    gamma2=args.gamma2, beta=args.beta, learn_noise=args.learn_noise,
                    fixed_decoder=args.fixed_decoder, hidden=args.hidden,
                    n=RunConfig.n if args.n is None else args.n,
                    epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    patience=args.patience, init_scale=args.init_scale, seed=args.seed,
                    eval_points=args.eval_points, eval_samples=args.eval_samples,
                    device=args.device, dtype=args.dtype,
                    data=None if args.data is None else os.path.abspath(args.data))
    results, _ = train_run(cfg, args.out, progress=not args.quiet, force=args.force)
    e, n = results["elbo"], results["epochs_run"]
    print(f"trained {cfg.guide} guide, {n} epoch{'s' if n != 1 else ''} (best: epoch "
          f"{results['best_epoch'] + 1}) in {results['seconds']:.1f}s: ELBO train "
          f"{e['train']:.3f} val {e['val']:.3f} test {e['test']:.3f} -> {args.out}/results.json")
    print(summary_line(results["metrics"]))
    return 0


def _cmd_evaluate(args) -> int:
    from pathlib import Path

    from .fileio import DirLock, atomic_write_json
    from .runs import evaluate, load_run
    if not Path(args.run_dir).is_dir():
        raise ValueError(f"run_dir: expected an existing run directory, got {args.run_dir!r}")
    with DirLock(args.run_dir):
        results, cfg, ds, vae, guide = load_run(args.run_dir, device=args.device,
                                                dtype=args.dtype)
        n_test = ds.test.x.shape[0]
        if args.points is not None and args.points > n_test:
            raise ValueError(f"points: expected at most the run's {n_test} test points, got "
                             f"{args.points}")
        sizes = {k: v for k, v in (("points", args.points), ("is_samples", args.samples))
                 if v is not None}
        m = evaluate(ds, vae, guide, config=dataclasses.replace(cfg.eval_config(), **sizes),
                     seed=cfg.seed)
        atomic_write_json(Path(args.run_dir) / "metrics.json",
                          {"kind": "pyro_ima.metrics", "run_id": results["run_id"],
                           "device": cfg.device, "dtype": cfg.dtype, **m})
    print(summary_line(m))
    return 0


def _config_from(obj: dict, mod, path: str):
    """The study config a results file was computed with (a GPU protocol such as
    ``sprites_study.REFERENCE_SWEEP`` too, not only QUICK/FULL), JSON lists back as tuples;
    ``None`` for a file without one (the named size)."""
    saved = obj.get("config")
    if not isinstance(saved, dict):
        return None
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(mod.Config)})
    if unknown:
        raise ValueError(f"from: {path!r} holds config fields that this version's "
                         f"{obj['study']} study does not have: {', '.join(unknown)}")

    def tuples(v):
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v
    return mod.Config(**{k: tuples(v) for k, v in saved.items()})


def _resolve_study(args) -> None:
    """``experiment``: the study's name and size from the arguments or from ``--from``."""
    if args.from_file is not None:
        from .experiments import STUDIES
        from .fileio import read_json
        obj = read_json(args.from_file, "from")
        if obj.get("kind") != "pyro_ima.study":
            raise ValueError(f"from: {args.from_file!r} is not a pyro-ima study results file")
        if obj.get("study") not in STUDIES or not isinstance(obj.get("quick"), bool):
            raise ValueError(f"from: {args.from_file!r} names no known study and size "
                             f"(study {obj.get('study')!r}, quick {obj.get('quick')!r})")
        args.name, args.quick = obj["study"], obj["quick"]
        args.config = _config_from(obj, STUDIES[obj["study"]], args.from_file)
    if args.name is None:
        raise ValueError("name: expected a study name or --from RESULTS_JSON")
    if args.out is None:
        args.out = f"runs/{args.name}{'-quick' if args.quick else ''}"


def _cmd_experiment(args) -> int:
    from .experiments import run_study
    from .experiments.executors import Executor
    _resolve_study(args)
    executor = Executor(args.executor, scheduler=args.scheduler, workers=args.workers,
                        threads_per_worker=args.threads_per_worker)
    with executor:
        meta = run_study(args.name, args.out, quick=args.quick, progress=not args.quiet,
                         device=args.device, dtype=args.dtype, force=args.force,
                         executor=None if args.executor == "local" else executor,
                         summary_to=args.summary_to, config=getattr(args, "config", None))
    print(meta["table"])
    print(f"{args.name}: {meta['claim']} ({meta['seconds']:.0f}s) -> {args.out}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(args.out, progress=not args.quiet, device=args.device, dtype=args.dtype,
             force=args.force)
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings reach a command-line user as one line, without a source location."""
    text = " ".join(str(message).split())
    print(f"pyro-ima: warning: {text}", file=sys.stderr)


def _first_line(e: BaseException) -> str:
    return " ".join((str(e).strip().splitlines() or [type(e).__name__])[0].split())


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, one line on stderr)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)  # numerical verdicts: always shown
        warnings.simplefilter("ignore", FutureWarning)  # libraries' notices to their users
        warnings.showwarning = _one_line_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from ._utils import parse_device
        if args.device is not None:
            parse_device(args.device)
        commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "demo": _cmd_demo,
                    "experiment": _cmd_experiment}
        return commands[args.command](args)
    except (_OneLineError, ValueError, TypeError) as e:
        print(f"pyro-ima: error: {_first_line(e)}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"pyro-ima: numerical failure: {_first_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"pyro-ima: error: {e.strerror or _first_line(e)}{where}; nothing partial was "
              f"written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyro-ima: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, with the way to see more
        if os.environ.get("PYRO_IMA_DEBUG"):
            raise
        print(f"pyro-ima: internal error: {type(e).__name__}: {_first_line(e)} (set "
              f"PYRO_IMA_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
