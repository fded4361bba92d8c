"""Models trained on tiles through the task layer: hierarchical evaluation (tile level and whole image
side by side), sliced prediction, ensembles in predict/evaluate, and the CLI on top."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import REPO, TINY_MODEL_OPTS, make_tiny_coco

# tile datasets written, models trained on tiles, evaluated through the CLI (~15 s): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

TILED_OPTS = TINY_MODEL_OPTS + [
    "TILING.ENABLED",
    "True",
    "TILING.SIZE",
    "128",
    "TILING.OVERLAP",
    "0.25",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "SOLVER.MAX_ITER",
    "3",
    "SOLVER.CHECKPOINT_PERIOD",
    "100",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "TEST.SCORE_THRESH",
    "0.0",
    "EVAL.BOOTSTRAP_SAMPLES",
    "20",
    "EVAL.GALLERY_SIZE",
    "0",
]


@pytest.fixture(scope="module")
def cyto(tmp_path_factory):
    from meddet.synth import make_cytology

    root = tmp_path_factory.mktemp("cyto")
    return make_cytology(
        root,
        n_images=4,
        size=300,
        cells_per_image=40,
        cluster_ratio=0.05,
        n_patients=2,
        splits={"train": 0.5, "test": 0.5},
        seed=1,
    )


@pytest.fixture(scope="module")
def tiled_run(cyto, tmp_path_factory):
    from meddet.config import load_config
    from meddet.training import train

    out = tmp_path_factory.mktemp("tiled_run")
    cfg = load_config(
        REPO / "configs" / "Base-RCNN-FPN.yaml",
        TILED_OPTS
        + [
            "DATASETS.TRAIN",
            f"('{cyto['train']}',)",
            "DATASETS.TEST",
            f"('{cyto['test']}',)",
            "DATASETS.VAL",
            f"('{cyto['test']}',)",
            "TEST.EVAL_PERIOD",
            "3",
            "INPUT.FORMAT",
            "RGB",
            "OUTPUT_DIR",
            str(out / "run"),
        ],
    )
    return train(cfg)


def test_training_on_tiles_validates_on_tiles(tiled_run):
    lines = [json.loads(line) for line in (tiled_run / "metrics.json").read_text().splitlines()]
    val = [line for line in lines if "bbox/AP50" in line]
    assert val and "val/total_loss" in val[-1]


def test_evaluation_of_a_tiled_model_reports_both_levels(tiled_run, cyto):
    from meddet.apps.evaluate import evaluate_model
    from meddet.config import load_config

    cfg = load_config(tiled_run / "config.yaml")
    metrics = evaluate_model(cfg)
    ev = tiled_run / "eval"
    # Whole-image metrics at the top level, tile-level ones prefixed and in their own folder.
    assert "bbox/AP50" in metrics and "tiles/bbox/AP50" in metrics and "tiles/prf1/recall-cluster" in metrics
    assert (ev / "report.md").is_file() and (ev / "tiles" / "report.md").is_file()
    assert "Tile-level evaluation" in (ev / "report.md").read_text()
    table = pd.read_csv(ev / "hierarchical.csv")
    assert list(table.columns) == ["metric", "tile", "whole_image"]
    assert {"bbox/AP50", "prf1/recall-cluster", "prf1/recall-cell"} <= set(table.metric)
    # The tile split really is the test images cut into tiles: more tiles than images, same classes,
    # and every tile's ground truth lies inside the tile.
    tiles = json.loads((ev / "tiles" / "data").glob("*.json").__next__().read_text())
    gt = json.loads(open(cyto["test"]).read())
    assert len(tiles["images"]) > len(gt["images"])
    assert [c["name"] for c in tiles["categories"]] == [c["name"] for c in gt["categories"]]
    size = {im["id"]: (im["width"], im["height"]) for im in tiles["images"]}
    for a in tiles["annotations"]:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= size[a["image_id"]][0] + 1e-6 and y + h <= size[a["image_id"]][1] + 1e-6
    # Whole-image predictions are in image coordinates of the 300x300 test images, some beyond one tile.
    preds = json.loads((ev / "coco_instances_results.json").read_text())
    assert preds and max(p["bbox"][0] + p["bbox"][2] for p in preds) > 128


def test_predict_slices_and_ensembles_by_class_name(tiled_run, tmp_path):
    from meddet.apps.predict import predict
    from meddet.config import load_config
    from meddet.training import train

    # A second model with other classes (squares and discs) as ensemble member.
    coco = make_tiny_coco(tmp_path / "other")
    other = load_config(
        REPO / "configs" / "Base-RCNN-FPN.yaml",
        TINY_MODEL_OPTS
        + [
            "DATASETS.TRAIN",
            f"('{coco}',)",
            "OUTPUT_DIR",
            str(tmp_path / "other_run"),
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
        ],
    )
    other_run = train(other)
    cfg = load_config(tiled_run / "config.yaml")
    images = json.loads(open(cfg.DATASETS.TEST[0]).read())["images"]
    from pathlib import Path

    src = Path(cfg.DATASETS.TEST[0]).parent / images[0]["file_name"]
    report = predict(cfg, [src], tmp_path / "pred", score_thresh=0.0, ensemble=[str(other_run / "config.yaml")])
    meta = json.loads((tmp_path / "pred" / "images.json").read_text())
    assert [c["name"] for c in meta["categories"]] == ["cell", "cluster", "square", "disc"]
    preds = json.loads(report.results_json.read_text())
    assert preds and {p["category_name"] for p in preds} <= {"cell", "cluster", "square", "disc"}


def test_cli_evaluate_prints_both_levels(tiled_run, capsys):
    import detectron

    rc = detectron.main(
        detectron.parse_args(
            ["-c", "evaluate", "--config-file", str(tiled_run / "config.yaml"), "--output", str(tiled_run / "eval_cli")]
        )
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "Tile level vs whole image" in out and "whole_image" in out
