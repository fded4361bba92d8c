"""Evaluation of box detections against a COCO ground truth: one evaluator, many views.

`evaluate(gt, predictions, out_dir)` is the entry point (`run_evaluation` returns everything
it computed; `views=` picks what to compute, see `meddet.evaluation.views`): COCO AP
(faster-coco-eval or pycocotools), P/R/F1 per class at a score threshold
and at each class's F1-optimal threshold, the YOLO-style per-class table, the detection
confusion matrix, PR and F1/P/R-against-score curves, FROC, image-level ROC, breast- and
exam-level ROC with the calibration of detection scores, bootstrap
confidence intervals (patients resampled by default), typed errors with galleries, and the reports (report.md,
analysis_report.txt, project_summary.csv). All views read one detection-to-ground-truth
matching (`Matches`, valid at every score threshold). `tune` picks score and NMS thresholds on
a validation split; `compare` tabulates the headline metrics of several runs.

The names below are imported on first use (PEP 562), so that ``import meddet.evaluation`` and the
COCO-only path load neither pandas nor matplotlib nor SciPy.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_LAZY = {
    "APStats": "meddet.evaluation.bootstrap",
    "BootstrapCI": "meddet.evaluation.bootstrap",
    "bootstrap_ci": "meddet.evaluation.bootstrap",
    "BACKENDS": "meddet.evaluation.coco_eval",
    "CocoMetrics": "meddet.evaluation.coco_eval",
    "check_backend": "meddet.evaluation.coco_eval",
    "coco_evaluate": "meddet.evaluation.coco_eval",
    "HEADLINE_METRICS": "meddet.evaluation.compare",
    "compare": "meddet.evaluation.compare",
    "format_comparison": "meddet.evaluation.compare",
    "write_comparison": "meddet.evaluation.compare",
    "confusion_frame": "meddet.evaluation.confusion",
    "confusion_matrix": "meddet.evaluation.confusion",
    "normalize_columns": "meddet.evaluation.confusion",
    "plot_confusion_matrix": "meddet.evaluation.confusion",
    "ScoreCurves": "meddet.evaluation.curves",
    "pr_curve_frame": "meddet.evaluation.curves",
    "score_curves": "meddet.evaluation.curves",
    "ERROR_TYPES": "meddet.evaluation.error_analysis",
    "ErrorAnalysis": "meddet.evaluation.error_analysis",
    "classify_errors": "meddet.evaluation.error_analysis",
    "write_galleries": "meddet.evaluation.error_analysis",
    "Calibration": "meddet.evaluation.exam",
    "ExamLevel": "meddet.evaluation.exam",
    "calibration": "meddet.evaluation.exam",
    "exam_level": "meddet.evaluation.exam",
    "EvaluationResult": "meddet.evaluation.evaluator",
    "evaluate": "meddet.evaluation.evaluator",
    "evaluation_kwargs": "meddet.evaluation.evaluator",
    "run_evaluation": "meddet.evaluation.evaluator",
    "FROC": "meddet.evaluation.froc",
    "FROC_RULES": "meddet.evaluation.froc",
    "FROCCurve": "meddet.evaluation.froc",
    "froc": "meddet.evaluation.froc",
    "froc_hits": "meddet.evaluation.froc",
    "EvalData": "meddet.evaluation.matching",
    "Matches": "meddet.evaluation.matching",
    "Overlaps": "meddet.evaluation.matching",
    "load_predictions": "meddet.evaluation.matching",
    "match_detections": "meddet.evaluation.matching",
    "PRF1": "meddet.evaluation.prf1",
    "f1_optimal": "meddet.evaluation.prf1",
    "prf1_at": "meddet.evaluation.prf1",
    "write_reports": "meddet.evaluation.report",
    "ImageROC": "meddet.evaluation.roc",
    "ROCCurve": "meddet.evaluation.roc",
    "image_roc": "meddet.evaluation.roc",
    "roc_curve": "meddet.evaluation.roc",
    "format_per_class_table": "meddet.evaluation.tables",
    "format_summary": "meddet.evaluation.tables",
    "per_class_table": "meddet.evaluation.tables",
    "TuneResult": "meddet.evaluation.tune",
    "tune": "meddet.evaluation.tune",
    "tune_kwargs": "meddet.evaluation.tune",
    "EvalContext": "meddet.evaluation.views",
    "EvaluationView": "meddet.evaluation.views",
    "VIEWS": "meddet.evaluation.views",
    "register_view": "meddet.evaluation.views",
    "views_for_metrics": "meddet.evaluation.views",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# Functions named as their module (compare, froc, tune): importing the submodule binds its name on this
# package; bind the function instead, as the eager `from meddet.evaluation.froc import froc` did.
_SHADOWED = {name for name, module in _LAZY.items() if module.rsplit(".", 1)[1] == name}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
