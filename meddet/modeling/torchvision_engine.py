"""The torchvision engine: torchvision's Faster R-CNN with a ResNet-FPN backbone, built from
detectron2's config keys and speaking meddet's model interface.

Everything torchvision-specific stays here: RGB channel order, the 0 = background class index,
torchvision's loss names and its (disabled) internal resize. Parameter names are torchvision's own
(``backbone.body.*``, ``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``), so a torchvision
``fasterrcnn_resnet50_fpn`` state dict fits a model built with the matching keys.

Where torchvision cannot do what a key asks, building fails with a ModelError naming the key.
detectron2's numerics are reproduced where torchvision differs: ``MODEL.RESNETS.STRIDE_IN_1X1`` puts the
stride of ResNet-50+ bottlenecks in the first 1x1 conv (MSRA ResNets), ``POOLER_TYPE ROIAlignV2`` pools with
``aligned=True`` and detectron2's FPN level assignment, anchors are detectron2's (not rounded, size-major
order, fixed strides), and proposals and detections are selected as detectron2 does (NMS ranked by logits,
empty boxes dropped after the top-k), so a converted detectron2 checkpoint (meddet.modeling.d2_convert)
gives detectron2's detections. The training losses are detectron2's too: ``MODEL.RPN.SMOOTH_L1_BETA`` and
``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA`` (0: L1) in place of torchvision's fixed beta 1/9, RPN losses summed over
the sampled anchors and divided by ``RPN.BATCH_SIZE_PER_IMAGE * images`` (torchvision: mean over the sampled
anchors), ROI losses divided by the number of sampled ROIs; ``MODEL.ROI_HEADS.CLASS_WEIGHTS`` weights the box
classifier's cross-entropy per class (see :func:`weighted_cross_entropy`).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import (
    FasterRCNN,
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, batched_nms, clip_boxes_to_image, roi_align
from torchvision.ops.misc import FrozenBatchNorm2d
from yacs.config import CfgNode

from meddet.errors import ConfigError, DataError, ModelError
from meddet.modeling.checkpoint import architecture_of

logger = logging.getLogger(__name__)

ENGINE_NAME = "torchvision"

# depth -> (block, blocks per stage)
_RESNET_LAYOUTS: dict[int, tuple[type[resnet.BasicBlock | resnet.Bottleneck], list[int]]] = {
    18: (resnet.BasicBlock, [2, 2, 2, 2]),
    34: (resnet.BasicBlock, [3, 4, 6, 3]),
    50: (resnet.Bottleneck, [3, 4, 6, 3]),
    101: (resnet.Bottleneck, [3, 4, 23, 3]),
    152: (resnet.Bottleneck, [3, 8, 36, 3]),
}
# detectron2 stage names -> torchvision ResNet modules, in FREEZE_AT order (1 = stem, 2 = res2, ...)
_STAGES: list[tuple[str, ...]] = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
_FEATURES = ["res2", "res3", "res4", "res5"]
_RPN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
_ROI_FEATURES = ["p2", "p3", "p4", "p5"]
# torchvision FPN output name -> detectron2 name (the explanation interface uses detectron2's)
_EXPLAIN_LEVELS = {"0": "p2", "1": "p3", "2": "p4", "3": "p5", "pool": "p6"}
# torchvision loss name -> detectron2 loss name
_LOSS_NAMES = {
    "loss_classifier": "loss_cls",
    "loss_box_reg": "loss_box_reg",
    "loss_objectness": "loss_rpn_cls",
    "loss_rpn_box_reg": "loss_rpn_loc",
}


def _norm_layer(key: str, norm: str) -> Callable[[int], nn.Module]:
    """detectron2 norm name -> a constructor taking the channel count."""
    if norm == "FrozenBN":
        return FrozenBatchNorm2d
    if norm in ("BN", "SyncBN"):  # SyncBN: converted after building when running distributed
        return nn.BatchNorm2d
    if norm == "GN":
        return lambda channels: nn.GroupNorm(32, channels)
    raise ModelError(
        f"{key}: {norm!r} is not supported by the torchvision engine; expected one of 'FrozenBN', 'BN', 'GN', 'SyncBN'"
    )


def _expect(key: str, value: Any, allowed: Sequence[Any], why: str = "") -> None:
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ModelError(
            f"{key}: {value!r} is not supported by the torchvision engine; expected {shown}"
            + (f" ({why})" if why else "")
        )


def _check_fpn(cfg: CfgNode) -> None:
    """Refuse detectron2's single-feature Faster R-CNN architectures (C4, the defaults; DC5) with one line
    naming the key, the architecture and the alternatives: the torchvision engine builds ResNet-FPN."""
    m = cfg.MODEL
    if m.ROI_HEADS.NAME == "Res5ROIHeads":
        what = "MODEL.ROI_HEADS.NAME: 'Res5ROIHeads' is detectron2's C4 architecture (res5 as the box head on res4)"
    elif m.BACKBONE.NAME == "build_resnet_backbone":
        dc5 = int(m.RESNETS.RES5_DILATION) == 2
        what = (
            f"MODEL.BACKBONE.NAME: 'build_resnet_backbone' (features {list(m.RESNETS.OUT_FEATURES)}) is detectron2's "
            + ("DC5 architecture (dilated res5, one feature map)" if dc5 else "ResNet without FPN")
        )
    else:
        return
    raise ModelError(
        f"{what}, detectron2's meaning of these keys (C4 is detectron2's default when the FPN keys are unset); "
        "the torchvision engine builds ResNet-FPN only: expected MODEL.ENGINE detectron2 (with detectron2 installed) "
        "for this architecture, "
        "or the FPN keys (_BASE_: configs/Base-RCNN-FPN.yaml or detectron2's Base-RCNN-FPN.yaml) for the "
        "torchvision engine"
    )


def _check_unsupported(cfg: CfgNode) -> None:
    """Refuse detectron2 options the torchvision Faster R-CNN cannot build."""
    m = cfg.MODEL
    _expect("MODEL.META_ARCHITECTURE", m.META_ARCHITECTURE, ["GeneralizedRCNN"])
    _check_fpn(cfg)
    _expect("MODEL.BACKBONE.NAME", m.BACKBONE.NAME, ["build_resnet_fpn_backbone"])
    _expect("MODEL.PROPOSAL_GENERATOR.NAME", m.PROPOSAL_GENERATOR.NAME, ["RPN"])
    _expect("MODEL.RPN.HEAD_NAME", m.RPN.HEAD_NAME, ["StandardRPNHead"])
    _expect("MODEL.ANCHOR_GENERATOR.NAME", m.ANCHOR_GENERATOR.NAME, ["DefaultAnchorGenerator"])
    _expect("MODEL.ROI_HEADS.NAME", m.ROI_HEADS.NAME, ["StandardROIHeads"])
    _expect("MODEL.ROI_BOX_HEAD.NAME", m.ROI_BOX_HEAD.NAME, ["FastRCNNConvFCHead"])
    _expect("MODEL.RESNETS.OUT_FEATURES", list(m.RESNETS.OUT_FEATURES), [_FEATURES])
    _expect("MODEL.FPN.IN_FEATURES", list(m.FPN.IN_FEATURES), [_FEATURES])
    _expect("MODEL.RPN.IN_FEATURES", list(m.RPN.IN_FEATURES), [_RPN_FEATURES])
    _expect("MODEL.ROI_HEADS.IN_FEATURES", list(m.ROI_HEADS.IN_FEATURES), [_ROI_FEATURES])
    _expect("MODEL.FPN.FUSE_TYPE", m.FPN.FUSE_TYPE, ["sum"])
    _expect("MODEL.RESNETS.STEM_OUT_CHANNELS", m.RESNETS.STEM_OUT_CHANNELS, [64])
    _expect("MODEL.RESNETS.RES5_DILATION", m.RESNETS.RES5_DILATION, [1])
    if any(m.RESNETS.DEFORM_ON_PER_STAGE):
        raise ModelError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE: {list(m.RESNETS.DEFORM_ON_PER_STAGE)} asks for deformable "
            "convolutions, which the torchvision engine does not build; expected all False"
        )
    _expect("MODEL.ANCHOR_GENERATOR.OFFSET", m.ANCHOR_GENERATOR.OFFSET, [0.0])
    _expect(
        "MODEL.ANCHOR_GENERATOR.ANGLES",
        [list(a) for a in m.ANCHOR_GENERATOR.ANGLES],
        [[[-90, 0, 90]]],
        "angles belong to rotated anchors (RotatedAnchorGenerator), which the torchvision engine does not build",
    )
    # torchvision's matchers label below the low threshold background, between ignored, above foreground
    _expect("MODEL.RPN.IOU_LABELS", list(m.RPN.IOU_LABELS), [[0, -1, 1]])
    _expect("MODEL.ROI_HEADS.IOU_LABELS", list(m.ROI_HEADS.IOU_LABELS), [[0, 1]])
    _expect("MODEL.RPN.BOUNDARY_THRESH", m.RPN.BOUNDARY_THRESH, [-1])
    _expect("MODEL.RPN.BBOX_REG_WEIGHTS", tuple(m.RPN.BBOX_REG_WEIGHTS), [(1.0, 1.0, 1.0, 1.0)])
    _expect("MODEL.RPN.BBOX_REG_LOSS_TYPE", m.RPN.BBOX_REG_LOSS_TYPE, ["smooth_l1"])
    _expect("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", m.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE, ["smooth_l1"])
    _expect("MODEL.ROI_BOX_HEAD.POOLER_TYPE", m.ROI_BOX_HEAD.POOLER_TYPE, ["ROIAlignV2", "ROIAlign"])
    _expect("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", m.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG, [False])
    _expect("MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", m.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES, [False])
    _expect(
        "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT",
        m.ROI_HEADS.PROPOSAL_APPEND_GT,
        [True],
        "torchvision always adds the ground-truth boxes to the proposals",
    )
    _expect("INPUT.FORMAT", cfg.INPUT.FORMAT, ["BGR", "RGB"])
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        values = list(m[key])
        if len(values) != 3:
            raise ModelError(f"MODEL.{key}: {values} has {len(values)} values; expected 3 (one per channel)")
    if min(m.PIXEL_STD) <= 0:
        raise ModelError(f"MODEL.PIXEL_STD: {list(m.PIXEL_STD)} has a value <= 0; expected positive values")
    if int(m.ROI_HEADS.NUM_CLASSES) < 1:
        raise ModelError(f"MODEL.ROI_HEADS.NUM_CLASSES: {m.ROI_HEADS.NUM_CLASSES}; expected at least 1")


def smooth_l1_beta(key: str, value: Any) -> float:
    """A ``*.SMOOTH_L1_BETA`` value checked: a finite number >= 0 (below 1e-5: L1 loss, as in detectron2)."""
    try:
        beta = float(value)
    except (TypeError, ValueError):
        beta = math.nan
    if not math.isfinite(beta) or beta < 0:
        raise ConfigError(f"{key}: {value!r}; expected a number >= 0 (0: L1 loss, detectron2's default)")
    return beta


def class_weights(cfg: CfgNode) -> list[float] | None:
    """``MODEL.ROI_HEADS.CLASS_WEIGHTS`` checked against ``NUM_CLASSES``: one finite weight > 0 per
    foreground class in class-index order, or None when the list is empty (unweighted)."""
    values = list(cfg.MODEL.ROI_HEADS.CLASS_WEIGHTS)
    if not values:
        return None
    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    if len(values) != num_classes:
        raise ConfigError(
            f"MODEL.ROI_HEADS.CLASS_WEIGHTS: {values} has {len(values)} values; expected {num_classes}, one per "
            "class in class-index order (MODEL.ROI_HEADS.NUM_CLASSES), or [] for no weighting"
        )
    try:
        weights = [float(v) for v in values]
    except (TypeError, ValueError):
        weights = [math.nan]
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(f"MODEL.ROI_HEADS.CLASS_WEIGHTS: {values}; expected finite numbers > 0")
    return weights


def box_regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """detectron2's box-regression loss (fvcore's smooth-L1), summed: L1 when ``beta < 1e-5``."""
    if beta < 1e-5:
        return F.l1_loss(pred, target, reduction="sum")
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor | None) -> Tensor:
    """The box classifier's softmax cross-entropy averaged over the N sampled ROIs. With ``weights`` (one
    per logit column, background 1) each ROI's term is multiplied by the weight of its label:
    ``sum_i w[y_i] * CE_i / N`` (not divided by the sum of weights, so a weight of 2 makes a class's ROIs
    count twice). Without weights this is detectron2's mean; 0 when there is no ROI."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    if weights is None:
        return F.cross_entropy(logits, labels)
    # float32 whatever the autocast dtype of the logits: the weight must match the input's dtype
    return F.cross_entropy(logits.float(), labels, weight=weights.float(), reduction="sum") / labels.numel()


