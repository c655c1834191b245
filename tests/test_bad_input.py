"""Every row of docs/bad_inputs.md: the input is refused, before any work, with a message that
names the argument. The table and this list must name the same cases."""

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as pdist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_ima import data, inference, metrics, mixings, models, priors, sprites
from pyro_ima.cli import main
from pyro_ima.experiments import guide_families, run_study, sprites_study
from pyro_ima.fileio import DirLock, check_out_dir
from pyro_ima.linear_gaussian import LinearGaussian
from pyro_ima.runs import RunConfig, load_results, load_run, train_run

DOC = Path(__file__).parent.parent / "docs" / "bad_inputs.md"


def _from_unknown_field(t):
    """``experiment --from`` a results file whose config has a field the study lacks."""
    from pyro_ima.experiments import moebius
    src = t / "results.json"
    src.write_text(json.dumps({"kind": "pyro_ima.study", "study": "moebius", "quick": True,
                               "config": {**dataclasses.asdict(moebius.QUICK), "warp": 2}}))
    return main(["experiment", "--from", str(src), "--quiet", "--out", str(t / "again")])


def _vae(d=3, **kw):
    return models.GaussianVAE(models.MLP(d, d, (4,)), priors.gaussian(d), 10.0, **kw)


def _guide(vae, cls=models.DiagonalGuide, out=None, **kw):
    d = vae.latent_dim
    return cls(vae, models.MLP(d, out or cls.num_outputs(d), (4,), **kw))


def _fit(x, **kw):
    vae = _vae()
    return inference.fit(vae, _guide(vae), x, **kw)


def _fit_with(vae, x, **kw):
    return inference.fit(vae, _guide(vae), x, **kw)


def _replica_fit(**kw):
    vae = models.GaussianVAE(models.MLP(3, 3, (4,), replicas=3), priors.gaussian(3), 10.0,
                             replicas=3)
    guide = models.DiagonalGuide(vae, models.MLP(3, 6, (4,), replicas=3))
    return inference.fit(vae, guide, torch.zeros(50, 3), **kw)


def _file(tmp, text):
    p = tmp / "f"
    p.write_bytes(text)
    return p


X = torch.randn(50, 3)


def _subset(rows):
    vae = models.GaussianVAE(models.MLP(3, 3, replicas=3), priors.gaussian(3), 10.0, replicas=3)
    return models.subset.ReplicaSubset(vae, _guide(vae, replicas=3), rows)

