"""Reading DICOM pixels the way a radiologist's viewer shows them, as 8- or 16-bit arrays.

The pipeline of :func:`read_dicom` follows the DICOM grayscale display chain (PS3.4 N.2.1):

1. decode the stored values (uncompressed, RLE, deflated by pydicom; JPEG, JPEG-LS and JPEG 2000
   through the pylibjpeg plugins);
2. Modality LUT: *Rescale Slope/Intercept* or a *Modality LUT Sequence* (``apply_modality_lut``);
3. VOI LUT (optional): the *VOI LUT Sequence* when present, else *Window Center/Width*, picking
   alternative views by ``window_index`` (``apply_voi_lut``); nothing when neither is present, as
   on most real mammograms;
4. MONOCHROME1 inversion, so that dense tissue is always bright;
5. normalization to [0, 1] (``normalize``), gamma, and quantization to ``bit_depth`` bits.

Every error is a :class:`~meddet.errors.DicomError` naming the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from meddet.errors import ConfigError, DicomError

logger = logging.getLogger(__name__)

__all__ = [
    "NORMALIZATIONS",
    "PixelOptions",
    "dicom_info",
    "dicom_to_array",
    "is_dicom_file",
    "load_dicom",
    "quantize",
    "read_dicom",
    "stored_pixels",
]

DICM_OFFSET = 128
DICM_MAGIC = b"DICM"
_NOT_DICOM_HINT = "expected a DICOM Part-10 file with 'DICM' at byte 128, or a raw DICOM dataset"


@dataclass(frozen=True)
class PixelOptions:
    """How DICOM pixels become an image; mirrors the ``DICOM.*`` config keys.

    ``as_kwargs()`` gives the keyword arguments of :func:`read_dicom` and :func:`dicom_to_array`.
    """

    apply_voi: bool = True
    window_index: int = 0
    normalize: str = "minmax"
    percentiles: tuple[float, float] = (0.5, 99.5)
    gamma: float = 0.8
    bit_depth: int = 8

    def __post_init__(self) -> None:
        _check_options(self.normalize, self.percentiles, self.gamma, self.bit_depth, self.window_index)

    @classmethod
    def from_cfg(cls, cfg: Any) -> "PixelOptions":
        """Options from a config's ``DICOM`` section (``BIT_DEPTH``, ``APPLY_VOI``, ...)."""
        d = cfg.DICOM
        return cls(
            apply_voi=bool(d.APPLY_VOI),
            window_index=int(d.WINDOW_INDEX),
            normalize=str(d.NORMALIZE),
            percentiles=(float(d.PERCENTILES[0]), float(d.PERCENTILES[1])),
            gamma=float(d.GAMMA),
            bit_depth=int(d.BIT_DEPTH),
        )

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`read_dicom`."""
        return asdict(self)


def _check_options(
    normalize: str, percentiles: tuple[float, float], gamma: float, bit_depth: int, window_index: int
) -> None:
    if normalize not in NORMALIZATIONS:
        raise ConfigError(
            f"DICOM.NORMALIZE: unknown normalization {normalize!r}; expected one of {sorted(NORMALIZATIONS)}"
        )
    lo, hi = percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError(f"DICOM.PERCENTILES: expected 0 <= low < high <= 100, found {tuple(percentiles)}")
    if not gamma > 0:
        raise ConfigError(f"DICOM.GAMMA: expected a positive number, found {gamma!r}")
    if bit_depth not in (8, 16):
        raise ConfigError(f"DICOM.BIT_DEPTH: expected 8 or 16, found {bit_depth!r}")
    if window_index < 0:
        raise ConfigError(f"DICOM.WINDOW_INDEX: expected an index >= 0, found {window_index!r}")


# ------------------------------------------------------------------------------ normalization
# Each strategy maps an array (float64) to [0, 1]; `value_range` is the theoretical range of the
# values at this point of the display chain (used by "fixed"), `percentiles` by "percentile".
def _norm_minmax(x: np.ndarray, value_range: tuple[float, float], percentiles: tuple[float, float]) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return _scale(x, lo, hi)


def _norm_percentile(x: np.ndarray, value_range: tuple[float, float], percentiles: tuple[float, float]) -> np.ndarray:
    lo, hi = np.percentile(x, percentiles)
    return _scale(x, float(lo), float(hi))


def _norm_zscore(x: np.ndarray, value_range: tuple[float, float], percentiles: tuple[float, float]) -> np.ndarray:
    mean, std = float(x.mean()), float(x.std())
    return _scale(x, mean - 3.0 * std, mean + 3.0 * std)


def _norm_fixed(x: np.ndarray, value_range: tuple[float, float], percentiles: tuple[float, float]) -> np.ndarray:
    return _scale(x, *value_range)


def _scale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float64)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


NORMALIZATIONS: dict[str, Callable[[np.ndarray, tuple[float, float], tuple[float, float]], np.ndarray]] = {
    # image min -> 0, image max -> 1
    "minmax": _norm_minmax,
    # the given low/high percentiles of the image -> 0/1, values outside clipped
    "percentile": _norm_percentile,
    # mean -/+ 3 standard deviations -> 0/1, values outside clipped
    "zscore": _norm_zscore,
    # the full range the file can hold (stored bits, through rescale / VOI) -> 0/1
    "fixed": _norm_fixed,
}


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


def load_dicom(path: str | os.PathLike, *, headers_only: bool = False) -> Dataset:
    """Open a DICOM file (Part-10, or a raw dataset as a fallback) and check it holds one image.

    Large values (the pixel data) are read lazily, so a caller that only needs the header reads
    little; ``headers_only=True`` stops before the pixel data altogether.
    Raises :class:`DicomError` naming the file when it is missing, not a DICOM, has no pixel data
    or is multi-frame.
    """
    path = Path(path)
    if not path.is_file():
        raise DicomError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DicomError(f"{path}: not a DICOM file (the file is empty; {_NOT_DICOM_HINT})")
    try:
        ds = pydicom.dcmread(path, defer_size="64 KB", stop_before_pixels=headers_only)
    except InvalidDicomError:
        ds = _force_read(path, headers_only)
    except Exception as e:  # pydicom raises many types on broken headers
        raise DicomError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds and not headers_only:
        raise DicomError(f"{path}: DICOM file has no pixel data (expected an image, found SOP class {_sop_name(ds)})")
    for tag in ("Rows", "Columns"):
        if tag not in ds:
            raise DicomError(f"{path}: DICOM file has no {tag} attribute (expected an image)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"{path}: multi-frame DICOM with {frames} frames (expected a single 2-D image)")
    return ds


def _force_read(path: Path, headers_only: bool) -> Dataset:
    try:
        ds = pydicom.dcmread(path, force=True, defer_size="64 KB", stop_before_pixels=headers_only)
    except Exception:
        raise DicomError(f"{path}: not a DICOM file ({_NOT_DICOM_HINT})") from None
    if "Rows" not in ds or "Columns" not in ds or (not headers_only and "PixelData" not in ds):
        raise DicomError(f"{path}: not a DICOM file ({_NOT_DICOM_HINT})")
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit = getattr(ds, "original_encoding", (True, True))[0]
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _sop_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", str(uid)) if uid else "unknown"


def stored_pixels(ds: Dataset, source: str | os.PathLike = "") -> np.ndarray:
    """The stored pixel values (2-D, no LUT applied), decoding compressed transfer syntaxes."""
    src = source or ds.get("filename", "") or "<dataset>"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(
            f"{src}: photometric interpretation {photometric or 'missing'!r} with "
            f"{ds.get('SamplesPerPixel', 1)} sample(s) per pixel (expected a greyscale MONOCHROME1/2 image)"
        )
    try:
        arr = ds.pixel_array
    except Exception as e:  # decoder plugins raise their own types
        ts = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise DicomError(
            f"{src}: cannot decode the pixel data (transfer syntax {getattr(ts, 'name', ts)}): {e}"
        ) from None
    if arr.ndim != 2:
        raise DicomError(f"{src}: decoded pixel data has shape {arr.shape} (expected a single 2-D image)")
    return arr


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


def dicom_to_array(
    ds: Dataset,
    *,
    apply_voi: bool = True,
    window_index: int = 0,
    normalize: str = "minmax",
    percentiles: tuple[float, float] = (0.5, 99.5),
    gamma: float = 0.8,
    bit_depth: int = 8,
    source: str | os.PathLike = "",
) -> np.ndarray:
    """Turn an opened DICOM dataset into a display-ready 2-D ``uint8``/``uint16`` array.

    See :func:`read_dicom` for the arguments; ``source`` names the file in error messages.
    """
    _check_options(normalize, percentiles, gamma, bit_depth, window_index)
    src = source or ds.get("filename", "") or "<dataset>"
    arr = stored_pixels(ds, src)
    value_range = _modality_range(ds)
    try:
        x = apply_modality_lut(arr, ds)
    except Exception as e:
        raise DicomError(f"{src}: invalid Modality LUT / rescale attributes ({e})") from None
    if apply_voi:
        kind, n_views = _voi_views(ds)
        if kind and window_index >= n_views:
            raise DicomError(
                f"{src}: window index {window_index} requested but the file has {n_views} "
                f"VOI {'LUT' if kind == 'lut' else 'window'}(s) (expected an index below {n_views})"
            )
        if kind == "lut":
            if not np.issubdtype(x.dtype, np.integer):
                x = np.rint(x).astype(np.int64)
            value_range = (0.0, float(2 ** int(ds.VOILUTSequence[window_index].LUTDescriptor[2]) - 1))
        # windowing maps onto the modality output range, which `value_range` already is
        if kind:
            try:
                x = apply_voi_lut(x, ds, index=window_index, prefer_lut=True)
            except Exception as e:
                raise DicomError(f"{src}: invalid VOI LUT / window attributes ({e})") from None
    x = np.asarray(x, dtype=np.float64)
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        x = (value_range[0] + value_range[1]) - x
    x01 = NORMALIZATIONS[normalize](x, value_range, tuple(percentiles))
    return quantize(x01, gamma=gamma, bit_depth=bit_depth)


def read_dicom(
    path: str | os.PathLike,
    *,
    apply_voi: bool = True,
    window_index: int = 0,
    normalize: str = "minmax",
    percentiles: tuple[float, float] = (0.5, 99.5),
    gamma: float = 0.8,
    bit_depth: int = 8,
) -> np.ndarray:
    """Read a single-frame greyscale DICOM as a display-ready 2-D ``uint8``/``uint16`` array.

    Args:
        path: the DICOM file (Part-10 or, as a fallback, a raw dataset).
        apply_voi: apply the VOI LUT Sequence, else Window Center/Width, when the file has one.
        window_index: which of several VOI LUTs / windows to use.
        normalize: ``"minmax"`` (image min/max -> 0/max), ``"percentile"`` (``percentiles`` of
            the image -> 0/max, clipped), ``"zscore"`` (mean -/+ 3 std, clipped) or ``"fixed"``
            (the file's full possible value range).
        percentiles: low/high percentiles for ``normalize="percentile"``.
        gamma: ``out = max * (x / max) ** gamma`` after normalization (< 1 brightens mid-tones).
        bit_depth: 8 (``uint8``) or 16 (``uint16``).

    MONOCHROME1 images are inverted so that tissue is bright. Raises :class:`DicomError` naming
    the file for a missing file, a non-DICOM, no pixel data, an undecodable or multi-frame image.
    """
    ds = load_dicom(path)
    return dicom_to_array(
        ds,
        apply_voi=apply_voi,
        window_index=window_index,
        normalize=normalize,
        percentiles=percentiles,
        gamma=gamma,
        bit_depth=bit_depth,
        source=path,
    )


def dicom_info(path: str | os.PathLike) -> dict[str, Any]:
    """Non-identifying facts about a DICOM image (no names, IDs, dates or UIDs), header only.

    Keys: ``modality``, ``sop_class``, ``view``, ``laterality``, ``patient_orientation``,
    ``rows``, ``columns``, ``bits_allocated``, ``bits_stored``, ``photometric``,
    ``transfer_syntax``, ``has_rescale``, ``has_window``, ``has_voi_lut``, ``window_count``.
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
    }
