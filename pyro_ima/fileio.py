"""Files: atomic writes (JSON, bytes, torch), package versions, output-directory checks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_torch_save", "atomic_write_with",
           "package_versions", "check_out_dir", "DirLock", "read_json", "file_sha256",
           "RUN_FILES", "STUDY_FILES"]

_FILE_MODE = 0o644  # results are meant to be read by others on a shared machine

RUN_FILES = ("results.json", "state.pt", "metrics.json")
"""What a training run writes into its directory."""
STUDY_FILES = ("study.json", "settings", "results.csv", "results.json", "summary.json")
"""What a study writes into its directory (besides its figures)."""


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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, RuntimeError) and not isinstance(e, OSError):
            # torch.save reports a full disk as a RuntimeError ("enforce fail at ...")
            raise OSError(errno.EIO, f"cannot write {path.name} ({_first_line(e)})") from None
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


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:120]


def package_versions() -> dict:
    """Versions of the packages a result depends on (read from the installed metadata, so
    nothing is imported: ArviZ's import-time notice never shows)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__
    out = {"pyro_ima": __version__, "python": platform.python_version()}
    for name, dist in (("torch", "torch"), ("pyro", "pyro-ppl"), ("numpy", "numpy"),
                       ("scipy", "scipy"), ("arviz", "arviz")):
        try:
            out[name] = version(dist)
        except PackageNotFoundError:
            out[name] = None
    return out


def read_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON object from ``path``; unreadable or non-object files raise ``ValueError`` naming
    ``what`` in one line."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}: cannot read {str(path)!r} as JSON ({_first_line(e)})") \
            from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: {str(path)!r} does not hold a JSON object")
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_CREATED: set[Path] = set()  # output directories this process made (removed again if refused)


class DirLock:
    """An exclusive lock on an output directory for the duration of a ``with`` block.

    A second process that tries to write the same directory is refused at once with a
    ``ValueError`` naming ``out`` (advisory ``flock`` on ``DIR/.pyro_ima.lock``; released when
    the holder exits, even if it is killed).
    """

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / ".pyro_ima.lock"
        self._fd = None

    def __enter__(self):
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise ValueError(f"out: another pyro-ima process is writing to "
                             f"{str(self.path.parent)!r}; wait for it or choose another "
                             f"--out") from None
        return self

    def __exit__(self, exc_type, *exc):
        if self._fd is None:
            return
        directory = self.path.parent
        # refused before writing anything: leave no lock file (nor a directory we created)
        empty = exc_type is not None and [p.name for p in directory.iterdir()] == [self.path.name]
        if empty:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if empty and directory.resolve() in _CREATED:
            _CREATED.discard(directory.resolve())
            with contextlib.suppress(OSError):
                directory.rmdir()


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and make sure it is a writable directory."""
    if str(out).strip() == "":
        raise ValueError("out: expected a directory path, got an empty string")
    out = Path(out)
    if not out.exists():
        _CREATED.add(out.resolve())
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"out: cannot create directory {str(out)!r} ({e.strerror})") from None
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"out: expected a writable directory, got {str(out)!r}")
    return out
