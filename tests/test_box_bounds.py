"""Boxes outside their image (issue 19, item 6): the training loader and the evaluation's ground truth
clip them to the image and drop those with nothing inside, counted in one warning naming the images;
DATASETS.STRICT_BOXES turns them into an error naming the file, the image and the box."""

import json
import logging

import cv2
import numpy as np
import pytest

from meddet.config import get_cfg
from meddet.data.dataset import build_train_loader, load_records
from meddet.errors import DataError
from meddet.evaluation import evaluate, evaluation_kwargs


def _coco(root, boxes_per_image):
    """100x80 (w x h) grey PNGs; boxes [x, y, w, h] per image, category 1."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image):
        name = f"images/im{i}.png"
        cv2.imwrite(str(root / name), np.full((80, 100), 30, np.uint8))
        images.append({"id": i + 1, "file_name": name, "width": 100, "height": 80})
        for b in boxes:
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            )
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}))
    return path


BOXES = [
    [[10, 10, 20, 20], [90, 60, 30, 40]],  # inside; reaching past the right and bottom edges
    [[-5, 20, 15, 10]],  # reaching past the left edge
    [[150, 10, 10, 10], [40, 40, 10, 10]],  # wholly outside; inside
    [[99.8, 10, 0.4, 5]],  # past the edge by less than the tolerance: clipped quietly
]


def test_training_records_are_clipped_and_counted_once(tmp_path, caplog):
    path = _coco(tmp_path, BOXES)
    with caplog.at_level(logging.WARNING, logger="meddet"):
        records, _ = load_records([str(path)])
        load_records([str(path)])  # e.g. again for a validation: no second warning
    warnings = [r.getMessage() for r in caplog.records if "outside their image" in r.getMessage()]
    assert len(warnings) == 1
    msg = warnings[0]
    assert "2 box(es) reach outside their image and were clipped" in msg and "1 lie wholly outside" in msg
    assert str(path) in msg and "images/im0.png" in msg and "images/im1.png" in msg and "images/im2.png" in msg
    assert "images/im3.png" not in msg
    boxes = {r["file_name"].split("/")[-1]: [a["bbox"] for a in r["annotations"]] for r in records}
    assert boxes["im0.png"] == [[10, 10, 30, 30], [90, 60, 100, 80]]
    assert boxes["im1.png"] == [[0, 20, 10, 30]]
    assert boxes["im2.png"] == [[40, 40, 50, 50]]  # the box wholly outside is gone
    assert boxes["im3.png"] == [pytest.approx([99.8, 10, 100, 15])]
    for r in records:
        for x1, y1, x2, y2 in (a["bbox"] for a in r["annotations"]):
            assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]


def test_the_training_loader_feeds_only_boxes_inside_the_image(tmp_path):
    path = _coco(tmp_path, BOXES)
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN",
            (str(path),),
            "DATALOADER.NUM_WORKERS",
            0,
            "SOLVER.IMS_PER_BATCH",
            4,
            "INPUT.MIN_SIZE_TRAIN",
            (80,),
            "INPUT.MAX_SIZE_TRAIN",
            100,
            "INPUT.RANDOM_FLIP",
            "none",
        ]
    )
    loader, _ = build_train_loader(cfg)
    batch = next(iter(loader))
    for item in batch:
        b = item["boxes"].numpy()
        h, w = item["image"].shape[1:]
        assert len(b) and (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()


def test_strict_boxes_is_an_error_naming_file_image_and_box(tmp_path):
    path = _coco(tmp_path, BOXES)
    with pytest.raises(DataError) as e:
        load_records([str(path)], strict_boxes=True)
    msg = str(e.value)
    assert str(path) in msg and "images/im0.png" in msg and "[90, 60, 30, 40]" in msg and "STRICT_BOXES" in msg
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", (str(path),), "DATASETS.STRICT_BOXES", True, "DATALOADER.NUM_WORKERS", 0])
    with pytest.raises(DataError, match="im0.png"):
        build_train_loader(cfg)


def test_evaluation_ground_truth_follows_the_same_rule(tmp_path):
    path = _coco(tmp_path, [[[90, 10, 40, 20]], [[150, 10, 10, 10]]])
    # a detection of what is visible of the first box (IoU 0.25 with the unclipped box)
    preds = [{"image_id": 1, "category_id": 1, "bbox": [90, 10, 10, 20], "score": 0.9}]
    m = evaluate(str(path), preds, bootstrap_samples=0)
    assert m["gt/instances"] == 1  # the box wholly outside the second image is not counted as missed
    assert m["bbox/AP50"] == pytest.approx(100.0)
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.STRICT_BOXES", True])
    kw = {**evaluation_kwargs(cfg), "bootstrap_samples": 0, "gallery_size": 0}
    with pytest.raises(DataError, match=r"images/im0.png.*\[90, 10, 40, 20\]"):
        evaluate(str(path), preds, **kw)


def test_an_empty_training_split_is_an_error_naming_the_file(tmp_path):
    empty = tmp_path / "train.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "lesion"}]}))
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", (str(empty),), "DATALOADER.NUM_WORKERS", 0])
    with pytest.raises(DataError, match=f"{empty}: the training split holds no images"):
        build_train_loader(cfg)
    no_boxes = _coco(tmp_path / "nb", [[], []])  # images, but none with a box
    cfg.merge_from_list(["DATASETS.TRAIN", (str(no_boxes),)])
    with pytest.raises(DataError, match=f"{no_boxes}: none of its 2 images has a box"):
        build_train_loader(cfg)
