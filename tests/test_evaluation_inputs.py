"""Input hygiene: numbers must be numbers, every error names the file, an empty result list warns
and still writes every file."""

from __future__ import annotations

import json
import logging
import re

import pytest
from test_evaluation import det, make_gt

from meddet.apps.evaluate import evaluate_predictions
from meddet.config import get_cfg
from meddet.errors import DataError
from meddet.evaluation import evaluate, run_evaluation


@pytest.fixture
def files(tmp_path):
    gt = make_gt([[(1, [10, 10, 40, 40])], [(2, [50, 50, 30, 30])]])
    gt_path = tmp_path / "val.json"
    gt_path.write_text(json.dumps(gt))
    return gt, gt_path, tmp_path


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {"score": "0.9"},
            r"predictions.json: predictions\[1\]\.score is '0\.9' \(a string\); expected a finite number",
        ),
        ({"score": True}, r"predictions\[1\]\.score is True \(a boolean\)"),
        ({"bbox": ["10", 10, 40, 40]}, r"predictions\[1\]\.bbox is \['10', 10, 40, 40\] \(holding a string\)"),
        ({"score": None}, r"predictions\[1\]\.score is None"),
    ],
)
def test_numbers_must_be_numbers_and_errors_name_the_file(files, bad, message):
    gt, gt_path, tmp = files
    preds = [det(1, 1, [10, 10, 40, 40], 0.9), {**det(1, 1, [10, 10, 40, 40], 0.9), **bad}]
    p = tmp / "predictions.json"
    p.write_text(json.dumps(preds))
    with pytest.raises(DataError, match=message) as e:
        evaluate(gt_path, p)
    assert str(p) in str(e.value)
    # The CLI path (gt loaded by the task, predictions read from the file) names both files too.
    with pytest.raises(DataError, match=re.escape(str(p))):
        evaluate_predictions(get_cfg(), gt_path, p, tmp / "eval")


def test_ground_truth_errors_name_the_file_when_read_by_the_task(files):
    gt, gt_path, tmp = files
    gt["annotations"][0]["area"] = "1600"
    gt_path.write_text(json.dumps(gt))
    with pytest.raises(DataError, match=re.escape(f"{gt_path}: annotations[0].area is '1600' (a string)")):
        evaluate_predictions(get_cfg(), gt_path, [det(1, 1, [10, 10, 40, 40], 0.9)], tmp / "eval")
    gt["annotations"][0]["area"] = 1600
    gt["annotations"][0]["iscrowd"] = "0"  # would have been truthy: a crowd region
    gt_path.write_text(json.dumps(gt))
    with pytest.raises(DataError, match=re.escape(f"{gt_path}: annotations[0].iscrowd is '0' (a string)")):
        evaluate_predictions(get_cfg(), gt_path, [det(1, 1, [10, 10, 40, 40], 0.9)], tmp / "eval")


def test_in_memory_predictions_are_named_by_the_file_they_came_from(files):
    gt, gt_path, tmp = files
    with pytest.raises(DataError, match=re.escape("results.json: predictions[0].score is '1'")):
        evaluate(gt, [det(1, 1, [10, 10, 40, 40], "1")], predictions_source=tmp / "results.json")


def test_empty_results_warn_and_still_write_every_file(files, caplog):
    gt, gt_path, tmp = files
    run_evaluation(gt_path, [det(1, 1, [10, 10, 40, 40], 0.9)], tmp / "full", bootstrap_samples=20)
    (tmp / "empty.json").write_text("[]")
    with caplog.at_level(logging.WARNING):
        res = run_evaluation(gt_path, tmp / "empty.json", tmp / "empty", bootstrap_samples=20)
    assert "empty.json: no detections" in caplog.text
    assert res.metrics["bbox/AP"] == 0.0 and res.metrics["prf1/recall"] == 0.0
    written = {p.name for p in (tmp / "empty").iterdir()}
    expected = {p.name for p in (tmp / "full").iterdir() if not p.name.startswith("errors_fp_")}
    assert expected <= written, expected - written
