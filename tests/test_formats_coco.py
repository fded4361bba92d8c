"""COCO merge and subset: classes matched by name, ids renumbered, image paths still resolving."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from meddet.data.coco import (
    categories_by_id,
    category_id_to_index,
    category_ids,
    class_names,
    load_coco,
    resolve_image_path,
)
from meddet.data.formats import filter_coco, merge_coco
from meddet.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def dataset(root: Path, names: list[str], n: int, view: str) -> Path:
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"{i}.png"), np.full((20, 30), i, np.uint8))
        images.append(
            {
                "id": 10 + i,
                "file_name": f"images/{i}.png",
                "height": 20,
                "width": 30,
                "view": view,
                "patient_id": f"{root.name}{i}",
            }
        )
        for k in range(len(names)):
            anns.append(
                {
                    "id": 100 + len(anns),
                    "image_id": 10 + i,
                    "category_id": 7 + k,
                    "bbox": [1, 2, 3, 4],
                    "area": 12,
                    "iscrowd": 0,
                }
            )
    coco = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 7 + k, "name": m} for k, m in enumerate(names)],
    }
    (root / "all.json").write_text(json.dumps(coco))
    return root / "all.json"


def test_merge_matches_classes_by_name_and_keeps_paths_resolving(tmp_path):
    a = dataset(tmp_path / "a", ["mass", "calcification"], 2, "CC")
    b = dataset(tmp_path / "b", ["calcification", "distortion"], 3, "MLO")
    out = tmp_path / "merged" / "m.json"
    merged = merge_coco([a, b], out)
    assert load_coco(out) == merged
    assert [c["name"] for c in merged["categories"]] == ["mass", "calcification", "distortion"]
    assert [im["id"] for im in merged["images"]] == [1, 2, 3, 4, 5]
    cat = {c["id"]: c["name"] for c in merged["categories"]}
    per_image = {}
    for ann in merged["annotations"]:
        per_image.setdefault(ann["image_id"], set()).add(cat[ann["category_id"]])
    assert per_image[1] == {"mass", "calcification"} and per_image[5] == {"calcification", "distortion"}
    for im in merged["images"]:
        assert resolve_image_path(im["file_name"], out).is_file()
    with pytest.raises(DataError, match="already listed"):
        merge_coco([a, a], tmp_path / "twice.json")


def test_subset_by_class_attribute_and_sample(tmp_path):
    coco = merge_coco(
        [
            dataset(tmp_path / "a", ["mass", "calcification"], 4, "CC"),
            dataset(tmp_path / "b", ["calcification"], 4, "MLO"),
        ],
        tmp_path / "m.json",
    )
    cc_calc = filter_coco(coco, categories=["calcification"], where={"view": ["CC"]})
    assert len(cc_calc["images"]) == 4 and {im["view"] for im in cc_calc["images"]} == {"CC"}
    assert cc_calc["categories"] == [{"id": 1, "name": "calcification"}]
    assert len(cc_calc["annotations"]) == 4 and {a["category_id"] for a in cc_calc["annotations"]} == {1}
    sample = filter_coco(coco, max_images=3, seed=1)
    assert len(sample["images"]) == 3 and sample == filter_coco(coco, max_images=3, seed=1)
    assert {a["image_id"] for a in sample["annotations"]} <= {im["id"] for im in sample["images"]}
    with pytest.raises(ConfigError, match="unknown class"):
        filter_coco(coco, categories=["birads"])
    with pytest.raises(ConfigError, match="no image has a field 'density'"):
        filter_coco(coco, where={"density": ["2"]})


def test_cli_subset_writes_a_file_whose_images_resolve(tmp_path):
    src = dataset(tmp_path / "a", ["mass"], 3, "CC")
    out = tmp_path / "elsewhere" / "sub.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "convert_dataset.py"),
            "subset",
            str(src),
            "--out",
            str(out),
            "--where",
            "patient_id=a0,a2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    sub = load_coco(out)
    assert [im["patient_id"] for im in sub["images"]] == ["a0", "a2"]
    assert all(resolve_image_path(im["file_name"], out).is_file() for im in sub["images"])


def test_class_order_is_category_id_order_whatever_the_file_order():
    coco = {"categories": [{"id": 9, "name": "zeta"}, {"id": 2, "name": "alpha"}, {"id": 5, "name": "mid"}]}
    assert [c["name"] for c in categories_by_id(coco)] == ["alpha", "mid", "zeta"]
    assert class_names(coco) == ["alpha", "mid", "zeta"]
    assert category_ids(coco) == [2, 5, 9]
    assert category_id_to_index(coco) == {2: 0, 5: 1, 9: 2}
    assert [c["id"] for c in coco["categories"]] == [9, 2, 5]  # the input is left as it was
