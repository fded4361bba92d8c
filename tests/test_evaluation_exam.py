"""Breast- and exam-level results (suspicion = max over views) and the calibration of detection scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

from meddet.evaluation import EvalData, calibration, exam_level, match_detections, run_evaluation
from meddet.evaluation.exam import unit_index, weighted_auc
from meddet.evaluation.roc import roc_curve

VIEWS = ("CC", "MLO")


def screening_case(n_patients=12, seed=0, study=False):
    """n patients x 2 breasts x 2 views. A lesion on some breasts (seen on one or both views);
    detection scores: higher on lesions, noise elsewhere; some views without any detection."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for p in range(n_patients):
        for side in ("LEFT", "RIGHT"):
            sick = rng.random() < 0.35
            for v, view in enumerate(VIEWS):
                iid = len(images) + 1
                im = {
                    "id": iid,
                    "file_name": f"{iid}.png",
                    "height": 200,
                    "width": 200,
                    "patient_id": f"P{p}",
                    "laterality": side,
                    "view": view,
                }
                if study:
                    im["study_id"] = f"S{p}-{v % 2 if p % 3 == 0 else 0}"
                images.append(im)
                if sick and (v == 0 or rng.random() < 0.7):
                    anns.append(
                        {
                            "id": len(anns) + 1,
                            "image_id": iid,
                            "category_id": 1,
                            "bbox": [50, 50, 40, 40],
                            "area": 1600,
                            "iscrowd": 0,
                        }
                    )
                    preds.append(
                        {
                            "image_id": iid,
                            "category_id": 1,
                            "bbox": [52, 50, 40, 40],
                            "score": float(np.round(rng.uniform(0.2, 1.0), 2)),
                        }
                    )
                if rng.random() < 0.6:
                    preds.append(
                        {
                            "image_id": iid,
                            "category_id": 1,
                            "bbox": [120, 120, 20, 20],
                            "score": float(np.round(rng.uniform(0.0, 0.9), 2)),
                        }
                    )
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
    return gt, preds


def by_hand(gt, preds, key):
    """Suspicion (max score over the unit's views, -1 without detection) and label per unit."""
    unit_of = {im["id"]: key(im) for im in gt["images"]}
    score = {u: -1.0 for u in unit_of.values()}
    for p in preds:
        u = unit_of[p["image_id"]]
        score[u] = max(score[u], p["score"])
    pos = {unit_of[a["image_id"]] for a in gt["annotations"]}
    units = sorted(score)
    return np.array([u in pos for u in units]), np.array([score[u] for u in units])


@pytest.mark.parametrize(
    "level, key", [("breast", lambda im: (im["patient_id"], im["laterality"])), ("exam", lambda im: im["patient_id"])]
)
def test_suspicion_is_max_over_views_and_auc_is_mann_whitney(level, key):
    gt, preds = screening_case()
    res = exam_level(match_detections(EvalData.from_coco(gt, preds)), n_resamples=200)
    r = {x.level: x for x in res.levels}[level]
    y, s = by_hand(gt, preds, key)
    assert (r.n_pos, r.n_neg) == (int(y.sum()), int((~y).sum()))
    assert sorted(np.where(np.isfinite(r.scores), r.scores, -1.0)) == sorted(s)
    auc = mannwhitneyu(s[y], s[~y]).statistic / (y.sum() * (~y).sum())
    assert r.auc == pytest.approx(auc, abs=1e-12)
    assert r.auc_ci[0] <= r.auc <= r.auc_ci[1] and r.auc_ci[1] - r.auc_ci[0] > 0.01
    # Operating points by brute force over every threshold.
    thresholds = np.unique(np.append(s, np.inf))
    sens = np.array([(s[y] >= t).mean() for t in thresholds])
    spec = np.array([(s[~y] < t).mean() for t in thresholds])
    assert r.sens_at_spec == pytest.approx(sens[spec >= 0.9].max())
    assert r.spec_at_sens == pytest.approx(spec[sens >= 0.9].max())


