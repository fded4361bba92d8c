"""Precision, recall and F1 per class at a score threshold, from a class-aware `Matches`.

Definitions (detections with score ≥ the threshold, matched at the `Matches`' IoU threshold):
TP = detections matched to a ground truth of their class, FP = the other (non-ignored)
detections, FN = ground truths left unmatched (crowd regions excluded).
precision = TP / (TP + FP), 0 when a class with ground truth has no detection; recall =
TP / (TP + FN); F1 = 2·TP / (2·TP + FP + FN). A value with nothing to count is NaN (recall and
F1 of a class with neither ground truth nor detections, recall of a class without ground truth).
"micro" pools the counts of all classes; "macro" and "weighted" average the classes that have
ground truth, plainly and weighted by their ground-truth instances.

`prf1_at` uses one threshold for every class; `f1_optimal` gives each class its own threshold,
the one of highest F1 (see there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from meddet.evaluation.matching import Matches

__all__ = ["PRF1", "prf1_at", "f1_optimal", "precision_of", "recall_of", "f1_of"]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_of(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """TP / (TP + FP) elementwise; 0 where there are ground truths but no detections, NaN where
    there is neither."""
    p = _ratio(tp, np.add(tp, fp))
    return np.where(np.isnan(p) & (np.add(tp, fn) > 0), 0.0, p)


def recall_of(tp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """TP / (TP + FN) elementwise; NaN without ground truth."""
    return _ratio(tp, np.add(tp, fn))


def f1_of(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2·TP / (2·TP + FP + FN) elementwise; NaN with nothing to count."""
    return _ratio(np.multiply(tp, 2), np.multiply(tp, 2) + fp + fn)


@dataclass(frozen=True)
class PRF1:
    """Per-class counts and rates (arrays indexed by class index) at a score threshold:
    `score_thresh` is one float for every class, or an array with one threshold per class (NaN
    for a class given no operating point, see `f1_optimal`)."""

    class_names: list[str]
    score_thresh: float | np.ndarray
    iou_thresh: float
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def instances(self) -> np.ndarray:
        return self.tp + self.fn

    @property
    def precision(self) -> np.ndarray:
        return precision_of(self.tp, self.fp, self.fn)

    @property
    def recall(self) -> np.ndarray:
        return recall_of(self.tp, self.fn)

    @property
    def f1(self) -> np.ndarray:
        return f1_of(self.tp, self.fp, self.fn)

    @property
    def per_class_thresh(self) -> bool:
        """True when each class has its own score threshold."""
        return np.ndim(self.score_thresh) > 0

    def thresholds(self) -> np.ndarray:
        """The score threshold of each class."""
        return np.broadcast_to(np.asarray(self.score_thresh, dtype=np.float64), self.tp.shape).copy()

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
        p, r, f1 = (float(np.dot(w, v[has])) for v in (self.precision, self.recall, self.f1))
        return p, r, f1

    def to_frame(self) -> pd.DataFrame:
        """One row per class, then ``micro``, ``macro`` and ``weighted`` rows (counts left empty
        for the averaged rows; their score_thresh is the common threshold, empty when each class
        has its own). Columns: Class, score_thresh, TP, FP, FN, precision, recall, F1."""
        rows = pd.DataFrame(
            {
                "Class": self.class_names,
                "score_thresh": self.thresholds(),
                "TP": self.tp,
                "FP": self.fp,
                "FN": self.fn,
                "precision": self.precision,
                "recall": self.recall,
                "F1": self.f1,
            }
        )
        common = np.nan if self.per_class_thresh else float(self.score_thresh)
        avg = pd.DataFrame(
            [
                ("micro", common, int(self.tp.sum()), int(self.fp.sum()), int(self.fn.sum()), *self.micro()),
                ("macro", common, None, None, None, *self.averaged(False)),
                ("weighted", common, None, None, None, *self.averaged(True)),
            ],
            columns=rows.columns,
        )
        df = pd.concat([rows, avg], ignore_index=True)
        return df.astype({"TP": "Int64", "FP": "Int64", "FN": "Int64"})

    def to_metrics(self, prefix: str = "prf1") -> dict[str, float]:
        """Flat ``<prefix>/...`` entries (fractions in [0, 1]; counts as floats): the threshold
        (``score_thresh``, or ``score_thresh-<class>`` per class), ``iou_thresh``, pooled
        ``TP``/``FP``/``FN``, micro ``precision``/``recall``/``F1``, ``macro_*`` and
        ``weighted_*`` averages and ``precision-<class>``, ``recall-<class>``, ``F1-<class>``."""
        p, r, f = self.micro()
        out: dict[str, float] = {}
        if self.per_class_thresh:
            for name, t in zip(self.class_names, self.thresholds()):
                out[f"{prefix}/score_thresh-{name}"] = float(t)
        else:
            out[f"{prefix}/score_thresh"] = float(self.score_thresh)
        out.update(
            {
                f"{prefix}/iou_thresh": float(self.iou_thresh),
                f"{prefix}/TP": float(self.tp.sum()),
                f"{prefix}/FP": float(self.fp.sum()),
                f"{prefix}/FN": float(self.fn.sum()),
                f"{prefix}/precision": p,
                f"{prefix}/recall": r,
                f"{prefix}/F1": f,
            }
        )
        for kind, weighted in (("macro", False), ("weighted", True)):
            for name, v in zip(("precision", "recall", "F1"), self.averaged(weighted)):
                out[f"{prefix}/{kind}_{name}"] = v
        for name, pc, rc, fc in zip(self.class_names, self.precision, self.recall, self.f1):
            out[f"{prefix}/precision-{name}"] = float(pc)
            out[f"{prefix}/recall-{name}"] = float(rc)
            out[f"{prefix}/F1-{name}"] = float(fc)
        return out


