"""CBIS-DDSM (TCIA tree and JPEG re-release) and box-CSV conversion to COCO, splits, class
presets, geometry options, and the convert_dataset.py CLI on a tree with every real-world quirk."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from meddet.data.coco import load_coco
from meddet.data.convert import ConversionReport
from meddet.data.formats import ClassMapping, convert_box_csv, convert_cbis_ddsm
from meddet.data.formats.cbis_ddsm import (
    Abnormality,
    _official_assignment,
    find_roi_mask,
    mask_boxes,
    pick_roi_mask,
    read_cbis_csv,
    resolve_dicom_path,
)
from meddet.data.splits import split_by_patient
from meddet.errors import ConfigError, DataError
from meddet.io import PixelOptions, read_dicom
from meddet.synth import encode_dicom, make_box_csv_dataset, make_cbis_ddsm, make_cbis_ddsm_jpeg, save_dicom

REPO = Path(__file__).resolve().parents[1]
SIZE = (256, 160)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("cbis")
    synth = make_cbis_ddsm(base / "raw", n_patients=6, seed=1, image_size=SIZE)
    report = convert_cbis_ddsm(
        synth["mass_csvs"],
        synth["calc_csvs"],
        synth["dicom_root"],
        base / "coco",
        split=(0.6, 0.2, 0.2),
        seed=7,
        progress=False,
    )
    return synth, report, base / "coco"


# ------------------------------------------------------------------------------ masks -> boxes
def test_boxes_are_the_extents_of_each_mask_region():
    mask = np.zeros((40, 50), bool)
    mask[5:9, 10:20] = True  # x 10..19, y 5..8
    mask[30, 3] = True  # a single pixel
    mask[20:35, 30:33] = True
    mask[34, 33:45] = True  # touches the previous one: same region (L shape)
    boxes = sorted(mask_boxes(mask))
    assert boxes == [[3, 30, 1, 1], [10, 5, 10, 4], [30, 20, 15, 15]]
    mask2 = np.zeros((10, 10), bool)
    mask2[2, 2] = mask2[3, 3] = True  # diagonal neighbours: one region (8-connectivity)
    assert mask_boxes(mask2) == [[2, 2, 2, 2]]


def _abnormality_folder(root: Path, names: tuple[str, str], mask: np.ndarray) -> Abnormality:
    """Write an abnormality folder with a crop under names[0] and the mask under names[1]."""
    series = root / "Mass-Training_P_00007_LEFT_CC_1" / "1.2.3" / "1.2.3.4"
    crop = np.random.default_rng(0).random((12, 9))
    save_dicom(encode_dicom(crop, bits_stored=16), series / names[0])
    save_dicom(encode_dicom(mask.astype(float), bits_stored=8), series / names[1])
    rel = "Mass-Training_P_00007_LEFT_CC_1/1.2.3/1.2.3.4"
    return Abnormality(
        "test.csv row 1",
        "P_00007",
        "LEFT",
        "CC",
        1,
        "mass",
        4,
        "MALIGNANT",
        3,
        2,
        "Mass-Training_P_00007_LEFT_CC/1/2/000000.dcm",
        f"{rel}/000000.dcm",
        f"{rel}/000001.dcm",
    )


@pytest.mark.parametrize("names", [("1-2.dcm", "1-1.dcm"), ("1-1.dcm", "1-2.dcm"), ("000001.dcm", "000000.dcm")])
def test_roi_mask_is_told_from_the_crop_by_content(tmp_path, names):
    mask = np.zeros((40, 30), bool)
    mask[10:20, 5:9] = True
    mask[30:33, 20:25] = True
    abn = _abnormality_folder(tmp_path, names, mask)
    found = find_roi_mask(abn, tmp_path, (40, 30))
    np.testing.assert_array_equal(found, mask)
    assert sorted(mask_boxes(found)) == [[5, 10, 4, 10], [20, 30, 5, 3]]
    with pytest.raises(
        DataError,
        match=r"test\.csv row 1 \(Mass-Training_P_00007_LEFT_CC_1\): no ROI mask.*binary image of 50x30.*is 40x30",
    ):
        find_roi_mask(abn, tmp_path, (50, 30))


def test_roi_mask_a_few_percent_off_the_mammogram_size_is_rescaled_with_a_warning(tmp_path):
    mask = np.zeros((40, 30), bool)
    mask[8:20, 4:10] = True
    abn = _abnormality_folder(tmp_path, ("1-1.dcm", "1-2.dcm"), mask)
    files = [(str(p), "") for p in sorted(tmp_path.rglob("*.dcm"))]
    found, warning = pick_roi_mask(files, (42, 30), "row 1 (case X_1)")
    assert found.shape == (42, 30) and len(mask_boxes(found)) == 1
    np.testing.assert_allclose(mask_boxes(found)[0], [4, 8 * 1.05, 6, 12 * 1.05], atol=1)  # scaled by 42/40
    assert "row 1 (case X_1)" in warning and "40x30" in warning and "42x30" in warning and "rescaled" in warning
    assert find_roi_mask(abn, tmp_path, (41, 30)).shape == (41, 30)


def test_csv_paths_resolve_in_renamed_download_layouts(tmp_path):
    """Newer TCIA downloads rename study/series folders and files (1-1.dcm); the CSV keeps the old path."""
    series = (
        tmp_path / "Mass-Training_P_00001_LEFT_CC" / "07-20-2016-DDSM-74994" / "1.000000-full mammogram images-24515"
    )
    save_dicom(encode_dicom(np.zeros((8, 8))), series / "1-1.dcm")
    rel = "Mass-Training_P_00001_LEFT_CC/1.3.6.1.4.1.9590/1.3.6.1.4.1.9590.100/000000.dcm"
    assert resolve_dicom_path(tmp_path, rel) == series / "1-1.dcm"
    save_dicom(encode_dicom(np.zeros((8, 8))), series / "1-2.dcm")
    with pytest.raises(DataError, match=r"000000\.dcm: not found, and .*LEFT_CC holds 2 \.dcm files"):
        resolve_dicom_path(tmp_path, rel)
    with pytest.raises(DataError, match=r"P_00002_LEFT_CC/x/y/000000\.dcm: not found, nor its folder"):
        resolve_dicom_path(tmp_path, "Mass-Training_P_00002_LEFT_CC/x/y/000000.dcm")


# ------------------------------------------------------------------------------ CBIS-DDSM
def _truth_boxes(synth) -> dict[str, set]:
    """Boxes per image key computed independently (pydicom + scipy) from the ROI mask files."""
    truth = defaultdict(set)
    root = synth["dicom_root"]
    for path in synth["mass_csvs"] + synth["calc_csvs"]:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                key = f"{r['patient_id']}_{r['left or right breast']}_{r['image view']}"
                for dcm in (root / Path(r["ROI mask file path"]).parts[0]).rglob("*.dcm"):
                    arr = pydicom.dcmread(dcm).pixel_array
                    if arr.shape == SIZE and set(np.unique(arr)) == {0, 255}:
                        labels, _ = ndimage.label(arr > 0, structure=np.ones((3, 3)))
                        for sl in ndimage.find_objects(labels):
                            truth[key].add(
                                (sl[1].start, sl[0].start, sl[1].stop - sl[1].start, sl[0].stop - sl[0].start)
                            )
    return truth


def test_cbis_conversion_boxes_match_the_masks(converted):
    synth, report, out = converted
    assert report.ok, report.summary()
    coco = load_coco(out / "all.json")
    assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == [
        "calcification",
        "mass_low",
        "mass_high",
    ]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    # one COCO image per mammogram, even when referenced from both CSVs
    assert len(coco["images"]) == synth["n_images"]
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    got = defaultdict(set)
    for a in coco["annotations"]:
        got[Path(names[a["image_id"]]).stem].add(tuple(a["bbox"]))
    assert got == _truth_boxes(synth)
    multi = [a for a in synth["abnormalities"] if a["regions"] > 1]
    assert multi and all(len(got[a["image"]]) >= 2 for a in multi)


def test_cbis_conversion_classes_and_image_records(converted):
    synth, _, out = converted
    coco = load_coco(out / "all.json")
    cat = {c["id"]: c["name"] for c in coco["categories"]}
    expected = defaultdict(set)
    for a in synth["abnormalities"]:
        expected[a["image"]].add(a["kind"])
    got = defaultdict(set)
    for a in coco["annotations"]:
        got[a["image_id"]].add(cat[a["category_id"]])
        assert a["area"] == a["bbox"][2] * a["bbox"][3] and a["iscrowd"] == 0
        assert (cat[a["category_id"]] == "mass_high") == (a["abnormality_type"] == "mass" and a["assessment"] >= 4)
    sources = set()
    for im in coco["images"]:
        key = Path(im["file_name"]).stem
        assert im["file_name"] == f"images/{key}.png"
        assert got[im["id"]] == expected[key]
        assert key == f"{im['patient_id']}_{im['laterality']}_{im['view']}"
        png = cv2.imread(str(out / im["file_name"]), cv2.IMREAD_UNCHANGED)
        assert png.shape == (im["height"], im["width"]) == SIZE and png.dtype == np.uint8
        src = synth["dicom_root"] / im["source"]
        np.testing.assert_array_equal(png, read_dicom(src))
        sources.add(src.name)
        assert im["official_split"] in ("train", "test")
        rows = [a for a in synth["abnormalities"] if a["image"] == key]
        assert im["assessment"] == max(a["assessment"] for a in rows)
        assert im["breast_density"] in (1, 2, 3, 4) and im["pathology"] in (
            "MALIGNANT",
            "BENIGN",
            "BENIGN_WITHOUT_CALLBACK",
        )
        assert set(im["abnormality_types"]) == {
            "mass" if a["kind"] != "calcification" else "calcification" for a in rows
        }
    # the CSVs always say 000000.dcm; the folders sometimes hold 1-1.dcm
    assert sources == {"000000.dcm", "1-1.dcm"}


def test_cbis_conversion_splits_by_patient(converted):
    _, report, out = converted
    coco = load_coco(out / "all.json")
    patients = {}
    ids = []
    for name in ("train", "val", "test"):
        part = load_coco(out / f"{name}.json")
        assert part["categories"] == coco["categories"]
        assert part["images"], f"{name} is empty"
        ids += [im["id"] for im in part["images"]]
        keep = {im["id"] for im in part["images"]}
        assert all(a["image_id"] in keep for a in part["annotations"])
        for im in part["images"]:
            assert patients.setdefault(im["patient_id"], name) == name, "a patient in two splits"
    assert sorted(ids) == sorted(im["id"] for im in coco["images"])
    assert report.splits == {n: len(load_coco(out / f"{n}.json")["images"]) for n in ("train", "val", "test")}


def test_class_mapping_options():
    def abn(kind: str, assessment: int, pathology: str = "BENIGN") -> Abnormality:
        return Abnormality("x row 1", "P_1", "LEFT", "CC", 1, kind, assessment, pathology, None, None, "a", "b", "c")

    default = ClassMapping()
    assert [default(abn("mass", a)) for a in (0, 3, 4, 5)] == ["mass_low", "mass_low", "mass_high", "mass_high"]
    assert default(abn("calcification", 5)) == "calcification"
    assert ClassMapping(mass_high_min_assessment=5)(abn("mass", 4)) == "mass_low"
    assert ClassMapping("type").categories == ("calcification", "mass")
    assert ClassMapping("type")(abn("mass", 5)) == "mass"
    path = ClassMapping("pathology")
    assert path.categories == ("benign", "malignant")
    assert (
        path(abn("mass", 2, "BENIGN_WITHOUT_CALLBACK")) == "benign"
        and path(abn("calcification", 2, "MALIGNANT")) == "malignant"
    )
    separate = ClassMapping("pathology", benign_without_callback="separate")
    assert separate.categories == ("benign", "benign_without_callback", "malignant")
    assert separate(abn("mass", 2, "BENIGN_WITHOUT_CALLBACK")) == "benign_without_callback"
    assert separate(abn("mass", 2, "BENIGN")) == "benign"
    with pytest.raises(ConfigError, match="class scheme"):
        ClassMapping("birads")
    with pytest.raises(ConfigError, match="benign_without_callback"):
        ClassMapping("pathology", benign_without_callback="malignant")


def test_bad_csv_row_skips_its_image_only(converted, tmp_path):
    synth, _, _ = converted
    mass_csv = tmp_path / "mass.csv"
    lines = Path(synth["mass_csvs"][0]).read_text().splitlines()
    bad = lines[1].split(",")
    bad[8] = "probably"  # assessment
    mass_csv.write_text("\n".join([lines[0], ",".join(bad), *lines[2:]]) + "\n")
    rows, errors = read_cbis_csv(mass_csv)
    assert len(rows) == len(lines) - 2 and len(errors) == 1
    report = convert_cbis_ddsm(mass_csv, [], synth["dicom_root"], tmp_path / "out", progress=False)
    key = f"{bad[0]}_{bad[2]}_{bad[3]}"
    assert [s.item for s in report.skipped] == [f"image {key}"]
    assert "row 1" in report.skipped[0].reason and "'assessment' is 'probably'" in report.skipped[0].reason
    assert key not in {Path(im["file_name"]).stem for im in load_coco(tmp_path / "out" / "all.json")["images"]}
    assert report.n_images > 0


def test_16_bit_conversion(converted, tmp_path):
    synth, _, _ = converted
    report = convert_cbis_ddsm(
        [],
        synth["calc_csvs"][:1],
        synth["dicom_root"],
        tmp_path / "o16",
        pixels=PixelOptions(bit_depth=16),
        progress=False,
    )
    im = load_coco(report.files["all"])["images"][0]
    png = cv2.imread(str(tmp_path / "o16" / im["file_name"]), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and png.max() > 255
    assert load_coco(report.files["all"])["info"]["preprocessing"]["bit_depth"] == 16


# ------------------------------------------------------------------------------ splits
def _images(n_patients: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    images = []
    for p in range(n_patients):
        for _ in range(int(rng.integers(1, 6))):
            images.append({"id": len(images) + 1, "patient_id": f"P{p}", "file_name": f"{len(images)}.png"})
    return images


def test_split_is_by_patient_deterministic_and_close_to_fractions():
    images = _images(200)
    a = split_by_patient(images, (0.7, 0.15, 0.15), seed=3)
    assert a == split_by_patient(images, (0.7, 0.15, 0.15), seed=3)
    assert a != split_by_patient(images, (0.7, 0.15, 0.15), seed=4)
    pid = {im["id"]: im["patient_id"] for im in images}
    owners = defaultdict(set)
    for name, ids in a.items():
        for i in ids:
            owners[pid[i]].add(name)
    assert all(len(v) == 1 for v in owners.values())
    assert sorted(i for ids in a.values() for i in ids) == [im["id"] for im in images]
    for name, frac in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
        assert abs(len(a[name]) / len(images) - frac) < 0.02
    # few patients: every split asked for still gets one
    small = split_by_patient(_images(3), (0.7, 0.15, 0.15), seed=0)
    assert all(small.values())
    with pytest.raises(ConfigError, match="summing to 1"):
        split_by_patient(images, (0.7, 0.2, 0.2))


def test_split_is_independent_of_input_order():
    images = _images(50)
    a = split_by_patient(images, seed=1)
    b = split_by_patient(list(reversed(images)), seed=1)
    assert {k: sorted(v) for k, v in a.items()} == {k: sorted(v) for k, v in b.items()}


# ------------------------------------------------------------------------------ box CSV
def test_box_csv_round_trip(tmp_path):
    data = make_box_csv_dataset(tmp_path / "src", n_images=7, seed=2, image_size=(96, 80))
    report = convert_box_csv(data["csv"], data["images_dir"], tmp_path / "out", split=(0.5, 0.25, 0.25), progress=False)
    assert report.ok, report.summary()
    coco = load_coco(tmp_path / "out" / "all.json")
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    assert list(cats.values()) == sorted(cats.values())
    by_image = defaultdict(list)
    for a in coco["annotations"]:
        by_image[a["image_id"]].append((*a["bbox"], cats[a["category_id"]]))
    assert len(coco["images"]) == 7
    for im in coco["images"]:
        assert sorted(by_image[im["id"]]) == sorted(data["boxes"][im["source"]])
        src = cv2.imread(str(data["images_dir"] / im["source"]), cv2.IMREAD_UNCHANGED)
        out = cv2.imread(str(tmp_path / "out" / im["file_name"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(out, src)  # 8- and 16-bit pixels unchanged
        assert im["patient_id"].startswith("case")
    assert any(not data["boxes"][im["source"]] for im in coco["images"]), "the image without objects is kept"
    owners = defaultdict(set)
    for name in ("train", "val", "test"):
        for im in load_coco(tmp_path / "out" / f"{name}.json")["images"]:
            owners[im["patient_id"]].add(name)
    assert all(len(v) == 1 for v in owners.values())


def test_box_csv_bad_row_skips_that_image(tmp_path):
    data = make_box_csv_dataset(tmp_path / "src", n_images=4, seed=0, image_size=(64, 64))
    with open(data["csv"], "a", newline="") as f:
        csv.writer(f).writerow(["img_000.png", "60", "60", "10", "10", "round", "case00"])  # outside 64x64
        csv.writer(f).writerow(["missing.png", "1", "1", "2", "2", "round", "case01"])
    report = convert_box_csv(data["csv"], data["images_dir"], tmp_path / "out", progress=False)
    assert {s.item for s in report.skipped} == {"image img_000.png", "image missing.png"}
    reasons = " ".join(s.reason for s in report.skipped)
    assert "lies outside the 64x64 image" in reasons and "missing.png: image file not found" in reasons
    assert report.n_images == 3
    with pytest.raises(DataError, match=r"classes\.csv: missing column\(s\) \['height'\]"):
        (tmp_path / "classes.csv").write_text("image,x,y,width,class\n")
        convert_box_csv(tmp_path / "classes.csv", data["images_dir"], tmp_path / "o2")


# ------------------------------------------------------------------------------ CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "convert_dataset.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_cli_bad_whole_input_is_one_clear_line(tmp_path):
    missing = _cli("cbis-ddsm", "--mass-csv", tmp_path / "nope.csv", "--dicom-root", tmp_path, "--out", tmp_path / "o")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.csv'}: CSV file not found"]
    bad = tmp_path / "mass.csv"
    bad.write_text("patient_id,left or right breast,image view\nP_1,LEFT,CC\n")
    no_col = _cli("cbis-ddsm", "--mass-csv", bad, "--dicom-root", tmp_path, "--out", tmp_path / "o")
    assert no_col.returncode == 2
    lines = no_col.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "missing column(s)" in lines[0] and "'assessment'" in lines[0]
    assert "Traceback" not in missing.stderr + no_col.stderr


def _keys(coco: dict) -> set[str]:
    return {Path(im["file_name"]).stem for im in coco["images"]}


def test_cli_converts_a_tree_with_every_quirk(tmp_path):
    """Both CSV headers, crop/mask names swapped, multi-region masks, multi-abnormality images,
    a mask of the wrong size, a corrupt DICOM and a CSV row whose file is missing, with 2 workers:
    every good image converted, each bad one named, exit code 1."""
    clean = make_cbis_ddsm(tmp_path / "clean", n_patients=6, seed=5, image_size=SIZE)
    raw = make_cbis_ddsm(tmp_path / "raw", n_patients=6, seed=5, image_size=SIZE, quirks=True)
    q = raw["quirks"]
    assert Path(raw["calc_csvs"][0]).read_text().startswith("patient_id,breast density,")
    assert Path(raw["mass_csvs"][0]).read_text().startswith("patient_id,breast_density,")
    out = tmp_path / "coco"
    conv = _cli(
        "cbis-ddsm",
        "--mass-csv",
        *raw["mass_csvs"],
        "--calc-csv",
        *raw["calc_csvs"],
        "--dicom-root",
        raw["dicom_root"],
        "--out",
        out,
        "--workers",
        "2",
        "--no-progress",
    )
    assert conv.returncode == 1, conv.stderr
    assert "Traceback" not in conv.stderr
    errors = (out / "errors.txt").read_text().splitlines()
    assert len(errors) == 2
    assert any(line.startswith(f"image {q['corrupt']}: ") and "cannot decode the pixel data" in line for line in errors)
    assert any(line.startswith(f"image {q['missing']}: ") and "no .dcm file" in line for line in errors)
    assert "2 item(s) skipped" in conv.stdout and q["corrupt"] in conv.stdout and q["missing"] in conv.stdout
    warned = [line for line in conv.stderr.splitlines() if "rescaled" in line]
    assert len(warned) == 1 and q["mismatched_case"] in warned[0]
    coco = load_coco(out / "all.json")
    all_keys = {a["image"] for a in raw["abnormalities"]}
    assert _keys(coco) == all_keys - {q["corrupt"], q["missing"]}
    names = {im["id"]: Path(im["file_name"]).stem for im in coco["images"]}
    got = defaultdict(set)
    for a in coco["annotations"]:
        got[names[a["image_id"]]].add(tuple(a["bbox"]))
    truth = _truth_boxes(clean)
    for key in _keys(coco) - {q["mismatched_mask"]}:
        assert got[key] == truth[key], key
    rescaled, want = sorted(got[q["mismatched_mask"]]), sorted(truth[q["mismatched_mask"]])
    assert len(rescaled) == len(want)
    assert all(np.abs(np.subtract(a, b)).max() <= 2 for a, b in zip(rescaled, want))
    per_image = defaultdict(int)
    for a in raw["abnormalities"]:
        per_image[a["image"]] += 1
    assert any(n > 1 for k, n in per_image.items() if k in _keys(coco)), "a multi-abnormality image"
    assert any(a["regions"] > 1 and a["image"] in _keys(coco) for a in raw["abnormalities"]), "a multi-region mask"
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["key"] for e in manifest) == sorted(_keys(coco))


def test_official_split_is_the_default_with_validation_carved_from_train(converted, tmp_path):
    synth, _, _ = converted
    report = convert_cbis_ddsm(
        synth["mass_csvs"], synth["calc_csvs"], synth["dicom_root"], tmp_path / "o", progress=False
    )
    test_patients = {a["image"].rsplit("_", 2)[0] for a in synth["abnormalities"] if "_test_" in a["csv"]}
    parts = {n: load_coco(tmp_path / "o" / f"{n}.json") for n in ("train", "val", "test")}
    assert {im["patient_id"] for im in parts["test"]["images"]} == test_patients
    assert parts["val"]["images"] and parts["train"]["images"]
    owners = defaultdict(set)
    for name, part in parts.items():
        for im in part["images"]:
            owners[im["patient_id"]].add(name)
            assert (im["official_split"] == "test") == (name == "test")
    assert all(len(v) == 1 for v in owners.values())
    assert parts["test"]["info"]["split"]["method"] == "official" and report.splits["test"] > 0


def test_official_split_keeps_a_patient_with_train_and_test_images_in_test():
    images = [
        {"id": 1, "patient_id": "P_1", "official_split": "train", "source": "a"},
        {"id": 2, "patient_id": "P_1", "official_split": "test", "source": "b"},
        *({"id": i, "patient_id": f"P_{i}", "official_split": "train", "source": "c"} for i in range(3, 13)),
    ]
    report = ConversionReport(out_dir=Path("."))
    parts = _official_assignment(images, 0.2, 0, report)
    assert sorted(parts["test"]) == [1, 2]
    assert sorted(parts["train"] + parts["val"]) == list(range(3, 13)) and parts["val"]
    assert len(report.warnings) == 1 and "P_1" in report.warnings[0]
    with pytest.raises(ConfigError, match="--resplit"):
        _official_assignment([{"id": 1, "patient_id": "P", "official_split": "unknown", "source": "x"}], 0.2, 0, report)


def test_jpeg_re_release_converts_like_the_dicom_tree(tmp_path):
    jpeg = make_cbis_ddsm_jpeg(tmp_path / "rel", n_patients=4, seed=2, image_size=SIZE)
    tcia = make_cbis_ddsm(tmp_path / "tcia", n_patients=4, seed=2, image_size=SIZE)
    report = _cli(
        "cbis-ddsm",
        "--dicom-info",
        jpeg["dicom_info"],
        "--dicom-root",
        jpeg["root"],
        "--out",
        tmp_path / "o",
        "--no-progress",
    )
    assert report.returncode == 0, report.stderr
    coco = load_coco(tmp_path / "o" / "all.json")
    assert _keys(coco) == {a["image"] for a in jpeg["abnormalities"]}
    names = {im["id"]: Path(im["file_name"]).stem for im in coco["images"]}
    got = defaultdict(list)
    for a in coco["annotations"]:
        got[names[a["image_id"]]].append(a["bbox"])
    truth = _truth_boxes(tcia)
    for key, boxes in got.items():  # JPEG masks are lossy: edges may move a pixel
        assert len(boxes) == len(truth[key]), key
        for a, b in zip(sorted(boxes), sorted(truth[key])):
            assert np.abs(np.subtract(a, b)).max() <= 1, key
    assert all(im["source"].startswith("jpeg/") for im in coco["images"])


def test_flip_left_and_crop_breast_move_boxes_with_the_pixels(converted, tmp_path):
    synth, _, plain_out = converted
    report = convert_cbis_ddsm(
        synth["mass_csvs"],
        synth["calc_csvs"],
        synth["dicom_root"],
        tmp_path / "g",
        split=(0.6, 0.2, 0.2),
        seed=7,
        flip_left="pixels",
        crop_breast=True,
        progress=False,
    )
    assert report.ok
    plain, geo = load_coco(plain_out / "all.json"), load_coco(tmp_path / "g" / "all.json")
    by_key = {Path(im["file_name"]).stem: im for im in plain["images"]}
    boxes = defaultdict(list)
    for coco in (plain, geo):
        for a in coco["annotations"]:
            boxes[(id(coco), a["image_id"])].append(a["bbox"])
    for im in geo["images"]:
        ref = by_key[Path(im["file_name"]).stem]
        assert im["flipped"] == (ref["laterality"] == "RIGHT") and im["original_size"] == list(SIZE)
        a = cv2.imread(str(plain_out / ref["file_name"]), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "g" / im["file_name"]), cv2.IMREAD_UNCHANGED)
        assert b.shape == (im["height"], im["width"]) and b.size < a.size
        old_patches = sorted(a[y : y + h, x : x + w].tobytes() for x, y, w, h in boxes[(id(plain), ref["id"])])
        new_patches = sorted(
            (b[y : y + h, x : x + w][:, ::-1] if im["flipped"] else b[y : y + h, x : x + w]).tobytes()
            for x, y, w, h in boxes[(id(geo), im["id"])]
        )
        assert old_patches == new_patches


def test_class_rule_without_a_class_excludes_the_image_on_purpose(converted, tmp_path):
    synth, _, _ = converted

    class MassesOnly(ClassMapping):
        def __call__(self, abn):
            return None if abn.abnormality_type == "calcification" else super().__call__(abn)

    report = convert_cbis_ddsm(
        synth["mass_csvs"],
        synth["calc_csvs"],
        synth["dicom_root"],
        tmp_path / "m",
        classes=MassesOnly("type"),
        split=(0.6, 0.2, 0.2),
        progress=False,
    )
    calc_images = {a["image"] for a in synth["abnormalities"] if a["kind"] == "calcification"}
    assert report.ok and {s.item for s in report.excluded} == {f"image {k}" for k in calc_images}
    assert not _keys(load_coco(tmp_path / "m" / "all.json")) & calc_images
