"""``-c explain``: class activation overlays for the detections of a trained model on a list of images,
and :func:`explain_detections` for callers that already hold a Predictor's detections (the web app)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from yacs.config import CfgNode

from meddet.errors import DataError
from meddet.inference.predictor import Predictor
from meddet.io import Geometry
from meddet.io.recipe import boxes_from_original, boxes_to_original, map_to_original
from meddet.xai.cam import CAM, gradcams, overlay

logger = logging.getLogger(__name__)

__all__ = ["explain", "explain_detections"]


def explain_detections(
    predictor: Predictor,
    image: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]],
    classes: Sequence[int] | np.ndarray,
    layer: str | None = None,
    method: str = "hirescam",
    max_side: int | None = None,
    deadline: float | None = None,
) -> list[CAM]:
    """Maps of the detections (``boxes`` N x 4 xyxy in `image` pixels, ``classes`` 0..K-1) a
    :class:`~meddet.inference.predictor.Predictor` found in `image`, in the order given.

    The maps have the image's size, or with `max_side` at most that many pixels on the longer side
    (the image's aspect ratio; each CAM's ``box`` is then in the map's pixels). `deadline`
    (:func:`time.monotonic`): detections not started by then are left out. `layer` and `method` as in
    :func:`meddet.xai.cam.gradcam`."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    # The model sees the image after the preprocessing recipe's flip / crop (Predictor.preprocess): explain
    # that image, then put the maps and boxes back into the original image's frame.
    prepared, geometry = predictor.preprocess(image) if hasattr(predictor, "preprocess") else (image, None)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if geometry is not None:
        boxes = boxes_from_original(boxes, geometry)
    ph, pw = prepared.shape[:2]
    map_h, map_w = max(1, round(ph * scale)), max(1, round(pw * scale))
    batch = dict(predictor.prepare(prepared), height=map_h, width=map_w)
    sx, sy = map_w / pw, map_h / ph
    scaled = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    cams = gradcams(
        predictor.model, batch, scaled, [int(c) for c in classes], layer=layer, method=method, deadline=deadline
    )
    return _cams_to_original(cams, geometry, (out_h, out_w))


def _cams_to_original(cams: list[CAM], geometry: Geometry | None, size: tuple[int, int]) -> list[CAM]:
    """CAMs of the preprocessed image -> the original image's frame of `size` (rows, columns)."""
    if geometry is None:
        return cams
    import dataclasses

    oh, ow = geometry.original_size
    sx, sy = size[1] / ow, size[0] / oh
    out = []
    for c in cams:
        # the box: map pixels -> preprocessed image pixels -> original pixels -> map pixels of the original
        ph_scale = np.array([sx, sy, sx, sy], dtype=np.float32)
        box = boxes_to_original(np.asarray(c.box, dtype=np.float32) / ph_scale, geometry)[0] * ph_scale
        out.append(dataclasses.replace(c, heatmap=map_to_original(c.heatmap, geometry, size), box=box))
    return out


def explain(
    cfg: CfgNode,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    score_thresh: float = 0.5,
    max_detections: int = 10,
    layer: str | None = None,
    method: str = "hirescam",
    per_detection: bool = False,
) -> list[Path]:
    """Write ``<stem>_gradcam.png`` (all detections with score >= `score_thresh`, at most
    `max_detections`, their maps combined) for each image in `inputs` into `out_dir`, and with
    `per_detection` one ``<stem>_det<i>_gradcam.png`` per detection. Returns the written paths.
    Weights: `weights` or ``MODEL.WEIGHTS``; ``layer`` and ``method`` (one of
    :data:`meddet.xai.cam.METHODS`) as in :func:`meddet.xai.cam.gradcam`."""
    predictor = Predictor(cfg, weights=weights)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in inputs:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: image not found; expected a DICOM, PNG or JPEG file to explain")
        image = predictor.read(path)
        prepared, geometry = predictor.preprocess(image)  # the recipe's flip / crop, undone on the overlay
        batch = predictor.prepare(prepared)
        with torch.no_grad():
            det = predictor.model([batch])[0]
        keep = (det["scores"] >= score_thresh).nonzero().flatten()[:max_detections]
        cams = gradcams(
            predictor.model,
            batch,
            det["boxes"][keep].detach().cpu(),
            det["classes"][keep].tolist(),
            layer=layer,
            method=method,
        )
        cams = _cams_to_original(cams, geometry, image.shape[:2])
        logger.info("%s: %d detections explained", path, len(cams))
        target = out / f"{path.stem}_gradcam.png"
        cv2.imwrite(str(target), overlay(image, cams, labels=predictor.class_names))
        written.append(target)
        if per_detection:
            for i, cam in enumerate(cams):
                target = out / f"{path.stem}_det{i}_gradcam.png"
                cv2.imwrite(str(target), overlay(image, [cam], labels=predictor.class_names))
                written.append(target)
    return written
