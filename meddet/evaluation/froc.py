"""FROC: lesion sensitivity against the mean number of false positives per image.

Conventions (those of CAD evaluation, e.g. LUNA16):

- **Hit rule** (``EVAL.FROC_HIT``): ``"center"`` — the detection's box centre lies inside the
  lesion's box (edges included), the usual rule in mammography CAD; or ``"iou"`` — IoU ≥
  ``EVAL.FROC_IOU``. Per-class curves need the detection's class to be the lesion's; the
  ``all`` curve (every lesion, every detection) ignores classes.
- At a score threshold *s*, a lesion is **found** when at least one detection scoring ≥ *s* hits
  it. A detection that hits at least one lesion is never a false positive, even when another
  detection already found that lesion: extra hits on a found lesion are neither TP nor FP. A
  detection that hits no lesion is a **false positive**. A detection hitting only a crowd
  region (``iscrowd``; intersection over the detection's area for the ``iou`` rule, as COCO
  does) is ignored; crowd regions are not lesions.
- **FP/image** = false positives / all images (images without lesions included);
  **sensitivity** = found lesions / all lesions (NaN without lesions).
- **Sensitivity at x FP/image** (``EVAL.FROC_INTERPOLATION``): ``"step"`` (default, LUNA16) —
  that of the lowest threshold whose FP/image is ≤ x: the highest sensitivity reachable without
  exceeding x, an operating point one can set. ``"linear"`` — the FROC polyline (every threshold's
  (FP/image, sensitivity) point, from (0, 0)) linearly interpolated at x, i.e. MONAI's
  ``compute_froc_score`` (CAMELYON16): ``np.interp(x, fps_per_image[::-1], sensitivity[::-1])`` on the
  points of ``compute_froc_curve_data`` (which, fed the lesions' best scores with 0 for missed ones
  as MONAI's ``compute_fp_tp_probs`` does, ends at the lowest detection score, as this curve does).
  Either way, when all detections together stay below x it is the final sensitivity. The **CPM**
  is the mean sensitivity over the FP rates (0.125 … 8 by default), as in LUNA16.

The curve keeps its corners: the start (no detection), every threshold at which a lesion is
found, and the end (every detection kept) — lossless for the step rule; the linear rule adds,
before each corner, the point just above its threshold (same sensitivity as the corner before,
the false positives scoring above it), which is all of the polyline that is not on a flat segment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from meddet.errors import ConfigError
from meddet.evaluation.matching import EvalData
from meddet.evaluation.plots import plot_lines

__all__ = [
    "FROC_RULES",
    "FROC_INTERPOLATIONS",
    "DEFAULT_FP_RATES",
    "FROCCurve",
    "FROC",
    "froc",
    "froc_hits",
    "rate_label",
    "check_interpolation",
]

FROC_RULES = ("center", "iou")
FROC_INTERPOLATIONS = ("step", "linear")
DEFAULT_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
ALL = "all"


def rate_label(rate: float) -> str:
    """``sens@<rate>fp`` with the rate written shortest (``sens@0.125fp``, ``sens@1fp``)."""
    return f"sens@{float(rate):g}fp"


def froc_hits(
    data: EvalData, rule: str = "center", iou_thresh: float = 0.5, *, class_agnostic: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which detections hit which lesions under `rule` (see the module docstring).

    Returns (``det_hit``: detection hits at least one lesion, ``det_ignored``: detection hits
    only crowd regions, ``lesion_score``: per ground truth the highest score among the
    detections hitting it, -inf when none does; crowd regions get -inf).
    """
    if rule not in FROC_RULES:
        raise ConfigError(f"EVAL.FROC_HIT is {rule!r}; expected one of {list(FROC_RULES)}")
    ov = data.overlaps
    if rule == "iou":
        crowd = data.gt_crowd[ov.gt]
        hit = np.where(crowd, ov.iof, ov.iou) >= iou_thresh
    else:
        d, g = data.det_xywh[ov.det], data.gt_xywh[ov.gt]
        cx, cy = d[:, 0] + d[:, 2] / 2, d[:, 1] + d[:, 3] / 2
        hit = (cx >= g[:, 0]) & (cx <= g[:, 0] + g[:, 2]) & (cy >= g[:, 1]) & (cy <= g[:, 1] + g[:, 3])
    if not class_agnostic:
        hit &= data.det_class[ov.det] == data.gt_class[ov.gt]
    crowd = data.gt_crowd[ov.gt]
    real = hit & ~crowd
    n_det = data.det_score.size
    det_hit = np.zeros(n_det, dtype=bool)
    det_hit[ov.det[real]] = True
    det_ignored = np.zeros(n_det, dtype=bool)
    det_ignored[ov.det[hit & crowd]] = True
    det_ignored &= ~det_hit
    lesion_score = np.full(data.gt_class.size, -np.inf)
    np.maximum.at(lesion_score, ov.gt[real], data.det_score[ov.det[real]])
    return det_hit, det_ignored, lesion_score


