"""The benchmark scripts run (tiny sizes) and print their ratios."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parent.parent / "benchmarks"


SLOW = pytest.mark.slow  # fresh processes for memory, Dask clusters, many estimates


@pytest.mark.parametrize("script,args,needle", [
    pytest.param("bench_metrics.py", ["--points", "200", "--samples", "20"],
                 "ratio library/baseline", marks=SLOW),
    ("bench_replicas.py", ["--replicas", "3", "--steps", "5", "--repeats", "1"], "speed-up"),
    ("bench_training_loop.py", ["--replicas", "4", "--n", "900", "--epochs", "3"],
     "5. fit step, Adam: fused"),
    ("bench_sprites.py", ["--n", "300", "--baseline-n", "100", "--geometry", "square"],
     "max pixel difference 0"),
    ("bench_sprites.py", ["--n", "300", "--baseline-n", "100"], "ratio"),
    ("bench_conv_batching.py", ["--replicas", "2", "--batch", "2", "--steps", "1"],
     "ratio grouped / loop"),
    ("reproduce_results.py", ["reference-moebius-scale"], "squared ratio of medians"),
    pytest.param("reproduce_results.py", ["is-vs-quadrature"], "log p_gamma quadrature",
                 marks=SLOW),
    pytest.param("bench_sweep.py", ["--study", "beta_gamma"], "goal below 5%", marks=SLOW),
    pytest.param("bench_estimators.py", ["--quick"], "approximation gap", marks=SLOW),
    pytest.param("calibrate_reliability.py", ["--quick", "--points", "10"],
                 "inference.reliability", marks=SLOW),
])
def test_benchmark_runs(script, args, needle):
    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert needle in r.stdout


@pytest.fixture
def reproduce(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import reproduce_results
    return reproduce_results


def test_seed_ranges_parse_inclusively_and_refuse_malformed_text(reproduce):
    import argparse
    assert reproduce._seed_range("1-10") == tuple(range(1, 11))
    assert reproduce._seed_range("3") == (3,) and reproduce._seed_range("2-2") == (2,)
    for bad in ("1-", "-3", "3-1", "a", "1-2-3", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="A-B"):
            reproduce._seed_range(bad)


def test_draws_interval_takes_each_draws_mean_as_the_unit(reproduce, tmp_path, capsys):
    import json

    import numpy as np
    from scipy import stats
    rng = np.random.default_rng(0)
    rows = [{"part": "learned", "metric": "mcc", "mixing": "m", "mixing_seed": k, "family": f,
             "value": float(rng.uniform(0.5, 1.0)), "failed": False}
            for k in (1, 2, 3, 4) for f in ("diagonal", "isotropic", "full") for _ in range(5)]
    rows.append({**rows[0], "value": None, "failed": True})  # left out, counted
    (tmp_path / "results.json").write_text(json.dumps({"kind": "results", "rows": rows}))
    mcc = reproduce._mcc_by(str(tmp_path), "learned",
                            lambda r: (r["mixing"], r["mixing_seed"], r["family"]))
    assert "1 failed replica(s) left out" in capsys.readouterr().out
    assert all(len(v) == 5 for v in mcc.values())
    reproduce._by_draw(mcc, ("m",), (1, 2, 3, 4))
    d = np.array([np.mean(mcc[("m", k, "diagonal")]) - np.mean(mcc[("m", k, "isotropic")])
                  for k in (1, 2, 3, 4)])
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2  # sqrt(4 draws)
    out = capsys.readouterr().out
    assert f"= {d.mean():.3f} [{d.mean() - half:.3f}, {d.mean() + half:.3f}]" in out, out


def test_guide_families_protocol_options_reach_the_study_and_name_its_directory(reproduce,
                                                                                monkeypatch):
    from pyro_ima import experiments
    seen = {}

    class Stop(Exception):
        pass

    def fake_run_study(name, out, **kw):
        seen.update(name=name, out=out, cfg=kw["config"])
        raise Stop
    monkeypatch.setattr(experiments, "run_study", fake_run_study)
    with pytest.raises(Stop):
        reproduce.main(["guide-families", "--out-root", "R", "--mixings", "orthogonal_mlp",
                        "--seed-offset", "300", "--kl-warmup-beta", "0.01", "--patience", "10",
                        "--epochs", "200", "--prior-scale", "1"])
    cfg = seen["cfg"]
    assert (cfg.kl_warmup_beta, cfg.kl_warmup_epochs, cfg.patience, cfg.epochs,
            cfg.learned_prior_scale, cfg.seed_offset) == (0.01, 10, 10, 200, 1.0, 300)
    assert seen["out"] == ("R/guide_families_orthogonal_mlp_from300_epochs200"
                           "_kl_warmup_beta0.01_learned_prior_scale1_patience10")
    with pytest.raises(Stop):  # without them: the study's own protocol and directory
        reproduce.main(["guide-families"])
    assert seen["out"].endswith("/guide_families") and seen["cfg"].kl_warmup_beta is None
    assert seen["cfg"].patience == 3 and seen["cfg"].learned_prior_scale == 0.2
    for bad in (["--kl-warmup-epochs", "5"], ["--epochs", "0"]):  # refused before any work
        with pytest.raises(SystemExit):
            reproduce.main(["guide-families", *bad])


def test_explore_orthogonal_mlp_variants_and_run(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import explore_orthogonal_mlp as ex
    z = 0.01 * torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    mlp, matched = ex.mixing("orthogonal_mlp", 3, 0), ex.mixing("linear-matched", 3, 0)
    lin = ex.mixing("linear", 3, 0)
    # linear-matched is orthogonal_mlp's first-order expansion at 0: sigma(z) = 0.8 log 2 +
    # 0.6 z + 0.1 z^2 + O(z^3), so the error is at most ~0.1 z^2 max(s) sqrt(3) (W orthogonal)
    bound = 0.11 * float(z.abs().max()) ** 2 * 10 ** 0.5 * 3 ** 0.5 + 1e-6
    assert (mlp(z) - matched(z)).abs().max() < bound < (mlp(z) - lin(z)).abs().max()
    assert torch.allclose(mlp(torch.zeros(1, 3)), matched(torch.zeros(1, 3)), atol=1e-6)
    out = ex.main(["linear", "--n", "300", "--seeds", "2", "--epochs", "1",
                   "--kl-warmup-beta", "0.1", "--kl-warmup-epochs", "1"])
    text = capsys.readouterr().out
    assert "seed 1: MCC" in text and "KL warm-up beta 0.1 x 1 epochs" in text
    assert out["mcc"].shape == (2,) and bool(((out["mcc"] > 0) & (out["mcc"] <= 1)).all())
    ex.main(["orthogonal_mlp", "--n", "300", "--seeds", "1", "--epochs", "1",
             "--true-decoder", "--prior-scale", "1"])
    assert "true decoder held fixed" in capsys.readouterr().out
    # the study's own training: the same numbers as guide_families part B
    import dataclasses

    from pyro_ima.experiments import guide_families
    out = ex.main(["orthogonal_mlp", "--n", "300", "--seeds", "2", "--seed-offset", "5",
                   "--epochs", "2", "--draw", "3", "--kl-warmup-beta", "0.1",
                   "--kl-warmup-epochs", "1"])
    cfg = dataclasses.replace(guide_families.FULL, n=300, seeds=2, seed_offset=5, epochs=2,
                              kl_warmup_beta=0.1, kl_warmup_epochs=1)
    rows = guide_families.run_setting({"part": "learned", "mixing": "orthogonal_mlp",
                                       "mixing_seed": 3, "family": "diagonal"}, cfg)
    assert [r["value"] for r in rows] == out["mcc"].tolist()
    for bad in (["--kl-warmup-epochs", "5"], ["--prior-scale", "0"], ["--patience", "0"]):
        with pytest.raises(SystemExit):  # one line from argparse, before any work
            ex.main(["linear", *bad])


def test_sprites_xavier_init_redraws_every_linear_weight_as_the_official_code(reproduce,
                                                                              monkeypatch):
    import math

    from pyro_ima import models, sprites
    monkeypatch.setattr(sprites, "sprites_dataset", lambda cfg: None)  # networks only
    _, vae, guide = reproduce._sprites_vae("triangle", init="xavier")
    linears = [m for net in (vae.decoder, guide.encoder) for m in net.modules()
               if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 6
    for m in linears:
        fan_out, fan_in = m.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = m.weight.detach()
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.9 * bound  # drawn over the whole range
    # PyTorch's default draws the decoder's first layer (4 -> 256) from U(-1/2, 1/2), far
    # outside Xavier's bound 0.15; the default option keeps those weights untouched
    _, vae0, _ = reproduce._sprites_vae("triangle")
    torch.testing.assert_close(vae0.decoder.mlp[0].weight,
                               models.ConvDecoder(4, seed=0).mlp[0].weight)
    assert float(vae0.decoder.mlp[0].weight.detach().abs().max()) > 0.4


def test_sprites_diagnostic_priors_start_where_documented(reproduce, monkeypatch):
    # "learned": the symmetric Beta (the mean of the generator's (a, b)) as the start of the
    # library's learned prior; "true": the generator's own, fixed
    from pyro_ima import sprites
    monkeypatch.setattr(sprites, "sprites_dataset", lambda cfg: None)  # networks only
    a, b = sprites.default_beta_params(0)
    _, vae, _ = reproduce._sprites_vae("triangle", prior="learned")
    start = vae.learned_prior.values()
    torch.testing.assert_close(start["concentration1"], torch.full((1, 4), float(a.mean())))
    torch.testing.assert_close(start["concentration0"], torch.full((1, 4), float(b.mean())))
    _, fixed, _ = reproduce._sprites_vae("triangle")
    assert fixed.learned_prior is None and list(fixed.prior.base_dist.concentration1) == \
        pytest.approx(list(a))


def test_sprites_oracle_passes_its_optimizer_options_and_prints_the_correlations(
        reproduce, monkeypatch, tmp_path, capsys):
    import dataclasses

    from pyro_ima import inference, sprites
    real_dataset, real_fit, seen = sprites.sprites_dataset, inference.fit, []
    monkeypatch.setattr(sprites, "sprites_dataset", lambda cfg: real_dataset(
        dataclasses.replace(cfg, n=60), cache_dir=tmp_path))  # 42 training images

    def fit(*args, **kwargs):
        seen.append((kwargs["lr"], kwargs["batch_size"], kwargs["epochs"]))
        return real_fit(*args, **kwargs)
    monkeypatch.setattr(inference, "fit", fit)
    reproduce.main(["sprites-oracle", "--arm", "random", "--epochs", "2", "--lr", "2e-4",
                    "--batch-size", "8", "--threads", "1"])
    assert seen == [(2e-4, 8, 2)]
    out = capsys.readouterr().out
    assert "epoch 2: MCC" in out
    rows = out.split("|corr| of each factor (row) with latents z0..z3:\n")[1].splitlines()
    assert [r.split(":")[0].strip() for r in rows] == ["x", "y", "size", "hue"]
    assert all(0 <= float(c) <= 1 for r in rows for c in r.split(":")[1].split())
    assert "learned prior" not in out
    reproduce.main(["sprites-oracle", "--arm", "random", "--epochs", "2", "--batch-size", "8",
                    "--threads", "1", "--sprites-prior", "learned"])
    line = capsys.readouterr().out.split("learned prior (a, b) of z0..z3: ")[1].splitlines()[0]
    pairs = [tuple(map(float, p.strip("()").split(", "))) for p in line.split("  ")]
    a, b = sprites.default_beta_params(0)  # learned from the symmetric start, per latent
    start = (round(float(a.mean()), 2), round(float(b.mean()), 2))
    assert len(pairs) == 4 and pairs != [start] * 4
    assert all(abs(p - s) < 1.0 for pair in pairs for p, s in zip(pair, start, strict=True))
    seen.pop()
    with pytest.raises(SystemExit, match="--batch-size: expected at most 4200"):
        reproduce.main(["sprites-oracle", "--batch-size", "5000"])
    assert seen == [(2e-4, 8, 2)]  # refused before any work
    for bad in ("0", "-1e-3", "nan", "fast"):
        with pytest.raises(SystemExit):
            reproduce.main(["sprites-oracle", "--lr", bad])
    assert "--lr: expected a finite number > 0" in capsys.readouterr().err


def test_sprites_oracle_renders_sprites_n_images_and_validates_on_val_points(
        reproduce, monkeypatch, tmp_path):
    import dataclasses

    from pyro_ima import inference, sprites
    real_dataset, real_fit, asked, seen = sprites.sprites_dataset, inference.fit, [], []

    def dataset(cfg):
        asked.append(cfg.n)
        return real_dataset(dataclasses.replace(cfg, n=cfg.n // 100), cache_dir=tmp_path)
    monkeypatch.setattr(sprites, "sprites_dataset", dataset)

    def fit(vae, guide, train, val, **kwargs):
        seen.append((len(train), len(val)))
        return real_fit(vae, guide, train, val, **kwargs)
    monkeypatch.setattr(inference, "fit", fit)
    reproduce.main(["sprites-oracle", "--arm", "random", "--epochs", "1", "--batch-size", "8",
                    "--threads", "1", "--sprites-n", "6000", "--val-points", "5"])
    reproduce.main(["sprites-oracle", "--arm", "random", "--epochs", "1", "--batch-size", "8",
                    "--threads", "1", "--sprites-n", "6000"])
    assert asked == [6000, 6000] and seen == [(42, 5), (42, 12)]
    with pytest.raises(SystemExit, match="--val-points: expected at most 12000"):
        reproduce.main(["sprites-oracle", "--sprites-n", "60000", "--val-points", "12001"])
    with pytest.raises(SystemExit, match="--sprites-n: 5 points split"):
        reproduce.main(["sprites-oracle", "--sprites-n", "5"])
    assert len(seen) == 2  # refused before any work


def test_time_studies_script_runs_the_four_in_two_lanes_and_stops_on_a_failure(tmp_path):
    # a stand-in for pyro-ima: self_consistency fails (or not) after 0.2 s, linear_contrast
    # would run 30 s; a failure must end the script with its status and leave nothing running
    import subprocess
    import time
    from pathlib import Path
    fake = tmp_path / "pyro-ima"
    fake.write_text("#!/usr/bin/env bash\necho \"$2\" >> \"$LOG\"\ncase \"$2\" in\n"
                    "  self_consistency) sleep 0.2; exit ${FAIL:-0};;\n"
                    "  linear_contrast) sleep ${LONG:-0.4};;\nesac\n")
    fake.chmod(0o755)
    script = Path(__file__).parents[1] / "benchmarks" / "time_studies_1_4.sh"

    def run(**env):
        log = tmp_path / f"log{len(list(tmp_path.glob('log*')))}"
        t = time.perf_counter()
        p = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True,
                           text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "PYRO_IMA": str(fake), "LOG": str(log),
                                **env})
        return p, log.read_text().split(), time.perf_counter() - t
    p, calls, _ = run()
    assert p.returncode == 0 and "studies 1-4:" in p.stdout
    assert sorted(calls[:2]) == ["linear_contrast", "self_consistency"]
    # self_consistency ends first: its lane goes on with moebius while linear_contrast runs
    assert calls[2:] == ["moebius", "elbo_vs_lima"]
    p, calls, seconds = run(FAIL="3", LONG="30.4127")
    assert p.returncode == 3 and seconds < 20
    assert "elbo_vs_lima" not in calls and "moebius" not in calls
    time.sleep(0.2)
    running = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            running.append(cmdline.read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # a process that ended meanwhile
            pass
    assert not [c for c in running if c.startswith("sleep 30.4127")]  # nothing left