CASES = {
    "init_scale_per_replica_length": (lambda t: models.DiagonalGuide(
        models.GaussianVAE(models.MLP(3, 3, replicas=3), priors.gaussian(3), 10.0, replicas=3),
        models.MLP(3, 6, replicas=3), init_scale=[0.1, 0.2]), ValueError, "init_scale"),
    "gamma2_zero": (lambda t: models.GaussianVAE(models.MLP(3, 3), priors.gaussian(3), 0.0),
                    ValueError, "gamma2"),
    "gamma2_nan": (lambda t: models.GaussianVAE(models.MLP(3, 3), priors.gaussian(3),
                                                math.nan), ValueError, "gamma2"),
    "gamma2_wrong_shape": (lambda t: models.GaussianVAE(
        models.MLP(3, 3, replicas=3), priors.gaussian(3), torch.ones(2), replicas=3),
        ValueError, "gamma2"),
    "beta_negative": (lambda t: _vae(beta=-1.0), ValueError, "beta"),
    "drop_stopped_not_bool": (lambda t: inference.FitConfig(drop_stopped="yes"), TypeError,
                              "drop_stopped"),
    "replica_subset_rows": (lambda t: _subset([2, 1]), ValueError, "rows"),
    "replica_subset_one_replica": (lambda t: models.subset.ReplicaSubset(
        _vae(), _guide(_vae()), [0]), ValueError, "vae, guide"),
    "make_dataset_prior_batched": (lambda t: data.make_dataset(
        mixings.Linear(torch.eye(2)), models.GaussianVAE(models.MLP(2, 2), priors.beta(2), 1.0,
                                                         learn_prior=True).prior, n=30),
        ValueError, "prior"),
    "learn_prior_not_bool": (lambda t: models.GaussianVAE(
        models.MLP(3, 3), priors.beta(3), 1.0, learn_prior="yes"), TypeError, "learn_prior"),
    "prior_floor_without_learn_prior": (lambda t: models.GaussianVAE(
        models.MLP(3, 3), priors.beta(3), 1.0, prior_floor=2.0), ValueError, "prior_floor"),
    "prior_floor_negative": (lambda t: models.GaussianVAE(
        models.MLP(3, 3), priors.beta(3), 1.0, learn_prior=True, prior_floor=-1.0),
        ValueError, "prior_floor"),
    "prior_floor_not_a_number": (lambda t: models.GaussianVAE(
        models.MLP(3, 3), priors.beta(3), 1.0, learn_prior=True, prior_floor="2"),
        TypeError, "prior_floor"),
    "prior_floor_above_the_start": (lambda t: models.GaussianVAE(
        models.MLP(3, 3), priors.beta(3, a=1.5, b=5.0), 1.0, learn_prior=True,
        prior_floor=2.0), ValueError, "prior_floor"),
    "learn_prior_uniform": (lambda t: models.GaussianVAE(
        models.MLP(3, 3), priors.uniform(3), 1.0, learn_prior=True), ValueError, "prior"),
    "learn_prior_not_independent": (lambda t: models.GaussianVAE(
        models.MLP(2, 2), torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2)),
        1.0, learn_prior=True), ValueError, "prior"),
    "prior_event_shape": (lambda t: models.GaussianVAE(
        models.MLP(3, 3), torch.distributions.Normal(0.0, 1.0), 1.0), ValueError, "prior"),
    "decoder_not_callable": (lambda t: models.GaussianVAE(3, priors.gaussian(3), 1.0),
                             TypeError, "decoder"),
    "encoder_outputs": (lambda t: _guide(_vae(), models.FullCovGuide, out=6), ValueError,
                        "encoder"),
    "encoder_replicas": (lambda t: _guide(_vae(), replicas=2), ValueError, "encoder"),
    "data_dim_mismatch": (lambda t: _fit(torch.zeros(50, 4)), ValueError, "decoder"),
    "latent_dim_mismatch": (lambda t: _fit_with(
        models.GaussianVAE(models.MLP(2, 3), priors.gaussian(3), 1.0), X), ValueError,
        "decoder"),
    "data_nan": (lambda t: _fit(torch.full((50, 3), math.nan)), ValueError, "train"),
    "data_inf_elbo": (lambda t: inference.elbo_per_point(
        _vae(), _guide(_vae()), torch.full((5, 3), math.inf)), ValueError, "x"),
    "data_shape": (lambda t: _fit(torch.zeros(50)), ValueError, "x"),
    "batch_size_zero": (lambda t: _fit(X, batch_size=0), ValueError, "batch_size"),
    "batch_size_too_large": (lambda t: _fit(X, batch_size=51), ValueError, "batch_size"),
    "train_mask_length": (lambda t: _replica_fit(train_mask=[True, False], batch_size=10),
                          ValueError, "train_mask"),
    "decoder_replicas_mismatch": (lambda t: models.GaussianVAE(
        models.MLP(3, 3, (4,), replicas=2), priors.gaussian(3), 10.0), ValueError, "decoder"),
    "conv_batching_unknown": (lambda t: models.ConvEncoder(6, replicas=2, batching="vmap"),
                              ValueError, "batching"),
    "conv_input_replicas": (lambda t: models.ConvEncoder(6, channels=4, hidden=8, replicas=2)(
        torch.rand(3, 5, 3, 64, 64)), ValueError, "x"),
    "sprites_dataset_too_small": (lambda t: sprites.sprites_dataset(
        sprites.SpritesConfig(n=10), cache_dir=t), ValueError, "n"),
    "sprites_geometry_unknown": (lambda t: sprites.render(np.full((2, 4), 0.5),
                                                          geometry="spriteworld"),
                                 ValueError, "geometry"),
    "factor_gram_units": (lambda t: sprites.factor_gram(n=4, units="pixels"), ValueError,
                          "units"),
    "rotation_chance_d": (lambda t: metrics.rotation_chance_mcc(0), ValueError, "d"),
    "guide_families_mixing_seeds": (lambda t: run_study(
        "guide_families", t / "gf", progress=False, config=dataclasses.replace(
            guide_families.QUICK, mixing_seeds=(1, 1))), ValueError, "mixing_seeds"),
    "guide_families_kl_warmup_beta": (lambda t: run_study(
        "guide_families", t / "gf", progress=False, config=dataclasses.replace(
            guide_families.QUICK, kl_warmup_beta=1.0)), ValueError, "kl_warmup_beta"),
    "guide_families_prior_scale_moebius": (lambda t: run_study(
        "guide_families", t / "gf", progress=False, config=dataclasses.replace(
            guide_families.QUICK, learned_prior_scale=1.0)), ValueError,
        "learned_prior_scale"),
    "sprites_prior_floor_without_learn_prior": (lambda t: run_study(
        "sprites", t / "sp", progress=False, config=dataclasses.replace(
            sprites_study.QUICK, prior_floor=2.0)), ValueError, "prior_floor"),
    "epochs_zero": (lambda t: _fit(X, epochs=0), ValueError, "epochs"),
    "seed_count": (lambda t: _replica_fit(seed=[1, 2]), ValueError, "seed"),
    "particles_not_vectorized": (lambda t: _fit(X, batch_size=16, loss=Trace_ELBO(
        num_particles=2)), ValueError, "loss"),
    "num_samples_zero": (lambda t: inference.importance_log_px(
        _vae(), _guide(_vae()), X, num_samples=0), ValueError, "num_samples"),
    "num_particles_zero": (lambda t: inference.elbo_per_point(
        _vae(), _guide(_vae()), X, num_particles=0), ValueError, "num_particles"),
    "widen_zero": (lambda t: inference.importance_log_px(_vae(), _guide(_vae()), X, widen=0.0),
                   ValueError, "widen"),
    "proposal_unknown": (lambda t: inference.importance_log_px(
        _vae(), _guide(_vae()), X, proposal="prior"), ValueError, "proposal"),
    "contrast_wide": (lambda t: metrics.ima_contrast(torch.zeros(2, 3)), ValueError, "J"),
    "row_contrast_non_square": (lambda t: metrics.row_contrast(torch.zeros(3, 2)),
                                ValueError, "J"),
    "mcc_rows": (lambda t: metrics.mcc(torch.zeros(10, 2), torch.zeros(9, 2)), ValueError,
                 "z_est"),
    "mcc_nan": (lambda t: metrics.mcc(torch.full((10, 2), math.nan), torch.zeros(10, 2)),
                ValueError, "z_true"),
    "mixing_unknown": (lambda t: RunConfig(mixing="swirl").validate(), ValueError, "mixing"),
    "prior_unknown": (lambda t: RunConfig(prior="cauchy").validate(), ValueError, "prior"),
    "guide_unknown": (lambda t: RunConfig(guide="banana").validate(), ValueError, "guide"),
    "study_unknown": (lambda t: run_study("nope", t), ValueError, "name"),
    "dim_zero": (lambda t: priors.gaussian(0), ValueError, "dim"),
    "box_empty": (lambda t: priors.uniform(2, 1.0, 1.0), ValueError, "high"),
    "moebius_pole_inside": (lambda t: mixings.Moebius(2, pole=[0.5, 0.5]), ValueError, "pole"),
    "linear_singular": (lambda t: mixings.Linear(torch.zeros(2, 2)), ValueError, "weight"),
    "contrast_target_negative": (lambda t: mixings.VolumePreservingLinear.with_contrast(
        -1.0, 3), ValueError, "target"),
    "sprites_factors_shape": (lambda t: sprites.render(torch.zeros(3, 2).numpy()), ValueError,
                              "factors"),
    "results_corrupt": (lambda t: load_results(_file(t, b"{not json")), ValueError, "results"),
    "results_foreign": (lambda t: load_results(_file(t, b'{"a": 1}')), ValueError, "results"),
    "dataset_corrupt": (lambda t: data.load_dataset(_file(t, b"garbage")), ValueError, "path"),
    "state_corrupt": (lambda t: load_run(_run_dir(t)), ValueError, "state"),
    "out_not_writable": (lambda t: check_out_dir(_file(t, b"") / "sub"), ValueError, "out"),
    "cli_bad_gamma2": (lambda t: main(["train", "--gamma2", "-1", "--out", str(t)]), 2,
                       "--gamma2"),
    "cli_unknown_guide": (lambda t: main(["train", "--guide", "x", "--out", str(t)]), 2,
                          "--guide"),
    "cli_moebius_unbounded": (lambda t: main(["train", "--prior", "gaussian", "--out",
                                              str(t)]), 2, "prior"),
    "cli_run_dir_missing": (lambda t: main(["evaluate", str(t / "none")]), 2, "run_dir"),
    # -- issue 14: configs read back from files are checked like the command line --------
    "results_config_missing_field": (lambda t: load_run(_run_dir(t, n=_DROP)), ValueError,
                                     "missing n"),
    "results_config_string_int": (lambda t: load_run(_run_dir(t, dim="3")), ValueError, "dim"),
    "results_config_float_n": (lambda t: load_run(_run_dir(t, n=1e12)), ValueError, "n"),
    "results_config_huge_n": (lambda t: load_run(_run_dir(t, n=10**12)), ValueError, "n"),
    "state_of_another_run": (lambda t: load_run(_run_dir(t, state=_state(run_id="b" * 32))),
                             ValueError, "state"),
    "state_config_differs": (lambda t: load_run(_run_dir(t, state=_state(gamma2=100.0))),
                             ValueError, "state"),
    "cli_n_too_small_for_splits": (lambda t: main(["train", "--n", "20", "--out", str(t)]), 2,
                                   "n: 20 points"),
    "cli_seed_out_of_range": (lambda t: main(["train", "--seed", "18446744073709551615",
                                              "--out", str(t)]), 2, "--seed"),
    "cli_empty_out": (lambda t: main(["train", "--n", "200", "--out", ""]), 2, "out"),
    "cli_out_holds_a_run": (lambda t: main(["train", "--n", "200", "--out",
                                            str(_run_dir(t, state=_state()))]), 2, "--force"),
    "cli_out_holds_a_study": (lambda t: main(["train", "--n", "200", "--out",
                                              str(_study_dir(t)), "--epochs", "1"]), 2,
                              "--force"),
    "cli_out_locked": (lambda t: _locked_train(t), 2, "another pyro-ima process"),
    "cli_hidden_not_widths": (lambda t: main(["train", "--hidden", "50,x", "--out", str(t)]),
                              2, "--hidden"),
    "cli_data_file_missing": (lambda t: main(["train", "--data", str(t / "no.npy"), "--out",
                                              str(t)]), 2, "data"),
    "cli_data_with_mixing": (lambda t: main(["train", "--data", "x.npy", "--mixing", "linear",
                                             "--out", str(t)]), 2, "data"),
    "cli_data_with_n": (lambda t: main(["train", "--data", "x.npy", "--n", "500",
                                        "--out", str(t)]), 2, "n"),
    "cli_from_unknown_config_field": (lambda t: _from_unknown_field(t), 2, "from"),
    "cli_evaluate_points_above_test_size": (lambda t: _evaluate_too_many_points(t), 2,
                                            "points"),
    "summary_to_without_headline": (lambda t: run_study("beta_gamma", t / "bg", quick=True,
                                                        summary_to=t / "h.json"),
                                    ValueError, "summary_to"),
    "cli_from_quick_not_bool": (lambda t: main(["experiment", "--from",
                                                _from_file(t, quick="false")]), 2, "from"),
    "study_dir_other_config": (lambda t: run_study("beta_gamma", _study_dir(t), quick=True),
                               ValueError, "--force"),
    "study_dir_other_study": (lambda t: run_study("moebius", _study_dir(t), quick=True),
                              ValueError, "beta_gamma"),
    "val_shape_before_training": (lambda t: _fit(X, val=torch.zeros(20, 4)), ValueError,
                                  "decoder"),
    "no_points": (lambda t: inference.elbo_per_point(_vae(), _guide(_vae()), torch.zeros(0, 3)),
                  ValueError, "x: expected at least one"),
    "decoder_nan_at_evaluation": (lambda t: _nan_decoder_elbo(), FloatingPointError, "model"),
    "noise_std_nan": (lambda t: data.make_dataset(mixings.Linear.orthogonal(2),
                                                  priors.gaussian(2), n=40,
                                                  noise_std=math.nan), ValueError, "noise_std"),
    "moebius_pole_nan": (lambda t: mixings.Moebius(3, pole=[math.nan] * 3), ValueError, "pole"),
    "uniform_infinite": (lambda t: priors.uniform(2, -math.inf, math.inf), ValueError, "low"),
    "init_scale_tiny": (lambda t: models.DiagonalGuide(_vae(), models.MLP(3, 6),
                                                       init_scale=1e-50), ValueError,
                        "init_scale"),
    "dataset_lengths_differ": (lambda t: data.load_dataset(_bad_dataset(t)), ValueError,
                               "path"),
    "gamma2_bool": (lambda t: models.GaussianVAE(models.MLP(3, 3), priors.gaussian(3), True),
                    TypeError, "gamma2"),
    "global_latent": (lambda t: inference.elbo_per_point(_global_latent, lambda x: pyro.sample(
        "mu", pdist.Normal(0.0, 1.0)), X), ValueError, "'mu' is outside the 'data' plate"),
    "no_data_plate": (lambda t: inference.importance_log_px(_no_plate, lambda x: None, X,
                                                            num_samples=5), ValueError,
                      "outside the 'data' plate"),
    "guide_sites_not_model_latents": (lambda t: inference.elbo_per_point(
        _local_latent, _guide_w, X), ValueError, "guide: its sample sites"),
    "vae_unknown_keyword": (lambda t: inference.importance_log_px(
        _vae(), _guide(_vae()), X, chunk_points=10), TypeError,
        "chunk_points: not an argument of importance_log_px(vae, guide, x); it takes"),
    "vae_elbo_unknown_keyword": (lambda t: inference.elbo_per_point(
        _vae(), _guide(_vae()), X, num_sample=10), TypeError,
        "num_sample: not an argument of elbo_per_point(vae, guide, x)"),
    "pyro_model_former_chunk_keyword": (lambda t: inference.importance_log_px(
        _local_latent, _local_latent_guide, X, chunk_points=10), TypeError, "chunk_size="),
    "chunk_size_zero_pyro_model": (lambda t: inference.elbo_per_point(
        _local_latent, _local_latent_guide, X, chunk_size=0), ValueError, "chunk_size"),
    "sample_chunk_zero_pyro_model": (lambda t: inference.importance_log_px(
        _local_latent, _local_latent_guide, X, sample_chunk=0), ValueError, "sample_chunk"),
    "chunk_size_zero_vae": (lambda t: inference.elbo_per_point(
        _vae(), _guide(_vae()), X, chunk_size=0), ValueError, "chunk_size"),
    "chunk_size_zero_vae_is": (lambda t: inference.importance_log_px(
        _vae(), _guide(_vae()), X, chunk_size=0), ValueError, "chunk_size"),
    "sample_chunk_zero_vae_is": (lambda t: inference.importance_log_px(
        _vae(), _guide(_vae()), X, sample_chunk=0), ValueError, "sample_chunk"),
    "chunk_size_zero_refine": (lambda t: inference.refine_elbo(
        _vae(), _guide(_vae()), X, chunk_size=0), ValueError, "chunk_size"),
    "model_not_callable": (lambda t: inference.elbo_per_point("m", lambda x: None, X),
                           TypeError, "model"),
    "refined_guide_other_points": (lambda t: _refined_other_points(), ValueError, "x"),
    "user_data_not_2d": (lambda t: data.load_array(_npy(t, torch.zeros(5, 2, 2).numpy())),
                         ValueError, "data"),
    "user_data_complex": (lambda t: data.load_array(_npy(t, np.ones((4, 2), np.complex64))),
                          ValueError, "real-valued (N, D) array, got (4, 2) of complex64"),
    "user_data_nan": (lambda t: data.load_array(_npy(t, np.full((40, 2), np.nan))), ValueError,
                      "data"),
}