def prf1_at(matches: Matches, score_thresh: float | np.ndarray) -> PRF1:
    """Per-class TP/FP/FN of class-aware `matches` for detections scoring ≥ `score_thresh` (one
    float, or one threshold per class)."""
    if matches.class_agnostic:
        raise ValueError("prf1_at needs class-aware matches; got match_detections(..., class_agnostic=True)")
    data = matches.data
    K = data.num_classes
    tp = np.bincount(data.det_class[matches.det_tp(score_thresh)], minlength=K)
    fp = np.bincount(data.det_class[matches.det_fp(score_thresh)], minlength=K)
    fn = np.bincount(data.gt_class[matches.gt_missed(score_thresh)], minlength=K)
    thresh = float(score_thresh) if np.ndim(score_thresh) == 0 else np.asarray(score_thresh, dtype=np.float64)
    return PRF1(list(data.class_names), thresh, matches.iou_thresh, tp, fp, fn)


def f1_optimal(matches: Matches) -> PRF1:
    """Each class at its own F1-optimal score threshold (class-aware `matches`).

    The candidates are the class's detection scores (threshold "score ≥ s", so ties enter
    together); the threshold kept is the one of highest F1, the highest such score when several
    tie. A class with ground truth whose every detection is a false positive (best F1 = 0), or
    that has no detection, gets threshold NaN and no detections (TP = FP = 0, FN = instances); a
    class without ground truth has no F1 to optimise and gets NaN with zero counts.
    """
    if matches.class_agnostic:
        raise ValueError("f1_optimal needs class-aware matches; got match_detections(..., class_agnostic=True)")
    data = matches.data
    K = data.num_classes
    n_gt = data.instances_per_class()
    valid = ~matches.det_ignored
    cls, score, hit = data.det_class[valid], data.det_score[valid], (matches.det_gt >= 0)[valid]
    order = np.lexsort((-score, cls))
    cls, score, hit = cls[order], score[order], hit[order]
    bounds = np.searchsorted(cls, np.arange(K + 1))
    thresh = np.full(K, np.nan)
    tp, fp, fn = np.zeros(K, np.int64), np.zeros(K, np.int64), n_gt.astype(np.int64).copy()
    for k in range(K):
        a, b = bounds[k], bounds[k + 1]
        if n_gt[k] == 0 or a == b:
            continue
        s, h = score[a:b], hit[a:b]
        ctp, cfp = np.cumsum(h), np.cumsum(~h)
        ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
        f1 = 2 * ctp[ends] / (2 * ctp[ends] + cfp[ends] + (n_gt[k] - ctp[ends]))
        best = int(np.argmax(f1))
        if f1[best] <= 0:
            continue
        e = ends[best]
        thresh[k], tp[k], fp[k], fn[k] = s[e], ctp[e], cfp[e], n_gt[k] - ctp[e]
    return PRF1(list(data.class_names), thresh, matches.iou_thresh, tp, fp, fn)
