"""Reading DICOM pixels the way a radiologist's viewer shows them, as 8- or 16-bit arrays.

The pipeline of :func:`read_dicom` follows the DICOM grayscale display chain (PS3.4 N.2.1):

1. decode the stored values (uncompressed, RLE and deflated by pydicom; JPEG baseline/extended/
   lossless, JPEG-LS and JPEG 2000 through the pylibjpeg plugins);
2. Modality LUT: *Rescale Slope/Intercept* or a *Modality LUT Sequence* (``apply_modality_lut``);
3. VOI LUT (optional): the *VOI LUT Sequence* when present, else *Window Center/Width*, picking
   alternative views by ``window_index`` (``apply_voi_lut``); nothing when neither is present, as
   on most real mammograms;
4. MONOCHROME1 inversion, so that dense tissue is always bright;
5. normalization to [0, 1] from statistics of the whole image (``NORMALIZATIONS``), gamma, and
   quantization to ``bit_depth`` bits. *Pixel Padding Value* pixels take no part in the
   statistics and come out black.

Steps 2-5 depend on nothing but a pixel's stored value, so they are computed once per distinct
stored value (at most 65,536 for 16-bit data) with pydicom's own LUT functions, and the result
is one table lookup per pixel. Per image that is one pass for min/max (or a histogram for
``percentile``/``zscore``, VOI LUT sequences and padding) and one lookup pass, instead of
several float64 passes over every pixel; the output is the same as applying each step to the
full array.

Every error is a :class:`~meddet.errors.DicomError` naming the file.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from meddet.errors import ConfigError, DicomError, ImageTooLargeError
from meddet.io.jpeg import jpeg_frame

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "NORMALIZATIONS",
    "PixelOptions",
    "check_decoded_size",
    "decoded_bytes",
    "dicom_info",
    "dicom_to_array",
    "is_dicom_file",
    "load_dicom",
    "pixel_spacing",
    "quantize",
    "read_dicom",
    "stored_pixels",
]

DICM_OFFSET = 128
# Default memory budget of one decoded image (the decoder's output array), checked from the header before
# decoding by every reader of meddet.io; callers with other limits pass ``max_bytes``.
DEFAULT_MAX_DECODED_BYTES = 2 * 1024**3
DICM_MAGIC = b"DICM"
_NOT_DICOM_HINT = "expected a DICOM Part-10 file with 'DICM' at byte 128, or a raw DICOM dataset"

# name -> what maps to black / white (values outside are clipped)
NORMALIZATIONS: dict[str, str] = {
    "minmax": "the image's minimum / maximum",
    "percentile": "the given low / high percentiles of the image",
    "zscore": "mean -/+ 3 standard deviations of the image",
    "fixed": "an explicit value range (fixed_range), else the full range the file can hold",
}


@dataclass(frozen=True)
class PixelOptions:
    """How DICOM pixels become an image; mirrors the ``DICOM.*`` config keys.

    ``as_kwargs()`` gives the keyword arguments of :func:`read_dicom` and :func:`dicom_to_array`.
    """

    apply_voi: bool = True
    window_index: int = 0
    normalize: str = "minmax"
    percentiles: tuple[float, float] = (1.0, 99.0)
    fixed_range: tuple[float, float] | None = None
    gamma: float = 0.8
    bit_depth: int = 8

    def __post_init__(self) -> None:
        _check_options(
            self.normalize, self.percentiles, self.fixed_range, self.gamma, self.bit_depth, self.window_index
        )

    @classmethod
    def from_cfg(cls, cfg: Any) -> PixelOptions:
        """Options from a config's ``DICOM`` section (``BIT_DEPTH``, ``APPLY_VOI``, ...)."""
        d = cfg.DICOM
        fixed = tuple(float(v) for v in d.FIXED_RANGE)
        if fixed and len(fixed) != 2:
            raise ConfigError(f"DICOM.FIXED_RANGE: expected () or (low, high), found {tuple(d.FIXED_RANGE)}")
        return cls(
            apply_voi=bool(d.APPLY_VOI),
            window_index=int(d.WINDOW_INDEX),
            normalize=str(d.NORMALIZE),
            percentiles=(float(d.PERCENTILES[0]), float(d.PERCENTILES[1])),
            fixed_range=(fixed[0], fixed[1]) if fixed else None,
            gamma=float(d.GAMMA),
            bit_depth=int(d.BIT_DEPTH),
        )

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`read_dicom`."""
        return asdict(self)


def _check_options(
    normalize: str,
    percentiles: tuple[float, float],
    fixed_range: tuple[float, float] | None,
    gamma: float,
    bit_depth: int,
    window_index: int,
) -> None:
    if normalize not in NORMALIZATIONS:
        raise ConfigError(
            f"DICOM.NORMALIZE: unknown normalization {normalize!r}; expected one of {sorted(NORMALIZATIONS)}"
        )
    lo, hi = percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError(f"DICOM.PERCENTILES: expected 0 <= low < high <= 100, found {tuple(percentiles)}")
    if fixed_range is not None and (len(fixed_range) != 2 or not float(fixed_range[0]) < float(fixed_range[1])):
        raise ConfigError(f"DICOM.FIXED_RANGE: expected (low, high) with low < high, found {tuple(fixed_range)}")
    if not gamma > 0:
        raise ConfigError(f"DICOM.GAMMA: expected a positive number, found {gamma!r}")
    if bit_depth not in (8, 16):
        raise ConfigError(f"DICOM.BIT_DEPTH: expected 8 or 16, found {bit_depth!r}")
    if window_index < 0:
        raise ConfigError(f"DICOM.WINDOW_INDEX: expected an index >= 0, found {window_index!r}")


def quantize(x01: np.ndarray, gamma: float = 1.0, bit_depth: int = 8) -> np.ndarray:
    """Map values in [0, 1] to ``uint8``/``uint16`` after a gamma curve.

    Convention: ``out = max * (x / max) ** gamma`` with ``max`` = 255 or 65535, i.e. gamma < 1
    brightens the mid-tones (dense tissue stands out less against fat), gamma = 1 is linear.
    """
    if bit_depth not in (8, 16):
        raise ConfigError(f"bit_depth: expected 8 or 16, found {bit_depth!r}")
    if not gamma > 0:
        raise ConfigError(f"gamma: expected a positive number, found {gamma!r}")
    x = np.clip(x01, 0.0, 1.0)
    if gamma != 1.0:
        x = np.power(x, gamma)
    maxval = 255 if bit_depth == 8 else 65535
    return np.rint(x * maxval).astype(np.uint8 if bit_depth == 8 else np.uint16)


# ------------------------------------------------------------------------------ reading
def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file has the DICOM Part-10 preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(DICM_OFFSET + 4)
    except OSError:
        return False
    return head[DICM_OFFSET : DICM_OFFSET + 4] == DICM_MAGIC


def load_dicom(path: str | os.PathLike | bytes, *, headers_only: bool = False, name: str = "upload") -> Dataset:
    """Open a DICOM file (Part-10, or a raw dataset as a fallback) and check it holds one image.

    ``path`` may also be the file's bytes (decoded from memory, nothing written to disk; ``name``
    then stands for the file in messages). Large values (the pixel data) of a file are read lazily,
    so a caller that only needs the header reads little; ``headers_only=True`` stops before the pixel
    data altogether. Raises :class:`DicomError` naming the file when it is missing, not a DICOM, has
    no pixel data or is multi-frame.
    """
    raw = None
    if isinstance(path, (bytes, bytearray, memoryview)):
        data = raw = bytes(path)
        path = Path(name)
        if not data:
            raise DicomError(f"{path}: not a DICOM file (the file is empty; {_NOT_DICOM_HINT})")

        def opener() -> tuple[io.BytesIO | Path, str | None]:
            return io.BytesIO(data), None  # in memory already: nothing to defer
    else:
        path = Path(path)
        if not path.is_file():
            raise DicomError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
        if path.stat().st_size == 0:
            raise DicomError(f"{path}: not a DICOM file (the file is empty; {_NOT_DICOM_HINT})")

        def opener() -> tuple[io.BytesIO | Path, str | None]:
            return path, "64 KB"

    ds: Dataset
    try:
        src, defer = opener()
        ds = pydicom.dcmread(src, defer_size=defer, stop_before_pixels=headers_only)
    except InvalidDicomError:
        ds = _force_read(path, opener, headers_only)
    except Exception as e:  # pydicom raises many types on broken headers
        raise DicomError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds and not headers_only:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DicomError(f"{path}: float pixel data is not supported (expected integer Pixel Data)")
        if _has_pixel_tag(path if raw is None else raw):
            raise DicomError(
                f"{path}: truncated file: the pixel data ends early (expected a complete DICOM "
                "image; copy or export the file again)"
            )
        raise DicomError(f"{path}: DICOM file has no pixel data (expected an image, found SOP class {_sop_name(ds)})")
    for tag in ("Rows", "Columns"):
        if tag not in ds:
            raise DicomError(f"{path}: DICOM file has no {tag} attribute (expected an image)")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise DicomError(f"{path}: invalid NumberOfFrames {ds.get('NumberOfFrames')!r} (expected an integer)") from None
    if frames > 1:
        raise DicomError(f"{path}: multi-frame DICOM with {frames} frames (expected a single 2-D image)")
    return ds


def _has_pixel_tag(source: Path | bytes) -> bool:
    """Whether the file (a path or its bytes) holds the Pixel Data tag (7FE0,0010) although pydicom read
    none: a truncated file (an encapsulated pixel data element cut short is dropped whole by pydicom)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError:
            return False
    return b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data


