"""The detectron2 engine: detectron2's own ``GeneralizedRCNN`` built from meddet's config and speaking
meddet's model interface, so meddet's Trainer, evaluator and Predictor use it unchanged.

- Config: the ``MODEL.*``, ``INPUT.*`` and ``TEST.DETECTIONS_PER_IMAGE`` keys detectron2 knows are copied
  into a detectron2 config under the same names; meddet's own keys (``MODEL.ENGINE``,
  ``MODEL.ROI_HEADS.CLASS_WEIGHTS``, ...) are not passed on. ``MODEL.ROI_HEADS.CLASS_WEIGHTS`` is applied
  by a FastRCNNOutputLayers subclass with the same weighted cross-entropy as the torchvision engine.
- Parameter names are detectron2's (``backbone.bottom_up.*``, ``proposal_generator.*``, ``roi_heads.*``):
  meddet checkpoints of this engine are detectron2 state dicts, and detectron2 checkpoints (model-zoo
  ``.pkl``, ``model_final.pth``) load through detectron2's ``DetectionCheckpointer``
  (:func:`load_detectron2_weights`), followed by meddet's check that every parameter was filled.
- Training needs detectron2's ``EventStorage``: the model opens one per step when the caller has none,
  so meddet's loop needs nothing detectron2-specific, and keeps the statistics detectron2 logs into it
  (``fast_rcnn/cls_accuracy``, ``rpn/num_pos_anchors``, ...) as ``training_stats`` for meddet's trainer.
- Explanations: ``explain_inputs``, ``feature_maps`` and ``box_class_logits`` are the interface
  :mod:`meddet.xai` uses on both engines (FPN maps ``p2``..``p6``, box logits with the background last).

Importing this module imports detectron2; :mod:`meddet.modeling.build` imports it only when the
detectron2 engine is selected.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode as D2CfgNode
from detectron2.config import get_cfg as get_d2_cfg
from detectron2.layers import cat
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, StandardROIHeads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage, get_event_storage
from torch import Tensor
from yacs.config import CfgNode

from meddet.errors import ModelError
from meddet.modeling.checkpoint import architecture_of, check_loaded, load_weights
from meddet.modeling.retinanet import retinanet_num_classes
from meddet.modeling.torchvision_engine import (
    check_batch,
    check_image,
    check_target,
    class_weights,
    weighted_cross_entropy,
)

logger = logging.getLogger(__name__)

ENGINE_NAME = "detectron2"
# Sections whose keys detectron2 shares with meddet's config (meddet-only keys in them are left out).
_SHARED_SECTIONS = ("MODEL", "INPUT")


def _copy_known(src: CfgNode, dst: D2CfgNode, prefix: str, left_out: list[str]) -> None:
    """Copy every key of ``src`` that ``dst`` has (recursively); record the others in ``left_out``."""
    for key, value in src.items():
        name = f"{prefix}.{key}"
        if key not in dst:
            left_out.append(name)
        elif isinstance(value, CfgNode) != isinstance(dst[key], CfgNode):
            raise ModelError(
                f"{name}: a {'section' if isinstance(value, CfgNode) else 'value'} in meddet's config but a "
                f"{'section' if isinstance(dst[key], CfgNode) else 'value'} in detectron2's; expected the same"
            )
        elif isinstance(value, CfgNode):
            _copy_known(value, dst[key], name, left_out)
        elif isinstance(dst[key], tuple) and isinstance(value, list):
            dst[key] = tuple(value)
        elif isinstance(dst[key], list) and isinstance(value, tuple):
            dst[key] = list(value)
        else:
            dst[key] = value


def to_detectron2_cfg(cfg: CfgNode) -> D2CfgNode:
    """detectron2's config for the model ``cfg`` describes: detectron2's defaults overridden by every
    ``MODEL.*``/``INPUT.*`` key detectron2 also has, and ``TEST.DETECTIONS_PER_IMAGE``. The model is built
    on the CPU (``build_model`` moves it to ``MODEL.DEVICE``); ``VIS_PERIOD`` is 0 (meddet's loop keeps no
    detectron2 event storage to draw into). ResNet-18/34 get ``RES2_OUT_CHANNELS`` 64, the only width
    detectron2 accepts for them (the torchvision engine derives it from the depth)."""
    d2 = get_d2_cfg()
    left_out: list[str] = []
    for section in _SHARED_SECTIONS:
        _copy_known(cfg[section], d2[section], section, left_out)
    d2.TEST.DETECTIONS_PER_IMAGE = int(cfg.TEST.DETECTIONS_PER_IMAGE)
    d2.MODEL.DEVICE = "cpu"
    d2.VIS_PERIOD = 0
    if int(d2.MODEL.RESNETS.DEPTH) in (18, 34) and int(d2.MODEL.RESNETS.RES2_OUT_CHANNELS) != 64:
        logger.debug(
            "MODEL.RESNETS.RES2_OUT_CHANNELS %d -> 64 for ResNet-%d",
            d2.MODEL.RESNETS.RES2_OUT_CHANNELS,
            d2.MODEL.RESNETS.DEPTH,
        )
        d2.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    logger.debug("Keys detectron2 does not know, not passed on: %s", ", ".join(left_out) or "none")
    d2.freeze()
    return d2


class WeightedFastRCNNOutputLayers(FastRCNNOutputLayers):
    """detectron2's box predictor whose classification loss weights each ROI by its class
    (``MODEL.ROI_HEADS.CLASS_WEIGHTS``; background, detectron2's last column, weighs 1): the same
    :func:`~meddet.modeling.torchvision_engine.weighted_cross_entropy` as the torchvision engine.
    Everything else, box regression loss included, is detectron2's."""

    def set_class_weights(self, weights: Sequence[float]) -> None:
        """Use ``weights`` (one per foreground class, in class-index order) in the classification loss."""
        if len(weights) != self.num_classes:
            raise ModelError(
                f"MODEL.ROI_HEADS.CLASS_WEIGHTS: {list(weights)} has {len(weights)} values; expected "
                f"{self.num_classes}, one per class"
            )
        # not persistent: the weights come from the config, so checkpoints stay detectron2 state dicts
        self.register_buffer("class_weights", torch.tensor([*map(float, weights), 1.0]), persistent=False)

    def losses(self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]) -> dict[str, Tensor]:
        """detectron2's losses with ``loss_cls`` replaced by the class-weighted cross-entropy."""
        losses = super().losses(predictions, proposals)
        scores = predictions[0]
        gt_classes = cat([p.gt_classes for p in proposals]) if proposals else scores.new_zeros(0, dtype=torch.long)
        loss_cls = weighted_cross_entropy(scores, gt_classes, self.class_weights)
        losses["loss_cls"] = loss_cls * self.loss_weight.get("loss_cls", 1.0)
        return losses


