"""What every predictor offers: :class:`DetectorLike`, the interface of the single model
(:class:`~meddet.inference.predictor.Predictor`, whole-image or tiled: with TILING.ENABLED it predicts
by sliced inference) and of :class:`~meddet.inference.ensemble.EnsemblePredictor`, so evaluate, tune,
predict, export and the web app take any of them.

Score thresholds follow classes by name: ``TEST.CLASS_SCORE_THRESH`` holds one value per name of
``TEST.CLASS_SCORE_THRESH_NAMES`` (empty: the config's own classes, ``DATASETS.CLASS_NAMES``, in index
order); a class of the predictor that is not named there uses ``TEST.SCORE_THRESH``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from tqdm import tqdm

from meddet.errors import ConfigError, DataError
from meddet.io.recipe import TaggedImage

if TYPE_CHECKING:
    from meddet.config import CfgNode

__all__ = ["DetectorLike", "score_thresholds", "threshold_names", "inference_on_records", "detections_to_coco_results"]


@runtime_checkable
class DetectorLike(Protocol):
    """A detector on whole images of any size.

    - ``cfg``: its (frozen) config: INPUT.* (preprocessing sizes), DICOM.* (how paths are read),
      TEST.SCORE_THRESH / TEST.CLASS_SCORE_THRESH (the thresholds it is served with; see
      :func:`score_thresholds`), and for an ensemble ENSEMBLE.*;
    - ``class_names``: class index -> name of the detections it returns;
    - ``tiled``: whether it (or any ensemble member) predicts by sliced inference;
    - ``read(image)``: an array as is, a path (PNG, JPEG, DICOM) read with the config's DICOM settings;
    - ``predict_batch(images)`` / ``__call__(image)``: {"boxes" (N, 4) xyxy float32 in the image's pixels,
      "scores", "classes" (indices into ``class_names``), "labels"} per image, unfiltered by TEST.*.
    """

    cfg: CfgNode
    class_names: list[str]

    @property
    def tiled(self) -> bool:
        """Whether it (or any ensemble member) predicts by sliced inference."""

    def read(self, image: str | os.PathLike | bytes | np.ndarray, **kwargs: Any) -> np.ndarray:
        """An array as is; a path or a file's bytes read with the config's DICOM settings."""

    def predict_batch(self, images: Iterable[str | os.PathLike | np.ndarray]) -> list[dict]:
        """Detections of each image (see the class doc)."""

    def __call__(self, image: str | os.PathLike | np.ndarray) -> dict:
        """Detections of one image (see the class doc)."""


def threshold_names(cfg: CfgNode) -> list[str]:
    """The class names TEST.CLASS_SCORE_THRESH is given for: TEST.CLASS_SCORE_THRESH_NAMES, else
    DATASETS.CLASS_NAMES (empty when neither is set)."""
    names = list(cfg.TEST.get("CLASS_SCORE_THRESH_NAMES", []) or [])
    return names or list(cfg.DATASETS.CLASS_NAMES)


def score_thresholds(cfg: CfgNode, class_names: Sequence[str] | int, override: float | None = None) -> np.ndarray:
    """One score threshold per class of `class_names` (or of `class_names` classes by index): `override`
    for all when given; else TEST.CLASS_SCORE_THRESH matched to the classes by name (see the module
    doc), TEST.SCORE_THRESH for a class it does not name; else TEST.SCORE_THRESH for every class."""
    k = class_names if isinstance(class_names, int) else len(class_names)
    if override is not None:
        return np.full(k, float(override))
    default = float(cfg.TEST.SCORE_THRESH)
    per_class = [float(v) for v in cfg.TEST.CLASS_SCORE_THRESH]
    if not per_class:
        return np.full(k, default)
    names = threshold_names(cfg)
    if isinstance(class_names, int) or not names:
        if len(per_class) != k:
            raise ConfigError(
                f"TEST.CLASS_SCORE_THRESH has {len(per_class)} values; expected one per class ({k}) "
                "or TEST.CLASS_SCORE_THRESH_NAMES naming the class of each"
            )
        return np.asarray(per_class, dtype=float)
    if len(names) != len(per_class):
        raise ConfigError(
            f"TEST.CLASS_SCORE_THRESH has {len(per_class)} values for the {len(names)} classes "
            f"{names}; expected one per class"
        )
    by_name = dict(zip(names, per_class))
    return np.asarray([by_name.get(n, default) for n in class_names], dtype=float)


def detections_to_coco_results(det: dict, image_id: Any, category_ids: Sequence[int]) -> list[dict]:
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


def inference_on_records(
    predictor: DetectorLike,
    records: Sequence[dict],
    category_ids: Sequence[int],
    desc: str = "predict",
    predict: Callable[[np.ndarray], dict] | None = None,
) -> list[dict]:
    """COCO results of any predictor called on each whole image of `records` (dataset dicts with
    "file_name", "image_id", "height", "width"); `category_ids[k]` is the dataset's category id of the
    predictor's class index k. `predict(image)` replaces ``predictor(image)`` when given."""
    predict = predict or predictor
    results: list[dict] = []
    for rec in tqdm(records, desc=desc, leave=False, mininterval=2, dynamic_ncols=True):
        image = predictor.read(rec["file_name"])
        if image.shape[:2] != (rec["height"], rec["width"]):
            raise DataError(
                f"{rec['file_name']}: image is {image.shape[1]}x{image.shape[0]} but its COCO record says "
                f"{rec['width']}x{rec['height']}"
            )
        if rec.get("preprocessed"):  # converted with the recipe's flip / crop: its boxes are in its own pixels
            image = TaggedImage(image, {**(getattr(image, "hints", None) or {}), "preprocessed": True})
        results.extend(detections_to_coco_results(predict(image), rec["image_id"], category_ids))
    return results
