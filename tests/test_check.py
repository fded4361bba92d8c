"""Dataset checks: every problem kind is found and named, warnings do not fail, the CLI exits 1 on
errors, and the JSON/Markdown reports are written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from meddet.data.check import check_dataset

REPO = Path(__file__).resolve().parents[1]


def write_split(root: Path, name: str, images: list[tuple[str, str, int]], boxes: dict[str, list]) -> Path:
    """images: (file stem, patient id, pixel value); boxes: stem -> [bbox, ...] (category 1)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "mass"}, {"id": 2, "name": "calc"}]}
    for i, (stem, patient, value) in enumerate(images, 1):
        path = root / "images" / f"{stem}.png"
        if value >= 0:
            cv2.imwrite(str(path), np.full((40, 50), value, np.uint8))
        coco["images"].append(
            {
                "id": i,
                "file_name": f"images/{stem}.png",
                "height": 40,
                "width": 50,
                "patient_id": patient,
                "pixel_spacing": [0.1, 0.1],
            }
        )
        for box in boxes.get(stem, []):
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": box,
                    "area": 1,
                    "iscrowd": 0,
                }
            )
    path = root / f"{name}.json"
    path.write_text(json.dumps(coco))
    return path


def clean(root: Path) -> list[Path]:
    train = write_split(
        root, "train", [("a", "P1", 10), ("b", "P2", 20)], {"a": [[5, 5, 10, 20]], "b": [[0, 0, 50, 40]]}
    )
    test = write_split(root, "test", [("c", "P3", 30)], {"c": [[10, 10, 4, 4]]})
    return [train, test]


def test_a_clean_dataset_has_no_errors_and_the_right_counts(tmp_path):
    report = check_dataset(clean(tmp_path), progress=False)
    assert not report.errors and not report.warnings
    assert report.counts["train"] == {"images": 2, "boxes": 2, "empty_images": 0, "per_class": {"mass": 2}}
    assert report.counts["test"]["boxes"] == 1 and report.classes == ["mass", "calc"]
    sizes = report.box_sizes["mass"]
    assert sizes["n"] == 3 and sizes["px"]["min"] == 4.0 and sizes["px"]["max"] == np.sqrt(50 * 40)
    assert abs(sizes["mm"]["min"] - 0.4) < 1e-9  # 4 px at 0.1 mm
    assert "no problems found" in report.table()


def test_every_problem_is_found_and_named(tmp_path):
    train = write_split(
        tmp_path,
        "train",
        [("a", "P1", 10), ("gone", "P2", 20), ("empty", "P3", 40)],
        {"a": [[45, 5, 10, 10], [5, 5, 0, 3]]},
    )
    val = write_split(
        tmp_path, "val", [("copy", "P1", 10), ("twin1", "P4", 77), ("twin2", "P4", 77)], {"copy": [[1, 1, 2, 2]]}
    )
    (tmp_path / "images" / "gone.png").unlink()
    cv2.imwrite(str(tmp_path / "images" / "twin2.png"), np.full((40, 50), 77, np.uint8))
    cv2.imwrite(str(tmp_path / "images" / "empty.png"), np.full((41, 50), 40, np.uint8))  # not the recorded size
    report = check_dataset([train, val], workers=2, progress=False)
    errors = {f.check: f for f in report.errors}
    assert set(errors) == {
        "box out of bounds",
        "degenerate box",
        "missing image",
        "size mismatch",
        "duplicate across splits",
        "patient in several splits",
    }
    assert (
        "images/a.png" in errors["box out of bounds"].examples[0]
        and "[45, 5, 10, 10]" in errors["box out of bounds"].examples[0]
    )
    assert "gone.png" in errors["missing image"].examples[0]
    assert errors["duplicate across splits"].examples == ["train:images/a.png, val:images/copy.png"]
    assert errors["patient in several splits"].examples == ["patient P1: train, val"]
    warnings = {f.check: f for f in report.warnings}
    assert set(warnings) == {"no boxes", "duplicate within split"}
    assert warnings["no boxes"].count == 4


def test_cli_exits_1_on_errors_0_on_warnings_and_writes_reports(tmp_path):
    files = clean(tmp_path / "ok")
    write_split(tmp_path / "ok", "val", [("d", "P9", 99)], {})  # an image without boxes: a warning
    files.append(tmp_path / "ok" / "val.json")

    def cli(*paths, report_dir):
        return subprocess.run(
            [
                sys.executable,
                str(REPO / "convert_dataset.py"),
                "check",
                *map(str, paths),
                "--report-dir",
                str(report_dir),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )

    ok = cli(*files, report_dir=tmp_path / "r1")
    assert ok.returncode == 0, ok.stderr
    assert "WARNING [no boxes]" in ok.stdout and "images without boxes" in ok.stdout
    js = json.loads((tmp_path / "r1" / "check_report.json").read_text())
    assert js["errors"] == [] and js["counts"]["val"]["empty_images"] == 1
    assert "# Dataset check" in (tmp_path / "r1" / "check_report.md").read_text()
    (tmp_path / "ok" / "images" / "c.png").unlink()
    bad = cli(*files, report_dir=tmp_path / "r2")
    assert bad.returncode == 1 and "ERROR [missing image]" in bad.stdout
    assert json.loads((tmp_path / "r2" / "check_report.json").read_text())["errors"][0]["check"] == "missing image"
