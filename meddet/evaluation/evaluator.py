"""The evaluator: one set of predictions against one COCO ground truth, every metric and file.

`run_evaluation` computes everything once and returns an `EvaluationResult` holding the arrays
(`EvalData`), the class-aware and class-agnostic `Matches` (valid at every score threshold, for
curves, FROC, bootstrap and galleries), the COCO results, the P/R/F1 table, the per-class table
and the confusion matrix. `evaluate` is the short form returning the flat metrics dict.

Files written under `out_dir`: ``metrics.json`` (the flat dict, pretty-printed), ``per_class.csv``,
``prf1.csv``, ``confusion_matrix.csv``, ``confusion_matrix_normalized.csv`` and
``confusion_matrix.png``. Metric names: ``bbox/…`` as detectron2 writes them (percent, 0–100);
``prf1/…`` fractions in [0, 1] at the score and IoU thresholds (also recorded as
``prf1/score_thresh`` and ``prf1/iou_thresh``); ``gt/images``, ``gt/instances`` and their
``-<class>`` entries say what was evaluated. Undefined values are NaN (JSON ``NaN``, as
detectron2 writes them; ``-`` in text tables).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from meddet.data.coco import save_json_atomic
from meddet.errors import ConfigError
from meddet.evaluation.coco_eval import CocoMetrics, check_backend, coco_evaluate
from meddet.evaluation.confusion import confusion_frame, confusion_matrix, normalize_columns, plot_confusion_matrix
from meddet.evaluation.matching import EvalData, Matches, match_detections
from meddet.evaluation.prf1 import PRF1, prf1_at
from meddet.evaluation.tables import per_class_table

logger = logging.getLogger(__name__)

__all__ = ["EvaluationResult", "run_evaluation", "evaluate"]


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Everything one evaluation computed (see the module docstring)."""

    data: EvalData
    matches: Matches
    agnostic_matches: Matches
    coco: CocoMetrics
    prf1: PRF1
    per_class: pd.DataFrame
    confusion: np.ndarray
    metrics: dict[str, float]
    score_thresh: float
    iou_thresh: float

    def write(self, out_dir: str | os.PathLike) -> Path:
        """Write the evaluation files (see the module docstring) into `out_dir`; returns it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_json_atomic(self.metrics, out / "metrics.json", indent=2)
        self.per_class.to_csv(out / "per_class.csv", index=False, na_rep="NaN")
        self.prf1.to_frame().to_csv(out / "prf1.csv", index=False, na_rep="NaN")
        names = self.data.class_names
        confusion_frame(self.confusion, names).to_csv(out / "confusion_matrix.csv")
        confusion_frame(normalize_columns(self.confusion), names).to_csv(
            out / "confusion_matrix_normalized.csv", na_rep="NaN")
        plot_confusion_matrix(
            self.confusion, names, out / "confusion_matrix.png",
            title=f"Confusion matrix (score >= {self.score_thresh:g}, IoU >= {self.iou_thresh:g})")
        return out


def _check_thresh(value: float, key: str, low_open: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} is {value!r}; expected a number in [0, 1]") from None
    if not (0.0 < v <= 1.0 if low_open else 0.0 <= v <= 1.0):
        raise ConfigError(f"{key} is {value!r}; expected a number in {'(0, 1]' if low_open else '[0, 1]'}")
    return v


def run_evaluation(
    gt: dict | str | os.PathLike,
    predictions: Sequence[dict] | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
    backend: str = "faster_coco_eval",
) -> EvaluationResult:
    """Evaluate COCO-results `predictions` (list or JSON file; category ids in the ground
    truth's id space) against the COCO ground truth `gt` (dict as `load_coco` returns, or file).

    `score_thresh` (``TEST.SCORE_THRESH``) and `iou_thresh` (``EVAL.IOU_THRESH``) set the
    operating point of P/R/F1 and the confusion matrix; COCO AP always sweeps all scores and
    IoU 0.50:0.95. `backend` (``EVAL.BACKEND``) picks faster-coco-eval or pycocotools. Writes
    the evaluation files into `out_dir` when given.
    """
    score_thresh = _check_thresh(score_thresh, "TEST.SCORE_THRESH (score_thresh)", low_open=False)
    iou_thresh = _check_thresh(iou_thresh, "EVAL.IOU_THRESH (iou_thresh)", low_open=True)
    check_backend(backend)
    t0 = time.perf_counter()
    data = EvalData.from_coco(gt, predictions)
    coco = coco_evaluate(data, backend)
    matches = match_detections(data, iou_thresh)
    agnostic = match_detections(data, iou_thresh, class_agnostic=True)
    prf1 = prf1_at(matches, score_thresh)
    metrics = {**coco.to_metrics(data.class_names), **prf1.to_metrics(), **data.to_metrics()}
    result = EvaluationResult(
        data=data, matches=matches, agnostic_matches=agnostic, coco=coco, prf1=prf1,
        per_class=per_class_table(metrics), confusion=confusion_matrix(agnostic, score_thresh),
        metrics=metrics, score_thresh=score_thresh, iou_thresh=iou_thresh,
    )
    logger.info("evaluated %d images, %d ground truths, %d detections (%s) in %.2fs",
                data.num_images, len(data.gt_class), len(data.det_score), backend, time.perf_counter() - t0)
    if out_dir is not None:
        result.write(out_dir)
    return result


def evaluate(
    gt: dict | str | os.PathLike,
    predictions: Sequence[dict] | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
    backend: str = "faster_coco_eval",
) -> dict[str, float]:
    """`run_evaluation` returning only the flat metrics dict (``bbox/AP``, ``bbox/AP50``, …,
    ``bbox/AP-<class>``, ``prf1/F1``, …); see the module docstring for names and units."""
    return run_evaluation(gt, predictions, out_dir, score_thresh=score_thresh, iou_thresh=iou_thresh,
                          backend=backend).metrics