def _freeze_stages(body: resnet.ResNet, freeze_at: int) -> None:
    """detectron2's freeze: stop gradients and turn BatchNorm into FrozenBatchNorm2d in the stem
    (freeze_at >= 1) and in res2..res5 (freeze_at >= 2..5)."""
    for names in _STAGES[:freeze_at]:
        for name in names:
            module = getattr(body, name)
            for p in module.parameters():
                p.requires_grad_(False)
            setattr(body, name, _convert_frozen_batchnorm(module))


def _convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace BatchNorm2d (and SyncBatchNorm) layers by FrozenBatchNorm2d with the same statistics."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = _convert_frozen_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _move_stride_to_1x1(body: resnet.ResNet) -> None:
    """MSRA ResNets (detectron2 ``STRIDE_IN_1X1 True``): the downsampling stride of each stage's first
    bottleneck sits in its 1x1 ``conv1`` instead of the 3x3 ``conv2`` (same parameters, other numerics)."""
    for layer in (body.layer2, body.layer3, body.layer4):
        first = layer[0]
        first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)


def _build_backbone(cfg: CfgNode, first_stage: int = 1, extra_blocks: Any = None) -> BackboneWithFPN:
    """ResNet-FPN on ``layer{first_stage}`` .. ``layer4`` (1: res2-res5, Faster R-CNN; 2: res3-res5, RetinaNet)
    with ``extra_blocks`` on top (None: torchvision's max-pool P6, detectron2's LastLevelMaxPool)."""
    r = cfg.MODEL.RESNETS
    depth = int(r.DEPTH)
    if depth not in _RESNET_LAYOUTS:
        raise ModelError(f"MODEL.RESNETS.DEPTH: {depth} is not supported; expected one of {sorted(_RESNET_LAYOUTS)}")
    block, layers = _RESNET_LAYOUTS[depth]
    groups, width = int(r.NUM_GROUPS), int(r.WIDTH_PER_GROUP)
    if block is resnet.BasicBlock and (groups, width) != (1, 64):
        raise ModelError(
            f"MODEL.RESNETS.NUM_GROUPS/WIDTH_PER_GROUP: {groups}/{width} with DEPTH {depth}; "
            "ResNet-18/34 blocks need 1/64 (grouped convolutions need DEPTH 50 or more)"
        )
    freeze_at = int(cfg.MODEL.BACKBONE.FREEZE_AT)
    if freeze_at < 0:
        raise ModelError(
            f"MODEL.BACKBONE.FREEZE_AT: {freeze_at}; expected 0 (nothing frozen), 1 (stem), 2 (stem+res2) ... 5"
        )
    body = resnet.ResNet(
        block, layers, groups=groups, width_per_group=width, norm_layer=_norm_layer("MODEL.RESNETS.NORM", r.NORM)
    )
    if block is resnet.Bottleneck and r.STRIDE_IN_1X1:
        _move_stride_to_1x1(body)
    _freeze_stages(body, min(freeze_at, len(_STAGES)))
    fpn_norm = cfg.MODEL.FPN.NORM
    fpn_norm_layer = _norm_layer("MODEL.FPN.NORM", fpn_norm) if fpn_norm else None
    stages = range(first_stage - 1, 4)
    return BackboneWithFPN(
        body,
        return_layers={f"layer{i + 1}": str(n) for n, i in enumerate(stages)},
        in_channels_list=[64 * block.expansion * 2**i for i in stages],
        out_channels=int(cfg.MODEL.FPN.OUT_CHANNELS),
        extra_blocks=extra_blocks,
        norm_layer=fpn_norm_layer,
    )


