"""merge_detections: hand-computed cases of each method, and agreement with a plain reference loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meddet.errors import ConfigError
from meddet.inference.merge import merge_detections


def _det(*rows):
    """rows of (x1, y1, x2, y2, score, class) -> boxes, scores, classes."""
    a = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return a[:, :4], a[:, 4], a[:, 5].astype(np.int64)


def test_box_cut_by_tile_edge_merges_back_with_ios():
    # One object [45, 10, 75, 30]: the tile ending at x=55 sees only [45, 10, 55, 30], the next sees it whole.
    boxes, scores, classes = _det((45, 10, 55, 30, 0.8, 0), (45, 10, 75, 30, 0.9, 0))
    b, s, c = merge_detections(boxes, scores, classes, "greedy_nmm", "ios", 0.5)
    np.testing.assert_allclose(b, [[45, 10, 75, 30]])
    np.testing.assert_allclose(s, [0.9], rtol=1e-6)
    # The part covers a third of the whole (IoU 0.33): an IoU rule keeps the duplicate.
    b, _, _ = merge_detections(boxes, scores, classes, "greedy_nmm", "iou", 0.5)
    assert len(b) == 2


def test_two_halves_merge_into_their_union():
    # Both tiles see only part of the object; the lower-scored part lies mostly inside the other.
    boxes, scores, classes = _det((0, 0, 60, 40, 0.7, 1), (40, 0, 70, 40, 0.9, 1))
    b, s, c = merge_detections(boxes, scores, classes)  # defaults: greedy_nmm, IoS 0.5, class-aware
    np.testing.assert_allclose(b, [[0, 0, 70, 40]])
    np.testing.assert_allclose(s, [0.9], rtol=1e-6)
    assert c.tolist() == [1]


def test_nms_class_aware_and_agnostic():
    boxes, scores, classes = _det(
        (0, 0, 10, 10, 0.9, 0),
        (1, 0, 11, 10, 0.8, 0),  # IoU 0.82 with the first: suppressed
        (20, 20, 30, 30, 0.7, 0),  # alone
        (0, 0, 10, 10, 0.6, 1),  # same place, other class
    )
    b, s, c = merge_detections(boxes, scores, classes, "nms", "iou", 0.5)
    np.testing.assert_allclose(s, [0.9, 0.7, 0.6], rtol=1e-6)
    assert c.tolist() == [0, 0, 1]
    b, s, c = merge_detections(boxes, scores, classes, "nms", "iou", 0.5, class_agnostic=True)
    np.testing.assert_allclose(s, [0.9, 0.7], rtol=1e-6)
    # IoS-NMS gives the same here (IoS >= IoU).
    _, s2, _ = merge_detections(boxes, scores, classes, "nms", "ios", 0.5, class_agnostic=True)
    np.testing.assert_allclose(s2, [0.9, 0.7], rtol=1e-6)


def test_greedy_nmm_is_not_transitive_but_nmm_is():
    # A absorbs B (IoS 0.6); C overlaps B (IoS 0.6) but hardly A (IoS 0.2).
    boxes, scores, classes = _det((0, 0, 10, 10, 0.9, 0), (4, 0, 14, 10, 0.8, 0), (8, 0, 18, 10, 0.7, 0))
    b, s, _ = merge_detections(boxes, scores, classes, "greedy_nmm", "ios", 0.5)
    np.testing.assert_allclose(b, [[0, 0, 14, 10], [8, 0, 18, 10]])
    np.testing.assert_allclose(s, [0.9, 0.7], rtol=1e-6)
    # NMM: B brings C into A's group; C still overlaps the grown box [0, 0, 14, 10] by IoS 0.6.
    b, s, _ = merge_detections(boxes, scores, classes, "nmm", "ios", 0.5)
    np.testing.assert_allclose(b, [[0, 0, 18, 10]])
    np.testing.assert_allclose(s, [0.9], rtol=1e-6)


def test_class_agnostic_merge_keeps_class_of_best_box():
    boxes, scores, classes = _det((0, 0, 10, 10, 0.6, 0), (1, 1, 10, 10, 0.8, 1))
    b, s, c = merge_detections(boxes, scores, classes, "greedy_nmm", "ios", 0.5, class_agnostic=True)
    assert c.tolist() == [1] and s.tolist() == pytest.approx([0.8])
    np.testing.assert_allclose(b, [[0, 0, 10, 10]])
    _, _, c = merge_detections(boxes, scores, classes, "greedy_nmm", "ios", 0.5, class_agnostic=False)
    assert sorted(c.tolist()) == [0, 1]


def test_soft_nms_decays_overlapping_scores():
    boxes, scores, classes = _det((0, 0, 10, 10, 0.9, 0), (0, 0, 10, 5, 0.8, 0), (50, 50, 60, 60, 0.3, 0))
    b, s, c = merge_detections(boxes, scores, classes, "soft_nms", "iou", sigma=0.5)
    # IoU 0.5 -> 0.8 * exp(-0.25 / 0.5); the distant box is untouched.
    np.testing.assert_allclose(s, [0.9, 0.8 * math.exp(-0.5), 0.3], rtol=1e-5)
    np.testing.assert_allclose(b[1], [0, 0, 10, 5])


def test_none_keeps_everything_and_tensors_stay_tensors():
    boxes, scores, classes = _det((0, 0, 10, 10, 0.5, 0), (0, 0, 10, 10, 0.9, 0))
    b, s, c = merge_detections(torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes), "none")
    assert isinstance(b, torch.Tensor) and s.tolist() == pytest.approx([0.9, 0.5])
    b, s, c = merge_detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    assert b.shape == (0, 4) and len(s) == 0 and len(c) == 0


def test_bad_settings_name_the_config_key():
    boxes, scores, classes = _det((0, 0, 10, 10, 0.5, 0))
    with pytest.raises(ConfigError, match="TILING.MERGE"):
        merge_detections(boxes, scores, classes, "wbf")
    with pytest.raises(ConfigError, match="TILING.MATCH_METRIC"):
        merge_detections(boxes, scores, classes, match_metric="giou")
    with pytest.raises(ConfigError, match="TILING.MATCH_THRESH"):
        merge_detections(boxes, scores, classes, threshold=0.0)


def _reference_greedy_nmm(boxes, scores, classes, metric, thr):
    """SAHI's GreedyNMMPostprocess as a plain loop (class-aware): dense matrix, then merge with re-check."""
    out = []
    for k in np.unique(classes):
        idx = np.flatnonzero(classes == k)
        b, s = boxes[idx], scores[idx]

        def ov(p, q):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            ap, aq = (p[2] - p[0]) * (p[3] - p[1]), (q[2] - q[0]) * (q[3] - q[1])
            return iw * ih / ((ap + aq - iw * ih) if metric == "iou" else min(ap, aq))

        order = np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], -s))
        done = np.zeros(len(b), bool)
        for pos, i in enumerate(order):
            if done[i]:
                continue
            done[i] = True
            cur, cur_s = b[i].copy(), s[i]
            for j in order[pos + 1 :]:
                if not done[j] and ov(b[i], b[j]) >= thr:
                    done[j] = True
                    if ov(cur, b[j]) > thr:
                        cur = np.r_[np.minimum(cur[:2], b[j, :2]), np.maximum(cur[2:], b[j, 2:])]
                        cur_s = max(cur_s, s[j])
            out.append((*cur, cur_s, k))
    return np.array(out).reshape(-1, 6)


