"""``-c explain``: Grad-CAM overlays for the detections of a trained model on a list of images."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import torch
from yacs.config import CfgNode

from meddet.errors import DataError
from meddet.xai.cam import CAM, gradcam, overlay

logger = logging.getLogger(__name__)

__all__ = ["explain"]


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
    Weights: `weights` or ``MODEL.WEIGHTS``; ``layer`` as in :func:`meddet.xai.cam`."""
    from meddet.inference.predictor import Predictor

    predictor = Predictor(cfg, weights=weights)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in inputs:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: image not found; expected a DICOM, PNG or JPEG file to explain")
        image = predictor.read(path)
        batch = predictor._prepare(image)
        with torch.no_grad():
            det = predictor.model([batch])[0]
        keep = [i for i, s in enumerate(det["scores"].tolist()) if s >= score_thresh][:max_detections]
        cams: list[CAM] = []
        for i in keep:
            cams.append(gradcam(predictor.model, batch, detection_index=i, layer=layer, method=method))
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
