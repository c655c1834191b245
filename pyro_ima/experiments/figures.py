"""Figure conventions shared by the studies: words and symbols on the axes, error bars,
reference lines, and a caption that cites where a comparison value comes from."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence

import numpy as np

from ..fileio import atomic_write_with

__all__ = ["pyplot", "save_figure", "caption", "mean_sd", "errorbar_by", "slope_line",
           "trend_line", "mean_ci95", "PAPER", "SWEEP", "GAMMA2"]

PAPER = "Reizinger et al., Embrace the Gap: VAEs Perform Independent Mechanism Analysis " \
        "(NeurIPS 2022)"
SWEEP = f"the public sweep of the official code of {PAPER}"
GAMMA2 = r"decoder precision $\gamma^2$"

_RC = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5,
       "xtick.labelsize": 8, "ytick.labelsize": 8, "mathtext.fontset": "cm",
       "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), with the
    studies' style (serif maths, small fonts, no top/right spines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update(_RC)
    return plt


def caption(fig, text: str, width: int = 120) -> None:
    """A caption under the axes (wrapped to ``width`` characters; kept inside the saved
    figure, whose bounding box is fitted to what is drawn)."""
    fig.text(0.01, 0.0, textwrap.fill(text, width), ha="left", va="top", fontsize=7.5)


def save_figure(fig, path_stem) -> None:
    """Write ``fig`` as PNG and PDF next to each other (each atomically: a kill never leaves a
    broken figure in place of a good one), then close it."""
    for ext in ("png", "pdf"):
        atomic_write_with(f"{path_stem}.{ext}", lambda tmp, ext=ext: fig.savefig(
            tmp, format=ext, dpi=150, bbox_inches="tight", pad_inches=0.05))
    pyplot().close(fig)


def mean_sd(groups: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, mean, sd)`` over ``{x: [values]}`` sorted by ``x`` (sd with ``ddof=1``; 0 for a
    single value)."""
    xs = sorted(groups)
    vals = [np.asarray(groups[x], dtype=float) for x in xs]
    return (np.asarray(xs, dtype=float), np.array([v.mean() for v in vals]),
            np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals]))


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% Student-t interval (0 for one value)."""
    from scipy import stats
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1)
                                  / np.sqrt(len(v)))


def errorbar_by(ax, pairs: Iterable[tuple[float, float]], *, label: str, points: bool = True,
                spread: str = "sd", **style):
    """Every ``(x, y)`` as a faint dot and, per ``x``, the mean +- sd (``spread="sd"``) or the
    median with the interquartile range (``"iqr"``: for log axes, where mean - sd can be
    negative) as an error bar."""
    groups: dict = {}
    for x, y in pairs:
        groups.setdefault(float(x), []).append(float(y))
    if spread == "iqr":
        x = sorted(groups)
        q = np.array([np.percentile(groups[k], [25, 50, 75]) for k in x])
        m, s = q[:, 1], np.stack([q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]])
    else:
        x, m, s = mean_sd(groups)
    if points:
        xs = [k for k in sorted(groups) for _ in groups[k]]
        ax.plot(xs, [v for k in sorted(groups) for v in groups[k]], ".", alpha=0.25,
                color=style.get("color"), ms=4)
    return ax.errorbar(x, m, yerr=s, capsize=3, marker=style.pop("marker", "o"), ms=4,
                       label=label, **style)


def slope_line(ax, x: Sequence[float], y: Sequence[float], slope: float, label: str,
               **style) -> None:
    """A reference line of log-log ``slope`` through the geometric mean of the points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    x0, y0 = np.exp(np.log(x).mean()), np.exp(np.log(y).mean())
    xl = np.array([x.min(), x.max()])
    ax.plot(xl, y0 * (xl / x0) ** slope, label=label, **{"color": "k", "lw": 1, **style})


def trend_line(ax, x: Sequence[float], y: Sequence[float], label: str = "least-squares trend",
               **style) -> tuple[float, float]:
    """A least-squares line through the points; returns ``(slope, intercept)``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    xl = np.array([x.min(), x.max()])
    ax.plot(xl, slope * xl + intercept, label=f"{label} (slope {slope:.3f})",
            **{"color": "k", "lw": 1, "ls": "--", **style})
    return float(slope), float(intercept)