@dataclass(frozen=True)
class FROCCurve:
    """One FROC curve: operating points from the highest threshold (``inf``: no detection) down.

    `fp_scores`/`fp_images` (the false positives) and `lesion_scores`/`lesion_images` (each
    lesion's best hitting score, -inf when never found) are the raw events the curve is built
    from; the bootstrap resamples them by image.
    """

    name: str
    n_images: int
    n_lesions: int
    score_thresh: np.ndarray
    fp: np.ndarray
    found: np.ndarray
    fp_scores: np.ndarray = field(repr=False)
    fp_images: np.ndarray = field(repr=False)
    lesion_scores: np.ndarray = field(repr=False)
    lesion_images: np.ndarray = field(repr=False)

    @property
    def fp_per_image(self) -> np.ndarray:
        return self.fp / self.n_images if self.n_images else np.full(self.fp.shape, np.nan)

    @property
    def sensitivity(self) -> np.ndarray:
        return self.found / self.n_lesions if self.n_lesions else np.full(self.found.shape, np.nan)

    def polyline(self) -> tuple[np.ndarray, np.ndarray]:
        """(FP/image, sensitivity) of every vertex of the FROC polyline, FP ascending: each corner
        preceded by the point just above its threshold (see the module docstring)."""
        fp_sorted = np.sort(self.fp_scores)
        above = fp_sorted.size - np.searchsorted(fp_sorted, self.score_thresh[1:], side="right")
        fp = np.empty(2 * self.fp.size - 1, dtype=np.int64)
        found = np.empty_like(fp)
        fp[0], found[0] = self.fp[0], self.found[0]
        fp[1::2], found[1::2] = above, self.found[:-1]
        fp[2::2], found[2::2] = self.fp[1:], self.found[1:]
        return fp / float(self.n_images), found / float(self.n_lesions)

    def sensitivity_at(self, rates: Sequence[float], interpolation: str = "step") -> np.ndarray:
        """Sensitivity at each mean-FP-per-image rate, by the `interpolation` rule (``"step"`` or
        ``"linear"``, see the module docstring)."""
        check_interpolation(interpolation)
        if not self.n_lesions:
            return np.full(len(rates), np.nan)
        if interpolation == "linear":
            fpi, sens = self.polyline()
            return np.interp(np.asarray(rates, dtype=np.float64), fpi, sens)
        limit = np.asarray(rates, dtype=np.float64) * self.n_images
        idx = np.searchsorted(self.fp, limit + 1e-9, side="right") - 1
        return self.found[idx] / self.n_lesions


def check_interpolation(interpolation: str) -> str:
    """`interpolation` if it is one of `FROC_INTERPOLATIONS`, else a ConfigError."""
    if interpolation not in FROC_INTERPOLATIONS:
        raise ConfigError(f"EVAL.FROC_INTERPOLATION is {interpolation!r}; expected one of {list(FROC_INTERPOLATIONS)}")
    return interpolation


def _curve(
    name: str,
    n_images: int,
    fp_scores: np.ndarray,
    fp_images: np.ndarray,
    lesion_scores: np.ndarray,
    lesion_images: np.ndarray,
    lowest: float,
) -> FROCCurve:
    fp_sorted = np.sort(fp_scores)
    found_sorted = np.sort(lesion_scores[np.isfinite(lesion_scores)])
    corners = np.unique(found_sorted)[::-1]
    if np.isfinite(lowest) and (corners.size == 0 or lowest < corners[-1]):
        corners = np.append(corners, lowest)
    thresh = np.concatenate([[np.inf], corners])
    fp = fp_sorted.size - np.searchsorted(fp_sorted, thresh, side="left")
    found = found_sorted.size - np.searchsorted(found_sorted, thresh, side="left")
    return FROCCurve(
        name,
        n_images,
        int(lesion_scores.size),
        thresh,
        fp.astype(np.int64),
        found.astype(np.int64),
        fp_scores,
        fp_images,
        lesion_scores,
        lesion_images,
    )


