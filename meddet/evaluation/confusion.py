"""Detection confusion matrix, as Ultralytics' ConfusionMatrix lays it out.

Rows are the **predicted** class, columns the **true** class, each followed by ``background``:
cell (p, t) counts detections of class p matched to a ground truth of class t; the background
row counts ground truths no detection matched (false negatives, per true class); the background
column counts detections that matched no ground truth (false positives, per predicted class).
Matching is class-agnostic (greedy by descending score, IoU ≥ threshold; see
`meddet.evaluation.matching`), so a correctly placed box with the wrong class lands off the
diagonal instead of counting as one FP and one FN. Only detections scoring ≥ the score threshold
count; detections on crowd regions and crowd regions themselves are left out. The normalized
matrix divides each column by its sum: the share of each true class (or of the false positives)
that went to each predicted class (NaN for an empty column).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from meddet.evaluation.matching import Matches

__all__ = ["confusion_matrix", "normalize_columns", "confusion_frame", "plot_confusion_matrix"]

BACKGROUND = "background"


def confusion_matrix(matches: Matches, score_thresh: float | np.ndarray) -> np.ndarray:
    """(K+1) x (K+1) int64 counts, rows = predicted class + background, columns = true class +
    background, from class-agnostic `matches` at `score_thresh` (one, or one per class)."""
    if not matches.class_agnostic:
        raise ValueError("confusion_matrix needs class-agnostic matches (match_detections(..., class_agnostic=True))")
    data = matches.data
    K = data.num_classes
    kept = matches.kept(score_thresh)
    hit = kept & (matches.det_gt >= 0)
    rows = np.concatenate(
        [
            data.det_class[hit],  # matched: predicted class
            data.det_class[kept & (matches.det_gt < 0)],  # false positives
            np.full(int(matches.gt_missed(score_thresh).sum()), K),  # missed ground truths
        ]
    )
    cols = np.concatenate(
        [
            data.gt_class[matches.det_gt[hit]],
            np.full(int((kept & (matches.det_gt < 0)).sum()), K),
            data.gt_class[matches.gt_missed(score_thresh)],
        ]
    )
    return np.bincount(rows * (K + 1) + cols, minlength=(K + 1) ** 2).reshape(K + 1, K + 1).astype(np.int64)


def normalize_columns(matrix: np.ndarray) -> np.ndarray:
    """Each column divided by its sum (NaN where a column is empty)."""
    m = np.asarray(matrix, dtype=np.float64)
    s = m.sum(axis=0, keepdims=True)
    out = np.full(m.shape, np.nan)
    np.divide(m, s, out=out, where=s > 0)
    return out


def confusion_frame(matrix: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """The matrix as a labelled DataFrame (index: predicted, columns: true) for CSV output."""
    labels = list(class_names) + [BACKGROUND]
    return pd.DataFrame(matrix, index=pd.Index(labels, name="predicted \\ true"), columns=labels)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: list[str], path: str | os.PathLike, title: str = "Confusion matrix"
) -> None:
    """Write a PNG heat map: colour = column-normalized share, each cell annotated with its
    count and share; predicted class on the y axis, true class on the x axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(class_names) + [BACKGROUND]
    n = len(labels)
    norm = normalize_columns(matrix)
    side = min(4.0 + 0.7 * n, 24.0)
    fig = Figure(figsize=(side + 1.5, side), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(np.nan_to_num(norm, nan=0.0), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class (column)")
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title(title)
    font = max(5.0, 11.0 - 0.3 * n)
    for (r, c), count in np.ndenumerate(np.asarray(matrix)):
        share = norm[r, c]
        text = f"{count}" if np.isnan(share) else f"{count}\n{share:.2f}"
        ax.text(
            c,
            r,
            text,
            ha="center",
            va="center",
            fontsize=font,
            color="white" if (not np.isnan(share) and share > 0.5) else "black",
        )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