def _meddet_forward(model: Any, d2_forward: Any, batched_inputs: Sequence[Mapping[str, Any]]) -> Any:
    """meddet's model interface around a detectron2 meta-architecture's ``forward`` (``d2_forward``): inputs
    checked as by the torchvision engine, an EventStorage per step when the caller has none (its statistics
    kept as ``model.training_stats``), detections as plain dicts."""
    check_batch(batched_inputs)
    inputs = []
    for i, x in enumerate(batched_inputs):
        image = check_image(i, x)
        h, w = image.shape[-2:]
        item: dict[str, Any] = {"image": image, "height": int(x.get("height", h)), "width": int(x.get("width", w))}
        if model.training:
            boxes, classes = check_target(i, x, image, model.num_classes)
            item["instances"] = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=classes)
        inputs.append(item)
    if model.training:
        try:
            get_event_storage()
        except AssertionError:  # no caller's EventStorage: one for this step, its statistics kept
            with EventStorage() as storage:
                losses = dict(d2_forward(inputs))
            # detectron2's training statistics (fast_rcnn/*, roi_head/*, rpn/*), written by meddet's trainer
            model.training_stats = {k: v[0] for k, v in storage.latest().items()}
            return losses
        return dict(d2_forward(inputs))  # the caller's storage receives the statistics
    return [
        {"boxes": r.pred_boxes.tensor, "scores": r.scores, "classes": r.pred_classes}
        for r in (out["instances"] for out in d2_forward(inputs))
    ]


