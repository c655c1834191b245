"""The Sprites renderer: deterministic, every factor recoverable, cached; conv nets fit guides."""

import math

import numpy as np
import pytest
import torch
from matplotlib.colors import rgb_to_hsv

from pyro_ima import inference, models, priors, sprites


def _images(n=400, seed=0, geometry="triangle"):
    f = sprites.sample_factors(n, *sprites.default_beta_params(seed), seed)
    return f, sprites.render(f, geometry=geometry)


def test_deterministic_per_seed():
    f1, im1 = _images(seed=3)
    f2, im2 = _images(seed=3)
    _, im3 = _images(seed=4)
    assert np.array_equal(f1, f2) and np.array_equal(im1, im2)
    assert not np.array_equal(im1, im3)
    assert im1.shape == (400, 3, 64, 64) and im1.dtype == np.uint8
    a, b = sprites.default_beta_params(3)
    assert ((a >= 2) & (a <= 15) & (b >= 2) & (b <= 15)).all()


def test_every_factor_is_recoverable_from_the_images():
    f, im = _images(n=600, geometry="compact")  # always inside the frame
    intensity = im.astype(np.float64).sum(1)  # (n, H, W)
    mass = intensity.sum((1, 2))
    cols = np.arange(64) + 0.5
    cx = (intensity.sum(1) * cols).sum(1) / mass
    cy = (intensity.sum(2) * cols).sum(1) / mass  # row index grows downwards
    assert np.corrcoef(cx, f[:, 0])[0, 1] > 0.99
    assert np.corrcoef(-cy, f[:, 1])[0, 1] > 0.99
    area = (im.max(1) / 255.0).sum((1, 2))  # anti-aliased coloured area = side^2
    assert np.corrcoef(np.sqrt(area), f[:, 2])[0, 1] > 0.99
    # mean hue of the square's pixels (circular, hue 0 and 1 are the same colour)
    rgb = im.transpose(0, 2, 3, 1).astype(np.float64) / 255
    hsv = rgb_to_hsv(rgb.reshape(-1, 3)).reshape(rgb.shape)
    on = hsv[..., 2] > 0.5
    angle = np.array([np.angle(np.exp(2j * np.pi * hsv[i][..., 0][on[i]]).mean())
                      for i in range(len(f))]) / (2 * np.pi) % 1
    err = np.abs((angle - f[:, 3] + 0.5) % 1 - 0.5)
    assert np.median(err) < 0.01


def _close(area, side, ss=4):
    # edges snap to the subsamples: each side is off by up to 1 / ss pixel
    return abs(area - side ** 2) <= 2 * side / ss + 0.1


def test_square_geometries_have_spriteworld_scale_and_twice_its_area():
    # spriteworld's square of scale B_s has area B_s^2 (side B_s): fully inside the frame it
    # covers (B_s * 64)^2 pixels, centred on a corner a quarter of that; "large-square" has
    # side sqrt(2) B_s; the compact geometry's side is 0.11 + 0.09 B_s
    f = np.array([[0.5, 0.5, 0.3, 0.0], [0.0, 1.0, 0.3, 0.0], [0.4, 0.6, 0.05, 0.5]])
    for geometry, side in (("square", f[:, 2] * 64), ("large-square", np.sqrt(2) * f[:, 2] * 64)):
        cov = sprites.coverage(f, geometry=geometry)
        assert _close(cov[0].sum(), side[0]) and _close(cov[2].sum(), side[2])
        assert _close(cov[1].sum(), side[1] / 2)
    compact = sprites.coverage(f, geometry="compact")
    assert _close(compact[0].sum(), (0.11 + 0.09 * 0.3) * 64)
    with pytest.raises(ValueError, match="geometry: expected one of"):
        sprites.coverage(f, geometry="spriteworld")


