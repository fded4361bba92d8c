"""MODEL.ENGINE detectron2: detectron2's GeneralizedRCNN behind meddet's model interface, trained by meddet's
loop, loading detectron2 and meddet checkpoints, and giving the torchvision engine's losses and detections
for the same weights. Runs where detectron2 is installed; collected and skipped with the reason elsewhere."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2", reason="detectron2 is not installed (build it from source to run these tests)")

from conftest import D2_STATS, image, seeded, small_model_cfg, train_batch  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from meddet.errors import ModelError  # noqa: E402
from meddet.modeling import build_model, load_model_weights, save_checkpoint  # noqa: E402
from meddet.modeling.d2_convert import convert_checkpoint, tv_to_d2_state_dict  # noqa: E402
from meddet.modeling.d2_engine import Detectron2RCNN, WeightedFastRCNNOutputLayers  # noqa: E402

LOSSES = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}


def small_cfg(*opts):
    """An R18-FPN small enough for a training step in a fraction of a second on the CPU."""
    return small_model_cfg(
        "detectron2",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        2,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        0.05,
        "TEST.DETECTIONS_PER_IMAGE",
        1000,  # no top-k cut between near-equal scores in comparisons
        *opts,
    )


def predict(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch)


def twins(*opts, seed: int = 0):
    """A torchvision-engine model and the detectron2-engine model holding its converted weights."""
    cfg = small_cfg(*opts)
    torch.manual_seed(seeded(seed))
    tv = build_model(small_cfg("MODEL.ENGINE", "torchvision", *opts))
    d2 = build_model(cfg)
    result = d2.load_state_dict(tv_to_d2_state_dict(tv.state_dict(), cfg), strict=False)
    assert not result.unexpected_keys and all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    return tv, d2


def assert_same_detections(ours, ref, thresh):
    """Every detection clear of the score threshold has a twin of its class: IoU >= 0.99, score within 1e-3."""
    assert len(ref["boxes"]) > 0
    for a, b in ((ours, ref), (ref, ours)):
        clear = a["scores"] > thresh + 1e-3
        iou = box_iou(a["boxes"][clear], b["boxes"])
        iou[a["classes"][clear][:, None] != b["classes"][None, :]] = 0
        best, match = iou.max(dim=1)
        assert (best >= 0.99).all()
        torch.testing.assert_close(b["scores"][match], a["scores"][clear], atol=1e-3, rtol=0)


# ------------------------------------------------------------------------------------- building
@pytest.mark.parametrize("engine", ["detectron2", "auto"])
def test_engine_builds_detectron2s_model_from_meddet_keys(engine):
    model = build_model(small_cfg("MODEL.ENGINE", engine, "MODEL.ROI_HEADS.CLASS_WEIGHTS", [2.0, 0.5]))
    assert isinstance(model, Detectron2RCNN) and model.engine == "detectron2"
    assert model.num_classes == 2 and model.device == torch.device("cpu")
    d2 = model.d2_cfg
    assert d2.MODEL.FPN.OUT_CHANNELS == 32 and d2.MODEL.ANCHOR_GENERATOR.SIZES == [[8], [16], [32], [64], [128]]
    assert d2.TEST.DETECTIONS_PER_IMAGE == 1000 and "CLASS_WEIGHTS" not in d2.MODEL.ROI_HEADS
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # detectron2: background last
    assert isinstance(model.roi_heads.box_predictor, WeightedFastRCNNOutputLayers)
    assert model.roi_heads.box_predictor.class_weights.tolist() == [2.0, 0.5, 1.0]
    assert "roi_heads.box_predictor.class_weights" not in model.state_dict()  # config, not weights


def test_detectron2_build_errors_are_model_errors():
    with pytest.raises(ModelError, match="MODEL.META_ARCHITECTURE: 'SemanticSegmentor'"):
        build_model(small_cfg("MODEL.META_ARCHITECTURE", "SemanticSegmentor"))
    with pytest.raises(ModelError, match="detectron2 cannot build.*NoSuchHeads"):
        build_model(small_cfg("MODEL.ROI_HEADS.NAME", "NoSuchHeads"))


# ------------------------------------------------------------------------------------- interface
def test_training_losses_have_the_torchvision_engines_names_and_fall():
    """Small plain gradient steps on one batch, with the same anchor/proposal sampling each time (the RNG
    reseeded before each forward): the loss falls on any machine, as gradient descent must (6 momentum
    steps at lr 0.01 from a random init fell on one CPU and not on another)."""
    torch.manual_seed(seeded(0))
    model = build_model(small_cfg())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    totals = []
    batch = train_batch()
    for _ in range(3):
        torch.manual_seed(seeded(1))
        losses = model(batch)  # no detectron2 EventStorage open: the model opens one
        assert set(losses) == LOSSES and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert totals[2] < totals[1] < totals[0], totals


def test_eval_output_is_meddets_format_in_original_pixels():
    torch.manual_seed(seeded(0))
    model = build_model(small_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0))
    img = image(64, 96)
    small = predict(model, [{"image": img, "height": 64, "width": 96}])[0]
    (big,) = predict(model, [{"image": img, "height": 128, "width": 192}])
    assert set(big) == {"boxes", "scores", "classes"} and len(big["boxes"]) > 0
    torch.testing.assert_close(big["boxes"], small["boxes"] * 2)
    assert big["classes"].dtype == torch.int64 and 0 <= big["classes"].min() and big["classes"].max() <= 1
    assert big["boxes"][:, 0::2].max() <= 192 and big["boxes"][:, 1::2].max() <= 128


def test_trains_and_evaluates_through_meddets_trainer(tiny_cfg, tiny_coco):
    from meddet.training import Trainer

    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(
        [
            "MODEL.ENGINE",
            "detectron2",
            "SOLVER.MAX_ITER",
            4,
            "SOLVER.CHECKPOINT_PERIOD",
            1000,
            "DATASETS.VAL",
            f"('{tiny_coco}',)",
            "TEST.EVAL_PERIOD",
            1000,
            "EVAL.BOOTSTRAP_SAMPLES",
            0,
        ]
    )
    trainer = Trainer(cfg)
    assert trainer.model.engine == "detectron2"
    trainer.train()
    lines = [json.loads(line) for line in (trainer.output_dir / "metrics.json").read_text().splitlines()]
    loss_lines = [line for line in lines if "total_loss" in line]
    assert loss_lines and all(LOSSES <= set(line) for line in loss_lines)
    assert all(torch.isfinite(torch.tensor([line[k] for k in LOSSES])).all() for line in loss_lines)
    assert any("bbox/AP50" in line for line in lines)  # evaluated by meddet's evaluator
    final = trainer.output_dir / "model_final.pth"
    assert torch.load(final, weights_only=True)["meddet"]["engine"] == "detectron2"
    fresh = build_model(cfg)
    load_model_weights(fresh, final)
    batch = [{"image": image(96, 96, 4), "height": 96, "width": 96}]
    ref, again = predict(trainer.model, batch)[0], predict(fresh, batch)[0]
    assert all(torch.equal(ref[k], again[k]) for k in ref)


def test_demo_config_trains_and_evaluates_on_the_detectron2_engine(tiny_coco, tmp_path):
    """The demo recipe (configs/demo_mammo_R18_FPN.yaml) as is, only the engine, data and length changed:
    `detectron.py -c train` then `-c evaluate` on detectron2's model."""
    from conftest import REPO

    import detectron

    run = tmp_path / "run"
    common = [
        "--config-file",
        str(REPO / "configs" / "demo_mammo_R18_FPN.yaml"),
        "MODEL.ENGINE",
        "detectron2",
        "MODEL.DEVICE",
        "cpu",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "2",
        "DATASETS.TRAIN",
        f"('{tiny_coco}',)",
        "DATASETS.VAL",
        "()",
        "DATASETS.TEST",
        f"('{tiny_coco}',)",
        "DATALOADER.NUM_WORKERS",
        "0",
        "EVAL.BOOTSTRAP_SAMPLES",
        "0",
        "EVAL.GALLERY_SIZE",
        "0",
        "OUTPUT_DIR",
        str(run),
    ]
    assert detectron.main(detectron.parse_args(["-c", "train", "SOLVER.MAX_ITER", "3", *common])) == 0
    assert torch.load(run / "model_final.pth", weights_only=True)["meddet"]["engine"] == "detectron2"
    assert detectron.main(detectron.parse_args(["-c", "evaluate", "--config-file", str(run / "config.yaml")])) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert "bbox/AP50" in metrics and metrics["gt/images"] == 8


