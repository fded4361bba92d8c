"""Explanations of detections: Grad-CAM maps and overlays (``-c explain``)."""
from meddet.xai.explain import explain
from meddet.xai.cam import CAM, gradcam, overlay

__all__ = ["CAM", "explain", "gradcam", "overlay"]