def _per_level(
    key: str, values: Sequence[Sequence[float]], levels: int, names: Sequence[str] = tuple(_RPN_FEATURES)
) -> list[tuple[float, ...]]:
    """detectron2 anchor lists: one list per level, or a single list used for every level."""
    lists = [tuple(float(v) for v in level) for level in values]
    if len(lists) == 1:
        lists = lists * levels
    if len(lists) != levels or not all(lists):
        raise ModelError(
            f"{key}: {[list(v) for v in values]}; expected {levels} non-empty lists (one per level "
            f"{', '.join(names)}) or a single list for all levels"
        )
    return lists


class D2AnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator with detectron2's anchors: cell anchors with sizes outer and aspect
    ratios inner, coordinates not rounded (torchvision rounds them), centred on ``(x * stride, y * stride)``
    with each level's fixed stride (torchvision divides the padded image size by the grid size, which
    gives 48 instead of 64 on P6 for a 96-pixel-high image)."""

    def __init__(
        self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]], strides: Sequence[int]
    ) -> None:
        super().__init__(sizes=tuple(sizes), aspect_ratios=tuple(aspect_ratios))
        self.strides = list(strides)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """Anchors ``(sum over levels of H * W * A, 4)`` per image, level by level."""
        grid_sizes = [f.shape[-2:] for f in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]

    def generate_anchors(
        self,
        scales: Sequence[float],
        aspect_ratios: Sequence[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> Tensor:
        """Cell anchors ``(-w/2, -h/2, w/2, h/2)`` with ``w * h = size**2`` and ``h / w = ratio``."""
        anchors = []
        for size in scales:
            area = float(size) ** 2
            for ratio in aspect_ratios:
                w = (area / float(ratio)) ** 0.5
                h = float(ratio) * w
                anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(anchors, dtype=dtype, device=device)


class D2MultiScaleRoIAlign(MultiScaleRoIAlign):
    """ROIAlign over FPN levels the way detectron2's ROIPooler does it: level
    ``floor(4 + log2(sqrt(area) / 224 + 1e-8))`` clamped to the available levels, and ``aligned=True``
    (the half-pixel shift of ``POOLER_TYPE ROIAlignV2``) when asked."""

    def __init__(
        self, featmap_names: list[str], output_size: int, sampling_ratio: int, aligned: bool, min_level: int = 2
    ) -> None:
        super().__init__(featmap_names=featmap_names, output_size=output_size, sampling_ratio=sampling_ratio)
        self.aligned = aligned
        self.min_level = min_level  # the first feature map has stride 2**min_level (P2: 4)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pooled features ``(sum of boxes, C, output, output)`` in the order of the concatenated boxes."""
        features = [x[name] for name in self.featmap_names]
        scales = [2.0 ** -(level + self.min_level) for level in range(len(features))]
        min_level, max_level = self.min_level, self.min_level + len(features) - 1
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        b = rois[:, 1:]
        sizes = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sqrt()
        levels = torch.floor(self.canonical_level + torch.log2(sizes / self.canonical_scale + 1e-8))
        levels = (levels.clamp(min=min_level, max=max_level) - min_level).to(torch.int64)
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, scales)):
            index = torch.nonzero(levels == level).squeeze(1)
            out[index] = roi_align(
                feature,
                rois[index],
                self.output_size,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
                aligned=self.aligned,
            ).to(out.dtype)
        return out