# ------------------------------------------------------------------------------------- checkpoints
def test_torchvision_weights_converted_give_the_same_detections(tmp_path):
    """Train on the torchvision engine, convert with d2_convert, load into the detectron2 engine through
    detectron2's DetectionCheckpointer: the same detections."""
    tv, _ = twins()
    opt = torch.optim.SGD(tv.parameters(), lr=0.01, momentum=0.9)
    tv.train()
    for _ in range(3):
        loss = sum(tv(train_batch()).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    tv_path = save_checkpoint(tmp_path / "tv.pth", tv)
    cfg = small_cfg()
    d2_path = convert_checkpoint(tv_path, tmp_path / "d2.pth", "tv-to-d2", cfg)
    torch.manual_seed(seeded(99))
    d2 = build_model(cfg)
    assert load_model_weights(d2, d2_path) == {}
    for seed, (h, w) in enumerate([(96, 128), (64, 64)]):
        batch = [{"image": image(h, w, seed), "height": 2 * h, "width": 2 * w}]
        assert_same_detections(predict(d2, batch)[0], predict(tv, batch)[0], cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)


def test_model_zoo_pkl_and_class_count_change_load_through_detectron2(tmp_path, caplog):
    torch.manual_seed(seeded(1))
    source = build_model(small_cfg("MODEL.ROI_HEADS.NUM_CLASSES", 5))
    path = tmp_path / "model_final_abc.pkl"
    with path.open("wb") as f:
        pickle.dump(
            {"model": {k: v.numpy() for k, v in source.state_dict().items()}, "__author__": "Detectron2 Model Zoo"}, f
        )
    torch.manual_seed(seeded(2))
    same = build_model(small_cfg("MODEL.ROI_HEADS.NUM_CLASSES", 5))
    load_model_weights(same, path)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in same.state_dict().items())
    other = build_model(small_cfg())  # 2 classes: the predictor is skipped, everything else loads
    load_model_weights(other, path)
    sd = other.state_dict()
    assert torch.equal(sd["backbone.fpn_output2.weight"], source.state_dict()["backbone.fpn_output2.weight"])
    assert sd["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3
    with pytest.raises(ModelError, match="nowhere.pkl: checkpoint file not found"):
        load_model_weights(other, tmp_path / "nowhere.pkl")


# ------------------------------------------------------------------------------------- loss parity
@pytest.mark.parametrize(
    "opts",
    [
        [],  # detectron2's defaults: SMOOTH_L1_BETA 0 (L1) in RPN and box head
        [
            "MODEL.ROI_HEADS.CLASS_WEIGHTS",
            [2.0, 0.5],
            "MODEL.RPN.SMOOTH_L1_BETA",
            0.1,
            "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA",
            0.5,
            "MODEL.RPN.LOSS_WEIGHT",
            2.0,
        ],
    ],
)
def test_both_engines_give_the_same_losses_for_the_same_weights(opts):
    """Sampling made deterministic (quotas above the anchor/proposal counts, so every candidate is sampled):
    the same weights and batch give the same four losses on both engines."""
    tv, d2 = twins(
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
        100000,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        100000,
        "MODEL.RESNETS.NORM",
        "FrozenBN",
        *opts,
    )
    tv.train()
    d2.train()
    ours, ref = tv(train_batch()), d2(train_batch())
    assert set(ours) == set(ref) == LOSSES
    for name in LOSSES:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-7, msg=name)


