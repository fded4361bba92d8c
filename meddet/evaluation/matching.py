"""Ground truth and predictions as arrays, and the one detection-to-ground-truth matching.

`EvalData` turns a COCO ground-truth dict and a list of COCO-results dicts into flat NumPy
columns (one row per annotation / detection), validating them on the way. `match_detections`
matches them once, greedily by descending score — the standard rule (COCO, VOC): each detection,
highest score first, takes the still-unmatched ground truth of the same class (or of any class
when `class_agnostic`) with the highest IoU, provided IoU ≥ the threshold; ties in IoU go to the
first-listed ground truth, ties in score to the first-listed detection. A detection left
unmatched that covers a crowd region (``iscrowd: 1``, IoU measured as intersection over the
detection's area, as COCO does) is *ignored*: neither TP nor FP. Crowd regions are never FN.

Because the rule is greedy by score, the matches of the detections scoring ≥ s are exactly the
matches one gets by matching only those detections. So one `Matches` (computed over all scores)
answers every score threshold: P/R/F1, PR and F1 curves, FROC, confusion matrices, bootstrap
resamples over images — all read off the same arrays with `Matches.kept` / `Matches.gt_matched`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from meddet.data.coco import clip_coco_boxes, load_coco
from meddet.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["EvalData", "Overlaps", "Matches", "match_detections", "load_predictions"]

# Image pairs (detection x ground truth) handled per vectorised block when computing overlaps.
_PAIR_BLOCK = 1 << 21


def load_predictions(path: str | os.PathLike) -> list[dict]:
    """Read a COCO-results JSON file (a list of ``{"image_id", "category_id", "bbox", "score"}``)."""
    from meddet.data.coco import read_json

    path = Path(path)
    data = read_json(path, "a predictions file (COCO results)")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a COCO results list of detections, found {type(data).__name__}")
    return data


def _column(items: Sequence[dict], key: str, source: str, what: str) -> list:
    """`[item[key] for item in items]`, or a DataError naming the first item lacking the key."""
    try:
        return [it[key] for it in items]
    except (KeyError, TypeError):
        for i, it in enumerate(items):
            if not isinstance(it, dict) or key not in it:
                raise DataError(f"{source}: {what}[{i}] has no {key!r} field (found {it!r})") from None
        raise


def _index_column(values: list, lookup: dict, source: str, what: str, field_name: str, expected: str) -> np.ndarray:
    """Map ids to 0-based indices; unknown ids raise a DataError naming the item."""
    try:
        return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))
    except (KeyError, TypeError):
        for i, v in enumerate(values):
            if not isinstance(v, Hashable) or v not in lookup:
                raise DataError(f"{source}: {what}[{i}].{field_name} is {v!r}; expected {expected}") from None
        raise


def _is_number(v: object) -> bool:
    """A JSON number (int or float, NumPy scalars included), not a bool or a numeric string."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _describe(v: object) -> str:
    if isinstance(v, str):
        return f"{v!r} (a string)"
    if isinstance(v, (bool, np.bool_)):
        return f"{v!r} (a boolean)"
    return repr(v)


def _float_array(
    values: list, shape_tail: tuple[int, ...], source: str, what: str, field_name: str, expected: str
) -> np.ndarray:
    """Values as a float64 array of shape (N, *shape_tail), finite numbers only (a numeric string
    such as ``"0.9"`` or a boolean is not a number); else a DataError naming the item."""
    if not len(values):
        return np.zeros((0,) + shape_tail)
    arr: np.ndarray | None = None
    try:
        raw = np.asarray(values)
        ok_type = raw.dtype.kind in "iuf" and raw.shape == (len(values),) + shape_tail
        if ok_type and not shape_tail:  # NumPy turns [0.9, True] into floats silently
            ok_type = not any(isinstance(v, (bool, np.bool_)) for v in values)
        if ok_type:
            arr = raw.astype(np.float64).reshape((len(values),) + shape_tail)
    except (ValueError, TypeError):
        arr = None
    if arr is not None and np.isfinite(arr).all():
        return arr
    for i, v in enumerate(values):
        items = v if isinstance(v, (list, tuple)) and shape_tail else [v]
        good = (
            len(items) == (shape_tail[0] if shape_tail else 1)
            and all(_is_number(x) for x in items)
            and bool(np.isfinite(np.asarray(items, dtype=np.float64)).all())
        )
        if not good:
            shown = (
                f"{v!r} (holding a string)"
                if isinstance(v, (list, tuple)) and any(isinstance(x, str) for x in v)
                else _describe(v)
            )
            raise DataError(f"{source}: {what}[{i}].{field_name} is {shown}; expected {expected}")
    raise DataError(f"{source}: {what}[*].{field_name} cannot be read as numbers; expected {expected}")


