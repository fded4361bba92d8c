"""Inference: the Predictor (one image of any size, or a batch) and inference over a dataset."""
from meddet.inference.predictor import Predictor, detections_to_coco_results, inference_on_dataset

__all__ = ["Predictor", "inference_on_dataset", "detections_to_coco_results"]
