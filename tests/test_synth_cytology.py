"""Synthetic cytology (meddet.synth.cytology): COCO layout, box counts and tightness, patient
splits, determinism, colour variation, speed at the default size, argument checks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from meddet.data.check import check_dataset
from meddet.data.coco import load_coco, resolve_image_path
from meddet.errors import ConfigError
from meddet.synth import make_cytology, render_cytology

CELLS = 150


@pytest.fixture(scope="module")
def cyto(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cyto")
    return make_cytology(root, n_images=6, size=512, cells_per_image=CELLS, cluster_ratio=0.02, seed=5)


def _images(coco_path: Path) -> list[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]:
    """(image record, RGB pixels, [x0, y0, x1, y1] boxes, category ids) per image of a COCO file."""
    coco = load_coco(coco_path)
    out = []
    for im in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        xywh = np.array([a["bbox"] for a in anns], np.int64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        bgr = cv2.imread(str(resolve_image_path(im["file_name"], coco_path)), cv2.IMREAD_UNCHANGED)
        out.append((im, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), boxes, np.array([a["category_id"] for a in anns])))
    return out


def test_writes_rgb_pngs_and_coco_per_split(cyto):
    assert set(cyto) == {"train", "val", "test", "all"}
    assert all(p.parent.name == "coco" for p in cyto.values())
    coco = load_coco(cyto["all"])
    assert coco["categories"] == [{"id": 1, "name": "cell"}, {"id": 2, "name": "cluster"}]
    assert len(coco["images"]) == 6
    for im, rgb, _boxes, _ in _images(cyto["all"]):
        assert rgb.dtype == np.uint8 and rgb.shape == (512, 512, 3)
        assert (im["height"], im["width"]) == (512, 512) and im["patient_id"]
        assert resolve_image_path(im["file_name"], cyto["all"]).parent.name == "images"
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] and a["iscrowd"] == 0 for a in coco["annotations"])


def test_dataset_passes_the_dataset_checker(cyto):
    report = check_dataset([cyto["train"], cyto["val"], cyto["test"]], progress=False)
    assert not report.errors, report.table()


def test_render_cytology_matches_the_first_written_image(cyto):
    image, boxes, classes = render_cytology(512, cells=CELLS, clusters=3, seed=5)
    (_, rgb, written_boxes, written_classes), *_ = _images(cyto["all"])
    assert np.array_equal(image, rgb)
    assert np.array_equal(boxes, written_boxes) and np.array_equal(classes, written_classes)


def test_cluster_count_follows_cluster_ratio(cyto, tmp_path):
    for _, _, _, classes in _images(cyto["all"]):
        assert (classes == 1).sum() == CELLS
        assert (classes == 2).sum() == round(CELLS * 0.02)
    rare = make_cytology(tmp_path / "rare", n_images=2, size=256, cells_per_image=40, cluster_ratio=0.001, splits=None)
    assert set(rare) == {"all"}
    assert [int((c == 2).sum()) for *_, c in _images(rare["all"])] == [1, 1]  # at least one per image
    none = make_cytology(tmp_path / "none", n_images=1, size=256, cells_per_image=40, cluster_ratio=0.0, splits=None)
    assert [sorted(set(c.tolist())) for *_, c in _images(none["all"])] == [[1]]


def test_boxes_are_inside_and_sized_like_cells_and_clusters(cyto):
    for _, rgb, boxes, classes in _images(cyto["all"]):
        h, w = rgb.shape[:2]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        sides = boxes[:, 2:] - boxes[:, :2]
        cell, cluster = sides[classes == 1], sides[classes == 2]
        assert cell.min() >= 5 and cell.max() <= 22
        assert 30 <= cluster.max(axis=1).min() and cluster.max() <= 100
        # Single cells touch at most: no two cell boxes share more than a 3-px strip.
        b = boxes[classes == 1]
        ix = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
        iy = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
        overlap = (ix > 0) & (iy > 0) & ~np.eye(len(b), dtype=bool)
        assert (np.minimum(ix, iy)[overlap] <= 3).all()


def test_boxes_are_tight_to_the_drawn_cells(cyto):
    """For boxes with no other box within 8 px: the box's outer 2-px band holds stain on every side,
    the band 3-5 px outside is background, and the extent of clearly stained pixels matches the box
    within 1 px."""
    n_checked, n_sides_exact = 0, 0
    for _, rgb, boxes, _ in _images(cyto["all"]):
        f = rgb.astype(np.float32).sum(axis=2)
        h, w = f.shape
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            o, m = np.delete(boxes, i, axis=0), 8
            if ((o[:, 0] < x1 + m) & (o[:, 2] > x0 - m) & (o[:, 1] < y1 + m) & (o[:, 3] > y0 - m)).any():
                continue
            if min(x0, y0, w - x1, h - y1) < m:
                continue
            ring = np.concatenate(
                [
                    f[y0 - 7 : y0 - 4, x0 - 7 : x1 + 7].ravel(),
                    f[y1 + 4 : y1 + 7, x0 - 7 : x1 + 7].ravel(),
                    f[y0:y1, x0 - 7 : x0 - 4].ravel(),
                    f[y0:y1, x1 + 4 : x1 + 7].ravel(),
                ]
            )
            stain = np.median(ring) - f  # darker than the local background: positive
            inner = [
                stain[y0 : y0 + 2, x0:x1],
                stain[y1 - 2 : y1, x0:x1],
                stain[y0:y1, x0 : x0 + 2],
                stain[y0:y1, x1 - 2 : x1],
            ]
            outer = [
                stain[y0 - 5 : y0 - 2, x0:x1],
                stain[y1 + 2 : y1 + 5, x0:x1],
                stain[y0:y1, x0 - 5 : x0 - 2],
                stain[y0:y1, x1 + 2 : x1 + 5],
            ]
            assert min(band.max() for band in inner) > 15, (x0, y0, x1, y1)
            assert max(np.abs(band).mean() for band in outer) < 12, (x0, y0, x1, y1)
            ys, xs = np.nonzero(stain[y0 - 4 : y1 + 4, x0 - 4 : x1 + 4] > 30)
            seen = (xs.min() - 4, ys.min() - 4, xs.max() + 1 - 4 - (x1 - x0), ys.max() + 1 - 4 - (y1 - y0))
            n_sides_exact += sum(abs(d) <= 1 for d in seen)
            n_checked += 1
    assert n_checked > 300
    assert n_sides_exact >= 0.98 * 4 * n_checked


def test_patient_level_splits_are_disjoint_and_cover_all(cyto):
    patients = {name: {im["patient_id"] for im in load_coco(cyto[name])["images"]} for name in ("train", "val", "test")}
    everyone = {im["patient_id"] for im in load_coco(cyto["all"])["images"]}
    assert len(everyone) == 3  # n_patients defaults to n_images // 2
    assert all(patients.values())
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    assert set().union(*patients.values()) == everyone
    n_split_images = sum(len(load_coco(cyto[n])["images"]) for n in ("train", "val", "test"))
    assert n_split_images == 6
    test = load_coco(cyto["test"])
    ids = {im["id"] for im in test["images"]}
    assert test["annotations"] and all(a["image_id"] in ids for a in test["annotations"])
    assert test["info"]["split"]["name"] == "test"


def test_custom_splits_and_patient_count(tmp_path):
    paths = make_cytology(
        tmp_path, n_images=4, size=256, cells_per_image=10, n_patients=4, splits={"fit": 0.5, "holdout": 0.5}, seed=1
    )
    assert set(paths) == {"fit", "holdout", "all"}
    fit = {im["patient_id"] for im in load_coco(paths["fit"])["images"]}
    holdout = {im["patient_id"] for im in load_coco(paths["holdout"])["images"]}
    assert len(fit) == len(holdout) == 2 and not fit & holdout


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    kw = dict(n_images=3, size=(192, 256), cells_per_image=30, seed=11)
    a, b = make_cytology(tmp_path / "a", **kw), make_cytology(tmp_path / "b", **kw)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 3 + 4
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    c = make_cytology(tmp_path / "c", **{**kw, "seed": 12})
    assert (tmp_path / "a/images/cyto_0000.png").read_bytes() != (tmp_path / "c/images/cyto_0000.png").read_bytes()
    assert json.loads(a["all"].read_text())["annotations"] != json.loads(c["all"].read_text())["annotations"]
    assert load_coco(b["all"])["images"][0]["height"] == 192 and load_coco(b["all"])["images"][0]["width"] == 256


def test_stain_colour_varies_between_images(cyto):
    records = _images(cyto["all"])
    means = np.array([rgb.reshape(-1, 3).mean(axis=0) for _, rgb, _, _ in records])
    pairwise = np.abs(means[:, None] - means[None]).max(axis=2)
    # Every two images of different patients differ by at least 2 grey levels in some channel's mean.
    pid = [im["patient_id"] for im, *_ in records]
    assert all(pairwise[i, j] > 2 for i in range(6) for j in range(6) if pid[i] != pid[j])
    for _, rgb, boxes, classes in records:
        bg = np.median(rgb.reshape(-1, 3), axis=0)
        assert bg.min() > 150  # light background
        x0, y0, x1, y1 = boxes[classes == 2][0]
        nucleus = rgb[y0:y1, x0:x1].reshape(-1, 3)[rgb[y0:y1, x0:x1].reshape(-1, 3).sum(1).argmin()]
        assert nucleus.sum() < bg.sum() - 150  # dark nuclei
        assert nucleus[2] >= nucleus[1]  # blue-purple, not green or brown


def test_default_size_renders_fast(tmp_path):
    t0 = time.perf_counter()
    paths = make_cytology(tmp_path, n_images=1, splits=None)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0, f"one default 4096² image with 2000 cells took {elapsed:.1f} s (render + PNG)"
    ((im, rgb, boxes, classes),) = _images(paths["all"])
    assert rgb.shape == (4096, 4096, 3) and (im["height"], im["width"]) == (4096, 4096)
    assert (classes == 1).sum() == 2000 and (classes == 2).sum() == 20


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"n_images": 0}, "n_images"),
        ({"n_images": 2.5}, "n_images"),
        ({"size": 64}, "size"),
        ({"size": (512, 512, 3)}, "size"),
        ({"cells_per_image": -1}, "cells_per_image"),
        ({"cells_per_image": 5000}, "cells_per_image"),
        ({"cluster_ratio": -0.1}, "cluster_ratio"),
        ({"cluster_ratio": "0.01"}, "cluster_ratio"),
        ({"cluster_ratio": 1.0, "cells_per_image": 300}, "cluster_ratio"),
        ({"n_patients": 0}, "n_patients"),
        ({"n_patients": 7}, "n_patients"),
        ({"splits": {"train": 0.5, "test": 0.3}}, "splits"),
        ({"splits": {"all": 1.0}}, "splits"),
        ({"splits": {"a/b": 1.0}}, "splits"),
        ({"splits": {}}, "splits"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(tmp_path, kwargs, argument):
    args = {"n_images": 6, "size": 512, "cells_per_image": 150, **kwargs}
    with pytest.raises(ConfigError, match=argument):
        make_cytology(tmp_path, **args)
    assert not (tmp_path / "images").exists()  # checked before anything is written