def _force_read(path: Path, opener: Callable[[], tuple[io.BytesIO | Path, str | None]], headers_only: bool) -> Dataset:
    try:
        src, defer = opener()
        ds = pydicom.dcmread(src, force=True, defer_size=defer, stop_before_pixels=headers_only)
    except Exception:
        raise DicomError(f"{path}: not a DICOM file ({_NOT_DICOM_HINT})") from None
    if "Rows" not in ds or "Columns" not in ds or (not headers_only and "PixelData" not in ds):
        raise DicomError(f"{path}: not a DICOM file ({_NOT_DICOM_HINT})")
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit = getattr(ds, "original_encoding", (True, True))[0]
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _int_attr(ds: Dataset, keyword: str, default: int, src: str | os.PathLike) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise DicomError(f"{src}: invalid {keyword} {value!r} (expected an integer)") from None


def decoded_bytes(ds: Dataset, source: str | os.PathLike = "") -> int:
    """Bytes of the decoded pixel data, from the header only: Rows x Columns x SamplesPerPixel x
    bytes per sample (BitsAllocated) x NumberOfFrames."""
    src = source or ds.get("filename", "") or "<dataset>"
    rows, cols = _int_attr(ds, "Rows", 0, src), _int_attr(ds, "Columns", 0, src)
    samples = max(1, _int_attr(ds, "SamplesPerPixel", 1, src))
    bits = _int_attr(ds, "BitsAllocated", 16, src)
    frames = max(1, _int_attr(ds, "NumberOfFrames", 1, src))
    if rows <= 0 or cols <= 0 or not 1 <= bits <= 64:
        raise DicomError(
            f"{src}: invalid image size {cols}x{rows} with {bits} bits allocated "
            "(expected positive Rows/Columns and 1-64 bits)"
        )
    return rows * cols * samples * ((bits + 7) // 8) * frames


def _codestream_size(fragment: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, bits) a JPEG / JPEG-LS / JPEG 2000 codestream declares, or None when
    its header is not found in the first bytes."""
    if fragment[:2] == b"\xff\xd8":
        frame = jpeg_frame(io.BytesIO(fragment))
        return None if frame is None else frame
    i = fragment.find(b"\xff\x4f\xff\x51", 0, 4096)  # J2K SOC + SIZ (raw codestream or inside a JP2 box)
    if i >= 0 and len(fragment) >= i + 42:
        xsiz, ysiz, xo, yo = (int.from_bytes(fragment[i + k : i + k + 4], "big") for k in (8, 12, 16, 20))
        comps = int.from_bytes(fragment[i + 40 : i + 42], "big")
        bits = (fragment[i + 42] & 0x7F) + 1 if len(fragment) > i + 42 else 16
        return max(0, ysiz - yo), max(0, xsiz - xo), max(1, comps), bits
    return None


def check_decoded_size(
    ds: Dataset, source: str | os.PathLike = "", max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES
) -> int:
    """Refuse, before decoding, an image whose decoded pixels would exceed ``max_bytes``
    (:class:`ImageTooLargeError`), or whose compressed codestream declares another size than the header
    (:class:`DicomError`: a decoder allocates what the codestream says). Returns the decoded bytes."""
    src = source or ds.get("filename", "") or "<dataset>"
    need = decoded_bytes(ds, src)
    if max_bytes is not None and need > max_bytes:
        raise ImageTooLargeError(
            f"{src}: decoding needs {need / 2**20:,.0f} MiB ({int(ds.Columns)}x{int(ds.Rows)} pixels, "
            f"{_int_attr(ds, 'SamplesPerPixel', 1, src)} sample(s) of {_int_attr(ds, 'BitsAllocated', 16, src)} bits), "
            f"more than the budget of {max_bytes / 2**20:,.0f} MiB"
        )
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and getattr(ts, "is_encapsulated", False) and "PixelData" in ds:
        from pydicom.encaps import generate_fragments

        try:
            fragments = generate_fragments(ds.PixelData)
            next(fragments, b"")  # the Basic Offset Table item
            first = next(fragments, b"")
        except Exception as e:
            raise DicomError(f"{src}: malformed encapsulated pixel data ({e})") from None
        declared = _codestream_size(bytes(first[:65536]))
        if declared is not None:
            rows, cols, comps, _bits = declared
            if (rows, cols) != (int(ds.Rows), int(ds.Columns)) and rows != 0:
                raise DicomError(
                    f"{src}: the compressed pixel data declares {cols}x{rows} pixels but Rows/Columns say "
                    f"{int(ds.Columns)}x{int(ds.Rows)} (expected the same size)"
                )
    return need


def _sop_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", str(uid)) if uid else "unknown"


def stored_pixels(
    ds: Dataset, source: str | os.PathLike = "", max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES
) -> np.ndarray:
    """The stored pixel values (2-D, no LUT applied), decoding compressed transfer syntaxes.

    The decoded size is checked from the header first (:func:`check_decoded_size`): an image over
    ``max_bytes`` (None: no limit) raises :class:`~meddet.errors.ImageTooLargeError` without decoding."""
    src = source or ds.get("filename", "") or "<dataset>"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if _int_attr(ds, "SamplesPerPixel", 1, src) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(
            f"{src}: photometric interpretation {photometric or 'missing'!r} with "
            f"{ds.get('SamplesPerPixel', 1)} sample(s) per pixel (expected a greyscale MONOCHROME1/2 image)"
        )
    check_decoded_size(ds, src, max_bytes)
    try:
        arr = ds.pixel_array
    except Exception as e:  # decoder plugins raise their own types
        ts = ds.file_meta.get("TransferSyntaxUID", "unknown")
        what = "truncated file: " if "less than expected" in str(e) else ""
        raise DicomError(
            f"{src}: {what}cannot decode the pixel data (transfer syntax {getattr(ts, 'name', ts)}): {e}"
        ) from None
    if arr.ndim != 2:
        raise DicomError(f"{src}: decoded pixel data has shape {arr.shape} (expected a single 2-D image)")
    return arr


# ------------------------------------------------------------------------------ display chain
def _stored_range(ds: Dataset) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return 0.0, float(2**bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def _modality_range(ds: Dataset) -> tuple[float, float]:
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    lo, hi = _stored_range(ds)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        s, i = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * s + i, hi * s + i))
    return lo, hi


def _voi_views(ds: Dataset) -> tuple[str, int]:
    """Which VOI transform pydicom applies ("lut", "window" or "") and how many views it offers."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut", len(seq)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window", min(ds["WindowCenter"].VM, ds["WindowWidth"].VM)
    return "", 0


def _padding_range(ds: Dataset) -> tuple[int, int] | None:
    """Stored values marking padding (*Pixel Padding Value* .. *Pixel Padding Range Limit*)."""
    value = ds.get("PixelPaddingValue")
    if value is None:
        return None
    first = int(value)
    limit = ds.get("PixelPaddingRangeLimit")
    last = int(limit) if limit is not None else first
    return min(first, last), max(first, last)


class _DisplayChain:
    """Steps 2-4 of the display chain for one dataset, applied to a vector of stored values."""

    def __init__(self, ds: Dataset, apply_voi: bool, window_index: int, src: str | os.PathLike) -> None:
        self.ds, self.src, self.window_index = ds, src, window_index
        self.value_range = _modality_range(ds)
        self.voi = ""
        if apply_voi:
            kind, n_views = _voi_views(ds)
            if kind and window_index >= n_views:
                raise DicomError(
                    f"{src}: window index {window_index} requested but the file has {n_views} "
                    f"VOI {'LUT' if kind == 'lut' else 'window'}(s) (expected an index below {n_views})"
                )
            self.voi = kind
            if kind == "lut":
                bits = int(ds.VOILUTSequence[window_index].LUTDescriptor[2])
                self.value_range = (0.0, float(2**bits - 1))
            # windowing maps onto the modality output range, which `value_range` already is
        # LUT sequences can be any curve; rescale and windows (linear or sigmoid) never decrease
        self.monotonic = not ds.get("ModalityLUTSequence") and self.voi != "lut"
        self.invert = str(ds.PhotometricInterpretation).strip() == "MONOCHROME1"

    def __call__(self, stored: np.ndarray) -> np.ndarray:
        """Display values (float64, MONOCHROME1 already inverted) of the given stored values."""
        try:
            x = apply_modality_lut(stored, self.ds)
        except Exception as e:
            raise DicomError(f"{self.src}: invalid Modality LUT / rescale attributes ({e})") from None
        if self.voi:
            if self.voi == "lut" and not np.issubdtype(x.dtype, np.integer):
                x = np.rint(x).astype(np.int64)
            try:
                x = apply_voi_lut(x, self.ds, index=self.window_index, prefer_lut=True)
            except Exception as e:
                raise DicomError(f"{self.src}: invalid VOI LUT / window attributes ({e})") from None
        x = np.asarray(x, dtype=np.float64)
        if self.invert:
            x = (self.value_range[0] + self.value_range[1]) - x
        return x


def _weighted_percentiles(values: np.ndarray, counts: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    """``np.percentile`` (linear method) of the array holding each value ``counts`` times, with
    numpy's own arithmetic so that the result is bit-identical."""
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(counts[order])
    n = int(cum[-1])
    out = []
    for p in q:
        pos = (n - 1) * (float(p) / 100.0)
        prev = float(np.floor(pos))
        if pos >= n - 1:
            out.append(float(v[-1]))
            continue
        i, j = np.searchsorted(cum, [int(prev), int(prev) + 1], side="right")
        a, b, g = float(v[i]), float(v[j]), pos - prev
        out.append(a + (b - a) * g if g < 0.5 else b - (b - a) * (1 - g))
    return out[0], out[1]


def _value_table(
    arr: np.ndarray, chain: _DisplayChain, normalize: str, padding: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, int]:
    """The stored values to evaluate, their pixel counts (None when only the extremes matter),
    their positions in the lookup table, the lookup index array of the image and the table size.

    Integers of up to 16 bits index a table over every possible value through an unsigned view
    of the pixels (no copy); other types go through ``np.unique``."""
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        unsigned = np.uint8 if arr.dtype.itemsize == 1 else np.uint16
        index = arr.view(unsigned)  # signed values wrap around: -1 -> 65535, as the table does
        if chain.monotonic and normalize in ("minmax", "fixed") and padding is None:
            info = np.iinfo(arr.dtype)
            lo, hi = (info.min, info.max) if normalize == "fixed" else (int(arr.min()), int(arr.max()))
            values = np.arange(lo, hi + 1, dtype=np.int64)
            counts = None
        else:
            hist = np.bincount(index.ravel(), minlength=2 ** (8 * arr.dtype.itemsize))
            positions = np.flatnonzero(hist)
            values = positions.astype(unsigned).view(arr.dtype).astype(np.int64)
            counts = hist[positions]
        size = 2 ** (8 * arr.dtype.itemsize)
        return values, counts, (values & (size - 1)).astype(np.intp), index, size
    values, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    return values, counts, np.arange(len(values)), inverse.reshape(arr.shape), len(values)


def dicom_to_array(
    ds: Dataset,
    *,
    apply_voi: bool = True,
    window_index: int = 0,
    normalize: str = "minmax",
    percentiles: tuple[float, float] = (1.0, 99.0),
    fixed_range: tuple[float, float] | None = None,
    gamma: float = 0.8,
    bit_depth: int = 8,
    source: str | os.PathLike = "",
    max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """Turn an opened DICOM dataset into a display-ready 2-D ``uint8``/``uint16`` array.

    See :func:`read_dicom` for the arguments; ``source`` names the file in error messages.
    """
    _check_options(normalize, percentiles, fixed_range, gamma, bit_depth, window_index)
    src = source or ds.get("filename", "") or "<dataset>"
    arr = stored_pixels(ds, src, max_bytes=max_bytes)
    chain = _DisplayChain(ds, apply_voi, window_index, src)
    padding = _padding_range(ds)
    values, counts, positions, index, size = _value_table(arr, chain, normalize, padding)
    y = chain(values.astype(arr.dtype))
    keep = np.ones(len(values), bool) if padding is None else (values < padding[0]) | (values > padding[1])
    if not keep.any():
        logger.warning("%s: every pixel is padding (Pixel Padding Value); the image is black", src)
        lo, hi = 0.0, 0.0
    elif normalize == "minmax":
        lo, hi = float(y[keep].min()), float(y[keep].max())
    elif normalize == "percentile":
        assert counts is not None  # _value_table counts pixels for every normalization but minmax / fixed
        lo, hi = _weighted_percentiles(y[keep], counts[keep], (percentiles[0], percentiles[1]))
    elif normalize == "zscore":
        assert counts is not None
        w = counts[keep].astype(np.float64)
        mean = float(np.dot(w, y[keep]) / w.sum())
        std = float(np.sqrt(np.dot(w, (y[keep] - mean) ** 2) / w.sum()))
        lo, hi = mean - 3.0 * std, mean + 3.0 * std
    else:  # fixed: in the units after rescale / VOI, before the MONOCHROME1 inversion
        lo, hi = fixed_range if fixed_range is not None else chain.value_range
        if chain.invert and fixed_range is not None:
            total = chain.value_range[0] + chain.value_range[1]
            lo, hi = total - hi, total - lo
    x01 = np.clip((y - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(y)
    out = quantize(x01, gamma=gamma, bit_depth=bit_depth)
    out[~keep] = 0
    table = np.zeros(size, dtype=out.dtype)
    table[positions] = out
    return np.take(table, index)


def read_dicom(
    path: str | os.PathLike | bytes,
    *,
    apply_voi: bool = True,
    window_index: int = 0,
    normalize: str = "minmax",
    percentiles: tuple[float, float] = (1.0, 99.0),
    fixed_range: tuple[float, float] | None = None,
    gamma: float = 0.8,
    bit_depth: int = 8,
    max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
    name: str = "upload",
) -> np.ndarray:
    """Read a single-frame greyscale DICOM as a display-ready 2-D ``uint8``/``uint16`` array.

    Args:
        path: the DICOM file (Part-10 or, as a fallback, a raw dataset), or its bytes (decoded from
            memory; ``name`` stands for the file in messages).
        apply_voi: apply the VOI LUT Sequence, else Window Center/Width, when the file has one.
        window_index: which of several VOI LUTs / windows to use.
        normalize: what maps to black and white, from statistics of the whole image (never of a
            part): ``"minmax"`` (the image's min/max), ``"percentile"`` (``percentiles`` of the
            image, values outside clipped), ``"zscore"`` (mean -/+ 3 std, clipped) or ``"fixed"``
            (``fixed_range`` in the units after rescale / VOI, else the file's full value range).
        percentiles: low/high percentiles for ``normalize="percentile"`` (default 1st/99th).
        fixed_range: ``(low, high)`` for ``normalize="fixed"``.
        gamma: ``out = max * (x / max) ** gamma`` after normalization (< 1 brightens mid-tones).
        bit_depth: 8 (``uint8``) or 16 (``uint16``).
        max_bytes: memory budget of the decoded pixels, checked from the header before decoding
            (:class:`~meddet.errors.ImageTooLargeError` above it); None for no limit.

    MONOCHROME1 images are inverted so that tissue is bright; *Pixel Padding Value* pixels are
    left out of the statistics and come out black. Raises :class:`DicomError` naming the file
    for a missing file, a non-DICOM, no pixel data, an undecodable, colour or multi-frame image.
    """
    ds = load_dicom(path, name=name)
    source = Path(name) if isinstance(path, (bytes, bytearray, memoryview)) else path
    return dicom_to_array(
        ds,
        apply_voi=apply_voi,
        window_index=window_index,
        normalize=normalize,
        percentiles=percentiles,
        fixed_range=fixed_range,
        gamma=gamma,
        bit_depth=bit_depth,
        source=source,
        max_bytes=max_bytes,
    )


def dicom_info(path: str | os.PathLike | bytes) -> dict[str, Any]:
    """Non-identifying facts about a DICOM image (no names, IDs, dates or UIDs), header only; ``path``
    may be the file's bytes.

    Keys: ``modality``, ``sop_class``, ``view``, ``laterality``, ``patient_orientation``,
    ``rows``, ``columns``, ``bits_allocated``, ``bits_stored``, ``photometric``,
    ``transfer_syntax``, ``has_rescale``, ``has_window``, ``has_voi_lut``, ``window_count``,
    ``pixel_spacing`` (``[row, column]`` mm from *Pixel Spacing*, else *Imager Pixel Spacing*,
    else None).
    """
    ds = load_dicom(path, headers_only=True)
    ts = ds.file_meta.get("TransferSyntaxUID")
    laterality = ds.get("Laterality") or ds.get("ImageLaterality") or ""
    orientation = ds.get("PatientOrientation") or []
    if isinstance(orientation, str):
        orientation = [orientation]
    kind, n_views = _voi_views(ds)
    return {
        "modality": str(ds.get("Modality", "")),
        "sop_class": _sop_name(ds),
        "view": str(ds.get("ViewPosition", "")),
        "laterality": str(laterality),
        "patient_orientation": "\\".join(str(o) for o in orientation),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "bits_allocated": int(ds.get("BitsAllocated", 0) or 0),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "transfer_syntax": getattr(ts, "name", str(ts or "")),
        "has_rescale": "RescaleSlope" in ds and "RescaleIntercept" in ds,
        "has_window": ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None,
        "has_voi_lut": kind == "lut",
        "window_count": n_views,
        "pixel_spacing": pixel_spacing(ds),
    }


def pixel_spacing(ds: Dataset) -> list[float] | None:
    """``[row, column]`` spacing in mm from *Pixel Spacing*, else *Imager Pixel Spacing*, else None."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            try:
                spacing = [float(value[0]), float(value[1])]
            except (TypeError, ValueError):
                continue
            if all(s > 0 for s in spacing):
                return spacing
    return None
