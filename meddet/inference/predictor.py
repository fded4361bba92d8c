"""Predictor: build the model from a config, load weights, predict on images (arrays, PNG/JPEG or DICOM)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from meddet.data.transforms import resize, shortest_edge_size, to_model_tensor, to_unit_float
from meddet.errors import ConfigError

logger = logging.getLogger(__name__)


def _to_numpy(det: dict) -> dict:
    return {
        "boxes": det["boxes"].detach().float().cpu().numpy().reshape(-1, 4),
        "scores": det["scores"].detach().float().cpu().numpy().reshape(-1),
        "classes": det["classes"].detach().cpu().numpy().astype(np.int64).reshape(-1),
    }


def detections_to_coco_results(det: dict, image_id, category_ids: Sequence[int]) -> list[dict]:
    """One image's detections (numpy) → COCO results entries ([x, y, w, h], category ids of the dataset)."""
    out = []
    for (x1, y1, x2, y2), s, c in zip(det["boxes"], det["scores"], det["classes"]):
        out.append(
            {
                "image_id": image_id,
                "category_id": int(category_ids[int(c)]),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(s),
            }
        )
    return out


@torch.no_grad()
def inference_on_dataset(model, loader, category_ids: Sequence[int], desc: str = "inference") -> list[dict]:
    """Run the model over a test loader (DatasetMapper is_train=False); returns COCO results."""
    was_training = model.training
    model.eval()
    results: list[dict] = []
    try:
        for batch in tqdm(loader, desc=desc, leave=False, mininterval=2, dynamic_ncols=True):
            dets = model(batch)
            for inp, det in zip(batch, dets):
                results.extend(detections_to_coco_results(_to_numpy(det), inp["image_id"], category_ids))
    finally:
        model.train(was_training)
    return results


class Predictor:
    """Predict on single images of any size with a trained model.

    >>> p = Predictor(cfg)                      # MODEL.WEIGHTS, DATASETS.CLASS_NAMES from the run's config
    >>> out = p("mammogram.dcm")                # {"boxes", "scores", "classes", "labels"}
    """

    def __init__(self, cfg, weights: str | os.PathLike | None = None, class_names: Sequence[str] | None = None):
        from meddet.data.dataset import dicom_kwargs
        from meddet.modeling import build_model, resolve_device
        from meddet.modeling.checkpoint import load_weights

        self.cfg = cfg.clone()
        self.cfg.freeze()
        self.device = resolve_device(cfg.MODEL.DEVICE)
        self.model = build_model(self.cfg).to(self.device).eval()
        weights = weights if weights is not None else cfg.MODEL.WEIGHTS
        if not weights:
            raise ConfigError("MODEL.WEIGHTS: no checkpoint given to predict with (expected a .pth file)")
        load_weights(self.model, weights)
        names = list(class_names or cfg.DATASETS.CLASS_NAMES)
        k = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        if names and len(names) != k:
            raise ConfigError(
                f"DATASETS.CLASS_NAMES has {len(names)} names but MODEL.ROI_HEADS.NUM_CLASSES is {k}"
            )
        self.class_names = names or [f"class_{i}" for i in range(k)]
        self._dicom_kwargs = dicom_kwargs(cfg)

    def read(self, image: str | os.PathLike | np.ndarray) -> np.ndarray:
        """An array as is; a path through meddet.io.read_image (DICOM, PNG, JPEG; decided by content)."""
        if isinstance(image, np.ndarray):
            return image
        from meddet.io import read_image

        return read_image(Path(image), **self._dicom_kwargs)

    def _prepare(self, image: np.ndarray) -> dict:
        h, w = image.shape[:2]
        nh, nw = shortest_edge_size(h, w, int(self.cfg.INPUT.MIN_SIZE_TEST), int(self.cfg.INPUT.MAX_SIZE_TEST))
        img = resize(to_unit_float(image), (nh, nw))
        return {"image": to_model_tensor(img, self.cfg.INPUT.FORMAT), "height": h, "width": w}

    @torch.no_grad()
    def predict_batch(self, images: Iterable[str | os.PathLike | np.ndarray]) -> list[dict]:
        batch = [self._prepare(self.read(im)) for im in images]
        if not batch:
            return []
        dets = self.model(batch)
        out = []
        for det in dets:
            d = _to_numpy(det)
            d["labels"] = [self.class_names[int(c)] for c in d["classes"]]
            out.append(d)
        return out

    def __call__(self, image: str | os.PathLike | np.ndarray) -> dict:
        return self.predict_batch([image])[0]


# --- meddet.hub: Predictor.from_pretrained (bundle folder or Hugging Face repo id) -----------------
def _from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None,
                     device: str | None = None, cache_dir: str | os.PathLike | None = None,
                     token: str | bool | None = None) -> "Predictor":
    """A Predictor from a model bundle folder or a Hub repo id (see meddet.hub.load_predictor)."""
    from meddet.hub import load_predictor

    return load_predictor(path_or_repo_id, revision=revision, device=device, cache_dir=cache_dir, token=token)


Predictor.from_pretrained = classmethod(_from_pretrained)
