"""COCO box metrics (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l, per-class AP and AP50).

Two backends compute the same numbers: faster-coco-eval (C++, the default) and pycocotools
(the reference). Both get private copies of the ground truth and predictions with contiguous
integer ids, so the caller's dicts are never modified (both libraries write into the dicts they
are given) and image ids of any hashable type work. The private image ids follow the order of the
original ids (not the order of ``images`` in the file): COCO's accumulation breaks ties in score
by image id, so this gives pycocotools' numbers on the original file to the last digit. Neither
library is asked to print: pycocotools' prints are captured and logged at DEBUG level.

Edge cases: with no predictions every AP is 0 for classes that have ground truth (pycocotools
cannot load an empty result list; the results object is built directly instead); a class with
no ground truth has AP NaN and is left out of the means, as COCO does; with no ground truth at
all every metric is NaN.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from meddet.errors import ConfigError
from meddet.evaluation.matching import EvalData

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "CocoMetrics", "check_backend", "coco_evaluate"]

BACKENDS = ("faster_coco_eval", "pycocotools")


@dataclass(frozen=True)
class CocoMetrics:
    """COCO results as fractions in [0, 1] (NaN where undefined).

    `summary` maps COCO's 12 summary numbers ``AP, AP50, AP75, APs, APm, APl, AR1, AR10,
    AR<max_dets>, ARs, ARm, ARl`` to values (in `COCOeval.summarize`'s order); `per_class_ap`
    and `per_class_ap50` are indexed by class index. `precision` is COCO's accumulated array
    ``[T(IoU) x R(recall) x K x A(area) x M(maxDets)]`` (-1 where undefined) for PR curves;
    `iou_thresholds` and `recall_thresholds` index its first two axes.
    """

    summary: dict[str, float]
    per_class_ap: np.ndarray
    per_class_ap50: np.ndarray
    precision: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray

    def pr_curve(self, iou: float = 0.5) -> np.ndarray:
        """Interpolated precision ``[K x R]`` at `iou` (one of `iou_thresholds`), area "all",
        `max_dets` detections per image, at each of `recall_thresholds`; NaN for a class without
        ground truth. Its mean over recall is the class's AP at that IoU."""
        t = np.flatnonzero(np.isclose(self.iou_thresholds, iou))
        if t.size == 0:
            raise ValueError(f"IoU {iou} is not one of COCO's thresholds {self.iou_thresholds.tolist()}")
        # COCO's area ranges are (all, small, medium, large) and maxDets (1, 10, max_dets), in both backends.
        p = self.precision[t[0], :, :, 0, -1].T
        return np.where(p > -1, p, np.nan)

    def to_metrics(self, class_names: list[str]) -> dict[str, float]:
        """detectron2-style flat dict in percent: ``bbox/AP``, ``bbox/AP50``, …, ``bbox/AR100``,
        ``bbox/AP-<class>`` and ``bbox/AP50-<class>`` (NaN stays NaN)."""
        out = {f"bbox/{k}": 100.0 * v for k, v in self.summary.items()}
        for name, ap in zip(class_names, self.per_class_ap):
            out[f"bbox/AP-{name}"] = 100.0 * float(ap)
        for name, ap in zip(class_names, self.per_class_ap50):
            out[f"bbox/AP50-{name}"] = 100.0 * float(ap)
        return out


def check_backend(backend: str) -> str:
    """`backend` if it is one of `BACKENDS`, else a ConfigError naming EVAL.BACKEND."""
    if backend not in BACKENDS:
        raise ConfigError(f"EVAL.BACKEND is {backend!r}; expected one of {list(BACKENDS)}")
    return backend


def _mean_valid(a: np.ndarray) -> float:
    v = a[a > -1]
    return float(v.mean()) if v.size else float("nan")


def _coco_dicts(data: EvalData) -> tuple[dict, dict]:
    """Ground truth and results datasets with ids image 1..I (in the order of the original ids, so
    that ties in score are broken as pycocotools breaks them on the original file), category
    1..K, annotation 1..N."""
    rank = data.coco_image_rank + 1
    images = [{"id": i + 1} for i in range(data.num_images)]
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(data.class_names)]
    gt_anns = [
        {"id": j + 1, "image_id": im, "category_id": c + 1, "bbox": box, "area": area, "iscrowd": int(crowd)}
        for j, (im, c, box, area, crowd) in enumerate(
            zip(
                rank[data.gt_image].tolist(),
                data.gt_class.tolist(),
                data.gt_xywh.tolist(),
                data.gt_area.tolist(),
                data.gt_crowd.tolist(),
            )
        )
    ]
    dt_area = (data.det_xywh[:, 2] * data.det_xywh[:, 3]).tolist()
    dt_anns = [
        {"id": j + 1, "image_id": im, "category_id": c + 1, "bbox": box, "score": s, "area": area, "iscrowd": 0}
        for j, (im, c, box, s, area) in enumerate(
            zip(
                rank[data.det_image].tolist(),
                data.det_class.tolist(),
                data.det_xywh.tolist(),
                data.det_score.tolist(),
                dt_area,
            )
        )
    ]
    gt = {"images": images, "categories": categories, "annotations": gt_anns}
    dt = {"images": list(images), "categories": [dict(c) for c in categories], "annotations": dt_anns}
    return gt, dt


