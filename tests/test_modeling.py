"""meddet.modeling: build_model for the torchvision engine, its batch interface, and checkpoints."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from conftest import image, seeded, small_model_cfg, train_batch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from meddet.config import get_cfg
from meddet.errors import ConfigError, DataError, EngineUnavailableError, ModelError
from meddet.modeling import build as build_module
from meddet.modeling import (
    build_model,
    load_checkpoint_for_resume,
    load_weights,
    resolve_device,
    save_checkpoint,
)

LOSSES = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}


def tiny_cfg(*opts):
    """An R18-FPN small enough to train a step in a fraction of a second on the CPU."""
    return small_model_cfg("torchvision", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, *opts)


def build(*opts, seed: int = 0):
    torch.manual_seed(seeded(seed))
    return build_model(tiny_cfg(*opts))


def sgd(model):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)


def trained(model, steps: int = 2, opt=None):
    """A few SGD steps, so weights (and BatchNorm statistics) differ from initialisation."""
    opt = opt or sgd(model)
    model.train()
    for _ in range(steps):
        losses = model(train_batch(2))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    return model, opt


def predict(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch)


# ------------------------------------------------------------------------------------- interface
def test_training_returns_detectron2_losses_finite_with_an_empty_image():
    model = build()
    model.train()
    losses = model(train_batch(2))
    assert set(losses) == LOSSES
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    only_empty = model([train_batch(2)[1]])
    assert set(only_empty) == LOSSES and all(torch.isfinite(v) for v in only_empty.values())
    assert only_empty["loss_box_reg"].item() == 0.0  # nothing to regress on an image without objects

    class0 = [{"image": image(64, 64), "boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "classes": torch.tensor([0])}]
    assert model(class0)["loss_box_reg"].item() > 0  # class 0 is an object, not torchvision's background


def test_eval_boxes_are_in_original_image_pixels():
    model = build()
    img = image(64, 96)
    at_tensor_size = predict(model, [{"image": img, "height": 64, "width": 96}])[0]
    at_original = predict(model, [{"image": img, "height": 128, "width": 192}])[0]
    assert set(at_original) == {"boxes", "scores", "classes"}
    boxes = at_original["boxes"]
    assert len(boxes) > 0 and boxes.shape[1] == 4
    torch.testing.assert_close(boxes, at_tensor_size["boxes"] * 2)
    assert boxes[:, 0::2].min() >= 0 and boxes[:, 0::2].max() <= 192
    assert boxes[:, 1::2].min() >= 0 and boxes[:, 1::2].max() <= 128
    assert at_original["classes"].dtype == torch.int64
    assert at_original["classes"].min() >= 0 and at_original["classes"].max() <= 2  # 0..K-1, no background
    assert len(boxes) <= get_cfg().TEST.DETECTIONS_PER_IMAGE


def test_bgr_and_rgb_inputs_give_the_same_detections():
    bgr_mean, bgr_std = [100.0, 110.0, 120.0], [50.0, 55.0, 60.0]
    bgr = build("MODEL.PIXEL_MEAN", bgr_mean, "MODEL.PIXEL_STD", bgr_std)
    rgb = build("INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", bgr_mean[::-1], "MODEL.PIXEL_STD", bgr_std[::-1], seed=1)
    rgb.load_state_dict(bgr.state_dict())
    img_bgr = image(64, 64)
    # the network sees (RGB - mean) / std in both cases
    mean_rgb, std_rgb = torch.tensor(bgr_mean[::-1])[:, None, None], torch.tensor(bgr_std[::-1])[:, None, None]
    expected = (img_bgr.flip(0) - mean_rgb) / std_rgb
    torch.testing.assert_close(bgr.transform.normalize(img_bgr), expected)
    a = predict(bgr, [{"image": img_bgr, "height": 64, "width": 64}])[0]
    b = predict(rgb, [{"image": img_bgr.flip(0), "height": 64, "width": 64}])[0]
    assert len(a["boxes"]) > 0
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (
            [{"image": image(32, 32), "boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "classes": torch.tensor([0])}],
            r"batch\[0\]\['boxes'\]\[0\].*x1 < x2",
        ),
        (
            [{"image": image(32, 32), "boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "classes": torch.tensor([3])}],
            r"batch\[0\]\['classes'\].*0\.\.2",
        ),
        (
            [{"image": image(32, 32), "boxes": torch.zeros(1, 5), "classes": torch.tensor([0])}],
            r"batch\[0\]\['boxes'\].*\(N, 4\)",
        ),
        ([{"image": image(32, 32)}], r"batch\[0\].*'boxes' and 'classes'"),
        ([{"image": torch.zeros(32, 32)}], r"batch\[0\]\['image'\].*3 channels"),
    ],
)
def test_bad_training_input_names_the_item(batch, match):
    model = build()
    model.train()
    with pytest.raises(DataError, match=match):
        model(batch)


# ------------------------------------------------------------------------------------- config
def test_num_classes_reaches_the_predictor():
    model = build("MODEL.ROI_HEADS.NUM_CLASSES", 5)
    assert model.num_classes == 5
    assert model.roi_heads.box_predictor.cls_score.out_features == 6  # + background
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 24


def test_depth_fpn_box_head_and_anchors_reach_the_model():
    model = build(
        "MODEL.RESNETS.DEPTH",
        34,
        "MODEL.FPN.OUT_CHANNELS",
        48,
        "MODEL.ROI_BOX_HEAD.FC_DIM",
        96,
        "MODEL.ANCHOR_GENERATOR.SIZES",
        [[4, 6], [8, 12], [16, 24], [32, 48], [64, 96]],
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
        [[1.0]],
        "MODEL.ROI_HEADS.NMS_THRESH_TEST",
        0.3,
        "TEST.DETECTIONS_PER_IMAGE",
        7,
    )
    body = model.backbone.body
    assert [len(body[f"layer{i}"]) for i in range(1, 5)] == [3, 4, 6, 3]
    assert model.backbone.out_channels == 48
    assert model.roi_heads.box_head.fc7.out_features == 96
    assert model.rpn.anchor_generator.sizes == ((4.0, 6.0), (8.0, 12.0), (16.0, 24.0), (32.0, 48.0), (64.0, 96.0))
    assert model.rpn.anchor_generator.aspect_ratios == ((1.0,),) * 5  # one list broadcast to every level
    assert model.rpn.head.cls_logits.out_channels == 2
    assert model.roi_heads.nms_thresh == 0.3 and model.roi_heads.detections_per_img == 7
    assert len(predict(model, [{"image": image(64, 64), "height": 64, "width": 64}])[0]["boxes"]) <= 7


@pytest.mark.parametrize(("freeze_at", "frozen"), [(0, []), (1, ["conv1", "bn1"]), (2, ["conv1", "bn1", "layer1"])])
def test_freeze_at_follows_detectron2(freeze_at, frozen):
    model = build("MODEL.BACKBONE.FREEZE_AT", freeze_at)
    body = model.backbone.body
    for name in ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]:
        module = body[name]
        grads = {p.requires_grad for p in module.parameters()}
        assert grads in ({False}, set()) if name in frozen else grads == {True}, name
        norms = [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        # frozen stages stop updating their statistics too (detectron2 converts them to FrozenBN)
        assert all(isinstance(m, FrozenBatchNorm2d) == (name in frozen) for m in norms), name
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())


@pytest.mark.parametrize(
    ("norm", "cls"), [("FrozenBN", FrozenBatchNorm2d), ("BN", nn.BatchNorm2d), ("GN", nn.GroupNorm)]
)
def test_resnet_norm(norm, cls):
    model = build("MODEL.RESNETS.NORM", norm)
    assert isinstance(model.backbone.body.bn1, cls)
    assert isinstance(model.backbone.body.layer4[-1].bn2, cls)


@pytest.mark.parametrize(
    ("opts", "key"),
    [
        (["MODEL.RESNETS.DEPTH", 200], "MODEL.RESNETS.DEPTH"),
        (["MODEL.RESNETS.NORM", "LayerNorm"], "MODEL.RESNETS.NORM"),
        (["MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, True, True]], "MODEL.RESNETS.DEFORM_ON_PER_STAGE"),
        (["MODEL.BACKBONE.FREEZE_AT", -1], "MODEL.BACKBONE.FREEZE_AT"),
        (["MODEL.ANCHOR_GENERATOR.SIZES", [[8], [16]]], "MODEL.ANCHOR_GENERATOR.SIZES"),
        (["MODEL.ROI_HEADS.NAME", "CascadeROIHeads"], "MODEL.ROI_HEADS.NAME"),
        (["MODEL.ENGINE", "mmdet"], "MODEL.ENGINE"),
        (["MODEL.DEVICE", "tpu"], "MODEL.DEVICE"),
    ],
)
def test_unsupported_config_names_the_key(opts, key):
    with pytest.raises(ModelError, match=key.replace(".", r"\.")):
        build_model(tiny_cfg(*opts))


def test_detectron2_requested_but_not_installed(monkeypatch):
    monkeypatch.setattr(build_module, "detectron2_available", lambda: False)
    with pytest.raises(EngineUnavailableError) as e:
        build_model(tiny_cfg("MODEL.ENGINE", "detectron2"))
    msg = str(e.value)
    assert "detectron2 is not installed" in msg and "\n" not in msg
    assert "https://detectron2.readthedocs.io/en/latest/tutorials/install.html" in msg
    assert "MODEL.ENGINE torchvision" in msg


def test_auto_engine_and_device(monkeypatch):
    monkeypatch.setattr(build_module, "detectron2_available", lambda: False)  # auto: detectron2 when installed
    model = build("MODEL.ENGINE", "auto")
    assert model.engine == "torchvision"
    assert resolve_device("cpu") == torch.device("cpu") == model.device
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")


# ------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_reproduces_predictions(tmp_path):
    model, _ = trained(build())
    batch = [{"image": image(64, 96, 5), "height": 128, "width": 192}]
    before = predict(model, batch)[0]
    assert len(before["boxes"]) > 0
    path = save_checkpoint(
        tmp_path / "ckpt" / "model_final.pth", model, iteration=7, extra={"class_names": ["mass", "calc", "other"]}
    )
    assert [p.name for p in path.parent.iterdir()] == ["model_final.pth"]  # no temporary file left

    fresh = build(seed=123)
    meta = load_weights(fresh, path)
    after = predict(fresh, batch)[0]
    for k in ("boxes", "scores", "classes"):
        assert torch.equal(before[k], after[k]), k
    arch = meta.pop("architecture")  # the engine and architecture travel with the weights
    assert meta == {"engine": "torchvision", "num_classes": 3, "class_names": ["mass", "calc", "other"]}
    assert arch["meta_architecture"] == "GeneralizedRCNN" and arch["depth"] == 18 and arch["num_classes"] == 3

    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    other = build(seed=7)
    load_weights(other, bare)
    assert torch.equal(predict(other, batch)[0]["scores"], before["scores"])


def test_class_count_change_loads_all_but_the_predictor(tmp_path, caplog):
    model, _ = trained(build())
    path = save_checkpoint(tmp_path / "m.pth", model)
    fresh = build("MODEL.ROI_HEADS.NUM_CLASSES", 5, seed=9)
    with caplog.at_level(logging.WARNING, logger="meddet.modeling.checkpoint"):
        load_weights(fresh, path)
    assert "roi_heads.box_predictor.cls_score.weight" in caplog.text
    assert "roi_heads.box_predictor.bbox_pred.weight" in caplog.text
    saved, loaded = model.state_dict(), fresh.state_dict()
    for k, v in loaded.items():
        if not k.startswith("roi_heads.box_predictor."):
            assert torch.equal(v, saved[k]), k
    assert fresh.roi_heads.box_predictor.cls_score.out_features == 6
    fresh.train()
    assert set(fresh(train_batch(2))) == LOSSES


def test_shape_mismatch_outside_the_predictor_lists_the_keys(tmp_path):
    path = save_checkpoint(tmp_path / "m.pth", build())
    wider = build("MODEL.FPN.OUT_CHANNELS", 64)
    with pytest.raises(ModelError) as e:
        load_weights(wider, path)
    msg = str(e.value)
    assert str(tmp_path / "m.pth") in msg and "shape mismatches" in msg
    assert "backbone.fpn.inner_blocks.0.0.weight: checkpoint (32, 64, 1, 1) vs model (64, 64, 1, 1)" in msg
    assert "more)" in msg  # long lists are cut, with a count

    deeper = build("MODEL.RESNETS.DEPTH", 34)
    with pytest.raises(ModelError, match="missing keys.*backbone.body.layer1.2"):
        load_weights(deeper, path)
    with pytest.raises(ModelError, match="nowhere.pth: checkpoint file not found"):
        load_weights(deeper, tmp_path / "nowhere.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ModelError, match="notes.pth: cannot be read as a PyTorch checkpoint"):
        load_weights(deeper, tmp_path / "notes.pth")


def test_resume_restores_model_optimizer_scheduler(tmp_path):
    model = build()
    opt = sgd(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trained(model, opt=opt)
    sched.step()
    path = save_checkpoint(tmp_path / "model_0000002.pth", model, opt, sched, iteration=2)

    model2 = build(seed=5)
    opt2 = sgd(model2)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    assert load_checkpoint_for_resume(path, model2, opt2, sched2) == 2
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == pytest.approx(0.005)
    buf, buf2 = opt.state[opt.param_groups[0]["params"][0]], opt2.state[opt2.param_groups[0]["params"][0]]
    assert torch.equal(buf["momentum_buffer"], buf2["momentum_buffer"])
    batch = [{"image": image(64, 64, 3), "height": 64, "width": 64}]
    assert torch.equal(predict(model, batch)[0]["scores"], predict(model2, batch)[0]["scores"])

    weights_only = save_checkpoint(tmp_path / "model_final.pth", model, iteration=2)
    with pytest.raises(ModelError, match="no optimizer state"):
        load_checkpoint_for_resume(weights_only, model2, opt2, sched2)
    other_classes = build("MODEL.ROI_HEADS.NUM_CLASSES", 5)
    with pytest.raises(ModelError, match="roi_heads.box_predictor.cls_score.weight"):
        load_checkpoint_for_resume(path, other_classes)


# ------------------------------------------------------------------------------------- training losses
def test_class_weights_scale_each_rois_cross_entropy():
    """CLASS_WEIGHTS [3, 0.5]: on fixed logits the box classifier's loss is sum_i w[y_i] * CE_i / N, with
    background (torchvision's column 0) weighing 1."""
    model = build("MODEL.ROI_HEADS.CLASS_WEIGHTS", [3.0, 0.5, 2.0])
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.5, 1.5, -1.0, 0.0], [0.0, 0.0, 3.0, 1.0], [1.0, 2.0, 0.0, 0.5]])
    labels = torch.tensor([0, 1, 2, 3])  # background, classes 0, 1, 2
    weights = [1.0, 3.0, 0.5, 2.0]
    by_hand = (
        sum(weights[y] * -(logits[i, y] - torch.logsumexp(logits[i], 0)) for i, y in enumerate(labels.tolist())) / 4
    )
    losses = model.roi_heads.box_losses(logits, torch.zeros(4, 16), [labels[:2], labels[2:]], [torch.zeros(2, 4)] * 2)
    torch.testing.assert_close(losses["loss_classifier"], by_hand)
    unweighted = build().roi_heads.box_losses(logits, torch.zeros(4, 16), [labels], [torch.zeros(4, 4)])
    torch.testing.assert_close(unweighted["loss_classifier"], torch.nn.functional.cross_entropy(logits, labels))
    assert model.state_dict().keys() == build().state_dict().keys()  # weights are config, not checkpoint


