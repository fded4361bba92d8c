"""meddet.evaluation views beyond COCO: F1-optimal thresholds, curves, FROC, image-level ROC,
bootstrap CIs, error types, reports — on hand-built cases with known answers."""

from __future__ import annotations

import json
import logging
import math
import re

import numpy as np
import pandas as pd
import pytest
from test_evaluation import det, make_gt, random_case

from meddet.errors import ConfigError
from meddet.evaluation import (
    APStats,
    EvalData,
    classify_errors,
    coco_evaluate,
    evaluate,
    f1_optimal,
    froc,
    match_detections,
    prf1_at,
    run_evaluation,
    score_curves,
    write_galleries,
)

FAST = {"bootstrap_samples": 0}


# ------------------------------------------------------------------ one FP and one FN per image
@pytest.fixture
def one_fp_one_fn():
    """4 images, each: a found mass (TP), a missed mass (FN) and a detection on nothing (FP)."""
    gt = make_gt([[(1, [10, 10, 30, 30]), (1, [120, 120, 30, 30])] for _ in range(4)])
    tp_scores, fp_scores = [0.9, 0.8, 0.7, 0.6], [0.85, 0.5, 0.75, 0.3]
    preds = []
    for i in range(4):
        preds.append(det(i + 1, 1, [10, 10, 30, 30], tp_scores[i]))
        preds.append(det(i + 1, 1, [60, 160, 20, 20], fp_scores[i]))
    return gt, preds


def test_one_fp_one_fn_per_image_prf1_and_froc_points_by_hand(one_fp_one_fn):
    gt, preds = one_fp_one_fn
    res = run_evaluation(gt, preds, score_thresh=0.3, froc_hit="iou", **FAST)
    m = res.metrics
    assert (m["prf1/TP"], m["prf1/FP"], m["prf1/FN"]) == (4.0, 4.0, 4.0)
    assert m["prf1/precision"] == m["prf1/recall"] == m["prf1/F1"] == 0.5
    # Events by score: .9 hit, .85 FP, .8 hit, .75 FP, .7 hit, .6 hit, .5 FP, .3 FP; 8 lesions, 4 images.
    curve = res.froc.all
    assert curve.fp_per_image.tolist() == [0.0, 0.0, 0.25, 0.5, 0.5, 1.0]
    assert curve.sensitivity.tolist() == [0.0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 4 / 8]
    expected = {0.125: 1 / 8, 0.25: 2 / 8, 0.5: 4 / 8, 1: 4 / 8, 2: 4 / 8, 4: 4 / 8, 8: 4 / 8}
    for rate, sens in expected.items():
        assert m[f"froc/sens@{rate:g}fp"] == pytest.approx(sens), rate
        assert m[f"froc/sens@{rate:g}fp-mass"] == pytest.approx(sens), rate
    assert m["froc/cpm"] == pytest.approx(sum(expected.values()) / 7)
    assert math.isnan(m["froc/sens@1fp-calc"])  # no calc lesion
    # The errors: four background false positives and four misses, half the errors each.
    assert (m["errors/background"], m["errors/missed"]) == (4.0, 4.0)
    assert m["errors/background_share"] == m["errors/missed_share"] == 0.5


def test_extra_hits_on_a_found_lesion_are_not_false_positives():
    gt = make_gt([[(1, [10, 10, 30, 30])]])
    preds = [det(1, 1, [10, 10, 30, 30], 0.9), det(1, 1, [12, 10, 30, 30], 0.8), det(1, 1, [100, 100, 9, 9], 0.7)]
    curve = froc(EvalData.from_coco(gt, preds), "iou").all
    assert curve.fp.tolist() == [0, 0, 1] and curve.found.tolist() == [0, 1, 1]
    # whereas COCO-style matching counts the second box as a (duplicate) false positive
    assert evaluate(gt, preds, score_thresh=0.0, **FAST)["prf1/FP"] == 2.0


def test_centre_inside_box_rule_hits_where_iou_rule_misses():
    gt = make_gt([[(1, [100, 100, 40, 40])]])
    # centre (140, 140) on the lesion's corner, IoU = 900 / 4300 = 0.21
    preds = [det(1, 1, [110, 110, 60, 60], 0.9), det(1, 1, [60, 60, 40, 40], 0.8)]  # 2nd: centre outside
    data = EvalData.from_coco(gt, preds)
    centre, iou = froc(data, "center"), froc(data, "iou", iou_thresh=0.5)
    assert centre.all.found[-1] == 1 and centre.all.fp[-1] == 1
    assert iou.all.found[-1] == 0 and iou.all.fp[-1] == 2
    assert centre.all.sensitivity_at([1.0])[0] == 1.0 and iou.all.sensitivity_at([8.0])[0] == 0.0
    # a lower IoU threshold turns it into a hit
    assert froc(data, "iou", iou_thresh=0.2).all.found[-1] == 1
    with pytest.raises(ConfigError, match="EVAL.FROC_HIT"):
        froc(data, "inside")


