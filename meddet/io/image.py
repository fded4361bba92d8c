"""Reading any supported image (DICOM, PNG, JPEG, TIFF, BMP, PGM) into a numpy array, and writing
PNGs atomically.

Conventions of the arrays returned by :func:`read_image`: greyscale images are 2-D ``uint8`` or
``uint16``; colour images are ``(H, W, 3)`` ``uint8`` in OpenCV's BGR order.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from meddet.errors import DataError, DicomError, ImageTooLargeError
from meddet.io.dicom import (
    DEFAULT_MAX_DECODED_BYTES,
    DICM_MAGIC,
    DICM_OFFSET,
    decoded_bytes,
    dicom_to_array,
    load_dicom,
    read_dicom,
)
from meddet.io.jpeg import jpeg_frame

logger = logging.getLogger(__name__)

__all__ = [
    "ImageHeader",
    "effective_bit_depth",
    "image_header",
    "jpeg_frame",
    "read_image",
    "read_image_bits",
    "write_png",
]

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
_FORMAT_NAMES = ("PNG", "JPEG", "TIFF", "TIFF", "BMP", "PGM", "PGM", "PGM")
# Pixels converted per step where a conversion needs a wider temporary type.
_CHUNK_PIXELS = 1 << 18


@dataclass(frozen=True)
class ImageHeader:
    """What an image file declares in its header: enough to know the decoder's memory before decoding."""

    format: str
    height: int
    width: int
    channels: int
    bytes_per_sample: int
    frames: int = 1

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoder's output: pixels x channels x bytes per sample x frames."""
        return self.height * self.width * self.channels * self.bytes_per_sample * self.frames


def _source(source: str | os.PathLike | bytes, name: str) -> tuple[str, Any]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return name, bytes(source)
    return str(source), Path(source)


def read_image(
    source: str | os.PathLike | bytes,
    *,
    max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
    name: str = "upload",
    **dicom_kwargs: Any,
) -> np.ndarray:
    """See :func:`read_image_bits` (this returns only the array)."""
    return read_image_bits(source, max_bytes=max_bytes, name=name, **dicom_kwargs)[0]


def effective_bit_depth(image: np.ndarray) -> int:
    """How many bits the values of an unsigned integer image use: the bit length of its maximum
    (at least 1), e.g. 12 for a 16-bit PNG whose values stay below 4096."""
    return max(1, int(image.max()).bit_length()) if image.size else 1


# Effective bit depths already reported in the log (once per depth and process).
_REPORTED_BITS: set[int] = set()