def test_triangle_is_spriteworlds_area_centroid_and_orientation():
    # area B_s^2, centroid (B_x, B_y), apex up (y grows upwards: row 0 is the top), the
    # base the widest row; partly out of the frame it keeps only what is inside
    f = np.array([[0.5, 0.5, 0.3, 0.0], [0.3, 0.6, 0.1, 0.0], [0.5, 0.0, 0.3, 0.0]])
    cov = sprites.coverage(f, geometry="triangle", supersample=16)
    centres = np.arange(64) + 0.5
    for k in range(2):
        area = cov[k].sum()
        assert abs(area / (f[k, 2] * 64) ** 2 - 1) < 0.01, area  # the base snaps to rows
        cx = (cov[k].sum(0) * centres).sum() / area / 64
        cy = 1 - (cov[k].sum(1) * centres).sum() / area / 64
        assert abs(cx - f[k, 0]) < 1e-3 and abs(cy - f[k, 1]) < 2e-3, (cx, cy)
    widths = cov[0].sum(1)
    lit = np.nonzero(widths > 0.5)[0]
    # narrow apex at the top, the widest row near the bottom
    assert widths.max() > 10 * widths[lit[0]] and np.argmax(widths) > lit.mean() + 5
    # the coverage moves smoothly with the factors (the base is exact, not snapped to rows):
    # a tiny growth adds d(area) = 2 s ds, a tiny shift keeps the area
    s, ds = 0.3, 1e-4
    grown = sprites.coverage(np.array([[0.5, 0.5, s + ds, 0.0]]), geometry="triangle")
    base = sprites.coverage(np.array([[0.5, 0.5, s, 0.0]]), geometry="triangle")
    rate = (grown.sum(dtype=np.float64) - base.sum(dtype=np.float64)) / ds / 64 ** 2
    assert abs(rate / (2 * s) - 1) < 0.05, rate
    # centroid on the frame's bottom edge: what is inside is the part above the centroid, a
    # similar triangle of 2/3 the height, so 4/9 of the area
    assert abs(cov[2].sum() / (0.3 * 64) ** 2 - 4 / 9) < 0.01


def test_factor_gram_finds_the_conformal_block_of_the_large_square():
    # x, y and size move different edges: orthogonal columns. Per unit of the factor, the
    # large square's size column has the norm of its x column (a conformal block that
    # rotations preserve); spriteworld's scale halves it for the square, less for the triangle
    ratio = {}
    for g in ("large-square", "square", "triangle"):
        gram = sprites.factor_gram(g, n=120, units="factor")
        d = np.sqrt(np.diag(gram))
        cos = gram / np.outer(d, d)
        assert np.allclose(cos, cos.T) and np.abs(cos - np.eye(4)).max() < 0.15, (g, cos)
        ratio[g] = gram[2, 2] / gram[0, 0]
    # (exactly: 1 for the large square, 1/2 for the square; the triangle's slanted edges
    # cross the pixel grid, 0.41 measured)
    assert 0.95 < ratio["large-square"] < 1.06
    assert 0.47 < ratio["square"] < 0.54 and 0.37 < ratio["triangle"] < 0.45, ratio
    # sd units rescale by the factors' sds, so the diagonal is what factor_signal reports
    f = sprites.sample_factors(120, *sprites.default_beta_params(0), 0)
    sd_gram = sprites.factor_gram("square", n=120)
    np.testing.assert_allclose(np.diag(sd_gram), np.diag(sprites.factor_gram(
        "square", n=120, units="factor")) * f.std(0) ** 2, rtol=1e-9)
    with pytest.raises(ValueError, match="units: expected"):
        sprites.factor_gram(units="pixels")


def test_factor_signal_measures_the_large_square_as_far_richer():
    sw = sprites.factor_signal("large-square", n=200)
    co = sprites.factor_signal("compact", n=200)
    assert sw["pixel_variance"] > 5 * co["pixel_variance"]
    for k in sprites.FACTORS:
        assert sw["per_factor"][k] > 5 * co["per_factor"][k]
    # against a direct computation for the compact x factor: shifting a square of side s by
    # dx moves 2 s dx of its area (per colour channel at full value) to new pixels
    f = sprites.sample_factors(200, *sprites.default_beta_params(0), 0)
    side = (0.11 + 0.09 * f[:, 2]) * 64
    sd = f[:, 0].std() * 0.55 * 64  # one sd of B_x, in pixels
    brightness = _channel_sq(f[:, 3])  # sum of squared RGB values of the square's colour
    approx = float((2 * side * sd ** 2 * brightness).mean())  # edge pixels: (sd * 1)^2 each
    assert 0.7 < co["per_factor"]["x"] / approx < 1.3, (co["per_factor"]["x"], approx)


