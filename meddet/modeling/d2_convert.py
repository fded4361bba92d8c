"""Convert detectron2 Faster R-CNN ResNet-FPN checkpoints to the torchvision engine and back, without
detectron2 installed.

Parameter names are mapped one to one (``backbone.bottom_up.res2.0.conv1.norm.weight`` <->
``backbone.body.layer1.0.bn1.weight`` ...); the only changes of values are:

- the stem's first convolution, whose input channels are reversed when ``INPUT.FORMAT`` is ``BGR``
  (detectron2 feeds BGR to the network, the torchvision engine always feeds RGB and reverses the pixel
  mean/std with it);
- the box predictor: detectron2 puts the background class last and regresses ``K * 4`` class-specific
  deltas; torchvision puts background first and regresses ``(K + 1) * 4`` (background's deltas are never
  used: they are zero after conversion and dropped on the way back).

Everything else that differs between the two libraries (``RESNETS.STRIDE_IN_1X1``, ``ROIAlignV2``,
anchors, frozen batch-norm statistics, test-time settings) is reproduced by the torchvision engine from
the same config keys, so the converted weights are used with the config the detectron2 model was trained with.
Features without an equivalent are refused with a ModelError naming the parameter.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from yacs.config import CfgNode

from meddet.config import get_fpn_cfg
from meddet.errors import ConfigError, ModelError
from meddet.modeling.checkpoint import format_listing, read_checkpoint, save_checkpoint
from meddet.modeling.retinanet import TorchvisionRetinaNet
from meddet.modeling.torchvision_engine import TorchvisionRCNN

logger = logging.getLogger(__name__)

DIRECTIONS = ("d2-to-tv", "tv-to-d2")
STEM_CONV = "backbone.body.conv1.weight"
CLS_SCORE = "roi_heads.box_predictor.cls_score."
BBOX_PRED = "roi_heads.box_predictor.bbox_pred."

# detectron2 parameters of features the torchvision engine does not build: pattern -> what it is
UNSUPPORTED_PARTS: list[tuple[str, str]] = [
    (r"\.conv2_offset\.", "deformable convolutions (MODEL.RESNETS.DEFORM_ON_PER_STAGE)"),
    (r"^roi_heads\.box_(head|predictor)\.\d+\.", "a cascade of box heads (CascadeROIHeads)"),
    (r"^roi_heads\.box_head\.conv\d+\.norm\.", "a normalized box head (MODEL.ROI_BOX_HEAD.NORM, e.g. GN)"),
    (r"^backbone\.fpn_(lateral|output)\d\.norm\.", "a normalized FPN (MODEL.FPN.NORM, e.g. GN)"),
    (r"^roi_heads\.mask_head\.", "a mask head (Mask R-CNN); only Faster R-CNN converts"),
    (r"^roi_heads\.keypoint_head\.", "a keypoint head (Keypoint R-CNN); only Faster R-CNN converts"),
    (r"^roi_heads\.res5\.", "a C4 backbone (Res5ROIHeads); only ResNet-FPN converts"),
    (
        r"^backbone\.(stem|res\d)\.",
        "a ResNet without FPN (MODEL.BACKBONE.NAME build_resnet_backbone: C4 or DC5); only ResNet-FPN converts",
    ),
    (r"^backbone\.bottom_up\.stem\.conv1_\d", "a deep stem (DeepLab ResNet); expected one 7x7 stem conv"),
    (r"^backbone\.(top_block|fpn_(lateral|output)6)\.", "an FPN with extra convolutional levels (RetinaNet P6/P7)"),
]
# detectron2 buffers that are no parameters of the model (anchors are rebuilt from the config)
_D2_IGNORED = (r"^(proposal_generator\.)?anchor_generator\.", r"^pixel_(mean|std)$")
# Caffe2 (Detectron 1) blob names, which detectron2 converts with its own heuristics
_C2_NAME = re.compile(r"^(res\d_\d+_branch|conv1_w$|res_conv1_bn|fc1000_|fpn_inner_|rpn_cls_logits_)")


def tv_to_d2_rules(rpn_convs: int, head_convs: int) -> list[tuple[re.Pattern[str], str]]:
    """Regex rules mapping a torchvision-engine parameter name to its detectron2 name."""
    rules = [
        (r"^backbone\.body\.conv1\.weight$", "backbone.bottom_up.stem.conv1.weight"),
        (r"^backbone\.body\.bn1\.(\w+)$", r"backbone.bottom_up.stem.conv1.norm.\1"),
        (r"^rpn\.head\.cls_logits\.(weight|bias)$", r"proposal_generator.rpn_head.objectness_logits.\1"),
        (r"^rpn\.head\.bbox_pred\.(weight|bias)$", r"proposal_generator.rpn_head.anchor_deltas.\1"),
        (r"^roi_heads\.box_head\.fc6\.(weight|bias)$", r"roi_heads.box_head.fc1.\1"),
        (r"^roi_heads\.box_head\.fc7\.(weight|bias)$", r"roi_heads.box_head.fc2.\1"),
        (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$", r"roi_heads.box_predictor.\1.\2"),
    ]
    if rpn_convs == 1:
        rules.append((r"^rpn\.head\.conv\.0\.0\.(weight|bias)$", r"proposal_generator.rpn_head.conv.\1"))
    else:
        rules.append((r"^rpn\.head\.conv\.(\d+)\.0\.(weight|bias)$", r"proposal_generator.rpn_head.conv.conv\1.\2"))
    # FastRCNNConvFCHead (any head other than torchvision's TwoMLPHead): convs 0..n-1, Flatten, Linear/ReLU pairs
    for k in range(head_convs):
        rules.append((rf"^roi_heads\.box_head\.{k}\.0\.(weight|bias)$", rf"roi_heads.box_head.conv{k + 1}.\1"))
    return [(re.compile(pattern), repl) for pattern, repl in rules]


def _retinanet_rules(num_convs: int, norm: bool) -> list[tuple[re.Pattern[str], str]]:
    """torchvision RetinaNet head and P6/P7 names -> detectron2's (``RetinaNetHead``, ``LastLevelP6P7``)."""
    rules = [
        (r"^backbone\.body\.conv1\.weight$", "backbone.bottom_up.stem.conv1.weight"),
        (r"^backbone\.body\.bn1\.(\w+)$", r"backbone.bottom_up.stem.conv1.norm.\1"),
        (r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)$", r"backbone.top_block.\1.\2"),
        (r"^head\.classification_head\.cls_logits\.(weight|bias)$", r"head.cls_score.\1"),
        (r"^head\.regression_head\.bbox_reg\.(weight|bias)$", r"head.bbox_pred.\1"),
    ]
    per_block = 3 if norm else 2  # detectron2's subnet: conv, [norm], ReLU per block
    for k in range(num_convs):
        for tv, d2 in (("classification", "cls"), ("regression", "bbox")):
            rules.append((rf"^head\.{tv}_head\.conv\.{k}\.0\.(weight|bias)$", rf"head.{d2}_subnet.{k * per_block}.\1"))
            if norm:
                rules.append((rf"^head\.{tv}_head\.conv\.{k}\.1\.(\w+)$", rf"head.{d2}_subnet.{k * per_block + 1}.\1"))
    return [(re.compile(pattern), repl) for pattern, repl in rules]