# ------------------------------------------------------------------------------------- explanations
METHODS = ("hirescam", "gradcam", "gradcam++", "eigencam")


def test_detections_of_the_detectron2_engine_are_explained_by_every_method(tmp_path):
    """meddet.xai through the model interface: gradcam of a detection and `-c explain`'s overlays work on
    detectron2's model, with layers named p2..p5 or by detectron2's module names."""
    import cv2
    import numpy as np

    from meddet.xai import explain, gradcam

    torch.manual_seed(seeded(0))
    cfg = small_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "INPUT.MIN_SIZE_TEST", 64)
    model = build_model(cfg).eval()
    item = {"image": image(64, 96), "height": 128, "width": 192}
    for method in METHODS:
        cam = gradcam(model, item, detection_index=0, method=method)
        assert cam.method == method and cam.heatmap.shape == (128, 192)
        assert np.isfinite(cam.heatmap).all() and cam.heatmap.max() == pytest.approx(1.0)
        assert cam.heatmap.std() > 0.01, f"{method}: the map must not be constant"
        assert 0.0 < cam.score < 1.0 and cam.layer in ("p2", "p3", "p4", "p5")
    box = [20.0, 24.0, 120.0, 100.0]
    cam = gradcam(model, item, box=box, class_index=1, layer="backbone.bottom_up.res3")
    assert cam.layer == "backbone.bottom_up.res3" and cam.heatmap.std() > 0.01
    with pytest.raises(ModelError, match="'backbone.body.layer2' is not a backbone module.*backbone.bottom_up.res3"):
        gradcam(model, item, box=box, class_index=1, layer="backbone.body.layer2")

    weights = tmp_path / "d2.pth"
    save_checkpoint(weights, model)
    png = tmp_path / "case.png"
    cv2.imwrite(str(png), (image(64, 96)[0].numpy()).astype(np.uint8))
    written = explain(
        cfg, [png], tmp_path / "xai", weights=weights, score_thresh=0.0, max_detections=2, per_detection=True
    )
    assert sorted(p.name for p in written) == ["case_det0_gradcam.png", "case_det1_gradcam.png", "case_gradcam.png"]
    assert cv2.imread(str(tmp_path / "xai" / "case_gradcam.png")).shape == (64, 96, 3)