def _channel_sq(hue):
    from matplotlib.colors import hsv_to_rgb
    rgb = hsv_to_rgb(np.stack([hue, np.ones_like(hue), np.ones_like(hue)], -1))
    return (rgb ** 2).sum(-1)


def test_dataset_keeps_the_factors_prior(tmp_path):
    ds = sprites.sprites_dataset(sprites.SpritesConfig(n=40, seed=3), cache_dir=tmp_path)
    a, b = sprites.default_beta_params(3)
    torch.testing.assert_close(ds.prior.base_dist.concentration1,
                               torch.as_tensor(a, dtype=torch.get_default_dtype()))
    torch.testing.assert_close(ds.prior.base_dist.concentration0,
                               torch.as_tensor(b, dtype=torch.get_default_dtype()))


def test_dataset_is_cached(tmp_path):
    cfg = sprites.SpritesConfig(n=50, seed=1)
    ds = sprites.sprites_dataset(cfg, cache_dir=tmp_path)
    files = list(tmp_path.glob("sprites-*.npz"))
    assert len(files) == 1
    again = sprites.sprites_dataset(cfg, cache_dir=tmp_path)
    assert torch.equal(ds.train.x, again.train.x)
    assert ds.train.x.shape[1:] == (3, 64, 64) and 0 <= float(ds.train.x.min())
    assert float(ds.train.x.max()) <= 1 and ds.train.z.shape[1] == 4
    files[0].write_bytes(b"corrupt")  # a broken cache is re-rendered, not trusted
    assert torch.equal(sprites.sprites_dataset(cfg, cache_dir=tmp_path).test.x, ds.test.x)


@pytest.mark.parametrize("family", ["diagonal", "isotropic", "full"])
def test_conv_vae_trains_with_every_guide_family(tmp_path, family):
    ds = sprites.sprites_dataset(sprites.SpritesConfig(n=40, seed=0), cache_dir=tmp_path)
    p0 = priors.beta(4)
    vae = models.GaussianVAE(models.ConvDecoder(4, channels=8, hidden=32), p0, gamma2=1.0,
                             obs_event_dim=3)
    cls = models.GUIDES[family]
    guide = cls(vae, models.ConvEncoder(cls.num_outputs(4), channels=8, hidden=32))
    r = inference.fit(vae, guide, ds.train, ds.val, epochs=2, batch_size=7)
    assert bool(torch.isfinite(r.best_val_elbo).all())
    e = inference.elbo_per_point(vae, guide, ds.test.x)
    assert e.shape == (len(ds.test),) and bool(torch.isfinite(e).all())
    z = guide.point_estimate(ds.test.x)
    assert bool(((z > 0) & (z < 1)).all())


