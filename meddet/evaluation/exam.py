"""Breast- and exam-level results for screening, and the calibration of detection scores.

A screening reader decides per breast and per exam, not per image. Images are grouped by their
COCO image fields:

- **breast** = ``patient_id`` + ``laterality`` (+ the study, when the images carry one);
- **exam** = ``patient_id`` (+ the study: ``study_id``, ``study`` or ``StudyInstanceUID``, the
  first present; without one, all of a patient's images are one exam).

An image without ``patient_id`` is its own breast and exam; one without ``laterality`` its own
breast. Nothing is computed when no image has a ``patient_id``.

Per breast / exam: the **suspicion score is the highest detection score over its views** (any
class; a unit without detections scores -inf, below every detection); it is **positive** when
any of its views holds a ground truth (crowd regions excluded). Reported: the ROC AUC
(trapezoidal = Mann-Whitney, ties one half) with a 95% percentile bootstrap interval resampling
**patients** (all breasts / exams of a drawn patient together; ``EVAL.BOOTSTRAP_SAMPLES`` and
``EVAL.BOOTSTRAP_SEED``), **sensitivity at specificity ≥ 0.9** (the lowest threshold whose
specificity is at least 0.9; the sensitivity there) and **specificity at sensitivity ≥ 0.9** (the
highest threshold whose sensitivity is at least 0.9), operating points of the empirical ROC, no
interpolation.

**Calibration** of detection scores: each (non-ignored) detection's score read as the probability
that it is a true positive (class-aware match at the evaluation's IoU threshold); 10 equal-width
score bins over [0, 1] (scores outside are put in the end bins); per bin the mean score and the
fraction of true positives; the **expected calibration error** ECE = Σ_b (n_b / N)·|TP fraction_b −
mean score_b|.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

from meddet.evaluation.bootstrap import Clusters, percentile_interval
from meddet.evaluation.matching import EvalData, Matches
from meddet.evaluation.plots import plot_lines
from meddet.evaluation.roc import roc_curve

logger = logging.getLogger(__name__)

__all__ = [
    "LEVELS",
    "STUDY_FIELDS",
    "LevelResult",
    "ExamLevel",
    "Calibration",
    "exam_level",
    "calibration",
    "unit_index",
    "weighted_auc",
]

LEVELS = ("breast", "exam")
STUDY_FIELDS = ("study_id", "study", "StudyInstanceUID")
TARGET = 0.9
N_BINS = 10


def _present(v: object) -> bool:
    return v not in (None, "")


def unit_index(data: EvalData, level: str) -> tuple[np.ndarray, np.ndarray]:
    """(unit of each image, patient of each unit), both 0-based, for `level` ``breast`` or ``exam``
    (see the module docstring)."""
    unit_of: dict[tuple, int] = {}
    patient_of: dict = {}
    units = np.empty(data.num_images, dtype=np.int64)
    images = data.images or [{} for _ in range(data.num_images)]
    for i, im in enumerate(images):
        pid = im.get("patient_id")
        study = next((im.get(f) for f in STUDY_FIELDS if _present(im.get(f))), None)
        side = im.get("laterality")
        key: tuple[str | int | None, ...]
        if not _present(pid) or (level == "breast" and not _present(side)):
            key = ("image", i)
            patient = ("patient", str(pid)) if _present(pid) else ("image", i)
        else:
            key = ("unit", str(pid), str(study), str(side) if level == "breast" else None)
            patient = ("patient", str(pid))
        units[i] = unit_of.setdefault(key, len(unit_of))
        patient_of.setdefault(units[i], patient)
    lookup: dict = {}
    patients = np.array([lookup.setdefault(patient_of[u], len(lookup)) for u in range(len(unit_of))], dtype=np.int64)
    return units, patients


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (ties one half) of units counted `weights` ``[B x U]`` times; ``[B]``, NaN where a
    resample has no positive or no negative unit. All weights 1 gives the plain AUC."""
    y = np.asarray(labels, dtype=bool)
    _, group = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    G = int(group.max()) + 1 if group.size else 0
    W = np.asarray(weights, dtype=np.float64)
    rows = np.arange(y.size)
    to_pos = csr_matrix((y.astype(np.float64), (group, rows)), shape=(G, y.size))  # [G x U]
    to_neg = csr_matrix(((~y).astype(np.float64), (group, rows)), shape=(G, y.size))
    pos = np.asarray(to_pos @ W.T).T  # [B x G] positive weight per score value
    neg = np.asarray(to_neg @ W.T).T
    below = np.cumsum(neg, axis=1) - neg  # negatives scoring strictly lower
    num = np.sum(pos * (below + 0.5 * neg), axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    out = np.full(W.shape[0], np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass(frozen=True)
class LevelResult:
    """One level (breast or exam): units, their labels and suspicion scores, the ROC and its
    summary numbers (NaN where undefined)."""

    level: str
    labels: np.ndarray
    scores: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    auc_ci: tuple[float, float]
    sens_at_spec: float
    sens_at_spec_thresh: float
    spec_at_sens: float
    spec_at_sens_thresh: float
    n_patients: int

    @property
    def n_pos(self) -> int:
        return int(self.labels.sum())

    @property
    def n_neg(self) -> int:
        return int((~self.labels).sum())


def _operating_points(fpr: np.ndarray, tpr: np.ndarray, thr: np.ndarray) -> tuple[float, float, float, float]:
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return (float("nan"),) * 4
    spec = 1.0 - fpr
    ok = np.flatnonzero(spec >= TARGET - 1e-12)
    i = ok[np.argmax(tpr[ok])]  # tpr grows as the threshold falls: the lowest threshold with spec >= 0.9
    ok = np.flatnonzero(tpr >= TARGET - 1e-12)
    j = ok[np.argmax(spec[ok])]  # the highest threshold with sens >= 0.9
    return float(tpr[i]), float(thr[i]), float(spec[j]), float(thr[j])


def _level(
    data: EvalData, level: str, image_scores: np.ndarray, image_labels: np.ndarray, n_resamples: int, seed: int
) -> LevelResult:
    units, patients = unit_index(data, level)
    U = int(units.max()) + 1 if units.size else 0
    scores = np.full(U, -np.inf)
    np.maximum.at(scores, units, image_scores)
    labels = np.zeros(U, dtype=bool)
    labels[units[image_labels]] = True
    fpr, tpr, thr, auc = roc_curve(labels, scores)
    ci = (float("nan"), float("nan"))
    if n_resamples and np.isfinite(auc):
        clusters = Clusters("patient", patients)
        _, lo, hi = percentile_interval(
            lambda W: weighted_auc(labels, scores, W)[:, None], clusters, n_resamples, np.random.default_rng(int(seed))
        )
        ci = (float(lo[0]), float(hi[0]))
    sens, sens_t, spec, spec_t = _operating_points(fpr, tpr, thr)
    return LevelResult(
        level,
        labels,
        scores,
        fpr,
        tpr,
        thr,
        float(auc),
        ci,
        sens,
        sens_t,
        spec,
        spec_t,
        int(patients.max()) + 1 if patients.size else 0,
    )


@dataclass(frozen=True)
class Calibration:
    """Reliability of detection scores: per bin (``[lo, hi)``, the last closed) the detections,
    their mean score and the fraction that are true positives; `ece` the expected calibration error."""

    edges: np.ndarray
    count: np.ndarray
    mean_score: np.ndarray
    tp_fraction: np.ndarray
    ece: float

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "bin_low": self.edges[:-1],
                "bin_high": self.edges[1:],
                "detections": self.count,
                "mean_score": self.mean_score,
                "tp_fraction": self.tp_fraction,
            }
        )