def test_both_engines_explain_a_box_the_same_for_the_same_weights():
    """Same interface, same answer: a torchvision model and its converted detectron2 twin give the same
    map and score for the same box, at an FPN level and at the same ResNet stage under each engine's name."""
    import numpy as np

    from meddet.xai import gradcam

    tv, d2 = twins()
    tv.eval()
    d2.eval()
    item = {"image": image(64, 96, 3), "height": 128, "width": 192}
    box = [20.0, 24.0, 80.0, 60.0]
    for method in METHODS:
        ours, ref = (
            gradcam(d2, item, box=box, class_index=1, method=method),
            gradcam(tv, item, box=box, class_index=1, method=method),
        )
        assert ours.layer == ref.layer == "p2"
        assert ours.heatmap.std() > 0.01
        np.testing.assert_allclose(ours.heatmap, ref.heatmap, atol=1e-3, err_msg=method)
        assert ours.score == pytest.approx(ref.score, abs=1e-5)
    ours = gradcam(d2, item, box=box, class_index=0, layer="backbone.bottom_up.res3")
    ref = gradcam(tv, item, box=box, class_index=0, layer="backbone.body.layer2")
    np.testing.assert_allclose(ours.heatmap, ref.heatmap, atol=1e-3)
    assert ours.score == pytest.approx(ref.score, abs=1e-5)


# ------------------------------------------------------------------------------------- issue 20


def test_training_step_keeps_detectron2s_statistics():
    torch.manual_seed(0)
    model = build_model(small_cfg())
    model.train()
    model(train_batch())
    assert D2_STATS <= set(model.training_stats)
    assert all(isinstance(float(v), float) for v in model.training_stats.values())


def test_torchvision_checkpoint_into_the_detectron2_engine_is_converted_or_refused(tmp_path):
    """The silent-random case with real detectron2: a torchvision-engine checkpoint (no engine field, as old
    bundles) loaded into the detectron2 engine gives the torchvision model's detections, or a refusal."""
    tv, _ = twins()
    path = tmp_path / "model.pth"
    torch.save({"model": tv.state_dict()}, path)
    cfg = small_cfg()
    torch.manual_seed(5)
    d2 = build_model(cfg)
    with pytest.raises(ModelError, match="torchvision-engine weights.*-c convert-weights"):
        load_model_weights(d2, path)
    load_model_weights(d2, path, cfg)
    batch = [{"image": image(96, 128), "height": 96, "width": 128}]
    assert_same_detections(predict(d2, batch)[0], predict(tv, batch)[0], cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)


def test_detectron2_checkpointer_loads_that_fill_too_little_are_refused(tmp_path, caplog):
    torch.manual_seed(1)
    source = build_model(small_cfg())
    state = source.state_dict()
    stray = tmp_path / "stray.pth"
    torch.save({"model": {"head.weight": torch.zeros(3)}}, stray)
    with pytest.raises(ModelError, match="stray.pth: checkpoint does not fit the model: .*missing keys"):
        load_model_weights(build_model(small_cfg()), stray)
    backbone = tmp_path / "R-18.pkl"
    with backbone.open("wb") as f:
        pickle.dump(
            {
                "model": {k: v.numpy() for k, v in state.items() if k.startswith("backbone.bottom_up.")},
                "__author__": "test",
            },
            f,
        )
    other = build_model(small_cfg())
    load_model_weights(other, backbone)  # an ImageNet-style backbone: accepted, heads stay random
    assert torch.equal(
        other.state_dict()["backbone.bottom_up.stem.conv1.weight"], state["backbone.bottom_up.stem.conv1.weight"]
    )
    assert "holds only the backbone" in caplog.text