def _stretch_bits(img: np.ndarray, bits: int) -> np.ndarray:
    """A uint16 image whose values use `bits` bits scaled to the full 16-bit range, rounded to nearest,
    in integer arithmetic and in bands of rows (no full-size float copy)."""
    m = (1 << bits) - 1
    out = np.empty_like(img)
    rows = max(1, _CHUNK_PIXELS // max(1, img.shape[1]))
    for y in range(0, img.shape[0], rows):
        band = img[y : y + rows].astype(np.uint32)
        out[y : y + rows] = np.minimum((band * 65535 + m // 2) // m, 65535)
    return out


def read_image_bits(
    source: str | os.PathLike | bytes,
    *,
    max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
    name: str = "upload",
    **dicom_kwargs: Any,
) -> tuple[np.ndarray, int | None]:
    """Read a DICOM, PNG, JPEG, TIFF, BMP or PGM file, deciding the format by content, not by name.

    ``source`` is a path, or the file's bytes (decoded from memory, nothing is written to disk;
    ``name`` stands for the file in messages). DICOM files ('DICM' at byte 128, or a raw dataset
    pydicom can force-read) go through :func:`meddet.io.dicom.read_dicom` with ``dicom_kwargs``
    (``bit_depth``, ``gamma``, ...); other formats are read unchanged by OpenCV (``dicom_kwargs`` do
    not apply to them).

    Before decoding, the header's size (pixels x channels x bytes per sample) is checked against
    ``max_bytes`` (None: no limit): :class:`ImageTooLargeError` above it, so a small compressed
    "bomb" never allocates its decoded size.

    Returns a 2-D ``uint8``/``uint16`` array for greyscale images or an ``(H, W, 3)`` BGR ``uint8``
    array for colour ones (an alpha channel is dropped, 16-bit colour is scaled to 8 bits with
    integer arithmetic), and the effective bit depth of a 16-bit greyscale raster whose values use
    fewer bits (else None). Such an image (e.g. 12-bit data stored in a 16-bit PNG or TIFF, maximum
    below 4096) is scaled to the full 16-bit range (normalized by its effective depth, not by 65535,
    which would leave it nearly black); the first such image of each depth is reported in the log.
    Raises :class:`DataError` naming the file when it is missing or not a readable image.
    """
    label, src = _source(source, name)
    if isinstance(src, Path):
        if not src.is_file():
            raise DataError(f"{label}: image file not found" if not src.exists() else f"{label}: not a file")
        with open(src, "rb") as f:
            head = f.read(DICM_OFFSET + 4)
    else:
        head = src[: DICM_OFFSET + 4]
    if not head:
        raise DataError(f"{label}: empty file (expected a PNG, JPEG, TIFF, BMP, PGM or DICOM image)")
    if head[DICM_OFFSET : DICM_OFFSET + 4] == DICM_MAGIC:
        return read_dicom(src, max_bytes=max_bytes, name=label, **dicom_kwargs), None
    if head.startswith(_RASTER_MAGICS):
        header = _raster_header(src, head, label)
        _check_budget(header, max_bytes, label)
        if isinstance(src, Path):
            img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
        else:
            img = cv2.imdecode(np.frombuffer(src, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataError(f"{label}: cannot decode the image (corrupt or truncated {_format_name(head)} file)")
        img = _to_contract(img, label)
        bits = None
        if img.ndim == 2 and img.dtype == np.uint16:
            bits = effective_bit_depth(img)
            if bits < 16 and img.max() > 0:
                if bits not in _REPORTED_BITS:
                    _REPORTED_BITS.add(bits)
                    logger.info(
                        "%s: 16-bit image whose values use %d bits (max %d); normalized by its %d-bit "
                        "range (further such images are not reported)",
                        label,
                        bits,
                        int(img.max()),
                        bits,
                    )
                img = _stretch_bits(img, bits)
            else:
                bits = None
        return img, bits
    try:
        # A DICOM dataset without the Part-10 preamble is still a DICOM.
        ds = load_dicom(src, name=label)
    except DicomError:
        raise DataError(f"{label}: not a readable image (expected a PNG, JPEG, TIFF, BMP, PGM or DICOM file)") from None
    return dicom_to_array(ds, source=label, max_bytes=max_bytes, **dicom_kwargs), None


def image_header(source: str | os.PathLike | bytes, name: str = "upload") -> ImageHeader:
    """The size an image declares (format, height, width, channels, bytes per sample as decoded here),
    read from its header only. Raises :class:`DataError` when no readable header is found."""
    label, src = _source(source, name)
    if isinstance(src, Path):
        if not src.is_file():
            raise DataError(f"{label}: image file not found")
        with open(src, "rb") as f:
            head = f.read(DICM_OFFSET + 4)
    else:
        head = src[: DICM_OFFSET + 4]
    if head[DICM_OFFSET : DICM_OFFSET + 4] != DICM_MAGIC and head.startswith(_RASTER_MAGICS):
        return _raster_header(src, head, label)
    ds = load_dicom(src, headers_only=True, name=label)  # DicomError (a DataError) when not a DICOM
    decoded_bytes(ds, label)  # validates the size attributes
    bits = int(ds.get("BitsAllocated", 16) or 16)
    return ImageHeader(
        "dicom",
        int(ds.Rows),
        int(ds.Columns),
        max(1, int(ds.get("SamplesPerPixel", 1) or 1)),
        (bits + 7) // 8,
        max(1, int(ds.get("NumberOfFrames", 1) or 1)),
    )


def _check_budget(header: ImageHeader, max_bytes: int | None, label: str) -> None:
    need = header.decoded_bytes
    if max_bytes is not None and need > max_bytes:
        raise ImageTooLargeError(
            f"{label}: decoding needs {need / 2**20:,.0f} MiB ({header.width}x{header.height} pixels, "
            f"{header.channels} channel(s) of {8 * header.bytes_per_sample} bits), more than the budget of "
            f"{max_bytes / 2**20:,.0f} MiB"
        )


def _open(src: Any) -> IO[bytes]:
    return open(src, "rb") if isinstance(src, Path) else io.BytesIO(src)


def _raster_header(src: Any, head: bytes, label: str) -> ImageHeader:
    fmt = _format_name(head)
    with _open(src) as f:
        try:
            if fmt == "PNG":
                h = _png_header(f)
            elif fmt == "JPEG":
                frame = jpeg_frame(f)
                if frame is None:
                    raise ValueError("no frame header with the image size")
                rows, cols, comps, bits = frame
                h = ImageHeader("jpeg", rows, cols, max(1, comps), 2 if bits > 8 else 1)
            elif fmt == "TIFF":
                h = _tiff_header(f)
            elif fmt == "BMP":
                h = _bmp_header(f)
            else:
                h = _pgm_header(f)
        except (ValueError, struct.error, OSError) as e:
            raise DataError(f"{label}: cannot decode the image (truncated or malformed {fmt} header: {e})") from None
    if h.height <= 0 or h.width <= 0:
        raise DataError(f"{label}: {fmt} header declares an empty image ({h.width}x{h.height} pixels)")
    return h


def _png_header(f: IO[bytes]) -> ImageHeader:
    data = f.read(33)
    if len(data) < 26 or data[12:16] != b"IHDR":
        raise ValueError("no IHDR chunk")
    w, h = struct.unpack(">II", data[16:24])
    depth, colour = data[24], data[25]
    # what OpenCV's IMREAD_UNCHANGED gives: grey 1, RGB/palette 3 (palette with transparency 4), alpha 4
    channels = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}.get(colour)
    if channels is None or depth not in (1, 2, 4, 8, 16):
        raise ValueError(f"colour type {colour} with bit depth {depth}")
    return ImageHeader("png", h, w, channels, 2 if depth == 16 else 1)


def _tiff_header(f: IO[bytes]) -> ImageHeader:
    order = f.read(2)
    e = "<" if order == b"II" else ">"
    magic = struct.unpack(e + "H", f.read(2))[0]
    big = magic == 43
    if big:
        f.read(4)
        offset = struct.unpack(e + "Q", f.read(8))[0]
    else:
        offset = struct.unpack(e + "I", f.read(4))[0]
    f.seek(offset)
    count = struct.unpack(e + ("Q" if big else "H"), f.read(8 if big else 2))[0]
    if count > 4096:
        raise ValueError(f"{count} entries in the first directory")
    sizes = {1: 1, 2: 1, 3: 2, 4: 4, 6: 1, 7: 1, 8: 2, 9: 4, 16: 8, 17: 8}
    fmts = {1: "B", 3: "H", 4: "I", 16: "Q", 6: "b", 8: "h", 9: "i", 17: "q"}
    tags: dict[int, list[int]] = {}
    entry = 20 if big else 12
    raw = f.read(count * entry)
    if len(raw) < count * entry:
        raise ValueError("truncated directory")
    for k in range(count):
        ent = raw[k * entry : (k + 1) * entry]
        tag, typ = struct.unpack(e + "HH", ent[:4])
        if tag not in (256, 257, 258, 277, 339) or typ not in fmts:
            continue
        n = struct.unpack(e + ("Q" if big else "I"), ent[4:12] if big else ent[4:8])[0]
        n = min(n, 16)
        field = ent[12:20] if big else ent[8:12]
        nbytes = sizes[typ] * n
        if nbytes > len(field):
            pos = f.tell()
            f.seek(struct.unpack(e + ("Q" if big else "I"), field)[0])
            field = f.read(nbytes)
            f.seek(pos)
        tags[tag] = list(struct.unpack(e + fmts[typ] * n, field[:nbytes]))
    if 256 not in tags or 257 not in tags:
        raise ValueError("no ImageWidth/ImageLength")
    spp = (tags.get(277) or [1])[0]
    bits = max(tags.get(258) or [1])
    if 3 in (tags.get(339) or []):
        raise ValueError("floating-point samples are not supported (expected 8- or 16-bit unsigned integers)")
    return ImageHeader("tiff", tags[257][0], tags[256][0], max(1, spp), max(1, (bits + 7) // 8))


def _bmp_header(f: IO[bytes]) -> ImageHeader:
    data = f.read(30)
    size = struct.unpack("<I", data[14:18])[0]
    if size == 12:
        w, h, _, bpp = struct.unpack("<HHHH", data[18:26])
    else:
        w, h, _, bpp = struct.unpack("<iiHH", data[18:30])
    return ImageHeader("bmp", abs(h), abs(w), 4 if bpp == 32 else 3, 2 if bpp == 64 else 1)


def _pgm_header(f: IO[bytes]) -> ImageHeader:
    data = f.read(1024)
    tokens: list[int] = []
    for line in data[2:].split(b"\n"):
        line = line.split(b"#", 1)[0]
        for t in line.split():
            tokens.append(int(t))
            if len(tokens) == 3:
                w, h, maxval = tokens
                return ImageHeader("pgm", h, w, 1, 2 if maxval > 255 else 1)
    raise ValueError("no width, height and maximum value")


def _format_name(head: bytes) -> str:
    for magic, name in zip(_RASTER_MAGICS, _FORMAT_NAMES):
        if head.startswith(magic):
            return name
    return "image"


def _to_contract(img: np.ndarray, label: str) -> np.ndarray:
    if img.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{label}: pixel type {img.dtype} is not supported (expected 8- or 16-bit unsigned integers)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return img
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise DataError(f"{label}: image has shape {img.shape} (expected greyscale, BGR or BGRA)")
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img[:, :, :3]) if img.shape[2] == 4 else np.ascontiguousarray(img)
    # 16-bit colour to 8 bits: round(v / 257) in integers, a band of rows at a time, alpha dropped on the way
    # (no full-size float copy: peak memory is the decoded image plus the 8-bit result)
    h, w = img.shape[:2]
    out = np.empty((h, w, 3), dtype=np.uint8)
    step = max(1, _CHUNK_PIXELS // max(1, w))
    for y in range(0, h, step):
        band = img[y : y + step, :, :3].astype(np.uint32)
        band += 128
        band //= 257
        out[y : y + step] = band
        del band
    return out


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
