"""Class activation maps: the map of a detection lies on the object (HiResCAM, Grad-CAM, Grad-CAM++,
Eigen-CAM), the formulas give known answers on crafted feature maps, and errors name what is wrong."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_OPTS

from meddet.errors import DataError, ModelError

SIZE = 96


def _mass_image(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    img = rng.integers(0, 40, (SIZE, SIZE), dtype=np.uint8)
    r = int(rng.integers(9, 14))
    cx, cy = (int(v) for v in rng.integers(r + 2, SIZE - r - 2, 2))
    cv2.circle(img, (cx, cy), r, 200, -1)
    return img, [cx - r, cy - r, cx + r + 1, cy + r + 1]


def _batch_item(img: np.ndarray, box=None) -> dict:
    t = torch.from_numpy(np.repeat(img[None].astype(np.float32), 3, axis=0))
    item = {"image": t, "height": SIZE, "width": SIZE}
    if box is not None:
        item["boxes"] = torch.tensor([box], dtype=torch.float32)
        item["classes"] = torch.tensor([0])
    return item


@pytest.fixture(scope="module")
def trained_model():
    """A tiny torchvision detector that finds bright masses by construction (tests/blob_detector.py): a
    from-scratch training run learns something else on every CPU, these weights detect the same everywhere."""
    from blob_detector import blob_detector

    return blob_detector("MODEL.ROI_HEADS.NUM_CLASSES", 1)


def test_the_constructed_detector_finds_each_mass():
    """The fixture's premise, checked on 30 random masses: the top detection fits the mass and is confident."""
    from blob_detector import blob_detector
    from torchvision.ops import box_iou

    model = blob_detector("MODEL.ROI_HEADS.NUM_CLASSES", 1)
    for seed in range(30):
        img, gt = _mass_image(np.random.default_rng(seed))
        with torch.no_grad():
            det = model([_batch_item(img)])[0]
        assert len(det["boxes"]) > 0, f"seed {seed}: no detection"
        iou = float(box_iou(det["boxes"][:1], torch.tensor([gt], dtype=torch.float32))[0, 0])
        assert iou > 0.55 and float(det["scores"][0]) > 0.9, f"seed {seed}: top box IoU {iou:.2f}"


def test_gradcam_energy_lies_in_detected_mass(trained_model):
    from meddet.xai import gradcam

    img, gt = _mass_image(np.random.default_rng(123))
    item = _batch_item(img)
    with torch.no_grad():
        det = trained_model([item])[0]
    assert det["boxes"].shape[0] > 0, "the trained model should find the mass"
    top = det["boxes"][0].numpy()
    assert top[0] < (gt[0] + gt[2]) / 2 < top[2] and top[1] < (gt[1] + gt[3]) / 2 < top[3]
    cam = gradcam(trained_model, item, detection_index=0)
    assert cam.heatmap.shape == (SIZE, SIZE)
    assert cam.heatmap.max() == pytest.approx(1.0)
    assert cam.energy_inside() > 0.5, f"only {cam.energy_inside():.2f} of the map inside the box (layer {cam.layer})"
    assert cam.method == "hirescam" and cam.layer == "p2"  # a ~20 px box is pooled from the stride-4 level


def test_gradcam_on_named_layer_and_given_box(trained_model):
    from meddet.xai import gradcam

    img, gt = _mass_image(np.random.default_rng(5))
    cam = gradcam(
        trained_model, _batch_item(img), box=gt, class_index=0, layer="backbone.body.layer2", method="gradcam"
    )
    assert cam.layer == "backbone.body.layer2" and cam.method == "gradcam"
    assert cam.heatmap.shape == (SIZE, SIZE) and np.isfinite(cam.heatmap).all()
    assert 0.0 <= cam.score <= 1.0


def test_gradcam_errors_name_the_argument(trained_model):
    from meddet.xai import gradcam

    img, gt = _mass_image(np.random.default_rng(6))
    with pytest.raises(ModelError, match="layer"):
        gradcam(trained_model, _batch_item(img), box=gt, class_index=0, layer="no.such.module")
    with pytest.raises(DataError, match="class_index"):
        gradcam(trained_model, _batch_item(img), box=gt, class_index=3)
    with pytest.raises(DataError, match="method"):
        gradcam(trained_model, _batch_item(img), box=gt, class_index=0, method="scorecam")
    with pytest.raises(ModelError, match="no gradient"):
        gradcam(trained_model, _batch_item(img), box=gt, class_index=0, layer="backbone.fpn.layer_blocks.3")
    with pytest.raises(DataError, match="detection_index"):
        gradcam(trained_model, _batch_item(img), detection_index=10_000)


