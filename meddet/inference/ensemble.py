"""Ensembles: several models' detections of one image fused into one set (ENSEMBLE.* config keys).

"wbf" uses the `ensemble_boxes` package (Solovyev et al., "Weighted boxes fusion", 2021): it averages the
coordinates of the boxes of one class that overlap by ENSEMBLE.IOU_THRESH or more (weighted by score and
model weight; a box found by only some models has its score scaled down accordingly). "nms" keeps the
highest-scored box of each such cluster (torchvision.ops.batched_nms over all models' boxes); with
ENSEMBLE.WEIGHTS each model's scores are first multiplied by its weight over the sum of the weights, as
`ensemble_boxes.nms` does (no weights: scores as they are).

Members may be specialists with different class sets (a cell detector and a cluster detector): each
member's classes are mapped to the ensemble's class list by name before fusion.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision.ops import batched_nms

from meddet.errors import ConfigError
from meddet.inference.base import DetectorLike, score_thresholds, threshold_names

if TYPE_CHECKING:
    from meddet.config import CfgNode

logger = logging.getLogger(__name__)

FUSION_METHODS = ("wbf", "nms")


def _empty() -> dict:
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "classes": np.zeros(0, np.int64)}


def fuse_detections(
    dets: Sequence[dict],
    method: str = "wbf",
    iou_thresh: float = 0.55,
    weights: Sequence[float] | None = None,
    skip_box_thresh: float = 0.0,
    image_size: tuple[int, int] | None = None,
) -> dict:
    """Fuse several detection sets of one image into one: {"boxes" (N, 4) xyxy float32 in image pixels,
    "scores" float32, "classes" int64}, sorted by score descending.

    `dets`: one dict per model with "boxes" (xyxy pixels), "scores", "classes" (indices into one shared
    class list). `method` "wbf" or "nms"; boxes of one class overlapping by IoU >= `iou_thresh` are fused;
    `weights`: one per model (None = equal); boxes scored below `skip_box_thresh` are ignored;
    `image_size` (height, width) of the image, needed because ensemble_boxes works on [0, 1] coordinates.
    With "nms" and `weights` given, each model's scores are multiplied by its weight divided by the sum of
    the weights (as ensemble_boxes.nms; without weights the scores are kept)."""
    method = str(method).lower()
    if method not in FUSION_METHODS:
        raise ConfigError(f"ENSEMBLE.METHOD: expected 'wbf' or 'nms', found {method!r}")
    if not 0.0 < float(iou_thresh) <= 1.0:
        raise ConfigError(f"ENSEMBLE.IOU_THRESH: expected a value in (0, 1], found {iou_thresh!r}")
    if image_size is None or len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size: expected the image's (height, width), found {image_size!r}")
    if weights is not None and len(weights) not in (0, len(dets)):
        raise ConfigError(f"ENSEMBLE.WEIGHTS: {len(weights)} weights for {len(dets)} models; expected one per model")
    weighted = bool(weights)
    w_list = [float(x) for x in weights] if weights else [1.0] * len(dets)
    if any(x <= 0 for x in w_list):
        raise ConfigError(f"ENSEMBLE.WEIGHTS: expected positive weights, found {w_list}")
    h, w = float(image_size[0]), float(image_size[1])
    scale = np.array([w, h, w, h], dtype=np.float64)
    boxes_l, scores_l, labels_l = [], [], []
    for d, wt in zip(dets, w_list):
        b = np.asarray(d["boxes"], np.float64).reshape(-1, 4) / scale
        s = np.asarray(d["scores"], np.float64).reshape(-1)
        c = np.asarray(d["classes"], np.int64).reshape(-1)
        keep = s >= float(skip_box_thresh)
        boxes_l.append(np.clip(b[keep], 0.0, 1.0))
        scores_l.append(s[keep] * (wt / sum(w_list)) if method == "nms" and weighted else s[keep])
        labels_l.append(c[keep])
    if sum(len(b) for b in boxes_l) == 0:
        return _empty()
    if method == "wbf":
        from ensemble_boxes import weighted_boxes_fusion

        fb, fs, fl = weighted_boxes_fusion(
            boxes_l, scores_l, labels_l, weights=w_list, iou_thr=float(iou_thresh), skip_box_thr=float(skip_box_thresh)
        )
    else:
        # torchvision's NMS: the same rule as ensemble_boxes.nms without its numba compilation (~10 s).
        fb, fs, fl = (np.concatenate(x) for x in (boxes_l, scores_l, labels_l))
        keep = batched_nms(torch.from_numpy(fb), torch.from_numpy(fs), torch.from_numpy(fl), float(iou_thresh)).numpy()
        fb, fs, fl = fb[keep], fs[keep], fl[keep]
    order = np.argsort(-np.asarray(fs), kind="stable")
    return {
        "boxes": (np.asarray(fb).reshape(-1, 4)[order] * scale).astype(np.float32),
        "scores": np.asarray(fs)[order].astype(np.float32),
        "classes": np.asarray(fl)[order].astype(np.int64),
    }


def ensemble_config(cfg: CfgNode, class_names: Sequence[str], first_member_names: Sequence[str]) -> CfgNode:
    """`cfg` (the first member's, possibly tuned, with ENSEMBLE.*) restated for an ensemble of classes
    `class_names` (frozen): DATASETS.CLASS_NAMES and MODEL.ROI_HEADS.NUM_CLASSES of the ensemble, and
    TEST.CLASS_SCORE_THRESH / TEST.CLASS_SCORE_THRESH_NAMES one per ensemble class, matched by name
    (TEST.CLASS_SCORE_THRESH_NAMES, else DATASETS.CLASS_NAMES, else `first_member_names`); a class no
    per-class threshold names gets TEST.SCORE_THRESH."""
    src = cfg.clone()
    src.defrost()
    per_class = list(src.TEST.CLASS_SCORE_THRESH)
    if per_class and not threshold_names(src):
        src.TEST.CLASS_SCORE_THRESH_NAMES = list(first_member_names)
    thresholds = score_thresholds(src, list(class_names))
    src.DATASETS.CLASS_NAMES = list(class_names)
    src.MODEL.ROI_HEADS.NUM_CLASSES = len(class_names)
    src.TEST.CLASS_SCORE_THRESH = [float(t) for t in thresholds] if per_class else []
    src.TEST.CLASS_SCORE_THRESH_NAMES = list(class_names) if per_class else []
    src.freeze()
    return src


class EnsemblePredictor:
    """Several predictors as one (a :class:`~meddet.inference.base.DetectorLike`, like each member):
    same `__call__` / `predict_batch` / `read` / `class_names` / `cfg` / `tiled` interface.

    >>> ens = EnsemblePredictor([cell_model, cluster_model], ["cell", "cluster"], cfg)
    >>> out = ens("slide.png")                  # {"boxes", "scores", "classes", "labels"}

    Each member predicts as it is configured (sliced when its TILING.ENABLED is set); its class indices
    are mapped to `class_names` by name, then the members' detections are fused with ENSEMBLE.METHOD /
    IOU_THRESH / WEIGHTS / SKIP_BOX_THRESH of `cfg`. Images given as paths are read once, by the first
    member's `read` (its DICOM settings).

    `cfg` (usually the first member's, possibly tuned) also gives the thresholds the ensemble is served
    with: TEST.CLASS_SCORE_THRESH follows classes by name (TEST.CLASS_SCORE_THRESH_NAMES, else that
    config's DATASETS.CLASS_NAMES, else the first member's classes) and a class no threshold names (one
    a member adds) gets TEST.SCORE_THRESH. `self.cfg` is that config restated for the ensemble's classes
    (DATASETS.CLASS_NAMES, TEST.CLASS_SCORE_THRESH[_NAMES] in `class_names` order)."""

    # Set by meddet.hub.load_predictor: the bundle's meddet.json and folder (None when not loaded from a bundle).
    bundle: dict[str, Any] | None = None
    bundle_dir: Path | None = None

    def __init__(self, predictors: Sequence[DetectorLike], class_names: Sequence[str], cfg: CfgNode) -> None:
        if not predictors:
            raise ConfigError("ensemble: no models given; expected at least one predictor")
        self.predictors = list(predictors)
        self.class_names = list(class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"ensemble class names: duplicates in {self.class_names}; expected unique names")
        e = cfg.ENSEMBLE
        self.method = str(e.METHOD).lower()
        if self.method not in FUSION_METHODS:
            raise ConfigError(f"ENSEMBLE.METHOD: expected 'wbf' or 'nms', found {e.METHOD!r}")
        self.iou_thresh = float(e.IOU_THRESH)
        self.skip_box_thresh = float(e.SKIP_BOX_THRESH)
        self.weights = [float(x) for x in e.WEIGHTS] or None
        if self.weights is not None and len(self.weights) != len(self.predictors):
            raise ConfigError(
                f"ENSEMBLE.WEIGHTS: {len(self.weights)} weights for {len(self.predictors)} models; "
                "expected one per model (or none)"
            )
        index = {n: i for i, n in enumerate(self.class_names)}
        self._maps = []
        for k, p in enumerate(self.predictors):
            missing = [n for n in p.class_names if n not in index]
            if missing:
                raise ConfigError(
                    f"ensemble member {k}: classes {missing} are not among the ensemble's classes "
                    f"{self.class_names}; expected every member class to be named there"
                )
            self._maps.append(np.array([index[n] for n in p.class_names], dtype=np.int64))
        self.cfg = ensemble_config(cfg, self.class_names, self.predictors[0].class_names)

    @property
    def members(self) -> list:
        """The member predictors, in fusion order (ENSEMBLE.WEIGHTS order)."""
        return self.predictors

    @property
    def tiled(self) -> bool:
        """True when any member predicts by sliced inference."""
        return any(bool(getattr(p, "tiled", False)) for p in self.predictors)

    def read(self, image: str | os.PathLike | bytes | np.ndarray, **kwargs: Any) -> np.ndarray:
        """An array as is; a path or a file's bytes read by the first member (see Predictor.read)."""
        return self.predictors[0].read(image, **kwargs)

    def predict_batch(self, images: Iterable[str | os.PathLike | np.ndarray]) -> list[dict]:
        """Fused detections of each image: {"boxes", "scores", "classes" (ensemble indices), "labels"}."""
        arrays = [self.read(im) for im in images]
        per_member = []
        for p, cmap in zip(self.predictors, self._maps):
            dets = p.predict_batch(arrays)
            per_member.append(
                [{"boxes": d["boxes"], "scores": d["scores"], "classes": cmap[d["classes"]]} for d in dets]
            )
        out = []
        for i, arr in enumerate(arrays):
            fused = fuse_detections(
                [m[i] for m in per_member],
                method=self.method,
                iou_thresh=self.iou_thresh,
                weights=self.weights,
                skip_box_thresh=self.skip_box_thresh,
                image_size=arr.shape[:2],
            )
            fused["labels"] = [self.class_names[int(c)] for c in fused["classes"]]
            out.append(fused)
        return out

    def __call__(self, image: str | os.PathLike | np.ndarray) -> dict:
        """Fused detections of one image; see predict_batch."""
        return self.predict_batch([image])[0]
