"""YOLO (Ultralytics) txt labels <-> COCO.

The Ultralytics layout::

    data.yaml            path: <root>   train: images/train   val: images/val   [test: ...]
                         names: [a, b] or {0: a, 1: b}
    images/train/x.jpg   labels/train/x.txt   one line per object: "class cx cy w h", normalized
                                              to [0, 1] (or "class x1 y1 x2 y2 ..." polygons)

A split entry may be a folder, a ``.txt`` list of image paths, or a list of those; an image's
label file is its path with the last ``images`` folder replaced by ``labels`` and the suffix by
``.txt``; a missing or empty label file means no objects.

:func:`yolo_to_coco` writes one COCO file per split, pointing at the images where they are
(paths relative to the output folder); :func:`coco_to_yolo` writes the layout above from COCO
files (copying or linking the images).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from meddet.data.coco import category_id_to_index, class_names, load_coco, resolve_image_path, save_json_atomic
from meddet.data.convert import ConversionReport
from meddet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "coco_to_yolo", "label_path", "read_data_yaml", "yolo_to_coco"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SPLITS = ("train", "val", "test")


def read_data_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The dataset YAML with ``names`` as a list in class order and ``path`` resolved (relative
    paths are taken from the YAML's folder)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: YOLO data YAML not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DataError(f"{path}: no 'names' (expected an Ultralytics dataset YAML with names and train/val)")
    names = data["names"]
    if isinstance(names, dict):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: 'names' keys are {keys} (expected 0..{len(keys) - 1})")
        names = [str(names[k]) for k in keys]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise DataError(f"{path}: 'names' is {type(names).__name__} (expected a list or a {{id: name}} mapping)")
    root = Path(str(data.get("path") or "."))
    data = {**data, "names": names, "path": root if root.is_absolute() else (path.parent / root)}
    return data


def label_path(image: Path) -> Path:
    """The label file of an image: the last ``images`` folder becomes ``labels``, suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _split_images(root: Path, entry: Any, yaml_path: Path) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    found: list[Path] = []
    for e in entries:
        p = Path(str(e))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix.lower() == ".txt":
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    q = Path(line.strip())
                    found.append(q if q.is_absolute() else root / q)
        else:
            raise DataError(f"{yaml_path}: split entry {e!r} -> {p} is neither a folder nor a .txt image list")
    return found


def _parse_label_line(line: str, n_classes: int) -> tuple[int, float, float, float, float]:
    values = line.split()
    try:
        cls = int(values[0])
        coords = [float(v) for v in values[1:]]
    except (ValueError, IndexError):
        raise ValueError(f"{line.strip()!r} is not 'class cx cy w h' numbers") from None
    if not 0 <= cls < n_classes:
        raise ValueError(f"class {cls} (expected 0..{n_classes - 1})")
    if len(coords) == 4:
        cx, cy, w, h = coords
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    elif len(coords) >= 6 and len(coords) % 2 == 0:  # a segmentation polygon
        xs, ys = coords[0::2], coords[1::2]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    else:
        raise ValueError(f"{len(coords)} coordinates (expected 4, or an even number >= 6 for a polygon)")
    tol = 1e-3
    if min(x0, y0) < -tol or max(x1, y1) > 1 + tol:
        raise ValueError(f"{line.strip()!r} leaves the image (coordinates must be normalized to 0..1)")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{line.strip()!r} has no area")
    return cls, max(0.0, x0), max(0.0, y0), min(1.0, x1), min(1.0, y1)


