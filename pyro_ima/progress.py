"""Progress for people: a tqdm bar on a terminal, plain lines in a log."""

from __future__ import annotations

import math
import sys
import time

from tqdm.auto import tqdm

__all__ = ["EpochProgress", "Progress", "is_terminal"]


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Counts finished items of a known total: a tqdm bar on a terminal; otherwise one line
    per item (no carriage returns or cursor escapes, so a log file stays readable).

    Arguments:
        total: the number of items.
        desc: a short description shown before the count.
        stream: where to write (default stderr).
        lines: write a line per item when not on a terminal (``False``: stay silent there).
    """

    def __init__(self, total: int, desc: str, stream=None, lines: bool = True):
        self.total, self.desc, self.done = total, desc, 0
        self.stream = sys.stderr if stream is None else stream
        self.lines = lines
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, leave=False, file=self.stream) \
            if is_terminal(self.stream) else None

    def update(self, note: str = "") -> None:
        """One more item finished; ``note`` says what it gave."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if note:
                self.bar.set_postfix_str(note[:60])
        elif self.lines:
            elapsed = time.perf_counter() - self.start
            self.stream.write(f"{self.desc}: {self.done}/{self.total} ({elapsed:.0f}s)"
                              f"{'  ' + note if note else ''}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EpochProgress(Progress):
    """A ``fit`` callback: the epochs done, with the training and mean validation ELBO."""

    def __call__(self, epoch: int, record: dict) -> None:
        vals = [v for v in record.get("val_elbo") or [] if v is not None]
        note = f"train ELBO {record['train_elbo']:.3f}"
        if vals:
            note += f", val {sum(vals) / len(vals):.3f}"
        if len(vals) > 1 or record.get("active", 1) > 1:
            note += f", {record['active']} replicas active"
        if not math.isfinite(record["train_elbo"]):
            note = "non-finite training loss (see the faults)"
        self.update(note)
