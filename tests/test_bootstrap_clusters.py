"""Cluster bootstrap: intervals resample patients (all views together) by default, cover the true
value at close to their nominal rate on correlated views, and say what they resampled everywhere."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from meddet.config import get_cfg
from meddet.errors import ConfigError
from meddet.evaluation import EvalData, compare, evaluation_kwargs, format_comparison, run_evaluation
from meddet.evaluation.bootstrap import Clusters, image_clusters, percentile_interval


def test_patient_bootstrap_covers_true_recall_on_correlated_views_image_bootstrap_does_not():
    """40 patients x 4 views; each patient has a detectability shared by its views (logit-normal,
    sd 3), each view holds one lesion found with that probability. The true recall is the
    population mean detectability. 200 simulated datasets, 1000 resamples each."""
    P, V, mu, sd = 40, 4, 0.3, 3.0
    x, w = np.polynomial.hermite_e.hermegauss(80)
    true = float(np.sum(w * expit(mu + sd * x)) / np.sum(w))
    units = {"patient": Clusters("patient", np.repeat(np.arange(P), V)), "image": Clusters("image", np.arange(P * V))}
    covered = {u: 0 for u in units}
    rng = np.random.default_rng(2024)
    n_sets = 200
    for d in range(n_sets):
        p = expit(mu + sd * rng.normal(size=P))
        found = (rng.random((P, V)) < p[:, None]).astype(np.float64).ravel()
        lesions = np.ones(P * V)

        def recall(W):
            return ((W @ found) / (W @ lesions))[:, None]  # noqa: B023 (called within this iteration)

        for u, clusters in units.items():
            est, lo, hi = percentile_interval(recall, clusters, 1000, np.random.default_rng(d))
            assert est[0] == pytest.approx(found.mean())
            covered[u] += int(lo[0] <= true <= hi[0])
    assert covered["patient"] / n_sets >= 0.90, covered
    assert covered["image"] / n_sets <= 0.85, covered  # overconfident: views counted as independent


def patient_case(n_patients=30, views=4, seed=0, with_patient=True):
    """Each patient's lesions are all found or all missed (one per view): views fully correlated."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for pt in range(n_patients):
        found = rng.random() < 0.6
        for v in range(views):
            iid = pt * views + v + 1
            im = {"id": iid, "file_name": f"{iid}.png", "height": 100, "width": 100, "study_id": f"s{pt // 2}"}
            if with_patient:
                im["patient_id"] = f"P{pt:03d}"
            images.append(im)
            anns.append(
                {"id": iid, "image_id": iid, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0}
            )
            if found:
                preds.append({"image_id": iid, "category_id": 1, "bbox": [11, 10, 30, 30], "score": 0.9})
            preds.append({"image_id": iid, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.3})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
    return gt, preds


def test_default_unit_is_patient_and_is_written_next_to_every_interval(tmp_path):
    gt, preds = patient_case()
    res = run_evaluation(gt, preds, tmp_path, bootstrap_samples=300, gallery_size=0)
    assert (res.bootstrap.unit, res.bootstrap.n_units) == ("patient", 30)
    by_image = run_evaluation(gt, preds, bootstrap_samples=300, bootstrap_unit="image", gallery_size=0)
    assert (by_image.bootstrap.unit, by_image.bootstrap.n_units) == ("image", 120)
    key = "prf1/recall-lesion"
    width = res.metrics[f"ci95_high/{key}"] - res.metrics[f"ci95_low/{key}"]
    width_img = by_image.metrics[f"ci95_high/{key}"] - by_image.metrics[f"ci95_low/{key}"]
    assert width > 1.5 * width_img  # four identical views are one observation, not four

    csv = pd.read_csv(tmp_path / "bootstrap_ci.csv")
    assert set(csv["unit"]) == {"patient"} and set(csv["units"]) == {30}
    report = (tmp_path / "report.md").read_text()
    head = report.split("## Headline")[1].split("##")[0]
    ci_rows = [ln for ln in head.splitlines() if ln.startswith("| mAP50") or ln.startswith("| FROC sensitivity")]
    assert ci_rows and all("patient (30 patients)" in ln for ln in ci_rows)
    boot = report.split("## Bootstrap 95% confidence intervals")[1].split("##")[0]
    assert "30 patients" in boot and "EVAL.BOOTSTRAP_UNIT" in boot
    assert boot.count("patient (30 patients)") == len(csv)  # on every interval's row
    summary = pd.read_csv(tmp_path / "project_summary.csv")
    assert summary.loc[0, "ci95_unit"] == "patient" and summary.loc[0, "ci95_units"] == 30


def test_without_patient_id_falls_back_to_images_and_fields_group(caplog):
    gt, preds = patient_case(n_patients=6, with_patient=False)
    data = EvalData.from_coco(gt, preds)
    with caplog.at_level(logging.INFO, logger="meddet.evaluation.bootstrap"):
        c = image_clusters(data, "patient")
    assert (c.unit, c.n) == ("image", 24) and "patient_id" in caplog.text
    study = image_clusters(data, "study_id")
    assert study.n == 3 and study.describe() == "study_id (3 groups)"
    assert len(set(study.index[:8].tolist())) == 1  # patients 0 and 1 share study s0
    with pytest.raises(ConfigError, match=r"EVAL.BOOTSTRAP_UNIT is 'laterality'.*ground truth.*study_id"):
        image_clusters(data, "laterality")


def test_images_missing_the_patient_id_are_their_own_patients(caplog):
    gt, preds = patient_case(n_patients=3, views=2)
    del gt["images"][0]["patient_id"]
    with caplog.at_level(logging.WARNING):
        c = image_clusters(EvalData.from_coco(gt, preds), "patient")
    assert c.n == 4 and "1 of 6 images have no patient_id" in caplog.text


def test_config_key_reaches_the_bootstrap_and_compare_shows_the_unit(tmp_path):
    cfg = get_cfg()
    assert cfg.EVAL.BOOTSTRAP_UNIT == "patient"
    cfg.EVAL.BOOTSTRAP_UNIT = "study_id"
    kw = evaluation_kwargs(cfg)
    assert kw["bootstrap_unit"] == "study_id"
    gt, preds = patient_case(n_patients=8)
    for name, unit in (("a", "patient"), ("b", "image")):
        run_evaluation(gt, preds, tmp_path / name / "eval", bootstrap_samples=50, bootstrap_unit=unit, gallery_size=0)
    df = compare([tmp_path / "a", tmp_path / "b"])
    assert df["CI unit"].tolist() == ["patient", "image"]
    assert "CI unit" in format_comparison(df).splitlines()[0]
    # metrics.json stays numbers only
    assert all(
        isinstance(v, (int, float)) for v in json.loads((tmp_path / "a" / "eval" / "metrics.json").read_text()).values()
    )
