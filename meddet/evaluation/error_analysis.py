"""Error analysis: what kind of mistake each false positive is, and galleries of the worst ones.

At the evaluation's score threshold and IoU threshold t (class-aware matching), each false
positive gets one type, checked in this order (TIDE's taxonomy, simplified):

- ``confusion``: it overlaps a ground truth of **another** class with IoU ≥ t (right place,
  wrong class);
- ``duplicate``: it overlaps a ground truth of its class with IoU ≥ t, which a higher-scoring
  detection already matched;
- ``localisation``: its best same-class ground truth has 0.1 ≤ IoU < t (right class, box off);
- ``both``: only another class's ground truth overlaps it, with 0.1 ≤ IoU < t;
- ``background``: no ground truth overlaps it with IoU ≥ 0.1.

Each missed ground truth (false negative) is ``missed``. Crowd regions take no part. Counts are
per class (false positives under their predicted class, misses under their true class) and
shares are of all errors (false positives + false negatives), so a box of the wrong class counts
twice — a ``confusion`` false positive and a ``missed`` ground truth — as in P/R/F1.

Galleries (`write_galleries`): per class, a grid of crops around the highest-scoring false
positives and one around the missed ground truths (largest first), drawn on the images: ground
truths in green, detections in their class colour with their score. Images are found through
the COCO ``file_name`` (under `image_root`) and read with `meddet.io.read_image`; when they
cannot be read (e.g. scoring another tool's predictions without the images), the galleries are
skipped with a logged warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from meddet.errors import MeddetError
from meddet.evaluation.matching import Matches
from meddet.evaluation.plots import safe_name

logger = logging.getLogger(__name__)

__all__ = ["ERROR_TYPES", "ErrorAnalysis", "classify_errors", "write_galleries"]

FP_TYPES = ("confusion", "duplicate", "localisation", "both", "background")
ERROR_TYPES = (*FP_TYPES, "missed")
BACKGROUND_IOU = 0.1

_TILE = 192
_CAPTION = 30
_HEADER = 30
_COLS = 4
_GT_BGR = (60, 200, 60)


@dataclass(frozen=True, eq=False)
class ErrorAnalysis:
    """Typed errors at one operating point: false positives (detection indices, type, the
    ground truth that explains the type or -1, its IoU) and missed ground truths (indices)."""

    matches: Matches
    score_thresh: float | np.ndarray
    fp_det: np.ndarray
    fp_type: np.ndarray
    fp_gt: np.ndarray
    fp_iou: np.ndarray
    fn_gt: np.ndarray

    def counts(self) -> np.ndarray:
        """``[K x len(ERROR_TYPES)]`` error counts per class."""
        data = self.matches.data
        K = data.num_classes
        out = np.zeros((K, len(ERROR_TYPES)), dtype=np.int64)
        for j, name in enumerate(FP_TYPES):
            out[:, j] = np.bincount(data.det_class[self.fp_det[self.fp_type == name]], minlength=K)
        out[:, -1] = np.bincount(data.gt_class[self.fn_gt], minlength=K)
        return out

    def to_frame(self) -> pd.DataFrame:
        """``errors.csv``: per class and ``all``, the count of each error type, the total, and
        each type's share of the row's errors (NaN without errors)."""
        c = self.counts()
        rows = np.vstack([c, c.sum(axis=0, keepdims=True)])
        total = rows.sum(axis=1)
        df = pd.DataFrame(rows, columns=list(ERROR_TYPES))
        df.insert(0, "Class", [*self.matches.data.class_names, "all"])
        df["total"] = total
        for j, name in enumerate(ERROR_TYPES):
            share = np.full(len(total), np.nan)
            np.divide(rows[:, j], total, out=share, where=total > 0)
            df[f"share_{name}"] = share
        return df

    def detail_frame(self) -> pd.DataFrame:
        """``errors_detail.csv``: one row per error: kind (FP/FN), type, class, image id, file,
        score (FP), box ``x, y, w, h``, and the related ground truth's class and IoU (FP)."""
        data = self.matches.data
        names = np.asarray(data.class_names, dtype=object)
        ids = np.asarray(data.image_ids, dtype=object)
        files = np.asarray(data.file_names if data.file_names else [None] * data.num_images, dtype=object)
        d, g = self.fp_det, self.fn_gt
        fp = pd.DataFrame(
            {
                "kind": "FP",
                "type": self.fp_type,
                "class": names[data.det_class[d]],
                "image_id": ids[data.det_image[d]],
                "file_name": files[data.det_image[d]],
                "score": data.det_score[d],
                "x": data.det_xywh[d, 0],
                "y": data.det_xywh[d, 1],
                "w": data.det_xywh[d, 2],
                "h": data.det_xywh[d, 3],
                "related_gt_class": [names[data.gt_class[j]] if j >= 0 else None for j in self.fp_gt],
                "iou": self.fp_iou,
            }
        )
        fn = pd.DataFrame(
            {
                "kind": "FN",
                "type": "missed",
                "class": names[data.gt_class[g]],
                "image_id": ids[data.gt_image[g]],
                "file_name": files[data.gt_image[g]],
                "score": np.nan,
                "x": data.gt_xywh[g, 0],
                "y": data.gt_xywh[g, 1],
                "w": data.gt_xywh[g, 2],
                "h": data.gt_xywh[g, 3],
                "related_gt_class": None,
                "iou": np.nan,
            }
        )
        return pd.concat([fp.sort_values("score", ascending=False, kind="stable"), fn], ignore_index=True)

    def to_metrics(self) -> dict[str, float]:
        """``errors/<type>`` counts and ``errors/<type>_share`` over all classes."""
        row = self.to_frame().iloc[-1]
        out: dict[str, float] = {}
        for name in ERROR_TYPES:
            out[f"errors/{name}"] = float(row[name])
            out[f"errors/{name}_share"] = float(row[f"share_{name}"])
        return out


