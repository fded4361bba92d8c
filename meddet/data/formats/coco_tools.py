"""COCO files: merge several into one, and take subsets (classes, image attributes, a sample).

Both keep meddet's contract: category ids 1..K with names, image and annotation ids 1..N, and
``file_name`` resolvable from the written file's folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meddet.data.coco import class_names, load_coco, resolve_image_path, save_json_atomic
from meddet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["filter_coco", "merge_coco", "rebase_file_names"]


def merge_coco(
    coco_files: Sequence[str | os.PathLike], out_path: str | os.PathLike, *, image_roots: Sequence[str] = ()
) -> dict[str, Any]:
    """Merge COCO files into ``out_path`` and return the merged dict.

    Categories are matched by name (ids 1..K: the first file's order, then new names as they
    come); image and annotation ids are renumbered; each ``file_name`` is rewritten relative to
    ``out_path``'s folder (``image_roots[i]``, when given, is the folder file names of the i-th
    file are relative to). An image file listed by two inputs is an error.
    """
    if not coco_files:
        raise ConfigError("merge: no COCO file given")
    if image_roots and len(image_roots) != len(coco_files):
        raise ConfigError(f"merge: {len(image_roots)} image root(s) for {len(coco_files)} COCO file(s)")
    out = Path(out_path)
    names: list[str] = []
    merged: dict[str, Any] = {"images": [], "annotations": []}
    seen: dict[Path, str] = {}
    for k, path in enumerate(coco_files):
        coco = load_coco(path)
        for n in class_names(coco):
            if n not in names:
                names.append(n)
        cat_map = {c["id"]: names.index(c["name"]) + 1 for c in coco["categories"]}
        img_map = {}
        root = image_roots[k] if image_roots else ""
        for im in coco["images"]:
            src = resolve_image_path(im["file_name"], path, root).resolve()
            if src in seen:
                raise DataError(f"{path}: image {src} is already listed by {seen[src]} (expected each image once)")
            seen[src] = str(path)
            img_map[im["id"]] = len(merged["images"]) + 1
            rel = Path(os.path.relpath(src, out.parent.resolve())).as_posix()
            merged["images"].append({**im, "id": img_map[im["id"]], "file_name": rel, "merged_from": Path(path).name})
        for a in coco["annotations"]:
            merged["annotations"].append(
                {
                    **a,
                    "id": len(merged["annotations"]) + 1,
                    "image_id": img_map[a["image_id"]],
                    "category_id": cat_map[a["category_id"]],
                }
            )
    merged["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    merged["info"] = {"description": "merged by meddet", "sources": [str(p) for p in coco_files]}
    save_json_atomic(merged, out)
    logger.info(
        "merged %d file(s): %d images, %d boxes, classes %s -> %s",
        len(coco_files),
        len(merged["images"]),
        len(merged["annotations"]),
        names,
        out,
    )
    return merged


def filter_coco(
    coco: dict[str, Any],
    *,
    categories: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    max_images: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A subset of a COCO dict.

    Args:
        categories: keep only these classes (by name, in this order: ids 1..K'); other boxes are
            dropped, the images stay.
        where: keep images whose field has one of the given values, e.g.
            ``{"view": ["CC"], "laterality": ["LEFT"]}`` (values compared as strings).
        max_images: then keep this many images at most, a random sample drawn with ``seed``.

    Ids are renumbered 1..N; annotations follow their images.
    """
    names = class_names(coco)
    keep_names = list(categories) if categories else names
    unknown = [n for n in keep_names if n not in names]
    if unknown:
        raise ConfigError(f"subset: unknown class(es) {unknown}; the file has {names}")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"subset: max_images must be at least 1, found {max_images}")
    images = list(coco["images"])
    for key, values in (where or {}).items():
        allowed = {str(v) for v in values}
        if images and not any(key in im for im in images):
            raise ConfigError(f"subset: no image has a field {key!r} (fields: {sorted(images[0])})")
        images = [im for im in images if str(im.get(key)) in allowed]
    if max_images is not None and len(images) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(images), size=max_images, replace=False))
        images = [images[i] for i in pick]
    new_cat = {c["id"]: keep_names.index(c["name"]) + 1 for c in coco["categories"] if c["name"] in keep_names}
    img_map = {im["id"]: i + 1 for i, im in enumerate(images)}
    annotations: list[dict] = []
    for a in coco["annotations"]:
        if a["image_id"] in img_map and a["category_id"] in new_cat:
            annotations.append(
                {
                    **a,
                    "id": len(annotations) + 1,
                    "image_id": img_map[a["image_id"]],
                    "category_id": new_cat[a["category_id"]],
                }
            )
    old = {c["name"]: c for c in coco["categories"]}
    return {
        **{k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")},
        "images": [{**im, "id": img_map[im["id"]]} for im in images],
        "annotations": annotations,
        "categories": [{**old[n], "id": i + 1} for i, n in enumerate(keep_names)],
    }


def rebase_file_names(
    coco: dict[str, Any], from_json: str | os.PathLike, to_json: str | os.PathLike, image_root: str | os.PathLike = ""
) -> dict[str, Any]:
    """The same COCO dict with every ``file_name`` rewritten to resolve from ``to_json``'s folder
    (they were relative to ``image_root``, else to ``from_json``'s folder)."""
    target = Path(to_json).resolve().parent
    images = []
    for im in coco["images"]:
        src = resolve_image_path(im["file_name"], from_json, image_root).resolve()
        images.append({**im, "file_name": Path(os.path.relpath(src, target)).as_posix()})
    return {**coco, "images": images}
