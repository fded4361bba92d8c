"""A folder of images (DICOM, PNG, JPEG, TIFF, BMP, PGM) -> PNGs, with no annotations.

For unlabelled data (pre-training, inference on a new archive) and as the plain pixel
conversion at scale: the same display chain as the dataset converters, worker processes,
resume, manifest and error report (:mod:`meddet.data.parallel`). Writes ``OUT/images/*.png``
(named after each file's path under the source folder), ``OUT/all.json`` (a COCO file with the
images and no categories or annotations), ``manifest.jsonl`` and ``errors.txt``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from meddet.data.coco import save_json_atomic
from meddet.data.convert import ID_MAP, ConversionReport, assemble_coco, safe_name
from meddet.data.parallel import Converted, Job, RunOptions, file_stamps, run_jobs
from meddet.errors import DataError
from meddet.io.dicom import PixelOptions, is_dicom_file, load_dicom, pixel_spacing
from meddet.io.image import write_png
from meddet.io.recipe import PreprocessRecipe, read_for_recipe

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "convert_images", "find_images"]

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm")


def find_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive, sorted): known image suffixes, plus suffix-less
    files that are DICOM (archives often drop the ``.dcm``). Hidden files are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES or (not suffix and is_dicom_file(path)):
                found.append(path)
    return found


@dataclass(frozen=True)
class _ImageJob:
    path: str
    source: str
    recipe: PreprocessRecipe


def _convert_image(job: Job, out_dir: Path) -> Converted:
    p: _ImageJob = job.payload
    record: dict[str, Any] = {"file_name": job.output, "source": p.source}
    tagged = read_for_recipe(p.path, p.recipe.pixels)
    img: np.ndarray = tagged
    if is_dicom_file(p.path):
        ds = load_dicom(p.path, headers_only=True)
        laterality = str(ds.get("Laterality") or ds.get("ImageLaterality") or "")
        view = str(ds.get("ViewPosition", ""))
        spacing = pixel_spacing(ds)
        record.update({k: v for k, v in (("laterality", laterality), ("view", view)) if v})
        if spacing:
            record["pixel_spacing"] = spacing
    else:
        bits = tagged.hints.get("effective_bit_depth")
        if bits:
            record["effective_bit_depth"] = int(bits)
    if p.recipe.geometric:
        if img.ndim != 2:
            raise DataError(f"{p.path}: --flip-left / --crop-breast need a greyscale image, found shape {img.shape}")
        img, _, geometry = p.recipe.apply(img)
        record.update(geometry.to_record())
    img = np.asarray(img)
    digest = write_png(out_dir / job.output, img)
    record.update(height=int(img.shape[0]), width=int(img.shape[1]))
    return Converted(
        source=p.source,
        record=record,
        annotations=[],
        sha256=digest,
        shape=list(map(int, img.shape)),
        bit_depth=8 * img.dtype.itemsize,
        inputs=file_stamps([p.path]),
    )


def convert_images(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    pixels: PixelOptions | None = None,
    run: RunOptions | None = None,
    progress: bool = True,
    flip_left: str = "",
    crop_breast: bool = False,
) -> ConversionReport:
    """Convert every image under ``src`` (see :func:`find_images`) to ``out_dir/images/*.png``.

    DICOMs go through the display chain with ``pixels``; raster images are copied unchanged (16-bit
    ones that use fewer bits are scaled to the full range, see :func:`meddet.io.read_image`).
    ``flip_left`` / ``crop_breast``: as in the CBIS-DDSM converter (image records say what was done;
    the COCO ``info["preprocess"]`` holds the whole recipe, :mod:`meddet.io.recipe`).
    Only non-identifying header facts are kept (laterality, view, pixel spacing). An unreadable
    file is skipped and listed in the report and ``errors.txt``. A sharded run writes no
    ``all.json``.
    """
    pixels = pixels or PixelOptions()
    recipe = PreprocessRecipe(pixels=pixels, flip_left=flip_left, crop_breast=crop_breast)
    run = run or RunOptions()
    root, out = Path(src), Path(out_dir)
    files = find_images(root)
    if not files:
        raise DataError(f"{root}: no image files found (expected DICOM, PNG, JPEG, TIFF, BMP or PGM files)")
    report = ConversionReport(out_dir=out)
    jobs, used = [], set()
    for path in files:
        rel = path.relative_to(root).as_posix()
        stem = safe_name(str(PurePosixPath(rel).with_suffix("")))
        key, k = stem, 1
        while key in used:
            k += 1
            key = f"{stem}_{k}"
        used.add(key)
        jobs.append(Job(key=key, output=f"images/{key}.png", item=rel, payload=_ImageJob(str(path), rel, recipe)))
    settings = {"converter": "images", "pixels": pixels.as_kwargs(), "flip_left": flip_left, "crop_breast": crop_breast}
    entries = run_jobs(
        jobs, _convert_image, out, settings=settings, options=run, report=report, progress=progress, desc="images"
    )
    report.n_images = len(entries)
    if run.shard is None:
        info = {
            "description": f"images of {root.name} converted by meddet",
            "preprocessing": pixels.as_kwargs(),
            "preprocess": recipe.to_dict(),
        }
        coco = assemble_coco(entries, [], info, id_map=out / ID_MAP)
        save_json_atomic(coco, out / "all.json")
        report.files["all"] = out / "all.json"
    return report
