"""Small shared helpers: seeds, generators on a device, argument checks, moving distributions."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.distributions import Distribution, Transform, constraints

__all__ = [
    "derive_seed",
    "replica_seeds",
    "replica_count",
    "seeded_rng",
    "generator",
    "check_positive",
    "check_int",
    "check_finite_tensor",
    "short_reason",
    "map_tensors",
    "to_like",
    "device_of",
    "dtype_of",
    "torch_defaults",
    "as_tensor_on",
    "parse_device",
    "parse_dtype",
]

MAX_SEED = 2**63 - 1


def derive_seed(seed: int, *keys: int) -> int:
    """An independent 63-bit seed derived from ``seed`` and integer ``keys``.

    Uses :class:`numpy.random.SeedSequence` so that streams for different purposes (network
    initialization, minibatch order, validation noise) never overlap.
    """
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in keys))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (draws land on that device)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def replica_count(replicas: int | None) -> int:
    """``R``: the size of the replica axis (``replicas=None`` is one replica, squeezed on
    return by the public functions)."""
    if replicas is None:
        return 1
    check_int("replicas", replicas)
    return replicas


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | str = "cpu"):
    """Run a block on PyTorch's global RNG seeded with ``seed`` for ``device``, restoring the
    caller's RNG state afterwards (for code that cannot take a generator, e.g.
    ``Distribution.sample``)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        yield


def replica_seeds(seed: int | Sequence[int], replicas: int) -> list[int]:
    """One seed per replica: ``seed + r`` for an int, or the given sequence (length ``R``)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        check_int("seed", int(seed), minimum=0, maximum=MAX_SEED - replicas)
        return [int(seed) + r for r in range(replicas)]
    try:
        seeds = [int(s) for s in seed]
    except TypeError:
        raise TypeError(f"seed: expected an int or one int per replica, got {seed!r}") from None
    if len(seeds) != replicas:
        raise ValueError(f"seed: expected {replicas} seeds (one per replica), got {len(seeds)}")
    for s in seeds:
        check_int("seed", s, minimum=0, maximum=MAX_SEED)
    return seeds


def check_positive(name: str, value, *, allow_tensor: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` (a number or tensor) is finite and > 0."""
    if torch.is_tensor(value) and allow_tensor:
        if value.dtype == torch.bool:
            raise TypeError(f"{name}: expected positive numbers, got a bool tensor")
        if not bool(torch.isfinite(value).all()) or not bool((value > 0).all()):
            raise ValueError(f"{name}: expected finite values > 0, got {value.tolist()}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name}: expected a positive number, got {type(value).__name__}")
    if not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")


def check_int(name: str, value, *, minimum: int = 1, maximum: int | None = None) -> None:
    """Raise unless ``value`` is an int in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an int <= {maximum}, got {value}")


def check_finite_tensor(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or inf."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, found {bad} NaN/inf entries")


def short_reason(e: BaseException, limit: int = 80) -> str:
    """The first line of an exception's message, at most ``limit`` characters."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_like(ref: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function moving a tensor to ``ref``'s device, and floating tensors to its dtype."""
    def fn(t: torch.Tensor) -> torch.Tensor:
        return t.to(ref.device, ref.dtype if t.is_floating_point() else None)
    return fn


def map_tensors(obj, fn: Callable[[torch.Tensor], torch.Tensor]):
    """``obj`` with ``fn`` applied to every tensor it holds (a copy where anything changed).

    Walks distributions, transforms and constraints (torch and Pyro ones, including composed
    and transformed ones) and the lists, tuples and dicts inside them, so a prior or a fixed
    ground-truth mixing can follow a model to another device or dtype. Objects of other kinds
    are returned as they are.
    """
    if torch.is_tensor(obj):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        items = [map_tensors(o, fn) for o in obj]
        return obj if all(a is b for a, b in zip(items, obj, strict=True)) else type(obj)(items)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, torch.distributions.transforms._InverseTransform):
        return map_tensors(obj._inv, fn).inv
    if isinstance(obj, (Distribution, Transform, constraints.Constraint)):
        new = copy.copy(obj)
        stale = ("_inv", "_cached_x_y") if isinstance(obj, Transform) else ()
        for k, v in vars(obj).items():  # a transform's cache and link to its inverse are stale
            new.__dict__[k] = map_tensors(v, fn) if k not in stale else None
        if stale:
            new._cached_x_y = None, None
        return new
    return obj


def _tensors(obj) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    map_tensors(obj, lambda t: found.append(t) or t)
    return found


def device_of(obj, default: torch.device | str = "cpu") -> torch.device:
    """The device of the first tensor ``obj`` holds (a distribution, transform, ...)."""
    found = _tensors(obj)
    return found[0].device if found else torch.device(default)


def dtype_of(obj) -> torch.dtype:
    """The dtype of the first floating tensor ``obj`` holds (PyTorch's default if none)."""
    found = [t.dtype for t in _tensors(obj) if t.is_floating_point()]
    return found[0] if found else torch.get_default_dtype()


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_dtype(name: str) -> torch.dtype:
    """``"float32"`` or ``"float64"`` as a torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def parse_device(name: str) -> torch.device:
    """A device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) that this machine has."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected a device such as 'cpu' or 'cuda', got {name!r}") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} was asked for but this machine has no CUDA device")
    if device.type not in ("cpu", "cuda") and not getattr(torch, device.type, None):
        raise ValueError(f"device: {name!r} is not available here")
    return device


@contextlib.contextmanager
def torch_defaults(device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Build things on ``device`` in ``dtype``: PyTorch's default device and dtype for a block,
    restored afterwards (for application code such as the CLI and the studies)."""
    old = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            yield
    finally:
        torch.set_default_dtype(old)


def as_tensor_on(x, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` (a tensor or array) on ``device``, floating values in ``dtype``. Unlike
    ``torch.as_tensor`` alone this never routes through PyTorch's default device."""
    if not torch.is_tensor(x):
        x = torch.as_tensor(x, device=device)
    return x.to(device, dtype if dtype is not None and x.is_floating_point() else None)
