"""Studies: --quick runs give the qualitative result, write their files and resume."""

import json

import pytest
import torch
from torch.testing import assert_close

from pyro_ima import models, priors
from pyro_ima.cli import main

VOLATILE = ("value", "setting_seconds")  # compared to float rounding / wall clock


@pytest.fixture(scope="module")
def self_consistency_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sc")
    assert main(["experiment", "self_consistency", "--quick", "--quiet", "--out", str(out)]) == 0
    return out


def test_self_consistency_quick_slope_and_files(self_consistency_run):
    out = self_consistency_run
    summary = json.loads((out / "summary.json").read_text())
    slope = summary["summary"]["encoder_variance"]["slope"]
    assert -1.3 < slope < -0.8  # Prop. 1: -1
    assert summary["summary"]["reconstruction_error"]["slope"] < 0
    for f in ("results.csv", "results.json", "self_consistency.png", "self_consistency.pdf"):
        assert (out / f).exists()
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 3 * 3 * 11  # gamma2 x seeds x metrics (7 measured + 4 training facts)
    # the encoder converges to the learned decoder's inverse (Prop. 1: slope about -1/2)
    assert summary["summary"]["inverse_error"]["slope"] < 0
    assert summary["summary"]["training"]["replicas"] == 9
    assert {"replica", "seed", "gamma2", "metric", "value"} <= set(rows[0])


def test_rerun_resumes_without_recomputing(self_consistency_run, capsys):
    out = self_consistency_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "settings").iterdir()}
    assert main(["experiment", "self_consistency", "--quick", "--quiet", "--out", str(out)]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "settings").iterdir()}
    assert before == after and len(before) == 3
    assert "held" in capsys.readouterr().out


