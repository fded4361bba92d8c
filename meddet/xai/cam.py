"""Class activation maps for detections of a meddet detector (either engine).

The models speak a small explanation interface (implemented by ``TorchvisionRCNN`` and
``Detectron2RCNN``, so nothing here depends on an engine's internals):

- ``model.explain_inputs(image) -> (padded (1, 3, H, W), (img_h, img_w))``: the engine's own
  normalisation and padding of one CHW image;
- ``model.feature_maps(padded) -> OrderedDict``: the FPN outputs keyed ``"p2"`` .. ``"p6"`` for both engines;
- ``model.box_class_logits(features, boxes (N, 4)) -> (N, K + 1)``: the box classifier's logits for boxes in
  the padded tensor's pixels, the classes in class-index order and the background last, whatever the
  engine's own order (torchvision puts it first, detectron2 last); a class's score is the softmax over the row.

The class score of a detection is recomputed with gradients: the box is pooled from the FPN features,
passed through the box head and the predictor, and its class logit is differentiated with respect to a
chosen feature map (``torch.autograd.grad``: only the path from that map to the score is traversed; the
backbone runs once for all the boxes of an image). Four ways to turn activations ``A`` (C x h x w) and
gradients ``G`` into a map (ReLU, upsampled to the original image, scaled to peak 1):

- ``"hirescam"`` (Draelos & Carin 2020, the default): ``sum_c A * G``; the map shows which positions the
  box score used, which for a box head is the faithful answer.
- ``"gradcam"`` (Selvaraju et al. 2017): ``sum_c w_c A_c`` with ``w_c`` the spatial mean of ``G_c``. In a
  two-stage detector the gradient of a box score reaches only the features ROIAlign sampled (the box),
  but the averaged weights are applied to the whole feature map, so the map also lights up look-alike
  texture far from the box.
- ``"gradcam++"`` (Chattopadhay et al. 2018, eq. 19): ``w_c = sum_ij relu(G_cij) a_cij`` with
  ``a_cij = G^2 / (2 G^2 + sum_ab A_cab * G^3 + 1e-6)`` (0 where ``G`` is 0), computed as
  pytorch-grad-cam computes it. The formula assumes non-negative (post-ReLU) activations: on the FPN
  outputs (signed) the denominator can approach 0 and the weights degenerate, so a warning is logged;
  take it at a ResNet stage instead (``backbone.body.layerN`` on the torchvision engine,
  ``backbone.bottom_up.resN`` on the detectron2 engine).
- ``"eigencam"`` (Bany Muhammad & Yeasin 2020): the projection of the (mean-centred) activations on
  their first principal component; gradient-free, so it depends on neither the box nor the class (every
  detection explained at the same layer gets the same map). The component's sign is arbitrary; it is
  chosen so that the map correlates positively with the activations' magnitude (L2 norm over channels).
  The components are fitted on the feature positions of the image, not of the batch padding.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddet.errors import DataError, ModelError
from meddet.visualize import draw_detections

logger = logging.getLogger(__name__)

__all__ = ["CAM", "METHODS", "activation_map", "gradcam", "gradcams", "heatmap_rgba", "overlay"]

METHODS = ("hirescam", "gradcam", "gradcam++", "eigencam")
_GRADIENT_FREE = ("eigencam",)
_FPN_LEVELS = ("p2", "p3", "p4", "p5")  # the levels the box head pools from (both engines)
_EXPLAIN_INTERFACE = ("explain_inputs", "feature_maps", "box_class_logits")
_LAYER_HELP = (
    "p2..p5 (FPN outputs) or a backbone module name: on the torchvision engine e.g. "
    "'backbone.body.layer3' or 'backbone.fpn.layer_blocks.0', on the detectron2 engine e.g. "
    "'backbone.bottom_up.res3' or 'backbone.fpn_output2'"
)
_GRADCAM_PP_EPS = 1e-6  # pytorch-grad-cam's constant in the Grad-CAM++ denominator


@dataclass
class CAM:
    """A class activation map (``heatmap`` HxW in [0, 1]) for the detection ``box`` (xyxy, in the map's
    pixels: the original image's unless a smaller map size was asked for) of class ``class_index``
    (0..K-1) with ``score``, taken at ``layer`` with ``method``."""

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
        return float(self.heatmap[max(y1, 0) : y2, max(x1, 0) : x2].sum()) / total


def activation_map(
    activations: Tensor, gradients: Tensor | None, method: str, valid: tuple[int, int] | None = None
) -> Tensor:
    """The ReLU'd map (N, h, w) of ``activations`` (N, C, h, w) with their ``gradients`` (same shape;
    None for ``"eigencam"``) by ``method`` (see the module doc). ``valid``: the (rows, columns) of the
    map that hold the image (the rest is batch padding); Eigen-CAM fits its components on those only."""
    if method not in METHODS:
        raise DataError(f"CAM method: {method!r}; expected one of {', '.join(METHODS)}")
    if activations.dim() != 4:
        raise DataError(f"CAM activations: shape {tuple(activations.shape)}; expected (N, C, H, W)")
    act = activations.detach().double()
    if method == "eigencam":
        return F.relu(_eigen_projection(act, valid)).float()
    if gradients is None or gradients.shape != activations.shape:
        found = None if gradients is None else tuple(gradients.shape)
        raise DataError(f"CAM gradients for {method!r}: shape {found}; expected {tuple(activations.shape)}")
    grad = gradients.detach().double()
    if method == "hirescam":
        cam = (grad * act).sum(dim=1)
    elif method == "gradcam":
        cam = (grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1)
    else:  # gradcam++
        g2 = grad.pow(2)
        g3 = g2 * grad
        sum_act = act.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_act * g3 + _GRADCAM_PP_EPS)
        alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
        weights = (F.relu(grad) * alpha).sum(dim=(2, 3), keepdim=True)
        cam = (weights * act).sum(dim=1)
    return F.relu(cam).float()


def _eigen_projection(act: Tensor, valid: tuple[int, int] | None) -> Tensor:
    """Per image: the centred activations projected on their first principal component, sign-corrected."""
    n, c, h, w = act.shape
    vh, vw = valid if valid is not None else (h, w)
    out = []
    for a in act:
        fit = a[:, :vh, :vw].reshape(c, -1).T  # positions x channels
        mean = fit.mean(dim=0)
        centred = fit - mean
        # The top eigenvector of the C x C scatter matrix is the first right-singular vector of `centred`,
        # without a (positions x positions) SVD.
        _, vecs = torch.linalg.eigh(centred.T @ centred)
        component = vecs[:, -1]
        proj = (a.reshape(c, -1).T - mean) @ component
        fit_proj = proj.reshape(h, w)[:vh, :vw].reshape(-1)
        magnitude = fit.norm(dim=1)
        if float(((fit_proj - fit_proj.mean()) * (magnitude - magnitude.mean())).sum()) < 0:
            proj = -proj
        out.append(proj.reshape(h, w))
    return torch.stack(out)


def _level_for_box(box: Tensor) -> str:
    """The FPN level the box head pools this box from (detectron2's assignment in D2MultiScaleRoIAlign)."""
    area = float((box[2] - box[0]) * (box[3] - box[1]))
    level = math.floor(4 + math.log2(math.sqrt(max(area, 1e-6)) / 224 + 1e-8))
    return f"p{min(max(level, 2), 5)}"


def _check_model(model: nn.Module) -> None:
    missing = [name for name in _EXPLAIN_INTERFACE if not callable(getattr(model, name, None))]
    if missing:
        raise ModelError(
            f"Grad-CAM: model {type(model).__name__} (engine {getattr(model, 'engine', None)!r}) lacks "
            f"{', '.join(missing)}; expected a meddet model (MODEL.ENGINE torchvision or detectron2) with the "
            f"explanation interface {', '.join(_EXPLAIN_INTERFACE)}"
        )


def _check_inputs(inputs: Mapping[str, Any]) -> Tensor:
    image = inputs.get("image")
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise DataError("Grad-CAM inputs['image']: expected a CHW tensor (the model interface)")
    return image


def gradcam(
    model: nn.Module,
    inputs: Mapping[str, Any],
    detection_index: int | None = 0,
    box: Sequence[float] | None = None,
    class_index: int | None = None,
    layer: str | None = None,
    method: str = "hirescam",
) -> CAM:
    """The class activation map of one detection.

    ``inputs``: one image in the model interface (``{"image": CHW tensor, "height", "width"}``; the map
    is made at ``height`` x ``width``). Either ``detection_index`` (the index into the model's detections
    for this image, highest score first) or ``box`` (xyxy in ``height`` x ``width`` pixels) with
    ``class_index`` (0..K-1). ``layer``: ``"p2"`` .. ``"p5"`` (FPN outputs, both engines), the name of
    any backbone module (torchvision engine e.g. ``"backbone.body.layer3"``,
    ``"backbone.fpn.layer_blocks.0"``; detectron2 engine e.g. ``"backbone.bottom_up.res3"``,
    ``"backbone.fpn_output2"``), or None for the FPN level the box is pooled from. ``method``: one of
    :data:`METHODS` (see the module doc). Works on any model with the explanation interface (module doc)."""
    _check_model(model)
    if method not in METHODS:
        raise DataError(f"Grad-CAM method: {method!r}; expected one of {', '.join(METHODS)}")
    _check_inputs(inputs)
    if box is None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                det = model([inputs])[0]
        finally:
            model.train(was_training)
        n = int(det["boxes"].shape[0])
        if detection_index is None or not 0 <= detection_index < n:
            raise DataError(
                f"Grad-CAM detection_index: {detection_index}; the model found {n} detections "
                f"in this image (expected 0..{n - 1}, or pass box= and class_index=)"
            )
        boxes = det["boxes"][detection_index : detection_index + 1].detach().cpu().float()
        classes: list[int | None] = [int(det["classes"][detection_index])]
    else:
        boxes = torch.as_tensor(box, dtype=torch.float32).reshape(1, -1)
        classes = [class_index]
    return gradcams(model, inputs, boxes, classes, layer=layer, method=method)[0]


def gradcams(
    model: nn.Module,
    inputs: Mapping[str, Any],
    boxes: Tensor | np.ndarray | Sequence[Sequence[float]],
    class_indices: Sequence[int | None],
    layer: str | None = None,
    method: str = "hirescam",
    deadline: float | None = None,
) -> list[CAM]:
    """Class activation maps of several detections of one image, in the order given, with one backbone
    pass. ``boxes`` (N x 4 xyxy in ``inputs["height"]`` x ``inputs["width"]`` pixels) and
    ``class_indices`` (0..K-1 each); ``inputs``, ``layer`` and ``method`` as in :func:`gradcam`.
    ``deadline`` (a :func:`time.monotonic` value): boxes not started by then are left out, so the
    result may be shorter than ``boxes``."""
    _check_model(model)
    if method not in METHODS:
        raise DataError(f"Grad-CAM method: {method!r}; expected one of {', '.join(METHODS)}")
    image = _check_inputs(inputs)
    orig = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    if len(class_indices) != orig.shape[0]:
        raise DataError(
            f"Grad-CAM class_indices: {len(class_indices)} classes for {orig.shape[0]} boxes; "
            "expected one class per box"
        )
    detector: Any = model  # a meddet model: it carries num_classes
    num_classes = detector.num_classes
    checked: list[int] = []
    for b, c in zip(orig.tolist(), class_indices):
        if c is None or not 0 <= int(c) < num_classes:
            raise DataError(f"Grad-CAM class_index: {c}; expected a class in 0..{num_classes - 1}")
        if not (b[2] > b[0] and b[3] > b[1]):
            raise DataError(f"Grad-CAM box: {b}; expected xyxy with x1 < x2 and y1 < y2")
        checked.append(int(c))
    in_h, in_w = (int(v) for v in image.shape[-2:])
    out_h, out_w = int(inputs.get("height", in_h)), int(inputs.get("width", in_w))
    scale = torch.tensor([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h])
    was_training = model.training
    model.eval()
    try:
        raw = _cams(model, image, orig / scale, checked, layer, method, deadline)
    finally:
        model.train(was_training)
    cams = []
    for (heat, score, lay), b, c in zip(raw, orig, checked):
        heat = cv2.resize(heat[:in_h, :in_w], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        peak = float(heat.max())
        heat = heat / peak if peak > 0 else heat
        logger.debug("%s of class %d (score %.3f) at %s: box %s", method, c, score, lay, b.tolist())
        cams.append(CAM(heat.astype(np.float32), b.numpy(), c, score, lay, method))
    if len(cams) < orig.shape[0]:
        logger.info("%s: %d of %d detections explained before the deadline", method, len(cams), orig.shape[0])
    return cams


def _cams(
    model: nn.Module,
    image: Tensor,
    tboxes: Tensor,
    classes: list[int],
    layer: str | None,
    method: str,
    deadline: float | None,
) -> list[tuple[np.ndarray, float, str]]:
    """Per box (xyxy in the pixels of ``image``): (map at the padded input tensor's size, softmax score
    of its class, layer used). Uses only the model's explanation interface (see the module doc)."""
    detector: Any = model  # explain_inputs, feature_maps, box_class_logits (checked by _check_model)
    needs_grad = method not in _GRADIENT_FREE
    captured: list[Tensor] = []
    handle = None
    if layer is not None and layer not in _FPN_LEVELS:
        modules = dict(model.named_modules())
        if layer not in modules or not layer.startswith("backbone."):
            raise ModelError(
                f"Grad-CAM layer: {layer!r} is not a backbone module of the "
                f"{getattr(model, 'engine', type(model).__name__)} model; expected {_LAYER_HELP}"
            )

        def hook(_module: nn.Module, _args: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor) or output.dim() != 4:
                found = type(output).__name__ if not isinstance(output, Tensor) else f"shape {tuple(output.shape)}"
                raise ModelError(f"Grad-CAM layer: {layer!r} outputs {found}; expected an (N, C, H, W) feature map")
            # A leaf that requires grad: the gradient reaches it even where earlier layers are frozen.
            act = output.detach().requires_grad_(needs_grad)
            captured.append(act)
            return act

        handle = modules[layer].register_forward_hook(hook)
    results: list[tuple[np.ndarray, float, str]] = []
    maps: dict[str, Tensor] = {}  # gradient-free maps are the same for every box at one layer
    warned: set[str] = set()
    try:
        with torch.no_grad():
            padded, (img_h, img_w) = detector.explain_inputs(image)
        pad_h, pad_w = padded.shape[-2:]
        with torch.set_grad_enabled(needs_grad and handle is not None):
            features = detector.feature_maps(padded)
        if handle is not None and len(captured) != 1:
            raise ModelError(
                f"Grad-CAM layer: {layer!r} ran {len(captured)} times in the backbone pass; "
                "expected a module that runs once (a feature map of the image)"
            )
        if handle is None:
            features = OrderedDict((k, v.detach().requires_grad_(needs_grad)) for k, v in features.items())
        for tbox, cls in zip(tboxes, classes):
            if deadline is not None and time.monotonic() > deadline:
                break
            lay = layer or _level_for_box(tbox)
            if handle is None and lay not in features:  # RetinaNet: p3..p7; the nearest level the model has
                lay = min(features, key=lambda k: abs(int(k[1:]) - int(lay[1:])) if k[1:].isdigit() else 99)
            act = captured[0] if handle is not None else features[lay]
            with torch.set_grad_enabled(needs_grad):
                logits = detector.box_class_logits(features, tbox[None])  # (1, K + 1), background last
            score = float(torch.softmax(logits[0].detach(), dim=0)[cls])
            if method == "gradcam++" and lay not in warned and bool((act < 0).any()):
                warned.add(lay)
                logger.warning(
                    "Grad-CAM++ at %s: the activations have negative values (e.g. FPN outputs), but its "
                    "weights assume post-ReLU activations and may be unstable; prefer a ResNet stage "
                    "(backbone.body.layerN on the torchvision engine, backbone.bottom_up.resN on the "
                    "detectron2 engine)",
                    lay,
                )
            if needs_grad:
                (grad,) = torch.autograd.grad(logits[0, cls], act, retain_graph=True, allow_unused=True)
                if grad is None or not bool(grad.any()):
                    raise ModelError(f"Grad-CAM layer: {lay!r} does not influence this box's score (no gradient)")
                cam = activation_map(act[:1], grad[:1], method)
            else:
                if lay not in maps:
                    h, w = act.shape[-2:]
                    valid = (math.ceil(h * img_h / pad_h), math.ceil(w * img_w / pad_w))
                    maps[lay] = activation_map(act[:1], None, method, valid=valid)
                cam = maps[lay]
            cam = F.interpolate(cam[:, None], size=(pad_h, pad_w), mode="bilinear", align_corners=False)
            results.append((cam[0, 0].cpu().numpy(), score, lay))
    finally:
        if handle is not None:
            handle.remove()
    return results


def heatmap_rgba(heatmap: np.ndarray, max_alpha: float = 0.6) -> np.ndarray:
    """A map (HxW in [0, 1]) as a BGRA uint8 image to lay over the picture: JET colours, opacity rising
    with the map from transparent (0) to `max_alpha` (1). ``cv2.imencode(".png", ...)`` keeps the alpha."""
    if heatmap.ndim != 2:
        raise DataError(f"heat map: shape {heatmap.shape}; expected a 2-D (H, W) map")
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0)
    bgr = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (heat * (255.0 * float(np.clip(max_alpha, 0.0, 1.0)))).round().astype(np.uint8)
    return np.dstack([bgr, alpha])


def overlay(
    image: np.ndarray, cams: Sequence[CAM], alpha: float = 0.45, labels: Sequence[str] | None = None
) -> np.ndarray:
    """The image (HxW or HxWx3 BGR, any dtype) as uint8 BGR with the maps combined (pixel-wise maximum)
    as a JET heat map and each detection's box and label drawn on top."""
    img: np.ndarray = image.astype(np.float32)
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
    # Boxes and labels by the shared placement routine (highest score on top, no overlapping labels).

    names = list(labels) if labels else [str(i) for i in range(max(c.class_index for c in cams) + 1)]
    return draw_detections(
        out,
        np.asarray([c.box for c in cams], dtype=np.float32).reshape(-1, 4),
        np.asarray([c.score for c in cams], dtype=np.float32),
        np.asarray([c.class_index for c in cams]),
        names,
        box_colors=[(255, 255, 255)] * len(cams),
    )
