"""RetinaNet (MODEL.META_ARCHITECTURE RetinaNet) on the torchvision engine: detectron2's keys reach the model,
meddet's model interface (losses, detections in original pixels, classes 0..K-1), training and resuming,
checkpoint conversion to detectron2's names and back, and the downstream stages (evaluate, bundles).
Nothing here asserts what a model learned (tiny from-scratch runs differ between machines)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_OPTS

from meddet.config import get_fpn_cfg
from meddet.errors import ConfigError, ModelError

RETINA_OPTS = [
    "MODEL.META_ARCHITECTURE",
    "RetinaNet",
    "MODEL.BACKBONE.NAME",
    "build_retinanet_resnet_fpn_backbone",
    "MODEL.RESNETS.OUT_FEATURES",
    "['res3', 'res4', 'res5']",
    "MODEL.FPN.IN_FEATURES",
    "['res3', 'res4', 'res5']",
    "MODEL.RETINANET.NUM_CLASSES",
    "2",
    "MODEL.RETINANET.NUM_CONVS",
    "1",
    "MODEL.ANCHOR_GENERATOR.SIZES",
    "[[16], [32], [64], [128], [256]]",
]


def _cfg(*opts):
    cfg = get_fpn_cfg()
    cfg.merge_from_list([*TINY_MODEL_OPTS, *RETINA_OPTS, *opts])
    return cfg


def _model(*opts):
    from meddet.modeling import build_model

    torch.manual_seed(0)
    return build_model(_cfg(*opts))


def _item(h=96, w=128, boxes=((10.0, 12.0, 40.0, 44.0),), classes=(1,), seed=0, **extra):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(3, h, w, generator=g) * 255,
        "height": h,
        "width": w,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "classes": torch.tensor(classes, dtype=torch.int64),
        **extra,
    }


def test_config_keys_reach_the_model():
    from meddet.modeling.retinanet import TorchvisionRetinaNet

    m = _model(
        "MODEL.RETINANET.NUM_CONVS",
        "2",
        "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
        "0.3",
        "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
        "1.5",
        "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA",
        "0.2",
        "MODEL.RETINANET.SCORE_THRESH_TEST",
        "0.1",
        "MODEL.RETINANET.TOPK_CANDIDATES_TEST",
        "77",
        "MODEL.RETINANET.NMS_THRESH_TEST",
        "0.4",
        "MODEL.RETINANET.PRIOR_PROB",
        "0.02",
        "MODEL.RETINANET.BBOX_REG_WEIGHTS",
        "(2.0, 2.0, 1.0, 1.0)",
        "MODEL.RETINANET.IOU_THRESHOLDS",
        "[0.3, 0.6]",
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
        "[[0.5, 1.0]]",
        "TEST.DETECTIONS_PER_IMAGE",
        "33",
    )
    assert isinstance(m, TorchvisionRetinaNet) and m.num_classes == 2 and m.engine == "torchvision"
    cls_head = m.head.classification_head
    assert len(cls_head.conv) == 2 and len(m.head.regression_head.conv) == 2
    assert cls_head.cls_logits.out_channels == 2 * 2  # anchors per location x classes
    assert cls_head.cls_logits.bias.detach().allclose(torch.full((4,), -math.log(0.98 / 0.02)))
    assert (m.focal_loss_alpha, m.focal_loss_gamma, m.smooth_l1_beta) == (0.3, 1.5, 0.2)
    assert (m.score_thresh, m.topk_candidates, m.nms_thresh, m.detections_per_img) == (0.1, 77, 0.4, 33)
    assert m.box_coder.weights == (2.0, 2.0, 1.0, 1.0)
    assert (m.proposal_matcher.low_threshold, m.proposal_matcher.high_threshold) == (0.3, 0.6)
    assert m.anchor_generator.strides == [8, 16, 32, 64, 128]
    # detectron2's P6 comes from res5 (512 channels on R18), not from P5
    assert m.backbone.fpn.extra_blocks.p6.in_channels == 512 and not m.backbone.fpn.extra_blocks.use_P5
    feats = m.feature_maps(m.explain_inputs(torch.zeros(3, 96, 128))[0])
    assert list(feats) == ["p3", "p4", "p5", "p6", "p7"]
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2, 1]  # 128 / stride (ceil)


def test_wrong_keys_are_clear_errors():
    with pytest.raises(ConfigError, match="MODEL.RETINANET.NUM_CLASSES is 5 but MODEL.ROI_HEADS.NUM_CLASSES is 2"):
        _model("MODEL.RETINANET.NUM_CLASSES", "5")
    with pytest.raises(ModelError, match="MODEL.FPN.IN_FEATURES"):
        _model("MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']")
    with pytest.raises(ModelError, match="MODEL.RETINANET.PRIOR_PROB"):
        _model("MODEL.RETINANET.PRIOR_PROB", "1.5")


def test_losses_are_finite_with_an_empty_image_and_use_detectron2s_normalizer():
    m = _model()
    m.train()
    losses = m([_item(), _item(boxes=(), classes=(), seed=1)])
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    num_pos = m.training_stats["num_pos_anchors"] * 2
    assert num_pos >= 1  # the one box matches at least its best anchor (low-quality matches)
    assert m.loss_normalizer == pytest.approx(100 * 0.9 + num_pos * 0.1)
    only_empty = m([_item(boxes=(), classes=(), seed=2)])
    assert only_empty["loss_box_reg"].item() == 0 and torch.isfinite(only_empty["loss_cls"])


def test_eval_gives_boxes_in_original_pixels_and_classes_0_to_k_minus_1():
    m = _model("MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "50")
    m.eval()
    item = _item(h=96, w=128)
    with torch.no_grad():
        small = m([{"image": item["image"], "height": 96, "width": 128}])[0]
        big = m([{"image": item["image"], "height": 192, "width": 256}])[0]
    assert set(small) == {"boxes", "scores", "classes"} and 0 < len(small["boxes"]) <= 50
    assert small["classes"].dtype == torch.int64 and set(small["classes"].tolist()) <= {0, 1}
    assert (small["scores"][:-1] >= small["scores"][1:]).all()
    # the same detections, scaled x2 (boxes clipped to 256 x 192, none empty)
    assert len(big["boxes"]) == len(small["boxes"])
    assert torch.allclose(big["boxes"], small["boxes"] * 2, atol=1e-3)
    assert (big["boxes"][:, 2] <= 256).all() and (big["boxes"][:, 3] <= 192).all()
    assert (big["boxes"][:, 2] > big["boxes"][:, 0]).all()


def test_checkpoint_converts_to_detectron2_names_and_back_exactly():
    from meddet.modeling.d2_convert import d2_to_tv_state_dict, tv_to_d2_state_dict

    for opts in ((), ("MODEL.RETINANET.NORM", "GN", "MODEL.RETINANET.NUM_CONVS", "2", "INPUT.FORMAT", "RGB")):
        cfg = _cfg(*opts)
        m = _model(*opts)
        tv = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
        d2 = tv_to_d2_state_dict(tv, cfg)
        # detectron2's RetinaNet names (meta_arch/retinanet.py RetinaNetHead, fpn.py LastLevelP6P7)
        assert {
            "head.cls_score.weight",
            "head.bbox_pred.bias",
            "backbone.top_block.p6.weight",
            "backbone.top_block.p7.bias",
            "backbone.fpn_lateral3.weight",
            "backbone.fpn_output5.bias",
            "head.cls_subnet.0.weight",
            "head.bbox_subnet.0.bias",
            "backbone.bottom_up.stem.conv1.weight",
        } <= set(d2)
        if opts:
            assert {"head.cls_subnet.1.weight", "head.cls_subnet.3.weight", "head.bbox_subnet.4.bias"} <= set(d2)
        else:
            assert "head.cls_subnet.2.weight" not in d2  # one conv: conv, ReLU
        back = d2_to_tv_state_dict(d2, cfg)
        assert set(back) == set(tv)
        assert all(torch.equal(back[k], tv[k]) for k in tv)


def test_checkpoint_files_convert_both_ways(tmp_path):
    from meddet.modeling import load_weights
    from meddet.modeling.checkpoint import save_checkpoint
    from meddet.modeling.d2_convert import convert_checkpoint

    cfg = _cfg()
    m = _model()
    save_checkpoint(tmp_path / "tv.pth", m)
    convert_checkpoint(tmp_path / "tv.pth", tmp_path / "d2.pth", "tv-to-d2", cfg)
    convert_checkpoint(tmp_path / "d2.pth", tmp_path / "tv2.pth", "d2-to-tv", cfg)
    torch.manual_seed(1)
    other = _model()
    load_weights(other, tmp_path / "tv2.pth")
    ref = m.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in other.state_dict().items() if not k.endswith("num_batches_tracked"))


def test_trains_and_resumes(tiny_cfg):
    from meddet.training import Trainer, last_checkpoint_path
    from meddet.training.events import read_metrics

    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(
        RETINA_OPTS + ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0"]
    )
    Trainer(cfg).train()
    out = cfg.OUTPUT_DIR
    assert last_checkpoint_path(out) is not None
    cfg.SOLVER.MAX_ITER = 4
    t = Trainer(cfg, resume=True)
    assert t.start_iter == 2
    t.train()
    lines = [l for l in read_metrics(f"{out}/metrics.json") if "total_loss" in l]
    assert [l["iteration"] for l in lines][-1] == 3
    assert all(math.isfinite(l["loss_cls"]) and math.isfinite(l["loss_box_reg"]) for l in lines)


def test_evaluate_and_bundle_round_trip(tiny_cfg, tmp_path):
    from meddet.apps.evaluate import evaluate_model
    from meddet.hub import export_bundle, from_pretrained
    from meddet.inference import Predictor
    from meddet.training import Trainer

    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(
        RETINA_OPTS
        + [
            "SOLVER.MAX_ITER",
            "1",
            "TEST.EVAL_PERIOD",
            "0",
            "MODEL.RETINANET.SCORE_THRESH_TEST",
            "0.0",
            "TEST.DETECTIONS_PER_IMAGE",
            "20",
        ]
    )
    Trainer(cfg).train()
    cfg.MODEL.WEIGHTS = f"{cfg.OUTPUT_DIR}/model_final.pth"
    metrics = evaluate_model(cfg, out_dir=tmp_path / "eval")
    assert "bbox/AP50" in metrics and (tmp_path / "eval" / "metrics.json").is_file()
    bundle = export_bundle(cfg.OUTPUT_DIR, tmp_path / "bundle")
    direct = Predictor(cfg, weights=cfg.MODEL.WEIGHTS)
    loaded = from_pretrained(bundle, device="cpu")
    image = np.random.default_rng(3).integers(0, 255, (96, 112), dtype=np.uint8)
    a, b = direct(image), loaded(image)
    assert len(a["boxes"]) > 0
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_allclose(a[key], b[key], atol=1e-5)
    assert loaded.cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    # sliced inference (tiles of 64 px) and the model summary take a RetinaNet as they take Faster R-CNN
    tiled = cfg.clone()
    tiled.merge_from_list(["TILING.ENABLED", "True", "TILING.SIZE", "64", "TILING.OVERLAP", "0.25"])
    sliced = Predictor(tiled, weights=cfg.MODEL.WEIGHTS)(image)
    assert sliced["boxes"].shape[1] == 4 and len(sliced["boxes"]) > 0
    assert (sliced["boxes"][:, 2] <= 112).all() and (sliced["boxes"][:, 3] <= 96).all()
    from meddet.modeling.summary import model_summary

    summary = model_summary(direct.model, cfg)
    assert summary.gflops > 0 and summary.parameters > 0


def test_gradcam_explains_a_retinanet_detection():
    from meddet.xai import gradcam

    m = _model("MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
    m.eval()
    cam = gradcam(m, {"image": _item()["image"], "height": 96, "width": 128}, detection_index=0)
    assert cam is not None


@pytest.mark.parametrize("name", ["demo_mammo_retinanet_R18_FPN.yaml", "cyto_demo_retinanet_R18_FPN.yaml"])
def test_demo_configs_build_a_retinanet(name):
    from conftest import REPO

    from meddet.config import load_config
    from meddet.modeling import build_model
    from meddet.modeling.retinanet import TorchvisionRetinaNet

    cfg = load_config(str(REPO / "configs" / name), ["MODEL.DEVICE", "cpu", "MODEL.ENGINE", "torchvision"])
    model = build_model(cfg)
    assert isinstance(model, TorchvisionRetinaNet)
    assert model.anchor_generator.num_anchors_per_location()[0] == 9
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 128, 128) * 255, "height": 128, "width": 128}])
    assert set(out[0]) == {"boxes", "scores", "classes"}


# ------------------------------------------------------------------ detectron2 engine (where it is installed)
@pytest.mark.detectron2
def test_detectron2_engine_builds_its_native_retinanet_with_meddets_interface():
    pytest.importorskip("detectron2", reason="detectron2 is not installed (build it from source to run)")
    from detectron2.modeling import RetinaNet

    model = _model("MODEL.ENGINE", "detectron2", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
    assert isinstance(model, RetinaNet) and model.engine == "detectron2" and model.num_classes == 2
    model.train()
    losses = model([_item(), _item(boxes=(), classes=(), seed=1)])
    assert set(losses) == {"loss_cls", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        det = model([{"image": _item()["image"], "height": 192, "width": 256}])[0]
    assert set(det) == {"boxes", "scores", "classes"} and set(det["classes"].tolist()) <= {0, 1}
    assert (det["boxes"][:, 2] <= 256).all()


@pytest.mark.detectron2
def test_detectron2_retinanet_and_its_converted_twin_give_the_same_detections():
    pytest.importorskip("detectron2", reason="detectron2 is not installed (build it from source to run)")
    from meddet.modeling.d2_convert import d2_to_tv_state_dict, tv_to_d2_state_dict

    opts = ("MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "30")
    d2_model = _model("MODEL.ENGINE", "detectron2", *opts).eval()
    tv_model = _model(*opts).eval()
    cfg = _cfg(*opts)
    state = {k: v for k, v in d2_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    tv_model.load_state_dict(d2_to_tv_state_dict(state, cfg), strict=False)
    back = tv_to_d2_state_dict(tv_model.state_dict(), cfg)
    assert all(torch.equal(back[k], state[k]) for k in back)
    item = {"image": _item(seed=4)["image"], "height": 96, "width": 128}
    with torch.no_grad():
        a, b = d2_model([item])[0], tv_model([item])[0]
    assert len(a["boxes"]) == len(b["boxes"]) > 0
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and torch.allclose(a["scores"], b["scores"], atol=1e-5)
    assert torch.equal(a["classes"], b["classes"])


def _perturbed(model, seed):
    """`model` with every float tensor of its state set to random values (so nothing equals a fresh build)."""
    g = torch.Generator().manual_seed(seed)
    state = {
        k: (torch.rand(v.shape, generator=g) if v.is_floating_point() else v) for k, v in model.state_dict().items()
    }
    model.load_state_dict(state)
    return model


def _assert_fine_tuned(model, saved, prior):
    """Every weight but the class conv equals `saved`; the class conv is detectron2's fresh one for 2 classes."""
    cls = model.head.classification_head.cls_logits
    for k, v in model.state_dict().items():
        if not k.startswith("head.classification_head.cls_logits."):
            assert torch.equal(v, saved[k]), k
    assert cls.weight.shape[0] == 2 * model.anchor_generator.num_anchors_per_location()[0]
    assert torch.allclose(cls.bias, torch.full_like(cls.bias, -math.log((1 - prior) / prior)))
    w = cls.weight.detach()
    assert 0.005 < float(w.std()) < 0.015 and abs(float(w.mean())) < 0.005
    model.eval()
    with torch.no_grad():
        (det,) = model([_item()])
    assert det["classes"].numel() == 0 or int(det["classes"].max()) <= 1


