"""Inference: the Predictor (one image of any size, or a batch), sliced inference and merging of
detections, ensembles of models, and inference over a dataset."""
from meddet.inference.ensemble import EnsemblePredictor, fuse_detections
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
    "Predictor",
    "EnsemblePredictor",
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
