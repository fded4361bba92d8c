"""Breast geometry: which side the chest wall is on, the breast region, and flipping / cropping
an image with its boxes so every box still frames the same pixels."""

from __future__ import annotations

import numpy as np
import pytest

from meddet.io import breast_region, chest_wall_side, orient_and_crop
from meddet.synth import render_mammogram


def mammogram(side: str, view: str = "MLO", seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    rng = np.random.default_rng(seed)
    img01, masks = render_mammogram(rng, 256, 160, side, view, 2, [("mass_high", 1), ("calcification", 1)])
    boxes = []
    for regions in masks:
        for m in regions:
            ys, xs = np.nonzero(m)
            boxes.append([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)])
    img = np.rint(img01 * 255).astype(np.uint8)
    img[5:20, 120:150] = 255  # a burned-in film label, away from the breast
    return img, boxes


def crop(img: np.ndarray, box) -> np.ndarray:
    x, y, w, h = (int(v) for v in box)
    return img[y : y + h, x : x + w]


@pytest.mark.parametrize("side,expected", [("LEFT", "left"), ("RIGHT", "right")])
def test_chest_wall_side_from_pixels_and_from_patient_orientation(side, expected):
    img, _ = mammogram(side)
    assert chest_wall_side(img) == expected
    assert chest_wall_side(img[:, ::-1]) != expected
    assert chest_wall_side(img, ["P", "F"]) == "right" and chest_wall_side(img, ["A", "FR"]) == "left"
    other = "R" if side == "LEFT" else "L"  # tags win over pixels; PatientOrientation over laterality
    assert chest_wall_side(img, laterality=other) != expected
    assert chest_wall_side(img, ["A", "F"], laterality="R") == "left"


def test_flip_left_mirrors_right_breasts_and_their_boxes():
    img, boxes = mammogram("RIGHT")
    out, new_boxes, geom = orient_and_crop(img, boxes, flip_left=True)
    assert geom.flipped and chest_wall_side(out) == "left" and out.shape == img.shape
    for old, new in zip(boxes, new_boxes):
        np.testing.assert_array_equal(crop(out, new), crop(img, old)[:, ::-1])
    left, left_boxes = mammogram("LEFT")
    same, same_boxes, geom = orient_and_crop(left, left_boxes, flip_left=True)
    assert not geom.flipped and same is left and same_boxes == left_boxes


def test_crop_to_breast_keeps_every_box_whole_and_drops_the_background():
    img, boxes = mammogram("LEFT", seed=3)
    boxes.append([150, 240, 8, 10])  # a box outside the breast region must not be cut
    out, new_boxes, geom = orient_and_crop(img, boxes, crop=True)
    x, y, w, h = geom.crop
    assert out.shape == (h, w) and out.size < img.size
    assert geom.to_record() == {"flipped": False, "crop": [x, y, w, h], "original_size": [256, 160]}
    for old, new in zip(boxes, new_boxes):
        assert new[0] >= 0 and new[1] >= 0 and new[0] + new[2] <= w and new[1] + new[3] <= h
        np.testing.assert_array_equal(crop(out, new), crop(img, old))
    region = breast_region(img)
    assert region[2] < 160 and region[3] <= 256  # the breast, not the whole film


# ---------------------------------------------------------------- real-film artefacts (meddet.synth.render_film)
@pytest.mark.parametrize(
    "artefact", ["border", "label", "marker", "ruler", "tape", "gradient", "dense", "monochrome1", "all"]
)
@pytest.mark.parametrize("side", ["LEFT", "RIGHT"])
def test_crop_and_side_survive_each_film_artefact(tmp_path, artefact, side):
    """Read through the DICOM display chain (MONOCHROME1 inverted by the reader): the crop keeps every
    lesion box and all tissue, leaves out the burned-in label / marker pixels, and the side from the
    pixels is the breast's laterality."""
    from meddet.io import read_dicom
    from meddet.synth import ARTEFACTS, encode_dicom, render_film, save_dicom

    arts = ARTEFACTS if artefact == "all" else (artefact,)
    for seed in range(3):
        film = render_film(
            np.random.default_rng(seed),
            256,
            200,
            side,
            "MLO" if seed % 2 else "CC",
            [("mass_high", 1), ("calcification", 1)],
            arts,
        )
        path = tmp_path / f"{seed}.dcm"
        save_dicom(encode_dicom(film.image, photometric=film.photometric, bits_stored=12), path)
        img = read_dicom(path)
        x, y, w, h = breast_region(img)
        inside = np.zeros(img.shape, bool)
        inside[y : y + h, x : x + w] = True
        assert (w, h) != (200, 256), "the crop fell back to the whole image"
        for bx, by, bw, bh in film.boxes:
            assert x <= bx and y <= by and bx + bw <= x + w and by + bh <= y + h
        assert inside[film.tissue].all()
        if film.labels.any():
            assert (film.labels & ~inside).sum() >= 0.95 * film.labels.sum()
        assert chest_wall_side(img) == side.lower()


def test_film_artefacts_are_seeded_and_switchable():
    from meddet.synth import render_film

    a = render_film(np.random.default_rng(5), 128, 100, "LEFT", "CC", artefacts=("border", "label"))
    b = render_film(np.random.default_rng(5), 128, 100, "LEFT", "CC", artefacts=("border", "label"))
    plain = render_film(np.random.default_rng(5), 128, 100, "LEFT", "CC")
    np.testing.assert_array_equal(a.image, b.image)
    assert a.labels.any() and not plain.labels.any() and a.artefacts == ("border", "label")
    with pytest.raises(Exception, match="unknown"):
        render_film(np.random.default_rng(0), 64, 64, "LEFT", "CC", artefacts=("coffee_stain",))


def test_no_plausible_breast_keeps_the_whole_image_and_warns_naming_the_file(caplog):
    flat = np.zeros((120, 90), np.uint8)
    speck = flat.copy()
    speck[50:53, 40:43] = 255  # far too small for a breast
    for img in (flat, speck):
        caplog.clear()
        with caplog.at_level("WARNING", logger="meddet.io.breast"):
            out, boxes, geom = orient_and_crop(img, [[1, 2, 3, 4]], crop=True, source="films/case7.dcm")
        assert out.shape == img.shape and geom.crop == [0, 0, 90, 120]
        assert any("films/case7.dcm" in r.getMessage() and "whole image" in r.getMessage() for r in caplog.records)
