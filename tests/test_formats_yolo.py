"""YOLO (Ultralytics layout) -> COCO -> YOLO, on files written in that layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml

from meddet.data.coco import load_coco
from meddet.data.formats import coco_to_yolo, read_data_yaml, yolo_to_coco
from meddet.errors import DataError


@pytest.fixture
def yolo(tmp_path):
    root = tmp_path / "ds"
    for split, names in {"train": ["a", "b", "c", "bad"], "val": ["v"]}.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for n in names:
            cv2.imwrite(str(root / "images" / split / f"{n}.jpg"), np.zeros((100, 200, 3), np.uint8))
    labels = {
        "train/a": "0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.1 0.1\n",  # boxes
        "train/b": "1 0.1 0.2 0.3 0.2 0.2 0.6\n",  # a segmentation polygon
        "train/c": "",  # an empty file: no objects (c has none, v has no file at all)
        "train/bad": "5 0.5 0.5 0.1 0.1\n",  # class out of range
    }
    for rel, text in labels.items():
        (root / "labels" / f"{rel}.txt").write_text(text)
    (root / "data.yaml").write_text(
        yaml.safe_dump(
            {"path": ".", "train": "images/train", "val": "images/val", "names": {0: "mass", 1: "calcification"}}
        )
    )
    return root


def test_yolo_to_coco_reads_boxes_polygons_and_empty_images(yolo, tmp_path):
    assert read_data_yaml(yolo / "data.yaml")["names"] == ["mass", "calcification"]
    report = yolo_to_coco(yolo / "data.yaml", tmp_path / "coco")
    assert [s.item.rsplit("/", 1)[-1] for s in report.skipped] == ["bad.jpg"]
    assert "line 1: class 5 (expected 0..1)" in report.skipped[0].reason
    assert report.splits == {"train": 3, "val": 1}
    train = load_coco(tmp_path / "coco" / "train.json")
    assert [c["name"] for c in train["categories"]] == ["mass", "calcification"]
    by_name = {im["source"]: im for im in train["images"]}
    assert (tmp_path / "coco" / by_name["a.jpg"]["file_name"]).resolve() == (yolo / "images/train/a.jpg").resolve()
    assert by_name["a.jpg"]["width"] == 200 and by_name["a.jpg"]["height"] == 100
    boxes = sorted((a["image_id"], a["category_id"], a["bbox"]) for a in train["annotations"])
    a_id, b_id = by_name["a.jpg"]["id"], by_name["b.jpg"]["id"]
    assert boxes == sorted(
        [(a_id, 1, [80.0, 30.0, 40.0, 40.0]), (a_id, 2, [10.0, 5.0, 20.0, 10.0]), (b_id, 2, [20.0, 20.0, 40.0, 40.0])]
    )
    assert len(load_coco(tmp_path / "coco" / "all.json")["images"]) == 4


def test_coco_to_yolo_round_trip(yolo, tmp_path):
    yolo_to_coco(yolo / "data.yaml", tmp_path / "coco")
    data = coco_to_yolo(
        {"train": tmp_path / "coco" / "train.json", "val": tmp_path / "coco" / "val.json"}, tmp_path / "yolo2"
    )
    again = yaml.safe_load(data.read_text())
    assert again["names"] == {0: "mass", 1: "calcification"} and again["train"] == "images/train"
    assert (tmp_path / "yolo2" / "images" / "val" / "v.jpg").is_file()
    assert (tmp_path / "yolo2" / "labels" / "val" / "v.txt").read_text() == ""
    lines = (tmp_path / "yolo2" / "labels" / "train" / "a.txt").read_text().splitlines()
    got = sorted(tuple(map(float, line.split())) for line in lines)
    assert np.allclose(got, sorted([(0, 0.5, 0.5, 0.2, 0.4), (1, 0.1, 0.1, 0.1, 0.1)]))
    back = yolo_to_coco(data, tmp_path / "coco2")
    assert back.ok and back.n_annotations == 3


def test_bad_yaml_is_a_clear_error(tmp_path):
    (tmp_path / "d.yaml").write_text("train: images\n")
    with pytest.raises(DataError, match=r"d\.yaml: no 'names'"):
        yolo_to_coco(tmp_path / "d.yaml", tmp_path / "o")