@pytest.mark.parametrize("metric", ["ios", "iou"])
def test_greedy_nmm_matches_reference_loop(metric):
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 300, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (300, 2))], 1)
    scores, classes = rng.uniform(0.05, 1, 300), rng.integers(0, 2, 300)
    ref = _reference_greedy_nmm(boxes, scores, classes, metric, 0.5)
    b, s, c = merge_detections(boxes, scores, classes, "greedy_nmm", metric, 0.5)
    got = np.concatenate([b, s[:, None], c[:, None]], 1).astype(np.float64)
    key = lambda a: a[np.lexsort((a[:, 1], a[:, 0], -a[:, 4]))]  # noqa: E731
    assert len(got) == len(ref) < 300
    np.testing.assert_allclose(key(got), key(ref), rtol=1e-5, atol=1e-3)


def test_agrees_with_sahi():
    """SAHI 0.12.8 (installed by the Makefile) merges the same boxes."""
    from sahi.postprocess.combine import GreedyNMMPostprocess, NMMPostprocess, NMSPostprocess
    from sahi.prediction import ObjectPrediction

    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 500, (400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (400, 2))], 1)
    scores, classes = rng.uniform(0.05, 1, 400), rng.integers(0, 3, 400)
    preds = [
        ObjectPrediction(bbox=[float(v) for v in bb], score=float(sc), category_id=int(cc))
        for bb, sc, cc in zip(boxes, scores, classes)
    ]
    for method, cls in (("greedy_nmm", GreedyNMMPostprocess), ("nmm", NMMPostprocess), ("nms", NMSPostprocess)):
        for agnostic in (False, True):
            ref = cls(match_threshold=0.5, match_metric="IOS", class_agnostic=agnostic)(list(preds))
            ref = np.array([[*p.bbox.to_xyxy(), p.score.value, p.category.id] for p in ref])
            b, s, c = merge_detections(boxes, scores, classes, method, "ios", 0.5, class_agnostic=agnostic)
            got = np.concatenate([b, s[:, None], c[:, None]], 1).astype(np.float64)
            key = lambda a: a[np.lexsort((a[:, 1], a[:, 0], -a[:, 4]))]  # noqa: E731
            assert got.shape == ref.shape, (method, agnostic)
            np.testing.assert_allclose(key(got), key(ref), rtol=1e-5, atol=1e-3)