def test_class_count_change_reinitialises_only_the_class_conv(tmp_path, caplog):
    """Fine-tuning a 3-class RetinaNet checkpoint to 2 classes: everything loads but the classification conv,
    which starts as a fresh one (N(0, 0.01), prior-probability bias), with a warning naming it."""
    import logging

    from meddet.modeling import load_weights
    from meddet.modeling.checkpoint import save_checkpoint

    three = ("MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.ROI_HEADS.NUM_CLASSES", "3")
    path = save_checkpoint(tmp_path / "three.pth", _perturbed(_model(*three), 1))
    saved = torch.load(path, weights_only=True)["model"]
    two = _perturbed(_model("MODEL.RETINANET.PRIOR_PROB", "0.02"), 2)  # its class conv is not the fresh one either
    with caplog.at_level(logging.WARNING, logger="meddet.modeling.checkpoint"):
        load_weights(two, path)
    assert "head.classification_head.cls_logits.weight" in caplog.text and "re-initialising" in caplog.text
    _assert_fine_tuned(two, saved, 0.02)


def test_class_change_from_detectron2_names_converts_and_reinitialises(tmp_path):
    """A 3-class checkpoint in detectron2's names (head.cls_score) loads into a 2-class torchvision RetinaNet:
    converted on the fly as 3 classes, then the class conv re-initialised."""
    from meddet.modeling import load_model_weights
    from meddet.modeling.checkpoint import save_checkpoint
    from meddet.modeling.d2_convert import convert_checkpoint

    three = ("MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.ROI_HEADS.NUM_CLASSES", "3")
    save_checkpoint(tmp_path / "tv3.pth", _perturbed(_model(*three), 3))
    saved = torch.load(tmp_path / "tv3.pth", weights_only=True)["model"]
    convert_checkpoint(tmp_path / "tv3.pth", tmp_path / "d2_3.pth", "tv-to-d2", _cfg(*three))
    assert "head.cls_score.weight" in torch.load(tmp_path / "d2_3.pth", weights_only=True)["model"]
    two = _perturbed(_model(), 4)
    meta = load_model_weights(two, tmp_path / "d2_3.pth", _cfg())
    assert meta["converted_from"] == "detectron2"
    _assert_fine_tuned(two, saved, 0.01)