def classify_errors(matches: Matches, score_thresh: float | np.ndarray) -> ErrorAnalysis:
    """Type every false positive and list every missed ground truth of class-aware `matches`
    at `score_thresh` (see the module docstring)."""
    if matches.class_agnostic:
        raise ValueError("classify_errors needs class-aware matches; got match_detections(..., class_agnostic=True)")
    data = matches.data
    t = matches.iou_thresh
    fp = np.flatnonzero(matches.det_fp(score_thresh))
    n_det = data.det_score.size
    ov = data.overlaps
    is_fp = np.zeros(n_det, dtype=bool)
    is_fp[fp] = True
    sel = is_fp[ov.det] & ~data.gt_crowd[ov.gt]
    p_det, p_gt, p_iou = ov.det[sel], ov.gt[sel], ov.iou[sel]
    same = data.det_class[p_det] == data.gt_class[p_gt]

    def best(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per detection, the highest IoU among the pairs in `mask` and its ground truth."""
        iou, gt = np.zeros(n_det), np.full(n_det, -1, dtype=np.int64)
        d, g, v = p_det[mask], p_gt[mask], p_iou[mask]
        order = np.lexsort((-v, d))
        first = np.ones(order.size, dtype=bool)
        first[1:] = d[order][1:] != d[order][:-1]
        top = order[first]
        iou[d[top]], gt[d[top]] = v[top], g[top]
        return iou, gt

    same_iou, same_gt = best(same)
    other_iou, other_gt = best(~same)
    s_iou, s_gt, o_iou, o_gt = same_iou[fp], same_gt[fp], other_iou[fp], other_gt[fp]
    conditions = [o_iou >= t, s_iou >= t, s_iou >= BACKGROUND_IOU, o_iou >= BACKGROUND_IOU]
    types = np.select(conditions, FP_TYPES[:4], default="background").astype(object)
    rel_gt = np.select(conditions, [o_gt, s_gt, s_gt, o_gt], default=-1)
    rel_iou = np.select(conditions, [o_iou, s_iou, s_iou, o_iou], default=np.maximum(s_iou, o_iou))
    fn = np.flatnonzero(matches.gt_missed(score_thresh))
    return ErrorAnalysis(matches, score_thresh, fp, types, rel_gt, rel_iou, fn)


# ------------------------------------------------------------------------------------- galleries
def _crop_window(box: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """A square window twice the box's longer side (at least 64 px), centred on it, kept
    inside the image where it fits."""
    h, w = shape[:2]
    x, y, bw, bh = box
    side = int(min(max(2 * max(bw, bh), 64), max(h, w)))
    cx, cy = x + bw / 2, y + bh / 2
    x0 = int(np.clip(round(cx - side / 2), 0, max(w - side, 0)))
    y0 = int(np.clip(round(cy - side / 2), 0, max(h - side, 0)))
    return x0, y0, min(x0 + side, w), min(y0 + side, h)


def _tile(
    image: np.ndarray,
    focus: np.ndarray,
    gts: np.ndarray,
    dets: np.ndarray,
    det_scores: np.ndarray,
    det_classes: np.ndarray,
    class_names: list[str],
    caption: list[str],
) -> np.ndarray:
    """One gallery tile: the crop around `focus` (x, y, w, h), ground truths in green,
    detections in class colours, two caption lines below."""
    from meddet.visualize import draw_detections, to_display_bgr

    x0, y0, x1, y1 = _crop_window(focus, image.shape)
    crop = to_display_bgr(image[y0:y1, x0:x1])
    scale = _TILE / max(crop.shape[0], crop.shape[1], 1)
    crop = cv2.resize(
        crop,
        (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
    )

    def to_crop(b: np.ndarray) -> np.ndarray:
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
        return np.column_stack(
            [
                (b[:, 0] - x0) * scale,
                (b[:, 1] - y0) * scale,
                (b[:, 0] + b[:, 2] - x0) * scale,
                (b[:, 1] + b[:, 3] - y0) * scale,
            ]
        )

    for bx in to_crop(gts):
        cv2.rectangle(
            crop,
            (int(round(bx[0])), int(round(bx[1]))),
            (int(round(bx[2])), int(round(bx[3]))),
            _GT_BGR,
            2,
            cv2.LINE_AA,
        )
    if len(dets):
        crop = draw_detections(crop, to_crop(dets), det_scores, det_classes, class_names)
    tile = np.full((_TILE + _CAPTION, _TILE, 3), 255, dtype=np.uint8)
    tile[: crop.shape[0], : crop.shape[1]] = crop
    for i, line in enumerate(caption[:2]):
        cv2.putText(
            tile, line[:34], (3, _TILE + 12 + 13 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1, cv2.LINE_AA
        )
    return tile


def _grid(tiles: list[np.ndarray], title: str) -> np.ndarray:
    cols = min(_COLS, len(tiles))
    rows = -(-len(tiles) // cols)
    th, tw = _TILE + _CAPTION, _TILE
    pad = 4
    out = np.full((_HEADER + rows * (th + pad), cols * (tw + pad) + pad, 3), 255, dtype=np.uint8)
    cv2.putText(out, title, (pad, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = _HEADER + r * (th + pad), pad + c * (tw + pad)
        out[y : y + th, x : x + tw] = t
    return out


def _image_path(file_name: str | None, image_root: str | os.PathLike | None) -> Path | None:
    if not file_name:
        return None
    p = Path(file_name)
    return p if p.is_absolute() or not image_root else Path(image_root) / p


def write_galleries(
    analysis: ErrorAnalysis,
    out_dir: str | os.PathLike,
    image_root: str | os.PathLike | None,
    size: int = 16,
    dicom_kwargs: dict[str, Any] | None = None,
) -> list[Path]:
    """Per class, ``errors_fp_<class>.png`` (the `size` highest-scoring false positives) and
    ``errors_fn_<class>.png`` (the `size` largest missed ground truths), each with a CSV of the
    errors shown (for a miss, ``score`` is that of the detection overlapping it most, NaN if none).
    Returns the PNGs written; none when no image can be read (a warning says why).
    Galleries an earlier evaluation left in `out_dir` are removed first, so the folder never
    mixes two evaluations.
    """
    from meddet.io import read_image

    out = Path(out_dir)
    for old in [
        *out.glob("errors_fp_*.png"),
        *out.glob("errors_fp_*.csv"),
        *out.glob("errors_fn_*.png"),
        *out.glob("errors_fn_*.csv"),
    ]:
        old.unlink()
    if size <= 0:
        return []
    data = analysis.matches.data
    names = list(data.class_names)
    kept = analysis.matches.kept(analysis.score_thresh)
    real = ~data.gt_crowd
    # Gallery entries: (gallery key, rank, image index, focus box, caption, highlighted detection or -1).
    plans: dict[tuple[str, int], list[dict]] = {}
    area = data.gt_xywh[:, 2] * data.gt_xywh[:, 3]
    ov = data.overlaps
    best_det = np.full(data.gt_class.size, -1, dtype=np.int64)
    if ov.det.size:
        order = np.lexsort((-ov.iou, ov.gt))
        first = np.ones(order.size, dtype=bool)
        first[1:] = ov.gt[order][1:] != ov.gt[order][:-1]
        best_det[ov.gt[order[first]]] = ov.det[order[first]]
    for k in range(data.num_classes):
        sel = data.det_class[analysis.fp_det] == k
        fp_idx = np.flatnonzero(sel)
        fp_idx = fp_idx[np.argsort(-data.det_score[analysis.fp_det[fp_idx]], kind="stable")][:size]
        plans[("fp", k)] = [
            {
                "image": int(data.det_image[analysis.fp_det[j]]),
                "focus": data.det_xywh[analysis.fp_det[j]],
                "det": int(analysis.fp_det[j]),
                "type": str(analysis.fp_type[j]),
                "gt": int(analysis.fp_gt[j]),
                "score": float(data.det_score[analysis.fp_det[j]]),
                "iou": float(analysis.fp_iou[j]),
            }
            for j in fp_idx
        ]
        fn = analysis.fn_gt[data.gt_class[analysis.fn_gt] == k]
        fn = fn[np.argsort(-area[fn], kind="stable")][:size]
        plans[("fn", k)] = [
            {
                "image": int(data.gt_image[g]),
                "focus": data.gt_xywh[g],
                "det": int(best_det[g]),
                "type": "missed",
                "score": float(data.det_score[best_det[g]]) if best_det[g] >= 0 else float("nan"),
                "iou": float("nan"),
            }
            for g in fn
        ]
    needed = sorted({e["image"] for entries in plans.values() for e in entries})
    if not needed:
        return []
    files = data.file_names if data.file_names else [None] * data.num_images
    tiles: dict[tuple[str, int], list] = {key: [None] * len(v) for key, v in plans.items()}
    by_image: dict[int, list[tuple[tuple[str, int], int]]] = {}
    for key, entries in plans.items():
        for r, e in enumerate(entries):
            by_image.setdefault(e["image"], []).append((key, r))
    failures: list[str] = []
    for i in needed:
        path = _image_path(files[i], image_root)
        try:
            if path is None:
                raise MeddetError(f"image {data.image_ids[i]!r} has no file_name")
            image = read_image(path, **(dicom_kwargs or {}))
        except (MeddetError, OSError) as e:
            failures.append(str(e))
            continue
        on_image_gt = real & (data.gt_image == i)
        gts = data.gt_xywh[on_image_gt]
        for key, r in by_image[i]:
            entry = plans[key][r]
            if key[0] == "fp":
                dets = [entry["det"]]
                kind = entry["type"]
                if kind in ("confusion", "both"):
                    kind += f" with {names[data.gt_class[entry['gt']]]}"
                caption = [
                    f"image {data.image_ids[i]}  score {entry['score']:.2f}",
                    kind + (f"  IoU {entry['iou']:.2f}" if entry["type"] != "background" else ""),
                ]
            else:
                dets = [entry["det"]] if entry["det"] >= 0 else []
                caption = [
                    f"image {data.image_ids[i]}  missed {names[key[1]]}",
                    "no overlapping detection"
                    if not dets
                    else f"nearest: {names[data.det_class[entry['det']]]} {entry['score']:.2f}"
                    + ("" if kept[entry["det"]] else " (below thr)"),
                ]
            d = np.asarray(dets, dtype=np.int64)
            tiles[key][r] = _tile(
                image, entry["focus"], gts, data.det_xywh[d], data.det_score[d], data.det_class[d], names, caption
            )
    if len(failures) == len(needed):
        logger.warning(
            "error galleries skipped: no image could be read (%d tried; first: %s); pass image_root "
            "(DATASETS.IMAGE_ROOT) or keep the images beside the COCO file",
            len(needed),
            failures[0],
        )
        return []
    if failures:
        logger.warning(
            "error galleries: %d of %d images unreadable, their crops left out (first: %s)",
            len(failures),
            len(needed),
            failures[0],
        )
    written = []
    for (kind, k), entries in plans.items():
        shown = [(e, t) for e, t in zip(entries, tiles[(kind, k)]) if t is not None]
        if not shown:
            continue
        what = "false positives (highest scores)" if kind == "fp" else "missed ground truths (largest)"
        stem = f"errors_{kind}_{safe_name(names[k])}"
        path = out / f"{stem}.png"
        cv2.imwrite(str(path), _grid([t for _, t in shown], f"{names[k]}: {len(shown)} {what}"))
        pd.DataFrame(
            [
                {
                    "image_id": data.image_ids[e["image"]],
                    "file_name": files[e["image"]],
                    "type": e["type"],
                    "score": e["score"],
                    "x": e["focus"][0],
                    "y": e["focus"][1],
                    "w": e["focus"][2],
                    "h": e["focus"][3],
                }
                for e, _ in shown
            ]
        ).to_csv(out / f"{stem}.csv", index=False, na_rep="NaN")
        written.append(path)
    return written