# ------------------------------------------------------------------ image-level ROC
@pytest.mark.parametrize("reverse, auc", [(False, 1.0), (True, 0.0)])
def test_image_level_auc_perfect_and_reversed(reverse, auc):
    gt = make_gt([[(1, [10, 10, 30, 30])], [(1, [50, 50, 30, 30])], [], []])
    pos, neg = [0.9, 0.8], [0.3, 0.2]
    if reverse:
        pos, neg = neg, pos
    preds = [
        det(1, 1, [10, 10, 30, 30], pos[0]),
        det(2, 1, [0, 0, 10, 10], pos[1]),
        det(3, 1, [0, 0, 10, 10], neg[0]),
        det(4, 1, [90, 90, 10, 10], neg[1]),
    ]
    m = evaluate(gt, preds, score_thresh=0.5, **FAST)
    assert m["image/auc-mass"] == auc and m["image/auc"] == auc
    assert (m["image/sensitivity-mass"], m["image/specificity-mass"]) == ((0.0, 0.0) if reverse else (1.0, 1.0))
    assert math.isnan(m["image/auc-calc"])  # no image holds a calc


def test_image_without_detection_scores_below_every_detection():
    gt = make_gt([[(1, [10, 10, 30, 30])], [], []])
    preds = [det(1, 1, [10, 10, 30, 30], 0.1), det(2, 1, [0, 0, 10, 10], 0.6)]  # image 3: nothing
    assert evaluate(gt, preds, **FAST)["image/auc-mass"] == 0.5  # beats image 3, loses to image 2


def test_image_auc_counts_ties_as_half():
    gt = make_gt([[(1, [10, 10, 30, 30])], []])
    m = evaluate(gt, [det(1, 1, [10, 10, 30, 30], 0.5), det(2, 1, [0, 0, 9, 9], 0.5)], **FAST)
    assert m["image/auc-mass"] == 0.5


# ------------------------------------------------------------------ F1-optimal threshold, curves
def f1_case():
    """One class, 4 ground truths; detections TP .9, FP .6, TP .7, TP .4, FP .3 (F1 best at .4)."""
    gt = make_gt([[(1, [10, 10, 40, 40])] for _ in range(4)] + [[(2, [10, 10, 40, 40])]])
    preds = [
        det(1, 1, [10, 10, 40, 40], 0.9),
        det(2, 1, [10, 10, 40, 40], 0.7),
        det(3, 1, [100, 100, 20, 20], 0.6),
        det(3, 1, [10, 10, 40, 40], 0.4),
        det(4, 1, [100, 100, 20, 20], 0.3),
        det(5, 2, [100, 100, 20, 20], 0.8),
    ]  # class calc: only a false positive
    return gt, preds


def test_f1_optimal_threshold_on_crafted_case():
    gt, preds = f1_case()
    best = f1_optimal(match_detections(EvalData.from_coco(gt, preds), 0.5))
    # F1 at .9: 2/5, .7: 4/6, .6: 4/7, .4: 6/8, .3: 6/9
    assert best.thresholds()[0] == 0.4
    assert (best.tp[0], best.fp[0], best.fn[0]) == (3, 1, 1)
    assert best.f1[0] == pytest.approx(0.75)
    assert math.isnan(best.thresholds()[1]) and (best.tp[1], best.fp[1], best.fn[1]) == (0, 0, 1)
    m = evaluate(gt, preds, score_thresh=0.5, **FAST)
    assert m["prf1_opt/score_thresh-mass"] == 0.4 and m["prf1_opt/F1-mass"] == pytest.approx(0.75)
    assert m["prf1_opt/macro_F1"] == pytest.approx((0.75 + 0.0) / 2)
    assert m["prf1_opt/weighted_F1"] == pytest.approx(0.75 * 4 / 5)
    assert m["prf1/F1-mass"] == pytest.approx(4 / 7)  # at the fixed 0.5 threshold: .9, .7 TP, .6 FP


