"""Tiling: windows, clipped boxes, tile records/COCO and their way back, tile filtering, the mapper on tiles."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from meddet.config import load_config
from meddet.data.coco import coco_to_records, load_coco
from meddet.data.dataset import DatasetMapper, build_test_loader, build_train_loader
from meddet.data.tiling import (
    TilingParams,
    clip_boxes_to_window,
    tile_coco,
    tile_records,
    tile_windows,
    tiles_to_image,
    write_tile_dataset,
)
from meddet.errors import ConfigError

NAMES = ["square", "disc"]


def _scene(root: Path, h=150, w=230, seed=0, dtype=np.uint8, n_images=2, n_objects=7) -> Path:
    """Images with non-touching bright squares (class 1) on dark noise, a COCO file of them; returns its path."""
    rng = np.random.default_rng(seed)
    top = 220 if dtype == np.uint8 else 60000
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        img = rng.integers(0, top // 6, (h, w)).astype(dtype)
        taken = np.zeros((h, w), bool)
        placed = 0
        while placed < n_objects:
            s = int(rng.integers(8, 17))  # at most the 16 px overlap of 64 px tiles: each fits in a tile
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            if taken[max(0, y - 2) : y + s + 2, max(0, x - 2) : x + s + 2].any():
                continue
            taken[y : y + s, x : x + s] = True
            img[y : y + s, x : x + s] = top
            cat = 2 if placed == 0 else 1  # one "disc"-class box per image (rare)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": [x, y, s, s],
                    "area": s * s,
                    "iscrowd": 0,
                }
            )
            placed += 1
        name = f"images/img_{i}.png"
        cv2.imwrite(str(root / name), img)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w, "patient_id": f"P{i}"})
    path = root / "scene.json"
    path.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}],
            }
        )
    )
    return path


@pytest.mark.parametrize(
    "h, w, size, overlap", [(150, 230, 64, 0.2), (100, 100, 100, 0.5), (37, 500, 64, 0.0), (513, 300, 128, 0.25)]
)
def test_windows_cover_the_image_without_padding(h, w, size, overlap):
    win = tile_windows(h, w, size, overlap)
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in win:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 == min(size, w) and y1 - y0 == min(size, h)
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_clipping_keeps_boxes_mostly_inside_the_window():
    window = (100, 50, 200, 150)
    boxes = np.array(
        [
            [170, 60, 220, 100],  # 30 of 50 px wide inside: 60% -> kept, clipped
            [180, 60, 230, 100],  # 20 of 50 inside: 40% -> dropped
            [120, 70, 140, 90],  # wholly inside
            [130, 70, 130, 90],  # degenerate
            [0, 0, 20, 20],  # outside
        ],
        np.float32,
    )
    clipped, keep = clip_boxes_to_window(boxes, window, 0.5)
    assert keep.tolist() == [True, False, True, False, False]
    np.testing.assert_allclose(clipped[0], [70, 10, 100, 50])
    np.testing.assert_allclose(clipped[2], [20, 20, 40, 40])
    assert clip_boxes_to_window(boxes, window, 0.0)[1].tolist() == [True, True, True, False, False]
    assert clip_boxes_to_window(boxes[:0], window, 0.5)[0].shape == (0, 4)


def test_tile_records_round_trip_to_the_parent_boxes(tmp_path):
    records = coco_to_records(load_coco(_scene(tmp_path)), tmp_path / "scene.json")
    params = TilingParams(size=64, overlap=0.25, min_visible=0.5)
    tiles = tile_records(records, params, NAMES)
    assert len({t["image_id"] for t in tiles}) == len(tiles)
    assert len(tiles) == sum(len(tile_windows(r["height"], r["width"], 64, 0.25)) for r in records)
    for r in records:
        mine = [t for t in tiles if t["tile"]["parent_id"] == r["image_id"]]
        for a in r["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            holding = [
                t
                for t in mine
                if t["tile"]["x0"] <= x0
                and x1 <= t["tile"]["x0"] + t["width"]
                and t["tile"]["y0"] <= y0
                and y1 <= t["tile"]["y0"] + t["height"]
            ]
            assert holding, "every box fits in some tile when the overlap exceeds the box size"
            for t in holding:  # offsets give back the parent's box, exactly, with its class
                back = [
                    (
                        [
                            b["bbox"][0] + t["tile"]["x0"],
                            b["bbox"][1] + t["tile"]["y0"],
                            b["bbox"][2] + t["tile"]["x0"],
                            b["bbox"][3] + t["tile"]["y0"],
                        ],
                        b["category"],
                    )
                    for b in t["annotations"]
                ]
                assert ([x0, y0, x1, y1], a["category"]) in back
        for t in mine:
            assert t["file_name"] == r["file_name"] == t["tile"]["parent_file_name"]
            assert t["parent_annotations"] == r["annotations"]
            for b in t["annotations"]:
                bx0, by0, bx1, by1 = b["bbox"]
                assert 0 <= bx0 < bx1 <= t["width"] and 0 <= by0 < by1 <= t["height"]


def test_fractional_boxes_come_back_exactly():
    rec = {
        "file_name": "x.png",
        "image_id": 9,
        "height": 100,
        "width": 100,
        "annotations": [{"bbox": [10.3, 20.7, 30.1, 40.9], "category": 0}],
    }
    tiles = tile_records([rec], TilingParams(size=64, overlap=0.5), NAMES)
    for t in tiles:
        for a in t["annotations"]:
            x0, y0 = t["tile"]["x0"], t["tile"]["y0"]
            if a["bbox"][0] > 0 and a["bbox"][1] > 0:
                assert [a["bbox"][0] + x0, a["bbox"][1] + y0, a["bbox"][2] + x0, a["bbox"][3] + y0] == pytest.approx(
                    [10.3, 20.7, 30.1, 40.9], abs=1e-9
                )


def _tiles_with(tiles, cls):
    return [t for t in tiles if any(a["category"] == cls for a in t["annotations"])]


def test_keep_classes_keeps_only_tiles_with_those_classes(tmp_path):
    records = coco_to_records(load_coco(_scene(tmp_path)), tmp_path / "scene.json")
    every = tile_records(records, TilingParams(size=64, overlap=0.2), NAMES)
    kept = tile_records(records, TilingParams(size=64, overlap=0.2, keep_classes=("disc",)), NAMES)
    assert kept and [t["image_id"] for t in kept] == [t["image_id"] for t in _tiles_with(every, 1)]
    cfg = load_config(None, ["TILING.KEEP_CLASSES", "['disc', 'calcification']"])
    with pytest.raises(ConfigError, match=r"TILING.KEEP_CLASSES.*calcification"):
        TilingParams.from_cfg(cfg, NAMES)
    with pytest.raises(ConfigError, match="TILING.NEGATIVE_FRACTION"):
        TilingParams.from_cfg(load_config(None, ["TILING.NEGATIVE_FRACTION", "1.5"]), NAMES)


def test_negative_fraction_undersamples_tiles_without_minority_boxes(tmp_path):
    records = coco_to_records(
        load_coco(_scene(tmp_path, h=600, w=700, n_images=3, n_objects=4)), tmp_path / "scene.json"
    )
    every = tile_records(records, TilingParams(size=48, overlap=0.0), NAMES)
    minority = {t["image_id"] for t in _tiles_with(every, 1)}
    n_neg = len(every) - len(minority)
    assert n_neg > 300
    params = TilingParams(size=48, overlap=0.0, minority_classes=("disc",), negative_fraction=0.3, seed=4)
    kept = tile_records(records, params, NAMES)
    ids = [t["image_id"] for t in kept]
    assert minority <= set(ids)  # every tile with a minority box stays
    assert len(ids) - len(minority) == pytest.approx(0.3 * n_neg, abs=1)
    assert ids == [t["image_id"] for t in tile_records(records, params, NAMES)]  # seeded
    other = tile_records(records, TilingParams(**{**params.__dict__, "seed": 5}), NAMES)
    assert {t["image_id"] for t in other} != set(ids)
    # empty MINORITY_CLASSES: only tiles without any box are undersampled
    no_box = tile_records(records, TilingParams(size=48, overlap=0.0, negative_fraction=0.0), NAMES)
    assert all(t["annotations"] for t in no_box) and len(no_box) == sum(bool(t["annotations"]) for t in every)


def test_write_tile_dataset_round_trip_16_bit(tmp_path):
    src = _scene(tmp_path / "data", dtype=np.uint16)
    params = TilingParams(size=64, overlap=0.25)
    out = write_tile_dataset(src, tmp_path / "tiles", params)
    tiled = load_coco(out)
    parent = {
        im["id"]: cv2.imread(str(src.parent / im["file_name"]), cv2.IMREAD_UNCHANGED) for im in load_coco(src)["images"]
    }
    for im in tiled["images"]:
        pixels = cv2.imread(str(out.parent / im["file_name"]), cv2.IMREAD_UNCHANGED)
        x0, y0 = im["offset"]
        assert pixels.dtype == np.uint16
        np.testing.assert_array_equal(pixels, parent[im["parent_id"]][y0 : y0 + im["height"], x0 : x0 + im["width"]])
        assert Path(im["parent_file_name"]).is_file() and im["patient_id"] == f"P{im['parent_id'] - 1}"
    # same ids as the tile records of the same COCO, and deterministic
    records = coco_to_records(load_coco(src), src)
    assert [im["id"] for im in tiled["images"]] == [t["image_id"] for t in tile_records(records, params, NAMES)]
    assert tile_coco(load_coco(src), params)["annotations"] == tiled["annotations"]
    # results on tiles map back to the parents: the boxes of wholly-inside objects come back exactly
    results = [{**a, "score": 0.9} for a in tiled["annotations"]]
    back = tiles_to_image(results, tiled["images"])
    parents = {a["id"]: a for a in load_coco(src)["annotations"]}
    whole = [b for b, a in zip(back, tiled["annotations"]) if a["area"] == parents[a["parent_annotation_id"]]["area"]]
    assert {(b["image_id"], tuple(b["bbox"])) for b in whole} == {
        (a["image_id"], tuple(a["bbox"])) for a in parents.values()
    }
    cut = [b for b, a in zip(back, tiled["annotations"]) if a["area"] < parents[a["parent_annotation_id"]]["area"]]
    assert cut  # boxes cut by a tile edge map back inside their parent box
    for b, a in zip(back, tiled["annotations"]):
        px, py, pw, ph = parents[a["parent_annotation_id"]]["bbox"]
        x, y, w, h = b["bbox"]
        assert b["image_id"] == parents[a["parent_annotation_id"]]["image_id"]
        assert px <= x and py <= y and x + w <= px + pw and y + h <= py + ph
    with pytest.raises(ConfigError, match="already"):
        write_tile_dataset(src, tmp_path / "tiles", params)


def _cfg(stage, extra=()):
    return load_config(
        None,
        [
            "TILING.ENABLED",
            "True",
            "TILING.SIZE",
            "64",
            "TILING.OVERLAP",
            "0.25",
            "TILING.AUG_STAGE",
            stage,
            "INPUT.MIN_SIZE_TRAIN",
            "(64,)",
            "INPUT.MAX_SIZE_TRAIN",
            "64",
            "INPUT.MIN_SIZE_TEST",
            "64",
            "INPUT.MAX_SIZE_TEST",
            "64",
            "AUG.FLIP_PROB",
            "1.0",
            "INPUT.RANDOM_FLIP",
            "both",
            "SEED",
            "3",
            "DATALOADER.NUM_WORKERS",
            "0",
            *extra,
        ],
    )


def _assert_boxes_on_objects(out):
    bright = out["image"][0].numpy() > 128  # the squares are 220, the background below 40
    boxes = out["boxes"].numpy()
    for x0, y0, x1, y1 in np.rint(boxes).astype(int):
        assert x1 > x0 and y1 > y0
        assert bright[y0:y1, x0:x1].all(), "a box lies on background"


@pytest.mark.parametrize(
    "stage, extra",
    [
        ("after", ()),
        ("before", ()),
        ("before", ("AUG.ROT90_PROB", "1.0")),  # the parent turns 230x150 -> 150x230: windows move inside it
    ],
)
def test_mapper_on_tile_records_puts_boxes_on_the_objects(tmp_path, stage, extra):
    src = _scene(tmp_path)
    cfg = _cfg(stage, extra)
    records = coco_to_records(load_coco(src), src)
    tiles = tile_records(records, TilingParams.from_cfg(cfg, NAMES), NAMES)
    mapper = DatasetMapper(cfg, is_train=True)
    reads = []
    read = mapper._read
    mapper._read = lambda *a, **k: reads.append(a[0]) or read(*a, **k)
    n_boxes = 0
    for seed, t in enumerate(tiles):
        out = mapper(t, seed=seed)
        assert out["image"].shape == (3, 64, 64) and (out["height"], out["width"]) == (64, 64)
        assert out["image_id"] == t["image_id"]
        _assert_boxes_on_objects(out)
        n_boxes += len(out["boxes"])
        if stage == "after":  # the tile's own boxes, flipped with it
            assert len(out["boxes"]) == len(t["annotations"])
    assert n_boxes > 0
    assert len(reads) == len(records)  # parents are decoded once each through the cache


def test_loaders_over_tiles(tmp_path):
    src = _scene(tmp_path)
    cfg = _cfg(
        "after",
        (
            "DATASETS.TRAIN",
            f"('{src}',)",
            "SOLVER.IMS_PER_BATCH",
            "4",
            "DATALOADER.SAMPLER_TRAIN",
            "RepeatFactorTrainingSampler",
            "DATALOADER.REPEAT_THRESHOLD",
            "0.5",
        ),
    )
    loader, names = build_train_loader(cfg)
    batch = next(iter(loader))
    assert names == NAMES and len(batch) == 4
    for out in batch:
        assert (out["height"], out["width"]) == (64, 64) and len(out["boxes"])  # empty tiles filtered
        _assert_boxes_on_objects(out)
    test_loader, tiles, _ = build_test_loader(cfg, str(src), tiles=True)
    tiled = tile_coco(load_coco(src), TilingParams(64, 0.25))
    assert [t["image_id"] for t in tiles] == [im["id"] for im in tiled["images"]]
    outs = [o for b in test_loader for o in b]
    assert [o["image_id"] for o in outs] == [t["image_id"] for t in tiles]
    assert len(build_test_loader(cfg, str(src))[1]) == 2  # whole images by default