def yolo_to_coco(
    data_yaml: str | os.PathLike, out_dir: str | os.PathLike, *, splits: Sequence[str] = _SPLITS
) -> ConversionReport:
    """Write ``out_dir/<split>.json`` for each split the YAML defines (``all.json`` too).

    Images stay where they are (``file_name`` relative to ``out_dir``); sizes are read from the
    image headers. An image whose label file is bad (unknown class, coordinates outside 0..1,
    malformed line) or that cannot be opened is skipped and reported. The YAML's splits are kept
    as they are: YOLO datasets carry no patient ids, so check them with ``convert_dataset.py check``.
    """
    yaml_path = Path(data_yaml)
    data = read_data_yaml(yaml_path)
    names: list[str] = data["names"]
    out = Path(out_dir)
    report = ConversionReport(out_dir=out, categories=list(names))
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    info = {"description": f"{yaml_path} converted by meddet"}
    everything: dict[str, Any] = {
        "info": {**info, "split": {"method": "yolo"}},
        "images": [],
        "annotations": [],
        "categories": categories,
    }
    for split in splits:
        if not data.get(split):
            continue
        coco: dict[str, Any] = {
            "info": {**info, "split": {"method": "yolo", "name": split}},
            "images": [],
            "annotations": [],
            "categories": categories,
        }
        for image in _split_images(data["path"], data[split], yaml_path):
            try:
                record, anns = _image_record(image, len(names), out)
            except DataError as e:
                report.skip(f"{split} image {image}", str(e))
                continue
            for target in (coco, everything):
                image_id = len(target["images"]) + 1
                target["images"].append({"id": image_id, **record})
                for a in anns:
                    target["annotations"].append({"id": len(target["annotations"]) + 1, "image_id": image_id, **a})
        path = out / f"{split}.json"
        save_json_atomic(coco, path)
        report.files[split] = path
        report.splits[split] = len(coco["images"])
    if not report.files:
        raise DataError(f"{yaml_path}: none of the splits {list(splits)} is defined (expected train/val paths)")
    save_json_atomic(everything, out / "all.json")
    report.files["all"] = out / "all.json"
    report.n_images, report.n_annotations = len(everything["images"]), len(everything["annotations"])
    return report


def _image_record(image: Path, n_classes: int, out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        with Image.open(image) as im:
            width, height = im.size
    except (OSError, ValueError) as e:
        raise DataError(f"{image}: cannot open the image ({type(e).__name__}: {e})") from None
    anns = []
    labels = label_path(image)
    if labels.is_file():
        for n, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                cls, x0, y0, x1, y1 = _parse_label_line(line, n_classes)
            except ValueError as e:
                raise DataError(f"{labels} line {n}: {e}") from None
            box = [
                round(x0 * width, 3),
                round(y0 * height, 3),
                round((x1 - x0) * width, 3),
                round((y1 - y0) * height, 3),
            ]
            anns.append({"category_id": cls + 1, "bbox": box, "area": round(box[2] * box[3], 3), "iscrowd": 0})
    record = {
        "file_name": Path(os.path.relpath(image.resolve(), out.resolve())).as_posix(),
        "height": height,
        "width": width,
        "source": image.name,
    }
    return record, anns


def coco_to_yolo(
    coco_files: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    image_root: str | os.PathLike = "",
    link: bool = False,
) -> Path:
    """Write the Ultralytics layout from COCO files, one per split (``{"train": path, ...}``).

    Images are copied (or symlinked with ``link=True``) to ``images/<split>/``; labels go to
    ``labels/<split>/<stem>.txt`` (an empty file for an image without objects); class ``k`` is
    the k-th category by id. Crowd annotations have no YOLO equivalent and are left out (logged).
    Returns the path of the written ``data.yaml``.
    """
    if not coco_files:
        raise ConfigError("coco_to_yolo: no COCO file given (expected {split: path})")
    out = Path(out_dir)
    names: list[str] | None = None
    for split, coco_path in coco_files.items():
        coco = load_coco(coco_path)
        these = class_names(coco)
        if names is None:
            names = these
        elif these != names:
            raise DataError(f"{coco_path}: categories {these} differ from the other splits' {names}")
        index = category_id_to_index(coco)
        by_image: dict[Any, list[dict[str, Any]]] = {}
        crowd = 0
        for a in coco["annotations"]:
            if a.get("iscrowd", 0):
                crowd += 1
                continue
            by_image.setdefault(a["image_id"], []).append(a)
        if crowd:
            logger.info("%s: %d crowd annotation(s) left out (YOLO has no crowd regions)", coco_path, crowd)
        used: set[str] = set()
        for im in coco["images"]:
            src = resolve_image_path(im["file_name"], coco_path, image_root)
            if not src.is_file():
                raise DataError(f"{coco_path}: image {src} not found (file_name {im['file_name']!r})")
            stem = src.stem
            k = 1
            while stem in used:
                k += 1
                stem = f"{src.stem}_{k}"
            used.add(stem)
            target = out / "images" / split / f"{stem}{src.suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            if link:
                target.symlink_to(src.resolve())
            else:
                shutil.copyfile(src, target)
            w, h = float(im["width"]), float(im["height"])
            lines = []
            for a in by_image.get(im["id"], []):
                x, y, bw, bh = (float(v) for v in a["bbox"])
                lines.append(
                    f"{index[a['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
                )
            label = out / "labels" / split / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    data = {"path": str(out.resolve()), **{s: f"images/{s}" for s in coco_files}, "names": dict(enumerate(names or []))}
    yaml_path = out / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return yaml_path
