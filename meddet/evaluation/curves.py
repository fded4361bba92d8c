"""Curves: precision-recall per class, and precision, recall and F1 against the score threshold.

The PR curve is COCO's interpolated precision at IoU 0.50 on its 101 recall points (its mean is
the AP50 of the class), taken from the COCO evaluation. The score curves come from the one
class-aware matching at ``EVAL.IOU_THRESH``: at each threshold of a grid they hold exactly what
`prf1_at` gives there (same counts, same conventions), so a point read off ``f1_curve.csv``
equals ``prf1.csv`` at that threshold. The grid is 1001 evenly spaced thresholds over [0, 1] (or
over the score range when scores fall outside [0, 1]). The ``all`` curve averages the classes
that have ground truth (the macro average), as Ultralytics draws its "all classes" curve.
Every PNG has a CSV beside it with the plotted numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from meddet.evaluation.coco_eval import CocoMetrics
from meddet.evaluation.matching import Matches
from meddet.evaluation.plots import plot_lines
from meddet.evaluation.prf1 import f1_of, precision_of, recall_of

__all__ = ["ScoreCurves", "score_curves", "pr_curve_frame", "write_pr_curve"]

ALL = "all"


def _macro(values: np.ndarray, has_gt: np.ndarray) -> np.ndarray:
    """Mean over the classes with ground truth at each threshold (NaN where none is defined)."""
    v = values[has_gt]
    if v.size == 0:
        return np.full(values.shape[1], np.nan)
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(v), axis=0)
        sums = np.nansum(v, axis=0)
    out = np.full(values.shape[1], np.nan)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out


@dataclass(frozen=True)
class ScoreCurves:
    """Per-class TP/FP/FN (``[K x T]``) at each score threshold of `thresholds` (``[T]``)."""

    class_names: list[str]
    iou_thresh: float
    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    def values(self, metric: str) -> np.ndarray:
        """``[K x T]`` of ``"precision"``, ``"recall"`` or ``"F1"``."""
        if metric == "precision":
            return precision_of(self.tp, self.fp, self.fn)
        if metric == "recall":
            return recall_of(self.tp, self.fn)
        if metric == "F1":
            return f1_of(self.tp, self.fp, self.fn)
        raise ValueError(f"metric is {metric!r}; expected 'precision', 'recall' or 'F1'")

    def to_frame(self, metric: str) -> pd.DataFrame:
        """Columns ``score_thresh``, one per class, and ``all`` (mean over classes with ground truth)."""
        v = self.values(metric)
        df = pd.DataFrame(v.T, columns=self.class_names)
        df.insert(0, "score_thresh", self.thresholds)
        df[ALL] = _macro(v, (self.tp + self.fn)[:, 0] > 0)
        return df

    def write(self, out_dir: str | os.PathLike) -> list[Path]:
        """``f1_curve``, ``p_curve`` and ``r_curve`` as PNG and CSV in `out_dir`; returns the PNGs."""
        out = Path(out_dir)
        written = []
        for metric, stem, label in (
            ("F1", "f1_curve", "F1"),
            ("precision", "p_curve", "Precision"),
            ("recall", "r_curve", "Recall"),
        ):
            df = self.to_frame(metric)
            df.to_csv(out / f"{stem}.csv", index=False, na_rep="NaN")
            mean = df[ALL].to_numpy()
            labels = {}
            if metric == "F1" and np.isfinite(mean).any():
                i = int(np.nanargmax(mean))
                labels[ALL] = f"all classes {mean[i]:.3f} at {self.thresholds[i]:.3f}"
            else:
                labels[ALL] = "all classes"
            series = {n: df[n].to_numpy() for n in self.class_names}
            series[ALL] = mean
            written.append(
                plot_lines(
                    out / f"{stem}.png",
                    self.thresholds,
                    series,
                    xlabel="Score threshold",
                    ylabel=label,
                    title=f"{label} against score threshold (IoU >= {self.iou_thresh:g})",
                    labels=labels,
                    highlight=ALL,
                    xlim=(float(self.thresholds[0]), float(self.thresholds[-1])),
                )
            )
        return written


def score_curves(matches: Matches, num: int = 1001) -> ScoreCurves:
    """TP/FP/FN per class of class-aware `matches` at `num` evenly spaced score thresholds."""
    if matches.class_agnostic:
        raise ValueError("score_curves needs class-aware matches; got match_detections(..., class_agnostic=True)")
    data = matches.data
    K = data.num_classes
    valid = ~matches.det_ignored
    score = data.det_score[valid]
    lo, hi = 0.0, 1.0
    if score.size and (score.min() < 0.0 or score.max() > 1.0):
        lo, hi = float(min(score.min(), 0.0)), float(max(score.max(), 1.0))
    thresholds = np.linspace(lo, hi, num)
    hit = (matches.det_gt >= 0)[valid]
    cls = data.det_class[valid]
    n_gt = data.instances_per_class()
    tp = np.zeros((K, num), dtype=np.int64)
    fp = np.zeros((K, num), dtype=np.int64)
    for k in range(K):
        for arr, mask in ((tp, hit), (fp, ~hit)):
            s = np.sort(score[(cls == k) & mask])
            arr[k] = s.size - np.searchsorted(s, thresholds, side="left")
    fn = n_gt[:, None] - tp
    return ScoreCurves(list(data.class_names), matches.iou_thresh, thresholds, tp, fp, fn)


def pr_curve_frame(coco: CocoMetrics, class_names: list[str]) -> pd.DataFrame:
    """COCO's interpolated precision at IoU 0.50: columns ``recall``, one per class (NaN for a
    class without ground truth) and ``all`` (mean over classes with ground truth)."""
    p = coco.pr_curve(0.5)
    df = pd.DataFrame(p.T, columns=list(class_names))
    df.insert(0, "recall", coco.recall_thresholds)
    df[ALL] = _macro(p, ~np.isnan(p).all(axis=1))
    return df


def write_pr_curve(coco: CocoMetrics, class_names: list[str], out_dir: str | os.PathLike) -> Path:
    """``pr_curve.png`` and ``pr_curve.csv`` in `out_dir`; the legend gives each class's AP50."""
    out = Path(out_dir)
    df = pr_curve_frame(coco, class_names)
    df.to_csv(out / "pr_curve.csv", index=False, na_rep="NaN")
    series = {n: df[n].to_numpy() for n in [*class_names, ALL]}
    labels = {
        n: f"{n} {np.nanmean(v):.3f}" if np.isfinite(v).any() else f"{n} (no ground truth)" for n, v in series.items()
    }
    mean_ap50 = coco.summary.get("AP50", float("nan"))
    labels[ALL] = f"all classes {mean_ap50:.3f} mAP@0.5"
    return plot_lines(
        out / "pr_curve.png",
        df["recall"].to_numpy(),
        series,
        xlabel="Recall",
        ylabel="Precision",
        title="Precision-recall (IoU >= 0.5, COCO interpolation)",
        labels=labels,
        highlight=ALL,
        xlim=(0.0, 1.0),
    )
