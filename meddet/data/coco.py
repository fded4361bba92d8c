"""COCO JSON: loading with validation, writing atomically, and turning it into records.

The meddet COCO contract (docs/ARCHITECTURE.md, "Contracts"): category ids 1..K with names; each image may carry
`patient_id`, `source`, and for tiles `parent_id` and `offset`; boxes are [x, y, w, h] in the
image's own pixels. `file_name` is resolved against an explicit image root, else the JSON's folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meddet.errors import DataError

logger = logging.getLogger(__name__)

REQUIRED_TOP = ("images", "annotations", "categories")
# How far (pixels) a box may reach past the image edge before it counts as outside (rounding of
# converted coordinates); such boxes are still clipped, silently.
BOX_TOLERANCE = 0.5
_WARNED: set[tuple[str, int, int]] = set()


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file's content; a missing file or bad JSON is a DataError naming the file (`what` it should be)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); expected {what}") from None


def load_coco(path: str | os.PathLike) -> dict:
    """Read and check a COCO detection file; errors name the file and the offending field."""
    path = Path(path)
    data = read_json(path, "a COCO file")
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO object with images/annotations/categories")
    for key in REQUIRED_TOP:
        if key not in data or not isinstance(data[key], list):
            raise DataError(f"{path}: missing or non-list field {key!r} (expected a COCO detection file)")
    cat_ids = set()
    for i, c in enumerate(data["categories"]):
        if "id" not in c or "name" not in c:
            raise DataError(f"{path}: categories[{i}] needs 'id' and 'name', found {c!r}")
        cat_ids.add(c["id"])
    img_ids = set()
    for i, im in enumerate(data["images"]):
        for k in ("id", "file_name", "height", "width"):
            if k not in im:
                raise DataError(f"{path}: images[{i}] has no {k!r} field")
        img_ids.add(im["id"])
    for i, a in enumerate(data["annotations"]):
        for k in ("image_id", "category_id", "bbox"):
            if k not in a:
                raise DataError(f"{path}: annotations[{i}] has no {k!r} field")
        if a["image_id"] not in img_ids:
            raise DataError(f"{path}: annotations[{i}] refers to unknown image_id {a['image_id']!r}")
        if a["category_id"] not in cat_ids:
            raise DataError(
                f"{path}: annotations[{i}] has category_id {a['category_id']!r}; expected one of {sorted(cat_ids)}"
            )
        b = a["bbox"]
        if not (isinstance(b, (list, tuple)) and len(b) == 4):
            raise DataError(f"{path}: annotations[{i}].bbox must be [x, y, w, h], found {b!r}")
    return data


def save_json_atomic(obj: Any, path: str | os.PathLike, indent: int | None = None) -> None:
    """Write JSON to a temporary file then rename, so a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
    os.replace(tmp, path)


def categories_by_id(coco: dict) -> list[dict]:
    """The categories ordered by id: model class index k is the k-th of these (meddet's one class order)."""
    return sorted(coco["categories"], key=lambda c: c["id"])


def class_names(coco: dict) -> list[str]:
    """Category names ordered by id; model class index k is the k-th of these."""
    return [c["name"] for c in categories_by_id(coco)]


def category_ids(coco: dict) -> list[int]:
    """Category ids ordered by id: the COCO id of model class index k is the k-th of these."""
    return [c["id"] for c in categories_by_id(coco)]


def category_id_to_index(coco: dict) -> dict[int, int]:
    """COCO category id -> model class index."""
    return {c: i for i, c in enumerate(category_ids(coco))}


def resolve_image_path(file_name: str, json_path: str | os.PathLike, image_root: str | os.PathLike = "") -> Path:
    p = Path(file_name)
    if p.is_absolute():
        return p
    root = Path(image_root) if image_root else Path(json_path).parent
    return root / p


def coco_to_records(coco: dict, json_path: str | os.PathLike, image_root: str | os.PathLike = "") -> list[dict]:
    """detectron2-style dataset dicts: one per image, boxes as XYXY floats and 0-based classes."""
    cat_index = category_id_to_index(coco)
    by_image: dict[Any, list] = {}
    for a in coco["annotations"]:
        if a.get("iscrowd", 0):
            continue
        by_image.setdefault(a["image_id"], []).append(a)
    records = []
    for im in coco["images"]:
        anns = []
        for a in by_image.get(im["id"], []):
            x, y, w, h = (float(v) for v in a["bbox"])
            if w <= 0 or h <= 0:
                continue
            anns.append({"bbox": [x, y, x + w, y + h], "category": cat_index[a["category_id"]]})
        records.append(
            {
                "file_name": str(resolve_image_path(im["file_name"], json_path, image_root)),
                "image_id": im["id"],
                "height": int(im["height"]),
                "width": int(im["width"]),
                "annotations": anns,
            }
        )
        if any(k in im for k in ("flipped", "crop", "original_size")):
            # converted with the recipe's flip / crop already (meddet.io.recipe): never apply them again
            records[-1]["preprocessed"] = True
    return records