def calibration(matches: Matches, n_bins: int = N_BINS) -> Calibration:
    """Calibration of the detection scores of class-aware `matches` (see the module docstring)."""
    data = matches.data
    valid = ~matches.det_ignored
    score = data.det_score[valid]
    tp = (matches.det_gt >= 0)[valid].astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.floor(score * n_bins).astype(np.int64), 0, n_bins - 1) if score.size else score.astype(np.int64)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(b, weights=score, minlength=n_bins) / count
        frac = np.bincount(b, weights=tp, minlength=n_bins) / count
    n = int(count.sum())
    ece = float(np.nansum(count / n * np.abs(frac - mean))) if n else float("nan")
    return Calibration(edges, count, mean, frac, ece)


@dataclass(frozen=True)
class ExamLevel:
    """Breast- and exam-level results (levels with at least one unit) and the calibration."""

    levels: list[LevelResult]
    calibration: Calibration
    n_resamples: int

    def summary_frame(self) -> pd.DataFrame:
        """One row per level: units, positives, negatives, patients, AUC with its patient-level CI,
        sensitivity at specificity >= 0.9 and specificity at sensitivity >= 0.9 (with thresholds)."""
        rows = [
            (
                r.level,
                r.labels.size,
                r.n_pos,
                r.n_neg,
                r.auc,
                r.auc_ci[0],
                r.auc_ci[1],
                f"patient ({r.n_patients} patients)" if self.n_resamples else "",
                r.sens_at_spec,
                r.sens_at_spec_thresh,
                r.spec_at_sens,
                r.spec_at_sens_thresh,
            )
            for r in self.levels
        ]
        return pd.DataFrame(
            rows,
            columns=[
                "level",
                "units",
                "positive",
                "negative",
                "AUC",
                "AUC 95% CI low",
                "AUC 95% CI high",
                "CI resamples",
                f"sensitivity at specificity >= {TARGET:g}",
                "threshold (sens)",
                f"specificity at sensitivity >= {TARGET:g}",
                "threshold (spec)",
            ],
        )

    def to_metrics(self) -> dict[str, float]:
        """``<level>/auc``, ``ci95_low/<level>/auc``, ``ci95_high/<level>/auc``,
        ``<level>/sens@spec0.9``, ``<level>/spec@sens0.9`` per level, and ``calibration/ece``."""
        out: dict[str, float] = {}
        for r in self.levels:
            out[f"{r.level}/auc"] = r.auc
            if self.n_resamples:
                out[f"ci95_low/{r.level}/auc"], out[f"ci95_high/{r.level}/auc"] = r.auc_ci
            out[f"{r.level}/sens@spec{TARGET:g}"] = r.sens_at_spec
            out[f"{r.level}/spec@sens{TARGET:g}"] = r.spec_at_sens
        out["calibration/ece"] = self.calibration.ece
        return out

    def write(self, out_dir: str | os.PathLike) -> Path:
        """``exam_level.csv``, ``exam_roc.{csv,png}`` (when a level exists) and ``calibration.{csv,png}``."""
        out = Path(out_dir)
        for name in ("exam_level.csv", "exam_roc.csv", "exam_roc.png"):
            (out / name).unlink(missing_ok=True)  # not those of an earlier evaluation
        if self.levels:
            self.summary_frame().to_csv(out / "exam_level.csv", index=False, na_rep="NaN")
            pd.concat(
                [
                    pd.DataFrame({"level": r.level, "threshold": r.thresholds, "fpr": r.fpr, "tpr": r.tpr})
                    for r in self.levels
                ],
                ignore_index=True,
            ).to_csv(out / "exam_roc.csv", index=False, na_rep="NaN")
            shown = [r for r in self.levels if np.isfinite(r.auc)]
            if shown:
                plot_lines(
                    out / "exam_roc.png",
                    {r.level: r.fpr for r in shown},
                    {r.level: r.tpr for r in shown},
                    xlabel="1 - specificity",
                    ylabel="Sensitivity",
                    title="Breast / exam ROC (suspicion = highest detection score over the views)",
                    labels={r.level: f"{r.level} (AUC {r.auc:.3f})" for r in shown},
                    xlim=(0.0, 1.0),
                    diagonal=True,
                )
        c = self.calibration
        c.to_frame().to_csv(out / "calibration.csv", index=False, na_rep="NaN")
        plot_lines(
            out / "calibration.png",
            c.mean_score,
            {"detections": c.tp_fraction},
            xlabel="Mean detection score (bin)",
            ylabel="Fraction true positives",
            title=f"Calibration of detection scores (ECE {c.ece:.3f})",
            xlim=(0.0, 1.0),
            diagonal=True,
        )
        return out


def exam_level(matches: Matches, n_resamples: int = 1000, seed: int = 0) -> ExamLevel:
    """Breast- and exam-level results of class-aware `matches`' data (levels computed only when the
    images carry ``patient_id``; see the module docstring) and the calibration of its detection
    scores; `n_resamples` patient resamples for the AUC intervals (0: none)."""
    data = matches.data
    I = data.num_images
    image_scores = np.full(I, -np.inf)
    np.maximum.at(image_scores, data.det_image, data.det_score)
    image_labels = np.zeros(I, dtype=bool)
    image_labels[data.gt_image[~data.gt_crowd]] = True
    has_patient = any(_present(im.get("patient_id")) for im in data.images)
    has_side = any(_present(im.get("laterality")) for im in data.images)
    levels = []
    if has_patient:
        for level in LEVELS:
            if level == "breast" and not has_side:
                continue
            levels.append(_level(data, level, image_scores, image_labels, n_resamples, seed))
    else:
        logger.info("%s: no image has a patient_id; no breast- or exam-level results", data.gt_source)
    return ExamLevel(levels, calibration(matches), int(n_resamples))
