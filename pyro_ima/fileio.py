"""Files: atomic writes (JSON, bytes, torch), package versions, output-directory checks."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_torch_save", "atomic_write_with",
           "package_versions", "check_out_dir"]

_FILE_MODE = 0o644  # results are meant to be read by others on a shared machine


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A reader never sees a partial file: after a kill, a full disk or an exception, ``path`` is
    either its old content or the new one, and the temporary file is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON atomically; refuses NaN/inf (``allow_nan=False``)."""
    text = json.dumps(obj, indent=2, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def atomic_torch_save(path: str | os.PathLike, obj) -> None:
    """``torch.save`` through a temporary file and a rename."""
    import torch
    atomic_write_with(path, lambda tmp: torch.save(obj, tmp))


def package_versions() -> dict:
    """Versions of the packages a result depends on."""
    import arviz
    import numpy
    import pyro
    import scipy
    import torch

    from . import __version__
    return {"pyro_ima": __version__, "torch": torch.__version__, "pyro": pyro.__version__,
            "numpy": numpy.__version__, "scipy": scipy.__version__, "arviz": arviz.__version__,
            "python": platform.python_version()}


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and make sure it is a writable directory."""
    if str(out).strip() == "":
        raise ValueError("out: expected a directory path, got an empty string")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"out: cannot create directory {str(out)!r} ({e.strerror})") from None
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"out: expected a writable directory, got {str(out)!r}")
    return out
