"""meddet.evaluation: COCO AP on both backends, P/R/F1, confusion matrix, tables, output files."""

from __future__ import annotations

import copy
import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest

from meddet.errors import ConfigError, DataError
from meddet.evaluation import (
    EvalData,
    coco_evaluate,
    evaluate,
    format_per_class_table,
    format_summary,
    match_detections,
    run_evaluation,
)

NAMES = ("mass", "calc")


def make_gt(boxes_per_image: list[list[tuple[int, list[float]]]], names=NAMES) -> dict:
    """COCO dict from, per image, a list of (category_id, [x, y, w, h])."""
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image):
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 200, "width": 200})
        for c, b in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": c,
                    "bbox": list(b),
                    "area": b[2] * b[3],
                    "iscrowd": 0,
                }
            )
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)],
    }


def det(image_id, category_id, bbox, score) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def random_case(seed: int, n_images: int, n_classes: int = 3, crowd: bool = False):
    """Crowded scenes: clustered, overlapping GT boxes; jittered true detections with wrong
    classes now and then, duplicates, and random false positives, all with random scores."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 256, "width": 256})
        cx, cy = rng.uniform(40, 200, 2)
        for _ in range(int(rng.integers(0, 9))):
            x, y = cx + rng.normal(0, 20, 2)
            w, h = rng.uniform(4, 110, 2)
            c = int(rng.integers(1, n_classes + 1))
            is_crowd = int(crowd and rng.random() < 0.05)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": c,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": is_crowd,
                }
            )
            for _ in range(int(rng.integers(0, 4))):
                j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                cls = c if rng.random() < 0.8 else int(rng.integers(1, n_classes + 1))
                preds.append(
                    det(i + 1, cls, [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])], float(rng.random()))
                )
        for _ in range(int(rng.integers(0, 12))):
            x, y = cx + rng.normal(0, 30, 2)
            preds.append(
                det(
                    i + 1,
                    int(rng.integers(1, n_classes + 1)),
                    [x, y, *rng.uniform(4, 110, 2)],
                    float(np.round(rng.random(), 2)),
                )
            )
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": f"class{k}"} for k in range(n_classes)],
    }
    return gt, preds


def sequential_matching(gt: dict, preds: list[dict], thr: float, agnostic: bool) -> list[int]:
    """Textbook greedy matching, one detection at a time (the reference for the vectorised one)."""

    def iou(a, b):
        iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
        ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
        inter = max(iw, 0) * max(ih, 0)
        return inter / (a[2] * a[3] + b[2] * b[3] - inter) if inter > 0 else 0.0

    taken, out = set(), [-1] * len(preds)
    for d in sorted(range(len(preds)), key=lambda i: -preds[i]["score"]):
        p, best, best_iou = preds[d], -1, thr
        for g, a in enumerate(gt["annotations"]):
            if g in taken or a["image_id"] != p["image_id"] or (not agnostic and a["category_id"] != p["category_id"]):
                continue
            v = iou(p["bbox"], a["bbox"])
            if v >= thr and (best < 0 or v > best_iou):
                best, best_iou = g, v
        if best >= 0:
            taken.add(best)
            out[d] = best
    return out


@pytest.fixture
def small_gt() -> dict:
    return make_gt(
        [
            [(1, [10, 10, 40, 40]), (2, [100, 100, 30, 30])],
            [(1, [50, 60, 40, 20])],
            [(2, [5, 5, 60, 60]), (1, [120, 20, 50, 50])],
            [],
        ]
    )


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_perfect_predictions_score_100(small_gt, backend):
    preds = [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in small_gt["annotations"]]
    m = evaluate(small_gt, preds, backend=backend)
    for k in ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/AP-mass", "bbox/AP-calc", "bbox/AR100"):
        assert m[k] == pytest.approx(100.0), k
    assert m["prf1/precision"] == m["prf1/recall"] == m["prf1/F1"] == 1.0
    assert m["prf1/macro_F1"] == m["prf1/weighted_F1"] == 1.0
    assert (m["prf1/FP"], m["prf1/FN"]) == (0.0, 0.0)


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_empty_predictions_score_0_without_crashing(small_gt, backend):
    res = run_evaluation(small_gt, [], backend=backend)
    m = res.metrics
    assert m["bbox/AP"] == 0.0 and m["bbox/AP50"] == 0.0 and m["bbox/AR100"] == 0.0
    assert m["bbox/AP-mass"] == 0.0 and m["bbox/AP-calc"] == 0.0
    assert m["prf1/recall"] == 0.0 and m["prf1/precision"] == 0.0 and m["prf1/F1"] == 0.0
    assert m["prf1/FN"] == 5.0
    # every ground truth lands in the background row, per true class
    assert res.confusion[2].tolist() == [3, 2, 0]
    assert res.confusion[:2].sum() == 0


def test_hand_counted_tp_fp_fn():
    # Each image: a found mass (TP), a calc box where there is nothing (FP), a missed calc (FN);
    # a correct calc detection below the score threshold must not count. Image 1 has one extra mass.
    per_image = [[(1, [10, 10, 40, 40]), (2, [100, 100, 30, 30])] for _ in range(3)]
    per_image[0].append((1, [150, 10, 30, 30]))
    gt = make_gt(per_image)
    preds = []
    for i in range(1, 4):
        preds += [
            det(i, 1, [10, 10, 40, 40], 0.9),
            det(i, 2, [10, 150, 20, 20], 0.8),
            det(i, 2, [100, 100, 30, 30], 0.3),
        ]
    preds.append(det(1, 1, [151, 11, 30, 30], 0.95))
    res = run_evaluation(gt, preds, score_thresh=0.5, iou_thresh=0.5)
    t = res.prf1.to_frame().set_index("Class")
    assert t.loc["mass", ["TP", "FP", "FN"]].tolist() == [4, 0, 0]
    assert t.loc["calc", ["TP", "FP", "FN"]].tolist() == [0, 3, 3]
    assert t.loc["mass", ["precision", "recall", "F1"]].tolist() == [1.0, 1.0, 1.0]
    assert t.loc["calc", ["precision", "recall", "F1"]].tolist() == [0.0, 0.0, 0.0]
    m = res.metrics
    assert (m["prf1/TP"], m["prf1/FP"], m["prf1/FN"]) == (4.0, 3.0, 3.0)
    assert m["prf1/precision"] == pytest.approx(4 / 7) and m["prf1/recall"] == pytest.approx(4 / 7)
    assert m["prf1/F1"] == pytest.approx(2 * 4 / (2 * 4 + 3 + 3))
    assert m["prf1/macro_F1"] == pytest.approx(0.5)
    assert m["prf1/weighted_F1"] == pytest.approx(4 / 7)  # (4 * 1.0 + 3 * 0.0) / 7 instances
    # Lowering the threshold lets the low-score calc detections in: the same matching, re-read.
    low = run_evaluation(gt, preds, score_thresh=0.25).prf1.to_frame().set_index("Class")
    assert low.loc["calc", ["TP", "FP", "FN"]].tolist() == [3, 3, 0]


def test_greedy_matching_one_gt_per_detection_by_descending_score():
    gt = make_gt([[(1, [0, 0, 100, 100]), (1, [20, 0, 100, 100])]])
    preds = [
        det(1, 1, [18, 0, 100, 100], 0.6),  # best IoU with GT 2, but lower score
        det(1, 1, [15, 0, 100, 100], 0.9),  # takes GT 2 first (IoU 0.90 > 0.74 with GT 1)
        det(1, 1, [20, 0, 100, 100], 0.5),  # both GTs already taken: a duplicate, FP
    ]
    m = match_detections(EvalData.from_coco(gt, preds), 0.5)
    assert m.det_gt.tolist() == [0, 1, -1]
    assert m.gt_det.tolist() == [0, 1]


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_matching_equals_sequential_greedy(seed):
    from meddet.data.coco import clip_coco_boxes

    gt, preds = random_case(seed, n_images=25)
    gt, _ = clip_coco_boxes(gt, "random case")  # as the evaluator sees it (boxes clipped to the image)
    data = EvalData.from_coco(gt, preds)
    for thr in (0.3, 0.5, 0.75):
        for agnostic in (False, True):
            m = match_detections(data, thr, class_agnostic=agnostic)
            assert m.det_gt.tolist() == sequential_matching(gt, preds, thr, agnostic), (thr, agnostic)
    # One matching serves every score threshold: re-matching only the kept detections agrees.
    m = match_detections(data, 0.5)
    keep = [i for i, p in enumerate(preds) if p["score"] >= 0.6]
    sub = match_detections(EvalData.from_coco(gt, [preds[i] for i in keep]), 0.5)
    assert m.det_gt[keep].tolist() == sub.det_gt.tolist()
    assert np.array_equal(m.gt_matched(0.6), sub.gt_matched(0.0))


def test_confusion_matrix_cells():
    gt = make_gt(
        [
            [(1, [10, 10, 40, 40]), (2, [100, 100, 30, 30])],  # mass found as calc; calc missed
            [(2, [20, 20, 30, 30])],  # calc found as calc
        ]
    )
    preds = [
        det(1, 2, [10, 10, 40, 40], 0.9),
        det(2, 2, [20, 20, 30, 30], 0.9),
        det(2, 1, [150, 150, 20, 20], 0.7),  # nothing there: FP of class mass
        det(1, 1, [100, 100, 30, 30], 0.2),
    ]  # would find the calc, but below threshold
    res = run_evaluation(gt, preds, score_thresh=0.5)
    cm = res.confusion  # rows: predicted mass, calc, background; columns: true mass, calc, background
    assert cm.tolist() == [[0, 0, 1], [1, 1, 0], [0, 1, 0]]
    # The wrong class costs one FP and one FN in the class-aware P/R/F1.
    t = res.prf1.to_frame().set_index("Class")
    assert t.loc["mass", ["TP", "FP", "FN"]].tolist() == [0, 1, 1]
    assert t.loc["calc", ["TP", "FP", "FN"]].tolist() == [1, 1, 1]


def test_backends_agree_on_random_crowded_case():
    gt, preds = random_case(7, n_images=300, n_classes=4, crowd=True)
    data = EvalData.from_coco(gt, preds)
    fast, ref = coco_evaluate(data, "faster_coco_eval"), coco_evaluate(data, "pycocotools")
    assert 0.05 < ref.summary["AP50"] < 0.95  # a non-trivial case
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"):
        assert fast.summary[k] == pytest.approx(ref.summary[k], abs=1e-6, nan_ok=True), k
    np.testing.assert_allclose(fast.per_class_ap, ref.per_class_ap, atol=1e-6)
    np.testing.assert_allclose(fast.per_class_ap50, ref.per_class_ap50, atol=1e-6)


def test_class_without_ground_truth_is_nan_not_zero(small_gt):
    gt = copy.deepcopy(small_gt)
    gt["categories"].append({"id": 3, "name": "other"})
    preds = [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in gt["annotations"]]
    preds.append(det(1, 3, [0, 150, 20, 20], 0.9))
    res = run_evaluation(gt, preds)
    assert math.isnan(res.metrics["bbox/AP-other"]) and math.isnan(res.metrics["prf1/recall-other"])
    assert res.metrics["bbox/AP"] == pytest.approx(100.0)  # left out of the mean, as COCO does
    assert res.metrics["prf1/macro_F1"] == 1.0
    row = res.per_class.set_index("Class").loc["other"]
    assert row["Instances"] == 0 and math.isnan(row["mAP50"]) and row["P"] == 0.0
    line = [ln for ln in format_per_class_table(res.per_class).splitlines() if ln.strip().startswith("other")][0]
    assert line.split()[-2:] == ["-", "-"]


def test_crowd_regions_are_neither_fp_nor_fn():
    gt = make_gt([[(1, [10, 10, 40, 40]), (1, [100, 100, 80, 80])]])
    gt["annotations"][1]["iscrowd"] = 1
    preds = [det(1, 1, [10, 10, 40, 40], 0.9), det(1, 1, [110, 110, 20, 20], 0.8)]
    m = evaluate(gt, preds)
    assert (m["prf1/TP"], m["prf1/FP"], m["prf1/FN"]) == (1.0, 0.0, 0.0)
    assert m["bbox/AP"] == pytest.approx(100.0)


def test_writes_all_files_and_leaves_inputs_untouched(small_gt, tmp_path):
    preds = [det(a["image_id"], a["category_id"], a["bbox"], 0.8) for a in small_gt["annotations"]]
    preds.append(det(4, 1, [1, 1, 10, 10], 0.7))
    gt_before, preds_before = copy.deepcopy(small_gt), copy.deepcopy(preds)
    out = tmp_path / "eval"
    metrics = evaluate(small_gt, preds, out)
    assert small_gt == gt_before and preds == preds_before
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics, nan_ok=True)
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class.columns.tolist() == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    assert per_class["Class"].tolist() == ["all", "mass", "calc"]
    assert per_class.set_index("Class").loc["all", "Instances"] == 5
    prf1 = pd.read_csv(out / "prf1.csv")
    at = prf1[prf1["point"] == "threshold"].set_index("Class")
    assert at.loc["mass", "FP"] == 1 and at.loc["micro", "TP"] == 5 and at.loc["mass", "score_thresh"] == 0.5
    assert set(prf1["point"]) == {"threshold", "F1-optimal"}
    cm = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert cm.columns.tolist() == ["mass", "calc", "background"] and cm.loc["mass", "background"] == 1
    norm = pd.read_csv(out / "confusion_matrix_normalized.csv", index_col=0)
    np.testing.assert_allclose(norm[["mass", "calc"]].sum(axis=0), 1.0)
    img = cv2.imread(str(out / "confusion_matrix.png"))
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 200


def test_inputs_as_files_and_string_image_ids(tmp_path):
    gt = make_gt([[(1, [10, 10, 40, 40])], [(2, [5, 5, 20, 20])]])
    for im, a, name in zip(gt["images"], gt["annotations"], ["P_001_LEFT_CC", "P_002_RIGHT_MLO"]):
        im["id"] = a["image_id"] = name
    preds = [det("P_001_LEFT_CC", 1, [10, 10, 40, 40], 0.9), det("P_002_RIGHT_MLO", 2, [50, 50, 20, 20], 0.9)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "preds.json").write_text(json.dumps(preds))
    m = evaluate(tmp_path / "gt.json", tmp_path / "preds.json")
    assert m["bbox/AP-mass"] == pytest.approx(100.0) and m["bbox/AP-calc"] == 0.0
    assert (m["prf1/TP"], m["prf1/FP"], m["prf1/FN"]) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"image_id": 99}, "predictions[1].image_id"),
        ({"category_id": 7}, "predictions[1].category_id"),
        ({"bbox": [1, 2, 3]}, "predictions[1].bbox"),
        ({"bbox": [1, 2, -3, 4]}, "predictions[1].bbox"),
        ({"score": float("nan")}, "predictions[1].score"),
    ],
)
def test_bad_predictions_name_the_entry(small_gt, bad, field):
    preds = [det(1, 1, [10, 10, 40, 40], 0.9), {**det(1, 1, [10, 10, 40, 40], 0.9), **bad}]
    with pytest.raises(DataError, match=field.replace("[", r"\[").replace("]", r"\]")):
        evaluate(small_gt, preds)


def test_missing_prediction_field_and_bad_settings(small_gt, tmp_path):
    with pytest.raises(DataError, match=r"predictions\[0\] has no 'score'"):
        evaluate(small_gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}])
    (tmp_path / "p.json").write_text('{"not": "a list"}')
    with pytest.raises(DataError, match="p.json"):
        evaluate(small_gt, tmp_path / "p.json")
    with pytest.raises(ConfigError, match="EVAL.BACKEND"):
        evaluate(small_gt, [], backend="detectron2")
    with pytest.raises(ConfigError, match="EVAL.IOU_THRESH"):
        evaluate(small_gt, [], iou_thresh=0)
    with pytest.raises(ConfigError, match="TEST.SCORE_THRESH"):
        evaluate(small_gt, [], score_thresh=1.5)


def test_summary_and_table_text(small_gt):
    preds = [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in small_gt["annotations"]]
    res = run_evaluation(small_gt, preds)
    text = format_summary(res.metrics)
    assert "AP50" in text and "100.000" in text and "F1 1.000" in text and "IoU >= 0.50" in text
    table = format_per_class_table(res.per_class).splitlines()
    assert table[0].split() == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    assert table[1].split() == ["all", "4", "5", "1.000", "1.000", "1.000", "1.000"]
    assert table[2].split()[:3] == ["mass", "3", "3"]
    assert len({len(line) for line in table}) == 1  # aligned columns


def test_table_from_metrics_dict_and_metrics_json(small_gt, tmp_path):
    preds = [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in small_gt["annotations"][:3]]
    res = run_evaluation(small_gt, preds, tmp_path)
    expected = format_per_class_table(res.per_class)
    assert format_per_class_table(res.metrics) == expected
    assert format_per_class_table(json.loads((tmp_path / "metrics.json").read_text())) == expected
    with pytest.raises(DataError, match="gt/images"):
        format_per_class_table({"bbox/AP": 1.0})


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_max_dets_counts_crowded_images_whole(backend):
    """An image with 300 small objects (a cytology image): COCO's 100 detections per image cap AP near a
    third; EVAL.MAX_DETS 500 counts them all, and the bootstrap intervals follow the same rule."""
    boxes = [[20 * (i % 20), 20 * (i // 20), 12, 12] for i in range(300)]
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "height": 400, "width": 400}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 144, "iscrowd": 0}
            for i, b in enumerate(boxes)
        ],
    }
    preds = [det(1, 1, b, 0.9 - i * 1e-4) for i, b in enumerate(boxes)]
    capped = evaluate(gt, preds, backend=backend, bootstrap_samples=0)
    whole = run_evaluation(gt, preds, backend=backend, max_dets=500, bootstrap_samples=20).metrics
    assert capped["bbox/AP50"] == pytest.approx(100 / 3, abs=1.0)
    assert whole["bbox/AP50"] == pytest.approx(100.0) and whole["bbox/AR500"] == pytest.approx(100.0)
    assert whole["ci95_low/bbox/AP50"] == pytest.approx(100.0)
    with pytest.raises(ConfigError, match="EVAL.MAX_DETS"):
        evaluate(gt, preds, backend=backend, max_dets=5)
