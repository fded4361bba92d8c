"""Reading any supported image (DICOM, PNG, JPEG, TIFF, BMP, PGM) into a numpy array, and writing
PNGs atomically.

Conventions of the arrays returned by :func:`read_image`: greyscale images are 2-D ``uint8`` or
``uint16``; colour images are ``(H, W, 3)`` ``uint8`` in OpenCV's BGR order.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from meddet.errors import DataError, DicomError
from meddet.io.dicom import DICM_MAGIC, DICM_OFFSET, dicom_to_array, load_dicom, read_dicom

logger = logging.getLogger(__name__)

__all__ = ["effective_bit_depth", "read_image", "read_image_bits", "write_png"]

# Magic numbers of the raster formats OpenCV reads here.
_RASTER_MAGICS = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
    b"BM",  # BMP
    b"P5\n",  # binary PGM (MIAS), header on its own line
    b"P5 ",
    b"P5\r",
)


def read_image(path: str | os.PathLike, **dicom_kwargs: Any) -> np.ndarray:
    """See :func:`read_image_bits` (this returns only the array)."""
    return read_image_bits(path, **dicom_kwargs)[0]


def effective_bit_depth(image: np.ndarray) -> int:
    """How many bits the values of an unsigned integer image use: the bit length of its maximum
    (at least 1), e.g. 12 for a 16-bit PNG whose values stay below 4096."""
    return max(1, int(image.max()).bit_length()) if image.size else 1


# Effective bit depths already reported in the log (once per depth and process).
_REPORTED_BITS: set[int] = set()


def read_image_bits(path: str | os.PathLike, **dicom_kwargs: Any) -> tuple[np.ndarray, int | None]:
    """Read a DICOM, PNG, JPEG, TIFF, BMP or PGM file, deciding the format by content, not by name.

    DICOM files ('DICM' at byte 128, or a raw dataset pydicom can force-read) go through
    :func:`meddet.io.dicom.read_dicom` with ``dicom_kwargs`` (``bit_depth``, ``gamma``, ...);
    other formats are read unchanged by OpenCV (``dicom_kwargs`` do not apply to them).

    Returns a 2-D ``uint8``/``uint16`` array for greyscale images or an ``(H, W, 3)`` BGR ``uint8``
    array for colour ones (an alpha channel is dropped, 16-bit colour is scaled to 8 bits), and the
    effective bit depth of a 16-bit greyscale raster whose values use fewer bits (else None).
    Such an image (e.g. 12-bit data stored in a 16-bit PNG or TIFF, maximum below 4096) is scaled
    to the full 16-bit range (normalized by its effective depth, not by 65535, which would leave it
    nearly black); the first such image of each depth is reported in the log.
    Raises :class:`DataError` naming the file when it is missing or not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found" if not path.exists() else f"{path}: not a file")
    with open(path, "rb") as f:
        head = f.read(DICM_OFFSET + 4)
    if not head:
        raise DataError(f"{path}: empty file (expected a PNG, JPEG, TIFF, BMP, PGM or DICOM image)")
    if head[DICM_OFFSET : DICM_OFFSET + 4] == DICM_MAGIC:
        return read_dicom(path, **dicom_kwargs), None
    if head.startswith(_RASTER_MAGICS):
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataError(f"{path}: cannot decode the image (corrupt or truncated {_format_name(head)} file)")
        img = _to_contract(img, path)
        bits = None
        if img.ndim == 2 and img.dtype == np.uint16:
            bits = effective_bit_depth(img)
            if bits < 16 and img.max() > 0:
                if bits not in _REPORTED_BITS:
                    _REPORTED_BITS.add(bits)
                    logger.info("%s: 16-bit image whose values use %d bits (max %d); normalized by its %d-bit "
                                "range (further such images are not reported)", path, bits, int(img.max()), bits)
                scale = 65535.0 / float(2**bits - 1)
                img = np.minimum(np.rint(img.astype(np.float32) * scale), 65535).astype(np.uint16)
            else:
                bits = None
        return img, bits
    try:
        # A DICOM dataset without the Part-10 preamble is still a DICOM.
        ds = load_dicom(path)
    except DicomError:
        raise DataError(f"{path}: not a readable image (expected a PNG, JPEG, TIFF, BMP, PGM or DICOM file)") from None
    return dicom_to_array(ds, source=path, **dicom_kwargs), None


def _format_name(head: bytes) -> str:
    for magic, name in zip(_RASTER_MAGICS, ("PNG", "JPEG", "TIFF", "TIFF", "BMP", "PGM", "PGM", "PGM")):
        if head.startswith(magic):
            return name
    return "image"


def _to_contract(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: pixel type {img.dtype} is not supported (expected 8- or 16-bit unsigned integers)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return img
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise DataError(f"{path}: image has shape {img.shape} (expected greyscale, BGR or BGRA)")
    if img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.dtype == np.uint16:
        img = np.rint(img / 257.0).astype(np.uint8)
    return np.ascontiguousarray(img)


def write_png(path: str | os.PathLike, array: np.ndarray) -> str:
    """Write a 2-D (greyscale) or ``(H, W, 3|4)`` (BGR/BGRA) ``uint8``/``uint16`` array as PNG.

    Atomic: the file is written under a temporary name in the same folder and renamed, so an
    interrupted run never leaves a truncated PNG behind. Parent folders are created. OpenCV's
    default PNG settings are kept: they are its fastest (zlib level 1, RLE strategy) and the file
    is lossless whatever the level. The PNG carries no text metadata.

    Returns the SHA-256 (hex) of the bytes written, for manifests.
    """
    path = Path(path)
    if array.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: cannot write a {array.dtype} array as PNG (expected uint8 or uint16)")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise DataError(f"{path}: cannot write an array of shape {array.shape} as PNG (expected (H, W) or (H, W, 3|4))")
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise DataError(f"{path}: OpenCV could not encode the array as PNG")
    data = buf.data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return hashlib.sha256(data).hexdigest()
