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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from meddet.data.convert import ID_MAP, ConversionReport, assemble_coco, read_csv_strings, safe_name, write_coco_splits
from meddet.data.parallel import Converted, Job, RunOptions, file_stamps, run_jobs
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
    df = read_csv_strings(path)
    df.columns = [c.lower() for c in df.columns]
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


def _parse_box(rec: dict[str, str], allowed: set[str] | None) -> tuple[tuple[float, float, float, float], str] | None:
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
    x, y, w, h = (int(v) if float(v).is_integer() else v for v in box)
    return (x, y, w, h), cls


@dataclass(frozen=True)
class _ImageJob:
    path: str
    name: str  # as in the CSV
    csv: str
    boxes: tuple[tuple[tuple[float, float, float, float], int], ...]  # ((x, y, w, h), category id)
    patient_id: str | None
    pixels: PixelOptions


def _convert_image(job: Job, out_dir: Path) -> Converted:
    p: _ImageJob = job.payload
    img = read_image(p.path, **p.pixels.as_kwargs())
    h, w = img.shape[:2]
    anns = []
    for (x, y, bw, bh), cat in p.boxes:
        if x < 0 or y < 0 or x + bw > w + 1e-6 or y + bh > h + 1e-6:
            raise DataError(f"{p.csv}: box [{x}, {y}, {bw}, {bh}] of {p.name} lies outside the {w}x{h} image")
        anns.append({"category_id": cat, "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    digest = write_png(out_dir / job.output, img)
    record: dict[str, Any] = {"file_name": job.output, "height": int(h), "width": int(w), "source": p.name}
    if p.patient_id:
        record["patient_id"] = p.patient_id
    return Converted(
        source=p.name,
        record=record,
        annotations=anns,
        sha256=digest,
        shape=[int(h), int(w)],
        bit_depth=8 * img.dtype.itemsize,
        inputs=file_stamps([p.path]),
    )


def convert_box_csv(
    csv_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    pixels: PixelOptions | None = None,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    run: RunOptions | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert a box CSV and its images to ``out_dir/images/*.png`` + ``all/train/val/test.json``
    (with ``manifest.jsonl`` and ``errors.txt``).

    Args:
        classes: category names in id order; rows with another class are bad. Default: the
            sorted distinct classes of the CSV.
        pixels: options for DICOM images (PNG/JPEG are copied unchanged as PNG).
        split: train/val/test fractions; grouped by ``patient_id`` when the column exists, else
            every image is its own group.
        run: workers, shard, resume (:class:`~meddet.data.parallel.RunOptions`).

    A bad row (bad number, box outside the image, unknown class) or an unreadable image skips
    that image with all its rows; the report lists each with the reason.
    """
    pixels = pixels or PixelOptions()
    run = run or RunOptions()
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

    groups: dict[str, list[tuple[int, dict[str, str]]]] = {}
    report = ConversionReport(out_dir=out)
    for i, rec in enumerate(records):
        name = str(rec["image"]).strip().replace("\\", "/")
        if not name:
            report.skip(f"{csv_path} row {i + 1}", "empty 'image'")
            continue
        groups.setdefault(name, []).append((i + 1, rec))

    jobs: list[Job] = []
    used_names: set[str] = set()
    for name in sorted(groups):
        try:
            boxes, pid = _parse_rows(name, groups[name], csv_path, set(categories), has_pid)
        except DataError as e:
            report.skip(f"image {name}", str(e))
            continue
        stem = safe_name(str(PurePosixPath(name).with_suffix("")))
        out_name, k = f"{stem}.png", 1
        while out_name in used_names:
            k += 1
            out_name = f"{stem}_{k}.png"
        used_names.add(out_name)
        src = Path(name) if Path(name).is_absolute() else images_root / name
        payload = _ImageJob(str(src), name, str(csv_path), tuple((b, cat_ids[c]) for b, c in boxes), pid, pixels)
        jobs.append(Job(key=out_name[:-4], output=f"images/{out_name}", item=f"image {name}", payload=payload))

    settings = {"converter": "boxes", "pixels": pixels.as_kwargs(), "categories": categories}
    entries = run_jobs(
        jobs, _convert_image, out, settings=settings, options=run, report=report, progress=progress, desc="boxes"
    )
    if run.shard is not None:
        report.n_images = len(entries)
        return report
    coco = assemble_coco(
        entries,
        [{"id": cat_ids[n], "name": n} for n in categories],
        {"description": f"{csv_path.name} converted by meddet", "preprocessing": pixels.as_kwargs()},
        id_map=out / ID_MAP,
    )
    return write_coco_splits(coco, out, report, split, seed)


def _parse_rows(
    name: str, rows: list[tuple[int, dict[str, str]]], csv_path: Path, allowed: set[str], has_pid: bool
) -> tuple[list[tuple[tuple[float, float, float, float], str]], str | None]:
    boxes = []
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
    return boxes, (pids.pop() if pids else None)
