"""Post-hoc tuning (``-c tune``): score and NMS IoU thresholds chosen on a validation split,
without retraining.

The predictions must come from a **permissive** model setting — e.g.
``MODEL.ROI_HEADS.NMS_THRESH_TEST 0.7`` and ``MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.01`` — since
tuning can only remove detections: each NMS IoU threshold of the sweep re-applies class-wise NMS
(`torchvision.ops.batched_nms`, per image and class) to the given detections, so values above
the one the predictions were made with change nothing, and scores below the model's floor were
never seen. (A model run at the tuned NMS may fill its per-image detection limit with a few
lower-scoring boxes the sweep could not see; at the usual limit of 100 this rarely matters.)

For each NMS value, each class gets its best score threshold by the objective:

- ``"f1"``: the F1-optimal threshold (`meddet.evaluation.prf1.f1_optimal`, matching at IoU ≥
  `iou_thresh`);
- ``"froc"``: the highest sensitivity at `target_fpi` false positives per image (FROC of that
  class, hit rule `froc_hit`), reached at the lowest threshold within the FP budget.

The NMS value kept is the one with the best macro objective at the per-class thresholds (mean over
classes with ground truth of each class's objective at its own threshold: what
``TEST.CLASS_SCORE_THRESH`` reaches; ties go to the larger NMS IoU, which suppresses less). The
global ``TEST.SCORE_THRESH`` is, at that NMS value, the threshold of best macro F1 over a 0.001 grid
(``"f1"``), or the all-lesion FROC threshold at `target_fpi` (``"froc"``; 1.0 when even the top detection exceeds
the budget); a class without a usable threshold (no ground truth, no true positive, or no
detection within the FP budget) falls back to it in ``TEST.CLASS_SCORE_THRESH``. The table's
``macro`` row holds, per NMS value, the macro objective reached at that single global threshold
(``objective``) and at the per-class thresholds (``objective_class_thresh``); the summary reports both.

The fragment names the class of each per-class threshold (``TEST.CLASS_SCORE_THRESH_NAMES``), so the
thresholds follow classes by name (a model or ensemble with other or more classes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from meddet.errors import ConfigError
from meddet.evaluation.curves import score_curves
from meddet.evaluation.froc import froc
from meddet.evaluation.matching import EvalData, match_detections
from meddet.evaluation.prf1 import f1_optimal

if TYPE_CHECKING:
    from meddet.config import CfgNode

logger = logging.getLogger(__name__)

__all__ = ["TuneResult", "tune", "tune_kwargs", "OBJECTIVES"]

OBJECTIVES = ("f1", "froc")


@dataclass(frozen=True)
class TuneResult:
    """The chosen values and the whole sweep (`table`: one row per NMS value and class, then a
    ``macro`` row per NMS value)."""

    class_names: list[str]
    objective: str
    nms_thresh: float
    score_thresh: float
    class_score_thresh: list[float]
    table: pd.DataFrame

    def _macro_row(self) -> pd.Series:
        rows = self.table[(self.table["nms_thresh"] == self.nms_thresh) & (self.table["Class"] == "macro")]
        return rows.iloc[0]

    @property
    def macro_at_class_thresh(self) -> float:
        """The macro objective reached at the chosen per-class thresholds (TEST.CLASS_SCORE_THRESH)."""
        return float(self._macro_row()["objective_class_thresh"])

    @property
    def macro_at_score_thresh(self) -> float:
        """The macro objective reached at the chosen global threshold (TEST.SCORE_THRESH) for every class."""
        return float(self._macro_row()["objective"])

    def fragment(self) -> dict[str, Any]:
        """The config fragment: ``MODEL.ROI_HEADS.NMS_THRESH_TEST``, ``TEST.SCORE_THRESH``,
        ``TEST.CLASS_SCORE_THRESH`` (one per class, in class-index order) and
        ``TEST.CLASS_SCORE_THRESH_NAMES`` (the class of each)."""
        return {
            "MODEL": {"ROI_HEADS": {"NMS_THRESH_TEST": round(float(self.nms_thresh), 4)}},
            "TEST": {
                "SCORE_THRESH": round(float(self.score_thresh), 4),
                "CLASS_SCORE_THRESH": [round(float(t), 4) for t in self.class_score_thresh],
                "CLASS_SCORE_THRESH_NAMES": list(self.class_names),
            },
        }

    def summary(self) -> str:
        """A few lines for logs and the CLI: per class its threshold and objective there, then the macro
        objective actually reached at the per-class thresholds and at the one global threshold."""
        best = self.table[(self.table["nms_thresh"] == self.nms_thresh) & (self.table["Class"] != "macro")]
        lines = [
            f"tuned on the {self.objective} objective: NMS IoU {self.nms_thresh:g}, "
            f"global score threshold {self.score_thresh:.4f}"
        ]
        for row in best.itertuples(index=False):
            lines.append(f"  {row.Class:<20} score >= {row.score_thresh:.4f}  {self.objective} {row.objective:.4f}")
        what = "F1" if self.objective == "f1" else "sensitivity"
        lines.append(
            f"  macro {what} at the per-class thresholds (TEST.CLASS_SCORE_THRESH): {self.macro_at_class_thresh:.4f}"
        )
        lines.append(
            f"  macro {what} at score >= {self.score_thresh:.4f} for every class (TEST.SCORE_THRESH): "
            f"{self.macro_at_score_thresh:.4f}"
        )
        return "\n".join(lines)

    def write(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """``tune.csv`` (the sweep) and ``tuned_config.yaml`` (the fragment, to merge after the
        run's config: ``--config-file run/config.yaml`` then ``tuned_config.yaml`` as a
        ``_BASE_`` child, or its keys as overrides) in `out_dir`; returns both paths."""
        import yaml

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv = out / "tune.csv"
        self.table.to_csv(csv, index=False, na_rep="NaN")
        header = (
            f"# meddet tune: objective {self.objective}; classes {self.class_names}\n"
            "# CLASS_SCORE_THRESH is in class-index order (empty list = TEST.SCORE_THRESH for all).\n"
        )
        y = out / "tuned_config.yaml"
        y.write_text(
            header + yaml.safe_dump(self.fragment(), sort_keys=False, default_flow_style=None), encoding="utf-8"
        )
        return csv, y


def _class_wise_nms(data: EvalData, nms_thresh: float) -> np.ndarray:
    """Indices of the detections kept by NMS per image and class."""
    import torch
    from torchvision.ops import batched_nms

    if data.det_score.size == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = torch.from_numpy(data.det_xywh)
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    groups = torch.from_numpy(data.det_image * max(data.num_classes, 1) + data.det_class)
    keep = batched_nms(boxes, torch.from_numpy(data.det_score), groups, float(nms_thresh))
    return np.sort(keep.numpy())


def _macro(values: np.ndarray, has_gt: np.ndarray) -> float:
    v = values[has_gt]
    return float(np.mean(v)) if v.size else float("nan")


def tune(
    gt: dict | str | os.PathLike,
    predictions: Sequence[dict] | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    nms_thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7),
    iou_thresh: float = 0.5,
    objective: str = "f1",
    target_fpi: float = 1.0,
    froc_hit: str = "center",
    froc_iou: float = 0.5,
    gt_source: str | os.PathLike | None = None,
    predictions_source: str | os.PathLike | None = None,
) -> TuneResult:
    """Sweep NMS IoU and score thresholds on validation predictions (see the module docstring);
    write ``tune.csv`` and ``tuned_config.yaml`` into `out_dir` when given.

    Config keys: `nms_thresholds` ``EVAL.TUNE_NMS_THRESHOLDS``, `objective`
    ``EVAL.TUNE_OBJECTIVE``, `target_fpi` ``EVAL.TUNE_TARGET_FPI``, `iou_thresh`
    ``EVAL.IOU_THRESH``, `froc_hit` / `froc_iou` ``EVAL.FROC_HIT`` / ``EVAL.FROC_IOU``;
    `gt_source` / `predictions_source`: the files dicts were read from, named in errors.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"EVAL.TUNE_OBJECTIVE is {objective!r}; expected one of {list(OBJECTIVES)}")
    nms_values = sorted({float(v) for v in nms_thresholds})
    if not nms_values or any(not 0.0 < v <= 1.0 for v in nms_values):
        raise ConfigError(f"EVAL.TUNE_NMS_THRESHOLDS is {list(nms_thresholds)}; expected numbers in (0, 1]")
    if not 0.0 < float(iou_thresh) <= 1.0:
        raise ConfigError(f"EVAL.IOU_THRESH is {iou_thresh!r}; expected a number in (0, 1]")
    if objective == "froc" and not (np.isfinite(target_fpi) and target_fpi > 0):
        raise ConfigError(f"EVAL.TUNE_TARGET_FPI is {target_fpi!r}; expected a positive number")
    data = EvalData.from_coco(gt, predictions, gt_source=gt_source, predictions_source=predictions_source)
    names = list(data.class_names)
    has_gt = data.instances_per_class() > 0
    if not has_gt.any():
        raise ConfigError("tune: the ground truth holds no boxes; tune on a labelled validation split")
    rows, per_nms = [], []
    for nms in nms_values:
        sub = data.with_detections(_class_wise_nms(data, nms))
        if objective == "f1":
            matches = match_detections(sub, iou_thresh)
            best = f1_optimal(matches)
            thr, value = best.thresholds(), np.nan_to_num(best.f1, nan=0.0)
            extra = {"precision": best.precision, "recall": best.recall, "F1": best.f1}
            curves = score_curves(matches)
            macro_curve = np.nanmean(np.where(has_gt[:, None], curves.values("F1"), np.nan), axis=0)
            rev = macro_curve[::-1]
            if np.isfinite(rev).any():
                gi = len(rev) - 1 - int(np.nanargmax(rev))
                glob, macro_glob = float(curves.thresholds[gi]), float(macro_curve[gi])
            else:
                glob, macro_glob = np.nan, np.nan
        else:
            fr = froc(sub, froc_hit, froc_iou, (target_fpi,))
            thr_at: list[float] = []
            value_at: list[float] = []
            fpi: list[float] = []
            for c in fr.curves:
                i = int(np.searchsorted(c.fp, target_fpi * c.n_images + 1e-9, side="right") - 1)
                thr_at.append(c.score_thresh[i] if i > 0 else np.nan)
                value_at.append(c.found[i] / c.n_lesions if c.n_lesions else np.nan)
                fpi.append(c.fp[i] / c.n_images if c.n_images else np.nan)
            glob = float(thr_at[-1])
            g = glob if np.isfinite(glob) else 1.0
            sens_glob = np.array(
                [np.sum(c.lesion_scores >= g) / c.n_lesions if c.n_lesions else np.nan for c in fr.curves[:-1]]
            )
            macro_glob = _macro(np.nan_to_num(sens_glob, nan=0.0), has_gt)
            thr, value = np.array(thr_at[:-1]), np.nan_to_num(np.array(value_at[:-1]), nan=0.0)
            extra = {"sensitivity": value, "fp_per_image": np.array(fpi[:-1])}
        macro = _macro(value, has_gt)
        per_nms.append((nms, macro, thr, glob))
        for k, name in enumerate(names):
            rows.append(
                {
                    "nms_thresh": nms,
                    "Class": name,
                    "score_thresh": thr[k],
                    "objective": value[k],
                    "detections": int(sub.det_score.size),
                    **{key: v[k] for key, v in extra.items()},
                }
            )
        rows.append(
            {
                "nms_thresh": nms,
                "Class": "macro",
                "score_thresh": glob,
                "objective": macro_glob,
                "objective_class_thresh": macro,
                "detections": int(sub.det_score.size),
            }
        )
    macros = np.array([m for _, m, _, _ in per_nms])
    pick = len(macros) - 1 - int(np.nanargmax(macros[::-1])) if np.isfinite(macros).any() else len(macros) - 1
    nms, _, thr, glob = per_nms[pick]
    if not np.isfinite(glob):  # no threshold fits (e.g. FP budget exceeded by the top detection)
        glob = 1.0
    class_thr = [float(t) if np.isfinite(t) else float(glob) for t in thr]
    result = TuneResult(names, objective, float(nms), float(glob), class_thr, pd.DataFrame(rows))
    logger.info("%s", result.summary())
    if out_dir is not None:
        result.write(out_dir)
    return result


def tune_kwargs(cfg: CfgNode) -> dict[str, Any]:
    """The keyword arguments of `tune` from a config (EVAL.TUNE_*, EVAL.IOU_THRESH, EVAL.FROC_*)."""
    return {
        "nms_thresholds": tuple(cfg.EVAL.TUNE_NMS_THRESHOLDS),
        "iou_thresh": cfg.EVAL.IOU_THRESH,
        "objective": cfg.EVAL.TUNE_OBJECTIVE,
        "target_fpi": cfg.EVAL.TUNE_TARGET_FPI,
        "froc_hit": cfg.EVAL.FROC_HIT,
        "froc_iou": cfg.EVAL.FROC_IOU,
    }
