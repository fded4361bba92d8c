"""A torchvision-engine Faster R-CNN whose weights are set by hand so that it detects bright blobs.

Tests that need a model which *detects something* (Grad-CAM maps on a finding, served bundles, sliced
inference) use this instead of a model trained from scratch: what a short from-scratch run learns differs
between CPUs and thread counts (one machine's fixture collapsed to constant scores), while these weights give
the same detector everywhere.

How it works (every layer is a real layer of the model, only its weights are chosen):
- the stem averages the 7x7 neighbourhood of the input brightness ``v`` (undoing the pixel mean/std):
  channel 0 carries ``max(v - 50, 0) / 64`` (zero on the dark background), channel 1 ``(v + 64) / 64``
  (positive everywhere, varied by the background noise); every residual branch is switched off (its last
  norm layer has weight 0) and the stride-2 shortcuts pass both channels, so C2..C5 carry them at strides
  4..32;
- the FPN routes each level's laterals to their own channels and the output conv takes channel 0 back to
  channel 0, plus 0.2% of channel 1 (so no two places tie and every box's score has a gradient, while
  maps stay ~0 on background) and 5% of the next level from the top-down path: P2..P6 carry the map;
- the RPN scores every anchor by how bright its centre is (above ``BLOB_THRESHOLD``), with a tiny
  per-anchor offset so that anchors at one place do not tie, and predicts no box deltas;
- the box head compares the 7x7 ROIAlign grid of P2 against a template: the samples inside the box's
  inscribed disc must be bright, those outside it (the corners) dark. A box that fits a round blob scores
  near 1; a shifted box, a box inside the blob (bright corners), a box much larger than it (dark disc
  edge) or background scores low. Class 0 is the blob class; any further classes get a constant low logit.
"""

from __future__ import annotations

import torch
from conftest import TINY_MODEL_OPTS
from torch import nn

BLOB_THRESHOLD = 120  # brightness (0..255) above which a pixel counts as blob
_LOW = 50.0  # channel 0 = relu(v - _LOW) * _GAIN: zero on the dark background
_FLOOR = -64.0  # channel 1 = (v - _FLOOR) * _GAIN: positive everywhere, varies with the background noise
_GAIN = 1.0 / 64.0
_LEAK = 0.002  # how much of channel 1 the FPN adds to channel 0: scores never tie, maps stay ~0 on background
_TAU = (BLOB_THRESHOLD - _LOW) * _GAIN
_EDGE = (166 - _LOW) * _GAIN  # channel 0 where a box's outermost samples sit on a blob's blurred edge

# One square anchor size per step of ~1.2x: the box head's template scores only boxes close to a blob's
# size high, so the anchors must not leave large gaps.
BLOB_MODEL_OPTS = [
    *TINY_MODEL_OPTS,
    "MODEL.ANCHOR_GENERATOR.SIZES",
    "[[14, 16, 18, 21, 24, 27, 31, 35], [40, 46, 52, 60, 68, 78, 90, 103], [128, 152, 181, 215, 256, 304, 362, 431],"
    " [512, 609, 724, 861, 1024, 1218, 1448, 1722], [2048, 2435, 2896, 3444, 4096, 4871, 5793, 6889]]",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
    "[[1.0]]",
    # every anchor on a blob reaches the box head (RPN NMS would drop a well-fitting anchor next to a
    # slightly smaller one): the box head, not the RPN, decides which box fits
    "MODEL.RPN.NMS_THRESH",
    "1.0",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "1000",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST",
    "0.3",  # boxes inside a blob, next to the one that fits, score high too
]


def _identity_norms(module: nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "running_mean") and hasattr(m, "weight"):
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            m.weight.fill_(1.0)
            m.bias.zero_()


def _zero_all(module: nn.Module) -> None:
    for p in module.parameters():
        p.zero_()


def _route(conv: nn.Conv2d, out_ch: int, in_ch: int, weight: float = 1.0) -> None:
    """``conv`` adds ``weight`` x input channel ``in_ch`` (its centre tap) to output channel ``out_ch``."""
    k = conv.weight.shape[-1] // 2
    conv.weight[out_ch, in_ch, k, k] = weight


