"""Small public helpers for notebooks and scripts:

    from utils import read_dicom, read_image, load_coco, dicom_info

- ``read_dicom(path, bit_depth=8, gamma=0.8, ...)``: a DICOM as a display-ready 2-D array
  (rescale, VOI LUT / window, MONOCHROME1 inverted so tissue is bright).
- ``read_image(path, **dicom_kwargs)``: DICOM, PNG, JPEG, TIFF or BMP by content; greyscale
  (H, W) uint8/uint16 or colour (H, W, 3) BGR uint8.
- ``load_coco(path)``: a checked COCO detection dict.
- ``dicom_info(path)``: non-identifying header facts (view, laterality, size, bits, photometric).
"""

from meddet.data.coco import load_coco
from meddet.io import dicom_info, read_dicom, read_image

__all__ = ["dicom_info", "load_coco", "read_dicom", "read_image"]