@dataclass(frozen=True)
class Overlaps:
    """Every (detection, ground truth) pair of the same image whose boxes intersect.

    `iou` is the usual intersection over union; `iof` is intersection over the detection's
    area (COCO's overlap measure for crowd regions).
    """

    det: np.ndarray
    gt: np.ndarray
    iou: np.ndarray
    iof: np.ndarray


@dataclass(frozen=True, eq=False)
class EvalData:
    """Ground truth and predictions of one evaluation as flat arrays.

    Images, classes, ground truths and detections are addressed by 0-based indices: image `i`
    is ``image_ids[i]`` of the ground truth, class `k` is the k-th category by ascending id
    (``category_ids[k]``, ``class_names[k]``, the model's class index). Boxes are COCO
    ``[x, y, w, h]`` in image pixels. `file_names` holds each image's COCO ``file_name`` (None
    where absent), for drawing errors on the images; `images` the ground truth's image records
    themselves (read, never modified: ``patient_id``, ``laterality``, … for grouping images) and
    `gt_source` the ground truth's file path (or "ground truth" when given as a dict).
    """

    image_ids: list[Any]
    category_ids: list[Any]
    class_names: list[str]
    gt_image: np.ndarray
    gt_class: np.ndarray
    gt_xywh: np.ndarray
    gt_area: np.ndarray
    gt_crowd: np.ndarray
    det_image: np.ndarray
    det_class: np.ndarray
    det_xywh: np.ndarray
    det_score: np.ndarray
    file_names: list[str | None] = field(default_factory=list)
    images: list[dict] = field(default_factory=list, repr=False)
    gt_source: str = "ground truth"

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @cached_property
    def coco_image_order(self) -> np.ndarray:
        """Image indices in the order pycocotools evaluates them: by ascending image id (its
        ``np.unique`` of the ids), whatever the order of ``images`` in the file. COCO's
        accumulation breaks ties in score by this order, so AP depends on it. Ids that cannot be
        compared with each other (mixed types) keep the file order."""
        try:
            order = sorted(range(self.num_images), key=self.image_ids.__getitem__)
        except TypeError:
            order = list(range(self.num_images))
        return np.asarray(order, dtype=np.int64)

    @cached_property
    def coco_image_rank(self) -> np.ndarray:
        """Position of each image in `coco_image_order` (0 = first evaluated)."""
        rank = np.empty(self.num_images, dtype=np.int64)
        rank[self.coco_image_order] = np.arange(self.num_images)
        return rank

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @classmethod
    def from_coco(
        cls,
        gt: dict | str | os.PathLike,
        predictions: Sequence[dict] | str | os.PathLike,
        *,
        gt_source: str | os.PathLike | None = None,
        predictions_source: str | os.PathLike | None = None,
        strict_boxes: bool = False,
    ) -> EvalData:
        """Validate and convert a COCO ground truth (dict or file) and COCO-results predictions
        (list or file). Prediction category ids are in the ground truth's id space. Errors name the
        files: their paths, or `gt_source` / `predictions_source` (the files the dicts were read
        from) when given dicts. Numbers must be JSON numbers: ``"0.9"`` is an error, not 0.9.

        Ground-truth boxes reaching outside their image are clipped to it and those with nothing
        inside dropped, as for training (meddet.data.coco.clip_coco_boxes; `strict_boxes`: an error)."""
        if not isinstance(gt, dict):
            gt_source = gt_source or str(gt)
            gt = load_coco(gt)
        gt_source = str(gt_source) if gt_source else "ground truth"
        if isinstance(gt.get("images"), list) and isinstance(gt.get("annotations"), list):
            gt, _ = clip_coco_boxes(gt, gt_source, strict=strict_boxes)
        if isinstance(predictions, (str, os.PathLike)):
            predictions_source = predictions_source or str(predictions)
            predictions = load_predictions(predictions)
        pred_source = str(predictions_source) if predictions_source else "predictions"
        for key in ("images", "annotations", "categories"):
            if not isinstance(gt.get(key), list):
                raise DataError(f"{gt_source}: missing or non-list field {key!r} (expected a COCO detection dict)")

        cats = gt["categories"]
        if not cats:
            raise DataError(f"{gt_source}: 'categories' is empty; expected at least one category")
        cat_ids = _column(cats, "id", gt_source, "categories")
        names = _column(cats, "name", gt_source, "categories")
        if len(set(cat_ids)) != len(cat_ids):
            raise DataError(f"{gt_source}: categories have duplicate ids {sorted(cat_ids)}; expected unique ids")
        order = sorted(range(len(cats)), key=lambda i: cat_ids[i])
        category_ids = [cat_ids[i] for i in order]
        class_names = [str(names[i]) for i in order]
        if len(set(class_names)) != len(class_names):
            raise DataError(f"{gt_source}: categories have duplicate names {class_names}; expected unique names")
        cat_index = {c: k for k, c in enumerate(category_ids)}

        image_ids = _column(gt["images"], "id", gt_source, "images")
        img_index = {iid: i for i, iid in enumerate(image_ids)}
        if len(img_index) != len(image_ids):
            raise DataError(f"{gt_source}: images have duplicate ids; expected one entry per image id")

        anns = gt["annotations"]
        src = gt_source
        gt_image = _index_column(
            _column(anns, "image_id", src, "annotations"),
            img_index,
            src,
            "annotations",
            "image_id",
            "an id listed in 'images'",
        )
        gt_class = _index_column(
            _column(anns, "category_id", src, "annotations"),
            cat_index,
            src,
            "annotations",
            "category_id",
            f"one of {category_ids}",
        )
        gt_xywh = _float_array(
            _column(anns, "bbox", src, "annotations"),
            (4,),
            src,
            "annotations",
            "bbox",
            "[x, y, w, h] of 4 finite numbers",
        )
        if (gt_xywh[:, 2:] < 0).any():
            i = int(np.flatnonzero((gt_xywh[:, 2:] < 0).any(axis=1))[0])
            raise DataError(f"{src}: annotations[{i}].bbox is {anns[i]['bbox']!r}; expected width and height >= 0")
        for i, a in enumerate(anns):
            if a.get("area") is not None and not _is_number(a["area"]):
                raise DataError(
                    f"{src}: annotations[{i}].area is {_describe(a['area'])}; expected a number "
                    "(or no 'area': the box's w*h)"
                )
            crowd = a.get("iscrowd")
            if crowd is not None and (isinstance(crowd, str) or crowd not in (0, 1)):
                raise DataError(f"{src}: annotations[{i}].iscrowd is {_describe(crowd)}; expected 0 or 1")
        gt_area = np.array(
            [a["area"] if a.get("area") is not None else np.nan for a in anns], dtype=np.float64
        ).reshape(-1)
        gt_area = np.where(np.isfinite(gt_area), gt_area, gt_xywh[:, 2] * gt_xywh[:, 3])
        gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool).reshape(-1)
        empty = ~gt_crowd & ((gt_xywh[:, 2] <= 0) | (gt_xywh[:, 3] <= 0))
        if empty.any():
            logger.warning(
                "%s: %d annotation(s) have zero-area boxes (first: annotations[%d]); "
                "no detection can match them, they count as missed",
                src,
                int(empty.sum()),
                int(np.flatnonzero(empty)[0]),
            )

        if not isinstance(predictions, (list, tuple)):
            raise DataError(f"{pred_source}: expected a list of COCO-results dicts, found {type(predictions).__name__}")
        src = pred_source
        det_image = _index_column(
            _column(predictions, "image_id", src, "predictions"),
            img_index,
            src,
            "predictions",
            "image_id",
            f"an image id of the {gt_source}",
        )
        det_class = _index_column(
            _column(predictions, "category_id", src, "predictions"),
            cat_index,
            src,
            "predictions",
            "category_id",
            f"a category id of the {gt_source}: {category_ids}",
        )
        det_xywh = _float_array(
            _column(predictions, "bbox", src, "predictions"),
            (4,),
            src,
            "predictions",
            "bbox",
            "[x, y, w, h] of 4 finite numbers",
        )
        if (det_xywh[:, 2:] < 0).any():
            i = int(np.flatnonzero((det_xywh[:, 2:] < 0).any(axis=1))[0])
            raise DataError(
                f"{src}: predictions[{i}].bbox is {predictions[i]['bbox']!r}; expected width and height >= 0"
            )
        det_score = _float_array(
            _column(predictions, "score", src, "predictions"), (), src, "predictions", "score", "a finite number"
        )
        if not len(predictions):
            logger.warning(
                "%s: no detections; every AP, recall and sensitivity is 0 (every file is still written)", src
            )
        file_names = [im.get("file_name") if isinstance(im, dict) else None for im in gt["images"]]
        image_records = [im if isinstance(im, dict) else {} for im in gt["images"]]
        return cls(
            image_ids,
            category_ids,
            class_names,
            gt_image,
            gt_class,
            gt_xywh,
            gt_area,
            gt_crowd,
            det_image,
            det_class,
            det_xywh,
            det_score,
            file_names,
            image_records,
            gt_source,
        )

    def with_detections(self, keep: np.ndarray) -> EvalData:
        """The same ground truth with only the detections selected by `keep` (mask or indices)."""
        return replace(
            self,
            det_image=self.det_image[keep],
            det_class=self.det_class[keep],
            det_xywh=self.det_xywh[keep],
            det_score=self.det_score[keep],
        )

    def instances_per_class(self) -> np.ndarray:
        """Ground-truth boxes per class (crowd regions excluded)."""
        return np.bincount(self.gt_class[~self.gt_crowd], minlength=self.num_classes)

    def images_per_class(self) -> np.ndarray:
        """Images holding at least one (non-crowd) ground truth of each class."""
        real = ~self.gt_crowd
        pairs = np.unique(self.gt_image[real] * self.num_classes + self.gt_class[real])
        return np.bincount(pairs % self.num_classes, minlength=self.num_classes)

    def to_metrics(self) -> dict[str, float]:
        """What was evaluated, as ``gt/images``, ``gt/instances`` and their ``-<class>`` entries."""
        out = {"gt/images": float(self.num_images), "gt/instances": float(self.instances_per_class().sum())}
        for name, n in zip(self.class_names, self.images_per_class()):
            out[f"gt/images-{name}"] = float(n)
        for name, n in zip(self.class_names, self.instances_per_class()):
            out[f"gt/instances-{name}"] = float(n)
        return out

    @cached_property
    def overlaps(self) -> Overlaps:
        """All intersecting (detection, ground truth) pairs; computed once, vectorised over
        blocks of images (no Python loop over boxes), then cached."""
        return _pairwise_overlaps(self.det_image, self.det_xywh, self.gt_image, self.gt_xywh, self.num_images)