def test_other_mismatches_and_resume_are_still_refused(tmp_path):
    """Only the class conv may differ: another anchor count (the box regression differs too) is refused, and
    resuming never changes the class count; detectron2's loader check accepts only head.cls_score left out."""
    from meddet.modeling import load_weights
    from meddet.modeling.checkpoint import check_loaded, load_checkpoint_for_resume, save_checkpoint

    path = save_checkpoint(
        tmp_path / "three.pth", _model("MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.ROI_HEADS.NUM_CLASSES", "3")
    )
    more_anchors = _model("MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 20], [32, 40], [64, 80], [128, 160], [256, 320]]")
    with pytest.raises(ModelError, match="shape mismatches.*head.regression_head.bbox_reg.weight"):
        load_weights(more_anchors, path)
    with pytest.raises(ModelError, match="shape mismatches.*cls_logits"):
        load_checkpoint_for_resume(path, _model())
    m = _model()
    cls = ["head.cls_score.weight", "head.cls_score.bias"]
    assert check_loaded(path, m, {"model": {}}, cls, cls) == "class_change"
    with pytest.raises(ModelError, match="head.bbox_pred.weight"):
        check_loaded(path, m, {"model": {}}, [*cls, "head.bbox_pred.weight"], [*cls, "head.bbox_pred.weight"])
