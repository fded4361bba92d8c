"""Small public helpers for notebooks and scripts:

    from utils import read_dicom, read_image, load_coco, dicom_info, check_dataset

- ``read_dicom(path, bit_depth=8, gamma=0.8, normalize="minmax", ...)``: a DICOM as a
  display-ready 2-D array (rescale, VOI LUT / window, MONOCHROME1 inverted so tissue is bright,
  padding black; compressed transfer syntaxes decoded).
- ``read_image(path, **dicom_kwargs)``: DICOM, PNG, JPEG, TIFF, BMP or PGM by content; greyscale
  (H, W) uint8/uint16 or colour (H, W, 3) BGR uint8.
- ``load_coco(path)``: a checked COCO detection dict.
- ``dicom_info(path)``: non-identifying header facts (view, laterality, size, bits, photometric,
  pixel spacing).
- ``check_dataset([train.json, val.json, test.json])``: counts, box sizes and problems
  (``.table()``, ``.errors``, ``.warnings``, ``.write(folder)``).
"""

from meddet.data.check import check_dataset
from meddet.data.coco import load_coco
from meddet.io import dicom_info, read_dicom, read_image

__all__ = ["check_dataset", "dicom_info", "load_coco", "read_dicom", "read_image"]