def test_class_weights_change_only_the_classification_loss():
    torch.manual_seed(seeded(3))
    plain = build()(train_batch(2))
    torch.manual_seed(seeded(3))
    ones = build("MODEL.ROI_HEADS.CLASS_WEIGHTS", [1.0, 1.0, 1.0])(train_batch(2))
    torch.manual_seed(seeded(3))
    heavy = build("MODEL.ROI_HEADS.CLASS_WEIGHTS", [5.0, 5.0, 5.0])(train_batch(2))
    for name in LOSSES:
        torch.testing.assert_close(ones[name], plain[name])  # all ones = unweighted
        if name != "loss_cls":
            torch.testing.assert_close(heavy[name], plain[name])
    assert heavy["loss_cls"] > plain["loss_cls"]  # foreground ROIs count five times


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_roi_box_loss_is_detectron2s_smooth_l1_over_sampled_rois(beta):
    model = build("MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", beta)
    labels = [torch.tensor([0, 2, 1]), torch.tensor([0])]  # 2 foreground ROIs of 4
    deltas = torch.zeros(4, 16)
    deltas[1, 8:12] = torch.tensor([0.2, -1.0, 0.05, 2.0])  # class 2's deltas of ROI 1
    deltas[2, 4:8] = torch.tensor([0.1, 0.1, -0.3, 0.0])
    targets = [torch.zeros(3, 4), torch.zeros(1, 4)]
    diffs = torch.tensor([0.2, -1.0, 0.05, 2.0, 0.1, 0.1, -0.3, 0.0]).abs()
    per_value = diffs if beta == 0 else torch.where(diffs < beta, 0.5 * diffs**2 / beta, diffs - 0.5 * beta)
    loss = model.roi_heads.box_losses(torch.zeros(4, 4), deltas, labels, targets)["loss_box_reg"]
    torch.testing.assert_close(loss, per_value.sum() / 4)  # divided by all sampled ROIs, not foreground