def d2_param_name(
    tv_name: str,
    rules: list[tuple[re.Pattern[str], str]],
    head_convs: int,
    conv_fc_head: bool,
    fpn_first_level: int = 2,
) -> str:
    """The detectron2 name of one torchvision-engine parameter (ModelError if it has none)."""
    m = re.match(r"^backbone\.body\.layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)$", tv_name)
    if m:
        stage, block, kind, index, leaf = m.groups()
        norm = ".norm" if kind == "bn" else ""
        return f"backbone.bottom_up.res{int(stage) + 1}.{block}.conv{index}{norm}.{leaf}"
    m = re.match(r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)$", tv_name)
    if m:
        stage, block, part, leaf = m.groups()
        norm = ".norm" if part == "1" else ""
        return f"backbone.bottom_up.res{int(stage) + 1}.{block}.shortcut{norm}.{leaf}"
    m = re.match(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.0\.(weight|bias)$", tv_name)
    if m:
        kind, index, leaf = m.groups()
        return f"backbone.fpn_{'lateral' if kind == 'inner' else 'output'}{int(index) + fpn_first_level}.{leaf}"
    if conv_fc_head:
        m = re.match(r"^roi_heads\.box_head\.(\d+)\.(weight|bias)$", tv_name)
        if m and int(m.group(1)) > head_convs:  # Linear layers after the Flatten, every other module
            return f"roi_heads.box_head.fc{(int(m.group(1)) - head_convs - 1) // 2 + 1}.{m.group(2)}"
    for pattern, repl in rules:
        if pattern.match(tv_name):
            return pattern.sub(repl, tv_name)
    raise ModelError(f"torchvision parameter {tv_name!r} has no detectron2 equivalent in the converter")


def _reference(cfg: CfgNode) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The torchvision engine's state dict for ``cfg`` and its name map torchvision -> detectron2."""
    if is_retinanet(cfg):
        r = cfg.MODEL.RETINANET
        rules = _retinanet_rules(int(r.NUM_CONVS), bool(r.NORM))
        state = {
            k: v for k, v in TorchvisionRetinaNet(cfg).state_dict().items() if not k.endswith("num_batches_tracked")
        }
        return state, {k: d2_param_name(k, rules, 0, False, fpn_first_level=3) for k in state}
    model = TorchvisionRCNN(cfg)
    h = cfg.MODEL.ROI_BOX_HEAD
    head_convs = int(h.NUM_CONV)
    conv_fc_head = not (head_convs == 0 and int(h.NUM_FC) == 2)
    rules = tv_to_d2_rules(len(cfg.MODEL.RPN.CONV_DIMS), head_convs)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    return state, {k: d2_param_name(k, rules, head_convs, conv_fc_head) for k in state}


def is_retinanet(cfg: CfgNode) -> bool:
    """Whether ``cfg`` describes a RetinaNet (``MODEL.META_ARCHITECTURE RetinaNet``)."""
    return cfg.MODEL.META_ARCHITECTURE == "RetinaNet"


def _refuse_unsupported(d2_state: Mapping[str, Any], num_classes: int, retinanet: bool = False) -> None:
    for key in d2_state:
        for pattern, what in UNSUPPORTED_PARTS[:-1] if retinanet else UNSUPPORTED_PARTS:
            if re.search(pattern, key):
                raise ModelError(
                    f"detectron2 parameter {key!r}: belongs to {what}, which the torchvision engine does not "
                    "build; expected a Faster R-CNN ResNet-FPN (StandardROIHeads, FastRCNNConvFCHead without norm)"
                )
    bbox = d2_state.get("roi_heads.box_predictor.bbox_pred.weight")
    if bbox is not None and num_classes > 1 and bbox.shape[0] == 4:
        raise ModelError(
            "detectron2 parameter 'roi_heads.box_predictor.bbox_pred.weight': 4 outputs, i.e. class-agnostic box "
            f"regression (MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG); expected {num_classes * 4} (class-specific), "
            "the only layout the torchvision engine builds"
        )


def _check_pixel_stats(d2_state: Mapping[str, Tensor], cfg: CfgNode) -> None:
    """Old detectron2 checkpoints store pixel_mean/std: they must agree with the config."""
    for key in ("pixel_mean", "pixel_std"):
        if key in d2_state:
            stored = torch.as_tensor(d2_state[key]).flatten().double()
            expected = torch.tensor(list(cfg.MODEL[key.upper()]), dtype=torch.float64)
            if stored.shape != expected.shape or not torch.allclose(stored, expected, atol=1e-3):
                raise ConfigError(
                    f"MODEL.{key.upper()}: {expected.tolist()} differs from the checkpoint's {key} "
                    f"{stored.tolist()}; expected the values the detectron2 model was trained with"
                )


def _shape_error(name: str, found: tuple[int, ...], expected: tuple[int, ...], cfg: CfgNode) -> ModelError:
    return ModelError(
        f"parameter {name!r}: shape {found}; expected {expected} for MODEL.RESNETS.DEPTH "
        f"{cfg.MODEL.RESNETS.DEPTH}, MODEL.ROI_HEADS.NUM_CLASSES {cfg.MODEL.ROI_HEADS.NUM_CLASSES}, "
        f"MODEL.FPN.OUT_CHANNELS {cfg.MODEL.FPN.OUT_CHANNELS} (set them to the checkpoint's model)"
    )


def _check_names(what: str, missing: list[str], extra: list[str]) -> None:
    if missing or extra:
        parts = []
        if missing:
            parts.append(format_listing("missing parameters", sorted(missing)))
        if extra:
            parts.append(format_listing("parameters without a counterpart", sorted(extra)))
        raise ModelError(
            f"{what}: {'; '.join(parts)}; expected the parameters of the Faster R-CNN ResNet-FPN the config "
            "describes (check MODEL.RESNETS.DEPTH, MODEL.ROI_BOX_HEAD.NUM_CONV/NUM_FC, MODEL.RPN.CONV_DIMS)"
        )


def d2_to_tv_state_dict(d2_state: Mapping[str, Any], cfg: CfgNode) -> dict[str, Tensor]:
    """A detectron2 Faster R-CNN ResNet-FPN state dict -> the torchvision engine's state dict for ``cfg``.

    Every detectron2 parameter must have a counterpart and every torchvision parameter a source (ModelError
    listing the names otherwise); values are copied, except the stem conv's channel order and the box
    predictor's class layout (see the module doc)."""
    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    _refuse_unsupported(d2_state, num_classes, retinanet=is_retinanet(cfg))
    _check_pixel_stats(d2_state, cfg)
    reference, names = _reference(cfg)
    source = {
        k: torch.as_tensor(v)
        for k, v in d2_state.items()
        if not k.endswith("num_batches_tracked") and not any(re.search(p, k) for p in _D2_IGNORED)
    }
    _check_names(
        "detectron2 state dict",
        [names[k] for k in reference if names[k] not in source],
        sorted(set(source) - set(names.values())),
    )
    out: dict[str, Tensor] = {}
    for tv_name, ref in reference.items():
        value = source[names[tv_name]].detach().clone()
        if tv_name == STEM_CONV and cfg.INPUT.FORMAT == "BGR":
            value = value.flip(1)  # input channels BGR -> RGB
        elif tv_name.startswith(CLS_SCORE):
            value = torch.cat([value[-1:], value[:-1]])  # background last -> first
        elif tv_name.startswith(BBOX_PRED):
            value = torch.cat([value.new_zeros((4, *value.shape[1:])), value])  # + background's (unused) deltas
        if tuple(value.shape) != tuple(ref.shape):
            raise _shape_error(names[tv_name], tuple(source[names[tv_name]].shape), _d2_shape(tv_name, ref), cfg)
        out[tv_name] = value.to(ref.dtype)
    return out


def _d2_shape(tv_name: str, ref: Tensor) -> tuple[int, ...]:
    shape = tuple(ref.shape)
    return (shape[0] - 4, *shape[1:]) if tv_name.startswith(BBOX_PRED) else shape


def tv_to_d2_state_dict(tv_state: Mapping[str, Tensor], cfg: CfgNode) -> dict[str, Tensor]:
    """The torchvision engine's state dict -> detectron2's names and layout (the inverse of
    :func:`d2_to_tv_state_dict`; background's box deltas, unused by both, are dropped)."""
    reference, names = _reference(cfg)
    source = {k: v for k, v in tv_state.items() if not k.endswith("num_batches_tracked")}
    _check_names("torchvision state dict", sorted(set(reference) - set(source)), sorted(set(source) - set(reference)))
    out: dict[str, Tensor] = {}
    for tv_name, ref in reference.items():
        value = torch.as_tensor(source[tv_name]).detach().clone()
        if tuple(value.shape) != tuple(ref.shape):
            raise _shape_error(tv_name, tuple(value.shape), tuple(ref.shape), cfg)
        if tv_name == STEM_CONV and cfg.INPUT.FORMAT == "BGR":
            value = value.flip(1)  # RGB -> BGR
        elif tv_name.startswith(CLS_SCORE):
            value = torch.cat([value[1:], value[:1]])  # background first -> last
        elif tv_name.startswith(BBOX_PRED):
            value = value[4:]
        out[names[tv_name]] = value
    return out


def load_d2_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The model state dict of a detectron2 checkpoint: a ``.pth`` written by detectron2's checkpointer
    (``{"model": ...}``) or a model-zoo ``.pkl`` (``{"model": {name: ndarray}}``). Caffe2 (Detectron 1)
    blobs are refused: detectron2's own checkpointer renames those."""
    path = Path(path)
    if path.suffix == ".pkl":
        if not path.is_file():
            raise ModelError(f"{path}: checkpoint file not found")
        try:
            with path.open("rb") as f:
                obj = NumpyUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise ModelError(f"{path}: cannot be read as a detectron2 .pkl checkpoint ({e})") from None
        if not isinstance(obj, Mapping):
            raise ModelError(f"{path}: holds a {type(obj).__name__}; expected a dict with a 'model' entry")
        state = obj.get("model", obj.get("blobs"))
        if not isinstance(state, Mapping):
            raise ModelError(f"{path}: no 'model' entry; found keys {sorted(map(str, obj))[:10]}")
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items() if isinstance(v, np.ndarray)}
    else:
        state = dict(read_checkpoint(path)["model"])
    c2 = [k for k in state if _C2_NAME.match(k)]
    if c2:
        raise ModelError(
            f"{path}: parameter {c2[0]!r} has a Caffe2 (Detectron 1) name; expected detectron2 names "
            "(backbone.bottom_up..., a model_final.pth or a detectron2 model-zoo model_final_*.pkl)"
        )
    return state