def _run_faster(gt: dict, dt: dict, max_dets: int) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt, print_function=logger.debug)
    coco_dt = COCO(dt, print_function=logger.debug)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=logger.debug)
    ev.params.maxDets = [1, 10, max_dets]
    ev.evaluate()
    ev.accumulate()
    return ev


def _run_pycocotools(gt: dict, dt: dict, max_dets: int) -> Any:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        # Built directly rather than with loadRes, which fails on an empty result list.
        coco_dt = COCO()
        coco_dt.dataset = dt
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    logger.debug("pycocotools: %s", buf.getvalue().strip())
    return ev


def coco_evaluate(data: EvalData, backend: str = "faster_coco_eval", max_dets: int = 100) -> CocoMetrics:
    """Run the COCO box evaluation of `data` with `backend` (``"faster_coco_eval"`` or
    ``"pycocotools"``), counting the `max_dets` highest-scoring detections per image (``EVAL.MAX_DETS``;
    COCO's 100 by default, as detectron2's ``max_dets_per_image``: raise it for images holding more
    objects, e.g. thousands of cells). AP, APs/m/l and ARs/m/l are at `max_dets`; ARn at 1, 10 and
    `max_dets` (pycocotools' `summarize` takes its first number, AP, at a literal 100 detections and
    prints -1 when `max_dets` is not 100; here AP is at `max_dets`, as detectron2 reports it)."""
    check_backend(backend)
    if max_dets <= 10:
        raise ConfigError(f"EVAL.MAX_DETS is {max_dets}; expected more than 10 (COCO also reports AR1 and AR10)")
    gt, dt = _coco_dicts(data)
    ev = _run_faster(gt, dt, max_dets) if backend == "faster_coco_eval" else _run_pycocotools(gt, dt, max_dets)
    p = ev.params
    precision = np.asarray(ev.eval["precision"], dtype=np.float64)
    recall = np.asarray(ev.eval["recall"], dtype=np.float64)
    K = data.num_classes

    area = list(p.areaRngLbl)
    a_all, m100 = area.index("all"), len(p.maxDets) - 1
    t50 = int(np.flatnonzero(np.isclose(p.iouThrs, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(p.iouThrs, 0.75))[0])
    summary = {
        "AP": _mean_valid(precision[:, :, :, a_all, m100]),
        "AP50": _mean_valid(precision[t50, :, :, a_all, m100]),
        "AP75": _mean_valid(precision[t75, :, :, a_all, m100]),
        "APs": _mean_valid(precision[:, :, :, area.index("small"), m100]),
        "APm": _mean_valid(precision[:, :, :, area.index("medium"), m100]),
        "APl": _mean_valid(precision[:, :, :, area.index("large"), m100]),
    }
    for i, n in enumerate(p.maxDets):
        summary[f"AR{n}"] = _mean_valid(recall[:, :, a_all, i])
    for size, name in (("small", "ARs"), ("medium", "ARm"), ("large", "ARl")):
        summary[name] = _mean_valid(recall[:, :, area.index(size), m100])
    per_ap = np.array([_mean_valid(precision[:, :, k, a_all, m100]) for k in range(K)])
    per_ap50 = np.array([_mean_valid(precision[t50, :, k, a_all, m100]) for k in range(K)])
    return CocoMetrics(summary, per_ap, per_ap50, precision, np.asarray(p.iouThrs), np.asarray(p.recThrs))