class Detectron2RCNN(GeneralizedRCNN):
    """detectron2's ``GeneralizedRCNN`` with meddet's batch interface.

    ``model(batch)`` with ``batch`` a list of dicts ``{"image": CHW tensor (0..255, INPUT.FORMAT order),
    "height", "width", "boxes" (N,4 xyxy in the tensor's pixels), "classes" (N,) in 0..K-1}``:
    in training mode returns ``{"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}``; in eval mode
    one dict per image ``{"boxes" (xyxy in the original height x width), "scores", "classes" (0..K-1)}``.
    Inputs are checked as by the torchvision engine (DataError naming the item). ``d2_cfg`` is the
    detectron2 config the model was built from (:func:`to_detectron2_cfg`).
    """

    engine = ENGINE_NAME

    def __init__(self, cfg: CfgNode) -> None:
        if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
            raise ModelError(
                f"MODEL.META_ARCHITECTURE: {cfg.MODEL.META_ARCHITECTURE!r} is not supported by meddet's detectron2 "
                "engine; expected 'GeneralizedRCNN' or 'RetinaNet'"
            )
        weights = class_weights(cfg)
        d2_cfg = to_detectron2_cfg(cfg)
        try:
            super().__init__(**GeneralizedRCNN.from_config(d2_cfg))
        except (AssertionError, KeyError, ValueError, TypeError, NotImplementedError) as e:
            raise ModelError(
                f"detectron2 cannot build the model the config describes ({type(e).__name__}: {e}); expected "
                "MODEL.* values detectron2 accepts"
            ) from e
        if weights is not None:
            if not isinstance(self.roi_heads, StandardROIHeads) or type(self.roi_heads.box_predictor) is not (
                FastRCNNOutputLayers
            ):
                raise ModelError(
                    f"MODEL.ROI_HEADS.CLASS_WEIGHTS: {weights} needs MODEL.ROI_HEADS.NAME StandardROIHeads (one "
                    f"FastRCNNOutputLayers box predictor); found {cfg.MODEL.ROI_HEADS.NAME}"
                )
            predictor = WeightedFastRCNNOutputLayers(d2_cfg, self.roi_heads.box_head.output_shape)
            predictor.set_class_weights(weights)
            self.roi_heads.box_predictor = predictor
        self.num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        self.architecture = architecture_of(cfg)  # stored in every checkpoint (meddet.modeling.checkpoint)
        self.d2_cfg = d2_cfg

    def forward(self, batched_inputs: Sequence[Mapping[str, Any]]) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training mode) or detections in original-image pixels (eval mode); see the class doc."""
        return _meddet_forward(self, super().forward, batched_inputs)

    # ---------------------------------------------------------------- explanation interface (meddet.xai)
    def explain_inputs(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """One CHW image (0..255, INPUT.FORMAT order) as the backbone sees it (detectron2's
        ``preprocess_image``): ``(1, 3, H, W)`` normalized and padded to the backbone's size divisibility,
        on the model's device, and the ``(height, width)`` of the image inside that tensor."""
        images = self.preprocess_image([{"image": check_image(0, {"image": image})}])
        h, w = images.image_sizes[0]
        return images.tensor, (int(h), int(w))

    def feature_maps(self, padded: Tensor) -> OrderedDict[str, Tensor]:
        """The backbone's outputs for :meth:`explain_inputs`'s tensor, finest first (FPN: ``"p2"`` .. ``"p6"``)."""
        return OrderedDict(self.backbone(padded))  # detectron2's FPN returns them finest first

    def box_class_logits(self, features: Mapping[str, Tensor], boxes: Tensor) -> Tensor:
        """The box classifier's logits ``(N, K + 1)`` for ``boxes`` (N, 4 xyxy in the pixels of
        :meth:`explain_inputs`'s tensor) pooled from ``features`` (:meth:`feature_maps`) as in inference:
        columns ``0..K-1`` are the classes in class-index order, column ``K`` the background (detectron2's
        own order), so the softmax over a row gives the class scores."""
        heads = self.roi_heads
        if not isinstance(heads, StandardROIHeads) or not isinstance(heads.box_predictor, FastRCNNOutputLayers):
            raise ModelError(
                f"MODEL.ROI_HEADS.NAME: {type(heads).__name__} has no single box classifier to explain; expected "
                "StandardROIHeads (one FastRCNNOutputLayers box predictor)"
            )
        pooled = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [Boxes(boxes.to(self.device, torch.float32))]
        )
        logits, _ = heads.box_predictor(heads.box_head(pooled))
        return logits


