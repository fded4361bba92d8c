"""Dataset formats converted to meddet's COCO layout (``images/`` + ``all/train/val/test.json``),
and COCO tools (YOLO both ways, merge, subset).

Names are imported on first use (PEP 562), so a worker process converting one format does not
import every other format's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClassMapping": "cbis_ddsm",
    "coco_to_yolo": "yolo",
    "convert_box_csv": "box_csv",
    "convert_cbis_ddsm": "cbis_ddsm",
    "convert_images": "images",
    "convert_inbreast": "inbreast",
    "convert_mias": "mias",
    "filter_coco": "coco_tools",
    "find_images": "images",
    "merge_coco": "coco_tools",
    "read_box_csv": "box_csv",
    "read_cbis_csv": "cbis_ddsm",
    "read_data_yaml": "yolo",
    "read_inbreast_csv": "inbreast",
    "read_inbreast_rois": "inbreast",
    "read_mias_info": "mias",
    "rebase_file_names": "coco_tools",
    "yolo_to_coco": "yolo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
