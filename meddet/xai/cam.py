"""Class activation maps for one detection of a meddet detector (torchvision engine).

The class score of the detection is recomputed with gradients: the box is pooled from the FPN features
(``box_roi_pool``), passed through the box head and the predictor, and its class logit is backpropagated
to a chosen feature map. Two ways to turn activations and gradients into a map (ReLU, upsampled to the
original image):

- ``"gradcam"`` (Selvaraju et al. 2017): activations weighted per channel by their spatially averaged
  gradients. In a two-stage detector the gradient of a box score reaches only the features ROIAlign
  sampled (the box), but the averaged weights are applied to the whole feature map, so the map also
  lights up look-alike texture far from the box.
- ``"hirescam"`` (Draelos & Carin 2020, the default): activations times gradients element-wise, then
  summed over channels; the map shows which positions the box score used, which for a box head is the
  faithful answer.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddet.errors import DataError, ModelError

logger = logging.getLogger(__name__)

__all__ = ["CAM", "gradcam", "overlay"]

_METHODS = ("hirescam", "gradcam")
_FPN_LEVELS = {"p2": "0", "p3": "1", "p4": "2", "p5": "3"}


@dataclass
class CAM:
    """A Grad-CAM map in the original image's pixels (``heatmap`` HxW in [0, 1]) for the detection
    ``box`` (xyxy, original pixels) of class ``class_index`` (0..K-1) with ``score``, taken at ``layer`` with ``method``."""

    heatmap: np.ndarray
    box: np.ndarray
    class_index: int
    score: float
    layer: str
    method: str

    def energy_inside(self) -> float:
        """Fraction of the map's sum that lies inside ``box``."""
        total = float(self.heatmap.sum())
        if total <= 0:
            return 0.0
        x1, y1, x2, y2 = (int(round(v)) for v in self.box)
        return float(self.heatmap[max(y1, 0):y2, max(x1, 0):x2].sum()) / total


def _level_for_box(box: Tensor) -> str:
    """The FPN level the box head pools this box from (detectron2's assignment in D2MultiScaleRoIAlign)."""
    area = float((box[2] - box[0]) * (box[3] - box[1]))
    level = math.floor(4 + math.log2(math.sqrt(max(area, 1e-6)) / 224 + 1e-8))
    return f"p{min(max(level, 2), 5)}"


def _check_model(model: nn.Module) -> None:
    if getattr(model, "engine", None) != "torchvision":
        raise ModelError(
            f"Grad-CAM: model engine {getattr(model, 'engine', type(model).__name__)!r} is not supported; "
            "expected a torchvision-engine model (MODEL.ENGINE torchvision)"
        )


