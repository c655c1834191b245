"""The command line: help, a tiny train run, one-line errors with exit status 2."""

import json
import os
import subprocess
import sys

import pytest

from pyro_ima.cli import main

TINY = ["--n", "200", "--epochs", "2", "--batch-size", "32", "--hidden", "8", "--quiet"]


def test_help_documents_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--mixing", "--prior", "--guide", "--gamma2", "--epochs", "--seed", "--out"):
        assert flag in out


def test_tiny_train_writes_valid_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--guide", "full", "--gamma2", "1e3", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["guide"] == "full" and res["config"]["gamma2"] == 1e3
    assert set(res["elbo"]) == {"train", "val", "test"}
    assert len(res["history"]) == res["epochs_run"] == 2
    assert "torch" in res["versions"]
    assert (out / "state.pt").exists()
    assert "ELBO train" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["--mixing", "nope"], "--mixing"),
    (["--prior", "cauchy"], "--prior"),
    (["--guide", "banana"], "--guide"),
    (["--gamma2", "0"], "--gamma2"),
    (["--gamma2", "-1"], "--gamma2"),
    (["--gamma2", "nan"], "--gamma2"),
    (["--gamma2", "inf"], "--gamma2"),
    (["--beta", "0"], "--beta"),
    (["--dim", "0"], "--dim"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "100000"], "batch_size"),
    (["--n", "five"], "--n"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, needle):
    code = main(["train", *TINY, *args, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err


def test_unwritable_out_dir_is_a_one_line_error(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        assert main(["train", *TINY, "--out", str(ro / "x")]) == 2
    finally:
        os.chmod(ro, 0o700)
    f = tmp_path / "file"
    f.write_text("")
    assert main(["train", *TINY, "--out", str(f)]) == 2
    assert capsys.readouterr().err.count("\n") == 2


def test_python_m_entry_point_and_exit_status():
    r = subprocess.run([sys.executable, "-m", "pyro_ima", "train", "--gamma2", "0",
                        "--out", "/tmp/never"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "gamma2" in r.stderr


def test_train_then_evaluate_reports_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("mcc_pearson", "c_ima", "log_px_is", "khat_median", "gap"):
        assert key in res["metrics"]
    assert main(["evaluate", str(out), "--points", "20", "--samples", "50"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["mcc_pearson"] <= 1
    assert "MCC" in capsys.readouterr().out


def test_evaluate_rejects_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"hello": 1}')
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a pyro-ima results file" in capsys.readouterr().err
    (tmp_path / "results.json").write_text("{corrupt")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("mixing,prior", [("smooth_leaky_mlp", "gaussian"),
                                          ("triangular_mlp", "laplace"),
                                          ("orthogonal_mlp", "logistic"),
                                          ("moebius", "beta")])
def test_every_mixing_and_prior_trains_from_the_cli(tmp_path, mixing, prior):
    out = tmp_path / mixing
    assert main(["train", *TINY, "--dim", "2", "--mixing", mixing, "--prior", prior,
                 "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["mixing"] == mixing


def test_moebius_with_unbounded_prior_is_refused(tmp_path, capsys):
    assert main(["train", *TINY, "--mixing", "moebius", "--prior", "gaussian",
                 "--out", str(tmp_path)]) == 2
    assert "bounded prior" in capsys.readouterr().err


def test_sprites_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_IMA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sprites"
    assert main(["train", "--mixing", "sprites", "--prior", "beta", "--dim", "4", "--n", "60",
                 "--epochs", "1", "--batch-size", "8", "--gamma2", "1", "--quiet",
                 "--eval-points", "4", "--eval-samples", "8", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert "mcc_pearson" in res["metrics"] and "c_ima" in res["metrics"]
    assert res["sprites_geometry"] == "triangle"
    assert main(["evaluate", str(out), "--points", "4"]) == 0
    assert main(["train", "--mixing", "sprites", "--prior", "uniform", "--dim", "4",
                 "--out", str(out)]) == 2
    # a run trained before the triangle (no record: the large square) is refused, not
    # silently evaluated on other images
    del res["sprites_geometry"]
    (out / "results.json").write_text(json.dumps(res))
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 2
    err = capsys.readouterr().err
    assert "large-square renderer" in err and "train again" in err and len(err.splitlines()) == 1


def test_evaluate_keeps_the_run_dtype_unless_asked(tmp_path):
    out = tmp_path / "run64"
    assert main(["train", *TINY, "--dtype", "float64", "--eval-points", "10",
                 "--eval-samples", "20", "--out", str(out)]) == 0
    assert main(["evaluate", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["dtype"], m["device"]) == ("float64", "cpu")
    assert main(["evaluate", str(out), "--dtype", "float32"]) == 0
    assert json.loads((out / "metrics.json").read_text())["dtype"] == "float32"
