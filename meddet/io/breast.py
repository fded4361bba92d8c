"""Breast geometry on display-ready mammograms: where the breast is, which side the chest wall is
on, and flipping / cropping an image together with its boxes.

Everything works from the pixels (tags are optional hints), because real mammograms often lack
orientation tags, scanned films carry burned-in labels, and CBIS-DDSM's films are not all hung the
same way. Boxes are COCO ``[x, y, w, h]`` in the image's pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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


def _band(shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows / columns at each edge of a shrunk image left out of the mask: film borders, scanner
    edges and edge lines (1-3 px at full size) live there and would join the breast."""
    return max(2, int(round(0.015 * shape[0]))), max(2, int(round(0.015 * shape[1])))


# A breast covers at least this share of the image; less means no plausible breast was found.
_MIN_BREAST_AREA = 0.03


def _background_level(image: np.ndarray, is_background: np.ndarray, default: float) -> np.ndarray:
    """Per-pixel background level: the larger of its row's and its column's median background value."""

    def profile(img: np.ndarray, bg: np.ndarray) -> np.ndarray:
        vals = np.where(bg, img, np.nan)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(vals, axis=1)
        counts = bg.sum(axis=1)
        return np.where(counts >= 0.1 * img.shape[1], med, default).astype(np.float32)

    rows = profile(image, is_background)
    cols = profile(image.T, is_background.T)
    return np.maximum(rows[:, None], cols[None, :])


def breast_mask(image: np.ndarray) -> np.ndarray:
    """The breast as a bool mask of a shrunk copy of ``image`` (long side <= 512 px).

    Robust to what real films carry: a band along every edge (see :func:`_band`) is left out, so a
    bright film-border row or column cannot join the breast; the threshold lies between the
    background level (per row and column, so a scanner's edge gradient stays background) and
    Otsu's threshold of the inner image (conservative: the faint periphery of the breast stays in,
    also for dense breasts against a lifted background); then a small opening
    against noise, the largest connected component (a burned-in label, marker, ruler or tape strip
    is smaller and separate; any other component at least a quarter of its size is kept too) with
    its holes filled. Empty when no plausible breast is found (flat image, largest part below 3% of
    the image).
    """
    small, _ = _small_uint8(image)
    h, w = small.shape
    by, bx = _band(small.shape)
    if h <= 2 * by + 2 or w <= 2 * bx + 2 or int(small.max()) == int(small.min()):
        return np.zeros(small.shape, bool)
    blurred = cv2.GaussianBlur(small, (5, 5), 0)
    inner = np.ascontiguousarray(blurred[by:-by, bx:-bx])
    otsu, _ = cv2.threshold(inner, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    below = inner[inner <= otsu]
    background = float(np.median(below)) if below.size else 0.0
    # The background level along each row and column (a scanner's edge gradient raises it near an
    # edge): the median of the background pixels there, and the higher of the two per pixel.
    level = _background_level(blurred.astype(np.float32), blurred <= otsu, background)
    fg = (blurred.astype(np.float32) - level > 0.5 * (float(otsu) - background)).astype(np.uint8)
    fg[:by], fg[-by:], fg[:, :bx], fg[:, -bx:] = 0, 0, 0, 0
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros(small.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = int(areas.max())
    if largest < _MIN_BREAST_AREA * h * w:
        return np.zeros(small.shape, bool)
    keep = 1 + np.flatnonzero(areas >= 0.25 * largest)
    mask = np.isin(labels, keep).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(mask, contours, -1, 1, thickness=cv2.FILLED)  # holes (dark fat, lesions) filled
    return mask.astype(bool)


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
    # A breast reaching the edge band (left out of the mask) reaches the edge: never cut it there.
    by, bx = _band(mask.shape)
    if ys.min() <= by:
        y0 = 0
    if ys.max() >= mask.shape[0] - by - 1:
        y1 = h
    if xs.min() <= bx:
        x0 = 0
    if xs.max() >= mask.shape[1] - bx - 1:
        x1 = w
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
    _, bx = _band(mask.shape)
    strip = max(1, mask.shape[1] // 20)
    left, right = int(mask[:, bx : bx + strip].sum()), int(mask[:, -bx - strip : -bx].sum())
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
        return boxes_to_original(boxes_xyxy, self)

    def to_record(self) -> dict[str, object]:
        """``{"flipped": bool, "crop": [x, y, w, h] | None, "original_size": [h, w]}``."""
        return {"flipped": self.flipped, "crop": self.crop, "original_size": list(self.original_size)}


def boxes_to_original(boxes_xyxy: np.ndarray, geometry: Geometry | None) -> np.ndarray:
    """Boxes ``(N, 4)`` xyxy in the preprocessed image's pixels -> the original file's pixels."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
    if geometry is None:
        return boxes
    if geometry.crop:
        boxes[:, [0, 2]] += float(geometry.crop[0])
        boxes[:, [1, 3]] += float(geometry.crop[1])
    if geometry.flipped:
        w = float(geometry.original_size[1])
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return boxes


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
        pixel_region = breast_region(out, margin, source=source)
        x, y, cw, ch = pixel_region
        x1, y1 = x + cw, y + ch
        for bx, by, bw, bh in new_boxes:
            x, y = min(x, int(np.floor(bx))), min(y, int(np.floor(by)))
            x1, y1 = max(x1, int(np.ceil(bx + bw))), max(y1, int(np.ceil(by + bh)))
        x, y, x1, y1 = max(0, x), max(0, y), min(w, x1), min(h, y1)
        region = [x, y, x1 - x, y1 - y]
        if region != pixel_region:
            logger.warning(
                "%s: the crop grew beyond the breast region to keep annotated boxes whole; the same "
                "file read without its boxes (prediction) is cropped tighter",
                source or "image",
            )
        out = np.ascontiguousarray(out[y:y1, x:x1])
        new_boxes = [[b[0] - x, b[1] - y, b[2], b[3]] for b in new_boxes]
    new_boxes = [[int(v) if float(v).is_integer() else v for v in b] for b in new_boxes]
    return out, new_boxes, Geometry(flipped, region, (h, w))