class D2RegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with detectron2's proposal selection (``find_top_rpn_proposals``): per-level
    top-k, clip, drop boxes not wider and higher than ``MODEL.PROPOSAL_GENERATOR.MIN_SIZE`` (0: empty ones),
    NMS per level ranked by the objectness *logits* and keep the top
    ``POST_NMS_TOPK``. torchvision ranks NMS by sigmoid probabilities, which tie at 1.0 in float32 for the
    confident logits (> ~17) of trained models and then keep other proposals than detectron2.

    The losses are detectron2's (``RPN.losses``): see :meth:`compute_loss`."""

    def __init__(self, *args: Any, smooth_l1_beta: float = 0.0, min_box_size: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta
        self.min_box_size = float(min_box_size)  # MODEL.PROPOSAL_GENERATOR.MIN_SIZE
        self.stats: dict[str, Any] = {}  # detectron2's RPN statistics of the last training step

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Objectness binary cross-entropy over the sampled anchors and box regression (smooth-L1 with
        ``RPN.SMOOTH_L1_BETA``, L1 at 0) over the sampled positives, both summed and divided by
        ``RPN.BATCH_SIZE_PER_IMAGE * images`` as detectron2 does (torchvision: mean, beta 1/9)."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos))[0]
        neg = torch.where(torch.cat(sampled_neg))[0]
        sampled = torch.cat([pos, neg])
        # detectron2's RPN.losses statistics: sampled positive / negative anchors per image
        self.stats = {"rpn/num_pos_anchors": len(pos) / len(labels), "rpn/num_neg_anchors": len(neg) / len(labels)}
        normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)
        targets = torch.cat(regression_targets)
        box_loss = box_regression_loss(pred_bbox_deltas[pos], targets[pos], self.smooth_l1_beta) / normalizer
        objectness_loss = (
            F.binary_cross_entropy_with_logits(
                objectness.flatten()[sampled], torch.cat(labels)[sampled], reduction="sum"
            )
            / normalizer
        )
        return objectness_loss, box_loss

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Proposals per image (xyxy) and their objectness probabilities, best first."""
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        levels = (
            torch.cat(
                [
                    torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                    for i, n in enumerate(num_anchors_per_level)
                ]
            )
            .reshape(1, -1)
            .expand_as(objectness)
        )
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        batch = torch.arange(num_images, device=proposals.device)[:, None]
        objectness, levels, proposals = objectness[batch, top], levels[batch, top], proposals[batch, top]
        final_boxes, final_scores = [], []
        for boxes, logits, lvl, shape in zip(proposals, objectness, levels, image_shapes):
            boxes = clip_boxes_to_image(boxes, shape)
            wh = boxes[:, 2:] - boxes[:, :2]
            keep = (wh > self.min_box_size).all(dim=1)  # detectron2: Boxes.nonempty(threshold=MIN_SIZE)
            keep &= torch.isfinite(boxes).all(dim=1) & torch.isfinite(logits)
            boxes, logits, lvl = boxes[keep], logits[keep], lvl[keep]
            keep = batched_nms(boxes, logits, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(torch.sigmoid(logits[keep]))
        return final_boxes, final_scores


def classification_stats(class_logits: Tensor, labels: Tensor, fg: Tensor) -> dict[str, Tensor]:
    """detectron2's ``_log_classification_stats`` (prefix ``fast_rcnn``) for torchvision's class layout
    (background is class 0): accuracy over the sampled ROIs, and over the foreground ones (``fg``, their
    indices) the accuracy and the fraction predicted as background (false negatives)."""
    if labels.numel() == 0:
        return {}
    with torch.no_grad():
        pred = class_logits.argmax(dim=1)
        stats = {"fast_rcnn/cls_accuracy": (pred == labels).float().mean()}
        if len(fg):
            stats["fast_rcnn/fg_cls_accuracy"] = (pred[fg] == labels[fg]).float().mean()
            stats["fast_rcnn/false_negative"] = (pred[fg] == 0).float().mean()
    return stats


class D2RoIHeads(RoIHeads):
    """torchvision's box head with detectron2's test-time selection (``fast_rcnn_inference`` then
    ``detector_postprocess``): clip, score > threshold, NMS per class, top ``DETECTIONS_PER_IMAGE``, and only
    then drop empty boxes. torchvision drops boxes under 0.01 px before NMS, which can keep other boxes.

    Training losses are detectron2's ``FastRCNNOutputLayers.losses``, with per-class weights on the
    cross-entropy: see :meth:`box_losses`. Boxes only (the engine builds no mask or keypoint head)."""

    def __init__(
        self, *args: Any, smooth_l1_beta: float = 0.0, class_weights: Sequence[float] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta
        self.stats: dict[str, Any] = {}  # detectron2's ROI head statistics of the last training step
        weights = None if class_weights is None else torch.tensor([1.0, *class_weights])  # background first
        # not persistent: the weights come from the config, checkpoints stay torchvision's state dict
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: ``([], {"loss_classifier", "loss_box_reg"})``; eval: one dict ``{"boxes", "labels",
        "scores"}`` per image and no losses."""
        if self.training:
            if targets is None:
                raise DataError("model input: training needs 'boxes' and 'classes' for every image")
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
            # detectron2's label_and_sample_proposals statistics: sampled ROIs per image (0 = background here)
            fg_counts = torch.stack([(lab > 0).sum() for lab in labels]).float()
            bg_counts = torch.tensor([float(len(lab)) for lab in labels], device=fg_counts.device) - fg_counts
            self.stats = {"roi_head/num_fg_samples": fg_counts.mean(), "roi_head/num_bg_samples": bg_counts.mean()}
        features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(features)
        if self.training:
            return [], self.box_losses(class_logits, box_regression, labels, regression_targets)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        return [{"boxes": b, "labels": c, "scores": s} for b, s, c in zip(boxes, scores, labels)], {}

    def box_losses(
        self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> dict[str, Tensor]:
        """Cross-entropy over the sampled ROIs (:func:`weighted_cross_entropy` with ``CLASS_WEIGHTS``) and
        the class-specific box regression of the foreground ROIs (smooth-L1 with ``ROI_BOX_HEAD.SMOOTH_L1_BETA``,
        L1 at 0) summed and divided by the number of sampled ROIs, as detectron2 does."""
        labels_all = torch.cat(labels)
        targets = torch.cat(regression_targets)
        loss_cls = weighted_cross_entropy(class_logits, labels_all, self.class_weights)
        fg = torch.where(labels_all > 0)[0]
        self.stats.update(classification_stats(class_logits, labels_all, fg))
        deltas = box_regression.reshape(len(labels_all), -1, 4)[fg, labels_all[fg]]
        box_loss = box_regression_loss(deltas, targets[fg], self.smooth_l1_beta) / max(labels_all.numel(), 1)
        return {"loss_classifier": loss_cls, "loss_box_reg": box_loss}

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Boxes (xyxy), scores and labels (1..K, 0 = background) per image, best first."""
        num_classes = class_logits.shape[-1]
        counts = [len(p) for p in proposals]
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, shape in zip(
            self.box_coder.decode(box_regression, proposals).split(counts),
            torch.softmax(class_logits, -1).split(counts),
            image_shapes,
        ):
            boxes = clip_boxes_to_image(boxes, shape)[:, 1:].reshape(-1, 4)  # without background
            labels = torch.arange(1, num_classes, device=scores.device).repeat(len(scores))
            scores = scores[:, 1:].reshape(-1)
            keep = (scores > self.score_thresh) & torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels


def _build_anchor_generator(cfg: CfgNode) -> AnchorGenerator:
    a = cfg.MODEL.ANCHOR_GENERATOR
    levels = len(_RPN_FEATURES)
    sizes = _per_level("MODEL.ANCHOR_GENERATOR.SIZES", a.SIZES, levels)
    ratios = _per_level("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", a.ASPECT_RATIOS, levels)
    counts = {len(s) * len(r) for s, r in zip(sizes, ratios)}
    if len(counts) != 1:
        raise ModelError(
            f"MODEL.ANCHOR_GENERATOR.SIZES/ASPECT_RATIOS: {[list(s) for s in sizes]} x {[list(r) for r in ratios]} "
            "give a different number of anchors per level; the shared RPN head needs the same number on every level"
        )
    return D2AnchorGenerator(sizes, ratios, strides=[4, 8, 16, 32, 64])  # P2..P6


def _iou_thresholds(key: str, values: Sequence[float]) -> tuple[float, float]:
    """detectron2 IOU_THRESHOLDS -> (background below, foreground at or above)."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2 and values[0] <= values[1]:
        return values[0], values[1]
    raise ModelError(f"{key}: {values}; expected [t] or [background_below, foreground_from] in increasing order")


def _rpn_conv_depth(cfg: CfgNode, channels: int) -> int:
    dims = [int(d) for d in cfg.MODEL.RPN.CONV_DIMS]
    if not dims or any(d not in (-1, channels) for d in dims):
        raise ModelError(
            f"MODEL.RPN.CONV_DIMS: {dims}; the torchvision RPN head keeps the FPN width, expected a list of "
            f"-1 (or {channels}), one per conv"
        )
    return len(dims)


def _build_box_head(cfg: CfgNode, channels: int) -> tuple[nn.Module, int]:
    h = cfg.MODEL.ROI_BOX_HEAD
    res = int(h.POOLER_RESOLUTION)
    num_conv, num_fc, fc_dim = int(h.NUM_CONV), int(h.NUM_FC), int(h.FC_DIM)
    if num_fc < 1:
        raise ModelError(f"MODEL.ROI_BOX_HEAD.NUM_FC: {num_fc}; expected at least 1")
    if (num_conv, num_fc, h.NORM) == (0, 2, ""):
        # torchvision's own head (same layers; parameter names of torchvision's Faster R-CNN)
        return TwoMLPHead(channels * res * res, fc_dim), fc_dim
    norm = _norm_layer("MODEL.ROI_BOX_HEAD.NORM", h.NORM) if h.NORM else None
    head = FastRCNNConvFCHead((channels, res, res), [int(h.CONV_DIM)] * num_conv, [fc_dim] * num_fc, norm_layer=norm)
    return head, fc_dim


def check_batch(batched_inputs: Any) -> None:
    """A model input must be a non-empty list of dicts (DataError otherwise)."""
    if isinstance(batched_inputs, Mapping) or len(batched_inputs) == 0:
        found = "a single dict" if isinstance(batched_inputs, Mapping) else "an empty batch"
        raise DataError(
            f"model input: found {found}; expected a non-empty list of dicts with 'image' "
            "(and 'boxes', 'classes' when training)"
        )


def check_image(index: int, inputs: Mapping[str, Any]) -> Tensor:
    """``batch[index]["image"]`` as a float CHW tensor with 3 channels (DataError otherwise)."""
    image = inputs.get("image") if isinstance(inputs, Mapping) else None
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        found = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise DataError(
            f"model input batch[{index}]['image']: found {found}; expected a CHW tensor with 3 channels "
            "(greyscale images as 3 equal channels)"
        )
    return image.float()


def check_target(index: int, inputs: Mapping[str, Any], image: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``batch[index]``'s ``boxes`` (N, 4) float32 xyxy and ``classes`` (N,) int64 in 0..K-1, checked
    against the image tensor (DataError naming the item otherwise); an image without objects gives N = 0."""
    where = f"model input batch[{index}]"
    if "boxes" not in inputs or "classes" not in inputs:
        raise DataError(f"{where}: training needs 'boxes' and 'classes'; found keys {sorted(inputs)}")
    boxes = torch.as_tensor(inputs["boxes"], dtype=torch.float32).detach()
    classes = torch.as_tensor(inputs["classes"]).detach()
    if boxes.numel() == 0 and classes.numel() == 0:  # an image without objects
        boxes, classes = boxes.reshape(0, 4), classes.reshape(0).long()
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise DataError(f"{where}['boxes']: shape {tuple(boxes.shape)}; expected (N, 4) xyxy")
    if classes.dim() != 1 or classes.shape[0] != boxes.shape[0] or classes.is_floating_point():
        raise DataError(
            f"{where}['classes']: {classes.dtype} of shape {tuple(classes.shape)}; expected int64 of shape "
            f"({boxes.shape[0]},), one class per box"
        )
    bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0])
        raise DataError(
            f"{where}['boxes'][{i}]: {boxes[i].tolist()}; expected x1 < x2 and y1 < y2 (finite, in the "
            f"image tensor's {image.shape[-1]}x{image.shape[-2]} pixels)"
        )
    out_of_range = (classes < 0) | (classes >= num_classes)
    if out_of_range.any():
        raise DataError(
            f"{where}['classes']: {classes[out_of_range].unique().tolist()}; expected values in "
            f"0..{num_classes - 1} (MODEL.ROI_HEADS.NUM_CLASSES = {num_classes})"
        )
    return boxes, classes.long()


class MeddetRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's input transform without its resize: puts the channels in RGB order, normalizes with
    the config's pixel mean/std and pads the batch to the size divisibility. Images keep their size,
    so boxes stay in the pixels of the tensor the data loader produced."""

    def __init__(
        self, pixel_mean: Sequence[float], pixel_std: Sequence[float], flip_channels: bool, size_divisible: int = 32
    ) -> None:
        super().__init__(
            min_size=1,
            max_size=1,
            image_mean=list(pixel_mean),
            image_std=list(pixel_std),
            size_divisible=size_divisible,
        )
        self.flip_channels = flip_channels

    def normalize(self, image: Tensor) -> Tensor:
        """(image - mean) / std on the 0..255 scale, after BGR -> RGB when the input is BGR."""
        if self.flip_channels:
            image = image.flip(0)
        return super().normalize(image)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        """No resize: the data loader already did the shortest-edge resize."""
        return image, target

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(flip_bgr_to_rgb={self.flip_channels}, mean={self.image_mean}, "
            f"std={self.image_std}, no resize, pad to multiple of {self.size_divisible})"
        )


class TorchvisionRCNN(FasterRCNN):
    """torchvision Faster R-CNN with meddet's batch interface.

    ``model(batch)`` with ``batch`` a list of dicts ``{"image": CHW tensor (0..255, INPUT.FORMAT order),
    "height", "width", "boxes" (N,4 xyxy in the tensor's pixels), "classes" (N,) in 0..K-1}``:
    in training mode returns ``{"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}``; in eval mode
    one dict per image ``{"boxes" (xyxy in the original height x width), "scores", "classes" (0..K-1)}``.
    """

    engine = ENGINE_NAME
    roi_heads: RoIHeads  # torchvision's, replaced by D2RoIHeads in __init__

    def __init__(self, cfg: CfgNode) -> None:
        _check_unsupported(cfg)
        m = cfg.MODEL
        backbone = _build_backbone(cfg)
        channels = backbone.out_channels
        anchor_generator = _build_anchor_generator(cfg)
        rpn_head = RPNHead(
            channels, anchor_generator.num_anchors_per_location()[0], conv_depth=_rpn_conv_depth(cfg, channels)
        )
        rpn_bg, rpn_fg = _iou_thresholds("MODEL.RPN.IOU_THRESHOLDS", m.RPN.IOU_THRESHOLDS)
        roi_bg, roi_fg = _iou_thresholds("MODEL.ROI_HEADS.IOU_THRESHOLDS", m.ROI_HEADS.IOU_THRESHOLDS)
        box_head, representation = _build_box_head(cfg, channels)
        num_classes = int(m.ROI_HEADS.NUM_CLASSES)
        flip = cfg.INPUT.FORMAT == "BGR"
        mean, std = list(m.PIXEL_MEAN), list(m.PIXEL_STD)
        if flip:
            mean, std = mean[::-1], std[::-1]
        super().__init__(
            backbone,
            num_classes=None,
            rpn_anchor_generator=anchor_generator,
            rpn_head=rpn_head,
            rpn_pre_nms_top_n_train=int(m.RPN.PRE_NMS_TOPK_TRAIN),
            rpn_pre_nms_top_n_test=int(m.RPN.PRE_NMS_TOPK_TEST),
            rpn_post_nms_top_n_train=int(m.RPN.POST_NMS_TOPK_TRAIN),
            rpn_post_nms_top_n_test=int(m.RPN.POST_NMS_TOPK_TEST),
            rpn_nms_thresh=float(m.RPN.NMS_THRESH),
            rpn_fg_iou_thresh=rpn_fg,
            rpn_bg_iou_thresh=rpn_bg,
            rpn_batch_size_per_image=int(m.RPN.BATCH_SIZE_PER_IMAGE),
            rpn_positive_fraction=float(m.RPN.POSITIVE_FRACTION),
            box_roi_pool=D2MultiScaleRoIAlign(
                featmap_names=["0", "1", "2", "3"],
                output_size=int(m.ROI_BOX_HEAD.POOLER_RESOLUTION),
                sampling_ratio=int(m.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO),
                aligned=m.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2",
            ),
            box_head=box_head,
            box_predictor=FastRCNNPredictor(representation, num_classes + 1),  # + background
            box_score_thresh=float(m.ROI_HEADS.SCORE_THRESH_TEST),
            box_nms_thresh=float(m.ROI_HEADS.NMS_THRESH_TEST),
            box_detections_per_img=int(cfg.TEST.DETECTIONS_PER_IMAGE),
            box_fg_iou_thresh=roi_fg,
            box_bg_iou_thresh=roi_bg,
            box_batch_size_per_image=int(m.ROI_HEADS.BATCH_SIZE_PER_IMAGE),
            box_positive_fraction=float(m.ROI_HEADS.POSITIVE_FRACTION),
            bbox_reg_weights=tuple(float(w) for w in m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
        )
        self.rpn = D2RegionProposalNetwork(
            anchor_generator,
            rpn_head,
            fg_iou_thresh=rpn_fg,
            bg_iou_thresh=rpn_bg,
            batch_size_per_image=int(m.RPN.BATCH_SIZE_PER_IMAGE),
            positive_fraction=float(m.RPN.POSITIVE_FRACTION),
            pre_nms_top_n={"training": int(m.RPN.PRE_NMS_TOPK_TRAIN), "testing": int(m.RPN.PRE_NMS_TOPK_TEST)},
            post_nms_top_n={"training": int(m.RPN.POST_NMS_TOPK_TRAIN), "testing": int(m.RPN.POST_NMS_TOPK_TEST)},
            nms_thresh=float(m.RPN.NMS_THRESH),
            smooth_l1_beta=smooth_l1_beta("MODEL.RPN.SMOOTH_L1_BETA", m.RPN.SMOOTH_L1_BETA),
            min_box_size=float(m.PROPOSAL_GENERATOR.MIN_SIZE),
        )
        self.roi_heads = D2RoIHeads(
            self.roi_heads.box_roi_pool,
            box_head,
            self.roi_heads.box_predictor,
            fg_iou_thresh=roi_fg,
            bg_iou_thresh=roi_bg,
            batch_size_per_image=int(m.ROI_HEADS.BATCH_SIZE_PER_IMAGE),
            positive_fraction=float(m.ROI_HEADS.POSITIVE_FRACTION),
            bbox_reg_weights=tuple(float(w) for w in m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
            score_thresh=float(m.ROI_HEADS.SCORE_THRESH_TEST),
            nms_thresh=float(m.ROI_HEADS.NMS_THRESH_TEST),
            detections_per_img=int(cfg.TEST.DETECTIONS_PER_IMAGE),
            smooth_l1_beta=smooth_l1_beta("MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", m.ROI_BOX_HEAD.SMOOTH_L1_BETA),
            class_weights=class_weights(cfg),
        )
        self.transform = MeddetRCNNTransform(mean, std, flip_channels=flip)
        self.num_classes = num_classes
        self.architecture = architecture_of(cfg)  # stored in every checkpoint (meddet.modeling.checkpoint)
        self.input_format = cfg.INPUT.FORMAT
        self._loss_weights = {
            "loss_rpn_cls": float(m.RPN.LOSS_WEIGHT),
            "loss_rpn_loc": float(m.RPN.LOSS_WEIGHT) * float(m.RPN.BBOX_REG_LOSS_WEIGHT),
            "loss_cls": 1.0,
            "loss_box_reg": float(m.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT),
        }
        if m.RESNETS.NORM == "SyncBN" or m.FPN.NORM == "SyncBN":
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                nn.SyncBatchNorm.convert_sync_batchnorm(self)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters; inputs are moved there."""
        return next(self.parameters()).device

    def forward(self, batched_inputs: Sequence[Mapping[str, Any]]) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training mode) or detections in original-image pixels (eval mode); see the class doc."""
        check_batch(batched_inputs)
        device = self.device
        images = [check_image(i, x).to(device, non_blocking=True) for i, x in enumerate(batched_inputs)]
        if self.training:
            targets = []
            for i, x in enumerate(batched_inputs):
                boxes, classes = check_target(i, x, images[i], self.num_classes)
                targets.append(
                    {"boxes": boxes.to(device, non_blocking=True), "labels": classes.to(device, non_blocking=True) + 1}
                )  # torchvision: 0 = background
            losses = super().forward(images, targets)
            # detectron2's training statistics of this step (the trainer writes them to metrics.json)
            self.training_stats = {**getattr(self.rpn, "stats", {}), **getattr(self.roi_heads, "stats", {})}
            return {name: losses[tv_name] * self._loss_weights[name] for tv_name, name in _LOSS_NAMES.items()}
        detections = super().forward(images)
        return [self._postprocess(det, img.shape[-2:], x) for det, img, x in zip(detections, images, batched_inputs)]

    @staticmethod
    def _postprocess(det: dict[str, Tensor], size: Sequence[int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        """detectron2's detector_postprocess: scale boxes from the tensor's size to (height, width) and clip."""
        in_h, in_w = int(size[0]), int(size[1])
        out_h, out_w = int(inputs.get("height", in_h)), int(inputs.get("width", in_w))
        boxes = det["boxes"]
        if (out_h, out_w) != (in_h, in_w):
            scale = boxes.new_tensor([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h])
            boxes = boxes * scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, out_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, out_h)
        return {"boxes": boxes, "scores": det["scores"], "classes": det["labels"] - 1}

    # ---------------------------------------------------------------- explanation interface (meddet.xai)
    def explain_inputs(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """One CHW image (0..255, INPUT.FORMAT order) as the backbone sees it: ``(1, 3, H, W)`` normalized
        and padded to the size divisibility, on the model's device, and the ``(height, width)`` of the
        image inside that tensor (the rest is padding)."""
        images, _ = self.transform([check_image(0, {"image": image}).to(self.device)])
        h, w = images.image_sizes[0]
        return images.tensors, (int(h), int(w))

    def feature_maps(self, padded: Tensor) -> OrderedDict[str, Tensor]:
        """The FPN outputs of :meth:`explain_inputs`'s tensor keyed ``"p2"`` .. ``"p6"`` (stride 4 .. 64),
        detectron2's names for torchvision's ``"0"`` .. ``"3"``, ``"pool"``."""
        features = self.backbone(padded)
        return OrderedDict((_EXPLAIN_LEVELS.get(k, k), v) for k, v in features.items())

    def box_class_logits(self, features: Mapping[str, Tensor], boxes: Tensor) -> Tensor:
        """The box classifier's logits ``(N, K + 1)`` for ``boxes`` (N, 4 xyxy in the pixels of
        :meth:`explain_inputs`'s tensor) pooled from ``features`` (:meth:`feature_maps`), as in
        inference: columns ``0..K-1`` are the classes in class-index order and column ``K`` is the
        background (torchvision's column 0 moved last), so the softmax over a row gives the class scores."""
        pool = self.roi_heads.box_roi_pool
        by_name = {name: features[f"p{level + pool.min_level}"] for level, name in enumerate(pool.featmap_names)}
        stride = 2**pool.min_level
        padded_size = (features["p2"].shape[-2] * stride, features["p2"].shape[-1] * stride)
        pooled = pool(by_name, [boxes.to(self.device, torch.float32)], [padded_size])
        logits, _ = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        return torch.cat([logits[:, 1:], logits[:, :1]], dim=1)


def build_torchvision_model(cfg: CfgNode) -> nn.Module:
    """Build the torchvision Faster R-CNN ResNet-FPN described by ``cfg`` (random init, on the CPU). The
    engine's RetinaNet is :func:`meddet.modeling.retinanet.build_torchvision_retinanet`;
    :func:`meddet.modeling.build_model` picks between them by ``MODEL.META_ARCHITECTURE``."""
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        raise ConfigError(
            "MODEL.META_ARCHITECTURE RetinaNet: build it with meddet.modeling.build_model (or "
            "meddet.modeling.retinanet.build_torchvision_retinanet), not build_torchvision_model"
        )
    model = TorchvisionRCNN(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "Built torchvision Faster R-CNN R%d-FPN (%s, FREEZE_AT %d): %d classes, %.2fM parameters (%.2fM trainable)",
        cfg.MODEL.RESNETS.DEPTH,
        cfg.MODEL.RESNETS.NORM,
        cfg.MODEL.BACKBONE.FREEZE_AT,
        model.num_classes,
        total / 1e6,
        trainable / 1e6,
    )
    return model
