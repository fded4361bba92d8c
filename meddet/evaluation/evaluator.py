"""The evaluator: one set of predictions against one COCO ground truth, the views asked for.

`run_evaluation` computes the requested views (`meddet.evaluation.views`; default every one) once and
returns an `EvaluationResult`: the arrays (`EvalData`), the class-aware and class-agnostic `Matches`
(valid at every score threshold), COCO AP, P/R/F1 at the operating point and at each class's
F1-optimal threshold, the per-class table, the confusion matrix, the score curves, FROC, image-level
ROC, breast/exam level, bootstrap confidence intervals and the typed errors (None where a view was not
computed). `evaluate` is the short form returning the flat metrics dict. ``views=("coco",)`` is the
COCO-only fast path (no matching; ``bbox/…`` and ``gt/…`` metrics, ``metrics.json``).

Files written by `EvaluationResult.write` (each PNG has a CSV of its numbers; only those of the
requested views, and ``metrics.json``):
``metrics.json`` (the flat dict), ``per_class.csv``, ``prf1.csv`` (``point`` = ``threshold`` /
``F1-optimal``), ``confusion_matrix.{csv,png}``, ``confusion_matrix_normalized.csv``,
``pr_curve``, ``f1_curve``, ``p_curve``, ``r_curve`` (.png/.csv), ``froc.{png,csv}``,
``froc_summary.csv``, ``roc.{png,csv}``, ``roc_summary.csv``, ``exam_level.csv`` and
``exam_roc.{png,csv}`` (breast / exam level, when the images carry ``patient_id``),
``calibration.{png,csv}``, ``bootstrap_ci.csv`` (with resamples and their unit),
``errors.csv``, ``errors_detail.csv``, ``errors_fp_<class>`` / ``errors_fn_<class>`` galleries
(.png/.csv, when the images are readable), ``report.md``, ``analysis_report.txt`` and
``project_summary.csv``.

Metric names: ``bbox/…`` as detectron2 writes them (percent, 0–100); ``prf1/…`` fractions at
the operating point (``prf1/score_thresh``, ``prf1/iou_thresh``); ``prf1_opt/…`` at the
F1-optimal thresholds (``prf1_opt/score_thresh-<class>``); ``froc/sens@<x>fp`` and
``froc/cpm`` (all lesions; ``-<class>`` per class); ``image/auc``, ``image/sensitivity``,
``image/specificity`` (any lesion; ``-<class>`` per class); ``breast/auc``, ``exam/auc`` (with
``ci95_low/…`` and ``ci95_high/…`` over patients), ``breast/sens@spec0.9``, ``breast/spec@sens0.9``
(and ``exam/…``), ``calibration/ece`` (see `meddet.evaluation.exam`); ``ci95_low/<metric>`` and
``ci95_high/<metric>`` for ``bbox/AP50``, ``bbox/AP``, ``prf1/recall-<class>`` and
``froc/sens@1fp`` (resampling patients by default: ``EVAL.BOOTSTRAP_UNIT``, named in
``bootstrap_ci.csv`` and the reports); ``errors/<type>`` counts and ``errors/<type>_share``; ``gt/images``,
``gt/instances`` and their ``-<class>`` entries say what was evaluated. Undefined values are NaN
(JSON ``NaN``, as detectron2 writes them; ``-`` in text tables).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from meddet.data.coco import save_json_atomic
from meddet.errors import ConfigError
from meddet.evaluation.coco_eval import check_backend
from meddet.evaluation.matching import EvalData, Matches
from meddet.evaluation.views import VIEWS, EvalContext, WriteOptions, resolve_views

if TYPE_CHECKING:
    import pandas as pd

    from meddet.config import CfgNode

logger = logging.getLogger(__name__)

__all__ = ["EvaluationResult", "run_evaluation", "evaluate", "evaluation_kwargs"]

# meddet.evaluation.froc.DEFAULT_FP_RATES (repeated here so that the COCO-only path imports no pandas).
_DEFAULT_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """What one evaluation computed (see the module docstring): a field is None when its view was not
    asked for. `score_thresh` is the operating point: one float, or an array of one threshold per class.
    `views` are the requested views (whose files `write` writes), `results` every computed view's result
    by view name (a view registered outside meddet is found there)."""

    data: EvalData
    matches: Matches | None = None
    agnostic_matches: Matches | None = None
    coco: Any = None  # CocoMetrics
    prf1: Any = None  # PRF1
    per_class: Any = None  # pandas DataFrame
    confusion: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    score_thresh: float | np.ndarray = 0.5
    iou_thresh: float = 0.5
    backend: str = "faster_coco_eval"
    f1_optimal: Any = None  # PRF1
    curves: Any = None  # ScoreCurves
    froc: Any = None  # FROC
    image_roc: Any = None  # ImageROC
    bootstrap: Any = None  # BootstrapCI | None
    errors: Any = None  # ErrorAnalysis
    exam: Any = None  # ExamLevel
    views: tuple[str, ...] = tuple(VIEWS)
    results: dict[str, Any] = field(default_factory=dict, repr=False)

    def view(self, name: str) -> Any:
        """The result of view `name` (KeyError when it was not computed)."""
        return self.results[name]

    def prf1_frame(self) -> pd.DataFrame:
        """``prf1.csv``: the rows of `PRF1.to_frame` at the operating point (``point`` =
        ``threshold``), then at each class's F1-optimal threshold (``point`` = ``F1-optimal``)."""
        import pandas as pd

        a, b = self.prf1.to_frame(), self.f1_optimal.to_frame()
        a.insert(0, "point", "threshold")
        b.insert(0, "point", "F1-optimal")
        return pd.concat([a, b], ignore_index=True)

    def write(
        self,
        out_dir: str | os.PathLike,
        *,
        image_root: str | os.PathLike | None = None,
        gallery_size: int = 16,
        dicom_kwargs: dict[str, Any] | None = None,
        extra_sections: Sequence[tuple[str, str]] = (),
    ) -> Path:
        """Write ``metrics.json`` and the files of the requested views (`views`; see the module
        docstring) into `out_dir`; returns it.

        Error galleries read the images named by the COCO ``file_name`` under `image_root`
        (absolute file names as they are; None: relative to the working directory) with
        `dicom_kwargs` for DICOM files; `gallery_size` crops per gallery, 0 for none. Galleries
        are skipped with a warning when the images cannot be read.
        """
        t0 = time.perf_counter()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_json_atomic(self.metrics, out / "metrics.json", indent=2)
        opts = WriteOptions(
            image_root=image_root, gallery_size=gallery_size, dicom_kwargs=dicom_kwargs, extra_sections=extra_sections
        )
        for name in self.views:
            opts.written[name] = VIEWS[name].write(self.results[name], self, out, opts)
        logger.info("evaluation files written to %s in %.2fs", out, time.perf_counter() - t0)
        return out