def test_units_follow_patient_laterality_and_study():
    gt, preds = screening_case(n_patients=6, study=True)
    gt["images"][0].pop("patient_id")
    data = EvalData.from_coco(gt, preds)
    breast, breast_patients = unit_index(data, "breast")
    exam, _ = unit_index(data, "exam")
    # Patients 1, 2, 4, 5 have one study: 2 breasts, 1 exam. Patients 0 and 3 have two studies (by view).
    keys = {(im.get("patient_id"), im.get("laterality"), im["study_id"]) for im in gt["images"][1:]}
    assert len(np.unique(breast)) == len(keys) + 1  # image 1 without patient_id is a unit of its own
    assert len(np.unique(exam)) == len({(k[0], k[2]) for k in keys}) + 1
    assert breast_patients.max() + 1 == 7  # six patients, and the anonymous image as its own


def test_weighted_auc_equals_auc_of_replicated_units():
    rng = np.random.default_rng(0)
    y = rng.random(30) < 0.4
    s = np.round(rng.random(30), 1)  # ties
    assert weighted_auc(y, s, np.ones((1, 30)))[0] == pytest.approx(roc_curve(y, s)[3], abs=1e-12)
    w = rng.integers(0, 4, size=(5, 30))
    for b in range(5):
        rep = np.repeat(np.arange(30), w[b])
        yr, sr = y[rep], s[rep]
        expected = roc_curve(yr, sr)[3] if yr.any() and (~yr).any() else np.nan
        assert weighted_auc(y, s, w[b : b + 1])[0] == pytest.approx(expected, abs=1e-12, nan_ok=True)


def test_expected_calibration_error_by_hand():
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "lesion"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [i * 30, 0, 20, 20], "area": 400, "iscrowd": 0}
            for i in range(3)
        ],
    }
    hit = lambda i, s: {"image_id": 1, "category_id": 1, "bbox": [i * 30, 0, 20, 20], "score": s}  # noqa: E731
    miss = lambda s: {"image_id": 1, "category_id": 1, "bbox": [0, 150, 20, 20], "score": s}  # noqa: E731
    # Bin [0.9, 1]: scores 0.95, 0.95 (1 TP) -> |0.5 - 0.95|; bin [0.2, 0.3): 0.25 (TP) -> |1 - 0.25|;
    # bin [0.6, 0.7): 0.65 (TP), 0.65 (FP) -> |0.5 - 0.65|. ECE = (2*0.45 + 0.75 + 2*0.15) / 5.
    preds = [hit(0, 0.95), miss(0.95), hit(1, 0.25), hit(2, 0.65), miss(0.65)]
    c = calibration(match_detections(EvalData.from_coco(gt, preds)))
    assert c.ece == pytest.approx((2 * 0.45 + 0.75 + 2 * 0.15) / 5)
    assert c.count.tolist() == [0, 0, 2 - 1, 0, 0, 0, 2, 0, 0, 2]
    assert c.tp_fraction[9] == 0.5 and np.isnan(c.mean_score[0])


def test_report_has_exam_level_results_beside_image_level(tmp_path):
    gt, preds = screening_case(n_patients=20, seed=1)
    res = run_evaluation(gt, preds, tmp_path, bootstrap_samples=100, gallery_size=0)
    m = res.metrics
    for k in (
        "breast/auc",
        "exam/auc",
        "ci95_low/breast/auc",
        "ci95_high/exam/auc",
        "breast/sens@spec0.9",
        "exam/spec@sens0.9",
        "calibration/ece",
    ):
        assert k in m and np.isfinite(m[k]), k
    report = (tmp_path / "report.md").read_text()
    assert report.index("## Image-level ROC") < report.index("## Breast- and exam-level results")
    section = report.split("## Breast- and exam-level results")[1].split("\n## ")[0]
    assert "patient (20 patients)" in section and "highest detection score over the views" in section
    assert "![Breast / exam ROC](exam_roc.png)" in section
    assert "ECE" in report and (tmp_path / "calibration.png").is_file() and (tmp_path / "exam_roc.png").is_file()
    table = pd.read_csv(tmp_path / "exam_level.csv")
    assert table["level"].tolist() == ["breast", "exam"] and table.loc[0, "units"] == 40


def test_without_patient_id_no_levels_but_calibration(tmp_path):
    gt, preds = screening_case(n_patients=4)
    for im in gt["images"]:
        del im["patient_id"]
    res = run_evaluation(gt, preds, tmp_path, bootstrap_samples=20, gallery_size=0)
    assert res.exam.levels == [] and "breast/auc" not in res.metrics and "calibration/ece" in res.metrics
    assert not (tmp_path / "exam_level.csv").exists() and (tmp_path / "calibration.csv").is_file()
    assert "Not computed: no image carries a patient_id" in (tmp_path / "report.md").read_text()