@torch.no_grad()
def make_blob_detector(model: nn.Module) -> nn.Module:
    """Set the weights of a torchvision-engine ``TorchvisionRCNN`` (ResNet-18/34, BN or FrozenBN, square
    anchors as in ``BLOB_MODEL_OPTS``) so that it detects bright blobs; returns the model in eval mode."""
    if getattr(model, "engine", None) != "torchvision":
        raise ValueError("make_blob_detector needs a torchvision-engine model")
    _zero_all(model)
    _identity_norms(model)
    body = model.backbone.body
    # stem: channels 0 and 1 = (mean brightness of the 7x7 window - _LOW or _FLOOR) * _GAIN, from the
    # normalised input, after the ReLU
    mean = torch.as_tensor(model.transform.image_mean)
    std = torch.as_tensor(model.transform.image_std)
    taps = body.conv1.weight.shape[-1] * body.conv1.weight.shape[-2]
    for ch, offset in ((0, _LOW), (1, _FLOOR)):
        for c in range(3):
            body.conv1.weight[ch, c] = _GAIN * float(std[c]) / (3 * taps)
        body.bn1.bias[ch] = _GAIN * (float(mean.mean()) - offset)
    # residual stages: branches off (last norm weight 0), shortcuts pass channels 0 and 1
    for stage in (body.layer1, body.layer2, body.layer3, body.layer4):
        for block in stage:
            last_norm = block.bn3 if hasattr(block, "bn3") else block.bn2
            last_norm.weight.zero_()
            if block.downsample is not None:
                _route(block.downsample[0], 0, 0)
                _route(block.downsample[0], 1, 1)
    # FPN: lateral of level i -> channels 1 + i (from 0) and 5 + i (from 1); output conv of level i takes
    # channel 1 + i back to 0, with a leak of 5 + i
    fpn = model.backbone.fpn
    levels = len(fpn.inner_blocks)
    for i, (inner, layer) in enumerate(zip(fpn.inner_blocks, fpn.layer_blocks)):
        _route(inner[0], 1 + i, 0)
        _route(inner[0], 1 + levels + i, 1)
        _route(layer[0], 0, 1 + i)
        _route(layer[0], 0, 1 + levels + i, weight=_LEAK)
        if i + 1 < levels:  # a little of the top-down path, so every stage feeds P2 as usual
            _route(layer[0], 0, 2 + i, weight=0.05)
    # RPN: pass channel 0 through the shared conv(s); objectness = 4 * (brightness - threshold)
    head = model.rpn.head
    for block in head.conv:
        _route(block[0], 0, 0)
    anchors = head.cls_logits.weight.shape[0]
    head.cls_logits.weight[:, 0, 0, 0] = 4.0
    head.cls_logits.bias.copy_(-4.0 * _TAU - 0.01 * torch.arange(anchors, dtype=torch.float32))
    # box head, on the 7x7 ROIAlign grid of P2: unit 0 = how far the centre 3x3 is above the blob threshold;
    # units 1..8 = how far each side's middle samples are above / below the edge level (a box that fits has
    # its sides on the blob's edge). Class logit = 16 * unit 0 - 12 * (sides
    # above) - 6 * (sides below) - 4.
    roi_heads = model.roi_heads
    res = int(roi_heads.box_roi_pool.output_size[0])
    c = res // 2
    templates = [torch.zeros(res, res) for _ in range(5)]
    templates[0][c - 1 : c + 2, c - 1 : c + 2] = 1.0
    templates[1][0, 1:-1] = templates[2][-1, 1:-1] = templates[3][1:-1, 0] = templates[4][1:-1, -1] = 1.0
    fc6, fc7 = roi_heads.box_head.fc6, roi_heads.box_head.fc7
    fc6.weight[0, : res * res] = (templates[0] / templates[0].sum()).flatten()
    fc6.bias[0] = -_TAU
    for side, t in enumerate(templates[1:]):
        w = (t / t.sum()).flatten()
        fc6.weight[1 + 2 * side, : res * res] = w
        fc6.weight[2 + 2 * side, : res * res] = -w
        fc6.bias[1 + 2 * side], fc6.bias[2 + 2 * side] = -_EDGE, _EDGE
    # unit 9 = the box's mean brightness (channel 0 is positive everywhere by the leak, so this unit is active):
    # every box's score depends on P2, as in any trained model, and Grad-CAM always finds a gradient
    fc6.weight[9, : res * res] = 1.0 / (res * res)
    # unit 10 = unit 0's excess over 1.15: subtracted, it caps unit 0's share of the logit, so the best score
    # stays below 1.0 in float32 (a saturated 1.0 would survive a threshold of 1)
    fc6.weight[10] = fc6.weight[0]
    fc6.bias[10] = -_TAU - 1.15
    for unit in range(11):
        fc7.weight[unit, unit] = 1.0
    cls = roi_heads.box_predictor.cls_score  # row 0 is torchvision's background
    cls.weight[1, 0] = 16.0
    cls.weight[1, 1:9:2] = -12.0  # a side brighter than an edge: the box lies inside a blob
    cls.weight[1, 2:9:2] = -6.0
    cls.weight[1:, 9] = 0.1
    cls.weight[1, 10] = -16.0
    cls.bias[1:] = -4.0
    return model.eval()


def blob_detector(*opts) -> nn.Module:
    """A blob detector built from ``configs/Base-RCNN-FPN.yaml`` + ``BLOB_MODEL_OPTS`` + ``opts``; its config
    is ``model.cfg``."""
    from conftest import REPO

    from meddet.config import load_config
    from meddet.modeling import build_model

    cfg = load_config(str(REPO / "configs" / "Base-RCNN-FPN.yaml"), [*BLOB_MODEL_OPTS, *map(str, opts)])
    model = make_blob_detector(build_model(cfg))
    model.cfg = cfg
    return model
