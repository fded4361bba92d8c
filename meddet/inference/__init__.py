"""Inference: the Predictor (one image of any size, or a batch), sliced inference and merging of
detections, ensembles of models, and inference over a dataset."""

from meddet.inference.base import DetectorLike, inference_on_records, score_thresholds
from meddet.inference.ensemble import EnsemblePredictor, ensemble_config, fuse_detections
from meddet.inference.merge import merge_detections
from meddet.inference.predictor import (
    Predictor,
    detections_to_coco_results,
    inference_on_dataset,
    optimize_for_inference,
    prepare_image,
    sliced_inference_on_records,
)
from meddet.inference.sliced import default_workers, sliced_predict

__all__ = [
    "DetectorLike",
    "Predictor",
    "EnsemblePredictor",
    "ensemble_config",
    "inference_on_records",
    "score_thresholds",
    "inference_on_dataset",
    "sliced_inference_on_records",
    "detections_to_coco_results",
    "prepare_image",
    "optimize_for_inference",
    "sliced_predict",
    "default_workers",
    "merge_detections",
    "fuse_detections",
]
