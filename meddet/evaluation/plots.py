"""Line plots shared by the evaluation views (PR, F1/P/R against score, FROC, ROC).

matplotlib's object API on an Agg canvas: no pyplot, no global state, no display needed, safe
in threads and in a web app.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_lines", "safe_name"]

# Per-class legend entries are left out above this many curves (the mean curve keeps its entry).
_MAX_LEGEND = 20


def safe_name(name: str) -> str:
    """`name` made safe as part of a file name (letters, digits, ``-``, ``_``, ``.`` kept)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)).strip(".")
    return out or "class"


def plot_lines(
    path: str | os.PathLike,
    x: np.ndarray | Mapping[str, np.ndarray],
    series: Mapping[str, np.ndarray],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    labels: Mapping[str, str] | None = None,
    highlight: str | None = None,
    logx: bool = False,
    steps: bool = False,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] = (0.0, 1.02),
    vlines: Sequence[float] = (),
    xticks: Sequence[float] = (),
    diagonal: bool = False,
) -> Path:
    """Write a PNG with one line per entry of `series` (NaN leaves a gap) and return its path.

    `x` is shared, or one array per series. `labels` gives legend texts (default: the series
    name); `highlight` names the series drawn thick and dark (e.g. the mean over classes).
    `steps` draws post-steps (FROC); `vlines` marks x positions; `xticks` sets the x ticks
    (labelled as plain numbers); `diagonal` adds the chance line of a ROC plot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    labels = labels or {}
    legend = len(series) <= _MAX_LEGEND + (highlight is not None)
    for name, y in series.items():
        xs = x[name] if isinstance(x, Mapping) else x
        strong = name == highlight
        ax.plot(
            xs,
            y,
            color="#1f4e9c" if strong else None,
            linewidth=3.0 if strong else 1.2,
            drawstyle="steps-post" if steps else "default",
            label=labels.get(name, name) if (legend or strong) else None,
            zorder=3 if strong else 2,
        )
    for v in vlines:
        ax.axvline(v, color="0.75", linewidth=0.8, linestyle=":", zorder=1)
    if diagonal:
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=0.8, zorder=1)
    if logx:
        ax.set_xscale("log", base=2)
    if len(xticks):
        ax.set_xticks(list(xticks), [f"{v:g}" for v in xticks])
        ax.minorticks_off()
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
