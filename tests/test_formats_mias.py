"""MIAS: Info.txt and PGM films in the database's real layout -> COCO (origin bottom-left)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from meddet.data.coco import load_coco
from meddet.data.formats import convert_mias, read_mias_info
from meddet.errors import ConfigError

# The header and the README text some copies prepend, normal films with trailing spaces, two
# abnormalities on one film, widely distributed calcifications without a location, a bad line.
INFO = """\
REFNUM BG CLASS SEVERITY X Y RADIUS
This file lists the films in the MIAS database
mdb001 G CIRC B 535 425 197
mdb002 G CIRC B 522 280 69
mdb003 D NORM\x20
mdb004 D NORM\x20
mdb005 F CIRC B 477 133 30
mdb005 F CIRC B 500 168 26
mdb006 F ARCH M 600 700 40
mdb007 G CALC M *NOTE 3*
mdb008 X NORM
mdb009 F SPIC M 300 900 20
"""
FILMS = ("mdb001", "mdb002", "mdb003", "mdb004", "mdb005", "mdb006", "mdb007", "mdb008")  # mdb009 is missing


@pytest.fixture
def mias(tmp_path):
    (tmp_path / "Info.txt").write_text(INFO)
    rows, _ = read_mias_info(tmp_path / "Info.txt")
    for ref in FILMS:
        img = np.full((1024, 1024), 20, np.uint8)
        for r in rows:
            if r.ref == ref and r.x is not None:  # draw each lesion where Info.txt says (y from the bottom)
                cv2.circle(img, (r.x, 1024 - r.y), r.radius, 220, -1)
        cv2.imwrite(str(tmp_path / f"{ref}.pgm"), img)
    return tmp_path


def test_info_txt_is_parsed_with_its_quirks(mias):
    rows, bad = read_mias_info(mias / "Info.txt")
    assert [r.ref for r in rows] == [
        "mdb001",
        "mdb002",
        "mdb003",
        "mdb004",
        "mdb005",
        "mdb005",
        "mdb006",
        "mdb007",
        "mdb009",
    ]
    assert rows[2].abnormality == "NORM" and rows[2].x is None
    assert rows[7].abnormality == "CALC" and rows[7].severity == "M" and rows[7].x is None  # *NOTE 3*
    assert len(bad) == 1 and bad[0][1] == "mdb008" and "background tissue 'X'" in bad[0][2]


def test_mias_converts_with_boxes_where_the_lesions_are(mias, tmp_path):
    report = convert_mias(mias / "Info.txt", mias, tmp_path / "out", progress=False)
    assert {s.item for s in report.skipped} == {"image mdb008", "image mdb009"}
    assert "image file not found" in " ".join(s.reason for s in report.skipped)
    assert [s.item for s in report.excluded] == ["image mdb007"]  # no location: cannot be scored
    coco = load_coco(tmp_path / "out" / "all.json")
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    assert list(cats.values())[:3] == ["calcification", "circumscribed_mass", "spiculated_mass"]
    images = {im["source"]: im for im in coco["images"]}
    assert set(images) == {f"{r}.pgm" for r in ("mdb001", "mdb002", "mdb003", "mdb004", "mdb005", "mdb006")}
    assert images["mdb001.pgm"]["patient_id"] == images["mdb002.pgm"]["patient_id"] == "mias_001"
    assert images["mdb002.pgm"]["laterality"] == "LEFT" and images["mdb001.pgm"]["laterality"] == "RIGHT"
    assert images["mdb003.pgm"]["pixel_spacing"] == [0.2, 0.2] and images["mdb003.pgm"]["pathology"] is None
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    mdb005 = sorted(by_image[images["mdb005.pgm"]["id"]], key=lambda a: a["bbox"][0])
    assert [a["bbox"] for a in mdb005] == [[447, 861, 60, 60], [474, 830, 52, 52]]
    for name, im in images.items():
        png = cv2.imread(str(tmp_path / "out" / im["file_name"]), cv2.IMREAD_UNCHANGED)
        assert png.shape == (1024, 1024)
        for a in by_image.get(im["id"], []):
            x, y, w, h = a["bbox"]
            cx, cy = x + w // 2, y + h // 2
            assert png[cy, cx] == 220, f"{name}: box {a['bbox']} is not on the drawn lesion"
    assert not by_image.get(images["mdb003.pgm"]["id"])  # a normal film, kept without boxes


def test_mias_type_scheme_excludes_distortions(mias, tmp_path):
    report = convert_mias(mias / "Info.txt", mias, tmp_path / "t", scheme="type", progress=False)
    assert "image mdb006" in {s.item for s in report.excluded}
    assert report.categories == ["calcification", "mass"]
    with pytest.raises(ConfigError, match="MIAS class scheme"):
        convert_mias(mias / "Info.txt", mias, tmp_path / "x", scheme="birads")