@pytest.mark.parametrize("batching", ["grouped", "loop"])
def test_replica_batched_conv_nets_equal_one_network_per_seed(batching):
    # replica r of a batched encoder/decoder is the unbatched network built with seeds[r]:
    # same outputs and same parameter gradients, whichever way the convolutions run
    seeds = [3, 8]
    kw = dict(channels=4, hidden=16)
    enc = models.ConvEncoder(6, seed=seeds, replicas=2, batching=batching, **kw)
    dec = models.ConvDecoder(3, seed=seeds, replicas=2, batching=batching, **kw)
    x = torch.rand(2, 5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    h = enc(x)
    out = dec(h[..., :3])
    assert h.shape == (2, 5, 6) and out.shape == (2, 5, 3, 64, 64)
    out.square().sum().backward()
    for r, s in enumerate(seeds):
        e1, d1 = models.ConvEncoder(6, seed=s, **kw), models.ConvDecoder(3, seed=s, **kw)
        o1 = d1(e1(x[r])[..., :3])
        torch.testing.assert_close(o1, out[r], atol=1e-5, rtol=1e-5)
        o1.square().sum().backward()
        torch.testing.assert_close(e1.conv[0].weight.grad, enc.convs[0].weight.grad[r],
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(d1.deconv[6].weight.grad, dec.convs[3].weight.grad[r],
                                   atol=1e-4, rtol=1e-4)
    # every parameter has the leading replica dim that per-replica rollback needs
    assert all(p.shape[0] == 2 for p in [*enc.parameters(), *dec.parameters()])
    # images shared by every replica, and extra leading dims (particles)
    torch.testing.assert_close(enc(x[0])[0], h[0])
    assert dec(torch.rand(4, 2, 5, 3)).shape == (4, 2, 5, 3, 64, 64)


def test_replica_batched_conv_nets_refuse_bad_input():
    with pytest.raises(ValueError, match="batching: expected one of"):
        models.ConvEncoder(6, replicas=2, batching="vmap")
    enc = models.ConvEncoder(6, channels=4, hidden=8, replicas=2)
    with pytest.raises(ValueError, match=r"x: expected \(\*, 2, B, \.\.\.\)"):
        enc(torch.rand(3, 5, 3, 64, 64))
    with pytest.raises(ValueError, match="seed: expected 2 seeds"):
        models.ConvDecoder(4, seed=[1, 2, 3], replicas=2)


def test_replica_batched_conv_vae_trains_each_replica_as_its_own_run(tmp_path):
    # two seeds as one replica batch train exactly as each seed alone (per-replica noise,
    # minibatch order and best state), so the Sprites study may batch its seeds
    ds = sprites.sprites_dataset(sprites.SpritesConfig(n=40, seed=0), cache_dir=tmp_path)
    kw = dict(channels=4, hidden=16)

    def pair(seeds, replicas):
        vae = models.GaussianVAE(models.ConvDecoder(4, seed=seeds, replicas=replicas, **kw),
                                 priors.beta(4), gamma2=1.0, replicas=replicas, obs_event_dim=3)
        seeds_enc = [s + 100 for s in seeds] if replicas else seeds + 100
        return vae, models.DiagonalGuide(vae, models.ConvEncoder(8, seed=seeds_enc,
                                                                 replicas=replicas, **kw))

    vae, guide = pair([0, 1], 2)
    r = inference.fit(vae, guide, ds.train, ds.val, epochs=2, batch_size=7, seed=[5, 6])
    for i, s in enumerate((0, 1)):
        v1, g1 = pair(s, None)
        r1 = inference.fit(v1, g1, ds.train, ds.val, epochs=2, batch_size=7, seed=5 + i)
        torch.testing.assert_close(r.best_val_elbo[i], r1.best_val_elbo.reshape(()),
                                   atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(vae.decoder(torch.full((2, 1, 4), 0.5))[i],
                                   v1.decoder(torch.full((1, 4), 0.5)), atol=1e-4, rtol=1e-4)


def test_gpu_protocols_cover_the_reference_grid_and_the_papers_table():
    """REFERENCE_SWEEP trains the grid whose MCCs we set beside ours, one replica batch of ten
    seeds per gamma2 at the sweep's optimizer (lr 5e-4, batch 512); PAPER is Table 5's
    gamma2 = 1 run (batch 64, lr 1e-5, 42k training images)."""
    from pyro_ima.experiments import sprites_study as s

    sweep = s.settings(s.REFERENCE_SWEEP)
    assert sorted({g for st in sweep for g, _ in st["grid"]}) == sorted(s.REFERENCE_MCC)
    assert [len({g for g, _ in st["grid"]}) for st in sweep] == [1] * 4
    assert [len(st["grid"]) for st in sweep] == [10] * 4
    assert (s.REFERENCE_SWEEP.lr, s.REFERENCE_SWEEP.batch_size) == (5e-4, 512)
    # 700 epochs, measured every 25 as the sweep validated
    assert (s.REFERENCE_SWEEP.epochs, s.REFERENCE_SWEEP.epochs // s.REFERENCE_SWEEP.checkpoints,
            s.REFERENCE_SWEEP.patience) == (700, 25, None)
    paper = s.settings(s.PAPER)
    assert [[float(g) for g, _ in st["grid"]] for st in paper] == [[1.0] * 10]
    assert (s.PAPER.lr, s.PAPER.batch_size, int(0.7 * s.PAPER.n)) == (1e-5, 64, 42_000)


def test_mcc_at_best_val_elbo_takes_each_seeds_best_checkpoint_as_the_reference():
    from pyro_ima.experiments import sprites_study as s

    def rows(seed, epochs, elbos, mccs):
        out = []
        for e, v, m in zip(epochs, elbos, mccs, strict=True):
            out += [{"seed": seed, "gamma2": 1.0, "epoch": e, "metric": "mcc", "value": m}]
            if v is not False:  # False: cached before the validation ELBO was recorded
                out += [{"seed": seed, "gamma2": 1.0, "epoch": e, "metric": "val_elbo",
                         "value": v}]
        return out
    # seed 0: best ELBO at epoch 4, neither the last checkpoint nor the best MCC
    table = (rows(0, [2, 4, 6], [-10.0, -5.0, -7.0], [0.5, 0.9, 0.95])
             + rows(1, [2, 4, 6], [False] * 3, [0.1, 0.2, 0.3])
             + rows(2, [2, 4, 6], [-3.0, None, -4.0], [None, 0.7, 0.8])  # failed at its best
             + rows(3, [2, 4, 6], [-1.0, -2.0, -3.0], [0.4, 0.5, 0.6])
             + rows(4, [2, 4, 6], [-1.0, -2.0, -3.0], [0.4, 0.5, 0.6]))
    for r in table:  # seed 4 failed at its last checkpoint (finite values before it)
        r["failed"] = r["seed"] == 4 and r["epoch"] == 6
    assert s.mcc_at_best_val_elbo(table) == {0: 0.9, 3: 0.4}
    other = [{**r, "gamma2": 10.0, "seed": 0} for r in rows(0, [2], [0.0], [0.1])]
    with pytest.raises(ValueError, match="rows: expected the rows of one gamma2"):
        s.mcc_at_best_val_elbo(table + other)
    summary = s.summarize([{**r, "metric": m} for r in table if r["metric"] == "mcc"
                           for m in s._METRICS] + [r for r in table if r["metric"] == "val_elbo"])
    assert summary["by_gamma2"][1.0]["mcc_at_best_val_elbo"] == pytest.approx(0.65)
    assert summary["by_gamma2"][1.0]["mcc_at_best_val_elbo_seeds"] == 2
    assert summary["by_gamma2"][1.0]["failed"] == 1  # seed 4, left out of the means
    assert summary["by_gamma2"][1.0]["mcc"] == pytest.approx((0.95 + 0.3 + 0.8 + 0.6) / 4)


def test_a_replica_not_validated_in_a_chunk_gets_no_val_elbo_row(tmp_path, monkeypatch):
    # fit reports NaN as the best validation ELBO of a replica that never validated in the
    # chunk (e.g. a rolled-back fault); the setting must keep its other rows, not fail
    import dataclasses
    import math

    from pyro_ima.experiments import sprites_study as s
    monkeypatch.setenv("PYRO_IMA_CACHE", str(tmp_path))
    real_train, calls = s.train, []

    def train(*args, **kwargs):
        fit = real_train(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # replica 1 in the first chunk only
            fit.best_val_elbo[1] = math.nan
        return fit
    monkeypatch.setattr(s, "train", train)
    cfg = dataclasses.replace(s.QUICK, n=100, epochs=2, checkpoints=2, eval_points=10)
    rows = s.run_setting(s.settings(cfg)[0], cfg)
    elbo = {(r["seed"], r["epoch"]) for r in rows if r["metric"] == "val_elbo"}
    assert elbo == {(0, 1), (0, 2), (1, 2)}
    assert {(r["seed"], r["epoch"]) for r in rows if r["metric"] == "mcc"} == \
        {(0, 1), (0, 2), (1, 1), (1, 2)}
    assert set(s.mcc_at_best_val_elbo(rows)) == {0, 1}


def test_traversal_sweeps_each_replicas_own_learned_prior_quantiles():
    # with a learned prior every replica has its own (a, b): the traversal of replica r must
    # sweep replica r's quantiles. An identity decoder shows the swept latent values directly.
    from scipy import stats

    from pyro_ima.experiments import sprites_study as s
    vae = models.GaussianVAE(lambda z: z, priors.beta(2, a=2.0, b=2.0), 1.0, replicas=2,
                             learn_prior=True)
    with torch.no_grad():  # replica 1: Beta(8, 2) in latent 0, Beta(2, 2) elsewhere
        vae.learned_prior.raw_concentration1[1, 0, 0] = math.log(8.0)
    guide = models.DiagonalGuide(vae, models.MLP(2, 4, hidden=(8,), seed=0))
    q = np.linspace(0.05, 0.95, 5)
    for r, a0 in ((0, 2.0), (1, 8.0)):
        images = s.traversal(vae, guide, torch.full((2,), 0.5), steps=5, replica=r)
        # row k sweeps latent k: its k-th output over the steps is that prior's quantiles
        np.testing.assert_allclose(images[0, :, 0].numpy(), stats.beta(a0, 2.0).ppf(q), atol=0.02)
        np.testing.assert_allclose(images[1, :, 1].numpy(), stats.beta(2.0, 2.0).ppf(q),
                                   atol=0.02)


def test_sprites_study_learns_the_prior_when_asked(tmp_path, monkeypatch):
    # REFERENCE_SWEEP learns the Beta prior as the official code does; a tiny run with it
    # trains, measures and draws its traversals
    import dataclasses

    from pyro_ima.experiments import common
    from pyro_ima.experiments import sprites_study as s
    assert s.REFERENCE_SWEEP.learn_prior and not s.PAPER.learn_prior
    assert s.REFERENCE_SWEEP.prior_floor == 2.0  # the official code's (a, b) = |t| + 2
    monkeypatch.setenv("PYRO_IMA_CACHE", str(tmp_path))
    built = []
    real = models.GaussianVAE

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]
    monkeypatch.setattr(s.models, "GaussianVAE", spy)
    cfg = dataclasses.replace(s.QUICK, n=100, epochs=2, checkpoints=1, eval_points=10,
                              learn_prior=True, prior_floor=2.0)
    rows = s.run_setting(s.settings(cfg)[0], cfg, common.Runtime(out_dir=tmp_path))
    assert {r["metric"] for r in rows} >= {"mcc", "val_elbo"}
    assert s.summarize(rows)["prior"] == "learned (a, b >= 2)"  # named in the figure's caption
    assert built[0].learned_prior._constraints["concentration0"].lower_bound == 2.0
    a, b = sprites.default_beta_params(0)
    learned = built[0].learned_prior.values()
    assert learned["concentration1"].shape == (2, 4)
    assert float((learned["concentration1"] - torch.as_tensor(a).float()).abs().max()) > 1e-4
    assert len(list(tmp_path.glob("traversal_*.png"))) == 2


def test_table_and_claim_set_the_reference_beside_the_mcc_at_the_best_validation_elbo():
    # the reference reports its MCC at the best validation ELBO: ours at the same measure must
    # be printed beside it (and the last checkpoint's kept apart); older summaries have none
    from pyro_ima.experiments import sprites_study as s
    per = {f"mcc_{f}": 0.5 for f in sprites.FACTORS}
    summary = {"epochs": 12, "reference_mcc": s.REFERENCE_MCC, "by_gamma2": {
        1.0: {"mcc": 0.611, "mcc_at_best_val_elbo": 0.777, "c_ima": 0.1, **per},
        10.0: {"mcc": 0.622, "c_ima": 0.1, **per}}}
    lines = s.table(summary).splitlines()
    head = lines[1]
    best, ref = head.index("MCC at best val ELBO"), head.index("reference (at best val ELBO)")
    assert lines[2].split()[:4] == ["1", "0.611", "0.777", "0.974"]
    assert lines[2][best:].startswith("0.777") and lines[2][ref:].startswith("0.974")
    # no best-ELBO value recorded at gamma2 10: an empty cell, the reference in its column
    assert lines[3][best:ref].strip() == "" and lines[3][ref:].startswith("0.869")
    text = s.claim(summary)
    assert "gamma2 1: MCC 0.611 (at the best validation ELBO 0.777; reference 0.974)" in text
    assert "gamma2 10: MCC 0.622 (reference 0.869)" in text


def test_the_rows_name_the_prior_and_its_floor():
    import dataclasses

    from pyro_ima.experiments import sprites_study as s
    cfg = s.QUICK
    assert s._prior_label(cfg) == "generator"
    assert s._prior_label(dataclasses.replace(cfg, learn_prior=True)) == "learned"
    assert s._prior_label(s.REFERENCE_SWEEP) == "learned (a, b >= 2)"
