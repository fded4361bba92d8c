"""Synthetic mammograms stored exactly like the CBIS-DDSM release (DICOM tree + description CSVs).

What is drawn (all sizes scale with the image; the numbers are for the default 1024 x 640):

- a breast: half-ellipse against the chest wall (left edge for LEFT breasts, right edge for RIGHT),
  thickness fall-off towards the skin, a thin bright skin line, smooth fibroglandular texture
  (multi-scale filtered noise, denser for higher breast density), a pectoral muscle on MLO views,
  zero background;
- ``mass_low`` (BI-RADS 2-3): smooth round/oval blobs with soft margins, ~30-48 px;
- ``mass_high`` (BI-RADS 4-5): larger, brighter, irregular bodies with spicules, ~65-90 px;
- calcifications (BI-RADS 2-5): clusters of 1-3 px bright specks, ~20-60 px per cluster; about a
  third of the calcification abnormalities have two clusters (a two-region ROI mask).

How it is stored (as the release, see docs/ARCHITECTURE.md "CBIS-DDSM facts"):

- ``<root>/Mass-Training_P_00001_LEFT_CC/<StudyUID>/<SeriesUID>/000000.dcm`` (or ``1-1.dcm``)
  full mammograms, written under each prefix (Mass-/Calc-, Training/Test) that references them;
  a mix of BitsStored 12/16, MONOCHROME1/2, window tags (one or two windows), a VOI LUT Sequence,
  rescale slope/intercept;
- ``<root>/Mass-Training_P_00001_LEFT_CC_1/<StudyUID>/<SeriesUID>/`` per abnormality with the
  cropped patch and the full-size 0/255 ROI mask, named ``000000.dcm``/``000001.dcm`` or
  ``1-1.dcm``/``1-2.dcm`` with the mask first or second (the CSV always names the legacy
  ``000000.dcm`` crop and ``000001.dcm`` mask, as the release's CSVs do);
- ``mass_case_description_{train,test}_set.csv`` and ``calc_case_description_{train,test}_set.csv``
  with the release's exact headers.

Everything is a pure function of the seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from meddet.data.formats.cbis_ddsm import CALC_HEADER, MASS_HEADER
from meddet.errors import ConfigError
from meddet.io.dicom import read_dicom
from meddet.io.image import write_png

logger = logging.getLogger(__name__)

__all__ = [
    "ARTEFACTS",
    "DIGITAL_MAMMOGRAPHY",
    "Film",
    "SECONDARY_CAPTURE",
    "IDENTIFYING_INFO",
    "encode_dicom",
    "make_box_csv_dataset",
    "make_cbis_ddsm",
    "make_cbis_ddsm_jpeg",
    "render_film",
    "render_mammogram",
    "save_dicom",
]

CSV_NAMES = {
    ("Mass", "Training"): "mass_case_description_train_set.csv",
    ("Mass", "Test"): "mass_case_description_test_set.csv",
    ("Calc", "Training"): "calc_case_description_train_set.csv",
    ("Calc", "Test"): "calc_case_description_test_set.csv",
}
DIGITAL_MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; the suffix is a hash of the entropy sources

# Lesion extents as fractions of the breast's horizontal semi-axis (~0.84 x width), with floors in px.
_SIZE = {
    "mass_low": ((0.056, 0.088), 10.0),
    "mass_high": ((0.12, 0.165), 18.0),
    "calcification": ((0.045, 0.11), 8.0),
}


# ------------------------------------------------------------------------------ DICOM encoding
def encode_dicom(
    image01: np.ndarray,
    *,
    bits_stored: int = 16,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    windows: Sequence[tuple[float, float]] | None = None,
    voi_lut: np.ndarray | None = None,
    sop_class: str = DIGITAL_MAMMOGRAPHY,
    attributes: dict[str, Any] | None = None,
    uid_entropy: Sequence[str] = (),
) -> Dataset:
    """Encode a display image with values in [0, 1] (1 = bright) as a DICOM dataset.

    Stored values are ``round(image01 * (2**bits_stored - 1))`` (8-bit data when
    ``bits_stored == 8``, else 16-bit words), inverted for MONOCHROME1 so that a viewer that
    applies the photometric interpretation shows the same picture.

    Args:
        rescale: ``(slope, intercept)`` tags; the modality output is ``stored * slope + intercept``.
        windows: ``(center, width)`` pairs in modality-output units (several = alternative views).
        voi_lut: one VOI LUT (16-bit entries) indexed by the modality output from 0; requires
            ``rescale=None``.
        attributes: extra DICOM keywords and values (PatientID, Laterality, ...).
        uid_entropy: strings hashed into the SOP instance UID (same strings, same UID).
    """
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ConfigError(f"photometric: expected MONOCHROME1 or MONOCHROME2, found {photometric!r}")
    if not 1 <= bits_stored <= 16:
        raise ConfigError(f"bits_stored: expected 1..16, found {bits_stored!r}")
    if voi_lut is not None and rescale is not None:
        raise ConfigError("voi_lut and rescale together are not supported by the synthetic encoder")
    smax = 2**bits_stored - 1
    stored = np.rint(np.clip(image01, 0.0, 1.0) * smax).astype(np.int64)
    if photometric == "MONOCHROME1":
        stored = smax - stored
    eight = bits_stored <= 8
    pixel_bytes = stored.astype("<u2" if not eight else np.uint8).tobytes()
    if len(pixel_bytes) % 2:
        pixel_bytes += b"\x00"  # DICOM values have even length

    sop_uid = generate_uid(_UID_ROOT, entropy_srcs=["meddet-synth", *uid_entropy, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MG"
    for key, value in (attributes or {}).items():
        setattr(ds, key, value)
    if sop_class == DIGITAL_MAMMOGRAPHY:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(image01.shape[0]), int(image01.shape[1])
    ds.BitsAllocated = 8 if eight else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = float(rescale[0]), float(rescale[1])
        ds.RescaleType = "US"
    if windows:
        ds.WindowCenter = (
            [round(float(c), 3) for c, _ in windows] if len(windows) > 1 else round(float(windows[0][0]), 3)
        )
        ds.WindowWidth = (
            [round(float(w), 3) for _, w in windows] if len(windows) > 1 else round(float(windows[0][1]), 3)
        )
        ds.VOILUTFunction = "LINEAR"
    if voi_lut is not None:
        lut = np.asarray(voi_lut, dtype=np.uint16)
        item = Dataset()
        item.add_new(0x00283002, "US", [len(lut) if len(lut) < 65536 else 0, 0, 16])  # LUT Descriptor
        item.LUTExplanation = "synthetic VOI LUT"
        item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUT Data
        ds.VOILUTSequence = [item]
    ds.add_new(0x7FE00010, "OB" if eight else "OW", pixel_bytes)
    return ds


def save_dicom(ds: Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` as a DICOM Part-10 file (preamble, file meta), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


# ------------------------------------------------------------------------------ rendering
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return (up - up.mean()) / (up.std() + 1e-6)


def _breast(
    rng: np.random.Generator, h: int, w: int, side: str, view: str, density: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """The breast image (float32 in [0, 1]), its region, the pectoral muscle and the geometry."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = 0.0 if side == "LEFT" else float(w - 1)
    a = w * rng.uniform(0.8, 0.88)
    if view == "CC":
        cy, b = h * rng.uniform(0.47, 0.53), h * rng.uniform(0.40, 0.44)
    else:
        cy, b = h * rng.uniform(0.52, 0.56), h * rng.uniform(0.42, 0.45)
    r = np.sqrt(((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2)
    breast = r <= 1.0
    muscle = np.zeros((h, w), np.uint8)
    if view == "MLO":
        pw, ph = w * rng.uniform(0.28, 0.36), h * rng.uniform(0.38, 0.46)
        sign = 1 if side == "LEFT" else -1
        tri = np.array([[cx, 0], [cx + sign * pw, 0], [cx, ph]], np.float32)
        cv2.fillPoly(muscle, [np.rint(tri).astype(np.int32)], 1)
        breast |= muscle.astype(bool)
    texture = (
        0.6 * _smooth_noise(rng, h, w, h / 6)
        + 0.3 * _smooth_noise(rng, h, w, h / 22)
        + 0.1 * _smooth_noise(rng, h, w, h / 90)
    )
    thickness = np.power(np.clip(1.0 - r**2, 0.0, 1.0), 0.3)
    tissue = (0.30 + 0.03 * density + (0.03 + 0.008 * density) * texture) * (0.4 + 0.6 * thickness)
    skin_px = max(1.0, 2.5 * h / 1024)
    skin = breast & (r > 1.0 - skin_px / min(a, b))
    tissue[skin] = 0.42
    if view == "MLO":
        m = cv2.GaussianBlur(muscle.astype(np.float32), (0, 0), max(1.0, h / 400))
        tissue = tissue * (1 - m) + (0.62 + 0.02 * texture) * m
    img = np.where(breast, tissue, 0.0).astype(np.float32)
    return img, breast, muscle.astype(bool), (cx, cy, a, b)


def _place(
    rng: np.random.Generator,
    geom: tuple[float, float, float, float],
    radius: float,
    taken: list[tuple[float, float, float]],
    muscle: np.ndarray,
    h: int,
    w: int,
    side: str,
) -> tuple[float, float] | None:
    """A lesion centre inside the breast, away from the skin, the muscle, the image edges and
    other lesions (``taken``: list of (x, y, r))."""
    cx, cy, a, b = geom
    sign = 1 if side == "LEFT" else -1
    for _ in range(300):
        rho = math.sqrt(rng.uniform(0.02, 0.6))
        th = rng.uniform(-math.pi / 2, math.pi / 2)
        x = cx + sign * a * rho * math.cos(th)
        y = cy + b * rho * math.sin(th)
        rn = math.hypot((x - cx) / a, (y - cy) / b)
        if rn + radius / min(a, b) > 0.9:
            continue
        if not (radius + 4 <= x <= w - radius - 5 and radius + 4 <= y <= h - radius - 5):
            continue
        if any(math.hypot(x - tx, y - ty) < radius + tr + 6 for tx, ty, tr in taken):
            continue
        x0, x1 = int(max(0, x - radius - 3)), int(min(w, x + radius + 4))
        y0, y1 = int(max(0, y - radius - 3)), int(min(h, y + radius + 4))
        if muscle[y0:y1, x0:x1].any():
            continue
        taken.append((x, y, radius))
        return x, y
    return None


def _size(rng: np.random.Generator, kind: str, a: float) -> float:
    (lo, hi), floor = _SIZE[kind]
    return max(floor, rng.uniform(lo, hi) * a)


def _draw_mass(rng: np.random.Generator, img: np.ndarray, x: float, y: float, extent: float, high: bool) -> np.ndarray:
    """Add a mass centred at (x, y) with overall extent ``extent`` px; return its bool mask."""
    h, w = img.shape
    R = extent / 2.0
    pad = int(math.ceil(R)) + 4
    x0, y0 = int(round(x)) - pad, int(round(y)) - pad
    size = 2 * pad + 1
    c = np.array([x - x0, y - y0])
    body = np.zeros((size, size), np.uint8)
    spic = np.zeros((size, size), np.uint8)
    if not high:
        rx, ry = R, R * rng.uniform(0.7, 1.0)
        cv2.ellipse(
            body,
            (int(round(c[0] * 16)), int(round(c[1] * 16))),
            (int(rx * 16), int(ry * 16)),
            rng.uniform(0, 180),
            0,
            360,
            1,
            -1,
            cv2.LINE_8,
            4,
        )
        amp, sigma = rng.uniform(0.24, 0.30), max(0.8, 0.12 * R)
    else:
        Rb = R / 1.35
        th = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        rr = np.ones_like(th)
        for k in range(2, 7):
            rr += rng.uniform(0.04, 0.10) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
        rr *= Rb / rr.max() * 1.05
        pts = np.stack([c[0] + rr * np.cos(th), c[1] + rr * np.sin(th)], 1)
        cv2.fillPoly(body, [np.rint(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        thick = max(1, int(round(Rb / 9)))
        n_spic = int(rng.integers(9, 15))
        base = rng.uniform(0, 2 * np.pi)
        for k in range(n_spic):  # spread around the body, so the extent is ~2R in every direction
            ang = base + (k + rng.uniform(-0.3, 0.3)) * 2 * np.pi / n_spic
            r0, r1 = 0.6 * Rb, R * rng.uniform(0.9, 0.99)
            p0 = (int(round(c[0] + r0 * math.cos(ang))), int(round(c[1] + r0 * math.sin(ang))))
            p1 = (int(round(c[0] + r1 * math.cos(ang))), int(round(c[1] + r1 * math.sin(ang))))
            cv2.line(spic, p0, p1, 1, thick)
        amp, sigma = rng.uniform(0.40, 0.46), max(0.6, 0.04 * R)
    soft = cv2.GaussianBlur(body.astype(np.float32), (0, 0), sigma)
    dist = cv2.distanceTransform(body, cv2.DIST_L2, 3)
    dome = 0.8 + 0.2 * dist / max(float(dist.max()), 1.0)
    layer = amp * soft * np.maximum(dome, 0.8)
    if high:
        layer = np.maximum(layer, 0.75 * amp * cv2.GaussianBlur(spic.astype(np.float32), (0, 0), 0.5))
    region = (body | spic).astype(bool)
    _paste_add(img, layer, x0, y0)
    full = np.zeros((h, w), bool)
    _paste_or(full, region, x0, y0)
    return full


def _draw_calc_cluster(rng: np.random.Generator, img: np.ndarray, x: float, y: float, extent: float) -> np.ndarray:
    """Add a cluster of tiny bright specks; return the cluster's bool mask (hull + margin)."""
    h, w = img.shape
    R = extent / 2.0
    dil = max(2, int(round(0.1 * extent)))
    pad = int(math.ceil(R)) + 4
    x0, y0 = int(round(x)) - pad, int(round(y)) - pad
    size = 2 * pad + 1
    cx, cy = x - x0, y - y0
    n = int(rng.integers(6, 14)) + int(extent / 10)
    rad = (R - dil - 1) * np.sqrt(rng.uniform(0.0, 1.0, n))
    ang = rng.uniform(0, 2 * np.pi, n)
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
    specks = np.zeros((size, size), np.float32)
    unit = h / 1024
    for (px, py), s in zip(pts, rng.integers(1, 4, n)):
        sp = max(1, int(round(s * unit)))
        ix, iy = int(round(px - (sp - 1) / 2)), int(round(py - (sp - 1) / 2))
        specks[iy : iy + sp, ix : ix + sp] = rng.uniform(0.5, 0.6)
    hull = cv2.convexHull(np.rint(pts).astype(np.int32))
    region: np.ndarray = np.zeros((size, size), np.uint8)
    cv2.fillPoly(region, [hull], 1)
    region = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dil + 1, 2 * dil + 1)))
    _paste_add(img, specks, x0, y0)
    full = np.zeros((h, w), bool)
    _paste_or(full, region.astype(bool), x0, y0)
    return full


def _paste_add(img: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    h, w = img.shape
    ph, pw = patch.shape
    ys, xs = slice(max(0, y0), min(h, y0 + ph)), slice(max(0, x0), min(w, x0 + pw))
    img[ys, xs] += patch[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def _paste_or(mask: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    h, w = mask.shape
    ph, pw = patch.shape
    ys, xs = slice(max(0, y0), min(h, y0 + ph)), slice(max(0, x0), min(w, x0 + pw))
    mask[ys, xs] |= patch[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def render_mammogram(
    rng: np.random.Generator,
    height: int,
    width: int,
    side: str,
    view: str,
    density: int,
    lesions: Sequence[tuple[str, int]],
) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Draw one mammogram with the given lesions.

    Args:
        lesions: ``(kind, n_regions)`` per abnormality; kind is ``mass_low``, ``mass_high`` or
            ``calcification`` (only calcifications may have 2 regions).

    Returns the image (float32 in [0, 1], 0 = background, 1 = brightest) and, per abnormality,
    one bool mask per region (an abnormality that does not fit in the breast gets no masks).
    """
    img, breast, muscle, geom = _breast(rng, height, width, side, view, density)
    a = geom[2]
    taken: list[tuple[float, float, float]] = []
    masks: list[list[np.ndarray]] = []
    for kind, n_regions in lesions:
        regions = []
        for _ in range(n_regions):
            extent = _size(rng, kind, a) * (0.85 if n_regions > 1 else 1.0)
            pos = _place(rng, geom, extent / 2 + 1, taken, muscle, height, width, side)
            if pos is None:
                continue
            if kind == "calcification":
                regions.append(_draw_calc_cluster(rng, img, pos[0], pos[1], extent))
            else:
                regions.append(_draw_mass(rng, img, pos[0], pos[1], extent, high=kind == "mass_high"))
        masks.append(regions)
    noise = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 0.7)
    img = np.where(breast, img + 0.012 * noise, 0.0)
    return np.clip(img, 0.0, 1.0).astype(np.float32), masks


# ------------------------------------------------------------------------------ film artefacts
# What digitised films and digital mammograms carry besides the breast (render_film).
ARTEFACTS = ("border", "label", "marker", "ruler", "tape", "gradient", "dense", "monochrome1")


@dataclass
class Film:
    """A mammogram with artefacts (:func:`render_film`).

    ``image``: float32 in [0, 1] (1 = bright, as displayed; ``photometric`` says how to store it);
    ``boxes``: COCO ``[x, y, w, h]`` of the lesions; ``tissue``: the breast's pixels; ``labels``: the
    pixels of burned-in text labels and laterality markers; ``strips``: rulers and tape; ``side``
    (``LEFT``/``RIGHT``: the chest wall is on that edge); ``artefacts``: those drawn."""

    image: np.ndarray
    boxes: list[list[int]]
    tissue: np.ndarray
    labels: np.ndarray
    strips: np.ndarray
    side: str
    view: str
    artefacts: tuple[str, ...]
    photometric: str = "MONOCHROME2"


def _text(img: np.ndarray, mask: np.ndarray, text: str, x: int, y: int, height: int, value: float) -> None:
    """Bright text whose top-left corner is (x, y), ``height`` px tall; its pixels go into ``mask``."""
    scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, max(4, height), 2)
    thick = max(1, height // 6)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    layer = np.zeros(img.shape, np.uint8)
    cv2.putText(layer, text, (x, y + th), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
    on = layer > 0
    img[on] = np.maximum(img[on], value * layer[on] / 255.0)
    mask |= on


def _text_width(text: str, height: int) -> int:
    scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, max(4, height), 2)
    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, height // 6))[0][0]


def render_film(
    rng: np.random.Generator,
    height: int,
    width: int,
    side: str,
    view: str,
    lesions: Sequence[tuple[str, int]] = (("mass_high", 1),),
    artefacts: Sequence[str] = (),
    density: int = 2,
) -> Film:
    """A mammogram on a film with the given ``artefacts`` (each switchable, all drawn from ``rng``):

    - ``border``: bright film-border rows / columns, 1-3 px, along one to four random edges;
    - ``label``: a burned-in film label (``LCC``, ``RMLO``...) near the edge away from the chest wall;
    - ``marker``: a laterality marker (a framed ``L``/``R``) near a corner away from the chest wall;
    - ``ruler``: a ticked ruler strip along the edge away from the chest wall;
    - ``tape``: a semi-transparent tape strip across a corner away from the chest wall;
    - ``gradient``: a scanner edge gradient (background brightening towards one edge);
    - ``dense``: a dense breast of low contrast against a lifted background;
    - ``monochrome1``: to be stored inverted (``photometric`` MONOCHROME1; ``image`` stays as displayed).

    The breast covers part of the film (the rest is background, as on digitised films), so labels
    sit where real ones do: on the background, away from the breast.
    """
    unknown = sorted(set(artefacts) - set(ARTEFACTS))
    if unknown:
        raise ConfigError(f"artefacts: unknown {unknown}; expected some of {list(ARTEFACTS)}")
    arts = tuple(a for a in ARTEFACTS if a in artefacts)
    breast_w = int(round(width * rng.uniform(0.62, 0.75)))
    img_b, masks = render_mammogram(rng, height, breast_w, side, view, 4 if "dense" in arts else density, lesions)
    img = np.zeros((height, width), np.float32)
    x_off = 0 if side == "LEFT" else width - breast_w
    img[:, x_off : x_off + breast_w] = img_b
    tissue = img > 0
    boxes = []
    for regions in masks:
        for m in regions:
            ys, xs = np.nonzero(m)
            boxes.append(
                [int(xs.min()) + x_off, int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            )
    if "dense" in arts:
        base = float(rng.uniform(0.08, 0.16))
        img = np.where(tissue, base + 0.1 + 0.45 * img, base).astype(np.float32)
    if "gradient" in arts:
        edge = int(rng.integers(4))
        n = height if edge < 2 else width
        ramp = np.clip(1.0 - np.arange(n) / (0.12 * n), 0.0, 1.0).astype(np.float32) * float(rng.uniform(0.05, 0.1))
        ramp = ramp if edge % 2 == 0 else ramp[::-1]
        img += np.where(tissue, 0.0, ramp[:, None] if edge < 2 else ramp[None, :]).astype(np.float32)
    labels = np.zeros((height, width), bool)
    strips = np.zeros((height, width), bool)
    free = width - breast_w  # background columns on the far side
    if "label" in arts:
        text = ("L" if side == "LEFT" else "R") + view
        th = max(6, int(height * rng.uniform(0.025, 0.04)))
        tw = _text_width(text, th)
        th = max(6, int(th * min(1.0, free * 0.6 / max(1, tw))))
        x = (width - free + int(free * 0.1)) if side == "LEFT" else int(free * 0.3)
        y = int(height * rng.uniform(0.06, 0.2)) if rng.random() < 0.5 else int(height * rng.uniform(0.75, 0.9))
        _text(img, labels, text, x, y, th, float(rng.uniform(0.8, 1.0)))
    if "marker" in arts:
        s = max(8, int(min(height, free) * rng.uniform(0.05, 0.08)))
        x = (width - free + int(free * 0.5)) if side == "LEFT" else int(free * 0.5) - s
        y = int(height * rng.uniform(0.3, 0.6))
        box = np.zeros((height, width), np.uint8)
        cv2.rectangle(box, (x, y), (x + s, y + s), 1, max(1, s // 8))
        img[box > 0] = 0.95
        labels |= box > 0
        _text(img, labels, "L" if side == "LEFT" else "R", x + s // 4, y + s // 5, int(s * 0.6), 0.95)
    if "ruler" in arts:
        rw = max(3, int(width * rng.uniform(0.02, 0.035)))
        x0 = width - rw - 4 if side == "LEFT" else 4
        y0, y1 = int(height * 0.1), int(height * 0.9)
        img[y0:y1, x0 : x0 + rw] = 0.55
        for ty in range(y0, y1, max(3, height // 60)):
            img[ty, x0 : x0 + rw // 2] = 0.9
        strips[y0:y1, x0 : x0 + rw] = True
    if "tape" in arts:
        tw_, th_ = int(free * rng.uniform(0.4, 0.6)), int(height * rng.uniform(0.04, 0.07))
        x0 = width - tw_ - 6 if side == "LEFT" else 6
        y0 = 6 if rng.random() < 0.5 else height - th_ - 6
        img[y0 : y0 + th_, x0 : x0 + tw_] += 0.3
        strips[y0 : y0 + th_, x0 : x0 + tw_] = True
    if "border" in arts:
        for edge in rng.permutation(4)[: int(rng.integers(1, 5))]:
            k = int(rng.integers(1, 4))
            v = float(rng.uniform(0.8, 1.0))
            if edge == 0:
                img[:k, :] = v
            elif edge == 1:
                img[-k:, :] = v
            elif edge == 2:
                img[:, :k] = v
            else:
                img[:, -k:] = v
    return Film(
        np.clip(img, 0.0, 1.0).astype(np.float32),
        boxes,
        tissue,
        labels,
        strips,
        side,
        view,
        arts,
        "MONOCHROME1" if "monochrome1" in arts else "MONOCHROME2",
    )


# ------------------------------------------------------------------------------ CBIS-DDSM tree
@dataclass
class _Abn:
    kind: str
    regions: int
    assessment: int
    pathology: str
    subtlety: int
    shape_or_type: str
    margins_or_distribution: str


def _plan_abnormalities(rng: np.random.Generator, forced: Sequence[tuple[str, int]] | None) -> list[_Abn]:
    if forced is None:
        n = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        kinds = [(str(rng.choice(["mass_low", "mass_high", "calcification"])), 1) for _ in range(n)]
        kinds = [(k, 2 if k == "calcification" and rng.random() < 0.35 else 1) for k, _ in kinds]
    else:
        kinds = list(forced)
    out = []
    for kind, regions in kinds:
        if kind == "mass_low":
            assessment = int(rng.integers(2, 4))
            pathology = str(rng.choice(["BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT"], p=[0.6, 0.3, 0.1]))
            a, b = str(rng.choice(["ROUND", "OVAL"])), "CIRCUMSCRIBED"
        elif kind == "mass_high":
            assessment = int(rng.integers(4, 6))
            pathology = str(rng.choice(["MALIGNANT", "BENIGN"], p=[0.85, 0.15]))
            a, b = (
                str(rng.choice(["IRREGULAR", "LOBULATED"])),
                str(rng.choice(["SPICULATED", "ILL_DEFINED"], p=[0.8, 0.2])),
            )
        else:
            assessment = int(rng.integers(2, 6))
            p_malignant = 0.7 if assessment >= 4 else 0.1
            pathology = (
                "MALIGNANT" if rng.random() < p_malignant else str(rng.choice(["BENIGN", "BENIGN_WITHOUT_CALLBACK"]))
            )
            a = str(rng.choice(["PUNCTATE", "AMORPHOUS", "PLEOMORPHIC", "FINE_LINEAR_BRANCHING"]))
            b = "SEGMENTAL" if regions > 1 else "CLUSTERED"
        out.append(_Abn(kind, regions, assessment, pathology, int(rng.integers(1, 6)), a, b))
    return out


def _uid(seed: int, *parts: str) -> str:
    return str(generate_uid(_UID_ROOT, entropy_srcs=["meddet-synth", str(seed), *parts]))


def _encoding(k: int) -> dict[str, Any]:
    """Storage variant of the k-th unique mammogram; cycles so that small trees cover every case."""
    bits = 12 if k % 2 else 16
    rescale = (2.0, -1024.0) if k % 4 == 3 else None
    smax = 2**bits - 1
    lo, hi = (0.0, float(smax)) if rescale is None else (-1024.0, smax * 2.0 - 1024.0)
    windows = None
    if k % 4 == 1:
        full = ((lo + hi) / 2 + 0.5, hi - lo + 1)
        windows = [full, (lo + 0.6 * (hi - lo), 0.5 * (hi - lo))] if k % 8 == 5 else [full]
    voi = None
    if k % 5 == 2 and rescale is None:
        voi = np.rint(65535 * np.power(np.arange(smax + 1) / smax, 0.8)).astype(np.uint16)
    return {
        "bits_stored": bits,
        "photometric": "MONOCHROME1" if k % 3 == 1 else "MONOCHROME2",
        "rescale": rescale,
        "windows": windows,
        "voi_lut": voi,
    }


def _orientation(side: str, view: str) -> list[str]:
    row = "A" if side == "LEFT" else "P"
    col = ("R" if side == "LEFT" else "L") if view == "CC" else "F"
    return [row, col]


def make_cbis_ddsm(
    out_dir: str | os.PathLike,
    n_patients: int = 20,
    seed: int = 0,
    image_size: tuple[int, int] = (1024, 640),
    test_every: int = 5,
    quirks: bool = False,
) -> dict[str, Any]:
    """Write a synthetic CBIS-DDSM release under ``out_dir``.

    Args:
        n_patients: patients ``P_xxxxx`` (ids with gaps, as in the release); each has one or
            both breasts with abnormalities, each such breast a CC and an MLO image with 1-3
            abnormalities. The first patient always has both breasts, a high-suspicion mass and
            a two-cluster calcification on one image.
        seed: everything is a function of it (pixels, CSVs, UIDs).
        image_size: ``(height, width)`` of the full mammograms (at least 64 x 48).
        test_every: every n-th patient is a "Test" case (``Mass-Test_``/``Calc-Test_``), the
            others "Training".
        quirks: also break the tree the ways real downloads are broken (needs >= 3 patients):
            one full mammogram truncated (corrupt DICOM), one deleted while its CSV rows stay
            (missing file), one ROI mask stored a few percent larger than its mammogram.

    Returns a dict with ``root`` (``out_dir``), ``dicom_root`` (``out_dir/CBIS-DDSM``),
    ``mass_csvs`` and ``calc_csvs`` (train and test CSV paths), ``n_patients``, ``n_images``
    (unique mammograms), ``n_abnormalities``, ``n_dicom_files`` and ``abnormalities``: one dict
    per CSV row with ``image`` (``P_00001_LEFT_CC``), ``csv``, ``kind`` (``mass_low``,
    ``mass_high``, ``calcification``), ``assessment`` and ``regions``. With ``quirks``,
    ``quirks`` maps ``corrupt``, ``missing`` and ``mismatched_mask`` to the image keys affected
    (and ``mismatched_case`` to the abnormality folder of the resized mask).
    """
    h, w = int(image_size[0]), int(image_size[1])
    if h < 64 or w < 48:
        raise ConfigError(f"image_size: expected at least (64, 48), found {tuple(image_size)}")
    if n_patients < (3 if quirks else 1):
        raise ConfigError(f"n_patients: expected at least {3 if quirks else 1}, found {n_patients}")
    out = Path(out_dir)
    root = out / "CBIS-DDSM"
    rows: dict[tuple[str, str], list[list[str]]] = {key: [] for key in CSV_NAMES}
    abn_list: list[dict[str, Any]] = []
    image_counter = 0
    abn_counter = 0
    n_files = 0
    pid_num = 0
    id_rng = np.random.default_rng([seed, 0])
    for i in range(n_patients):
        rng = np.random.default_rng([seed, i + 1])
        pid_num += 1 + (int(id_rng.integers(0, 3)) if i else 0)
        pid = f"P_{pid_num:05d}"
        split = "Test" if test_every > 0 and i % test_every == test_every - 1 else "Training"
        density = int(rng.integers(1, 5))
        if i == 0:
            sides = ["LEFT", "RIGHT"]
        else:
            sides = [str(rng.choice(["LEFT", "RIGHT"]))]
            if rng.random() < 0.4:
                sides = ["LEFT", "RIGHT"]
        for side in sides:
            for view in ("CC", "MLO"):
                forced = None
                if i == 0 and side == "LEFT" and view == "CC":
                    forced = [("mass_high", 1), ("calcification", 2)]
                elif i == 1 and side == sides[0] and view == "CC":
                    forced = [("mass_low", 1)]
                plan = _plan_abnormalities(rng, forced)
                img01, masks = render_mammogram(rng, h, w, side, view, density, [(a.kind, a.regions) for a in plan])
                kept = [(a, m) for a, m in zip(plan, masks) if m]
                if not kept:
                    continue
                enc = _encoding(image_counter)
                full_name = "1-1.dcm" if image_counter % 3 == 2 else "000000.dcm"
                image_counter += 1
                key = f"{pid}_{side}_{view}"
                written: dict[str, str] = {}
                per_type_id = {"Mass": 0, "Calc": 0}
                for abn, regions in kept:
                    kind = "Calc" if abn.kind == "calcification" else "Mass"
                    prefix = f"{kind}-{split}"
                    image_folder = f"{prefix}_{key}"
                    if prefix not in written:
                        study, series = _uid(seed, image_folder, "study"), _uid(seed, image_folder, "series")
                        ds = encode_dicom(
                            img01,
                            **enc,
                            attributes=_attrs(pid, image_folder, side, view, study, series, "full mammogram images"),
                            uid_entropy=[str(seed), image_folder],
                        )
                        save_dicom(ds, root / image_folder / study / series / full_name)
                        n_files += 1
                        written[prefix] = f"{image_folder}/{study}/{series}/000000.dcm"
                    per_type_id[kind] += 1
                    abn_id = per_type_id[kind]
                    abn_folder = f"{image_folder}_{abn_id}"
                    crop_path, mask_path = _write_abnormality(
                        root, abn_folder, img01, enc, regions, pid, side, view, seed, abn_counter
                    )
                    abn_counter += 1
                    n_files += 2
                    common = [str(density), side, view, str(abn_id)]
                    if kind == "Mass":
                        row = [pid, *common, "mass", abn.shape_or_type, abn.margins_or_distribution]
                    else:
                        row = [pid, *common, "calcification", abn.shape_or_type, abn.margins_or_distribution]
                    row += [
                        str(abn.assessment),
                        abn.pathology,
                        str(abn.subtlety),
                        written[prefix],
                        crop_path,
                        mask_path,
                    ]
                    rows[(kind, split)].append(row)
                    abn_list.append(
                        {
                            "image": key,
                            "csv": CSV_NAMES[(kind, split)],
                            "kind": abn.kind,
                            "assessment": abn.assessment,
                            "regions": len(regions),
                        }
                    )
    out.mkdir(parents=True, exist_ok=True)
    quirk_info = _add_quirks(root, rows) if quirks else {}
    paths = {}
    for (kind, split), name in CSV_NAMES.items():
        path = out / name
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(MASS_HEADER if kind == "Mass" else CALC_HEADER)
            writer.writerows(rows[(kind, split)])
        paths[(kind, split)] = path
    logger.info(
        "synthetic CBIS-DDSM: %d patients, %d mammograms, %d abnormalities in %s",
        n_patients,
        image_counter,
        abn_counter,
        root,
    )
    return {
        "root": out,
        "dicom_root": root,
        "mass_csvs": [paths[("Mass", "Training")], paths[("Mass", "Test")]],
        "calc_csvs": [paths[("Calc", "Training")], paths[("Calc", "Test")]],
        "n_patients": n_patients,
        "n_images": image_counter,
        "n_abnormalities": abn_counter,
        "n_dicom_files": n_files,
        "abnormalities": abn_list,
        **({"quirks": quirk_info} if quirks else {}),
    }


def _add_quirks(root: Path, rows: dict[tuple[str, str], list[list[str]]]) -> dict[str, str]:
    """Break three images of a written tree (see ``make_cbis_ddsm(quirks=True)``)."""
    by_key: dict[str, list[list[str]]] = {}
    for key in sorted(rows):
        for row in rows[key]:
            by_key.setdefault(f"{row[0]}_{row[2]}_{row[3]}", []).append(row)
    first_patient = min(r[0] for rs in rows.values() for r in rs)
    keys = [k for k in sorted(by_key) if not k.startswith(first_patient + "_")]
    corrupt, missing, mismatched = keys[0], keys[1], keys[2]
    for row in by_key[corrupt]:  # truncated in the middle of the pixel data
        for path in (root / PurePosixPath(row[11]).parts[0]).rglob("*.dcm"):
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
    for row in by_key[missing]:
        for path in (root / PurePosixPath(row[11]).parts[0]).rglob("*.dcm"):
            path.unlink()
    case = PurePosixPath(by_key[mismatched][0][13]).parts[0]
    for path in sorted((root / case).rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        if ds.BitsStored == 8 and set(np.unique(arr).tolist()) == {0, 255}:
            rows_, cols = int(round(arr.shape[0] * 1.04)), int(round(arr.shape[1] * 1.03))
            big = cv2.resize(arr, (cols, rows_), interpolation=cv2.INTER_NEAREST)
            ds.Rows, ds.Columns = rows_, cols
            ds.PixelData = big.tobytes() + (b"\x00" if big.size % 2 else b"")
            save_dicom(ds, path)
    logger.info("synthetic CBIS-DDSM quirks: corrupt %s, missing %s, mismatched mask %s", corrupt, missing, case)
    return {"corrupt": corrupt, "missing": missing, "mismatched_mask": mismatched, "mismatched_case": case}


# Identifying values written into the synthetic re-release's dicom_info.csv; no output may carry them.
IDENTIFYING_INFO = {
    "PatientName": "DOE^JANE^Q",
    "PatientBirthDate": "19480229",
    "AccessionNumber": "ACC-5550199",
    "ReferringPhysicianName": "WELBY^MARCUS",
    "StudyDate": "20160720",
    "OtherPatientIDs": "MRN-99812345",
}
_INFO_HEADER = [
    "file_path",
    "image_path",
    "AccessionNumber",
    "BitsAllocated",
    "BitsStored",
    "Columns",
    "Laterality",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientID",
    "PatientName",
    "PatientOrientation",
    "PatientSex",
    "PhotometricInterpretation",
    "ReferringPhysicianName",
    "Rows",
    "SOPInstanceUID",
    "SeriesDescription",
    "SeriesInstanceUID",
    "StudyDate",
    "StudyInstanceUID",
]


def make_cbis_ddsm_jpeg(
    out_dir: str | os.PathLike,
    n_patients: int = 20,
    seed: int = 0,
    image_size: tuple[int, int] = (1024, 640),
    test_every: int = 5,
) -> dict[str, Any]:
    """Write a synthetic CBIS-DDSM in the layout of the popular JPEG re-release.

    ``out_dir/csv/`` holds the four description CSVs (whose paths, as in the re-release, name
    the TCIA files, not the JPEGs) and ``dicom_info.csv``; ``out_dir/jpeg/<SeriesInstanceUID>/``
    holds ``1-N.jpg`` files (8-bit, lossy, masks included). Quirks of the real file kept:
    ``dicom_info.csv`` carries identifying columns (filled with :data:`IDENTIFYING_INFO`) and one
    ROI mask row has a blank ``SeriesDescription``.

    Returns ``root``, ``dicom_info``, ``mass_csvs``, ``calc_csvs``, ``n_images``,
    ``abnormalities`` (as :func:`make_cbis_ddsm`) and ``identifying_values``.
    """
    import tempfile

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tcia = make_cbis_ddsm(tmp, n_patients=n_patients, seed=seed, image_size=image_size, test_every=test_every)
        csv_dir = out / "csv"
        csv_dir.mkdir(parents=True, exist_ok=True)
        for src in tcia["mass_csvs"] + tcia["calc_csvs"]:
            (csv_dir / Path(src).name).write_bytes(Path(src).read_bytes())
        info_rows = []
        blanked = False
        for n, path in enumerate(sorted(Path(tcia["dicom_root"]).rglob("*.dcm")), start=1):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            series, desc = str(ds.SeriesInstanceUID), str(ds.SeriesDescription)
            if desc == "ROI mask images" and not blanked:
                desc, blanked = "", True
            rel = f"{series}/1-{n}"
            target = out / "jpeg" / f"{rel}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), read_dicom(path, gamma=1.0), [cv2.IMWRITE_JPEG_QUALITY, 90])
            values = {
                **IDENTIFYING_INFO,
                "file_path": f"CBIS-DDSM/dicom/{rel}.dcm",
                "image_path": f"CBIS-DDSM/jpeg/{rel}.jpg",
                "BitsAllocated": ds.BitsAllocated,
                "BitsStored": ds.BitsStored,
                "Columns": ds.Columns,
                "Laterality": ds.get("Laterality", ""),
                "PatientID": str(ds.PatientName),  # the case folder, as in the release
                "PatientOrientation": "\\".join(ds.get("PatientOrientation", [])),
                "PatientSex": "F",
                "PhotometricInterpretation": "MONOCHROME2",
                "Rows": ds.Rows,
                "SOPInstanceUID": str(ds.SOPInstanceUID),
                "SeriesDescription": desc,
                "SeriesInstanceUID": series,
                "StudyInstanceUID": str(ds.StudyInstanceUID),
            }
            info_rows.append([values[c] for c in _INFO_HEADER])
    info_csv = csv_dir / "dicom_info.csv"
    with open(info_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(_INFO_HEADER)
        writer.writerows(info_rows)
    return {
        "root": out,
        "dicom_info": info_csv,
        "mass_csvs": [csv_dir / Path(p).name for p in tcia["mass_csvs"]],
        "calc_csvs": [csv_dir / Path(p).name for p in tcia["calc_csvs"]],
        "n_images": tcia["n_images"],
        "abnormalities": tcia["abnormalities"],
        "identifying_values": dict(IDENTIFYING_INFO),
    }


def _attrs(pid: str, folder: str, side: str, view: str, study: str, series: str, description: str) -> dict[str, Any]:
    return {
        "PatientID": pid,
        "PatientName": folder,
        "BodyPartExamined": "BREAST",
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "SeriesDescription": description,
        "Laterality": side[0],
        "ViewPosition": view,
        "PatientOrientation": _orientation(side, view),
    }


def _write_abnormality(
    root: Path,
    folder: str,
    img01: np.ndarray,
    enc: dict[str, Any],
    regions: list[np.ndarray],
    pid: str,
    side: str,
    view: str,
    seed: int,
    counter: int,
) -> tuple[str, str]:
    """Write the crop and the ROI mask of one abnormality; return the CSV's (crop, mask) paths."""
    h, w = img01.shape
    union = np.logical_or.reduce(regions)
    ys, xs = np.nonzero(union)
    my, mx = max(4, int(0.2 * (ys.max() - ys.min()))), max(4, int(0.2 * (xs.max() - xs.min())))
    y0, y1 = max(0, ys.min() - my), min(h, ys.max() + my + 1)
    x0, x1 = max(0, xs.min() - mx), min(w, xs.max() + mx + 1)
    study, series = _uid(seed, folder, "study"), _uid(seed, folder, "series")
    crop_ds = encode_dicom(
        img01[y0:y1, x0:x1],
        bits_stored=enc["bits_stored"],
        photometric=enc["photometric"],
        sop_class=SECONDARY_CAPTURE,
        attributes=_attrs(pid, folder, side, view, study, series, "cropped images"),
        uid_entropy=[str(seed), folder, "crop"],
    )
    mask_ds = encode_dicom(
        union.astype(np.float32),
        bits_stored=8,
        sop_class=SECONDARY_CAPTURE,
        attributes=_attrs(pid, folder, side, view, study, series, "ROI mask images"),
        uid_entropy=[str(seed), folder, "mask"],
    )
    # Naming styles seen in the release and in newer downloads; the mask is not always second.
    style = counter % 4
    names = {
        0: ("000000.dcm", "000001.dcm"),
        1: ("1-2.dcm", "1-1.dcm"),
        2: ("000001.dcm", "000000.dcm"),
        3: ("1-1.dcm", "1-2.dcm"),
    }[style]
    folder_path = root / folder / study / series
    save_dicom(crop_ds, folder_path / names[0])
    save_dicom(mask_ds, folder_path / names[1])
    rel = f"{folder}/{study}/{series}"
    return f"{rel}/000000.dcm", f"{rel}/000001.dcm"


# ------------------------------------------------------------------------------ box CSV
def make_box_csv_dataset(
    out_dir: str | os.PathLike,
    n_images: int = 8,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 128),
    n_patients: int = 4,
) -> dict[str, Any]:
    """Write a small dataset in the box-CSV format: ``images/*.png`` + ``boxes.csv`` with the
    columns ``image,x,y,width,height,class,patient_id``.

    Classes ``round`` (bright discs) and ``square`` (bright squares) on a noisy background; every
    third image is 16-bit; the last image has no objects (one row with empty box fields).
    Returns ``csv``, ``images_dir`` and ``boxes``: ``{image name: [(x, y, w, h, class), ...]}``.
    """
    out = Path(out_dir)
    images_dir = out / "images"
    h, w = int(image_size[0]), int(image_size[1])
    rng = np.random.default_rng(seed)
    boxes: dict[str, list[tuple[int, int, int, int, str]]] = {}
    rows: list[list[str]] = []
    for i in range(n_images):
        name = f"img_{i:03d}.png"
        img = np.clip(0.2 + 0.05 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)
        objs: list[tuple[int, int, int, int, str]] = []
        n_obj = 0 if i == n_images - 1 else int(rng.integers(1, 4))
        for _ in range(n_obj):
            s = int(rng.integers(max(4, h // 12), max(5, h // 5)))
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            if any(x < ox + ow and ox < x + s and y < oy + oh and oy < y + s for ox, oy, ow, oh, _ in objs):
                continue
            cls = str(rng.choice(["round", "square"]))
            if cls == "square":
                img[y : y + s, x : x + s] = 0.9
            else:
                canvas = np.zeros((h, w), np.uint8)
                cv2.circle(canvas, (x * 16 + (s - 1) * 8, y * 16 + (s - 1) * 8), (s - 1) * 8, 1, -1, cv2.LINE_8, 4)
                ys, xs = np.nonzero(canvas)
                img[canvas.astype(bool)] = 0.9
                x, y, s_w, s_h = (
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                )
                objs.append((x, y, s_w, s_h, cls))
                continue
            objs.append((x, y, s, s, cls))
        deep = i % 3 == 2
        write_png(images_dir / name, np.rint(img * (65535 if deep else 255)).astype(np.uint16 if deep else np.uint8))
        patient = f"case{i % max(1, n_patients):02d}"
        boxes[name] = objs
        if objs:
            rows += [[name, str(x), str(y), str(bw), str(bh), c, patient] for x, y, bw, bh, c in objs]
        else:
            rows.append([name, "", "", "", "", "", patient])
    csv_path = out / "boxes.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "x", "y", "width", "height", "class", "patient_id"])
        writer.writerows(rows)
    return {"csv": csv_path, "images_dir": images_dir, "boxes": boxes}
