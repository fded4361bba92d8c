"""Precision, recall and F1 per class at one score threshold, from a class-aware `Matches`.

Definitions (detections with score ≥ the threshold, matched at the `Matches`' IoU threshold):
TP = detections matched to a ground truth of their class, FP = the other (non-ignored)
detections, FN = ground truths left unmatched (crowd regions excluded).
precision = TP / (TP + FP), 0 when a class with ground truth has no detection; recall =
TP / (TP + FN); F1 = 2·TP / (2·TP + FP + FN). A value with nothing to count is NaN (recall and
F1 of a class with neither ground truth nor detections, recall of a class without ground truth).
"micro" pools the counts of all classes; "macro" and "weighted" average the classes that have
ground truth, plainly and weighted by their ground-truth instances.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from meddet.evaluation.matching import Matches

__all__ = ["PRF1", "prf1_at"]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass(frozen=True)
class PRF1:
    """Per-class counts and rates (arrays indexed by class index) at one threshold."""

    class_names: list[str]
    score_thresh: float
    iou_thresh: float
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def instances(self) -> np.ndarray:
        return self.tp + self.fn

    @property
    def precision(self) -> np.ndarray:
        p = _ratio(self.tp, self.tp + self.fp)
        return np.where(np.isnan(p) & (self.instances > 0), 0.0, p)

    @property
    def recall(self) -> np.ndarray:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> np.ndarray:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def micro(self) -> tuple[float, float, float]:
        """(precision, recall, F1) of the pooled counts."""
        tp, fp, fn = int(self.tp.sum()), int(self.fp.sum()), int(self.fn.sum())
        p = tp / (tp + fp) if tp + fp else (0.0 if tp + fn else float("nan"))
        r = tp / (tp + fn) if tp + fn else float("nan")
        f = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        return p, r, f

    def averaged(self, weighted: bool) -> tuple[float, float, float]:
        """(precision, recall, F1) averaged over classes with ground truth: plain ("macro") or
        weighted by instances ("weighted")."""
        n = self.instances
        has = n > 0
        if not has.any():
            return float("nan"), float("nan"), float("nan")
        w = n[has] / n[has].sum() if weighted else np.full(int(has.sum()), 1.0 / has.sum())
        return tuple(float(np.dot(w, v[has])) for v in (self.precision, self.recall, self.f1))

    def to_frame(self) -> pd.DataFrame:
        """The `prf1.csv` table: one row per class, then ``micro``, ``macro`` and ``weighted``
        rows (counts left empty for the averaged rows)."""
        rows = pd.DataFrame({
            "Class": self.class_names,
            "TP": self.tp, "FP": self.fp, "FN": self.fn,
            "precision": self.precision, "recall": self.recall, "F1": self.f1,
        })
        avg = pd.DataFrame(
            [("micro", int(self.tp.sum()), int(self.fp.sum()), int(self.fn.sum()), *self.micro()),
             ("macro", None, None, None, *self.averaged(False)),
             ("weighted", None, None, None, *self.averaged(True))],
            columns=rows.columns,
        )
        df = pd.concat([rows, avg], ignore_index=True)
        return df.astype({"TP": "Int64", "FP": "Int64", "FN": "Int64"})

    def to_metrics(self) -> dict[str, float]:
        """Flat ``prf1/...`` entries (fractions in [0, 1]; counts as floats)."""
        p, r, f = self.micro()
        out = {
            "prf1/score_thresh": float(self.score_thresh),
            "prf1/iou_thresh": float(self.iou_thresh),
            "prf1/TP": float(self.tp.sum()), "prf1/FP": float(self.fp.sum()), "prf1/FN": float(self.fn.sum()),
            "prf1/precision": p, "prf1/recall": r, "prf1/F1": f,
        }
        for kind, weighted in (("macro", False), ("weighted", True)):
            for name, v in zip(("precision", "recall", "F1"), self.averaged(weighted)):
                out[f"prf1/{kind}_{name}"] = v
        for name, pc, rc, fc in zip(self.class_names, self.precision, self.recall, self.f1):
            out[f"prf1/precision-{name}"] = float(pc)
            out[f"prf1/recall-{name}"] = float(rc)
            out[f"prf1/F1-{name}"] = float(fc)
        return out


def prf1_at(matches: Matches, score_thresh: float) -> PRF1:
    """Per-class TP/FP/FN of class-aware `matches` for detections scoring ≥ `score_thresh`."""
    if matches.class_agnostic:
        raise ValueError("prf1_at needs class-aware matches; got match_detections(..., class_agnostic=True)")
    data = matches.data
    K = data.num_classes
    tp = np.bincount(data.det_class[matches.det_tp(score_thresh)], minlength=K)
    fp = np.bincount(data.det_class[matches.det_fp(score_thresh)], minlength=K)
    fn = np.bincount(data.gt_class[matches.gt_missed(score_thresh)], minlength=K)
    return PRF1(list(data.class_names), float(score_thresh), matches.iou_thresh, tp, fp, fn)
