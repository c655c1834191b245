"""Datasets: latents from a prior, mixed into observations, split with a seed."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ._utils import (
    check_int,
    derive_seed,
    device_of,
    dtype_of,
    generator,
    map_tensors,
    seeded_rng,
    short_reason,
)

__all__ = ["Split", "Dataset", "make_dataset", "save_dataset", "load_dataset", "split_sizes",
           "load_array", "dataset_from_array"]

_LATENT_STREAM, _NOISE_STREAM, _SPLIT_STREAM = 11, 12, 13


@dataclass(frozen=True)
class Split:
    """One split: observations ``x`` ``(N, D)`` and their true latents ``z`` ``(N, d)``
    (``None`` for data whose latents are unknown)."""

    x: torch.Tensor
    z: torch.Tensor | None

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class Dataset:
    """Train/validation/test splits with the generating mixing and prior kept alongside."""

    train: Split
    val: Split
    test: Split
    mixing: Callable[[torch.Tensor], torch.Tensor] | None = None
    prior: torch.distributions.Distribution | None = None
    config: dict = field(default_factory=dict)


def make_dataset(mixing: Callable[[torch.Tensor], torch.Tensor],
                 prior: torch.distributions.Distribution, n: int = 60_000, *,
                 split: tuple[float, float, float] = (0.7, 0.2, 0.1), noise_std: float = 0.0,
                 seed: int = 0) -> Dataset:
    """Samples ``z ~ prior``, ``x = mixing(z) + noise_std * eps`` and splits them.

    Arguments:
        mixing: the ground-truth map on ``(N, d)``.
        prior: a distribution with event shape ``(d,)``.
        n: total number of points.
        split: fractions for train, validation and test (sum to 1).
        noise_std: std of additive Gaussian observation noise (0: noiseless).
        seed: seeds latents, noise and the split, each from its own stream.
    """
    split_sizes(n, split)  # checks n and split first
    want = "prior: expected a distribution of batch shape () and event shape (d,)"
    if not isinstance(prior, torch.distributions.Distribution):
        raise ValueError(f"{want}, got {type(prior).__name__}")
    if len(prior.event_shape) != 1 or len(prior.batch_shape):
        hint = ("one replica of a learned prior: vae.replica_prior(r)"
                if len(prior.event_shape) == 1 else "use .to_event(1) on univariate ones")
        raise ValueError(f"{want}, got batch shape {tuple(prior.batch_shape)}, event shape "
                         f"{tuple(prior.event_shape)} ({hint})")
    if not isinstance(noise_std, (int, float)) or isinstance(noise_std, bool) or \
            not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std: expected a finite number >= 0, got {noise_std!r}")
    device = device_of(prior)
    # latents and noise are drawn in float32 whatever the prior's dtype, so a float64 run
    # sees the same data as a float32 one (to float32 rounding of the draws)
    with seeded_rng(derive_seed(seed, _LATENT_STREAM), device):
        z32 = map_tensors(prior, lambda t: t.float() if t.is_floating_point() else t)
        z = z32.sample((n,)).to(dtype_of(prior))
    with torch.no_grad():
        x = mixing(z)
    if noise_std > 0:
        g = generator(derive_seed(seed, _NOISE_STREAM), x.device)
        eps = torch.randn(x.shape, generator=g, device=x.device, dtype=torch.float32)
        x = x + noise_std * eps.to(x.dtype)
    train, val, test = _split(x, z, split, seed)
    config = {"n": n, "split": list(split), "noise_std": noise_std, "seed": seed,
              "mixing": repr(mixing)}
    return Dataset(train, val, test, mixing, prior, config)


MIN_SPLIT = 3  # points a split needs at least (an MCC needs three)


def split_sizes(n: int, split=(0.7, 0.2, 0.1)) -> tuple[int, int, int]:
    """How many of ``n`` points go to train, validation and test; refuses a split that leaves
    fewer than 3 points anywhere, naming ``n``."""
    check_int("n", n, minimum=1)
    if len(split) != 3 or any(not s > 0 for s in split) or abs(sum(split) - 1) > 1e-6:
        raise ValueError(f"split: expected three positive fractions summing to 1, got {split}")
    n_train, n_val = int(round(split[0] * n)), int(round(split[1] * n))
    sizes = (n_train, n_val, n - n_train - n_val)
    if min(sizes) < MIN_SPLIT:
        raise ValueError(f"n: {n} points split {tuple(split)} leave {sizes} for train, "
                         f"validation and test; each needs at least {MIN_SPLIT}")
    return sizes


def _split(x, z, split, seed):
    n = x.shape[0]
    n_train, n_val, _ = split_sizes(n, split)
    perm = torch.randperm(n, generator=generator(derive_seed(seed, _SPLIT_STREAM)),
                          device="cpu").to(x.device)
    parts = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    return [Split(x[p].contiguous(), None if z is None else z[p].contiguous()) for p in parts]


def load_array(path) -> torch.Tensor:
    """A user's data file as a float tensor ``(N, D)``: a ``.npy`` array, or a ``.pt`` file
    holding a tensor (or a dict with one under ``"x"``). Refuses, naming ``data``, anything
    else: other extensions, pickled objects, other ranks, NaN or inf."""
    path = str(path)
    try:
        if path.endswith(".npy"):
            arr = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.endswith(".pt"):
            obj = torch.load(path, weights_only=True, map_location="cpu")
            arr = obj.get("x") if isinstance(obj, dict) else obj
        else:
            raise ValueError("expected a .npy or .pt file")
    except (OSError, ValueError, RuntimeError, EOFError) as e:
        raise ValueError(f"data: cannot read {path!r} ({short_reason(e)})") from None
    if not torch.is_tensor(arr) or arr.dim() != 2 or not (arr.is_floating_point() or
                                                            arr.dtype in (torch.int64,
                                                                          torch.int32,
                                                                          torch.uint8)):
        what = (f"{tuple(arr.shape)} of {str(arr.dtype).replace('torch.', '')}"
                if torch.is_tensor(arr) else type(arr).__name__)
        raise ValueError(f"data: {path!r} must hold one real-valued (N, D) array, got {what}")
    arr = arr.to(torch.get_default_dtype())
    if not bool(torch.isfinite(arr).all()):
        raise ValueError(f"data: {path!r} holds NaN or inf values")
    return arr


def dataset_from_array(x: torch.Tensor, split=(0.7, 0.2, 0.1), seed: int = 0) -> Dataset:
    """A user's observations ``(N, D)`` split with a seed (true latents unknown: ``z`` is
    ``None``)."""
    train, val, test = _split(x, None, split, seed)
    return Dataset(train, val, test, config={"n": x.shape[0], "split": list(split),
                                             "seed": seed})


_FORMAT = "pyro_ima.dataset.v1"


def save_dataset(ds: Dataset, path) -> None:
    """Write the splits and the config (with the mixing's repr) to ``path`` atomically.

    The mixing and prior objects themselves are not pickled: the config records how they were
    made, and :func:`load_dataset` returns the tensors (the caller rebuilds the mixing from its
    seed, e.g. ``mixings.Moebius(dim, seed=...)``).
    """
    from .fileio import atomic_torch_save
    payload = {"format": _FORMAT, "config": dict(ds.config)}
    for name in ("train", "val", "test"):
        split = getattr(ds, name)
        payload[name] = {"x": split.x, "z": split.z}
    atomic_torch_save(path, payload)


def load_dataset(path, *, mixing=None, prior=None) -> Dataset:
    """Read a file written by :func:`save_dataset`; refuses foreign or corrupt files."""
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt files
        raise ValueError(f"path: cannot read a dataset from {str(path)!r} "
                         f"({short_reason(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"path: {str(path)!r} is not a pyro-ima dataset file")
    splits = []
    for name in ("train", "val", "test"):
        part = payload.get(name)
        if not isinstance(part, dict) or not all(torch.is_tensor(part.get(k)) for k in "xz"):
            raise ValueError(f"path: {str(path)!r} has no valid {name!r} split")
        if part["x"].shape[:1] != part["z"].shape[:1]:
            raise ValueError(f"path: {str(path)!r} has a {name!r} split whose x and z hold "
                             f"different numbers of points ({part['x'].shape[0]} and "
                             f"{part['z'].shape[0]})")
        splits.append(Split(part["x"], part["z"]))
    return Dataset(*splits, mixing=mixing, prior=prior, config=payload.get("config", {}))