def test_rpn_losses_are_normalised_as_detectron2():
    """Sum over the sampled anchors / (RPN.BATCH_SIZE_PER_IMAGE * images); beta 0: L1 (torchvision: mean, 1/9)."""
    model = build("MODEL.RPN.BATCH_SIZE_PER_IMAGE", 8)
    labels = [torch.tensor([1.0, 0.0, -1.0, 0.0]), torch.tensor([0.0, 1.0, -1.0, -1.0])]  # all sampled (< quota)
    logits = torch.tensor([2.0, -1.0, 5.0, 0.5, 0.0, 1.0, -3.0, 4.0])
    deltas = torch.tensor([[0.5, -0.5, 0.0, 0.01]] * 8)
    targets = [torch.zeros(4, 4), torch.zeros(4, 4)]
    cls_loss, box_loss = model.rpn.compute_loss(logits[:, None], deltas, labels, targets)
    valid = torch.cat(labels) >= 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], torch.cat(labels)[valid], reduction="sum")
    torch.testing.assert_close(cls_loss, bce / 16)
    torch.testing.assert_close(box_loss, torch.tensor(2 * 1.01 / 16))  # 2 positives, L1 of each row 1.01


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        (["MODEL.ROI_HEADS.CLASS_WEIGHTS", [1.0, 2.0]], r"CLASS_WEIGHTS: \[1\.0, 2\.0\] has 2 values; expected 3"),
        (["MODEL.ROI_HEADS.CLASS_WEIGHTS", [1.0, 0.0, 2.0]], r"CLASS_WEIGHTS: .*expected finite numbers > 0"),
        (["MODEL.ROI_HEADS.CLASS_WEIGHTS", [1.0, -1.0, 2.0]], r"CLASS_WEIGHTS: .*expected finite numbers > 0"),
        (["MODEL.RPN.SMOOTH_L1_BETA", -0.1], r"MODEL\.RPN\.SMOOTH_L1_BETA: -0\.1; expected a number >= 0"),
        (["MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", -1.0], r"MODEL\.ROI_BOX_HEAD\.SMOOTH_L1_BETA: -1\.0"),
    ],
)
def test_bad_loss_settings_are_config_errors(opts, match):
    with pytest.raises(ConfigError, match=match):
        build_model(tiny_cfg(*opts))


def test_detectron2_installed_but_broken_is_explained(monkeypatch, caplog):
    """An import failure (e.g. compiled ops built for another torch): explicit request fails with the
    reason, auto falls back to torchvision with a warning."""
    monkeypatch.setattr(build_module, "detectron2_available", lambda: True)
    for name in [m for m in sys.modules if m == "detectron2" or m.startswith("detectron2.")] or ["detectron2"]:
        monkeypatch.setitem(sys.modules, name, None)  # import detectron2(.*) -> ImportError
    monkeypatch.delitem(sys.modules, "meddet.modeling.d2_engine", raising=False)
    broken = r"installed but cannot be imported \((ModuleNotFound|Import)Error: .*detectron2"
    with pytest.raises(EngineUnavailableError, match=broken):
        build_model(tiny_cfg("MODEL.ENGINE", "detectron2"))
    with caplog.at_level(logging.WARNING, logger="meddet.modeling.build"):
        assert build_model(tiny_cfg("MODEL.ENGINE", "auto")).engine == "torchvision"
    assert "cannot be imported" in caplog.text and "using torchvision" in caplog.text
