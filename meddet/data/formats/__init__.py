"""Dataset formats converted to meddet's COCO layout (``images/`` + ``all/train/val/test.json``)."""

from meddet.data.formats.box_csv import convert_box_csv, read_box_csv
from meddet.data.formats.cbis_ddsm import ClassMapping, convert_cbis_ddsm, read_cbis_csv

__all__ = ["ClassMapping", "convert_box_csv", "convert_cbis_ddsm", "read_box_csv", "read_cbis_csv"]
