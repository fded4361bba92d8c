"""End to end through the command lines: synthetic CBIS-DDSM → COCO → train → evaluate → predict,
and a training run killed mid-way that resumes from its last checkpoint."""

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_MODEL_OPTS

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]

TINY_3CLASS = [
    v if v != "2" or TINY_MODEL_OPTS[i - 1] != "MODEL.ROI_HEADS.NUM_CLASSES" else "3"
    for i, v in enumerate(TINY_MODEL_OPTS)
]


def _run(*args, timeout=600, check=True):
    proc = subprocess.run([PY, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[:3]} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    _run(
        "convert_dataset.py",
        "synth",
        "--out",
        root / "raw",
        "--patients",
        "10",
        "--seed",
        "3",
        "--height",
        "192",
        "--width",
        "128",
    )
    raw = root / "raw"
    _run(
        "convert_dataset.py",
        "cbis-ddsm",
        "--mass-csv",
        *sorted(raw.glob("mass_case_description_*.csv")),
        "--calc-csv",
        *sorted(raw.glob("calc_case_description_*.csv")),
        "--dicom-root",
        raw / "CBIS-DDSM",
        "--out",
        root / "coco",
        "--seed",
        "3",
        "--no-progress",
    )
    return root


def _train_opts(coco, out, iters, period):
    return TINY_3CLASS + [
        "DATASETS.TRAIN",
        f"('{coco / 'train.json'}',)",
        "DATASETS.VAL",
        f"('{coco / 'val.json'}',)",
        "DATASETS.TEST",
        f"('{coco / 'test.json'}',)",
        "INPUT.MIN_SIZE_TRAIN",
        "(128,)",
        "INPUT.MAX_SIZE_TRAIN",
        "192",
        "INPUT.MIN_SIZE_TEST",
        "128",
        "INPUT.MAX_SIZE_TEST",
        "192",
        "SOLVER.MAX_ITER",
        str(iters),
        "SOLVER.CHECKPOINT_PERIOD",
        str(period),
        "OUTPUT_DIR",
        str(out),
    ]


def test_whole_chain_through_the_clis(coco_dir):
    coco = coco_dir / "coco"
    for split in ("train", "val", "test"):
        assert json.loads((coco / f"{split}.json").read_text())["images"], split
    run = coco_dir / "run"
    _run(
        "detectron.py",
        "-c",
        "train",
        "--config-file",
        REPO / "configs/Base-RCNN-FPN.yaml",
        *_train_opts(coco, run, 12, 6),
        "TEST.EVAL_PERIOD",
        "6",
    )
    lines = [json.loads(l) for l in (run / "metrics.json").read_text().splitlines()]
    assert any("bbox/AP50" in l for l in lines), "validation metrics reach metrics.json"
    assert any("val/total_loss" in l for l in lines)
    assert (run / "model_final.pth").is_file() and (run / "model_best.pth").is_file()

    ev = _run("detectron.py", "-c", "evaluate", "--config-file", run / "config.yaml")
    assert "mass_high" in ev.stdout and "mAP50" in ev.stdout  # the per-class table is printed
    for name in (
        "metrics.json",
        "per_class.csv",
        "prf1.csv",
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "coco_instances_results.json",
        "report.md",
    ):
        assert (run / "eval" / name).is_file(), name

    dicom = next((coco_dir / "raw" / "CBIS-DDSM").rglob("000000.dcm"))
    png = next((coco / "images").glob("*.png"))
    out = coco_dir / "pred"
    pr = _run(
        "detectron.py",
        "-c",
        "predict",
        "--config-file",
        run / "config.yaml",
        "--input",
        dicom,
        png,
        "--output",
        out,
        "--score-thresh",
        "0.0",
    )
    results = json.loads((out / "predictions.json").read_text())
    images = json.loads((out / "images.json").read_text())["images"]
    assert len(images) == 2 and len(list(out.glob("*.png"))) == 2
    assert all({"image_id", "category_id", "bbox", "score", "category_name"} <= set(r) for r in results)
    assert "2 image(s) predicted" in pr.stdout


def test_killed_training_resumes_from_last_checkpoint(coco_dir, tmp_path):
    coco = coco_dir / "coco"
    run = tmp_path / "run"
    cmd = [
        PY,
        "detectron.py",
        "-c",
        "train",
        "--config-file",
        str(REPO / "configs/Base-RCNN-FPN.yaml"),
        *_train_opts(coco, run, 400, 4),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def pointed() -> int:
        """The iteration count of the checkpoint last_checkpoint names (0 before the first)."""
        with contextlib.suppress(FileNotFoundError, IndexError, ValueError):
            return int((run / "last_checkpoint").read_text().strip().split("_")[1].split(".")[0])
        return 0

    try:
        # Wait for the pointer, not for a checkpoint file: the file appears before the pointer names it,
        # and a fast machine could be killed in between.
        deadline = time.time() + 300
        while pointed() < 7:
            assert proc.poll() is None, "training ended early"
            assert time.time() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Resuming continues after a checkpoint the run wrote (the one last_checkpoint names, or a newer one
    # written just before the kill), never from zero; MAX_ITER past the newest so both end at the same place.
    written = sorted(int(p.stem.split("_")[1]) for p in run.glob("model_[0-9]*.pth"))
    assert written and written[-1] >= pointed() >= 7
    newest = written[-1]
    res = _run(
        "detectron.py",
        "-c",
        "train",
        "--config-file",
        REPO / "configs/Base-RCNN-FPN.yaml",
        *_train_opts(coco, run, newest + 5, 4),
        "--resume",
    )
    started = int(re.search(r"Resuming from \S+ at iteration (\d+)", res.stderr).group(1))
    assert started - 1 in written and started - 1 >= 7  # continued, not restarted from zero
    its = [json.loads(l)["iteration"] for l in (run / "metrics.json").read_text().splitlines()]
    assert its == sorted(set(its)) and its[-1] == newest + 4
    # and without --resume the run folder is protected
    again = _run(
        "detectron.py",
        "-c",
        "train",
        "--config-file",
        REPO / "configs/Base-RCNN-FPN.yaml",
        *_train_opts(coco, run, newest + 5, 4),
        check=False,
    )
    assert again.returncode == 2 and "--resume" in again.stderr
