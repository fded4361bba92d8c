"""Reading pixels: DICOM (rescale, VOI LUT / windowing, MONOCHROME1, padding, compressed
syntaxes) and PNG/JPEG/PGM, normalized to 8- or 16-bit arrays; breast geometry (side, region,
flip/crop with boxes); atomic PNG writing."""

from meddet.io.breast import Geometry, breast_mask, breast_region, chest_wall_side, flip_boxes, orient_and_crop
from meddet.io.dicom import (
    NORMALIZATIONS,
    PixelOptions,
    dicom_info,
    dicom_to_array,
    is_dicom_file,
    load_dicom,
    pixel_spacing,
    quantize,
    read_dicom,
    stored_pixels,
)
from meddet.io.image import ImageHeader, image_header, read_image, write_png
from meddet.io.recipe import PreprocessRecipe, TaggedImage, read_for_recipe

__all__ = [
    "NORMALIZATIONS",
    "Geometry",
    "ImageHeader",
    "PixelOptions",
    "PreprocessRecipe",
    "TaggedImage",
    "breast_mask",
    "breast_region",
    "chest_wall_side",
    "dicom_info",
    "dicom_to_array",
    "flip_boxes",
    "image_header",
    "is_dicom_file",
    "load_dicom",
    "orient_and_crop",
    "pixel_spacing",
    "quantize",
    "read_dicom",
    "read_for_recipe",
    "read_image",
    "stored_pixels",
    "write_png",
]
