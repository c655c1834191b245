"""Run and study directories that never mix up or lose results, and output made for people."""

import errno
import json
import os
import stat
import subprocess
import sys
import time

import pytest
import torch

from pyro_ima import fileio, inference
from pyro_ima.cli import main
from pyro_ima.experiments import common
from pyro_ima.runs import RunConfig, load_run, train_run

TINY = ["--n", "200", "--epochs", "2", "--batch-size", "32", "--hidden", "8", "--quiet",
        "--eval-points", "20", "--eval-samples", "50"]
CFG = RunConfig(n=200, epochs=2, batch_size=32, hidden=(8,), eval_points=20, eval_samples=50)

# two epochs of training: most importance-sampled estimates are (rightly) flagged
pytestmark = [pytest.mark.filterwarnings("ignore:evaluate:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:importance_log_px:RuntimeWarning")]
if os.environ.get("PYRO_IMA_TEST_DEVICE", "cpu") != "cpu":  # the subprocess tests use the CPU
    pytestmark.append(pytest.mark.skip(reason="subprocess and file tests run on the CPU"))


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pyro_ima", *args], capture_output=True,
                          text=True, **kw)


def test_a_run_killed_between_its_two_writes_is_refused_not_mixed(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_run(CFG, out)
    first = json.loads((out / "results.json").read_text())["run_id"]
    # retrain with --force; the process dies (here: the disk fills) between state.pt and
    # results.json: the old results are gone, the new state has no results beside it
    real = fileio.atomic_write_json

    def full_disk(path, obj):
        if str(path).endswith("results.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, obj)

    monkeypatch.setattr("pyro_ima.runs.atomic_write_json", full_disk)
    with pytest.raises(OSError):
        train_run(CFG, out, force=True)
    monkeypatch.undo()
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["run_id"] != first and not (out / "results.json").exists()
    with pytest.raises(ValueError, match="results"):
        load_run(out)
    assert not list(out.glob("*.tmp"))
    # and a state.pt of one run next to the results.json of another is refused too
    train_run(CFG, tmp_path / "other")
    (out / "results.json").write_bytes((tmp_path / "other" / "results.json").read_bytes())
    with pytest.raises(ValueError, match="state: .* belongs to another run"):
        load_run(out)


def test_a_full_disk_is_one_line_and_leaves_nothing_partial(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"

    def enospc(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", enospc)  # how torch reports a full disk
    assert main(["train", *TINY, "--out", str(out)]) == 1
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("pyro-ima: error")]
    assert len(errors) == 1 and "cannot write state.pt" in errors[0], lines
    assert all(line.startswith("pyro-ima: ") for line in lines)  # no traceback
    assert not out.exists()  # nothing was written: no directory, no lock file


def test_results_files_are_readable_by_others(tmp_path):
    out = tmp_path / "run"
    train_run(CFG, out)
    for name in ("results.json", "state.pt"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644


def test_a_figure_interrupted_while_written_leaves_the_good_one(tmp_path):
    plt = common.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    common.save_figure(fig, tmp_path / "fig")
    good = (tmp_path / "fig.png").read_bytes()

    class Killed(plt.Figure):
        def savefig(self, fname, **kw):
            with open(fname, "wb") as f:
                f.write(b"\x89PNG partial")
            raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        common.save_figure(Killed(), tmp_path / "fig")
    assert (tmp_path / "fig.png").read_bytes() == good
    assert not list(tmp_path.glob("*.tmp"))


def test_two_trainings_into_one_directory_the_second_is_refused(tmp_path):
    out = tmp_path / "same"
    slow = ["train", "--n", "3000", "--epochs", "30", "--patience", "30", "--quiet",
            "--eval-points", "20", "--eval-samples", "50", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "pyro_ima", *slow],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / ".pyro_ima.lock").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    second = _cli(*slow)
    assert first.poll() is None, "the first run ended before the second started"
    assert second.returncode == 2
    assert "another pyro-ima process is writing" in second.stderr
    assert second.stderr.count("\n") == 1
    first.communicate(timeout=600)
    assert first.returncode == 0
    results, cfg, *_ = load_run(out)
    assert cfg.epochs == 30 and results["epochs_run"] >= 1


def test_a_study_directory_resumes_only_its_own_config(tmp_path):
    out = tmp_path / "bg"
    assert main(["experiment", "beta_gamma", "--quick", "--quiet", "--out", str(out)]) == 0
    files = sorted((out / "settings").glob("*.json"))
    # the full study into the quick one's directory: refused before any work
    r = _cli("experiment", "beta_gamma", "--quiet", "--out", str(out))
    assert r.returncode == 2 and "--force" in r.stderr and r.stderr.count("\n") == 1
    # an empty and a NaN cached setting are recomputed, never dropped or passed on
    saved = json.loads(files[0].read_text())
    files[0].write_text(json.dumps({**saved, "rows": []}))
    saved["rows"][0]["value"] = None
    files[1].write_text(json.dumps(saved))
    assert main(["experiment", "beta_gamma", "--quick", "--quiet", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 2 * 3 and all(isinstance(r["value"], float) for r in rows)
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(rows)
    assert all("setting_seconds" in r for r in rows)


def test_force_replaces_another_run_in_the_directory(tmp_path):
    out = tmp_path / "x"
    train_run(CFG, out)
    assert main(["experiment", "beta_gamma", "--quick", "--quiet", "--out", str(out)]) == 2
    assert main(["experiment", "beta_gamma", "--quick", "--quiet", "--force",
                 "--out", str(out)]) == 0
    assert not (out / "state.pt").exists() and (out / "study.json").exists()
    # --force on the same study and config recomputes it (a plain rerun resumes)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "settings").iterdir()}
    assert main(["experiment", "beta_gamma", "--quick", "--quiet", "--out", str(out)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "settings").iterdir()} == before
    assert main(["experiment", "beta_gamma", "--quick", "--quiet", "--force",
                 "--out", str(out)]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "settings").iterdir()}
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)


def test_progress_in_a_log_is_plain_lines_and_tables_are_printed(tmp_path):
    r = _cli("train", *[a for a in TINY if a != "--quiet"], "--out", str(tmp_path / "r"))
    assert r.returncode == 0
    assert "train: 1/2" in r.stderr and "train: 2/2" in r.stderr
    assert "\r" not in r.stderr and "\x1b" not in r.stderr
    r = _cli("experiment", "beta_gamma", "--quick", "--out", str(tmp_path / "bg"))
    assert r.returncode == 0, r.stderr
    assert "beta_gamma [local]: 1/2" in r.stderr and "{" not in r.stderr  # no JSON dumps
    assert "gamma2 / beta  beta  ELBO gap at gamma2 / beta" in r.stdout


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default: 10000.0)" in out and "(default: 50,50)" not in out
    assert "--data FILE" in out and "--force" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "pyro-ima 0.2.0" in capsys.readouterr().out


def test_users_never_see_the_arviz_notice():
    code = ("import warnings; warnings.simplefilter('default'); import torch; "
            "from pyro_ima import inference, fileio; fileio.package_versions(); "
            "inference.psis_khat(torch.randn(3, 100))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "FutureWarning" not in r.stderr, r.stderr


def test_train_on_a_users_own_array(tmp_path):
    x = torch.randn(300, 5).numpy()
    path = tmp_path / "mine.npy"
    import numpy as np
    np.save(path, x)
    out = tmp_path / "mine"
    assert main(["train", *TINY[2:], "--data", str(path), "--dim", "2", "--hidden", "16,16",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["mixing"] == "data" and res["config"]["hidden"] == [16, 16]
    assert res["config"]["n"] == 300  # the file's size, not the synthetic default
    assert "mcc_pearson" not in res["metrics"] and "c_ima" in res["metrics"]
    assert main(["evaluate", str(out)]) == 0
    np.save(path, x + 1)  # the data changed since training: evaluate refuses
    assert main(["evaluate", str(out)]) == 2


def test_train_and_evaluate_default_to_the_same_sample_counts(tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert main(["evaluate", str(out)]) == 0
    trained = json.loads((out / "results.json").read_text())["metrics"]
    again = json.loads((out / "metrics.json").read_text())
    assert again["is_samples"] == trained["is_samples"] == 50
    assert again["is_points"] == trained["is_points"] == 20
    assert abs(again["log_px_is"] - trained["log_px_is"]) < 1e-6  # same seeds, same numbers
    assert again["run_id"] == json.loads((out / "results.json").read_text())["run_id"]


def test_khat_summary_counts_infinite_and_flat_points():
    k = torch.tensor([float("inf"), float("inf"), float("inf"), 0.2, float("-inf")])
    s = inference.khat_summary(k)
    assert float(s["khat_median"]) == 10.0  # +inf counted, clipped to a number
    assert abs(float(s["khat_frac_above"]) - 0.6) < 1e-12
    s = inference.khat_summary(torch.tensor([float("-inf")] * 3 + [0.9, float("nan")]))
    assert float(s["khat_median"]) == -1.0 and abs(float(s["khat_frac_above"]) - 0.25) < 1e-12


def test_a_singular_posterior_is_marked_never_a_linalg_error():
    # a decoder that ignores its second latent: the posterior there is the prior's, flat in
    # the likelihood; under a uniform prior the Hessian is singular at the box's centre
    from pyro_ima import models, priors
    vae = models.GaussianVAE(lambda z: z[..., :1].expand(z.shape[:-1] + (2,)), priors.uniform(2),
                             1e4)
    guide = models.DiagonalGuide(vae, models.MLP(2, 4, seed=0), init_scale=0.01)
    x = torch.full((5, 2), 0.5)
    res = inference.importance_log_px(vae, guide, x, num_samples=50, proposal="laplace",
                                      khat_warn=1.0)
    assert res.log_px.shape == (5,)
    with pytest.warns(RuntimeWarning, match="singular Jacobian"):  # the contrasts say so
        rep = inference.gap_report(vae, guide, x, num_samples=50,
                                   refine=inference.RefineConfig(steps=2))
    assert rep["predicted_gap"].shape == (5,)
    assert bool(torch.isinf(rep["c_ima"]).all())



def test_a_refused_run_leaves_no_directory_or_lock_behind(tmp_path):
    out = tmp_path / "new"
    assert main(["train", *TINY[2:], "--data", str(tmp_path / "no.npy"), "--out", str(out)]) == 2
    assert not out.exists()
    out.mkdir()  # the user's own empty directory stays, without our lock file
    assert main(["train", *TINY[2:], "--data", str(tmp_path / "no.npy"), "--out", str(out)]) == 2
    assert out.is_dir() and list(out.iterdir()) == []


def test_a_study_runs_with_a_config_of_its_own(tmp_path):
    import dataclasses

    from pyro_ima.experiments import beta_gamma, run_study
    cfg = dataclasses.replace(beta_gamma.QUICK, ratios=(1e2,), betas=(1.0, 4.0), points=20,
                              refine_steps=20, is_samples=50)
    meta = run_study("beta_gamma", tmp_path / "a", quick=True, progress=False, config=cfg)
    assert list(meta["config"]["ratios"]) == [100.0]
    assert len(meta["summary"]["spread_across_beta"]) == 1
    # the config is part of the cache key: QUICK in the same directory is another study
    with pytest.raises(ValueError, match="another config"):
        run_study("beta_gamma", tmp_path / "a", quick=True, progress=False)
    with pytest.raises(TypeError, match="config"):
        run_study("beta_gamma", tmp_path / "b", quick=True, config={"ratios": (1e2,)})
