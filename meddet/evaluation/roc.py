"""Image-level (exam-level) ROC: "does this image contain a lesion of class k?".

**Image score = highest detection score** for the class (``any``: for any class), over every
detection of the image — detections on crowd regions included (the ROC does not match boxes, so
the box-level crowd rule does not apply); images without such a detection score -inf, below every
detection. An image is positive when it holds at least one ground truth of the class (crowd
regions are not lesions). The ROC curve has a point at every distinct image score, from (0, 0)
(threshold +inf) to (1, 1); the AUC is the trapezoidal area under it, which equals the
Mann-Whitney probability that a positive image outscores a negative one, ties counting one half
(scikit-learn's ``roc_auc_score`` on these scores). AUC is NaN when there are no positive or no
negative images.

Sensitivity and specificity are reported at the evaluation's score threshold (an image is called
positive when it has a detection of the class scoring at least that threshold, i.e. its image score
reaches it; with per-class thresholds, ``any`` uses each detection's class threshold) and at the
threshold maximising Youden's J (sensitivity + specificity - 1), highest threshold on ties.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from meddet.evaluation.matching import Matches
from meddet.evaluation.plots import plot_lines

__all__ = ["ROCCurve", "ImageROC", "roc_curve", "image_roc"]

ANY = "any"


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(fpr, tpr, thresholds, auc) of binary `labels` against `scores` (higher = more positive);
    the first point is (0, 0) at threshold +inf. fpr (tpr) is NaN without negatives (positives)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True)) if s.size else np.zeros(0, dtype=np.int64)
    tps = np.concatenate([[0], np.cumsum(y)[ends]])
    fps = np.concatenate([[0], np.cumsum(~y)[ends]])
    thresholds = np.concatenate([[np.inf], s[ends]])
    pos, neg = int(y.sum()), int((~y).sum())
    tpr = tps / pos if pos else np.full(tps.shape, np.nan)
    fpr = fps / neg if neg else np.full(fps.shape, np.nan)
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) if pos and neg else float("nan")
    return fpr, tpr, thresholds, auc


@dataclass(frozen=True)
class ROCCurve:
    """One image-level ROC curve and its operating points."""

    name: str
    n_pos: int
    n_neg: int
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    sensitivity: float
    specificity: float
    youden_thresh: float
    youden_sensitivity: float
    youden_specificity: float


@dataclass(frozen=True)
class ImageROC:
    """Image-level ROC curves per class, then ``any`` (``curves[-1]``)."""

    curves: list[ROCCurve]
    score_thresh: float | np.ndarray

    def summary_frame(self) -> pd.DataFrame:
        """One row per curve: positive/negative images, AUC, sensitivity and specificity at the
        score threshold and at Youden's optimum."""
        return pd.DataFrame(
            [
                (
                    c.name,
                    c.n_pos,
                    c.n_neg,
                    c.auc,
                    c.sensitivity,
                    c.specificity,
                    c.youden_thresh,
                    c.youden_sensitivity,
                    c.youden_specificity,
                )
                for c in self.curves
            ],
            columns=[
                "Class",
                "Positive images",
                "Negative images",
                "AUC",
                "sensitivity",
                "specificity",
                "youden_thresh",
                "youden_sensitivity",
                "youden_specificity",
            ],
        )

    def to_frame(self) -> pd.DataFrame:
        """``roc.csv``: curve, threshold, fpr, tpr (every point of every curve)."""
        return pd.concat(
            [
                pd.DataFrame({"curve": c.name, "threshold": c.thresholds, "fpr": c.fpr, "tpr": c.tpr})
                for c in self.curves
            ],
            ignore_index=True,
        )

    def to_metrics(self) -> dict[str, float]:
        """``image/auc``, ``image/sensitivity``, ``image/specificity`` (any lesion) and their
        ``-<class>`` entries."""
        out: dict[str, float] = {}
        for c in self.curves:
            suffix = "" if c is self.curves[-1] else f"-{c.name}"
            out[f"image/auc{suffix}"] = c.auc
            out[f"image/sensitivity{suffix}"] = c.sensitivity
            out[f"image/specificity{suffix}"] = c.specificity
        return out

    def write(self, out_dir: str | os.PathLike) -> Path:
        """``roc.csv``, ``roc_summary.csv`` and ``roc.png`` in `out_dir`."""
        out = Path(out_dir)
        self.to_frame().to_csv(out / "roc.csv", index=False, na_rep="NaN")
        self.summary_frame().to_csv(out / "roc_summary.csv", index=False, na_rep="NaN")
        shown = [c for c in self.curves if np.isfinite(c.auc)]
        labels = {c.name: f"{'any lesion' if c is self.curves[-1] else c.name} (AUC {c.auc:.3f})" for c in shown}
        return plot_lines(
            out / "roc.png",
            {c.name: c.fpr for c in shown},
            {c.name: c.tpr for c in shown},
            xlabel="1 - specificity (false positive rate)",
            ylabel="Sensitivity (true positive rate)",
            title="Image-level ROC (image score = highest detection score)",
            labels=labels,
            highlight=self.curves[-1].name,
            xlim=(0.0, 1.0),
            diagonal=True,
        )


def _rates(y: np.ndarray, called: np.ndarray) -> tuple[float, float]:
    pos, neg = int(y.sum()), int((~y).sum())
    sens = float((called & y).sum() / pos) if pos else float("nan")
    spec = float((~called & ~y).sum() / neg) if neg else float("nan")
    return sens, spec


def _curve(name: str, y: np.ndarray, s: np.ndarray, called: np.ndarray) -> ROCCurve:
    fpr, tpr, thr, auc = roc_curve(y, s)
    sens, spec = _rates(y, called)
    if np.isfinite(auc):
        j = int(np.argmax(tpr - fpr))
        yt, ys, yp = float(thr[j]), float(tpr[j]), float(1.0 - fpr[j])
    else:
        yt = ys = yp = float("nan")
    return ROCCurve(name, int(y.sum()), int((~y).sum()), fpr, tpr, thr, auc, sens, spec, yt, ys, yp)


def image_roc(matches: Matches, score_thresh: float | np.ndarray) -> ImageROC:
    """Image-level ROC per class and for any class, from every detection of `matches`' data
    (image score = highest detection score, see the module docstring); `score_thresh` is the
    operating point."""
    data = matches.data
    I, K = data.num_images, data.num_classes
    kept = data.det_score >= matches.det_thresh(score_thresh)
    scores = np.full((I, K), -np.inf)
    np.maximum.at(scores, (data.det_image, data.det_class), data.det_score)
    called = np.zeros((I, K), dtype=bool)
    called[data.det_image[kept], data.det_class[kept]] = True
    real = ~data.gt_crowd
    labels = np.zeros((I, K), dtype=bool)
    labels[data.gt_image[real], data.gt_class[real]] = True
    curves = [_curve(n, labels[:, k], scores[:, k], called[:, k]) for k, n in enumerate(data.class_names)]
    any_label, any_called = np.asarray(labels.any(axis=1)), np.asarray(called.any(axis=1))
    curves.append(_curve(ANY, any_label, scores.max(axis=1) if K else np.full(I, -np.inf), any_called))
    return ImageROC(curves, score_thresh)
