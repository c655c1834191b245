"""Small shared helpers: seeds, argument checks, atomic writes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "derive_seed",
    "replica_seeds",
    "check_positive",
    "check_int",
    "check_finite_tensor",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_torch_save",
    "short_reason",
]


def derive_seed(seed: int, *keys: int) -> int:
    """An independent 63-bit seed derived from ``seed`` and integer ``keys``.

    Uses :class:`numpy.random.SeedSequence` so that streams for different purposes (network
    initialization, minibatch order, validation noise) never overlap.
    """
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in keys))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def replica_seeds(seed: int | Sequence[int], replicas: int | None) -> list[int]:
    """Seeds for each replica: ``seed`` itself, or ``seed + r`` for an int, or the given list."""
    if replicas is None:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"seed: expected an int for a single run, got {seed!r}")
        return [int(seed)]
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed) + r for r in range(replicas)]
    seeds = [int(s) for s in seed]
    if len(seeds) != replicas:
        raise ValueError(f"seed: expected {replicas} seeds (one per replica), got {len(seeds)}")
    return seeds


def check_positive(name: str, value, *, allow_tensor: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` (a number or tensor) is finite and > 0."""
    if torch.is_tensor(value) and allow_tensor:
        if not bool(torch.isfinite(value).all()) or not bool((value > 0).all()):
            raise ValueError(f"{name}: expected finite values > 0, got {value.tolist()}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name}: expected a positive number, got {type(value).__name__}")
    if not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")


def check_int(name: str, value, *, minimum: int = 1) -> None:
    """Raise unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def check_finite_tensor(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or inf."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, found {bad} NaN/inf entries")


def short_reason(e: BaseException, limit: int = 80) -> str:
    """The first line of an exception's message, at most ``limit`` characters."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON atomically; refuses NaN/inf (``allow_nan=False``)."""
    text = json.dumps(obj, indent=2, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def atomic_torch_save(path: str | os.PathLike, obj) -> None:
    """``torch.save`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
