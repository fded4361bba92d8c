"""A plain box CSV + an images folder -> COCO.

CSV columns: ``image,x,y,width,height,class`` and optionally ``patient_id``; one row per box,
``x, y`` the top-left corner and ``width, height`` the size in pixels (COCO convention). A row
whose box and class fields are all empty lists an image without objects. ``image`` is a path
relative to the images folder (or absolute); DICOM, PNG, JPEG, TIFF and BMP are read by content
and written as PNG under ``out_dir/images/``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import pandas as pd
from tqdm import tqdm

from meddet.data.convert import ConversionReport, safe_name, write_coco_splits
from meddet.data.splits import check_fractions
from meddet.errors import DataError
from meddet.io.dicom import PixelOptions
from meddet.io.image import read_image, write_png

logger = logging.getLogger(__name__)

__all__ = ["BOX_COLUMNS", "convert_box_csv", "read_box_csv"]

BOX_COLUMNS = ("image", "x", "y", "width", "height", "class")
_BOX_FIELDS = ("x", "y", "width", "height", "class")


def read_box_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a box CSV as strings; raises :class:`DataError` when missing or lacking a column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV file ({type(e).__name__}: {e})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in BOX_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} (expected the header {','.join(BOX_COLUMNS)}[,patient_id])"
        )
    return df


def _number(value: str, name: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"{name!r} is {value!r} (expected a number)") from None
    if not math.isfinite(v):
        raise ValueError(f"{name!r} is {value!r} (expected a finite number)")
    return v


def _parse_box(rec: dict[str, str], allowed: set[str] | None) -> tuple[list[float], str] | None:
    """``([x, y, w, h], class)``, or None for an image-without-objects row; ValueError if bad."""
    values = {k: str(rec.get(k, "")).strip() for k in _BOX_FIELDS}
    if not any(values.values()):
        return None
    empty = [k for k, v in values.items() if not v]
    if empty:
        raise ValueError(
            f"empty {empty} (expected all of x, y, width, height, class, or none for an image without objects)"
        )
    box = [_number(values[k], k) for k in ("x", "y", "width", "height")]
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"width/height are {box[2]:g}/{box[3]:g} (expected positive sizes)")
    cls = values["class"]
    if allowed is not None and cls not in allowed:
        raise ValueError(f"class {cls!r} is not one of {sorted(allowed)}")
    return [int(v) if float(v).is_integer() else v for v in box], cls


def convert_box_csv(
    csv_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    pixels: PixelOptions | None = None,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    progress: bool = True,
) -> ConversionReport:
    """Convert a box CSV and its images to ``out_dir/images/*.png`` + ``all/train/val/test.json``.

    Args:
        classes: category names in id order; rows with another class are bad. Default: the
            sorted distinct classes of the CSV.
        pixels: options for DICOM images (PNG/JPEG are copied unchanged as PNG).
        split: train/val/test fractions; grouped by ``patient_id`` when the column exists, else
            every image is its own group.

    A bad row (bad number, box outside the image, unknown class) or an unreadable image skips
    that image with all its rows; the report lists each with the reason.
    """
    pixels = pixels or PixelOptions()
    split = check_fractions(split)
    csv_path, images_root, out = Path(csv_path), Path(images_dir), Path(out_dir)
    if not images_root.is_dir():
        raise DataError(f"{images_root}: images folder not found")
    df = read_box_csv(csv_path)
    has_pid = "patient_id" in df.columns
    if not has_pid:
        logger.warning(
            "%s: no patient_id column; splitting by image, so one patient's images may land in several splits", csv_path
        )
    records = df.to_dict("records")
    if classes is None:
        categories = sorted({str(r["class"]).strip() for r in records if str(r["class"]).strip()})
    else:
        categories = list(classes)
    if not categories:
        raise DataError(f"{csv_path}: no class names found (expected a non-empty 'class' column)")
    cat_ids = {n: i + 1 for i, n in enumerate(categories)}
    allowed = set(categories)

    groups: dict[str, list[tuple[int, dict[str, str]]]] = {}
    report = ConversionReport(out_dir=out)
    for i, rec in enumerate(records):
        name = str(rec["image"]).strip().replace("\\", "/")
        if not name:
            report.skip(f"{csv_path} row {i + 1}", "empty 'image'")
            continue
        groups.setdefault(name, []).append((i + 1, rec))

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    used_names: set[str] = set()
    for name in tqdm(sorted(groups), desc="boxes", unit="image", disable=not progress):
        try:
            record, anns = _convert_image(
                name, groups[name], csv_path, images_root, out, cat_ids, allowed, has_pid, pixels, used_names
            )
        except DataError as e:
            report.skip(f"image {name}", str(e))
            continue
        record["id"] = len(images) + 1
        for a in anns:
            a.update(id=len(annotations) + 1, image_id=record["id"])
            annotations.append(a)
        images.append(record)
    coco = {
        "info": {"description": f"{csv_path.name} converted by meddet", "preprocessing": pixels.as_kwargs()},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_ids[n], "name": n} for n in categories],
    }
    return write_coco_splits(coco, out, report, split, seed)


def _convert_image(
    name: str,
    rows: list[tuple[int, dict[str, str]]],
    csv_path: Path,
    images_root: Path,
    out: Path,
    cat_ids: dict[str, int],
    allowed: set[str],
    has_pid: bool,
    pixels: PixelOptions,
    used_names: set[str],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    boxes: list[tuple[list[float], str]] = []
    pids = set()
    for row_no, rec in rows:
        try:
            parsed = _parse_box(rec, allowed)
        except ValueError as e:
            raise DataError(f"{csv_path} row {row_no}: {e}") from None
        if parsed is not None:
            boxes.append(parsed)
        if has_pid and str(rec.get("patient_id", "")).strip():
            pids.add(str(rec["patient_id"]).strip())
    if len(pids) > 1:
        raise DataError(f"{csv_path}: rows of {name} give several patient_id values {sorted(pids)} (expected one)")
    src = Path(name) if Path(name).is_absolute() else images_root / name
    img = read_image(src, **pixels.as_kwargs())
    h, w = img.shape[:2]
    anns = []
    for (x, y, bw, bh), cls in boxes:
        if x < 0 or y < 0 or x + bw > w + 1e-6 or y + bh > h + 1e-6:
            raise DataError(f"{csv_path}: box [{x}, {y}, {bw}, {bh}] of {name} lies outside the {w}x{h} image")
        anns.append({"category_id": cat_ids[cls], "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    stem = safe_name(str(PurePosixPath(name).with_suffix("")))
    out_name = f"{stem}.png"
    k = 1
    while out_name in used_names:
        k += 1
        out_name = f"{stem}_{k}.png"
    used_names.add(out_name)
    file_name = f"images/{out_name}"
    write_png(out / file_name, img)
    record: dict[str, Any] = {"file_name": file_name, "height": int(h), "width": int(w), "source": name}
    if pids:
        record["patient_id"] = pids.pop()
    return record, anns