def _npy(tmp, arr):
    p = tmp / "x.npy"
    np.save(p, arr)
    return p


def _bad_dataset(tmp):
    ds = data.make_dataset(mixings.Linear.orthogonal(2), priors.gaussian(2), n=40)
    bad = data.Dataset(data.Split(ds.train.x, ds.train.z[:-1]), ds.val, ds.test)
    data.save_dataset(bad, tmp / "ds.pt")
    return tmp / "ds.pt"


def _run_dir(tmp, state=b"not a state", **config_edits):
    """A run directory with a results.json (config edited by hand) and a given state.pt."""
    run = tmp / "run"
    run.mkdir(exist_ok=True)
    cfg = {**RunConfig(n=40, epochs=1, batch_size=4).to_dict(), **config_edits}
    for k in [k for k, v in config_edits.items() if v is _DROP]:
        del cfg[k]
    (run / "results.json").write_text(json.dumps({"kind": "pyro_ima.train", "run_id": "a" * 32,
                                                  "config": cfg}))
    if isinstance(state, dict):
        torch.save(state, run / "state.pt")
    else:
        (run / "state.pt").write_bytes(state)
    return run


_DROP = object()


def _state(run_id="a" * 32, **config_edits):
    return {"kind": "pyro_ima.state", "run_id": run_id, "model": {}, "guide": {},
            "config": {**RunConfig(n=40, epochs=1, batch_size=4).to_dict(), **config_edits}}


