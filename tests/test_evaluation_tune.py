"""meddet.evaluation.tune (score and NMS thresholds on a validation split) and compare (runs side by side)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml
from test_evaluation import det, make_gt

from meddet.config import get_cfg
from meddet.errors import ConfigError, DataError
from meddet.evaluation import (
    compare,
    evaluate,
    evaluation_kwargs,
    format_comparison,
    tune,
    tune_kwargs,
    write_comparison,
)


def tune_case():
    """4 masses. Image 1 and 2: a TP and a duplicate box (IoU 0.54 with it, so also IoU 0.54 with
    the mass) scoring just below; image 3: a FP at .6 and the TP at .4; image 4: missed.
    Without the duplicates (NMS IoU <= 0.5) F1 is best at threshold .4: TP 3, FP 1, FN 1 -> 0.75;
    with them (NMS 0.6, 0.7) at most 0.6."""
    gt = make_gt([[(1, [10, 10, 40, 40])] for _ in range(4)] + [[(2, [10, 10, 40, 40])]])
    preds = [
        det(1, 1, [10, 10, 40, 40], 0.9),
        det(1, 1, [22, 10, 40, 40], 0.8),
        det(2, 1, [10, 10, 40, 40], 0.7),
        det(2, 1, [22, 10, 40, 40], 0.65),
        det(3, 1, [100, 100, 20, 20], 0.6),
        det(3, 1, [10, 10, 40, 40], 0.4),
        det(5, 2, [10, 10, 40, 40], 0.55),
        det(5, 2, [150, 150, 20, 20], 0.95),
    ]
    return gt, preds


def test_tune_picks_the_known_best_nms_and_score_thresholds(tmp_path):
    gt, preds = tune_case()
    res = tune(gt, preds, tmp_path, nms_thresholds=(0.3, 0.5, 0.6, 0.7))
    assert res.nms_thresh == 0.5  # 0.3 and 0.5 tie; the larger suppresses less
    assert res.class_score_thresh == [0.4, 0.55]
    table = res.table.set_index(["nms_thresh", "Class"])
    assert table.loc[(0.5, "mass"), "F1"] == pytest.approx(0.75)
    assert table.loc[(0.7, "mass"), "F1"] == pytest.approx(0.6)
    assert table.loc[(0.5, "mass"), "detections"] == 6
    # The fragment merges into a config and evaluate honours it.
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "tuned_config.yaml"))
    assert cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.5
    assert list(cfg.TEST.CLASS_SCORE_THRESH) == [0.4, 0.55]
    assert 0.0 < cfg.TEST.SCORE_THRESH <= 1.0
    kw = evaluation_kwargs(cfg)
    assert kw["score_thresh"] == [0.4, 0.55] and kw["bootstrap_samples"] == 1000 and kw["froc_hit"] == "center"
    m = evaluate(gt, preds, **{**kw, "bootstrap_samples": 0})
    assert m["prf1/score_thresh-mass"] == 0.4 and m["prf1/recall-mass"] == 0.75
    assert pd.read_csv(tmp_path / "tune.csv").shape[0] == 4 * 3  # 4 NMS values x (2 classes + macro)


def test_tune_by_sensitivity_at_target_fp_rate():
    gt, preds = tune_case()
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "EVAL.TUNE_OBJECTIVE",
            "froc",
            "EVAL.TUNE_TARGET_FPI",
            0.25,
            "EVAL.TUNE_NMS_THRESHOLDS",
            (0.7,),
            "EVAL.FROC_HIT",
            "iou",
        ]
    )
    res = tune(gt, preds, **tune_kwargs(cfg))
    # mass, 5 images: at most 1.25 false positives; the duplicates hit the lesions (not FPs), the .6 box is one.
    row = res.table.set_index("Class").loc["mass"]
    assert row["sensitivity"] == 0.75 and row["score_thresh"] == 0.4 and row["fp_per_image"] == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="EVAL.TUNE_OBJECTIVE"):
        tune(gt, preds, objective="auc")
    with pytest.raises(ConfigError, match="EVAL.TUNE_NMS_THRESHOLDS"):
        tune(gt, preds, nms_thresholds=(0.0,))


def make_run(root, name, ap50_boost: float, output_dir: str | None = None):
    gt, preds = tune_case()
    run = root / name
    if ap50_boost:
        preds = [p for p in preds if p["score"] != 0.6]  # drop the false positive
    evaluate(gt, preds, run / "eval", bootstrap_samples=20, gallery_size=0)
    (run / "config.yaml").write_text(yaml.safe_dump({"OUTPUT_DIR": output_dir or f"./output/{name}"}))
    return run


def test_compare_runs_side_by_side(tmp_path):
    a = make_run(tmp_path, "a", 0.0, output_dir="./output/baseline")
    b = make_run(tmp_path, "b", 1.0)
    df = compare([a, b])
    assert df["run"].tolist() == ["baseline", "b"]
    assert df.loc[1, "P"] > df.loc[0, "P"] and df.loc[0, "mAP50"] == pytest.approx(
        json.loads((a / "eval" / "metrics.json").read_text())["bbox/AP50"] / 100
    )
    assert not math.isnan(df.loc[0, "sens@1FP"]) and not math.isnan(df.loc[0, "mAP50 CI low"])
    text = format_comparison(df).splitlines()
    assert text[0].split()[:2] == ["run", "images"]
    b_line = [ln for ln in text if ln.startswith("b ")][0]
    assert f"{df.loc[1, 'P']:.3f}*" in b_line  # best precision marked
    csv, txt = write_comparison(df, tmp_path / "cmp")
    assert pd.read_csv(csv)["run"].tolist() == ["baseline", "b"] and txt.read_text().startswith("run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no eval/metrics.json"):
        compare([a, tmp_path / "empty"])


def test_compare_on_an_unevaluated_run_says_run_evaluate_first(tmp_path):
    run = tmp_path / "trained"
    run.mkdir()
    (run / "config.yaml").write_text("OUTPUT_DIR: ./output/trained\n")
    # A training run's metrics.json: detectron2 JSON lines, not an evaluation.
    (run / "metrics.json").write_text('{"iteration": 0, "total_loss": 1.0}\n{"iteration": 1, "total_loss": 0.9}\n')
    with pytest.raises(
        DataError,
        match=r"trained: no eval/metrics.json \(not evaluated yet\): run "
        r"`detectron.py -c evaluate",
    ):
        compare([run])


def test_tune_summary_reports_the_macro_f1_reached_at_the_chosen_thresholds(tmp_path):
    gt, preds = tune_case()
    preds = preds + [det(5, 2, [60, 60, 20, 20], 0.45)]  # a calc FP: its best threshold is no longer mass's
    res = tune(gt, preds, tmp_path, nms_thresholds=(0.7,))  # 0.7 suppresses nothing here
    # Recomputed by the evaluator on the same predictions: one global threshold, then the per-class ones.
    at_global = evaluate(gt, preds, score_thresh=res.score_thresh, bootstrap_samples=0, gallery_size=0)
    at_class = evaluate(gt, preds, score_thresh=res.class_score_thresh, bootstrap_samples=0, gallery_size=0)
    assert res.macro_at_score_thresh == pytest.approx(at_global["prf1/macro_F1"], abs=1e-9)
    assert res.macro_at_class_thresh == pytest.approx(at_class["prf1/macro_F1"], abs=1e-9)
    assert res.macro_at_class_thresh > res.macro_at_score_thresh
    text = res.summary()
    assert (
        f"macro F1 at score >= {res.score_thresh:.4f} for every class (TEST.SCORE_THRESH): "
        f"{at_global['prf1/macro_F1']:.4f}"
    ) in text
    assert f"macro F1 at the per-class thresholds (TEST.CLASS_SCORE_THRESH): {at_class['prf1/macro_F1']:.4f}" in text
    # The fragment names each per-class threshold's class.
    frag = yaml.safe_load((tmp_path / "tuned_config.yaml").read_text())
    assert frag["TEST"]["CLASS_SCORE_THRESH_NAMES"] == ["mass", "calc"]
