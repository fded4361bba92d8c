"""Evaluation of box detections against a COCO ground truth.

`evaluate(gt, predictions, out_dir)` is the entry point: COCO AP (faster-coco-eval or
pycocotools), P/R/F1 per class at a score threshold, the YOLO-style per-class table and the
detection confusion matrix, written as metrics.json, CSVs and a PNG. `run_evaluation` returns
the same plus the arrays and the one detection-to-ground-truth matching (`Matches`, valid at
every score threshold) that curves, FROC, bootstrap CIs and galleries build on.
"""
from meddet.evaluation.coco_eval import BACKENDS, CocoMetrics, check_backend, coco_evaluate
from meddet.evaluation.confusion import confusion_frame, confusion_matrix, normalize_columns, plot_confusion_matrix
from meddet.evaluation.evaluator import EvaluationResult, evaluate, run_evaluation
from meddet.evaluation.matching import EvalData, Matches, Overlaps, load_predictions, match_detections
from meddet.evaluation.prf1 import PRF1, prf1_at
from meddet.evaluation.tables import format_per_class_table, format_summary, per_class_table

__all__ = [
    "BACKENDS", "CocoMetrics", "check_backend", "coco_evaluate",
    "confusion_frame", "confusion_matrix", "normalize_columns", "plot_confusion_matrix",
    "EvaluationResult", "evaluate", "run_evaluation",
    "EvalData", "Matches", "Overlaps", "load_predictions", "match_detections",
    "PRF1", "prf1_at",
    "format_per_class_table", "format_summary", "per_class_table",
]