def test_unknown_study_is_a_one_line_error(capsys):
    assert main(["experiment", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_moebius_quick_decoder_contrast_collapses_at_large_gamma(tmp_path):
    out = tmp_path / "mo"
    head = tmp_path / "results" / "moebius.json"
    assert main(["experiment", "moebius", "--quick", "--quiet", "--out", str(out),
                 "--summary-to", str(head)]) == 0
    s = json.loads((out / "summary.json").read_text())["summary"]
    h = json.loads(head.read_text())  # the committed-summary format, written by the study
    assert set(h["mcc_by_gamma2"]) == {"1e1", "1e5"} and h["quick"] is True
    assert h["compute_seconds"] >= h["seconds"] * 0.5 > 0  # the settings ran in this call
    assert h["command"] == (f"pyro-ima experiment moebius --quick --out {out} "
                            f"--summary-to {head}")  # the call that wrote it (tmp: no quotes)
    assert h["custom_config"] is False
    assert h["mcc_by_gamma2"]["1e5"] == s["mcc"][next(k for k in s["mcc"]
                                                     if float(k) == 1e5)]["mean"]
    c_ima = {float(g): v["mean"] for g, v in s["c_ima"].items()}
    mcc = {float(g): v["mean"] for g, v in s["mcc"].items()}
    # the robust part at this size: the learned decoder becomes (near-)IMA as gamma2 grows
    assert c_ima[1e5] < 0.1 < c_ima[1e1]
    assert all(0 <= v <= 1 for v in mcc.values())
    assert (out / "moebius.png").exists() and (out / "moebius.pdf").exists()


def test_headline_command_parses_back_and_flags_a_custom_config(tmp_path):
    import dataclasses
    import shlex

    from pyro_ima.cli import build_parser
    from pyro_ima.experiments import moebius, run_study
    from pyro_ima.experiments.executors import Executor
    tiny = dataclasses.replace(moebius.QUICK, gamma2s=(1e1,), seeds=1, n=300, epochs=1,
                               warmup_gamma2=None)
    out, head = tmp_path / "a dir" / "mo", tmp_path / "h e.json"
    with Executor("processes", workers=1, threads_per_worker=1) as ex:
        run_study("moebius", out, progress=False, dtype="float64", executor=ex,
                  summary_to=head, config=tiny)
    h = json.loads(head.read_text())
    assert h["custom_config"] is True and h["config"]["n"] == 300
    words = shlex.split(h["command"])
    assert words[:2] == ["pyro-ima", "experiment"]
    a = build_parser().parse_args(words[1:])
    assert (a.name, a.quick, a.out, a.summary_to, a.dtype, a.device) == \
        ("moebius", False, str(out), str(head), "float64", "cpu")
    assert (a.executor, a.workers, a.threads_per_worker) == ("processes", 1, 1)


def test_elbo_vs_lima_quick_gap_tends_to_c_ima(tmp_path):
    out = tmp_path / "el"
    assert main(["experiment", "elbo_vs_lima", "--quick", "--quiet", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())["summary"]
    tri, orth = s["triangular"], s["orthogonal"]
    top = max(tri["gap_exact"], key=float)
    c_ima = tri["c_ima"][top]
    assert c_ima > 1.0
    assert abs(tri["gap_exact"][top] / c_ima - 1) < 0.1  # log p - ELBO* -> C_IMA
    assert abs(tri["elbo_star"][top] - tri["l_ima"][top]) < 0.1  # ELBO* -> L_IMA
    assert abs(orth["approximation_gap"][top]) < 0.05  # IMA class: the gap closes
    low = min(tri["approximation_gap"], key=float)
    assert tri["approximation_gap"][low] < tri["approximation_gap"][top]


def test_linear_contrast_quick_mcc_falls_outside_the_ima_class(tmp_path):
    out = tmp_path / "lc"
    assert main(["experiment", "linear_contrast", "--quick", "--quiet", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())["summary"]["per_contrast"]
    ima, non_ima = s["0.0"], s["6.0"]
    assert abs(ima["mixing_c_ima"]) < 1e-4 and non_ima["mixing_c_ima"] > 5
    assert ima["mcc"] > non_ima["mcc"] + 0.1


def test_guide_families_quick_gaps_match_each_familys_limit(tmp_path):
    out = tmp_path / "gf"
    assert main(["experiment", "guide_families", "--quick", "--quiet", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())["summary"]
    fixed = s["fixed"]

    def at_top(key, metric):
        m = fixed[key][metric]
        return m[max(m, key=float)]

    # the conformal conjecture: the isotropic guide pays c_conf, the diagonal one c_IMA
    iso = at_top("orthogonal_mlp/isotropic", "approximation_gap")
    assert at_top("orthogonal_mlp/isotropic", "predicted_limit") > 1.0
    assert abs(iso / at_top("orthogonal_mlp/isotropic", "predicted_limit") - 1) < 0.1
    for key in ("orthogonal_mlp/diagonal", "moebius/isotropic", "moebius/diagonal",
                "smooth_leaky_mlp/full", "orthogonal_mlp/full", "moebius/full"):
        assert abs(at_top(key, "approximation_gap")) < 0.05, key
    assert set(s["learned_mcc"]) == {f"{m}/{f}" for m in ("moebius", "orthogonal_mlp")
                                     for f in ("diagonal", "isotropic", "full")}
    assert 0.80 < s["rotation_chance_mcc"] < 0.86  # 3-D Gaussian latents, random rotations


def test_guide_families_warmup_trains_below_the_target_first(monkeypatch):
    import dataclasses

    from pyro_ima.experiments import common, guide_families
    seen = []
    real = common.train

    def spy(vae, *a, **k):
        seen.append(vae.gamma2.tolist())
        return real(vae, *a, **k)
    monkeypatch.setattr(common, "train", spy)  # the warm-up's
    monkeypatch.setattr(guide_families, "train", spy)  # the study's own
    cfg = dataclasses.replace(guide_families.QUICK, n=300, seeds=2, epochs=1,
                              warmup_gamma2=1e2, warmup_epochs=1)
    setting = {"part": "learned", "mixing": "orthogonal_mlp", "family": "isotropic"}
    rows = guide_families.run_setting(setting, cfg)
    assert seen[0] == [1e2, 1e2] and seen[1] == [1e3, 1e3] and seen[-1] == [1e4, 1e4]
    assert len(seen) == 3 and all(0 <= r["value"] <= 1 for r in rows)
    seen.clear()
    guide_families.run_setting(setting, dataclasses.replace(cfg, warmup_gamma2=None))
    assert seen == [[1e4, 1e4]]


def test_guide_families_kl_warmup_trains_at_the_lower_beta_first(monkeypatch):
    import dataclasses

    from pyro_ima.experiments import common, guide_families
    seen = []
    real = common.train

    def spy(vae, *a, **k):
        seen.append((vae.beta.tolist(), k.get("patience", "cfg"),
                     round(float(vae.prior.variance.mean()), 6)))
        return real(vae, *a, **k)
    monkeypatch.setattr(common, "train", spy)
    monkeypatch.setattr(guide_families, "train", spy)
    cfg = dataclasses.replace(guide_families.QUICK, n=300, seeds=2, epochs=1,
                              kl_warmup_beta=0.01, kl_warmup_epochs=1)
    setting = {"part": "learned", "mixing": "orthogonal_mlp", "family": "diagonal"}
    rows = guide_families.run_setting(setting, cfg)
    assert seen == [(pytest.approx([0.01, 0.01]), None, 0.04), ([1.0, 1.0], "cfg", 0.04)]
    seen.clear()  # the latent scale: the prior's (and the sources') sd
    guide_families.run_setting(setting, dataclasses.replace(cfg, kl_warmup_beta=None,
                                                             learned_prior_scale=1.0))
    assert seen == [([1.0, 1.0], "cfg", 1.0)]
    assert all(0 <= r["value"] <= 1 for r in rows)


def test_guide_families_trains_each_draw_of_a_mixing_on_its_own_data(monkeypatch):
    import dataclasses

    from pyro_ima.experiments import guide_families
    cfg = dataclasses.replace(guide_families.QUICK, n=300, seeds=2, epochs=1,
                              learned_mixings=("orthogonal_linear",), mixing_seeds=(0, 3))
    learned = [s for s in guide_families.settings(cfg) if s["part"] == "learned"]
    assert [(s["mixing_seed"], s["family"]) for s in learned] == [
        (k, f) for k in (0, 3) for f in guide_families.FAMILIES]
    drawn = []
    real = guide_families.data.make_dataset

    def spy(f, p0, n, seed):
        drawn.append((f.weight.clone(), seed))
        return real(f, p0, n=n, seed=seed)
    monkeypatch.setattr(guide_families.data, "make_dataset", spy)
    rows = guide_families.run_setting(learned[-1], cfg)
    (w3, seed3), = drawn
    assert seed3 == 3 and {r["mixing_seed"] for r in rows} == {3}
    w0 = guide_families.make_mixing("orthogonal_linear", 3).weight
    assert torch.allclose(w3, guide_families.make_mixing("orthogonal_linear", 3, seed=3).weight)
    assert not torch.allclose(w3, w0, atol=0.1)


def test_guide_families_summary_takes_draws_as_units_and_leaves_failed_replicas_out():
    from pyro_ima.experiments import guide_families

    def row(k, fam, v, failed=False):
        return {"part": "learned", "metric": "mcc", "mixing": "m", "mixing_seed": k,
                "family": fam, "value": v, "failed": failed}
    rows = [row(1, "diagonal", 0.9), row(1, "diagonal", 0.7), row(2, "diagonal", 0.6),
            row(2, "diagonal", 0.1, failed=True), row(2, "diagonal", None, failed=True)]
    s = guide_families.summarize(rows)
    assert s["learned_failed"] == 2 and s["learned_draws"] == 2
    assert s["learned_mcc_by_draw"] == pytest.approx({"m/1/diagonal": 0.8, "m/2/diagonal": 0.6})
    assert s["learned_mcc"]["m/diagonal"] == pytest.approx((0.9 + 0.7 + 0.6) / 3)
    assert "2 draws, pooled" in guide_families.table(s)
    one = guide_families.summarize(rows[:2])
    assert "learned_mcc_by_draw" not in one and "pooled" not in guide_families.table(one)


def test_a_study_config_refused_before_its_directory_is_made(tmp_path):
    import dataclasses

    from pyro_ima.experiments import guide_families, run_study
    for bad in ((1, 1), 3, ()):
        with pytest.raises((ValueError, TypeError), match="mixing_seeds"):
            run_study("guide_families", tmp_path / "gf", progress=False, config=dataclasses.replace(
                guide_families.QUICK, mixing_seeds=bad))
    assert not (tmp_path / "gf").exists()


def test_guide_families_linear_mixing_is_ima_not_conformal_and_unknown_names_refused():
    from pyro_ima import metrics
    from pyro_ima.experiments import guide_families
    f = guide_families.make_mixing("orthogonal_linear", 3)
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    J = metrics.jacobian(f, z)
    assert torch.allclose(J, J[:1].expand_as(J), atol=1e-6)  # linear: one Jacobian
    assert float(metrics.ima_contrast(J).max()) < 1e-6 < 0.5 < float(
        metrics.conformal_contrast(J).min())
    with pytest.raises(ValueError, match="mixing"):
        guide_families.make_mixing("orthogonal", 3)


def test_a_study_reruns_from_its_results_file(self_consistency_run, tmp_path):
    src = self_consistency_run / "results.json"
    out = tmp_path / "again"
    assert main(["experiment", "--from", str(src), "--quiet", "--out", str(out)]) == 0
    a = json.loads(src.read_text())
    b = json.loads((out / "results.json").read_text())
    assert b["study"] == "self_consistency" and b["quick"] is True
    assert len(a["rows"]) == len(b["rows"])  # same seeds and sizes: the same numbers
    for ra, rb in zip(a["rows"], b["rows"], strict=True):  # (to BLAS rounding, see
        assert {k: v for k, v in ra.items() if k not in VOLATILE} == \
            {k: v for k, v in rb.items() if k not in VOLATILE}  # test_reliability)
        assert abs(ra["value"] - rb["value"]) <= 1e-5 * (1 + abs(rb["value"]))
    assert all(r["failed"] is False for r in b["rows"])
    assert main(["experiment", "--from", str(tmp_path / "nothing.json")]) == 2


def test_beta_gamma_quick_gaps_collapse_onto_the_ratio(tmp_path):
    out = tmp_path / "bg"
    assert main(["experiment", "beta_gamma", "--quick", "--quiet", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())["summary"]
    by = {float(r): v for r, v in s["gap_by_ratio_and_beta"].items()}
    assert max(s["spread_across_beta"].values()) < 0.2  # same gamma2/beta: same gap
    means = {r: sum(v.values()) / len(v) for r, v in by.items()}
    assert means[1e4] - means[1e2] > 0.4  # while different ratios differ


@pytest.mark.slow  # about a minute: six settings of linear and learned decoders
def test_encoder_side_quick_learned_noise_moves_the_penalty_to_the_rows(tmp_path):
    out = tmp_path / "es"
    assert main(["experiment", "encoder_side", "--quick", "--quiet", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())["summary"]
    iso, learned = s["row_orthogonal/isotropic_noise"], s["row_orthogonal/learned_tau"]
    assert iso["c_conf"] > 0.5 and abs(iso["gap"] / iso["c_conf"] - 1) < 0.1
    assert abs(learned["c_row"]) < 1e-9 and learned["gap"] < 0.15  # c_row = 0: gap closes
    # a generic W: after the tau warm-up the trained model sits at the exact optimum over tau,
    # below c_conf and near c_row (0.6959 at gamma2 = 1e2, c_row 0.7089 in the limit)
    gen = s["generic/learned_tau"]
    assert abs(gen["gap_exact"] - gen["gap_optimum"]) < 0.01
    assert gen["gap_optimum"] < gen["c_conf"] - 0.1
    assert abs(gen["gap_optimum"] - gen["c_row"]) < 0.03
    # part B: with learned tau the isotropic learner's decoder reaches the row-orthogonal class
    # when the data has it (c_row = 0) and cannot when it does not (c_row = 4)
    iso = s["learned_decoder"]["isotropic_learned_tau"]["per_contrast"]
    assert iso["0.0"]["decoder_c_row"] < 0.1 < 1.0 < iso["4.0"]["decoder_c_row"]
    assert all(0 <= v["mcc"] <= 1 for v in iso.values())


def test_sprites_quick_runs_and_reports_per_factor_mcc(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_IMA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sp"
    head = tmp_path / "sprites.json"
    assert main(["experiment", "sprites", "--quick", "--quiet", "--out", str(out),
                 "--summary-to", str(head)]) == 0
    s = json.loads((out / "summary.json").read_text())["summary"]["by_gamma2"]["1.0"]
    for k in ("mcc", "mcc_x", "mcc_y", "mcc_scale", "mcc_hue"):
        assert 0 <= s[k] <= 1
    assert s["c_ima"] >= 0 and s["seeds"] == 2
    h = json.loads(head.read_text())
    assert h["mcc_mean"] == s["mcc"] and h["mcc_per_factor"]["size"] == s["mcc_scale"]
    assert set(h["mcc_per_factor"]) == {"x", "y", "size", "hue"}
    assert h["geometry"] == "triangle"  # named in the figure's caption too
    assert json.loads((out / "summary.json").read_text())["summary"]["prior"] == "generator"
    # the reference's own measure: each seed's MCC at its best validation ELBO checkpoint
    rows = json.loads((out / "results.json").read_text())["rows"]
    checkpoints = sorted({r["epoch"] for r in rows})
    assert len(checkpoints) == 2
    best = []
    for seed in (0, 1):
        elbo = {r["epoch"]: r["value"] for r in rows
                if r["seed"] == seed and r["metric"] == "val_elbo"}
        assert set(elbo) == set(checkpoints)
        e = max(elbo, key=elbo.get)
        best += [r["value"] for r in rows
                 if r["seed"] == seed and r["epoch"] == e and r["metric"] == "mcc"]
    assert h["mcc_at_best_val_elbo_by_gamma2"]["1"] == pytest.approx(sum(best) / 2)
    assert s["mcc_at_best_val_elbo"] == h["mcc_at_best_val_elbo_by_gamma2"]["1"]
    assert (out / "sprites.png").exists()
    assert (out / "traversal_gamma2_1_seed0.png").exists()
    assert (out / "traversal_gamma2_1_seed1.png").exists()


def test_traversal_sweeps_one_latent_over_prior_quantiles_and_holds_the_rest():
    from pyro_ima.experiments.sprites_study import traversal
    torch.manual_seed(0)
    # a decoder whose image is z0 everywhere: row 0 must show the sweep, row 1 nothing
    decoder = lambda z: z[..., :1, None, None].expand(*z.shape[:-1], 3, 2, 2)  # noqa: E731
    vae = models.GaussianVAE(decoder, priors.uniform(2), 1.0, obs_event_dim=3)
    encoder = torch.nn.Sequential(torch.nn.Flatten(-3), models.MLP(12, 4, (8,), seed=0))
    guide = models.DiagonalGuide(vae, encoder)
    x0 = torch.full((3, 2, 2), 0.5)
    img = traversal(vae, guide, x0, steps=5)
    assert img.shape == (2, 5, 3, 2, 2)
    assert_close(img[0, :, 0, 0, 0], torch.linspace(0.05, 0.95, 5), atol=0.02, rtol=0)
    z0 = guide.point_estimate(x0[None])[0, 0]
    assert_close(img[1, :, 0, 0, 0], z0.expand(5).clamp(0, 1), atol=1e-6, rtol=0)


def test_grid_settings_chunks_the_whole_grid_and_training_summary_counts_capped_replicas():
    from pyro_ima.experiments.common import grid_settings, training_summary
    sets = grid_settings([1e1, 1e2], [0, 1, 2], per_setting=4)
    assert [len(s["grid"]) for s in sets] == [4, 2]
    assert sorted(tuple(p) for s in sets for p in s["grid"]) == [
        (g, s) for g in (1e1, 1e2) for s in (0, 1, 2)]
    rows = []
    for seed, best in ((0, 9.0), (1, 4.0)):  # seed 0 was still improving at epoch 10 of 10
        rows += [{"seed": seed, "replica": seed, "metric": "best_epoch", "value": best},
                 {"seed": seed, "replica": seed, "metric": "epochs_run", "value": 10.0},
                 {"seed": seed, "replica": seed, "metric": "mcc", "value": 0.5}]
    assert training_summary(rows) == {"replicas": 2, "still_improving_at_cap": 1,
                                      "epochs_run": 10.0}
    # with the plateau schedule's own record: stopped_early 0 means the cap ended the fit
    rows += [{"seed": 0, "replica": 0, "metric": "stopped_early", "value": 1.0},
             {"seed": 1, "replica": 1, "metric": "stopped_early", "value": 0.0}]
    assert training_summary(rows)["still_improving_at_cap"] == 1  # now seed 1, not seed 0


def test_fingerprint_leaves_out_later_fields_only_at_their_defaults():
    import dataclasses
    import hashlib
    import json

    from pyro_ima import __version__
    from pyro_ima.experiments import guide_families, study_fingerprint
    cfg = guide_families.FULL
    old = {k: v for k, v in dataclasses.asdict(cfg).items()  # the config before the fields
           if k not in ("kl_warmup_beta", "kl_warmup_epochs", "learned_prior_scale")}
    text = json.dumps({"study": "guide_families", "quick": False, "config": old,
                       "dtype": "float32", "version": __version__}, sort_keys=True, default=list)
    fp = study_fingerprint("guide_families", False, cfg, "float32")
    assert fp == hashlib.sha256(text.encode()).hexdigest()[:20]  # earlier directories resume
    for change in ({"kl_warmup_beta": 0.01}, {"kl_warmup_epochs": 5},
                   {"learned_prior_scale": 1.0}, {"patience": 10}):
        assert study_fingerprint("guide_families", False, dataclasses.replace(cfg, **change),
                                 "float32") != fp, change


def test_the_sprites_fingerprint_leaves_out_learn_prior_only_at_its_default():
    # the committed Sprites runs (docs/results/sprites.json) came before `learn_prior`: their
    # directories must still resume at the default, and a learned-prior run must not reuse them
    import dataclasses
    import hashlib
    import json

    from pyro_ima import __version__
    from pyro_ima.experiments import sprites_study, study_fingerprint
    cfg = sprites_study.FULL
    old = {k: v for k, v in dataclasses.asdict(cfg).items()
           if k not in ("learn_prior", "prior_floor")}
    text = json.dumps({"study": "sprites", "quick": False, "config": old,
                       "dtype": "float32", "version": __version__}, sort_keys=True, default=list)
    fp = study_fingerprint("sprites", False, cfg, "float32")
    assert fp == hashlib.sha256(text.encode()).hexdigest()[:20]
    assert study_fingerprint("sprites", False, dataclasses.replace(cfg, learn_prior=True),
                             "float32") != fp
    floored = dataclasses.replace(cfg, learn_prior=True, prior_floor=2.0)
    assert study_fingerprint("sprites", False, floored, "float32") not in (
        fp, study_fingerprint("sprites", False, dataclasses.replace(cfg, learn_prior=True),
                              "float32"))


def test_from_reruns_the_config_its_results_file_holds(tmp_path, capsys):
    # a GPU protocol's results file (run_study(config=REFERENCE_SWEEP)) must rerun that
    # protocol, not the study's FULL size; lists read back from JSON are tuples again
    import argparse
    import dataclasses

    from pyro_ima import cli
    from pyro_ima.experiments import moebius, sprites_study

    def resolve(study, quick, config):
        src = tmp_path / f"{study}.json"
        src.write_text(json.dumps({"kind": "pyro_ima.study", "study": study, "quick": quick,
                                   "config": config}, default=list))
        args = argparse.Namespace(from_file=str(src), name=None, quick=None, out=None)
        cli._resolve_study(args)
        return args
    args = resolve("sprites", False, dataclasses.asdict(sprites_study.REFERENCE_SWEEP))
    assert args.config == sprites_study.REFERENCE_SWEEP and args.name == "sprites"
    assert args.config != sprites_study.FULL and args.config.learn_prior
    assert args.config.prior_floor == 2.0
    args = resolve("moebius", True, dataclasses.asdict(moebius.QUICK))
    assert args.config == moebius.QUICK and isinstance(args.config.gamma2s, tuple)
    assert resolve("moebius", True, None).config is None  # a file without one: the size
    bad = {**dataclasses.asdict(moebius.QUICK), "warp": 2}
    with pytest.raises(ValueError, match="from: .* config fields .* moebius study does not "
                                         "have: warp"):
        resolve("moebius", True, bad)
    assert main(["experiment", "--from", str(tmp_path / "moebius.json"), "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
