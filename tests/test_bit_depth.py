"""Bit depth honesty: 16-bit PNG/TIFF files whose values use fewer bits are normalized by their effective
depth (not by 65535, which leaves 12-bit data nearly black), recorded by the importer and reported by check."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np

import meddet.io.image as image_io


def _twelve_bit(path, value=4000):
    img = np.zeros((40, 50), np.uint16)
    img[10:30, 10:40] = value
    img[0, 0] = 1
    cv2.imwrite(str(path), img)
    return path


def test_sixteen_bit_file_with_twelve_bit_values_is_normalized_by_twelve_bits(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(image_io, "_REPORTED_BITS", set())
    for suffix in ("png", "tif"):
        path = _twelve_bit(tmp_path / f"a.{suffix}")
        with caplog.at_level(logging.INFO, logger="meddet.io.image"):
            img, bits = image_io.read_image_bits(path)
            image_io.read_image(path)
        assert bits == 12 and img.dtype == np.uint16
        assert img.max() == round(4000 * 65535 / 4095)  # bright, as the 12-bit data meant it
    said = [r for r in caplog.records if "12 bits" in r.getMessage()]
    assert len(said) == 1  # said once, not per image
    full = np.zeros((8, 8), np.uint16)
    full[0, 0] = 65535
    cv2.imwrite(str(tmp_path / "full.png"), full)
    assert image_io.read_image_bits(tmp_path / "full.png")[1] is None  # a 16-bit image using 16 bits: unchanged
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "full.png"), full)


def test_importer_records_and_check_reports_the_effective_bit_depth(tmp_path):
    from meddet.data.check import check_dataset
    from meddet.data.formats.images import convert_images

    src = tmp_path / "src"
    src.mkdir()
    _twelve_bit(src / "a.png")
    cv2.imwrite(str(src / "b.png"), np.full((40, 50), 200, np.uint8))
    convert_images(src, tmp_path / "out", progress=False)
    coco = json.loads((tmp_path / "out" / "all.json").read_text())
    by_source = {im["source"]: im for im in coco["images"]}
    assert by_source["a.png"]["effective_bit_depth"] == 12 and "effective_bit_depth" not in by_source["b.png"]

    # check on a dataset of the original files (a 12-bit-in-16 image and an 8-bit one)
    data = {
        "images": [
            {"id": 1, "file_name": "src/a.png", "height": 40, "width": 50},
            {"id": 2, "file_name": "src/b.png", "height": 40, "width": 50},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "mass"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(data))
    report = check_dataset([tmp_path / "train.json"], progress=False)
    assert report.bit_depths == {"train": {"12 of 16": 1, "8": 1}}
    assert "12 of 16-bit 1" in report.table()
    assert any(f.check == "effective bit depth" for f in report.warnings)
