"""Breast geometry on display-ready mammograms: where the breast is, which side the chest wall is
on, and flipping / cropping an image together with its boxes.

Everything works from the pixels (tags are optional hints), because real mammograms often lack
orientation tags, scanned films carry burned-in labels, and CBIS-DDSM's films are not all hung the
same way. Boxes are COCO ``[x, y, w, h]`` in the image's pixels.
"""

from __future__ import annotations

import logging
from typing import Sequence

import cv2
import numpy as np

from meddet.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["Geometry", "breast_mask", "breast_region", "chest_wall_side", "flip_boxes", "orient_and_crop"]

# The masks are computed on a copy shrunk to at most this many pixels on its long side.
_WORK_SIZE = 512


def _small_uint8(image: np.ndarray) -> tuple[np.ndarray, float]:
    if image.ndim != 2:
        raise DataError(f"breast geometry needs a greyscale image, found shape {image.shape}")
    scale = min(1.0, _WORK_SIZE / max(image.shape))
    small = image
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if small.dtype != np.uint8:
        small = (small / 257.0).round().astype(np.uint8) if small.dtype == np.uint16 else small.astype(np.uint8)
    return small, scale


def breast_mask(image: np.ndarray) -> np.ndarray:
    """The breast as a bool mask of a shrunk copy of ``image`` (long side <= 512 px).

    Otsu threshold, a small opening against noise, then the largest connected component, so a
    burned-in film label or a marker (smaller, separate) is not part of it.
    """
    small, _ = _small_uint8(image)
    if int(small.max()) == int(small.min()):
        return np.zeros(small.shape, bool)
    _, fg = cv2.threshold(cv2.GaussianBlur(small, (5, 5), 0), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros(small.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def breast_region(image: np.ndarray, margin: float = 0.02, source: str = "") -> list[int]:
    """``[x, y, w, h]`` of the breast in ``image``'s pixels, grown by ``margin`` x the image size
    on every side (clipped); the whole image when no breast is found (a warning naming ``source``)."""
    h, w = image.shape[:2]
    mask = breast_mask(image)
    if not mask.any():
        logger.warning("%s: no plausible breast region found; keeping the whole image", source or "image")
        return [0, 0, w, h]
    sy, sx = h / mask.shape[0], w / mask.shape[1]
    ys, xs = np.nonzero(mask)
    mx, my = margin * w, margin * h
    x0 = max(0, int(np.floor(xs.min() * sx - mx)))
    y0 = max(0, int(np.floor(ys.min() * sy - my)))
    x1 = min(w, int(np.ceil((xs.max() + 1) * sx + mx)))
    y1 = min(h, int(np.ceil((ys.max() + 1) * sy + my)))
    return [x0, y0, x1 - x0, y1 - y0]


def chest_wall_side(
    image: np.ndarray, patient_orientation: Sequence[str] | None = None, laterality: str | None = None
) -> str:
    """``"left"`` or ``"right"``: the image edge the chest wall is on.

    From *Patient Orientation* when given (the direction of the rows: ``A`` = towards the
    nipple, so the chest wall is on the left; ``P`` = on the right); else from the breast's
    ``laterality`` (``L``/``LEFT`` or ``R``/``RIGHT``; *Laterality* / *Image Laterality*) by the
    standard hanging convention (a left breast's chest wall on the left); else from the pixels:
    the breast touches the chest-wall edge along most of its height and the other edge hardly
    at all.
    """
    if patient_orientation:
        row = str(patient_orientation[0]).upper()
        if row.startswith("A"):
            return "left"
        if row.startswith("P"):
            return "right"
    if laterality and str(laterality).upper()[:1] in ("L", "R"):
        return "left" if str(laterality).upper().startswith("L") else "right"
    mask = breast_mask(image)
    strip = max(1, mask.shape[1] // 20)
    left, right = int(mask[:, :strip].sum()), int(mask[:, -strip:].sum())
    if left == right:
        logger.debug("chest wall side undecided from the pixels (%d vs %d); assuming left", left, right)
    return "left" if left >= right else "right"


def flip_boxes(boxes: Sequence[Sequence[float]], width: int) -> list[list[float]]:
    """Boxes ``[x, y, w, h]`` mirrored left-right in an image ``width`` pixels wide."""
    return [[width - b[0] - b[2], b[1], b[2], b[3]] for b in boxes]


class Geometry:
    """What :func:`orient_and_crop` did: ``flipped`` (left-right), ``crop`` ``[x, y, w, h]`` in
    the (flipped) original's pixels or None, and ``original_size`` ``[height, width]``.

    ``to_record()`` gives the fields stored in a COCO image record, which is enough to map
    boxes predicted on the output back onto the original image.
    """

    def __init__(self, flipped: bool, crop: list[int] | None, original_size: tuple[int, int]) -> None:
        self.flipped, self.crop, self.original_size = flipped, crop, original_size

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Boxes ``(N, 4)`` xyxy in the output image's pixels -> the original image's pixels."""
        from meddet.io.recipe import boxes_to_original

        return boxes_to_original(boxes_xyxy, self)

    def to_record(self) -> dict[str, object]:
        """``{"flipped": bool, "crop": [x, y, w, h] | None, "original_size": [h, w]}``."""
        return {"flipped": self.flipped, "crop": self.crop, "original_size": list(self.original_size)}


def orient_and_crop(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]],
    *,
    flip_left: bool = False,
    crop: bool = False,
    patient_orientation: Sequence[str] | None = None,
    laterality: str | None = None,
    margin: float = 0.02,
    source: str = "",
) -> tuple[np.ndarray, list[list[float]], Geometry]:
    """Optionally mirror the image so that the chest wall is on the left (every breast faces the
    same way; the side from :func:`chest_wall_side`: tags when given, else the pixels) and crop
    it to the breast, moving the boxes with the pixels.

    The crop always keeps every box whole (the region grows to contain them), so no annotation is
    cut. ``source`` names the file in the warning logged when no breast is found (the whole image
    is then kept). Returns the new image, the new boxes and the :class:`Geometry` applied.
    """
    h, w = image.shape[:2]
    out = image
    new_boxes = [list(map(float, b)) for b in boxes]
    flipped = False
    if flip_left and chest_wall_side(image, patient_orientation, laterality) == "right":
        out = np.ascontiguousarray(out[:, ::-1])
        new_boxes = flip_boxes(new_boxes, w)
        flipped = True
    region: list[int] | None = None
    if crop:
        x, y, cw, ch = breast_region(out, margin, source=source)
        x1, y1 = x + cw, y + ch
        for bx, by, bw, bh in new_boxes:
            x, y = min(x, int(np.floor(bx))), min(y, int(np.floor(by)))
            x1, y1 = max(x1, int(np.ceil(bx + bw))), max(y1, int(np.ceil(by + bh)))
        x, y, x1, y1 = max(0, x), max(0, y), min(w, x1), min(h, y1)
        region = [x, y, x1 - x, y1 - y]
        out = np.ascontiguousarray(out[y:y1, x:x1])
        new_boxes = [[b[0] - x, b[1] - y, b[2], b[3]] for b in new_boxes]
    new_boxes = [[int(v) if float(v).is_integer() else v for v in b] for b in new_boxes]
    return out, new_boxes, Geometry(flipped, region, (h, w))
