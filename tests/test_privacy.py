"""No output carries identifying DICOM attributes: not the PNGs (metadata included), the COCO
files, the manifest, the error report, nor any log line; only the datasets' own pseudonymous ids."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from meddet.data.formats import convert_box_csv, convert_images
from meddet.io import dicom_info
from meddet.synth import IDENTIFYING_INFO, encode_dicom, make_cbis_ddsm, make_cbis_ddsm_jpeg, save_dicom

REPO = Path(__file__).resolve().parents[1]

IDENTIFYING = {
    "PatientName": "Smithfield^Johanna^Quincy",
    "PatientID": "MRN-55501234",  # the hospital's id; the datasets' own ids are P_00001, case07...
    "PatientBirthDate": "19610923",
    "PatientAddress": "12 Larkspur Lane",
    "OtherPatientIDs": "NHS-943-476-5919",
    "InstitutionName": "St Elsewhere General Hospital",
    "InstitutionAddress": "1 Hospital Road",
    "ReferringPhysicianName": "Housewright^Gregory",
    "PerformingPhysicianName": "Cuddington^Lisa",
    "OperatorsName": "Wilsonby^James",
    "AccessionNumber": "ACC20230415X9",
    "StudyDate": "20230415",
    "StudyTime": "101532",
    "StudyID": "STUDY-77812",
    "StudyInstanceUID": "1.2.840.99999.4242.1",
    "SeriesInstanceUID": "1.2.840.99999.4242.2",
    "DeviceSerialNumber": "SN-QX-00917",
}


def identifying_dicom(path: Path, image01: np.ndarray) -> None:
    attrs = {**IDENTIFYING, "Laterality": "L", "ViewPosition": "CC"}
    save_dicom(encode_dicom(image01, bits_stored=12, attributes=attrs), path)


def leaks(folders, text: str = "") -> list[str]:
    """(file or 'text', value) for every identifying value found."""
    found = []
    values = [*IDENTIFYING.values(), *IDENTIFYING_INFO.values()]
    for folder in folders:
        for p in Path(folder).rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                found += [f"{p}: {v}" for v in values if v.encode() in data]
    found += [f"log/stdout: {v}" for v in values if v in text]
    return found


def test_box_csv_and_images_conversions_keep_no_identifying_attribute(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    src = tmp_path / "src"
    identifying_dicom(src / "scan.dcm", np.random.default_rng(0).random((64, 48)))
    (src / "broken.dcm").write_bytes((src / "scan.dcm").read_bytes()[:600])  # fails: its error is reported
    with open(src / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "x", "y", "width", "height", "class", "patient_id"])
        w.writerow(["scan.dcm", 2, 3, 10, 12, "mass", "case07"])
        w.writerow(["broken.dcm", 2, 3, 10, 12, "mass", "case08"])
    boxes = convert_box_csv(src / "boxes.csv", src, tmp_path / "boxes", progress=False)
    images = convert_images(src, tmp_path / "images", progress=False)
    assert boxes.n_images == 1 and images.n_images == 1 and len(boxes.skipped) == 1 == len(images.skipped)
    assert (tmp_path / "boxes" / "all.json").read_text().count("case07") == 1
    info = dicom_info(src / "scan.dcm")
    logging.getLogger("test").info("%s", info)
    assert leaks([tmp_path / "boxes", tmp_path / "images"], caplog.text + str(info)) == []


@pytest.mark.parametrize("jpeg_release", [False, True])
def test_cbis_ddsm_conversion_keeps_no_identifying_attribute(tmp_path, jpeg_release):
    if jpeg_release:  # dicom_info.csv carries names, birth dates, accession numbers ...
        rel = make_cbis_ddsm_jpeg(tmp_path / "raw", n_patients=3, seed=0, image_size=(128, 96))
        args = ["--dicom-info", rel["dicom_info"], "--dicom-root", rel["root"]]
    else:  # every full mammogram rewritten with identifying attributes
        raw = make_cbis_ddsm(tmp_path / "raw", n_patients=3, seed=0, image_size=(128, 96))
        for path in raw["dicom_root"].rglob("*.dcm"):
            ds = pydicom.dcmread(path)
            for key, value in IDENTIFYING.items():
                setattr(ds, key, value)
            ds.save_as(path)
        args = ["--mass-csv", *raw["mass_csvs"], "--calc-csv", *raw["calc_csvs"], "--dicom-root", raw["dicom_root"]]
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "convert_dataset.py"),
            "cbis-ddsm",
            *map(str, args),
            "--out",
            str(tmp_path / "coco"),
            "--no-progress",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    assert "P_00001" in (tmp_path / "coco" / "all.json").read_text()  # the dataset's own pseudonymous id
    assert leaks([tmp_path / "coco"], run.stdout + run.stderr) == []
