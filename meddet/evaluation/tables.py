"""Human-facing tables from the flat metrics dict: the YOLO-style per-class table and the
headline summary for logs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from meddet.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["per_class_table", "format_per_class_table", "format_summary"]

PER_CLASS_COLUMNS = ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]


def per_class_table(metrics: Mapping[str, float]) -> pd.DataFrame:
    """Ultralytics' validation table as a DataFrame, all values fractions in [0, 1], built from
    the flat metrics dict of `evaluate` (or a metrics.json read back).

    One ``all`` row first, then one row per class: Images (images holding at least one ground
    truth of the class; for ``all``, every image evaluated), Instances (ground truths, crowd
    regions excluded), P and R at the evaluation's score and IoU thresholds, mAP50 and mAP50-95
    from COCO. ``all`` takes the macro P and R (classes with ground truth) and COCO's overall
    AP50 and AP. NaN marks an undefined value (e.g. AP of a class without ground truth).
    """
    import pandas as pd

    return pd.DataFrame(_per_class_rows(metrics), columns=PER_CLASS_COLUMNS)


def _per_class_rows(metrics: Mapping[str, float]) -> list[tuple]:
    def count(key: str) -> int:
        if key not in metrics:
            raise DataError(f"metrics: no {key!r} entry; expected the metrics dict of meddet.evaluation.evaluate")
        return int(metrics[key])

    def rate(key: str) -> float:
        return float(metrics.get(key, float("nan")))

    prefix = "gt/instances-"
    names = [k[len(prefix) :] for k in metrics if k.startswith(prefix)]
    rows = [
        (
            "all",
            count("gt/images"),
            count("gt/instances"),
            rate("prf1/macro_precision"),
            rate("prf1/macro_recall"),
            rate("bbox/AP50") / 100,
            rate("bbox/AP") / 100,
        )
    ]
    rows += [
        (
            n,
            count(f"gt/images-{n}"),
            count(f"gt/instances-{n}"),
            rate(f"prf1/precision-{n}"),
            rate(f"prf1/recall-{n}"),
            rate(f"bbox/AP50-{n}") / 100,
            rate(f"bbox/AP-{n}") / 100,
        )
        for n in names
    ]
    return rows


def _cell(v: object, digits: int) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "-" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def format_per_class_table(table: pd.DataFrame | Mapping[str, float], digits: int = 3) -> str:
    """Right-aligned text table, NaN as ``-``, floats with `digits` decimals, the first column
    as wide as the longest name. `table` is a DataFrame (such as `per_class_table`'s) or the
    metrics dict of `evaluate`, which is turned into the per-class table first."""
    if isinstance(table, Mapping):  # no pandas needed (the COCO-only command line path)
        rows, header = _per_class_rows(table), list(PER_CLASS_COLUMNS)
    else:
        rows, header = list(table.itertuples(index=False)), [str(c) for c in table.columns]
    cells = [[_cell(v, digits) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) + 2 for i, h in enumerate(header)]
    widths[0] = max(widths[0], 22)
    widths[1:] = [max(w, 11) for w in widths[1:]]
    lines = ["".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def format_summary(metrics: Mapping[str, float]) -> str:
    """Headline block for logs: detectron2's COCO table (percent), the P/R/F1 line and, when
    present, the FROC / image-level line.

    Example::

        |   AP   |  AP50  |  AP75  |  APs   |  APm   |  APl   |
        |:------:|:------:|:------:|:------:|:------:|:------:|
        | 45.210 | 70.133 | 48.000 |   -    | 44.900 | 51.000 |
        P 0.812  R 0.701  F1 0.752 (micro) | macro F1 0.733 | weighted F1 0.748 | score >= 0.50, IoU >= 0.50
        FROC sensitivity at 1 FP/image 0.640 (CPM 0.581) | image-level AUC 0.812
    """
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    vals = [_cell(float(metrics.get(f"bbox/{n}", float("nan"))), 3) for n in names]
    widths = [max(len(n), len(v)) + 2 for n, v in zip(names, vals)]
    lines = [
        "|" + "|".join(n.center(w) for n, w in zip(names, widths)) + "|",
        "|" + "|".join(":" + "-" * (w - 2) + ":" for w in widths) + "|",
        "|" + "|".join(v.center(w) for v, w in zip(vals, widths)) + "|",
    ]
    if "prf1/F1" in metrics:

        def g(key: str) -> str:
            return _cell(float(metrics[key]), 3)

        at = (
            f"score >= {metrics['prf1/score_thresh']:.2f}"
            if "prf1/score_thresh" in metrics
            else "per-class score thresholds"
        )
        lines.append(
            f"P {g('prf1/precision')}  R {g('prf1/recall')}  F1 {g('prf1/F1')} (micro) | "
            f"macro F1 {g('prf1/macro_F1')} | weighted F1 {g('prf1/weighted_F1')} | "
            f"{at}, IoU >= {metrics['prf1/iou_thresh']:.2f}"
        )
    if "froc/sens@1fp" in metrics:
        lines.append(
            f"FROC sensitivity at 1 FP/image {_cell(float(metrics['froc/sens@1fp']), 3)} "
            f"(CPM {_cell(float(metrics.get('froc/cpm', float('nan'))), 3)}) | "
            f"image-level AUC {_cell(float(metrics.get('image/auc', float('nan'))), 3)}"
        )
    return "\n".join(lines)