def gradcam(
    model: nn.Module,
    inputs: Mapping[str, Any],
    detection_index: int | None = 0,
    box: Sequence[float] | None = None,
    class_index: int | None = None,
    layer: str | None = None,
    method: str = "hirescam",
) -> CAM:
    """Grad-CAM of one detection.

    ``inputs``: one image in the model interface (``{"image": CHW tensor, "height", "width"}``).
    Either ``detection_index`` (the index into the model's detections for this image, highest score
    first) or ``box`` (xyxy in original pixels) with ``class_index`` (0..K-1). ``layer``: ``"p2"`` ..
    ``"p5"`` (FPN outputs), the name of any module of the model (e.g. ``"backbone.fpn.layer_blocks.0"``,
    ``"backbone.body.layer3"``), or None for the FPN level the box is pooled from. ``method``:
    ``"hirescam"`` or ``"gradcam"`` (see the module doc)."""
    _check_model(model)
    if method not in _METHODS:
        raise DataError(f"Grad-CAM method: {method!r}; expected one of {', '.join(_METHODS)}")
    image = inputs.get("image")
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise DataError("Grad-CAM inputs['image']: expected a CHW tensor (the model interface)")
    in_h, in_w = image.shape[-2:]
    out_h, out_w = int(inputs.get("height", in_h)), int(inputs.get("width", in_w))
    sx, sy = out_w / in_w, out_h / in_h
    was_training = model.training
    model.eval()
    try:
        if box is None:
            with torch.no_grad():
                det = model([inputs])[0]
            n = int(det["boxes"].shape[0])
            if detection_index is None or not 0 <= detection_index < n:
                raise DataError(f"Grad-CAM detection_index: {detection_index}; the model found {n} detections "
                                f"in this image (expected 0..{n - 1}, or pass box= and class_index=)")
            orig_box = det["boxes"][detection_index].detach().cpu().float()
            cls = int(det["classes"][detection_index])
        else:
            if class_index is None or not 0 <= class_index < model.num_classes:
                raise DataError(f"Grad-CAM class_index: {class_index}; with box= expected a class in "
                                f"0..{model.num_classes - 1}")
            orig_box = torch.as_tensor(box, dtype=torch.float32).reshape(-1)
            if orig_box.numel() != 4 or not (orig_box[2] > orig_box[0] and orig_box[3] > orig_box[1]):
                raise DataError(f"Grad-CAM box: {list(box)}; expected xyxy with x1 < x2 and y1 < y2")
            cls = int(class_index)
        tbox = orig_box / torch.tensor([sx, sy, sx, sy])
        layer = layer or _level_for_box(tbox)
        heat, score = _cam(model, image, tbox, cls, layer, method)
    finally:
        model.train(was_training)
    heat = heat[: int(in_h), : int(in_w)]
    heat = cv2.resize(heat, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else heat
    logger.debug("%s of class %d (score %.3f) at %s: box %s", method, cls, score, layer, orig_box.tolist())
    return CAM(heat.astype(np.float32), orig_box.numpy(), cls, score, layer, method)


def _cam(
    model: nn.Module, image: Tensor, tbox: Tensor, cls: int, layer: str, method: str
) -> tuple[np.ndarray, float]:
    """(map at the padded input tensor's size, softmax score of class `cls`)."""
    device = model.device
    captured: dict[str, Tensor] = {}
    handle = None
    if layer not in _FPN_LEVELS:
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ModelError(f"Grad-CAM layer: {layer!r} is not a module of the model; expected p2..p5 or a "
                             "module name such as 'backbone.fpn.layer_blocks.0' or 'backbone.body.layer3'")

        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                raise ModelError(f"Grad-CAM layer: {layer!r} outputs {type(output).__name__}; expected a tensor")
            output.retain_grad()
            captured["act"] = output

        handle = modules[layer].register_forward_hook(hook)
    try:
        with torch.enable_grad():
            images, _ = model.transform([image.to(device).float()])
            features = model.backbone(images.tensors)
            if handle is None:
                act = features[_FPN_LEVELS[layer]]
                act.retain_grad()
                captured["act"] = act
            rois = [tbox.to(device)[None]]
            pooled = model.roi_heads.box_roi_pool(features, rois, images.image_sizes)
            logits, _ = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
            target = logits[0, cls + 1]  # torchvision: 0 = background
            model.zero_grad(set_to_none=True)
            target.backward()
            act = captured["act"]
            if act.grad is None or not bool(act.grad.any()):
                raise ModelError(f"Grad-CAM layer: {layer!r} does not influence this box's score (no gradient)")
            weights = act.grad.mean(dim=(2, 3), keepdim=True) if method == "gradcam" else act.grad
            cam = F.relu((weights * act).sum(dim=1, keepdim=True))[:1]
            cam = F.interpolate(cam, size=images.tensors.shape[-2:], mode="bilinear", align_corners=False)
            score = float(torch.softmax(logits[0].detach(), dim=0)[cls + 1])
    finally:
        if handle is not None:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return cam[0, 0].detach().cpu().numpy(), score


def overlay(image: np.ndarray, cams: Sequence[CAM], alpha: float = 0.45,
            labels: Sequence[str] | None = None) -> np.ndarray:
    """The image (HxW or HxWx3 BGR, any dtype) as uint8 BGR with the maps combined (pixel-wise maximum)
    as a JET heat map and each detection's box and label drawn on top."""
    img = image.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = ((img - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(img)).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if not cams:
        return img
    heat = np.max(np.stack([c.heatmap for c in cams]), axis=0)
    if heat.shape != img.shape[:2]:
        raise DataError(f"Grad-CAM overlay: map of {heat.shape} for an image of {img.shape[:2]}; expected equal sizes")
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(img, 1.0 - alpha, colour, alpha, 0.0)
    for c in cams:
        x1, y1, x2, y2 = (int(round(v)) for v in c.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), 1)
        name = labels[c.class_index] if labels else str(c.class_index)
        cv2.putText(out, f"{name} {c.score:.2f}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return out