def test_overlay_draws_heat_inside_box(trained_model):
    from meddet.xai import gradcam, overlay

    img, gt = _mass_image(np.random.default_rng(7))
    cam = gradcam(trained_model, _batch_item(img), box=gt, class_index=0)
    out = overlay(img, [cam], labels=["mass"])
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))


def test_explain_writes_overlays_per_image(trained_model, tmp_path):
    from meddet.xai import explain

    weights = tmp_path / "model.pth"
    torch.save(trained_model.state_dict(), weights)
    img, _ = _mass_image(np.random.default_rng(123))
    png = tmp_path / "case.png"
    cv2.imwrite(str(png), img)
    written = explain(
        trained_model.cfg, [png], tmp_path / "xai", weights=weights, score_thresh=0.05, per_detection=True
    )
    names = sorted(p.name for p in written)
    assert names[0] == "case_det0_gradcam.png" and "case_gradcam.png" in names
    out = cv2.imread(str(tmp_path / "xai" / "case_gradcam.png"))
    assert out.shape == (SIZE, SIZE, 3)
    with pytest.raises(DataError, match="missing.png"):
        explain(trained_model.cfg, [tmp_path / "missing.png"], tmp_path / "xai", weights=weights)


def _hot_features(seed: int, channels: int = 16, size: int = 20) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """Post-ReLU-like activations: low noise everywhere, a hot region in every channel with its own
    positive loading."""
    g = torch.Generator().manual_seed(seed)
    act = torch.rand(1, channels, size, size, generator=g) * 0.3
    region = (slice(5, 9), slice(12, 16))
    act[0, :, region[0], region[1]] += 1.0 + torch.rand(channels, 1, 1, generator=g) * 2
    return act, region


def _peak_in(cam: torch.Tensor, region: tuple[slice, slice]) -> bool:
    y, x = np.unravel_index(int(cam.argmax()), tuple(cam.shape))
    return region[0].start <= y < region[0].stop and region[1].start <= x < region[1].stop


@pytest.mark.parametrize("method", ["gradcam++", "eigencam", "hirescam", "gradcam"])
def test_each_method_peaks_on_the_hot_region(method):
    from meddet.xai import activation_map

    act, region = _hot_features(0)
    # The box score's gradient: positive on the region in half the channels, noise elsewhere.
    grad = torch.randn(act.shape, generator=torch.Generator().manual_seed(1)) * 0.01
    grad[0, :8, region[0], region[1]] += 0.5
    cam = activation_map(act, None if method == "eigencam" else grad, method)
    assert cam.shape == (1, 20, 20) and torch.isfinite(cam).all()
    assert float(cam.max()) > float(cam.min()), "the map must not be constant"
    assert _peak_in(cam[0], region)


def test_eigencam_sign_is_corrected():
    """The principal component's sign is arbitrary; the map must light the hot region for every seed."""
    from meddet.xai import activation_map

    for seed in range(12):
        act, region = _hot_features(seed)
        cam = activation_map(act, None, "eigencam")[0]
        assert _peak_in(cam, region), f"seed {seed}: Eigen-CAM peaks off the hot region"
        y, x = region
        assert float(cam[y, x].mean()) > 5 * float(cam.mean()), f"seed {seed}: the hot region is not highlighted"


def test_eigencam_ignores_batch_padding():
    """Padding rows (a huge constant) change nothing when the fit is restricted to the valid part."""
    from meddet.xai import activation_map

    act, _ = _hot_features(3)
    padded = torch.cat([act, torch.full((1, 16, 6, 20), 50.0)], dim=2)
    plain = activation_map(act, None, "eigencam")[0]
    with_pad = activation_map(padded, None, "eigencam", valid=(20, 20))[0, :20]
    torch.testing.assert_close(with_pad, plain, rtol=1e-4, atol=1e-5)


def test_gradcam_plus_plus_known_answer():
    """One channel, A = [[1, 0], [0, 3]] (sum 4), G = [[1, 0], [0, 0.5]]:
    a = G^2 / (2 G^2 + 4 G^3) = 1/6 at (0, 0) and 0.25 / (0.5 + 0.5) = 1/4 at (1, 1); w = 1/6 + 0.5/4 = 7/24."""
    from meddet.xai import activation_map

    act = torch.tensor([[[[1.0, 0.0], [0.0, 3.0]]]])
    grad = torch.tensor([[[[1.0, 0.0], [0.0, 0.5]]]])
    cam = activation_map(act, grad, "gradcam++")
    torch.testing.assert_close(cam, torch.tensor([[[7 / 24, 0.0], [0.0, 21 / 24]]]), rtol=1e-5, atol=1e-6)
    # Negative gradients carry no weight (only relu(G) counts), unlike Grad-CAM's mean.
    cam = activation_map(act, -grad, "gradcam++")
    assert float(cam.abs().max()) == 0.0


