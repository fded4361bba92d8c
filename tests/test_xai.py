"""Grad-CAM: the map of a detection lies on the object, and errors name what is wrong."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, TINY_MODEL_OPTS
from meddet.errors import DataError, ModelError

SIZE = 96
ITERS = 150
LR = 0.01


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
    """A tiny torchvision detector trained for a few dozen iterations on one-bright-mass images."""
    from meddet.config import load_config
    from meddet.modeling import build_model

    torch.manual_seed(0)
    cfg = load_config(str(REPO / "configs" / "Base-RCNN-FPN.yaml"),
                      TINY_MODEL_OPTS + ["MODEL.ROI_HEADS.NUM_CLASSES", "1"])
    model = build_model(cfg)
    model.cfg = cfg
    rng = np.random.default_rng(0)
    data = [_mass_image(rng) for _ in range(16)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    for it in range(ITERS):
        batch = [_batch_item(*data[(2 * it + k) % len(data)]) for k in range(2)]
        for g in opt.param_groups:
            g["lr"] = LR * min(1.0, (it + 1) / 10)
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


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
    cam = gradcam(trained_model, _batch_item(img), box=gt, class_index=0, layer="backbone.body.layer2",
                  method="gradcam")
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
        gradcam(trained_model, _batch_item(img), box=gt, class_index=0, method="eigencam")
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
    written = explain(trained_model.cfg, [png], tmp_path / "xai", weights=weights, score_thresh=0.05,
                      per_detection=True)
    names = sorted(p.name for p in written)
    assert names[0] == "case_det0_gradcam.png" and "case_gradcam.png" in names
    out = cv2.imread(str(tmp_path / "xai" / "case_gradcam.png"))
    assert out.shape == (SIZE, SIZE, 3)
    with pytest.raises(DataError, match="missing.png"):
        explain(trained_model.cfg, [tmp_path / "missing.png"], tmp_path / "xai", weights=weights)
