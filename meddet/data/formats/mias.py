"""The (mini-)MIAS database -> COCO, for external testing.

Layout: ``Info.txt`` with one line per abnormality (or per normal film)::

    REFNUM BG CLASS SEVERITY X Y RADIUS
    mdb001 G CIRC B 535 425 197
    mdb003 D NORM

(background tissue F/G/D; class CALC, CIRC, SPIC, MISC, ARCH, ASYM or NORM; severity B/M;
centre and radius in pixels with the origin at the **bottom-left** corner; widely distributed
calcifications have no centre and radius, e.g. ``*NOTE 3*``), and the 1024 x 1024 8-bit images
``mdbNNN.pgm`` (PNG/JPEG/TIFF copies are found too). Lines that are not data (headers, the
README text some copies prepend) are ignored.

Films come in pairs of one patient (mdb001/mdb002, ...): even numbers are left breasts, odd
right; all are MLO views. Pixels are 200 um (mini-MIAS). Each abnormality becomes the box
enclosing its circle (clipped to the image). A film with an abnormality that has no location
is left out on purpose (listed in the report's ``excluded``): it cannot be scored fairly.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meddet.data.convert import ID_MAP, ConversionReport, assemble_coco, write_coco_splits
from meddet.data.parallel import Converted, Job, RunOptions, file_stamps, run_jobs
from meddet.data.splits import check_fractions
from meddet.errors import ConfigError, DataError
from meddet.io.image import read_image, write_png

logger = logging.getLogger(__name__)

__all__ = ["MIAS_CLASSES", "MIAS_SCHEMES", "MiasRow", "convert_mias", "read_mias_info"]

MIAS_CLASSES = {
    "CALC": "calcification",
    "CIRC": "circumscribed_mass",
    "SPIC": "spiculated_mass",
    "MISC": "ill_defined_mass",
    "ARCH": "architectural_distortion",
    "ASYM": "asymmetry",
}
# scheme -> categories in id order; "type" has no class for ARCH/ASYM (those films are excluded)
MIAS_SCHEMES: dict[str, tuple[str, ...]] = {
    "abnormality": tuple(MIAS_CLASSES.values()),
    "type": ("calcification", "mass"),
    "pathology": ("benign", "malignant"),
}
BACKGROUNDS = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
PIXEL_SPACING_MM = 0.2
_REF = re.compile(r"^mdb\d{3}$", re.IGNORECASE)
_SUFFIXES = (".pgm", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class MiasRow:
    """One data line of ``Info.txt``; ``x``, ``y``, ``radius`` are None when not given."""

    source: str  # "<file> line <n>"
    ref: str
    background: str
    abnormality: str  # CALC ... or NORM
    severity: str | None  # B | M
    x: int | None
    y: int | None
    radius: int | None


def read_mias_info(path: str | os.PathLike) -> tuple[list[MiasRow], list[tuple[str, str, str]]]:
    """Parse ``Info.txt``; returns the valid rows and the bad ones as ``(line, ref, reason)``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: MIAS Info.txt not found")
    rows: list[MiasRow] = []
    bad: list[tuple[str, str, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tokens = line.split()
        if not tokens or not _REF.match(tokens[0]):
            continue
        source = f"{path} line {n}"
        ref = tokens[0].lower()
        try:
            rows.append(_parse(tokens, source, ref))
        except ValueError as e:
            bad.append((source, ref, str(e)))
    if not rows and not bad:
        raise DataError(f"{path}: no MIAS data lines (expected lines such as 'mdb001 G CIRC B 535 425 197')")
    return rows, bad


def _parse(tokens: list[str], source: str, ref: str) -> MiasRow:
    if len(tokens) < 3:
        raise ValueError(f"{len(tokens)} field(s) (expected REFNUM BG CLASS [SEVERITY X Y RADIUS])")
    bg, cls = tokens[1].upper(), tokens[2].upper()
    if bg not in BACKGROUNDS:
        raise ValueError(f"background tissue {tokens[1]!r} (expected F, G or D)")
    if cls == "NORM":
        return MiasRow(source, ref, bg, cls, None, None, None, None)
    if cls not in MIAS_CLASSES:
        raise ValueError(f"class {tokens[2]!r} (expected one of {', '.join([*MIAS_CLASSES, 'NORM'])})")
    if len(tokens) < 4 or tokens[3].upper() not in ("B", "M"):
        raise ValueError(f"severity {tokens[3] if len(tokens) > 3 else 'missing'!r} (expected B or M)")
    coords = tokens[4:7]
    if len(coords) == 3 and all(re.fullmatch(r"-?\d+", c) for c in coords):
        x, y, r = (int(c) for c in coords)
        if r <= 0:
            raise ValueError(f"radius {r} (expected a positive number of pixels)")
        return MiasRow(source, ref, bg, cls, tokens[3].upper(), x, y, r)
    if coords and re.fullmatch(r"-?\d+", coords[0]):
        raise ValueError(f"centre/radius {' '.join(coords)!r} (expected three integers X Y RADIUS)")
    return MiasRow(source, ref, bg, cls, tokens[3].upper(), None, None, None)  # no location (*NOTE 3*)


def _category(row: MiasRow, scheme: str) -> str | None:
    if scheme == "abnormality":
        return MIAS_CLASSES[row.abnormality]
    if scheme == "pathology":
        return "malignant" if row.severity == "M" else "benign"
    if row.abnormality == "CALC":
        return "calcification"
    return "mass" if row.abnormality in ("CIRC", "SPIC", "MISC") else None


@dataclass(frozen=True)
class _ImageJob:
    path: str
    source: str
    ref: str
    background: str
    lesions: tuple[tuple[int, int, int, int, str, str | None], ...]  # x, y, r, category id, class, severity


def _convert_image(job: Job, out_dir: Path) -> Converted:
    p: _ImageJob = job.payload
    img = read_image(p.path)
    if img.ndim != 2:
        raise DataError(f"{p.path}: colour image of shape {img.shape} (expected a greyscale MIAS film)")
    h, w = img.shape
    annotations = []
    for x, y, r, cat, cls, severity in p.lesions:
        cy = h - y  # the origin is the bottom-left corner
        x0, y0, x1, y1 = max(0, x - r), max(0, cy - r), min(w, x + r), min(h, cy + r)
        if x1 <= x0 or y1 <= y0:
            raise DataError(f"{p.source}: {cls} at ({x}, {y}) radius {r} lies outside the {w}x{h} image")
        box = [x0, y0, x1 - x0, y1 - y0]
        annotations.append(
            {
                "category_id": cat,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
                "abnormality_class": cls,
                "pathology": "MALIGNANT" if severity == "M" else "BENIGN",
                "radius": r,
            }
        )
    digest = write_png(out_dir / job.output, img)
    number = int(p.ref[3:])
    record: dict[str, Any] = {
        "file_name": job.output,
        "height": h,
        "width": w,
        "patient_id": f"mias_{(number + 1) // 2:03d}",
        "laterality": "LEFT" if number % 2 == 0 else "RIGHT",
        "view": "MLO",
        "background_tissue": BACKGROUNDS[p.background],
        "pathology": ("MALIGNANT" if any(s == "M" for *_, s in p.lesions) else "BENIGN") if p.lesions else None,
        "pixel_spacing": [PIXEL_SPACING_MM, PIXEL_SPACING_MM],
        "source": Path(p.path).name,
    }
    return Converted(
        source=record["source"],
        record=record,
        annotations=annotations,
        sha256=digest,
        shape=[h, w],
        bit_depth=8 * img.dtype.itemsize,
        inputs=file_stamps([p.path]),
    )


def convert_mias(
    info_txt: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scheme: str = "abnormality",
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    run: RunOptions | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert MIAS to ``out_dir/images/*.png`` + ``all/train/val/test.json`` (COCO).

    Args:
        scheme: ``abnormality`` (the six MIAS classes), ``type`` (``calcification``/``mass``;
            films with distortions or asymmetries are excluded) or ``pathology``
            (``benign``/``malignant``).
        split: patient-level fractions (``all.json`` holds every film, for external testing).

    Normal films are kept as images without boxes. Bad lines and missing images are skipped
    and reported; films whose abnormality has no location are excluded and listed.
    """
    if scheme not in MIAS_SCHEMES:
        raise ConfigError(f"MIAS class scheme: unknown {scheme!r}; expected one of {sorted(MIAS_SCHEMES)}")
    run = run or RunOptions()
    split = check_fractions(split)
    images_root, out = Path(images_dir), Path(out_dir)
    if not images_root.is_dir():
        raise DataError(f"{images_root}: MIAS image folder not found")
    rows, bad = read_mias_info(info_txt)
    report = ConversionReport(out_dir=out)
    groups: dict[str, list[MiasRow]] = {}
    for row in rows:
        groups.setdefault(row.ref, []).append(row)
    bad_refs: dict[str, list[str]] = {}
    for source, ref, reason in bad:
        bad_refs.setdefault(ref, []).append(f"{source}: {reason}")
    categories = list(MIAS_SCHEMES[scheme])
    cat_ids = {n: i + 1 for i, n in enumerate(categories)}
    jobs = []
    for ref in sorted(set(groups) | set(bad_refs)):
        item = f"image {ref}"
        if ref in bad_refs:
            report.skip(item, "; ".join(bad_refs[ref]))
            continue
        lesions = [r for r in groups[ref] if r.abnormality != "NORM"]
        unlocated = [r for r in lesions if r.x is None]
        if unlocated:
            report.exclude(item, f"{unlocated[0].source}: {unlocated[0].abnormality} without a centre and radius")
            continue
        names = [_category(r, scheme) for r in lesions]
        if None in names:
            kinds = sorted({r.abnormality for r, n in zip(lesions, names) if n is None})
            report.exclude(item, f"class scheme {scheme!r} has no class for {', '.join(kinds)}")
            continue
        path = next((images_root / f"{ref}{s}" for s in _SUFFIXES if (images_root / f"{ref}{s}").is_file()), None)
        if path is None:
            report.skip(
                item, f"{images_root / (ref + '.pgm')}: image file not found (listed in {groups[ref][0].source})"
            )
            continue
        payload = _ImageJob(
            str(path),
            groups[ref][0].source,
            ref,
            groups[ref][0].background,
            tuple(
                (r.x, r.y, r.radius, cat_ids[n], r.abnormality, r.severity)
                for r, n in zip(lesions, names)
                if r.x is not None and r.y is not None and r.radius is not None and n is not None  # all, as checked
            ),
        )
        jobs.append(Job(key=ref, output=f"images/{ref}.png", item=item, payload=payload))
    settings = {"converter": "mias", "scheme": scheme}
    entries = run_jobs(
        jobs, _convert_image, out, settings=settings, options=run, report=report, progress=progress, desc="MIAS"
    )
    if run.shard is not None:
        report.n_images = len(entries)
        return report
    coco = assemble_coco(
        entries,
        [{"id": cat_ids[n], "name": n, "supercategory": "lesion"} for n in categories],
        {"description": "MIAS converted by meddet", "class_scheme": scheme},
        id_map=out / ID_MAP,
    )
    return write_coco_splits(coco, out, report, split, seed)