def test_score_curves_equal_prf1_at_each_grid_threshold():
    gt, preds = random_case(2, n_images=30)
    matches = match_detections(EvalData.from_coco(gt, preds), 0.5)
    curves = score_curves(matches)
    for i in (0, 250, 500, 730, 1000):
        ref = prf1_at(matches, float(curves.thresholds[i]))
        np.testing.assert_array_equal(curves.tp[:, i], ref.tp)
        np.testing.assert_array_equal(curves.fp[:, i], ref.fp)
        np.testing.assert_allclose(curves.values("F1")[:, i], ref.f1, equal_nan=True)


def test_per_class_score_thresholds():
    gt, preds = f1_case()
    m = evaluate(gt, preds, score_thresh=[0.35, 0.9], **FAST)
    assert m["prf1/score_thresh-mass"] == 0.35 and m["prf1/score_thresh-calc"] == 0.9
    assert (m["prf1/TP"], m["prf1/FP"]) == (3.0, 1.0)  # mass keeps .9 .7 .6 .4; the .8 calc is dropped
    with pytest.raises(ConfigError, match=r"TEST.CLASS_SCORE_THRESH .* 1 values; expected 2"):
        evaluate(gt, preds, score_thresh=[0.5], **FAST)


# ------------------------------------------------------------------ bootstrap
def test_bootstrap_ap_on_full_sample_equals_pycocotools():
    gt, preds = random_case(7, n_images=200, n_classes=3, crowd=True)
    data = EvalData.from_coco(gt, preds)
    ref = coco_evaluate(data, "pycocotools")
    ap = APStats.from_data(data).ap(np.ones((1, data.num_images)))[0]
    assert 0.05 < ref.summary["AP50"] < 0.95
    assert np.nanmean(ap[0]) == pytest.approx(ref.summary["AP50"], abs=1e-6)
    assert np.nanmean(ap) == pytest.approx(ref.summary["AP"], abs=1e-6)
    np.testing.assert_allclose(np.nanmean(ap, axis=0), ref.per_class_ap, atol=1e-6)


def test_bootstrap_intervals_contain_estimate_and_are_seeded():
    gt, preds = random_case(5, n_images=80)
    a = run_evaluation(gt, preds, bootstrap_samples=200, bootstrap_seed=3)
    b = evaluate(gt, preds, bootstrap_samples=200, bootstrap_seed=3)
    c = evaluate(gt, preds, bootstrap_samples=200, bootstrap_seed=4)
    m = a.metrics
    table = a.bootstrap.table.set_index("metric")
    assert table.loc["bbox/AP50", "estimate"] == pytest.approx(m["bbox/AP50"], abs=1e-4)
    assert table.loc["froc/sens@1fp", "estimate"] == pytest.approx(m["froc/sens@1fp"])
    for key in ("bbox/AP50", "bbox/AP", "prf1/recall-class0", "froc/sens@1fp"):
        lo, hi = m[f"ci95_low/{key}"], m[f"ci95_high/{key}"]
        assert lo < m[key] < hi, key
        assert b[f"ci95_low/{key}"] == lo and b[f"ci95_high/{key}"] == hi  # same seed, same interval
    assert c["ci95_low/bbox/AP50"] != m["ci95_low/bbox/AP50"]
    with pytest.raises(ConfigError, match="EVAL.BOOTSTRAP_SAMPLES"):
        evaluate(gt, preds, bootstrap_samples=-1)


# ------------------------------------------------------------------ error analysis
def test_error_types_on_crafted_cases():
    gt = make_gt([[(1, [0, 0, 40, 40]), (2, [100, 100, 40, 40])]])
    preds = [
        det(1, 1, [0, 0, 40, 40], 0.9),  # TP
        det(1, 1, [2, 0, 40, 40], 0.8),  # duplicate: the mass is already matched
        det(1, 1, [100, 100, 40, 40], 0.7),  # confusion: a mass box on the calc
        det(1, 1, [20, 0, 40, 40], 0.6),  # localisation: IoU 1/3 with the mass
        det(1, 2, [20, 0, 40, 40], 0.5),  # both: a calc box loosely on the mass
        det(1, 1, [300, 300, 20, 20], 0.4),  # background
    ]  # and the calc is missed
    data = EvalData.from_coco(gt, preds)
    err = classify_errors(match_detections(data, 0.5), 0.0)
    assert dict(zip(err.fp_det.tolist(), err.fp_type.tolist())) == {
        1: "duplicate",
        2: "confusion",
        3: "localisation",
        4: "both",
        5: "background",
    }
    assert err.fp_gt.tolist() == [0, 1, 0, 0, -1] and err.fp_iou[2] == pytest.approx(1 / 3)
    assert err.fn_gt.tolist() == [1]
    t = err.to_frame().set_index("Class")
    assert t.loc["mass", ["confusion", "duplicate", "localisation", "both", "background", "missed"]].tolist() == [
        1,
        1,
        1,
        0,
        1,
        0,
    ]
    assert t.loc["calc", ["both", "missed"]].tolist() == [1, 1]
    assert t.loc["all", "total"] == 6 and t.loc["all", "share_missed"] == pytest.approx(1 / 6)
    # above the threshold of 0.65 only the duplicate and the confusion remain
    assert sorted(classify_errors(match_detections(data, 0.5), 0.65).fp_type.tolist()) == ["confusion", "duplicate"]