def _pairwise_overlaps(
    det_image: np.ndarray, det_xywh: np.ndarray, gt_image: np.ndarray, gt_xywh: np.ndarray, n_images: int
) -> Overlaps:
    nd = np.bincount(det_image, minlength=n_images)
    ng = np.bincount(gt_image, minlength=n_images)
    d_order = np.argsort(det_image, kind="stable")
    g_order = np.argsort(gt_image, kind="stable")
    d_start = np.cumsum(nd) - nd
    g_start = np.cumsum(ng) - ng
    n_pairs = nd * ng
    images = np.flatnonzero(n_pairs)
    if images.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return Overlaps(e, e.copy(), np.zeros(0), np.zeros(0))
    block = (np.cumsum(n_pairs[images]) - 1) // _PAIR_BLOCK
    cuts = np.flatnonzero(np.diff(block)) + 1
    d_area = det_xywh[:, 2] * det_xywh[:, 3]
    g_area = gt_xywh[:, 2] * gt_xywh[:, 3]
    out_d, out_g, out_inter = [], [], []
    for imgs in np.split(images, cuts):
        n = n_pairs[imgs]
        rep = np.repeat(imgs, n)
        q = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        nb = ng[rep]
        d = d_order[d_start[rep] + q // nb]
        g = g_order[g_start[rep] + q % nb]
        a, b = det_xywh[d], gt_xywh[g]
        iw = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
        ih = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        pos = inter > 0
        out_d.append(d[pos])
        out_g.append(g[pos])
        out_inter.append(inter[pos])
    d, g, inter = np.concatenate(out_d), np.concatenate(out_g), np.concatenate(out_inter)
    iou = inter / (d_area[d] + g_area[g] - inter)
    iof = inter / d_area[d]
    return Overlaps(d, g, iou, iof)


@dataclass(frozen=True, eq=False)
class Matches:
    """The result of `match_detections`: for each detection the ground truth it matched (index,
    or -1) and whether it is ignored (covers a crowd region); for each ground truth the detection
    that matched it (or -1). Valid at every score threshold (see the module docstring)."""

    data: EvalData
    iou_thresh: float
    class_agnostic: bool
    det_gt: np.ndarray
    det_iou: np.ndarray
    det_ignored: np.ndarray
    gt_det: np.ndarray

    def det_thresh(self, score_thresh: float | np.ndarray) -> float | np.ndarray:
        """`score_thresh` as seen by each detection: a float applies to all; an array of one
        threshold per class gives each detection its (predicted) class's threshold."""
        if np.ndim(score_thresh) == 0:
            return float(score_thresh)
        return np.asarray(score_thresh, dtype=np.float64)[self.data.det_class]

    def kept(self, score_thresh: float | np.ndarray) -> np.ndarray:
        """Mask of detections that count at `score_thresh` (score ≥ threshold, not ignored);
        `score_thresh` is a float or one threshold per class (see `det_thresh`)."""
        return (self.data.det_score >= self.det_thresh(score_thresh)) & ~self.det_ignored

    def det_tp(self, score_thresh: float | np.ndarray) -> np.ndarray:
        """Mask of detections that are true positives at `score_thresh`."""
        return self.kept(score_thresh) & (self.det_gt >= 0)

    def det_fp(self, score_thresh: float | np.ndarray) -> np.ndarray:
        """Mask of detections that are false positives at `score_thresh`."""
        return self.kept(score_thresh) & (self.det_gt < 0)

    def gt_matched(self, score_thresh: float | np.ndarray) -> np.ndarray:
        """Mask of ground truths found at `score_thresh` (matched by a detection it keeps)."""
        hit = self.gt_det >= 0
        out = np.zeros(hit.shape, dtype=bool)
        out[hit] = self.kept(score_thresh)[self.gt_det[hit]]
        return out

    def gt_missed(self, score_thresh: float | np.ndarray) -> np.ndarray:
        """Mask of (non-crowd) ground truths missed at `score_thresh`: the false negatives."""
        return ~self.gt_matched(score_thresh) & ~self.data.gt_crowd


def _greedy(
    rank: np.ndarray, p_det: np.ndarray, p_gt: np.ndarray, p_iou: np.ndarray, n_det: int, n_gt: int
) -> np.ndarray:
    """Greedy matching by rank (0 = highest score) on sparse candidate pairs, vectorised.

    Each round, every detection proposes its best available ground truth; a proposal is final
    when no higher-ranked unresolved detection has that ground truth among its candidates (so
    the sequential algorithm would give it the same one). Finalised detections and taken ground
    truths drop out; the highest-ranked detection of each image always finalises, so it ends.
    Returns, per detection, the index of its matched pair in the input arrays, or -1.
    """
    det_pair = np.full(n_det, -1, dtype=np.int64)
    p_idx = np.arange(p_det.size)
    while p_det.size:
        order = np.lexsort((p_gt, -p_iou, p_det))
        sd = p_det[order]
        first = np.ones(sd.size, dtype=bool)
        first[1:] = sd[1:] != sd[:-1]
        prop = order[first]
        top = np.full(n_gt, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(top, p_gt, rank[p_det])
        win = prop[top[p_gt[prop]] == rank[p_det[prop]]]
        det_pair[p_det[win]] = p_idx[win]
        det_done = np.zeros(n_det, dtype=bool)
        det_done[p_det[win]] = True
        gt_taken = np.zeros(n_gt, dtype=bool)
        gt_taken[p_gt[win]] = True
        keep = ~det_done[p_det] & ~gt_taken[p_gt]
        p_det, p_gt, p_iou, p_idx = p_det[keep], p_gt[keep], p_iou[keep], p_idx[keep]
    return det_pair


def match_detections(data: EvalData, iou_thresh: float = 0.5, *, class_agnostic: bool = False) -> Matches:
    """Match detections to ground truths (greedy by descending score, IoU ≥ `iou_thresh`, same
    class unless `class_agnostic`); see the module docstring for the exact rule."""
    ov = data.overlaps
    n_det, n_gt = len(data.det_score), len(data.gt_class)
    same = np.ones(ov.det.size, dtype=bool) if class_agnostic else data.det_class[ov.det] == data.gt_class[ov.gt]
    crowd = data.gt_crowd[ov.gt]
    cand = same & ~crowd & (ov.iou >= iou_thresh)
    rank = np.empty(n_det, dtype=np.int64)
    rank[np.argsort(-data.det_score, kind="stable")] = np.arange(n_det)
    c_gt, c_iou = ov.gt[cand], ov.iou[cand]
    det_pair = _greedy(rank, ov.det[cand], c_gt, c_iou, n_det, n_gt)

    hit = np.flatnonzero(det_pair >= 0)
    det_gt = np.full(n_det, -1, dtype=np.int64)
    det_gt[hit] = c_gt[det_pair[hit]]
    det_iou = np.zeros(n_det)
    det_iou[hit] = c_iou[det_pair[hit]]
    gt_det = np.full(n_gt, -1, dtype=np.int64)
    gt_det[det_gt[hit]] = hit

    crowd_hit = same & crowd & (ov.iof >= iou_thresh)
    det_ignored = np.zeros(n_det, dtype=bool)
    det_ignored[ov.det[crowd_hit]] = True
    det_ignored &= det_gt < 0
    return Matches(data, float(iou_thresh), class_agnostic, det_gt, det_iou, det_ignored, gt_det)
