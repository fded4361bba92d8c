"""The synthetic CBIS-DDSM release: deterministic, stored as the real one, lesions as promised."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from meddet.data.formats.cbis_ddsm import CALC_HEADER, MASS_HEADER
from meddet.errors import ConfigError
from meddet.io import read_dicom
from meddet.synth import make_cbis_ddsm, render_mammogram

SIZE = (256, 160)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_cbis_ddsm(out, n_patients=5, seed=3, image_size=SIZE)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(paths) -> list[dict[str, str]]:
    rows = []
    for p in paths:
        with open(p, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def test_same_seed_gives_identical_files_other_seed_differs(tmp_path, tree):
    again = make_cbis_ddsm(tmp_path / "again", n_patients=5, seed=3, image_size=SIZE)
    first = _files(tree["root"])
    assert first == _files(again["root"])
    other = make_cbis_ddsm(tmp_path / "other", n_patients=5, seed=4, image_size=SIZE)
    assert _files(other["root"]) != first


def test_csv_headers_are_the_release_headers(tree):
    for path in tree["mass_csvs"]:
        assert Path(path).read_text().splitlines()[0] == ",".join(MASS_HEADER)
    for path in tree["calc_csvs"]:
        assert Path(path).read_text().splitlines()[0] == ",".join(CALC_HEADER)
    assert MASS_HEADER[1] == "breast_density" and CALC_HEADER[1] == "breast density"
    assert {Path(p).name for p in tree["mass_csvs"] + tree["calc_csvs"]} == {
        "mass_case_description_train_set.csv",
        "mass_case_description_test_set.csv",
        "calc_case_description_train_set.csv",
        "calc_case_description_test_set.csv",
    }


def test_csv_content_covers_the_release_cases(tree):
    mass, calc = _rows(tree["mass_csvs"]), _rows(tree["calc_csvs"])
    root = tree["dicom_root"]
    assert {r["patient_id"] for r in mass} & {r["patient_id"] for r in calc}, "a patient in both CSVs"
    images_mass = {(r["patient_id"], r["left or right breast"], r["image view"]) for r in mass}
    images_calc = {(r["patient_id"], r["left or right breast"], r["image view"]) for r in calc}
    assert images_mass & images_calc, "an image with both a mass and a calcification"
    per_image = defaultdict(int)
    for r in mass + calc:
        per_image[(r["patient_id"], r["left or right breast"], r["image view"])] += 1
    assert max(per_image.values()) >= 2 and max(per_image.values()) <= 6
    sides_views = defaultdict(set)
    for pid, side, view in per_image:
        sides_views[pid].add((side, view))
    assert any(len(v) == 4 for v in sides_views.values()), "a patient with both breasts and both views"
    assert any("Test_" in r["image file path"] for r in mass + calc)
    for r in mass:
        a = int(r["assessment"])
        assert r["abnormality type"] == "mass" and 2 <= a <= 5
        assert (r["mass margins"] == "CIRCUMSCRIBED") == (a <= 3)
    for r in calc:
        assert r["abnormality type"] == "calcification" and 2 <= int(r["assessment"]) <= 5
    for r in mass + calc:
        assert r["pathology"] in ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")
        # paths are relative to the DICOM root; the abnormality folder exists
        assert (root / Path(r["ROI mask file path"]).parts[0]).is_dir()
        assert (root / r["image file path"]).parent.is_dir()


def test_dicoms_are_proper_and_mixed(tree):
    full = [p for p in tree["dicom_root"].rglob("*.dcm") if p.parts[-4].endswith(("_CC", "_MLO"))]
    assert len(full) >= tree["n_images"]
    seen = defaultdict(set)
    for p in full:
        ds = pydicom.dcmread(p)
        folder = p.parts[-4]
        pid = "_".join(folder.split("_")[1:3])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.PatientID == pid and ds.Modality == "MG"
        assert ds.Laterality == ("L" if "_LEFT_" in folder else "R")
        assert ds.ViewPosition == folder.rsplit("_", 1)[1] and len(ds.PatientOrientation) == 2
        assert (ds.Rows, ds.Columns) == SIZE
        seen["bits"].add(int(ds.BitsStored))
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["window"].add("WindowCenter" in ds)
        seen["voi"].add("VOILUTSequence" in ds)
        seen["rescale"].add("RescaleSlope" in ds)
        seen["name"].add(p.name)
    assert seen["bits"] == {12, 16} and seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["window"] == seen["voi"] == seen["rescale"] == {True, False}
    assert seen["name"] == {"000000.dcm", "1-1.dcm"}


def test_every_stored_variant_shows_bright_tissue_on_black(tree):
    for p in tree["dicom_root"].rglob("*.dcm"):
        if not p.parts[-4].endswith(("_CC", "_MLO")):
            continue
        img = read_dicom(p)
        background, tissue = img[:, img.shape[1] // 2 :], img[:, : img.shape[1] // 2]
        if "_RIGHT_" in p.parts[-4]:
            background, tissue = tissue, background  # chest wall on the right
        assert np.median(tissue[img.shape[0] // 2 - 10 : img.shape[0] // 2 + 10, :20]) > 60, p
        assert background[:5, -5:].max() == 0 and background[-5:, -5:].max() == 0, p


def test_abnormality_folders_hold_a_crop_and_a_full_size_binary_mask(tree):
    mask_names = []
    for r in _rows(tree["mass_csvs"] + tree["calc_csvs"]):
        folder = tree["dicom_root"] / Path(r["ROI mask file path"]).parts[0]
        files = sorted(folder.rglob("*.dcm"))
        assert len(files) == 2
        kinds = {}
        for f in files:
            arr = pydicom.dcmread(f).pixel_array
            binary = arr.shape == SIZE and set(np.unique(arr)) == {0, 255}
            kinds[f.name] = "mask" if binary else "crop"
            if not binary:
                assert arr.shape[0] < SIZE[0] and len(np.unique(arr)) > 2
        assert sorted(kinds.values()) == ["crop", "mask"]
        mask_names.append(next(n for n, k in kinds.items() if k == "mask"))
    # the naming varies and the mask is not always the second file
    assert {"000000.dcm", "000001.dcm", "1-1.dcm", "1-2.dcm"} <= set(mask_names)


def test_multi_region_calcification_masks_exist(tree):
    multi = [a for a in tree["abnormalities"] if a["regions"] > 1]
    assert multi and all(a["kind"] == "calcification" for a in multi)


def test_lesion_sizes_scale_and_separate_classes():
    """At 1024 x 640: low-suspicion masses ~30-48 px, high ~60-90 px, calcification clusters
    ~20-60 px; sizes scale with the image."""
    rng = np.random.default_rng(0)
    extents = defaultdict(list)
    small = defaultdict(list)
    for i in range(6):
        lesions = [("mass_low", 1), ("mass_high", 1), ("calcification", 1)]
        for (h, w), store in (((1024, 640), extents), ((512, 320), small)):
            img, masks = render_mammogram(rng, h, w, "LEFT" if i % 2 else "RIGHT", "CC" if i < 3 else "MLO", 2, lesions)
            assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
            for (kind, _), regions in zip(lesions, masks):
                for m in regions:
                    sl = ndimage.find_objects(ndimage.label(m, np.ones((3, 3)))[0])[0]
                    store[kind].append(max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start))
                    # contrast: the lesion is brighter than the tissue right around it
                    ring = ndimage.binary_dilation(m, iterations=6) & ~ndimage.binary_dilation(m, iterations=2)
                    assert img[m].max() > img[ring].mean() + 0.2
    assert 25 <= min(extents["mass_low"]) and max(extents["mass_low"]) <= 50
    assert 52 <= min(extents["mass_high"]) and max(extents["mass_high"]) <= 95
    assert 15 <= min(extents["calcification"]) and max(extents["calcification"]) <= 65
    assert max(extents["mass_low"]) < min(extents["mass_high"])
    assert np.mean(small["mass_high"]) < 0.6 * np.mean(extents["mass_high"])


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="image_size"):
        make_cbis_ddsm(tmp_path, n_patients=1, image_size=(32, 32))
    with pytest.raises(ConfigError, match="n_patients"):
        make_cbis_ddsm(tmp_path, n_patients=0)
