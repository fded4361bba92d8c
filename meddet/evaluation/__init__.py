"""Evaluation of box detections against a COCO ground truth: one evaluator, many views.

`evaluate(gt, predictions, out_dir)` is the entry point (`run_evaluation` returns everything
it computed): COCO AP (faster-coco-eval or pycocotools), P/R/F1 per class at a score threshold
and at each class's F1-optimal threshold, the YOLO-style per-class table, the detection
confusion matrix, PR and F1/P/R-against-score curves, FROC, image-level ROC, breast- and
exam-level ROC with the calibration of detection scores, bootstrap
confidence intervals (patients resampled by default), typed errors with galleries, and the reports (report.md,
analysis_report.txt, project_summary.csv). All views read one detection-to-ground-truth
matching (`Matches`, valid at every score threshold). `tune` picks score and NMS thresholds on
a validation split; `compare` tabulates the headline metrics of several runs.
"""
from meddet.evaluation.bootstrap import APStats, BootstrapCI, bootstrap_ci
from meddet.evaluation.coco_eval import BACKENDS, CocoMetrics, check_backend, coco_evaluate
from meddet.evaluation.compare import HEADLINE_METRICS, compare, format_comparison, write_comparison
from meddet.evaluation.confusion import confusion_frame, confusion_matrix, normalize_columns, plot_confusion_matrix
from meddet.evaluation.curves import ScoreCurves, pr_curve_frame, score_curves
from meddet.evaluation.error_analysis import ERROR_TYPES, ErrorAnalysis, classify_errors, write_galleries
from meddet.evaluation.exam import Calibration, ExamLevel, calibration, exam_level
from meddet.evaluation.evaluator import EvaluationResult, evaluate, evaluation_kwargs, run_evaluation
from meddet.evaluation.froc import FROC, FROC_RULES, FROCCurve, froc, froc_hits
from meddet.evaluation.matching import EvalData, Matches, Overlaps, load_predictions, match_detections
from meddet.evaluation.prf1 import PRF1, f1_optimal, prf1_at
from meddet.evaluation.report import write_reports
from meddet.evaluation.roc import ImageROC, ROCCurve, image_roc, roc_curve
from meddet.evaluation.tables import format_per_class_table, format_summary, per_class_table
from meddet.evaluation.tune import TuneResult, tune, tune_kwargs

__all__ = [
    "APStats", "BootstrapCI", "bootstrap_ci",
    "BACKENDS", "CocoMetrics", "check_backend", "coco_evaluate",
    "HEADLINE_METRICS", "compare", "format_comparison", "write_comparison",
    "confusion_frame", "confusion_matrix", "normalize_columns", "plot_confusion_matrix",
    "ScoreCurves", "pr_curve_frame", "score_curves",
    "ERROR_TYPES", "ErrorAnalysis", "classify_errors", "write_galleries",
    "Calibration", "ExamLevel", "calibration", "exam_level",
    "EvaluationResult", "evaluate", "evaluation_kwargs", "run_evaluation",
    "FROC", "FROC_RULES", "FROCCurve", "froc", "froc_hits",
    "EvalData", "Matches", "Overlaps", "load_predictions", "match_detections",
    "PRF1", "f1_optimal", "prf1_at",
    "write_reports",
    "ImageROC", "ROCCurve", "image_roc", "roc_curve",
    "format_per_class_table", "format_summary", "per_class_table",
    "TuneResult", "tune", "tune_kwargs",
]
