"""Explanations of detections: class activation maps (HiResCAM, Grad-CAM, Grad-CAM++, Eigen-CAM) and
overlays (``-c explain``, the web app's explain toggle)."""

from meddet.xai.cam import CAM, METHODS, activation_map, gradcam, gradcams, heatmap_rgba, overlay
from meddet.xai.explain import explain, explain_detections

__all__ = [
    "CAM",
    "METHODS",
    "activation_map",
    "explain",
    "explain_detections",
    "gradcam",
    "gradcams",
    "heatmap_rgba",
    "overlay",
]
