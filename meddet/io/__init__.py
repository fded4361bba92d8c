"""Reading pixels: DICOM (rescale, VOI LUT / windowing, MONOCHROME1, compressed syntaxes) and
PNG/JPEG, normalized to 8- or 16-bit arrays; atomic PNG writing."""

from meddet.io.dicom import (
    NORMALIZATIONS,
    PixelOptions,
    dicom_info,
    dicom_to_array,
    is_dicom_file,
    load_dicom,
    quantize,
    read_dicom,
    stored_pixels,
)
from meddet.io.image import read_image, write_png

__all__ = [
    "NORMALIZATIONS",
    "PixelOptions",
    "dicom_info",
    "dicom_to_array",
    "is_dicom_file",
    "load_dicom",
    "quantize",
    "read_dicom",
    "read_image",
    "stored_pixels",
    "write_png",
]