class NumpyUnpickler(pickle.Unpickler):
    """Unpickler for model-zoo .pkl files: numpy arrays and plain values only, so loading runs no code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only the numpy/collections names an array dict needs."""
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}; expected numpy arrays only")


def convert_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, direction: str = "d2-to-tv", cfg: CfgNode | None = None
) -> Path:
    """Convert the checkpoint ``src`` and write ``dst``; returns ``dst``.

    ``d2-to-tv``: a detectron2 ``model_final.pth``/``.pkl`` -> a meddet checkpoint for ``MODEL.ENGINE
    torchvision`` (loadable with ``MODEL.WEIGHTS``). ``tv-to-d2``: a meddet torchvision checkpoint -> a
    ``{"model": state_dict}`` file that detectron2's ``DetectionCheckpointer`` loads. ``cfg`` is the model's
    config (detectron2 keys: depth, classes, ``INPUT.FORMAT``, pixel statistics ...); the defaults
    (:func:`~meddet.config.get_fpn_cfg`) describe an R50-FPN."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction: {direction!r}; expected one of {', '.join(DIRECTIONS)}")
    cfg = cfg if cfg is not None else get_fpn_cfg()
    dst = Path(dst)
    if direction == "d2-to-tv":
        state = d2_to_tv_state_dict(load_d2_state_dict(src), cfg)
        model = _tv_model(cfg)
        model.load_state_dict(state, strict=False)  # num_batches_tracked keeps the model's own
        save_checkpoint(dst, model, extra={"converted_from": f"detectron2:{Path(src).name}"})
    else:
        state = tv_to_d2_state_dict(read_checkpoint(src)["model"], cfg)
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": state, "__author__": "meddet"}, dst)
    logger.info("Converted %s (%s) -> %s: %d parameters", src, direction, dst, len(state))
    return dst


def _tv_model(cfg: CfgNode) -> torch.nn.Module:
    """The torchvision-engine model ``cfg`` describes (Faster R-CNN or RetinaNet), random weights."""
    if is_retinanet(cfg):
        return TorchvisionRetinaNet(cfg)
    return TorchvisionRCNN(cfg)
