"""detectron2 <-> torchvision-engine checkpoint conversion, tested on state dicts built from detectron2's
published parameter naming (detectron2/modeling/backbone/resnet.py, fpn.py, proposal_generator/rpn.py,
roi_heads/box_head.py, fast_rcnn.py), plus a numerical twin test where detectron2 is installed."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign

from meddet.config import get_fpn_cfg
from meddet.errors import ModelError
from meddet.modeling import load_weights
from meddet.modeling.d2_convert import (
    convert_checkpoint,
    d2_to_tv_state_dict,
    load_d2_state_dict,
    tv_to_d2_state_dict,
)
from meddet.modeling.torchvision_engine import D2MultiScaleRoIAlign, TorchvisionRCNN

NUM_CLASSES = 3
_BLOCKS = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3]}


def _cfg(depth: int, num_classes: int = NUM_CLASSES):
    cfg = get_fpn_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]  # keeps random-weight activations in range
    return cfg


def _d2_state(depth: int, num_classes: int = NUM_CLASSES, seed: int = 0) -> dict[str, torch.Tensor]:
    """A detectron2 GeneralizedRCNN R-FPN state dict (FrozenBN backbone), keys and shapes as detectron2
    names them, random values with non-trivial batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int, norm: bool = True, bias: bool = False) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
        if bias:
            sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1
        if norm:
            sd[f"{name}.norm.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
            sd[f"{name}.norm.bias"] = 0.1 * torch.randn(cout, generator=g)
            sd[f"{name}.norm.running_mean"] = 0.1 * torch.randn(cout, generator=g)
            sd[f"{name}.norm.running_var"] = 0.5 + torch.rand(cout, generator=g)

    bu = "backbone.bottom_up"
    conv(f"{bu}.stem.conv1", 64, 3, 7)
    in_ch = 64
    out_ch = 64 if depth < 50 else 256
    stage_channels = []
    for stage, blocks in enumerate(_BLOCKS[depth]):
        bottleneck = out_ch // 4
        for b in range(blocks):
            name = f"{bu}.res{stage + 2}.{b}"
            if in_ch != out_ch:
                conv(f"{name}.shortcut", out_ch, in_ch, 1)
            if depth < 50:
                conv(f"{name}.conv1", out_ch, in_ch, 3)
                conv(f"{name}.conv2", out_ch, out_ch, 3)
                sd[f"{name}.conv2.norm.weight"] *= 0.1  # small residual branches keep activations bounded
            else:
                conv(f"{name}.conv1", bottleneck, in_ch, 1)
                conv(f"{name}.conv2", bottleneck, bottleneck, 3)
                conv(f"{name}.conv3", out_ch, bottleneck, 1)
                sd[f"{name}.conv3.norm.weight"] *= 0.1
            in_ch = out_ch
        stage_channels.append(out_ch)
        out_ch *= 2
    for level, ch in zip(range(2, 6), stage_channels):
        conv(f"backbone.fpn_lateral{level}", 256, ch, 1, norm=False, bias=True)
        conv(f"backbone.fpn_output{level}", 256, 256, 3, norm=False, bias=True)
    rpn = "proposal_generator.rpn_head"
    conv(f"{rpn}.conv", 256, 256, 3, norm=False, bias=True)
    conv(f"{rpn}.objectness_logits", 3, 256, 1, norm=False, bias=True)
    conv(f"{rpn}.anchor_deltas", 12, 256, 1, norm=False, bias=True)
    sd[f"{rpn}.anchor_deltas.weight"] *= 0.01  # proposals near the anchors, as in a trained RPN
    for name, cout, cin in (
        ("box_head.fc1", 1024, 256 * 49),
        ("box_head.fc2", 1024, 1024),
        ("box_predictor.cls_score", num_classes + 1, 1024),
        ("box_predictor.bbox_pred", num_classes * 4, 1024),
    ):
        sd[f"roi_heads.{name}.weight"] = torch.randn(cout, cin, generator=g) * cin**-0.5
        sd[f"roi_heads.{name}.bias"] = torch.randn(cout, generator=g) * 0.1
    return sd


@pytest.mark.parametrize("depth", [18, 50])
def test_every_parameter_maps_and_the_converted_model_predicts(depth):
    cfg, d2 = _cfg(depth), _d2_state(depth)
    tv = d2_to_tv_state_dict(d2, cfg)
    assert len(tv) == len(d2)  # one to one: nothing dropped, nothing invented
    model = TorchvisionRCNN(cfg)
    result = model.load_state_dict(tv, strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    assert torch.equal(
        model.backbone.body.layer1[0].bn1.running_var, d2["backbone.bottom_up.res2.0.conv1.norm.running_var"]
    )
    model.eval()
    with torch.no_grad():
        (det,) = model([{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}])
    assert det["boxes"].shape[1] == 4 and len(det["boxes"]) > 0
    assert det["classes"].min() >= 0 and det["classes"].max() < NUM_CLASSES
    assert torch.isfinite(det["scores"]).all()


@pytest.mark.parametrize("depth", [18, 50])
def test_d2_to_tv_to_d2_is_the_identity(depth):
    cfg, d2 = _cfg(depth), _d2_state(depth)
    tv = d2_to_tv_state_dict(d2, cfg)
    back = tv_to_d2_state_dict(tv, cfg)
    assert back.keys() == d2.keys()
    assert all(torch.equal(back[k], d2[k]) for k in d2)
    again = d2_to_tv_state_dict(back, cfg)
    assert all(torch.equal(again[k], tv[k]) for k in tv)  # tv -> d2 -> tv as well


def test_conv_fc_box_head_and_two_rpn_convs_map():
    """detectron2's 4conv1fc-style head (``conv1..convN``, ``fc1``) and a multi-conv RPN (``conv.conv0``)."""
    cfg, d2 = _cfg(18), _d2_state(18)
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2, 1
    cfg.MODEL.RPN.CONV_DIMS = [-1, -1]
    for k in (1, 2):
        d2[f"roi_heads.box_head.conv{k}.weight"] = torch.randn(256, 256, 3, 3) * 0.01
        d2[f"roi_heads.box_head.conv{k}.bias"] = torch.randn(256)
        d2[f"proposal_generator.rpn_head.conv.conv{k - 1}.weight"] = torch.randn(256, 256, 3, 3)
        d2[f"proposal_generator.rpn_head.conv.conv{k - 1}.bias"] = torch.randn(256)
    for leaf in ("weight", "bias"):
        del d2[f"roi_heads.box_head.fc2.{leaf}"], d2[f"proposal_generator.rpn_head.conv.{leaf}"]
    tv = d2_to_tv_state_dict(d2, cfg)
    assert torch.equal(tv["roi_heads.box_head.1.0.weight"], d2["roi_heads.box_head.conv2.weight"])
    assert torch.equal(tv["rpn.head.conv.1.0.bias"], d2["proposal_generator.rpn_head.conv.conv1.bias"])
    back = tv_to_d2_state_dict(tv, cfg)
    assert back.keys() == d2.keys() and all(torch.equal(back[k], d2[k]) for k in d2)


def test_box_predictor_gives_the_same_class_scores_and_boxes():
    cfg, d2 = _cfg(18), _d2_state(18)
    tv = d2_to_tv_state_dict(d2, cfg)
    x = torch.randn(5, 1024)
    p = "roi_heads.box_predictor."
    d2_scores = F.softmax(F.linear(x, d2[p + "cls_score.weight"], d2[p + "cls_score.bias"]), -1)
    tv_scores = F.softmax(F.linear(x, tv[p + "cls_score.weight"], tv[p + "cls_score.bias"]), -1)
    # detectron2: classes 0..K-1 then background; torchvision: background then 1..K
    assert torch.allclose(d2_scores[:, :-1], tv_scores[:, 1:], atol=1e-6)
    assert torch.allclose(d2_scores[:, -1], tv_scores[:, 0], atol=1e-6)
    d2_deltas = F.linear(x, d2[p + "bbox_pred.weight"], d2[p + "bbox_pred.bias"])
    tv_deltas = F.linear(x, tv[p + "bbox_pred.weight"], tv[p + "bbox_pred.bias"])
    assert torch.allclose(d2_deltas, tv_deltas[:, 4:], atol=1e-6)


def test_bgr_stem_sees_the_same_pixels_after_conversion():
    """detectron2 normalizes BGR with BGR mean/std; the torchvision engine flips to RGB first: the first
    convolution must give the same feature map."""
    cfg, d2 = _cfg(18), _d2_state(18)
    model = TorchvisionRCNN(cfg)
    model.load_state_dict(d2_to_tv_state_dict(d2, cfg), strict=False)
    bgr = torch.rand(3, 32, 32) * 255
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    d2_out = F.conv2d(((bgr - mean) / std)[None], d2["backbone.bottom_up.stem.conv1.weight"], stride=2, padding=3)
    tv_out = model.backbone.body.conv1(model.transform.normalize(bgr)[None])
    assert torch.allclose(d2_out, tv_out, atol=1e-4)


def test_checkpoint_files_convert_both_ways(tmp_path):
    cfg, d2 = _cfg(18), _d2_state(18)
    src = tmp_path / "model_final.pth"
    torch.save({"model": d2, "iteration": 90000}, src)
    tv_path = convert_checkpoint(src, tmp_path / "tv.pth", "d2-to-tv", cfg)
    model = TorchvisionRCNN(cfg)
    load_weights(model, tv_path)  # strict meddet loader accepts it
    assert torch.equal(model.roi_heads.box_head.fc6.weight, d2["roi_heads.box_head.fc1.weight"])
    d2_path = convert_checkpoint(tv_path, tmp_path / "d2.pth", "tv-to-d2", cfg)
    back = torch.load(d2_path, weights_only=True)["model"]
    assert back.keys() == d2.keys() and all(torch.equal(back[k], d2[k]) for k in d2)


def test_model_zoo_pkl_with_numpy_arrays_loads(tmp_path):
    d2 = _d2_state(18)
    path = tmp_path / "model_final_abc.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in d2.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    state = load_d2_state_dict(path)
    assert state.keys() == d2.keys() and torch.equal(
        state["backbone.fpn_output2.bias"], d2["backbone.fpn_output2.bias"]
    )


def test_caffe2_names_are_refused(tmp_path):
    path = tmp_path / "R-50.pkl"
    with path.open("wb") as f:
        pickle.dump({"blobs": {"res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32)}}, f)
    with pytest.raises(ModelError, match="res2_0_branch2a_w.*Caffe2"):
        load_d2_state_dict(path)


@pytest.mark.parametrize(
    ("key", "shape", "what"),
    [
        ("backbone.bottom_up.res3.0.conv2_offset.weight", (18, 128, 3, 3), "deformable"),
        ("roi_heads.box_head.1.fc1.weight", (1024, 12544), "cascade"),
        ("roi_heads.box_head.conv1.norm.weight", (256,), "GN"),
        ("roi_heads.mask_head.mask_fcn1.weight", (256, 256, 3, 3), "mask head"),
    ],
)
def test_unsupported_features_are_refused_naming_the_key(key, shape, what):
    d2 = _d2_state(18)
    d2[key] = torch.zeros(shape)
    with pytest.raises(ModelError, match=rf"{key.replace('.', '[.]')}.*{what}"):
        d2_to_tv_state_dict(d2, _cfg(18))


def test_class_agnostic_box_regression_is_refused():
    d2 = _d2_state(18)
    d2["roi_heads.box_predictor.bbox_pred.weight"] = torch.zeros(4, 1024)
    d2["roi_heads.box_predictor.bbox_pred.bias"] = torch.zeros(4)
    with pytest.raises(ModelError, match="bbox_pred.weight.*CLS_AGNOSTIC_BBOX_REG"):
        d2_to_tv_state_dict(d2, _cfg(18))


def test_missing_and_leftover_parameters_are_named():
    d2 = _d2_state(18)
    del d2["backbone.fpn_output3.bias"]
    d2["backbone.fpn_extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelError, match=r"backbone\.fpn_output3\.bias.*backbone\.fpn_extra\.weight"):
        d2_to_tv_state_dict(d2, _cfg(18))


def test_wrong_depth_or_class_count_is_a_clear_error():
    with pytest.raises(ModelError, match=r"without a counterpart \(backbone\.bottom_up\.res2\.0\.conv3.*DEPTH"):
        d2_to_tv_state_dict(_d2_state(50), _cfg(18))
    with pytest.raises(ModelError, match="cls_score.weight.*NUM_CLASSES 5"):
        d2_to_tv_state_dict(_d2_state(18, num_classes=3), _cfg(18, num_classes=5))


def test_engine_reproduces_detectron2_stride_anchors_and_pooler():
    cfg = _cfg(50)
    model = TorchvisionRCNN(cfg)
    first = model.backbone.body.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)  # STRIDE_IN_1X1 (MSRA)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    first = TorchvisionRCNN(cfg).backbone.body.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    # detectron2 cell anchors are not rounded: size 32, ratio 0.5 -> w = sqrt(2048)
    cell = model.rpn.anchor_generator.cell_anchors[0]
    assert torch.allclose(
        cell[0], torch.tensor([-math.sqrt(2048) / 2, -math.sqrt(512) / 2, math.sqrt(2048) / 2, math.sqrt(512) / 2])
    )
    assert model.roi_heads.box_roi_pool.aligned  # POOLER_TYPE ROIAlignV2
    # P6 anchors 64 px apart even when the padded image (96 px) is no multiple of 64
    images = ImageList(torch.zeros(1, 3, 96, 128), [(96, 128)])
    grids = [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    anchors = model.rpn.anchor_generator(images, [torch.zeros(1, 1, h, w) for h, w in grids])[0]
    square = anchors[-12:].reshape(4, 3, 4)[:, 1]  # P6: 2x2 locations, the ratio-1 anchor
    centres = (square[:, :2] + square[:, 2:]) / 2
    assert centres.tolist() == [[0.0, 0.0], [64.0, 0.0], [0.0, 64.0], [64.0, 64.0]]


def test_roi_pooler_levels_match_torchvision_when_not_aligned():
    """Without the half-pixel shift, the detectron2 pooler agrees with torchvision's MultiScaleRoIAlign
    (same canonical 224 / level 4 assignment) for boxes away from level boundaries."""
    names = ["0", "1", "2", "3"]
    feats = {n: torch.randn(1, 4, 64 // 2**i, 64 // 2**i) for i, n in enumerate(names)}
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 50.0], [0.0, 0.0, 250.0, 240.0], [10.0, 20.0, 13.0, 22.0]])]
    ours = D2MultiScaleRoIAlign(names, 7, 2, aligned=False)(feats, boxes, [(256, 256)])
    ref = MultiScaleRoIAlign(names, 7, 2)(feats, boxes, [(256, 256)])
    assert torch.allclose(ours, ref, atol=1e-6)
    aligned = D2MultiScaleRoIAlign(names, 7, 2, aligned=True)(feats, boxes, [(256, 256)])
    assert not torch.allclose(aligned, ref)


@pytest.mark.detectron2
@pytest.mark.parametrize("depth", [18, 50])
def test_detectron2_model_and_converted_twin_give_the_same_detections(depth):
    pytest.importorskip("detectron2", reason="detectron2 is not installed (build it from source to run)")
    from detectron2.config import get_cfg as d2_get_cfg
    from detectron2.modeling import build_model as d2_build_model
    from torchvision.ops import box_iou

    cfg = _cfg(depth)
    d2_cfg = d2_get_cfg()
    d2_cfg.MODEL.DEVICE = "cpu"
    d2_cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    d2_cfg.MODEL.RESNETS.DEPTH = depth
    d2_cfg.MODEL.PIXEL_STD = list(cfg.MODEL.PIXEL_STD)
    d2_cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    d2_cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    d2_cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    d2_cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    d2_cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    d2_cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    d2_cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST
    d2_cfg.MODEL.RPN.POST_NMS_TOPK_TEST = cfg.MODEL.RPN.POST_NMS_TOPK_TEST
    d2_cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    d2_cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    d2_cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    d2_cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
    d2_cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    d2_cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    d2_cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    d2_cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
    d2_model = d2_build_model(d2_cfg).eval()
    missing = d2_model.load_state_dict(_d2_state(depth), strict=False)
    assert not missing.unexpected_keys and all("anchor" in k or "pixel" in k for k in missing.missing_keys)
    twin = TorchvisionRCNN(cfg).eval()
    twin.load_state_dict(d2_to_tv_state_dict(d2_model.state_dict(), cfg), strict=False)
    image = torch.rand(3, 224, 288, generator=torch.Generator().manual_seed(depth)) * 255
    with torch.no_grad():
        ref = d2_model([{"image": image, "height": 224, "width": 288}])[0]["instances"]
        (ours,) = twin([{"image": image, "height": 224, "width": 288}])
    ref_dets = (ref.pred_boxes.tensor, ref.scores, ref.pred_classes)
    our_dets = (ours["boxes"], ours["scores"], ours["classes"])
    assert len(ref) > 10
    # every detection clear of the score threshold (by more than the 1e-3 tolerance) has its twin
    for (boxes, scores, classes), (other_boxes, other_scores, other_classes) in (
        (ref_dets, our_dets),
        (our_dets, ref_dets),
    ):
        clear = scores > cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST + 1e-3
        iou = box_iou(boxes[clear], other_boxes)
        iou[classes[clear][:, None] != other_classes[None, :]] = 0
        best, match = iou.max(dim=1)
        assert (best >= 0.99).all()
        assert torch.allclose(other_scores[match], scores[clear], atol=1e-3)
