"""Definitions as documented: the image-level ROC's image score (highest detection score) against
scikit-learn / Mann-Whitney, and FROC's linear rule against MONAI's compute_froc_score."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from test_evaluation import det, make_gt, random_case

from meddet.errors import ConfigError
from meddet.evaluation import EvalData, froc, image_roc, match_detections, run_evaluation


def documented_image_scores(gt: dict, preds: list[dict], category_id=None):
    """Per image (file order): highest score of its detections (of the class), -1 when none (below
    every score in [0, 1]); label: holds a non-crowd ground truth (of the class)."""
    ids = [im["id"] for im in gt["images"]]
    score = {i: -1.0 for i in ids}
    for p in preds:
        if category_id is None or p["category_id"] == category_id:
            score[p["image_id"]] = max(score[p["image_id"]], p["score"])
    pos = {
        a["image_id"]
        for a in gt["annotations"]
        if not a.get("iscrowd") and (category_id is None or a["category_id"] == category_id)
    }
    return np.array([i in pos for i in ids]), np.array([score[i] for i in ids])


def mann_whitney_auc(y, s):
    u = mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    return u / (y.sum() * (~y).sum())


def crowded_roc_case(seed):
    gt, preds = random_case(seed, n_images=60, n_classes=2, crowd=True)
    # Images with only crowd regions, and detections sitting on them: where the definitions differ.
    rng = np.random.default_rng(seed)
    for a in gt["annotations"]:
        if a["iscrowd"]:
            x, y, w, h = a["bbox"]
            preds.append(
                det(a["image_id"], a["category_id"], [x + w / 4, y + h / 4, w / 3, h / 3], float(rng.random()))
            )
    return gt, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_auc_equals_mann_whitney_on_the_documented_image_score(seed):
    gt, preds = crowded_roc_case(seed)
    roc = image_roc(match_detections(EvalData.from_coco(gt, preds)), 0.5)
    for k, curve in enumerate(roc.curves):
        cat = None if curve.name == "any" else k + 1
        y, s = documented_image_scores(gt, preds, cat)
        assert curve.auc == pytest.approx(mann_whitney_auc(y, s), abs=1e-12), curve.name
        called = s >= 0.5
        assert curve.sensitivity == pytest.approx(called[y].mean()) and curve.specificity == pytest.approx(
            (~called[~y]).mean()
        )


def test_image_auc_equals_scikit_learn():
    from sklearn import metrics  # a [dev] dependency

    for seed in range(4):
        gt, preds = crowded_roc_case(seed)
        roc = image_roc(match_detections(EvalData.from_coco(gt, preds)), 0.5)
        y, s = documented_image_scores(gt, preds)
        assert roc.curves[-1].auc == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)


def test_detection_on_a_crowd_region_scores_its_image():
    gt = make_gt([[(1, [10, 10, 30, 30])], [(1, [100, 100, 80, 80])]])
    gt["annotations"][1]["iscrowd"] = 1  # image 2: negative (a crowd region is no lesion)
    preds = [det(1, 1, [10, 10, 30, 30], 0.6), det(2, 1, [110, 110, 20, 20], 0.8)]
    c = image_roc(match_detections(EvalData.from_coco(gt, preds)), 0.5).curves[-1]
    assert c.auc == 0.0 and c.specificity == 0.0  # the negative image outscores the positive one


# ------------------------------------------------------------------ FROC: linear = MONAI
def monai_froc_curve_data(fp_probs, tp_probs, num_targets, num_images):
    """Transcribed from MONAI 1.x monai/metrics/froc.py `compute_froc_curve_data` (CAMELYON16)."""
    total_fps, total_tps = [], []
    all_probs = sorted(set(list(fp_probs) + list(tp_probs)))
    for thresh in all_probs[1:]:
        total_fps.append((fp_probs >= thresh).sum())
        total_tps.append((tp_probs >= thresh).sum())
    total_fps.append(0)
    total_tps.append(0)
    return np.asarray(total_fps) / float(num_images), np.asarray(total_tps) / float(num_targets)


def monai_froc_score(fps_per_image, total_sensitivity, eval_thresholds):
    """Transcribed from MONAI's `compute_froc_score`: mean of the interpolated sensitivities
    (returned per threshold here, before the mean)."""
    return np.interp(eval_thresholds, fps_per_image[::-1], total_sensitivity[::-1])


def worked_example():
    """Image 1: lesions A (found at 0.9) and C (never found); image 2: lesion B (found at 0.7).
    False positives at 0.8 (image 1), 0.7 (image 2, tied with B's hit), 0.5 (image 2), 0.4 (image 1)."""
    gt = make_gt([[(1, [10, 10, 20, 20]), (1, [100, 100, 20, 20])], [(1, [10, 10, 20, 20])]])
    preds = [
        det(1, 1, [10, 10, 20, 20], 0.9),
        det(1, 1, [150, 150, 10, 10], 0.8),
        det(2, 1, [10, 10, 20, 20], 0.7),
        det(2, 1, [150, 150, 10, 10], 0.7),
        det(2, 1, [150, 20, 10, 10], 0.5),
        det(1, 1, [20, 150, 10, 10], 0.4),
    ]
    return gt, preds


RATES = (0.25, 0.5, 0.75, 1.0, 2.0, 4.0)


def test_froc_linear_worked_example():
    # MONAI's points (thresholds 0.4 .. 0.9, then (0, 0)): FP/image 2, 1.5, 1, 0.5, 0, 0 and
    # sensitivity 2/3, 2/3, 2/3, 1/3, 1/3, 0. At 0.75 FP/image the polyline is halfway between
    # (0.5, 1/3) and (1, 2/3): 1/2; the step rule stays at 1/3 (threshold 0.8, 1 FP in 2 images).
    gt, preds = worked_example()
    data = EvalData.from_coco(gt, preds)
    linear = froc(data, "iou", 0.5, RATES, interpolation="linear").all.sensitivity_at(RATES, "linear")
    np.testing.assert_allclose(linear, [1 / 3, 1 / 3, 1 / 2, 2 / 3, 2 / 3, 2 / 3], atol=1e-12)
    step = froc(data, "iou", 0.5, RATES).all.sensitivity_at(RATES)
    np.testing.assert_allclose(step, [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3], atol=1e-12)
    fpi, sens = monai_froc_curve_data(np.array([0.8, 0.7, 0.5, 0.4]), np.array([0.9, 0.7, 0.0]), 3, 2)
    np.testing.assert_allclose(fpi, [2, 1.5, 1, 0.5, 0, 0])
    np.testing.assert_allclose(monai_froc_score(fpi, sens, RATES), linear, atol=1e-12)
    m = run_evaluation(
        gt, preds, froc_hit="iou", fp_rates=RATES, froc_interpolation="linear", bootstrap_samples=50, gallery_size=0
    ).metrics
    assert m["froc/sens@0.75fp"] == pytest.approx(0.5)
    assert m["froc/cpm"] == pytest.approx(np.mean(linear))
    with pytest.raises(ConfigError, match="EVAL.FROC_INTERPOLATION"):
        froc(data, interpolation="cubic")


def monai_inputs(data, curve):
    """MONAI's inputs from the same events: FP scores, and each lesion's best hit (0: missed)."""
    return curve.fp_scores, np.where(np.isfinite(curve.lesion_scores), curve.lesion_scores, 0.0)


def scored_case(seed):
    gt, preds = random_case(seed, n_images=40, n_classes=2, crowd=False)
    for p in preds:
        p["score"] = 0.01 + 0.99 * p["score"]  # MONAI's 0 means "missed": detections score above it
    gt["annotations"].append(
        {"id": 10_000, "image_id": 1, "category_id": 1, "bbox": [250, 250, 3, 3], "area": 9, "iscrowd": 0}
    )  # a lesion never found
    return gt, preds


@pytest.mark.parametrize("seed", range(6))
def test_froc_linear_equals_monai_transcription_on_random_cases(seed):
    gt, preds = scored_case(seed)
    data = EvalData.from_coco(gt, preds)
    rates = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    for rule in ("center", "iou"):
        f = froc(data, rule, 0.3, rates, interpolation="linear")
        for c in f.curves:
            fp_probs, tp_probs = monai_inputs(data, c)
            fpi, sens = monai_froc_curve_data(fp_probs, tp_probs, c.n_lesions, data.num_images)
            np.testing.assert_allclose(
                c.sensitivity_at(rates, "linear"),
                monai_froc_score(fpi, sens, rates),
                atol=1e-12,
                err_msg=f"{rule} {c.name}",
            )


def test_froc_linear_equals_installed_monai():
    import monai.metrics.froc as monai_froc  # a [dev] dependency

    rates = (0.25, 0.5, 1, 2, 4, 8)
    for seed in range(3):
        gt, preds = scored_case(seed)
        data = EvalData.from_coco(gt, preds)
        c = froc(data, "center", fp_rates=rates, interpolation="linear").all
        fp_probs, tp_probs = monai_inputs(data, c)
        fpi, sens = monai_froc.compute_froc_curve_data(fp_probs, tp_probs, c.n_lesions, data.num_images)
        assert np.mean(c.sensitivity_at(rates, "linear")) == pytest.approx(
            monai_froc.compute_froc_score(fpi, sens, rates), abs=1e-12
        )


@pytest.mark.parametrize("interpolation", ["step", "linear"])
def test_bootstrap_froc_estimate_follows_the_interpolation(interpolation):
    gt, preds = scored_case(3)
    for i, im in enumerate(gt["images"]):
        im["patient_id"] = f"P{i // 3}"
    res = run_evaluation(gt, preds, froc_interpolation=interpolation, bootstrap_samples=100, gallery_size=0)
    table = res.bootstrap.table.set_index("metric")
    assert table.loc["froc/sens@1fp", "estimate"] == pytest.approx(res.metrics["froc/sens@1fp"], abs=1e-12)
    assert (
        table.loc["froc/sens@1fp", "ci95_low"]
        <= res.metrics["froc/sens@1fp"]
        <= table.loc["froc/sens@1fp", "ci95_high"]
    )