class DatasetSplit:
    """One COCO split, read and checked once and handed down through an application (evaluate, tune,
    predict on a split) instead of its path: the COCO dict, its class names and category ids in
    category-id order (model class index k is the k-th), and its records (`coco_to_records` of the
    ground truth clipped to the images, as the loaders see it; made on first use).

    `image_root` (DATASETS.IMAGE_ROOT; empty: the file's folder) resolves the images; `strict_boxes`
    (DATASETS.STRICT_BOXES) makes a box outside its image an error when the records are made."""

    def __init__(
        self, path: str | os.PathLike, coco: dict, image_root: str | os.PathLike = "", strict_boxes: bool = False
    ) -> None:
        self.path = Path(path)
        self.coco = coco
        self.image_root = str(image_root or "")
        self.strict_boxes = bool(strict_boxes)
        self._records: list[dict] | None = None

    @classmethod
    def load(
        cls, path: str | os.PathLike, image_root: str | os.PathLike = "", strict_boxes: bool = False
    ) -> DatasetSplit:
        """Read and check the COCO file `path` (`load_coco`)."""
        return cls(path, load_coco(path), image_root, strict_boxes)

    @property
    def categories(self) -> list[dict]:
        """The categories sorted by id."""
        return categories_by_id(self.coco)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    @property
    def records(self) -> list[dict]:
        """detectron2-style records of the images (boxes clipped to them; see `clip_coco_boxes`)."""
        if self._records is None:
            clipped, _ = clip_coco_boxes(self.coco, str(self.path), strict=self.strict_boxes)
            self._records = coco_to_records(clipped, self.path, self.image_root)
        return self._records

    def __repr__(self) -> str:
        return f"DatasetSplit({str(self.path)!r}, {len(self.coco['images'])} images, classes {self.class_names})"


@dataclass
class BoxFixes:
    """What clip_coco_boxes did: boxes clipped to their image, boxes dropped (nothing left inside),
    and the image files they are on (in order, each once)."""

    clipped: int = 0
    dropped: int = 0
    files: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.clipped or self.dropped)


def clip_coco_boxes(coco: dict, source: str, strict: bool = False) -> tuple[dict, BoxFixes]:
    """The ground truth as a model can see it: every box clipped to its image (``[0, width] x
    [0, height]``), and boxes with nothing left inside dropped. Returns a COCO dict (the input is
    not changed; only annotations differ) and the counts. The same rule serves training
    (DatasetMapper's records) and evaluation (the ground truth that detections are matched to).

    A warning (once per file and counts) names `source` and the image files. ``strict``
    (DATASETS.STRICT_BOXES) makes the first box reaching outside by more than BOX_TOLERANCE pixels a
    DataError naming the file, the image and the box. Boxes with other faults (not numbers, zero
    size inside the image, unknown image) are left to the checks of their readers."""
    images = {im.get("id"): im for im in coco.get("images", []) if isinstance(im, dict)}
    fixes = BoxFixes()
    seen: set[str] = set()
    anns = []
    for i, a in enumerate(coco.get("annotations", [])):
        im = images.get(a.get("image_id")) if isinstance(a, dict) else None
        if im is None:
            anns.append(a)
            continue
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            W, H = float(im["width"]), float(im["height"])
        except (TypeError, ValueError, KeyError):
            anns.append(a)
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h, W, H)) or w <= 0 or h <= 0:
            anns.append(a)
            continue
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
        if (x1, y1, x2, y2) == (x, y, x + w, y + h):
            anns.append(a)
            continue
        t = BOX_TOLERANCE
        outside = x < -t or y < -t or x + w > W + t or y + h > H + t
        vanished = x2 <= x1 or y2 <= y1
        name = str(im.get("file_name", im.get("id")))
        if strict and (outside or vanished):
            raise DataError(
                f"{source}: annotations[{i}] (image {name}, {W:g}x{H:g}) has bbox {list(a['bbox'])}, which "
                f"{'lies wholly' if vanished else 'reaches'} outside the image; expected x, y >= 0, x + w <= "
                f"{W:g}, y + h <= {H:g} (DATASETS.STRICT_BOXES is on; turn it off to clip such boxes)"
            )
        if (outside or vanished) and name not in seen:
            seen.add(name)
            fixes.files.append(name)
        if vanished:
            fixes.dropped += 1
            continue
        fixes.clipped += int(outside)
        new = {**a, "bbox": [x1, y1, x2 - x1, y2 - y1]}
        if isinstance(a.get("area"), (int, float)):
            new["area"] = min(float(a["area"]), (x2 - x1) * (y2 - y1))
        anns.append(new)
    if fixes and (source, fixes.clipped, fixes.dropped) not in _WARNED:
        _WARNED.add((source, fixes.clipped, fixes.dropped))
        shown = ", ".join(fixes.files[:8]) + (f", ... ({len(fixes.files)} images)" if len(fixes.files) > 8 else "")
        logger.warning(
            "%s: %d box(es) reach outside their image and were clipped to it, %d lie wholly outside and were "
            "dropped (%s); set DATASETS.STRICT_BOXES True to stop on such boxes instead",
            source,
            fixes.clipped,
            fixes.dropped,
            shown,
        )
    if not fixes:
        return coco, fixes
    return {**coco, "annotations": anns}, fixes
