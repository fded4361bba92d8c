"""Ensembles: weighted boxes fusion / NMS of several models, members with different class sets."""

from __future__ import annotations

import numpy as np
import pytest

from meddet.errors import ConfigError
from meddet.inference.ensemble import EnsemblePredictor, fuse_detections


def _set(rows):
    a = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return {
        "boxes": a[:, :4].astype(np.float32),
        "scores": a[:, 4].astype(np.float32),
        "classes": a[:, 5].astype(np.int64),
    }


DETS = _set([(10, 20, 50, 60, 0.9, 0), (100, 100, 140, 150, 0.6, 1), (300, 10, 330, 40, 0.4, 0)])


def test_wbf_of_identical_sets_is_the_set():
    fused = fuse_detections([DETS, DETS], method="wbf", iou_thresh=0.55, image_size=(400, 500))
    np.testing.assert_allclose(fused["boxes"], DETS["boxes"], atol=1e-3)
    np.testing.assert_allclose(fused["scores"], DETS["scores"], atol=1e-5)
    np.testing.assert_array_equal(fused["classes"], DETS["classes"])


def test_wbf_averages_and_lowers_boxes_found_by_one_model_only():
    other = _set([(14, 20, 54, 60, 0.9, 0)])
    fused = fuse_detections([DETS, other], method="wbf", iou_thresh=0.5, image_size=(400, 500))
    first = fused["boxes"][np.argmax(fused["scores"])]
    np.testing.assert_allclose(first, [12, 20, 52, 60], atol=1e-3)  # equal scores: the mean box
    # The box only the first model found keeps half its score (one of two models).
    lone = np.flatnonzero(np.isclose(fused["boxes"][:, 0], 100))
    assert fused["scores"][lone].tolist() == pytest.approx([0.3], abs=1e-5)


def test_nms_fusion_with_weights_prefers_the_heavier_model():
    a = _set([(10, 10, 50, 50, 0.8, 0)])
    b = _set([(12, 10, 52, 50, 0.7, 0)])
    fused = fuse_detections([a, b], method="nms", iou_thresh=0.5, weights=[1, 3], image_size=(100, 100))
    np.testing.assert_allclose(fused["boxes"], [[12, 10, 52, 50]], atol=1e-3)
    # As ensemble_boxes.nms: each score times its model's weight over the sum of the weights.
    assert fused["scores"].tolist() == pytest.approx([0.7 * 3 / 4], abs=1e-5)
    # Without weights the scores are kept as they are (ensemble_boxes.nms with weights=None).
    plain = fuse_detections([a, b], method="nms", iou_thresh=0.5, image_size=(100, 100))
    assert plain["scores"].tolist() == pytest.approx([0.8], abs=1e-5)


def test_empty_sets_and_bad_settings():
    empty = _set([])
    fused = fuse_detections([empty, empty], image_size=(10, 10))
    assert fused["boxes"].shape == (0, 4) and fused["classes"].dtype == np.int64
    with pytest.raises(ConfigError, match="ENSEMBLE.METHOD"):
        fuse_detections([DETS], method="soft", image_size=(10, 10))
    with pytest.raises(ConfigError, match="ENSEMBLE.WEIGHTS"):
        fuse_detections([DETS, DETS], weights=[1.0], image_size=(10, 10))


class FakePredictor:
    """A Predictor stand-in: fixed detections, its own class list."""

    def __init__(self, class_names, det):
        self.class_names = class_names
        self.det = det
        self.seen = []

    def read(self, image):
        return image

    def predict_batch(self, images):
        self.seen.extend(im.shape for im in images)
        return [dict(self.det) for _ in images]


def _ens_cfg(**kw):
    from meddet.config import get_cfg

    cfg = get_cfg()
    for k, v in kw.items():
        setattr(cfg.ENSEMBLE, k, v)
    return cfg


def test_specialists_are_mapped_to_the_ensemble_classes_by_name():
    cells = FakePredictor(["cell"], _set([(10, 10, 20, 20, 0.9, 0)]))
    clusters = FakePredictor(["cluster"], _set([(10, 10, 20, 20, 0.8, 0), (40, 40, 90, 90, 0.7, 0)]))
    ens = EnsemblePredictor([cells, clusters], ["cell", "cluster"], _ens_cfg())
    image = np.zeros((100, 120), np.uint8)
    out = ens(image)
    assert cells.seen == [(100, 120)] and clusters.seen == [(100, 120)]
    # Same place, different classes: both stay; each keeps its own class; one model of two found each.
    pairs = sorted(zip(out["labels"], np.round(out["boxes"]).astype(int).tolist()))
    assert pairs == [("cell", [10, 10, 20, 20]), ("cluster", [10, 10, 20, 20]), ("cluster", [40, 40, 90, 90])]
    assert out["classes"][out["labels"].index("cell")] == 0
    assert len(ens.predict_batch([image, image])) == 2


def test_member_class_missing_from_the_ensemble_is_a_config_error():
    odd = FakePredictor(["cell", "mitosis"], _set([]))
    with pytest.raises(ConfigError, match="mitosis"):
        EnsemblePredictor([odd], ["cell", "cluster"], _ens_cfg())
    with pytest.raises(ConfigError, match="ENSEMBLE.WEIGHTS"):
        EnsemblePredictor([odd, odd], ["cell", "mitosis"], _ens_cfg(WEIGHTS=[1.0, 2.0, 3.0]))


def test_tuned_thresholds_follow_classes_by_name_when_a_member_adds_a_class():
    """Three tuned per-class thresholds (no names: the first member's classes, in order) and a member
    that adds a fourth class: no "expected one per class" error; the added class gets TEST.SCORE_THRESH."""
    from meddet.inference.base import score_thresholds as class_thresholds

    first = FakePredictor(["mass", "calc", "arch"], _set([]))
    extra = FakePredictor(["calc", "node"], _set([]))
    cfg = _ens_cfg()
    cfg.TEST.SCORE_THRESH = 0.45
    cfg.TEST.CLASS_SCORE_THRESH = [0.3, 0.6, 0.7]
    ens = EnsemblePredictor([first, extra], ["mass", "calc", "arch", "node"], cfg)
    assert class_thresholds(ens.cfg, ens.class_names).tolist() == [0.3, 0.6, 0.7, 0.45]
    assert list(ens.cfg.DATASETS.CLASS_NAMES) == ens.class_names
    # Named thresholds (as -c tune writes them) in another order than the ensemble's classes.
    cfg.TEST.CLASS_SCORE_THRESH_NAMES = ["arch", "mass", "calc"]
    ens = EnsemblePredictor([first, extra], ["node", "mass", "calc", "arch"], cfg)
    assert class_thresholds(ens.cfg, ens.class_names).tolist() == [0.45, 0.6, 0.7, 0.3]  # arch .3, mass .6, calc .7
    assert class_thresholds(ens.cfg, ens.class_names, override=0.2).tolist() == [0.2] * 4
    # A count that fits no naming is refused with the key's name.
    cfg.TEST.CLASS_SCORE_THRESH_NAMES = ["arch", "mass"]
    with pytest.raises(ConfigError, match="TEST.CLASS_SCORE_THRESH has 3 values for the 2 classes"):
        EnsemblePredictor([first, extra], ["mass", "calc", "arch", "node"], cfg)