class Detectron2RetinaNet(RetinaNet):
    """detectron2's own ``RetinaNet`` (``MODEL.META_ARCHITECTURE RetinaNet``) with meddet's batch interface:
    ``{"loss_cls", "loss_box_reg"}`` in training mode, per image ``{"boxes", "scores", "classes"}`` in
    original-image pixels in eval mode. No explanation interface (a one-stage detector has no box classifier;
    :mod:`meddet.xai` says so)."""

    engine = ENGINE_NAME

    def __init__(self, cfg: CfgNode) -> None:
        retinanet_num_classes(cfg)  # ConfigError before anything is built
        d2_cfg = to_detectron2_cfg(cfg)
        try:
            super().__init__(**RetinaNet.from_config(d2_cfg))
        except (AssertionError, KeyError, ValueError, TypeError, NotImplementedError) as e:
            raise ModelError(
                f"detectron2 cannot build the RetinaNet the config describes ({type(e).__name__}: {e}); expected "
                "MODEL.* values detectron2 accepts"
            ) from e
        self.num_classes = retinanet_num_classes(cfg)
        self.prior_prob = float(cfg.MODEL.RETINANET.PRIOR_PROB)  # re-initialising head.cls_score (checkpoint.py)
        self.architecture = architecture_of(cfg)
        self.d2_cfg = d2_cfg

    def forward(self, batched_inputs: Sequence[Mapping[str, Any]]) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training mode) or detections in original-image pixels (eval mode)."""
        return _meddet_forward(self, super().forward, batched_inputs)


def build_detectron2_model(cfg: CfgNode) -> Detectron2RCNN | Detectron2RetinaNet:
    """Build detectron2's GeneralizedRCNN (or RetinaNet, ``MODEL.META_ARCHITECTURE RetinaNet``) described by
    ``cfg`` behind meddet's model interface (random init, on the CPU; MODEL.WEIGHTS is loaded by
    :func:`load_detectron2_weights`)."""
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        model: Any = Detectron2RetinaNet(cfg)
        logger.info(
            "Built detectron2 RetinaNet (R%d): %d classes, %.2fM parameters",
            cfg.MODEL.RESNETS.DEPTH,
            model.num_classes,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
        return model
    model = Detectron2RCNN(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "Built detectron2 %s (%s, %s, R%d): %d classes, %.2fM parameters (%.2fM trainable)",
        cfg.MODEL.META_ARCHITECTURE,
        cfg.MODEL.BACKBONE.NAME,
        cfg.MODEL.ROI_HEADS.NAME,
        cfg.MODEL.RESNETS.DEPTH,
        model.num_classes,
        total / 1e6,
        trainable / 1e6,
    )
    return model


def _is_meddet_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint written by meddet (a torch file with a ``meddet`` entry)."""
    if path.suffix == ".pkl":
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything torch cannot read safely is left to DetectionCheckpointer
        return False
    return isinstance(obj, Mapping) and isinstance(obj.get("meddet"), Mapping)


class _RecordingCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` that keeps what its non-strict load left out (``incompatible``:
    missing and unexpected keys, keys skipped for their shape), so meddet can refuse a load that filled
    too little instead of only logging warnings."""

    incompatible: Any = None

    def _load_model(self, checkpoint: Any) -> Any:
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_detectron2_weights(model: Detectron2RCNN, path: str | os.PathLike) -> dict[str, Any]:
    """Load ``path`` into a detectron2-engine model and return the checkpoint's meddet metadata (empty if none).

    A meddet checkpoint (written by this engine's training) loads strictly through
    :func:`meddet.modeling.checkpoint.load_weights`. Anything else (a model-zoo ``.pkl``, a
    ``model_final.pth`` written by detectron2, ``convert_checkpoint(..., "tv-to-d2")`` output, an ImageNet
    backbone with Caffe2 names) loads through detectron2's ``DetectionCheckpointer`` and its name matching,
    then :func:`meddet.modeling.checkpoint.check_loaded` refuses the load unless every parameter was filled,
    except the box predictor when only the class count differs (fresh predictor) and a backbone-only
    checkpoint (ImageNet initialisation). detectron2's loader unpickles arbitrary objects: load only files
    you trust."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint file not found")
    if _is_meddet_checkpoint(path):
        return load_weights(model, path)
    checkpointer = _RecordingCheckpointer(model)
    try:
        checkpointer.load(str(path))
    except Exception as e:  # noqa: BLE001 - pickle, torch and fvcore fail with many exception types
        raise ModelError(
            f"{path}: detectron2's DetectionCheckpointer cannot load it ({type(e).__name__}: {e}); expected a "
            "detectron2 checkpoint (.pth/.pkl) or a meddet checkpoint"
        ) from e
    incompatible = checkpointer.incompatible
    missing = list(getattr(incompatible, "missing_keys", []) or [])
    shapes = [item[0] for item in getattr(incompatible, "incorrect_shapes", []) or []]
    how = check_loaded(path, model, {"model": {}}, missing, shapes, allow_backbone_only=True)
    logger.info(
        "Loaded model weights from %s (detectron2 DetectionCheckpointer, %s)",
        path,
        {"full": "every parameter filled", "class_change": "box predictor re-initialised", "backbone": "backbone only"}[
            how
        ],
    )
    return {}