# ------------------------------------------------------------------ files and reports
def predictions_from(gt: dict, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    preds = []
    for a in gt["annotations"]:
        if rng.random() < 0.75:
            x, y, w, h = a["bbox"]
            preds.append(det(a["image_id"], a["category_id"], [x + 1, y, w, h], float(rng.uniform(0.4, 1))))
    for im in gt["images"]:
        preds.append(det(im["id"], int(rng.integers(1, 3)), [*rng.uniform(0, 60, 2), 20, 20], float(rng.random())))
    return preds


REPORT_FILES = [
    "metrics.json",
    "per_class.csv",
    "prf1.csv",
    "confusion_matrix.csv",
    "confusion_matrix_normalized.csv",
    "confusion_matrix.png",
    "pr_curve.png",
    "pr_curve.csv",
    "f1_curve.png",
    "f1_curve.csv",
    "p_curve.png",
    "p_curve.csv",
    "r_curve.png",
    "r_curve.csv",
    "froc.png",
    "froc.csv",
    "froc_summary.csv",
    "roc.png",
    "roc.csv",
    "roc_summary.csv",
    "bootstrap_ci.csv",
    "errors.csv",
    "errors_detail.csv",
    "report.md",
    "analysis_report.txt",
    "project_summary.csv",
]


def test_writes_every_file_and_report_links_existing_plots(tiny_coco, tmp_path):
    gt = json.loads(tiny_coco.read_text())
    out = tmp_path / "eval"
    res = run_evaluation(tiny_coco, predictions_from(gt), out, bootstrap_samples=50, gallery_size=4)
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    galleries = sorted(p.name for p in out.glob("errors_f*_*.png"))
    assert "errors_fp_square.png" in galleries or "errors_fp_disc.png" in galleries
    for png in out.glob("*.png"):
        assert png.with_suffix(".csv").is_file(), png.name  # every plot has its numbers
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"pr_curve.png", "f1_curve.png", "froc.png", "roc.png", "confusion_matrix.png"} <= set(links)
    assert set(galleries) <= set(links)
    assert all((out / link).is_file() for link in links)
    txt = (out / "analysis_report.txt").read_text()
    assert "FROC" in txt and "BOOTSTRAP" in txt and "ERROR ANALYSIS" in txt
    summary = pd.read_csv(out / "project_summary.csv")
    assert len(summary) == 1 and summary.loc[0, "mAP50"] == pytest.approx(res.metrics["bbox/AP50"] / 100)
    assert summary.loc[0, "froc_sens@1fp"] == pytest.approx(res.metrics["froc/sens@1fp"])
    froc_csv = pd.read_csv(out / "froc.csv")
    assert set(froc_csv["curve"]) == {"square", "disc", "all"}
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(res.metrics, nan_ok=True)
    # A later evaluation into the same folder never leaves this one's galleries behind.
    assert write_galleries(res.errors, out, tiny_coco.parent, size=0) == []
    assert not list(out.glob("errors_f*_*"))


def test_unreadable_images_skip_galleries_with_a_warning(tiny_coco, tmp_path, caplog):
    gt = json.loads(tiny_coco.read_text())
    out = tmp_path / "eval"
    with caplog.at_level(logging.WARNING, logger="meddet.evaluation"):
        run_evaluation(gt, predictions_from(gt), out, image_root=tmp_path / "nowhere", **FAST)
    assert "galleries skipped" in caplog.text and "nowhere" in caplog.text
    assert not list(out.glob("errors_f*.png"))
    assert (out / "report.md").is_file() and (out / "errors.csv").is_file()
    assert "errors_fp_" not in (out / "report.md").read_text()
