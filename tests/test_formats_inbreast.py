"""INbreast: INbreast.csv, AllDICOMs/ and AllXML/ (OsiriX plists) in the release's real layout -> COCO."""

from __future__ import annotations

import plistlib

import numpy as np
import pytest

from meddet.data.coco import load_coco
from meddet.data.formats import convert_inbreast, read_inbreast_csv, read_inbreast_rois
from meddet.synth import encode_dicom, save_dicom

H, W = 200, 160
# file name, patient hash, laterality, view, ACR (blank = padded spaces), BI-RADS, ROIs
CASES = [
    ("22678622", "6c613a14b80a8591", "R", "CC", "4", "1", None),  # normal: no XML
    ("22678646", "6c613a14b80a8591", "L", "CC", "4", "4a", [("Mass", [(40.5, 50.25), (80.0, 45.0), (70.0, 90.7)])]),
    (
        "22614074",
        "0a6d4a1a7b2c3d4e",
        "L",
        "MLO",
        "     ",
        "2",
        [("Calcification", [(100.0, 120.0)]), ("Cluster", [(20.0, 30.0), (35.0, 30.0), (30.0, 44.0)])],
    ),
    ("22614097", "0a6d4a1a7b2c3d4e", "R", "MLO", "2", "3", [("Assymetry", [(10.0, 10.0), (50.0, 60.0)])]),
    ("22614127", "9f8e7d6c5b4a3921", "R", "CC", "1", "2", [("Lesion of unknown kind", [(5.0, 5.0)])]),
    ("22614150", "9f8e7d6c5b4a3921", "L", "CC", "1", "5", None),  # BI-RADS 5 but no XML
]


def _roi(name, points):
    return {
        "Area": 0.0,
        "Center": "(0.000000, 0.000000, 0.000000)",
        "Dev": 0.0,
        "IndexInImage": 0,
        "Max": 0.0,
        "Mean": 0.0,
        "Min": 0.0,
        "Name": name,
        "NumberOfPoints": len(points),
        "Point_mm": [f"({x * 0.07:.6f}, {y * 0.07:.6f}, 0.000000)" for x, y in points],
        "Point_px": [f"({x:.6f}, {y:.6f})" for x, y in points],
        "Total": 0.0,
        "Type": 15 if len(points) > 1 else 19,
    }


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "INbreast Release 1.0"
    (root / "AllDICOMs").mkdir(parents=True)
    (root / "AllXML").mkdir()
    lines = ["Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"]
    for name, patient, side, view, acr, birads, rois in CASES:
        lines.append(f"removed;removed;{side};{view};201001;{name};{acr};{birads}")
        ds = encode_dicom(
            np.random.default_rng(int(name) % 97).random((H, W)) * 0.8,
            bits_stored=14,
            attributes={"ImagerPixelSpacing": [0.07, 0.07], "Laterality": side},
        )
        save_dicom(ds, root / "AllDICOMs" / f"{name}_{patient}_MG_{side}_{view}_ANON.dcm")
        if rois is not None:
            doc = {"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": [_roi(n, p) for n, p in rois]}]}
            with open(root / "AllXML" / f"{name}.xml", "wb") as f:
                plistlib.dump(doc, f, fmt=plistlib.FMT_XML)
    (root / "INbreast.csv").write_text("\n".join(lines) + "\n")
    return root


def test_inbreast_csv_and_xml_are_read_as_released(release):
    meta = read_inbreast_csv(release / "INbreast.csv")
    assert meta["22614074"]["acr"] is None and meta["22678646"]["birads"] == "4a"
    assert meta["22678646"]["laterality"] == "LEFT" and meta["22614097"]["view"] == "MLO"
    rois = read_inbreast_rois(release / "AllXML" / "22614074.xml")
    assert rois == [("Calcification", [(100.0, 120.0)]), ("Cluster", [(20.0, 30.0), (35.0, 30.0), (30.0, 44.0)])]


def test_inbreast_converts_rois_to_boxes(release, tmp_path):
    report = convert_inbreast(release, tmp_path / "out", point_size=10, progress=False)
    assert [s.item for s in report.skipped] == ["image 22614127"]
    assert "unknown ROI name(s) ['Lesion of unknown kind']" in report.skipped[0].reason
    assert [s.item for s in report.excluded] == ["image 22614097"]  # asymmetry: no class in the type scheme
    assert any("22614150" in w and "BI-RADS 5" in w for w in report.warnings)
    coco = load_coco(tmp_path / "out" / "all.json")
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["source"].split("_")[0]: im for im in coco["images"]}
    assert set(images) == {"22678622", "22678646", "22614074", "22614150"}
    assert images["22614074"]["patient_id"] == "0a6d4a1a7b2c3d4e" and "removed" not in str(coco)
    assert images["22614074"]["breast_density"] is None and images["22678646"]["birads"] == "4a"
    assert images["22678646"]["pixel_spacing"] == [0.07, 0.07]
    boxes = {}
    for a in coco["annotations"]:
        boxes.setdefault(a["image_id"], []).append((cats[a["category_id"]], a["bbox"], a["roi_name"]))
    assert boxes[images["22678646"]["id"]] == [("mass", [40, 45, 40, 46], "Mass")]  # floor/ceil of the contour
    assert sorted(boxes[images["22614074"]["id"]]) == [
        ("calcification", [20, 30, 15, 14], "Cluster"),
        ("calcification", [95, 115, 10, 10], "Calcification"),  # a point: point_size box around it
    ]
    assert images["22678622"]["id"] not in boxes  # normal: kept, no boxes


def test_inbreast_abnormality_scheme_keeps_asymmetries(release, tmp_path):
    report = convert_inbreast(
        release, tmp_path / "a", scheme="abnormality", roi_kinds={"Lesion of unknown kind": "mass"}, progress=False
    )
    assert report.ok and not report.excluded
    assert report.categories == ["calcification", "mass", "distortion", "asymmetry"]
