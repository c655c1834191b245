"""A local Sprites renderer: 64x64 RGB images of one sprite with 4 Beta-distributed factors.

The factors ``B`` in ``(0, 1)`` are x, y, scale and hue. The geometries follow spriteworld,
whose shapes are regular polygons of area 1 scaled by ``B_s`` (so area ``B_s^2``) around the
centre ``(B_x, B_y)``, anywhere in the frame (a sprite can be partly out of it):

- ``"triangle"`` (the default): spriteworld's triangle, apex up, as the official code's
  generator draws (side ``B_s sqrt(4 / sqrt(3))``, centred on its centroid).
- ``"square"``: spriteworld's axis-aligned square (side ``B_s``).
- ``"large-square"``: a square of side ``sqrt(2) B_s`` (twice spriteworld's area), the one this
  module drew before the triangle; kept so its numbers in docs/results.md can be reproduced.
- ``"compact"``: the first renderer here, centre ``0.2 + 0.55 B`` and side ``0.11 + 0.09 B_s``
  (7-13 pixels). Its images carry far less signal (:func:`factor_gram` per sd, 1,000 draws of
  seed 0): a total pixel variance of 81 against 1,109 for ``"large-square"`` (683 for the
  triangle), and a one-sd change of the size (hue) moves an image by a squared distance of 6
  (41) against 4,859 (823) for ``"large-square"`` and 1,610 (419) for the triangle.

Why the scale matters for the IMA bias: each geometric Jacobian column is the normal velocity
of the sprite's boundary, and around a regular polygon those of an x shift, a y shift and a
scaling are orthogonal to each other, so the columns are nearly orthogonal (up to the pixel
grid); per unit of the factor, x and y have equal norms (a conformal pair for any regular
polygon, pinned only by the factors' distributions), and the size column's squared norm is
about that of x for ``"large-square"`` (a conformal x, y, size block: any rotation among the
three keeps the columns orthogonal), 1/2 of it for ``"square"`` and 0.41 for ``"triangle"``,
which breaks that symmetry for the size (:func:`factor_gram` measures it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import hsv_to_rgb

from ._utils import check_int, derive_seed
from .data import Dataset, Split, split_sizes
from .fileio import atomic_write_bytes
from .priors import beta as beta_prior

__all__ = ["FACTORS", "GEOMETRIES", "default_beta_params", "sample_factors", "render",
           "sprites_dataset", "SpritesConfig", "coverage", "binary_sprites", "factor_signal",
           "factor_gram"]

FACTORS = ("x", "y", "scale", "hue")
GEOMETRIES = ("triangle", "square", "large-square", "compact")
_PARAM_STREAM, _FACTOR_STREAM, _SPLIT_STREAM, _BINARY_STREAM = 21, 22, 23, 24


def default_beta_params(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` per factor drawn from ``U(2, 15)`` under ``seed`` (the paper's generator)."""
    rng = np.random.default_rng(derive_seed(seed, _PARAM_STREAM))
    return rng.uniform(2, 15, size=4), rng.uniform(2, 15, size=4)


def sample_factors(n: int, a, b, seed: int) -> np.ndarray:
    """``B ~ Beta(a_k, b_k)`` per factor, ``(n, 4)`` in ``(0, 1)`` (x, y, scale, hue order)."""
    check_int("n", n)
    rng = np.random.default_rng(derive_seed(seed, _FACTOR_STREAM))
    return rng.beta(np.asarray(a, float), np.asarray(b, float), size=(n, 4))


def _coverage(lo: np.ndarray, hi: np.ndarray, size: int, ss: int) -> np.ndarray:
    """Fraction of each pixel's ``ss`` subsamples inside ``[lo, hi]``, ``(n, size)``."""
    sub = (np.arange(size * ss) + 0.5) / (size * ss)  # subpixel centres in [0, 1]
    inside = (sub >= lo[:, None]) & (sub <= hi[:, None])  # (n, size * ss)
    return inside.reshape(len(lo), size, ss).mean(-1, dtype=np.float32)


def _check_geometry(geometry: str) -> None:
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry: expected one of {list(GEOMETRIES)}, got {geometry!r}")