def _study_dir(tmp, study="beta_gamma", quick=True):
    out = tmp / "study"
    out.mkdir(exist_ok=True)
    (out / "study.json").write_text(json.dumps({"kind": "pyro_ima.study_dir", "study": study,
                                                "quick": quick, "fingerprint": "0" * 20}))
    return out


def _from_file(tmp, **fields):
    p = tmp / "results.json"
    p.write_text(json.dumps({"kind": "pyro_ima.study", "study": "beta_gamma", **fields}))
    return str(p)


def _nan_decoder_elbo():
    vae = models.GaussianVAE(lambda z: z * float("nan"), priors.gaussian(3), 10.0)
    return inference.elbo_per_point(vae, _guide(vae), X)


def _global_latent(x):
    mu = pyro.sample("mu", pdist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", pdist.Normal(mu, 1.0).expand([3]).to_event(1), obs=x)


def _local_latent(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", pdist.Normal(0.0, 1.0).expand([3]).to_event(1))
        pyro.sample("x", pdist.Normal(z, 1.0).to_event(1), obs=x)


def _evaluate_too_many_points(t):
    import warnings
    with warnings.catch_warnings():  # a 1-epoch run's estimates are flagged; not the point here
        warnings.simplefilter("ignore")
        train_run(RunConfig(n=200, epochs=1, hidden=(4,), eval_points=5, eval_samples=5),
                  t / "r")
    return main(["evaluate", str(t / "r"), "--points", "21"])  # 20 test points


def _local_latent_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", pdist.Normal(x, 1.0).to_event(1))


def _guide_w(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("w", pdist.Normal(x, 1.0).to_event(1))


def _no_plate(x):
    pyro.sample("x", pdist.Normal(0.0, 1.0).expand([50, 3]).to_event(2), obs=x)


def _locked_train(tmp):
    out = tmp / "locked"
    out.mkdir()
    with DirLock(out):
        return main(["train", "--n", "200", "--epochs", "1", "--out", str(out)])


def _refined_other_points():
    lg = LinearGaussian.random(2, 10.0)
    vae = lg.vae()
    x = lg.sample(6)
    _, refined = inference.refine_elbo(vae, _guide(vae), x, return_guides=True,
                                       config=inference.RefineConfig(steps=1))
    return refined.loc(x.flip(0))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_with_a_named_argument(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a CLI case must not write into the repository
    fn, expected, name = CASES[case]
    if expected == 2:  # the CLI: one line, exit status 2
        assert fn(tmp_path) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err, err
        return
    with pytest.raises(expected) as info:
        fn(tmp_path)
    assert name in str(info.value), str(info.value)


def test_the_docs_table_lists_exactly_these_cases():
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|", DOC.read_text(), flags=re.M)
    assert sorted(rows) == sorted(CASES)
