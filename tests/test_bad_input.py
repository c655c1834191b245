"""Every row of docs/bad_inputs.md: the input is refused, before any work, with a message that
names the argument. The table and this list must name the same cases."""

import math
import re
from pathlib import Path

import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_ima import data, inference, metrics, mixings, models, priors, sprites
from pyro_ima.cli import main
from pyro_ima.experiments import run_study
from pyro_ima.runs import RunConfig, check_out_dir, load_results, load_run

DOC = Path(__file__).parent.parent / "docs" / "bad_inputs.md"


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
    "state_corrupt": (lambda t: _corrupt_state(t), ValueError, "state"),
    "out_not_writable": (lambda t: check_out_dir(_file(t, b"") / "sub"), ValueError, "out"),
    "cli_bad_gamma2": (lambda t: main(["train", "--gamma2", "-1", "--out", str(t)]), 2,
                       "--gamma2"),
    "cli_unknown_guide": (lambda t: main(["train", "--guide", "x", "--out", str(t)]), 2,
                          "--guide"),
    "cli_moebius_unbounded": (lambda t: main(["train", "--prior", "gaussian", "--out",
                                              str(t)]), 2, "prior"),
    "cli_run_dir_missing": (lambda t: main(["evaluate", str(t / "none")]), 2, "run_dir"),
}


def _corrupt_state(tmp):
    import json
    run = tmp / "run"
    run.mkdir()
    cfg = RunConfig(n=20, epochs=1, batch_size=4)
    (run / "results.json").write_text(json.dumps({"kind": "pyro_ima.train",
                                                  "config": cfg.to_dict()}))
    (run / "state.pt").write_bytes(b"not a state")
    return load_run(run)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_with_a_named_argument(case, tmp_path, capsys):
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