@pytest.mark.parametrize("method", ["gradcam++", "eigencam"])
def test_new_methods_on_the_trained_detector(trained_model, method):
    from meddet.xai import gradcam

    img, gt = _mass_image(np.random.default_rng(123))
    cam = gradcam(trained_model, _batch_item(img), box=gt, class_index=0, method=method)
    assert cam.method == method and cam.heatmap.shape == (SIZE, SIZE)
    assert np.isfinite(cam.heatmap).all() and cam.heatmap.max() == pytest.approx(1.0)
    assert cam.heatmap.std() > 0.05, "the map must not be constant"


def test_several_boxes_in_one_pass_match_one_at_a_time(trained_model):
    from meddet.xai import gradcam, gradcams

    img, gt = _mass_image(np.random.default_rng(9))
    item = _batch_item(img)
    boxes = [gt, [2, 2, 40, 30]]
    both = gradcams(trained_model, item, boxes, [0, 0])
    assert [c.layer for c in both] == ["p2", "p2"]
    for cam, box in zip(both, boxes):
        alone = gradcam(trained_model, item, box=box, class_index=0)
        np.testing.assert_allclose(cam.heatmap, alone.heatmap, atol=1e-5)
        assert cam.score == pytest.approx(alone.score, abs=1e-6)
    assert gradcams(trained_model, item, boxes, [0, 0], deadline=0.0) == []  # a passed deadline explains none


def test_explain_detections_scales_maps_to_max_side(trained_model, tmp_path):
    from meddet.inference.predictor import Predictor
    from meddet.xai import explain_detections

    weights = tmp_path / "model.pth"
    torch.save(trained_model.state_dict(), weights)
    predictor = Predictor(trained_model.cfg, weights=weights)
    img, gt = _mass_image(np.random.default_rng(123))
    wide = np.concatenate([img, np.zeros_like(img)], axis=1)  # 96 x 192
    full = explain_detections(predictor, wide, [gt], [0])[0]
    small = explain_detections(predictor, wide, [gt], [0], max_side=96)[0]
    assert full.heatmap.shape == (SIZE, 2 * SIZE) and small.heatmap.shape == (SIZE // 2, SIZE)
    np.testing.assert_allclose(small.box, np.asarray(gt) / 2)
    assert small.energy_inside() > 0.5 and full.energy_inside() > 0.5


def test_score_is_the_class_probability_of_the_box(trained_model):
    """The reported score is the mass class's softmax probability (background column excluded): high on
    the mass, low on an empty corner."""
    from meddet.xai import gradcams

    img, gt = _mass_image(np.random.default_rng(123))
    x1, y1, x2, y2 = gt
    corner = [0, 0, 20, 20] if x1 > 30 or y1 > 30 else [SIZE - 21, SIZE - 21, SIZE - 1, SIZE - 1]
    on_mass, off_mass = gradcams(trained_model, _batch_item(img), [gt, corner], [0, 0])
    assert on_mass.score > 0.5 > off_mass.score


def test_explanation_interface_of_the_torchvision_engine():
    """The interface meddet.xai uses: padded normalised input with the image's size, FPN maps named
    p2..p6 as on the detectron2 engine, and (N, K + 1) box logits."""
    from meddet.config import get_fpn_cfg
    from meddet.modeling import build_model

    cfg = get_fpn_cfg()
    cfg.merge_from_list(TINY_MODEL_OPTS + ["MODEL.ROI_HEADS.NUM_CLASSES", "2"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        padded, size = model.explain_inputs(torch.full((3, 70, 90), 255.0))
        features = model.feature_maps(padded)
        logits = model.box_class_logits(features, torch.tensor([[5.0, 5.0, 40.0, 30.0], [0.0, 0.0, 90.0, 70.0]]))
    assert padded.shape == (1, 3, 96, 96) and size == (70, 90)
    assert padded[0, :, 70:].abs().max() == 0 and padded[0, :, :70, :90].abs().min() > 0  # normalised, zero pad
    assert list(features) == ["p2", "p3", "p4", "p5", "p6"]
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(24, 24), (12, 12), (6, 6), (3, 3), (2, 2)]
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_a_model_without_the_explanation_interface_is_refused():
    from meddet.xai import gradcam

    class Plain(torch.nn.Module):
        engine = "custom"
        num_classes = 1

    with pytest.raises(ModelError, match="custom.*lacks explain_inputs, feature_maps, box_class_logits"):
        gradcam(Plain(), {"image": torch.zeros(3, 8, 8)}, box=[0, 0, 4, 4], class_index=0)
