"""COCO AP to the last digit: meddet's numbers on both backends equal pycocotools' on the user's
own files (unsorted image lists, tied scores, crowd regions, non-contiguous ids, MAX_DETS > 100)."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest

from meddet.evaluation import EvalData, coco_evaluate
from meddet.evaluation.bootstrap import APStats

SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR{n}", "ARs", "ARm", "ARl")


def messy_case(seed: int):
    """Random case as users' files look: image ids unsorted and non-contiguous, category ids
    non-contiguous and unsorted, scores rounded (many ties), some crowd regions, GT areas from the
    'area' field (not always w*h), small/medium/large boxes, and images with more than 100 detections."""
    rng = np.random.default_rng(seed)
    n_img = int(rng.integers(2, 12))
    ids = rng.choice(np.arange(1, 1000), n_img, replace=False)  # file order != id order
    cat_ids = [int(c) for c in rng.choice(np.arange(1, 60), int(rng.integers(1, 5)), replace=False)]
    images, anns, preds = [], [], []
    decimals = int(rng.integers(1, 3))
    for iid in ids.tolist():
        images.append({"id": iid, "file_name": f"{iid}.png", "height": 512, "width": 512})
        crowded = rng.random() < 0.25
        n_gt = int(rng.integers(20, 60)) if crowded else int(rng.integers(0, 8))
        for _ in range(n_gt):
            x, y = rng.uniform(0, 400, 2)
            # inside the image: meddet clips ground truth reaching outside it (as training does), pycocotools not
            w, h = np.minimum(rng.uniform(3, 140, 2), [512 - x, 512 - y])
            c = int(rng.choice(cat_ids))
            area = w * h if rng.random() < 0.8 else w * h * rng.uniform(0.3, 1.0)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": c,
                    "bbox": [x, y, w, h],
                    "area": area,
                    "iscrowd": int(rng.random() < 0.07),
                }
            )
            for _ in range(int(rng.integers(0, 4))):
                j = rng.normal(0, 0.12, 4) * [w, h, w, h]
                cls = c if rng.random() < 0.85 else int(rng.choice(cat_ids))
                preds.append(
                    {
                        "image_id": iid,
                        "category_id": cls,
                        "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])],
                        "score": float(np.round(rng.random(), decimals)),
                    }
                )
        for _ in range(int(rng.integers(0, 10))):
            preds.append(
                {
                    "image_id": iid,
                    "category_id": int(rng.choice(cat_ids)),
                    "bbox": [*rng.uniform(0, 400, 2), *rng.uniform(3, 140, 2)],
                    "score": float(np.round(rng.random(), decimals)),
                }
            )
    order = rng.permutation(len(preds))
    preds = [preds[i] for i in order]
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids]}
    max_dets = int(rng.choice([100, 101, 150, 400]))
    return gt, preds, max_dets


def pycocotools_reference(gt: dict, preds: list[dict], max_dets: int):
    """pycocotools on (copies of) the original dicts: the 12 summary numbers and per-class AP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.array(ev.stats, dtype=np.float64)
    prec = ev.eval["precision"]
    # summarize() takes AP (its first number) at a literal 100 detections: -1 for other maxDets.
    # meddet reports AP at max_dets (as detectron2 does): the same mean at the last maxDets.
    p = prec[:, :, :, 0, -1]
    stats[0] = p[p > -1].mean()
    per_class = []
    for k in range(prec.shape[2]):
        pk = prec[:, :, k, 0, -1]
        per_class.append(pk[pk > -1].mean() if (pk > -1).any() else np.nan)
    return stats, np.array(per_class)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_all_12_numbers_and_per_class_ap_equal_pycocotools_on_messy_cases(backend):
    checked = 0
    for seed in range(50):
        gt, preds, max_dets = messy_case(seed)
        ref, ref_cls = pycocotools_reference(gt, preds, max_dets)
        got = coco_evaluate(EvalData.from_coco(gt, preds), backend, max_dets)
        names = [n.format(n=max_dets) for n in SUMMARY]
        mine = np.array([got.summary[n] for n in names])
        ref = np.where(ref == -1, np.nan, ref)  # pycocotools' -1 for "undefined" is NaN here
        np.testing.assert_allclose(
            mine, ref, rtol=0, atol=1e-9, equal_nan=True, err_msg=f"seed {seed}, max_dets {max_dets}: {names}"
        )
        np.testing.assert_allclose(
            got.per_class_ap, ref_cls, rtol=0, atol=1e-9, equal_nan=True, err_msg=f"seed {seed} per-class AP"
        )
        checked += int(np.isfinite(ref).sum())
    assert checked > 400  # the cases are not degenerate


def two_image_tie():
    """Image 2 is listed first; both images get a detection scoring 0.5: on image 2 a false
    positive, on image 1 an exact hit. pycocotools takes image 1's first (image-id order): AP 1."""
    gt = {
        "images": [{"id": 2}, {"id": 1}],
        "categories": [{"id": 1, "name": "lesion"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}
        ],
    }
    preds = [
        {"image_id": 2, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.5},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.5},
    ]
    return gt, preds


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_ties_are_broken_in_image_id_order_not_file_order(backend):
    gt, preds = two_image_tie()
    ref, _ = pycocotools_reference(gt, preds, 100)
    data = EvalData.from_coco(gt, preds)
    got = coco_evaluate(data, backend)
    assert ref[0] == pytest.approx(1.0) and got.summary["AP"] == pytest.approx(1.0)
    # The bootstrap's own AP (its full-sample value is the interval's estimate) orders the same way.
    ap = APStats.from_data(data).ap(np.ones((1, data.num_images)))[0]
    assert np.nanmean(ap) == pytest.approx(1.0)


def test_bootstrap_ap_equals_pycocotools_on_unsorted_tied_case():
    for seed in (3, 11):
        gt, preds, _ = messy_case(seed)
        data = EvalData.from_coco(gt, preds)
        ref, ref_cls = pycocotools_reference(gt, preds, 100)
        ap = APStats.from_data(data, max_dets=100).ap(np.ones((1, data.num_images)))[0]
        assert np.nanmean(ap) == pytest.approx(ref[0], abs=1e-9)
        np.testing.assert_allclose(np.nanmean(ap, axis=0), ref_cls, atol=1e-9)


def test_ars_arm_arl_are_reported_in_metrics():
    gt, preds, max_dets = messy_case(1)
    m = coco_evaluate(EvalData.from_coco(gt, preds), "faster_coco_eval", max_dets).to_metrics(["a"])
    for k in ("bbox/ARs", "bbox/ARm", "bbox/ARl", "bbox/AR1", "bbox/AR10", f"bbox/AR{max_dets}"):
        assert k in m