def _check_thresh(value: Any, key: str, low_open: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} is {value!r}; expected a number in [0, 1]") from None
    if not (0.0 < v <= 1.0 if low_open else 0.0 <= v <= 1.0):
        raise ConfigError(f"{key} is {value!r}; expected a number in {'(0, 1]' if low_open else '[0, 1]'}")
    return v


def _check_score_thresh(value: Any, class_names: list[str]) -> float | np.ndarray:
    """One threshold in [0, 1], or a sequence of one per class."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != len(class_names):
            raise ConfigError(
                f"TEST.CLASS_SCORE_THRESH (score_thresh) has {len(value)} values; expected "
                f"{len(class_names)}, one per class in order {class_names}"
            )
        return np.array(
            [
                _check_thresh(v, f"TEST.CLASS_SCORE_THRESH[{i}] (score_thresh)", low_open=False)
                for i, v in enumerate(value)
            ]
        )
    return _check_thresh(value, "TEST.SCORE_THRESH (score_thresh)", low_open=False)


def _check_count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{key} is {value!r}; expected a non-negative integer")
    return int(value)


def run_evaluation(
    gt: dict | str | os.PathLike,
    predictions: Sequence[dict] | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    score_thresh: float | Sequence[float] = 0.5,
    iou_thresh: float = 0.5,
    backend: str = "faster_coco_eval",
    max_dets: int = 100,
    froc_hit: str = "center",
    froc_iou: float = 0.5,
    fp_rates: Sequence[float] = _DEFAULT_FP_RATES,
    froc_interpolation: str = "step",
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
    bootstrap_unit: str = "patient",
    image_root: str | os.PathLike | None = None,
    gallery_size: int = 16,
    dicom_kwargs: dict[str, Any] | None = None,
    extra_sections: Sequence[tuple[str, str]] = (),
    gt_source: str | os.PathLike | None = None,
    predictions_source: str | os.PathLike | None = None,
    strict_boxes: bool = False,
    views: Iterable[str] | str | None = None,
) -> EvaluationResult:
    """Evaluate COCO-results `predictions` (list or JSON file; category ids in the ground
    truth's id space) against the COCO ground truth `gt` (dict as `load_coco` returns, or file).
    Errors in either name its file: the path given, or `gt_source` / `predictions_source` (the
    file a dict or list was read from). An empty `predictions` list is scored (0) with a warning.

    `score_thresh` (``TEST.SCORE_THRESH``, or ``TEST.CLASS_SCORE_THRESH``: one per class) and
    `iou_thresh` (``EVAL.IOU_THRESH``) set the operating point of P/R/F1, the confusion matrix,
    image-level sensitivity/specificity, bootstrap recall and the error analysis; COCO AP, the
    curves and FROC sweep all scores. `backend` (``EVAL.BACKEND``) picks faster-coco-eval or
    pycocotools; `max_dets` (``EVAL.MAX_DETS``) is how many detections per image COCO AP counts.
    `froc_hit`, `froc_iou` and `fp_rates` are ``EVAL.FROC_HIT``,
    ``EVAL.FROC_IOU`` and ``EVAL.FROC_FP_RATES``, `froc_interpolation` ``EVAL.FROC_INTERPOLATION``
    (``step`` or ``linear``, MONAI's); `bootstrap_samples` (0: no intervals) and
    `bootstrap_seed` are ``EVAL.BOOTSTRAP_SAMPLES`` / ``EVAL.BOOTSTRAP_SEED``; `bootstrap_unit`
    (``EVAL.BOOTSTRAP_UNIT``: ``patient``, ``image`` or an image field) is what a resample draws. When `out_dir` is
    given, every file is written there (`EvaluationResult.write`); `image_root`
    (``DATASETS.IMAGE_ROOT``; default: the folder of `gt` when it is a file), `gallery_size`
    (``EVAL.GALLERY_SIZE``) and `dicom_kwargs` serve the error galleries. Ground-truth boxes
    reaching outside their image are clipped to it (dropped when nothing is left), as in training;
    `strict_boxes` (``DATASETS.STRICT_BOXES``) makes them an error.

    `views` (default None: all) names the views to compute and write (see `meddet.evaluation.views.VIEWS`:
    ``coco``, ``prf1``, ``per_class``, ``confusion``, ``curves``, ``froc``, ``roc``, ``exam``,
    ``bootstrap``, ``errors``, ``report``; a sequence or a comma-separated string); the views they read
    are computed too (their metrics included), but only the requested ones write files. ``("coco",)``
    is the COCO-only fast path (no matching).
    """
    iou_thresh = _check_thresh(iou_thresh, "EVAL.IOU_THRESH (iou_thresh)", low_open=True)
    check_backend(backend)
    bootstrap_samples = _check_count(bootstrap_samples, "EVAL.BOOTSTRAP_SAMPLES (bootstrap_samples)")
    gallery_size = _check_count(gallery_size, "EVAL.GALLERY_SIZE (gallery_size)")
    requested, needed = resolve_views(views)
    t0 = time.perf_counter()
    data = EvalData.from_coco(
        gt, predictions, gt_source=gt_source, predictions_source=predictions_source, strict_boxes=bool(strict_boxes)
    )
    thresh = _check_score_thresh(score_thresh, data.class_names)
    max_dets = _check_count(max_dets, "EVAL.MAX_DETS (max_dets)")
    ctx = EvalContext(
        data,
        score_thresh=thresh,
        iou_thresh=iou_thresh,
        backend=backend,
        max_dets=max_dets,
        froc_hit=froc_hit,
        froc_iou=froc_iou,
        fp_rates=fp_rates,
        froc_interpolation=froc_interpolation,
        bootstrap_samples=bootstrap_samples,
        bootstrap_seed=bootstrap_seed,
        bootstrap_unit=bootstrap_unit,
    )
    for name in needed:
        view = VIEWS[name]
        ctx.results[name] = view.compute(ctx)
        ctx.metrics.update(view.metrics(ctx.results[name], ctx))
    metrics = {**ctx.metrics, **data.to_metrics()}
    r = ctx.results
    prf1 = r.get("prf1")
    result = EvaluationResult(
        data=data,
        matches=ctx.__dict__.get("matches"),
        agnostic_matches=ctx.__dict__.get("agnostic_matches"),
        coco=r.get("coco"),
        prf1=prf1.at_threshold if prf1 else None,
        per_class=r.get("per_class"),
        confusion=r.get("confusion"),
        metrics=metrics,
        score_thresh=thresh,
        iou_thresh=iou_thresh,
        backend=backend,
        f1_optimal=prf1.f1_optimal if prf1 else None,
        curves=r.get("curves"),
        froc=r.get("froc"),
        image_roc=r.get("roc"),
        bootstrap=r.get("bootstrap"),
        errors=r.get("errors"),
        exam=r.get("exam"),
        views=requested,
        results=dict(r),
    )
    logger.info(
        "evaluated %d images, %d ground truths, %d detections (%s; %s) in %.2fs",
        data.num_images,
        len(data.gt_class),
        len(data.det_score),
        backend,
        "all views" if requested == tuple(VIEWS) else "views " + ", ".join(requested),
        time.perf_counter() - t0,
    )
    if out_dir is not None:
        if image_root is None and isinstance(gt, (str, os.PathLike)):
            image_root = Path(gt).parent
        result.write(
            out_dir,
            image_root=image_root,
            gallery_size=gallery_size,
            dicom_kwargs=dicom_kwargs,
            extra_sections=extra_sections,
        )
    return result


def evaluate(
    gt: dict | str | os.PathLike,
    predictions: Sequence[dict] | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """`run_evaluation` (same keyword arguments) returning only the flat metrics dict
    (``bbox/AP``, ``bbox/AP50``, …, ``prf1/F1``, ``froc/sens@1fp``, ``image/auc``, …); see the
    module docstring for names and units."""
    return run_evaluation(gt, predictions, out_dir, **kwargs).metrics


def evaluation_kwargs(cfg: CfgNode, views: Iterable[str] | str | None = None) -> dict[str, Any]:
    """The keyword arguments of `run_evaluation` / `evaluate` from a config: TEST.SCORE_THRESH
    (or TEST.CLASS_SCORE_THRESH when set), EVAL.*, DATASETS.IMAGE_ROOT (None when empty),
    DATASETS.STRICT_BOXES and the DICOM pixel options (None when `views` are given without the
    ``errors`` view, the only one reading images: the COCO-only path then loads no DICOM reader)."""
    requested, _ = resolve_views(views)
    if "errors" in requested:
        from meddet.io.dicom import PixelOptions  # meddet.data.dataset.dicom_kwargs, without torch

        dicom = PixelOptions.from_cfg(cfg).as_kwargs()
    else:
        dicom = None
    class_thresh = list(cfg.TEST.CLASS_SCORE_THRESH)
    return {
        "score_thresh": class_thresh if class_thresh else cfg.TEST.SCORE_THRESH,
        "iou_thresh": cfg.EVAL.IOU_THRESH,
        "backend": cfg.EVAL.BACKEND,
        "max_dets": cfg.EVAL.MAX_DETS,
        "froc_hit": cfg.EVAL.FROC_HIT,
        "froc_iou": cfg.EVAL.FROC_IOU,
        "fp_rates": tuple(cfg.EVAL.FROC_FP_RATES),
        "froc_interpolation": cfg.EVAL.FROC_INTERPOLATION,
        "bootstrap_samples": cfg.EVAL.BOOTSTRAP_SAMPLES,
        "bootstrap_seed": cfg.EVAL.BOOTSTRAP_SEED,
        "bootstrap_unit": cfg.EVAL.BOOTSTRAP_UNIT,
        "image_root": cfg.DATASETS.IMAGE_ROOT or None,
        "gallery_size": cfg.EVAL.GALLERY_SIZE,
        "dicom_kwargs": dicom,
        "strict_boxes": bool(cfg.DATASETS.STRICT_BOXES),
    }