@dataclass(frozen=True)
class FROC:
    """FROC curves per class and for all lesions (``curves[-1]``, named ``all``)."""

    hit_rule: str
    iou_thresh: float
    fp_rates: tuple[float, ...]
    curves: list[FROCCurve]
    interpolation: str = "step"

    @property
    def all(self) -> FROCCurve:
        return self.curves[-1]

    def describe_rule(self) -> str:
        """The hit rule in words."""
        if self.hit_rule == "center":
            return "detection centre inside the lesion box"
        return f"IoU >= {self.iou_thresh:g}"

    def describe_interpolation(self) -> str:
        """How sensitivity at x FP/image is read off the curve, in words."""
        if self.interpolation == "linear":
            return "linear interpolation of the FROC polyline at x FP/image (MONAI's compute_froc_score, CAMELYON16)"
        return "that of the lowest threshold with at most x FP/image (step rule, LUNA16)"

    def summary_frame(self) -> pd.DataFrame:
        """One row per curve (classes, then ``all``): lesions, sensitivity at each FP rate, CPM."""
        rows = []
        for c in self.curves:
            sens = c.sensitivity_at(self.fp_rates, self.interpolation)
            rows.append([c.name, c.n_lesions, *sens, float(np.mean(sens)) if c.n_lesions else np.nan])
        return pd.DataFrame(rows, columns=["Class", "Lesions", *map(rate_label, self.fp_rates), "CPM"])

    def to_frame(self) -> pd.DataFrame:
        """``froc.csv``: curve, score_thresh, fp (count), fp_per_image, found, sensitivity."""
        parts = [
            pd.DataFrame(
                {
                    "curve": c.name,
                    "score_thresh": c.score_thresh,
                    "fp": c.fp,
                    "fp_per_image": c.fp_per_image,
                    "found": c.found,
                    "sensitivity": c.sensitivity,
                }
            )
            for c in self.curves
        ]
        return pd.concat(parts, ignore_index=True)

    def to_metrics(self) -> dict[str, float]:
        """``froc/sens@<x>fp`` and ``froc/cpm`` for all lesions, and ``…-<class>`` per class."""
        out: dict[str, float] = {}
        summary = self.summary_frame()
        for i, c in enumerate(self.curves):
            suffix = "" if c is self.all else f"-{c.name}"
            for rate in self.fp_rates:
                out[f"froc/{rate_label(rate)}{suffix}"] = float(summary.at[i, rate_label(rate)])
            out[f"froc/cpm{suffix}"] = float(summary.at[i, "CPM"])
        return out

    def write(self, out_dir: str | os.PathLike) -> Path:
        """``froc.csv`` (every corner of every curve), ``froc_summary.csv`` and ``froc.png``."""
        out = Path(out_dir)
        self.to_frame().to_csv(out / "froc.csv", index=False, na_rep="NaN")
        summary = self.summary_frame()
        summary.to_csv(out / "froc_summary.csv", index=False, na_rep="NaN")
        lo, hi = min(self.fp_rates) / 2, max(self.fp_rates) * 2
        xs, ys, labels = {}, {}, {}
        for c, cpm in zip(self.curves, summary["CPM"]):
            if not c.n_lesions:
                continue
            # The step curve (or the polyline the linear rule reads), extended flat to the right edge.
            fpi, sens = c.polyline() if self.interpolation == "linear" else (c.fp_per_image, c.sensitivity)
            fpi = np.append(fpi, max(hi, float(fpi[-1])))
            xs[c.name] = np.maximum(fpi, lo)
            ys[c.name] = np.append(sens, sens[-1])
            labels[c.name] = f"{'all lesions' if c.name == ALL else c.name} (CPM {cpm:.3f})"
        return plot_lines(
            out / "froc.png",
            xs,
            ys,
            xlabel="Mean false positives per image",
            ylabel="Sensitivity",
            title=f"FROC (hit: {self.describe_rule()}; {self.interpolation} interpolation)",
            labels=labels,
            highlight=ALL,
            logx=True,
            steps=self.interpolation == "step",
            xlim=(lo, hi),
            vlines=self.fp_rates,
            xticks=self.fp_rates,
        )


def froc(
    data: EvalData,
    rule: str = "center",
    iou_thresh: float = 0.5,
    fp_rates: Sequence[float] = DEFAULT_FP_RATES,
    interpolation: str = "step",
) -> FROC:
    """FROC curves of `data` per class and for all lesions (see the module docstring);
    `interpolation` (``EVAL.FROC_INTERPOLATION``) is how sensitivity at each FP rate is read."""
    check_interpolation(interpolation)
    rates = tuple(float(r) for r in fp_rates)
    if not rates or any(not np.isfinite(r) or r <= 0 for r in rates):
        raise ConfigError(f"EVAL.FROC_FP_RATES is {list(fp_rates)}; expected positive numbers")
    if not 0.0 < float(iou_thresh) <= 1.0:
        raise ConfigError(f"EVAL.FROC_IOU is {iou_thresh!r}; expected a number in (0, 1]")
    I = data.num_images
    real = ~data.gt_crowd
    curves = []
    hits, ign, lesion = froc_hits(data, rule, iou_thresh, class_agnostic=False)
    for k, name in enumerate(data.class_names):
        dk = data.det_class == k
        fpm = dk & ~hits & ~ign
        gk = real & (data.gt_class == k)
        lowest = float(data.det_score[dk & ~ign].min()) if (dk & ~ign).any() else np.inf
        curves.append(_curve(name, I, data.det_score[fpm], data.det_image[fpm], lesion[gk], data.gt_image[gk], lowest))
    hits, ign, lesion = froc_hits(data, rule, iou_thresh, class_agnostic=True)
    fpm = ~hits & ~ign
    lowest = float(data.det_score[~ign].min()) if (~ign).any() else np.inf
    curves.append(_curve(ALL, I, data.det_score[fpm], data.det_image[fpm], lesion[real], data.gt_image[real], lowest))
    return FROC(rule, float(iou_thresh), rates, curves, interpolation)
