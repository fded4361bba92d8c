"""detectron.py turns bad input into one clear line and a non-zero exit (no traceback)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# each test starts detectron.py in a subprocess (importing torch each time): `make test-fast` leaves them out
pytestmark = pytest.mark.slow


def run_cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, str(REPO / "detectron.py"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_error_line(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_config_key(tiny_coco):
    proc = run_cli("-c", "train", "--config-file", REPO / "configs/Base-RCNN-FPN.yaml", "SOLVER.NOT_A_KEY", "1")
    _one_error_line(proc, "SOLVER.NOT_A_KEY")


def test_missing_config_file(tmp_path):
    proc = run_cli("-c", "train", "--config-file", tmp_path / "nope.yaml")
    _one_error_line(proc, "nope.yaml", "not found")


def test_missing_training_data(tmp_path):
    proc = run_cli(
        "-c",
        "train",
        "--config-file",
        REPO / "configs/Base-RCNN-FPN.yaml",
        "DATASETS.TRAIN",
        f"('{tmp_path / 'missing.json'}',)",
        "OUTPUT_DIR",
        tmp_path / "run",
    )
    _one_error_line(proc, "missing.json")


def test_evaluate_rejects_malformed_predictions(tiny_coco, tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1]}]))
    proc = run_cli("-c", "evaluate", "--gt", tiny_coco, "--predictions", bad, "--output", tmp_path / "ev")
    _one_error_line(proc, "results.json", "category_id")


def test_predict_missing_input(tmp_path):
    proc = run_cli("-c", "predict", "--input", tmp_path / "ghost.dcm", "MODEL.WEIGHTS", tmp_path / "w.pth")
    _one_error_line(proc, "ghost.dcm")
