"""The torchvision engine's one-stage detector: torchvision's RetinaNet built from detectron2's config keys
(``MODEL.META_ARCHITECTURE RetinaNet``, ``MODEL.RETINANET.*``, anchors from ``MODEL.ANCHOR_GENERATOR``) and
speaking meddet's model interface (see :class:`meddet.modeling.torchvision_engine.TorchvisionRCNN`).

detectron2's numerics are reproduced where torchvision differs:

- backbone: ResNet res3-res5 + FPN, P6 from res5 and P7 from P6 (detectron2's
  ``build_retinanet_resnet_fpn_backbone``; torchvision's ``LastLevelP6P7`` switches to P5 when the channel
  counts happen to agree), anchors with detectron2's fixed strides 8..128 (:class:`D2AnchorGenerator`);
- head: ``MODEL.RETINANET.NUM_CONVS`` convs per subnet (torchvision: always 4), ``PRIOR_PROB`` bias;
- losses (detectron2's ``RetinaNet.losses``): sigmoid focal loss (``FOCAL_LOSS_ALPHA/GAMMA``) over the
  non-ignored anchors and smooth-L1 (``SMOOTH_L1_LOSS_BETA``, 0: L1) over the foreground anchors, both summed
  over the batch and divided by an exponential moving average of the number of foreground anchors
  (``loss_normalizer``, start 100, momentum 0.9); torchvision divides per image by that image's count;
- inference (detectron2's ``_decode_multi_level_predictions``): per level, scores above
  ``SCORE_THRESH_TEST``, the top ``TOPK_CANDIDATES_TEST``, boxes decoded with ``BBOX_REG_WEIGHTS``, class-wise
  NMS (``NMS_THRESH_TEST``) over all levels *without* clipping first (torchvision clips before NMS), the top
  ``TEST.DETECTIONS_PER_IMAGE``; then ``detector_postprocess``: scale to the original size, clip, drop empty boxes.

Parameter names are torchvision's (``head.classification_head.conv.*``, ``cls_logits``,
``head.regression_head.conv.*``, ``bbox_reg``); :mod:`meddet.modeling.d2_convert` maps them to detectron2's.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.ops import batched_nms, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import Conv2dNormActivation
from yacs.config import CfgNode

from meddet.errors import ConfigError, ModelError
from meddet.modeling.checkpoint import architecture_of
from meddet.modeling.torchvision_engine import (
    ENGINE_NAME,
    D2AnchorGenerator,
    MeddetRCNNTransform,
    _build_backbone,
    _expect,
    _norm_layer,
    _per_level,
    box_regression_loss,
    check_batch,
    check_image,
    check_target,
    smooth_l1_beta,
)

logger = logging.getLogger(__name__)

META_ARCHITECTURE = "RetinaNet"
_FEATURES = ["res3", "res4", "res5"]
_LEVELS = ["p3", "p4", "p5", "p6", "p7"]
_STRIDES = [8, 16, 32, 64, 128]
# torchvision FPN output name -> detectron2 name
_LEVEL_NAMES = {"0": "p3", "1": "p4", "2": "p5", "p6": "p6", "p7": "p7"}


def retinanet_num_classes(cfg: CfgNode) -> int:
    """``MODEL.RETINANET.NUM_CLASSES``, which must equal ``MODEL.ROI_HEADS.NUM_CLASSES`` (the class count the
    rest of meddet reads: data checks, bundles, predictors); ConfigError otherwise."""
    k = int(cfg.MODEL.RETINANET.NUM_CLASSES)
    if k < 1:
        raise ConfigError(f"MODEL.RETINANET.NUM_CLASSES: {k}; expected at least 1")
    if k != int(cfg.MODEL.ROI_HEADS.NUM_CLASSES):
        raise ConfigError(
            f"MODEL.RETINANET.NUM_CLASSES is {k} but MODEL.ROI_HEADS.NUM_CLASSES is "
            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}; expected the same class count in both (meddet reads "
            "ROI_HEADS.NUM_CLASSES for the data and the bundles, RetinaNet's head reads RETINANET.NUM_CLASSES)"
        )
    return k


def _check_retinanet(cfg: CfgNode) -> None:
    """Refuse detectron2 RetinaNet options the torchvision engine cannot build."""
    m = cfg.MODEL
    r = m.RETINANET
    _expect("MODEL.BACKBONE.NAME", m.BACKBONE.NAME, ["build_retinanet_resnet_fpn_backbone"])
    _expect("MODEL.RESNETS.OUT_FEATURES", list(m.RESNETS.OUT_FEATURES), [_FEATURES])
    _expect("MODEL.FPN.IN_FEATURES", list(m.FPN.IN_FEATURES), [_FEATURES])
    _expect("MODEL.RETINANET.IN_FEATURES", list(r.IN_FEATURES), [_LEVELS])
    _expect("MODEL.FPN.FUSE_TYPE", m.FPN.FUSE_TYPE, ["sum"])
    _expect("MODEL.RESNETS.STEM_OUT_CHANNELS", m.RESNETS.STEM_OUT_CHANNELS, [64])
    _expect("MODEL.RESNETS.RES5_DILATION", m.RESNETS.RES5_DILATION, [1])
    if any(m.RESNETS.DEFORM_ON_PER_STAGE):
        raise ModelError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable convolutions are not built by the "
            "torchvision engine; expected all False"
        )
    _expect("MODEL.ANCHOR_GENERATOR.NAME", m.ANCHOR_GENERATOR.NAME, ["DefaultAnchorGenerator"])
    _expect("MODEL.ANCHOR_GENERATOR.OFFSET", m.ANCHOR_GENERATOR.OFFSET, [0.0])
    _expect("MODEL.RETINANET.IOU_LABELS", list(r.IOU_LABELS), [[0, -1, 1]])
    _expect("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", r.BBOX_REG_LOSS_TYPE, ["smooth_l1"])
    _expect("INPUT.FORMAT", cfg.INPUT.FORMAT, ["BGR", "RGB"])
    thresholds = [float(t) for t in r.IOU_THRESHOLDS]
    if len(thresholds) != 2 or not 0 <= thresholds[0] <= thresholds[1] <= 1:
        raise ModelError(
            f"MODEL.RETINANET.IOU_THRESHOLDS: {list(r.IOU_THRESHOLDS)}; expected [background below, "
            "foreground from], two IoUs in 0..1 in increasing order (with IOU_LABELS [0, -1, 1])"
        )
    if not 0 < float(r.PRIOR_PROB) < 1:
        raise ModelError(f"MODEL.RETINANET.PRIOR_PROB: {r.PRIOR_PROB}; expected a probability in (0, 1)")
    if int(r.NUM_CONVS) < 0:
        raise ModelError(f"MODEL.RETINANET.NUM_CONVS: {r.NUM_CONVS}; expected 0 or more")
    if float(r.FOCAL_LOSS_ALPHA) > 1 or float(r.FOCAL_LOSS_GAMMA) < 0:
        raise ModelError(
            f"MODEL.RETINANET.FOCAL_LOSS_ALPHA/GAMMA: {r.FOCAL_LOSS_ALPHA}/{r.FOCAL_LOSS_GAMMA}; "
            "expected alpha <= 1 (negative: no weighting) and gamma >= 0"
        )
    weights = tuple(float(w) for w in r.BBOX_REG_WEIGHTS)
    if len(weights) != 4 or min(weights) <= 0:
        raise ModelError(f"MODEL.RETINANET.BBOX_REG_WEIGHTS: {list(r.BBOX_REG_WEIGHTS)}; expected 4 values > 0")
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        if len(list(m[key])) != 3:
            raise ModelError(f"MODEL.{key}: {list(m[key])}; expected 3 values (one per channel)")
    if min(m.PIXEL_STD) <= 0:
        raise ModelError(f"MODEL.PIXEL_STD: {list(m.PIXEL_STD)} has a value <= 0; expected positive values")


def _subnet(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    """detectron2's RetinaNet subnet: ``num_convs`` x (3x3 conv with bias, optional norm, ReLU), weights
    N(0, 0.01) (torchvision's own head drops the bias before a norm; detectron2 keeps it)."""
    norm_layer = _norm_layer("MODEL.RETINANET.NORM", norm) if norm else None
    convs = nn.Sequential(
        *[Conv2dNormActivation(channels, channels, norm_layer=norm_layer, bias=True) for _ in range(num_convs)]
    )
    for layer in convs.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0)
    return convs