def render(factors: np.ndarray, size: int = 64, supersample: int = 4,
           chunk: int = 1024, geometry: str = "triangle") -> np.ndarray:
    """Images ``(n, 3, size, size)`` uint8 of one sprite on black.

    Factors ``B`` in ``(0, 1)`` set the sprite's centre and size by ``geometry`` (see the
    module's docstring), hue ``B_h`` with saturation and value 1, anti-aliased as
    :func:`coverage` says.
    """
    f = np.asarray(factors, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != 4:
        raise ValueError(f"factors: expected (n, 4), got {f.shape}")
    _check_geometry(geometry)
    out = np.empty((len(f), 3, size, size), dtype=np.uint8)
    for s in range(0, len(f), chunk):  # chunks keep the float intermediates in cache
        out[s:s + chunk] = _render_chunk(f[s:s + chunk], size, supersample, geometry)
    return out


# a regular triangle of area 1 has circumradius sqrt(4 / (3 sqrt(3)))
_TRIANGLE_R = float(np.sqrt(4 / (3 * np.sqrt(3))))


def coverage(factors: np.ndarray, size: int = 64, supersample: int = 4,
             geometry: str = "triangle") -> np.ndarray:
    """The sprite's anti-aliased coverage of every pixel, ``(n, size, size)`` in ``[0, 1]``
    (row 0 at the top); only the x, y and scale factors matter.

    Squares: the mean over ``supersample x supersample`` subsamples of every pixel; a square's
    indicator is separable, so that is the product of two 1-D means (60,000 images in a few
    seconds of numpy). The triangle: ``supersample`` rows per pixel, each row's horizontal
    overlap with the triangle exact (a convex shape meets a row in one interval), the row
    holding the base weighted by the share of it above the base.
    """
    _check_geometry(geometry)
    f = np.asarray(factors, dtype=np.float64)
    if geometry == "triangle":
        return _triangle_coverage(f[:, 0], f[:, 1], f[:, 2] * _TRIANGLE_R, size, supersample)
    cx, cy, half = _square(f, geometry)
    cov_x = _coverage(cx - half, cx + half, size, supersample)  # (n, W)
    cov_y = _coverage(cy - half, cy + half, size, supersample)  # (n, H)
    return cov_y[:, ::-1, None] * cov_x[:, None, :]  # y grows upwards


def _square(f: np.ndarray, geometry: str):
    """Centre and half side of the square geometries."""
    if geometry == "compact":
        return 0.2 + 0.55 * f[:, 0], 0.2 + 0.55 * f[:, 1], (0.11 + 0.09 * f[:, 2]) / 2
    # side B_s ("square") or sqrt(2) B_s ("large-square")
    return f[:, 0], f[:, 1], f[:, 2] / (2.0 if geometry == "square" else np.sqrt(2.0))


def _smooth_coverage(f: np.ndarray, size: int, geometry: str, ss: int) -> np.ndarray:
    """Coverage that moves smoothly with the factors, for derivatives: a square's exact pixel
    areas, a triangle's ``ss`` rows per pixel (each exact horizontally, its base exact)."""
    if geometry == "triangle":
        return _triangle_coverage(f[:, 0], f[:, 1], f[:, 2] * _TRIANGLE_R, size, ss)
    cx, cy, half = _square(f, geometry)
    cov_x, cov_y = _overlap(cx - half, cx + half, size), _overlap(cy - half, cy + half, size)
    return cov_y[:, ::-1, None] * cov_x[:, None, :]


def _triangle_coverage(cx, cy, r, size: int, ss: int) -> np.ndarray:
    """Coverage of a regular triangle, apex up, centroid ``(cx, cy)``, circumradius ``r``."""
    dy = 1.0 / (size * ss)
    y0 = np.arange(size * ss) * dy  # subrow bottoms, upwards
    # the part of each subrow between the base and the apex (so the base moves smoothly), and
    # the triangle's half-width [cx - w, cx + w] at its middle
    lo_y = np.maximum(y0, (cy - r / 2)[:, None])
    hi_y = np.minimum(y0 + dy, (cy + r)[:, None])
    frac = np.clip((hi_y - lo_y) / dy, 0.0, 1.0).astype(np.float32)  # (n, S)
    w = np.maximum((cy[:, None] + r[:, None] - (lo_y + hi_y) / 2) / np.sqrt(3.0), 0.0)
    rows = _overlap(cx[:, None] - w, cx[:, None] + w, size) * frac[..., None]  # (n, S, W)
    cov = rows.reshape(len(cx), size, ss, size).mean(2)
    return cov[:, ::-1]  # row 0 at the top


def _overlap(lo: np.ndarray, hi: np.ndarray, size: int) -> np.ndarray:
    """Exact share of each pixel ``[j, j + 1] / size`` inside ``[lo, hi]``, ``(*, size)``."""
    j = np.arange(size, dtype=np.float32)
    a = (lo * size).astype(np.float32)[..., None] - j
    b = (hi * size).astype(np.float32)[..., None] - j
    # pixel j holds clip(hi - j, 0, 1) - clip(lo - j, 0, 1) of [lo, hi] (in pixel units)
    return np.clip(b, 0, 1, out=b) - np.clip(a, 0, 1, out=a)


def _hue_rgb(hue: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of hues at saturation and value 1, ``(n, 3)``."""
    return hsv_to_rgb(np.stack([hue, np.ones(len(hue)), np.ones(len(hue))], -1))


def _render_chunk(f: np.ndarray, size: int, supersample: int, geometry: str) -> np.ndarray:
    rgb = _hue_rgb(f[:, 3]).astype(np.float32)  # (n, 3)
    alpha = coverage(f, size, supersample, geometry)  # (n, H, W)
    img = (rgb * 255)[:, :, None, None] * alpha[:, None]  # (n, 3, H, W)
    return np.rint(img, out=img).astype(np.uint8)


@dataclass(frozen=True)
class SpritesConfig:
    """What defines a Sprites set (and its cache key)."""

    n: int = 60_000
    seed: int = 0
    a: tuple | None = None
    b: tuple | None = None
    size: int = 64
    supersample: int = 4
    split: tuple = (0.7, 0.2, 0.1)
    geometry: str = "triangle"

    def key(self) -> str:
        _check_geometry(self.geometry)
        fields = dict(self.__dict__)
        if fields["geometry"] == "compact":  # the key files rendered before geometries had
            del fields["geometry"]
        if self.geometry == "triangle":  # the triangle's base became exact in revision 2
            fields["renderer"] = 2
        text = json.dumps(fields, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def sprites_dataset(cfg: SpritesConfig = SpritesConfig(), cache_dir=None) -> Dataset:
    """A seeded Sprites dataset (images ``x`` float in [0, 1], ``(N, 3, 64, 64)``; true factors
    ``z`` in ``(0, 1)``, ``(N, 4)``), cached to ``cache_dir`` keyed by the config.

    ``cache_dir`` defaults to ``$PYRO_IMA_CACHE`` or ``~/.cache/pyro_ima``; the cache file is
    written atomically and re-rendered if unreadable.
    """
    cache = Path(cache_dir or os.environ.get("PYRO_IMA_CACHE", Path.home() / ".cache/pyro_ima"))
    path = cache / f"sprites-{cfg.key()}.npz"
    a, b = (default_beta_params(cfg.seed) if cfg.a is None or cfg.b is None
            else (np.asarray(cfg.a, float), np.asarray(cfg.b, float)))
    n_train, n_val, _ = split_sizes(cfg.n, cfg.split)  # refuses a split too small, before work
    images = factors = None
    if path.exists():
        try:
            with np.load(path) as f:
                images, factors = f["images"], f["factors"]
        except (OSError, ValueError, KeyError):
            images = None
    if images is None:
        factors = sample_factors(cfg.n, a, b, cfg.seed)
        images = render(factors, cfg.size, cfg.supersample, geometry=cfg.geometry)
        cache.mkdir(parents=True, exist_ok=True)
        import io
        buf = io.BytesIO()
        np.savez(buf, images=images, factors=factors)
        atomic_write_bytes(path, buf.getvalue())
    perm = np.random.default_rng(derive_seed(cfg.seed, _SPLIT_STREAM)).permutation(cfg.n)
    parts = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    splits = [Split(torch.from_numpy(images[p]).float().div_(255),
                    torch.from_numpy(factors[p]).float()) for p in parts]
    # the factors' distribution, kept as make_dataset keeps its prior
    return Dataset(*splits, prior=beta_prior(4, a=a.tolist(), b=b.tolist()),
                   config={"sprites": cfg.__dict__, "cache": str(path)})


def binary_sprites(n: int = 10_000, size: int = 28, seed: int = 0,
                   split: tuple = (0.7, 0.2, 0.1)) -> Dataset:
    """A small binarized Sprites set, made here (nothing is downloaded): ``x`` ``(N, size^2)``
    in ``{0, 1}`` (flattened ``size x size`` images, MNIST-like at the default 28), ``z``
    ``(N, 3)`` the factors x, y, scale in ``(0, 1)``.

    Each pixel is 1 with probability equal to the square's anti-aliased coverage
    (:func:`coverage`, the compact geometry), drawn under ``seed`` as binarized MNIST is;
    factors are Beta-distributed with the generator's parameters for ``seed``
    (:func:`default_beta_params`).
    """
    check_int("n", n, minimum=3)
    check_int("size", size, minimum=4)
    a, b = default_beta_params(seed)
    factors = sample_factors(n, a, b, seed)[:, :3]
    probs = coverage(np.concatenate([factors, np.zeros((n, 1))], 1), size,
                     geometry="compact").reshape(n, -1)
    rng = np.random.default_rng(derive_seed(seed, _BINARY_STREAM))
    x = (rng.random(probs.shape) < probs).astype(np.float32)
    perm = np.random.default_rng(derive_seed(seed, _SPLIT_STREAM)).permutation(n)
    n_train, n_val = int(round(split[0] * n)), int(round(split[1] * n))
    parts = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    splits = [Split(torch.from_numpy(x[p]), torch.from_numpy(factors[p]).float())
              for p in parts]
    return Dataset(*splits, config={"binary_sprites": {"n": n, "size": size, "seed": seed}})


def factor_gram(geometry: str = "triangle", n: int = 1000, seed: int = 0, size: int = 64,
                rel_step: float = 0.005, units: str = "sd", supersample: int = 32,
                chunk: int = 250) -> np.ndarray:
    """The mean Gram matrix of the generator's Jacobian columns, ``(4, 4)``.

    ``G[k, l]`` is the mean over ``n`` factor draws (the generator's Beta parameters for
    ``seed``) of ``<dx/dB_k, dx/dB_l>`` (pixels in [0, 1]; central differences with step
    ``rel_step * sd(B_k)`` on unrounded images whose coverage moves smoothly: a square's exact
    pixel areas, a triangle's ``supersample`` rows per pixel, each exact horizontally), with
    each factor measured in ``units``: ``"sd"`` (its standard deviation, so ``G[k, k]`` is the
    squared image distance a one-sd change makes, to first order) or ``"factor"`` (the factor
    itself). Off-diagonal entries near 0 mean orthogonal
    columns; equal diagonal entries within a block of orthogonal columns mean a conformal
    block, whose rotations keep the columns orthogonal (no IMA preference among them).
    """
    _check_geometry(geometry)
    check_int("n", n, minimum=2)
    if units not in ("sd", "factor"):
        raise ValueError(f"units: expected 'sd' or 'factor', got {units!r}")
    f = sample_factors(n, *default_beta_params(seed), seed)
    sd = f.std(0)
    unit = sd if units == "sd" else np.ones(4)
    gram = np.zeros((4, 4))
    for s in range(0, n, chunk):
        g = f[s:s + chunk]
        cols = []
        for k in range(4):
            h = rel_step * sd[k]
            up, down = g.copy(), g.copy()
            up[:, k] += h
            down[:, k] -= h
            diff = (_float_images(up, size, geometry, supersample)
                    - _float_images(down, size, geometry, supersample))
            cols.append(diff.reshape(len(g), -1) * (unit[k] / (2 * h)))
        cols = np.stack(cols, 1)  # (m, 4, P)
        gram += np.einsum("mkp,mlp->kl", cols, cols)
    return gram / n


def _float_images(f: np.ndarray, size: int, geometry: str, supersample: int) -> np.ndarray:
    """Unrounded images in [0, 1], ``(n, 3, size, size)``, from :func:`_smooth_coverage`."""
    f = np.clip(f, 1e-6, 1 - 1e-6)
    alpha = _smooth_coverage(f, size, geometry, supersample)  # (n, H, W)
    return _hue_rgb(f[:, 3])[:, :, None, None] * alpha[:, None]


def factor_signal(geometry: str = "triangle", n: int = 2000, seed: int = 0,
                  size: int = 64, rel_step: float = 0.005) -> dict:
    """How much each factor moves the image, against unit pixel noise.

    ``per_factor``: the diagonal of :func:`factor_gram` in sd units, the mean squared pixel
    distance a one-sd change of factor ``k`` makes, to first order (pixels in [0, 1]). With a
    Gaussian likelihood of precision ``gamma2`` per pixel, ``gamma2`` times it is what encoding
    the factor gains in reconstruction (nats, up to 1/2) against its KL cost. Also ``gram``,
    that whole matrix, ``sd``, the factors' sds (``gram / outer(sd, sd)`` is it per unit of the
    factors), ``pixel_variance``, the total pixel variance of the images (the trace of their
    covariance) and ``lit_fraction``, the mean share of pixels covered.
    """
    gram = factor_gram(geometry, n, seed, size, rel_step)
    f = sample_factors(n, *default_beta_params(seed), seed)
    flat = render(f, size, geometry=geometry).reshape(n, -1) / 255.0
    return {"per_factor": {name: float(gram[k, k]) for k, name in enumerate(FACTORS)},
            "gram": gram, "sd": f.std(0),
            "pixel_variance": float(flat.var(0).sum()),
            "lit_fraction": float(coverage(f, size, geometry=geometry).mean()),
            "geometry": geometry}
