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