class TorchvisionRetinaNet(RetinaNet):
    """torchvision RetinaNet with meddet's batch interface (see the module doc): in training mode
    ``{"loss_cls", "loss_box_reg"}``; in eval mode per image ``{"boxes" (xyxy in the original height x width),
    "scores", "classes" (0..K-1)}``."""

    engine = ENGINE_NAME

    def __init__(self, cfg: CfgNode) -> None:
        _check_retinanet(cfg)
        m = cfg.MODEL
        r = m.RETINANET
        num_classes = retinanet_num_classes(cfg)
        c5 = 512 * (4 if int(m.RESNETS.DEPTH) >= 50 else 1)
        channels = int(m.FPN.OUT_CHANNELS)
        top = LastLevelP6P7(c5, channels)
        top.use_P5 = False  # detectron2: P6 from res5 whatever the channel counts
        backbone = _build_backbone(cfg, first_stage=2, extra_blocks=top)
        a = m.ANCHOR_GENERATOR
        sizes = _per_level("MODEL.ANCHOR_GENERATOR.SIZES", a.SIZES, 5, _LEVELS)
        ratios = _per_level("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", a.ASPECT_RATIOS, 5, _LEVELS)
        if len({len(s) * len(q) for s, q in zip(sizes, ratios)}) != 1:
            raise ModelError(
                "MODEL.ANCHOR_GENERATOR.SIZES/ASPECT_RATIOS give a different number of anchors per "
                "level; RetinaNet's shared head needs the same number on every level"
            )
        anchors = D2AnchorGenerator(sizes, ratios, strides=_STRIDES)
        num_anchors = anchors.num_anchors_per_location()[0]
        head = RetinaNetHead(channels, num_anchors, num_classes)
        num_convs, norm = int(r.NUM_CONVS), str(r.NORM)
        head.classification_head.conv = _subnet(channels, num_convs, norm)
        head.regression_head.conv = _subnet(channels, num_convs, norm)
        cls = head.classification_head.cls_logits
        nn.init.normal_(cls.weight, std=0.01)
        nn.init.constant_(cls.bias, -math.log((1 - float(r.PRIOR_PROB)) / float(r.PRIOR_PROB)))
        nn.init.normal_(head.regression_head.bbox_reg.weight, std=0.01)
        nn.init.constant_(head.regression_head.bbox_reg.bias, 0)
        bg, fg = (float(t) for t in r.IOU_THRESHOLDS)
        super().__init__(
            backbone,
            num_classes,
            anchor_generator=anchors,
            head=head,
            score_thresh=float(r.SCORE_THRESH_TEST),
            nms_thresh=float(r.NMS_THRESH_TEST),
            detections_per_img=int(cfg.TEST.DETECTIONS_PER_IMAGE),
            fg_iou_thresh=fg,
            bg_iou_thresh=bg,
            topk_candidates=int(r.TOPK_CANDIDATES_TEST),
        )
        self.box_coder.weights = tuple(float(w) for w in r.BBOX_REG_WEIGHTS)
        flip = cfg.INPUT.FORMAT == "BGR"
        mean, std = list(m.PIXEL_MEAN), list(m.PIXEL_STD)
        if flip:
            mean, std = mean[::-1], std[::-1]
        self.transform = MeddetRCNNTransform(mean, std, flip_channels=flip)
        self.num_classes = num_classes
        self.focal_loss_alpha = float(r.FOCAL_LOSS_ALPHA)
        self.focal_loss_gamma = float(r.FOCAL_LOSS_GAMMA)
        self.smooth_l1_beta = smooth_l1_beta("MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", r.SMOOTH_L1_LOSS_BETA)
        self.num_convs = num_convs
        self.prior_prob = float(r.PRIOR_PROB)  # the class conv's bias init, again on a class change (checkpoint.py)
        self.architecture = architecture_of(cfg)
        self.input_format = cfg.INPUT.FORMAT
        self.training_stats: dict[str, float] = {}

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters; inputs are moved there."""
        return next(self.parameters()).device

    def forward(self, batched_inputs: Sequence[Mapping[str, Any]]) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training mode) or detections in original-image pixels (eval mode)."""
        check_batch(batched_inputs)
        device = self.device
        images = [check_image(i, x).to(device, non_blocking=True) for i, x in enumerate(batched_inputs)]
        targets = None
        if self.training:
            targets = []
            for i, x in enumerate(batched_inputs):
                boxes, classes = check_target(i, x, images[i], self.num_classes)
                targets.append({"boxes": boxes.to(device), "labels": classes.to(device)})
        image_list, _ = self.transform(images)
        features = list(self.backbone(image_list.tensors).values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(image_list, features)
        if self.training:
            return self.compute_loss(targets, head_outputs, anchors)
        per_level = [f.shape[-2] * f.shape[-1] * self.anchor_generator.num_anchors_per_location()[0] for f in features]
        cls = head_outputs["cls_logits"].split(per_level, dim=1)
        reg = head_outputs["bbox_regression"].split(per_level, dim=1)
        results = []
        for i, (img, x) in enumerate(zip(images, batched_inputs)):
            det = self._decode([c[i] for c in cls], [d[i] for d in reg], anchors[i].split(per_level))
            results.append(self._postprocess(det, img.shape[-2:], x))
        return results

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor]
    ) -> dict[str, Tensor]:
        """detectron2's RetinaNet losses (see the module doc)."""
        k = self.num_classes
        gt_labels, gt_deltas = [], []
        for target, anchors_i in zip(targets, anchors):
            if target["boxes"].numel() == 0:
                labels = torch.full((anchors_i.shape[0],), k, dtype=torch.int64, device=anchors_i.device)
                matched = torch.zeros_like(anchors_i)
            else:
                from torchvision.ops import box_iou

                idx = self.proposal_matcher(box_iou(target["boxes"], anchors_i))
                labels = target["labels"][idx.clamp(min=0)].clone()
                labels[idx == self.proposal_matcher.BELOW_LOW_THRESHOLD] = k
                labels[idx == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1
                matched = target["boxes"][idx.clamp(min=0)]
            gt_labels.append(labels)
            gt_deltas.append(self.box_coder.encode_single(matched, anchors_i))
        labels = torch.stack(gt_labels)
        valid = labels >= 0
        pos = valid & (labels != k)
        num_pos = int(pos.sum().item())
        self.training_stats = {"num_pos_anchors": num_pos / len(targets)}
        # detectron2's DenseDetector._ema_update: a plain attribute (not in the state dict), start 100
        self.loss_normalizer = getattr(self, "loss_normalizer", 100.0) * 0.9 + max(num_pos, 1) * 0.1
        cls_logits = head_outputs["cls_logits"]
        one_hot = F.one_hot(labels[valid], num_classes=k + 1)[:, :-1].to(cls_logits.dtype)
        loss_cls = sigmoid_focal_loss(
            cls_logits[valid], one_hot, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, reduction="sum"
        )
        deltas = torch.stack(gt_deltas)
        loss_box = box_regression_loss(
            head_outputs["bbox_regression"][pos], deltas[pos].to(cls_logits.dtype), self.smooth_l1_beta
        )
        return {"loss_cls": loss_cls / self.loss_normalizer, "loss_box_reg": loss_box / self.loss_normalizer}

    def _decode(self, logits: list[Tensor], deltas: list[Tensor], anchors: Sequence[Tensor]) -> dict[str, Tensor]:
        """detectron2's ``_decode_multi_level_predictions`` + class-wise NMS for one image."""
        all_boxes, all_scores, all_classes = [], [], []
        k = self.num_classes
        for logits_l, deltas_l, anchors_l in zip(logits, deltas, anchors):
            scores = logits_l.sigmoid().flatten()
            keep = scores > self.score_thresh
            scores = scores[keep]
            idx = torch.nonzero(keep).squeeze(1)
            n = min(self.topk_candidates, idx.numel())
            scores, order = scores.topk(n)
            idx = idx[order]
            anchor_idx, classes = idx // k, idx % k
            boxes = self.box_coder.decode_single(deltas_l[anchor_idx], anchors_l[anchor_idx])
            all_boxes.append(boxes)
            all_scores.append(scores)
            all_classes.append(classes)
        boxes, scores, classes = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_classes)
        keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep]}

    @staticmethod
    def _postprocess(det: dict[str, Tensor], size: Sequence[int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        """detectron2's detector_postprocess: scale to (height, width), clip, drop empty boxes."""
        in_h, in_w = int(size[0]), int(size[1])
        out_h, out_w = int(inputs.get("height", in_h)), int(inputs.get("width", in_w))
        boxes = det["boxes"] * det["boxes"].new_tensor([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, out_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, out_h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {"boxes": boxes[keep], "scores": det["scores"][keep], "classes": det["classes"][keep]}

    # ---------------------------------------------------------------- explanation interface (meddet.xai)
    def explain_inputs(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """As :meth:`TorchvisionRCNN.explain_inputs`: the normalized, padded ``(1, 3, H, W)`` tensor and the
        image's size inside it."""
        images, _ = self.transform([check_image(0, {"image": image}).to(self.device)])
        h, w = images.image_sizes[0]
        return images.tensors, (int(h), int(w))

    def feature_maps(self, padded: Tensor) -> OrderedDict[str, Tensor]:
        """The FPN outputs keyed ``"p3"`` .. ``"p7"`` (stride 8 .. 128)."""
        return OrderedDict((_LEVEL_NAMES.get(n, n), v) for n, v in self.backbone(padded).items())

    def box_class_logits(self, features: Mapping[str, Tensor], boxes: Tensor) -> Tensor:
        """Class logits ``(N, K + 1)`` for ``boxes`` (xyxy in :meth:`explain_inputs`'s pixels): for each box the
        anchor that overlaps it most (IoU, over all levels) and that anchor's ``K`` sigmoid logits from
        ``features``, with a background column ``K`` of 0, so a softmax over a row ranks the classes as the
        detector's sigmoid scores do (a one-stage detector has no box classifier of its own)."""
        from torchvision.models.detection.image_list import ImageList
        from torchvision.ops import box_iou

        maps = [features[name] for name in _LEVELS]
        stride = _STRIDES[0]
        size = (maps[0].shape[-2] * stride, maps[0].shape[-1] * stride)
        anchors = self.anchor_generator(ImageList(maps[0][:1], [size]), maps)[0]
        logits = self.head.classification_head(maps)[0]  # (anchors, K)
        best = box_iou(boxes.to(anchors.device, anchors.dtype), anchors).argmax(dim=1)
        chosen = logits[best]
        return torch.cat([chosen, chosen.new_zeros((chosen.shape[0], 1))], dim=1)


def build_torchvision_retinanet(cfg: CfgNode) -> TorchvisionRetinaNet:
    """Build the torchvision-engine RetinaNet described by ``cfg`` (random init, on the CPU)."""
    model = TorchvisionRetinaNet(cfg)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "Built torchvision RetinaNet R%d-FPN (%s): %d classes, %.2fM parameters",
        cfg.MODEL.RESNETS.DEPTH,
        cfg.MODEL.RESNETS.NORM,
        model.num_classes,
        total / 1e6,
    )
    return model
