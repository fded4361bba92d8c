"""INbreast -> COCO, for external testing.

Layout of the release (``INbreast Release 1.0/``):

- ``INbreast.csv``: semicolon-separated, ``Patient ID;Patient age;Laterality;View;Acquisition
  date;File Name;ACR;Bi-Rads`` (patient id and age say ``removed``; ACR may be blank; BI-RADS
  like ``4a``);
- ``AllDICOMs/<File Name>_<patient hash>_MG_<L|R>_<CC|MLO>_ANON.dcm``: the pseudonymous patient
  id is the hash in the file name;
- ``AllXML/<File Name>.xml``: OsiriX ROI exports (Apple plist XML): ``Images[*].ROIs[*]`` with a
  ``Name`` (``Mass``, ``Calcification``, ``Cluster``, ``Spiculated Region``, ``Distortion``,
  ``Assymetry``, ...) and ``Point_px`` contour points ``"(x, y)"``; images without findings have
  no XML.

Each ROI becomes the box of its points; a single-point ROI (an individual calcification) a box
of ``point_size`` pixels around it.
"""

from __future__ import annotations

import logging
import math
import os
import plistlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meddet.data.convert import ID_MAP, ConversionReport, assemble_coco, read_csv_strings, write_coco_splits
from meddet.data.parallel import Converted, Job, RunOptions, file_stamps, run_jobs
from meddet.data.splits import check_fractions
from meddet.errors import ConfigError, DataError
from meddet.io.dicom import PixelOptions, dicom_to_array, load_dicom, pixel_spacing
from meddet.io.image import write_png

logger = logging.getLogger(__name__)

__all__ = ["INBREAST_ROI_KINDS", "INBREAST_SCHEMES", "convert_inbreast", "read_inbreast_csv", "read_inbreast_rois"]

# ROI name (lower case) -> kind; the release spells some names several ways
INBREAST_ROI_KINDS = {
    "mass": "mass",
    "spiculated region": "mass",
    "espiculated region": "mass",
    "calcification": "calcification",
    "calcifications": "calcification",
    "cluster": "calcification",
    "distortion": "distortion",
    "asymmetry": "asymmetry",
    "assymetry": "asymmetry",
}
# scheme -> categories in id order; "type" has no class for distortions/asymmetries (excluded)
INBREAST_SCHEMES: dict[str, tuple[str, ...]] = {
    "type": ("calcification", "mass"),
    "abnormality": ("calcification", "mass", "distortion", "asymmetry"),
}
CSV_COLUMNS = ("Laterality", "View", "File Name", "ACR", "Bi-Rads")
_DICOM_NAME = re.compile(r"^(\d+)_([0-9A-Za-z]+)_MG_([LR])_([A-Z]+)_ANON\.dcm$", re.IGNORECASE)
_POINT = re.compile(r"^\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*(?:,\s*[-+0-9.eE]+\s*)?\)$")


def read_inbreast_csv(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{file name: {"laterality", "view", "acr", "birads", "source"}}`` from ``INbreast.csv``."""
    path = Path(path)
    df = read_csv_strings(path, "INbreast.csv", sep=";")
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} (expected the semicolon-separated header "
            "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads)"
        )
    out = {}
    for i, rec in enumerate(df.to_dict("records")):
        name = rec["File Name"].strip()
        if not name:
            continue
        acr = rec["ACR"].strip()
        out[name] = {
            "laterality": {"L": "LEFT", "R": "RIGHT"}.get(rec["Laterality"].strip().upper(), rec["Laterality"].strip()),
            "view": rec["View"].strip().upper(),
            "acr": int(acr) if acr.isdigit() else None,
            "birads": rec["Bi-Rads"].strip(),
            "source": f"{path} row {i + 1}",
        }
    return out


def read_inbreast_rois(path: str | os.PathLike) -> list[tuple[str, list[tuple[float, float]]]]:
    """``[(ROI name, [(x, y), ...])]`` of an INbreast XML (OsiriX plist) file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            doc = plistlib.load(f, fmt=plistlib.FMT_XML)
    except (plistlib.InvalidFileException, ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable OsiriX ROI plist ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Images"), list):
        raise DataError(f"{path}: no 'Images' list (expected an INbreast XML ROI file)")
    rois = []
    for image in doc["Images"]:
        for k, roi in enumerate(image.get("ROIs", [])):
            name = str(roi.get("Name", "")).strip()
            points = []
            for text in roi.get("Point_px", []):
                m = _POINT.match(str(text).strip())
                if not m:
                    raise DataError(f"{path}: ROI {k} ({name!r}) has point {text!r} (expected '(x, y)')")
                points.append((float(m.group(1)), float(m.group(2))))
            if points:
                rois.append((name, points))
    return rois


def _roi_box(points: Sequence[tuple[float, float]], point_size: int, w: int, h: int) -> list[int] | None:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if len(points) == 1:
        half = point_size / 2.0
        x0, y0, x1, y1 = xs[0] - half, ys[0] - half, xs[0] + half, ys[0] + half
    else:
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1, y1 = min(w, max(math.ceil(x1), x0 + 1)), min(h, max(math.ceil(y1), y0 + 1))
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


@dataclass(frozen=True)
class _ImageJob:
    dicom: str
    xml: str | None
    rois: tuple[tuple[str, int, tuple[tuple[float, float], ...]], ...]  # name, category id, points
    meta: dict[str, Any]
    patient: str
    point_size: int
    pixels: PixelOptions


def _convert_image(job: Job, out_dir: Path) -> Converted:
    p: _ImageJob = job.payload
    ds = load_dicom(p.dicom)
    h, w = int(ds.Rows), int(ds.Columns)
    annotations = []
    for name, cat, points in p.rois:
        box = _roi_box(points, p.point_size, w, h)
        if box is None:
            raise DataError(f"{p.xml}: {name} ROI lies outside the {w}x{h} image")
        annotations.append({"category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0, "roi_name": name})
    img = dicom_to_array(ds, source=p.dicom, **p.pixels.as_kwargs())
    digest = write_png(out_dir / job.output, img)
    source = Path(p.dicom).name
    record: dict[str, Any] = {
        "file_name": job.output,
        "height": h,
        "width": w,
        "patient_id": p.patient,
        "laterality": p.meta["laterality"],
        "view": p.meta["view"],
        "breast_density": p.meta["acr"],
        "birads": p.meta["birads"],
        "source": source,
    }
    spacing = pixel_spacing(ds)
    if spacing:
        record["pixel_spacing"] = spacing
    return Converted(
        source=source,
        record=record,
        annotations=annotations,
        sha256=digest,
        shape=[h, w],
        bit_depth=8 * img.dtype.itemsize,
        inputs=file_stamps([p.dicom, p.xml] if p.xml else [p.dicom]),
    )


def convert_inbreast(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scheme: str = "type",
    roi_kinds: Mapping[str, str] | None = None,
    point_size: int = 14,
    pixels: PixelOptions | None = None,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    run: RunOptions | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert an INbreast release folder to ``out_dir/images/*.png`` + ``all/train/val/test.json``.

    Args:
        root: the folder holding ``INbreast.csv``, ``AllDICOMs/`` and ``AllXML/``.
        scheme: ``type`` (``calcification``, ``mass``; images with distortion or asymmetry ROIs
            are excluded) or ``abnormality`` (also ``distortion``, ``asymmetry``).
        roi_kinds: extra ROI names (lower case) -> kind, added to :data:`INBREAST_ROI_KINDS`.
        point_size: box size in pixels for single-point ROIs (default 14 px, ~1 mm).

    Images without an XML are kept without boxes (a warning names those with BI-RADS > 1).
    """
    if scheme not in INBREAST_SCHEMES:
        raise ConfigError(f"INbreast class scheme: unknown {scheme!r}; expected one of {sorted(INBREAST_SCHEMES)}")
    if point_size < 1:
        raise ConfigError(f"point_size: expected at least 1 pixel, found {point_size}")
    pixels = pixels or PixelOptions()
    run = run or RunOptions()
    split = check_fractions(split)
    root, out = Path(root), Path(out_dir)
    dicom_dir, xml_dir = root / "AllDICOMs", root / "AllXML"
    if not dicom_dir.is_dir():
        raise DataError(f"{dicom_dir}: not found (expected the INbreast release folder holding AllDICOMs/)")
    meta = read_inbreast_csv(root / "INbreast.csv")
    dicoms: dict[str, tuple[Path, str]] = {}
    for path in sorted(dicom_dir.glob("*.dcm")):
        m = _DICOM_NAME.match(path.name)
        if m:
            dicoms[m.group(1)] = (path, m.group(2))
        else:
            logger.debug("%s: not named <id>_<patient>_MG_<side>_<view>_ANON.dcm; ignored", path)
    kinds = {**INBREAST_ROI_KINDS, **{k.lower(): v for k, v in (roi_kinds or {}).items()}}
    known = set(INBREAST_SCHEMES["abnormality"])
    if not set(kinds.values()) <= known:
        raise ConfigError(f"roi_kinds: kinds {sorted(set(kinds.values()) - known)} unknown; expected {sorted(known)}")
    categories = list(INBREAST_SCHEMES[scheme])
    cat_ids = {n: i + 1 for i, n in enumerate(categories)}
    report = ConversionReport(out_dir=out)
    jobs = []
    for name in sorted(meta):
        item = f"image {name}"
        if name not in dicoms:
            report.skip(item, f"{meta[name]['source']}: no {dicom_dir}/{name}_*_MG_*_ANON.dcm")
            continue
        path, patient = dicoms[name]
        xml = xml_dir / f"{name}.xml"
        rois: list[tuple[str, int, tuple[tuple[float, float], ...]]] = []
        if xml.is_file():
            try:
                found = read_inbreast_rois(xml)
            except DataError as e:
                report.skip(item, str(e))
                continue
            unknown = sorted({n for n, _ in found if n.lower() not in kinds})
            if unknown:
                report.skip(
                    item,
                    f"{xml}: unknown ROI name(s) {unknown} (expected one of {sorted(kinds)}; map them with roi_kinds)",
                )
                continue
            other = sorted({kinds[n.lower()] for n, _ in found if kinds[n.lower()] not in cat_ids})
            if other:
                report.exclude(item, f"{xml}: class scheme {scheme!r} has no class for {', '.join(other)} ROIs")
                continue
            rois = [(n, cat_ids[kinds[n.lower()]], tuple(pts)) for n, pts in found]
        elif meta[name]["birads"] not in ("1", ""):
            report.warn(item, f"BI-RADS {meta[name]['birads']} but no {xml}; kept as an image without findings")
        payload = _ImageJob(
            str(path), str(xml) if xml.is_file() else None, tuple(rois), meta[name], patient, point_size, pixels
        )
        jobs.append(Job(key=name, output=f"images/{name}.png", item=item, payload=payload))
    settings = {
        "converter": "inbreast",
        "scheme": scheme,
        "kinds": kinds,
        "point_size": point_size,
        "pixels": pixels.as_kwargs(),
    }
    entries = run_jobs(
        jobs, _convert_image, out, settings=settings, options=run, report=report, progress=progress, desc="INbreast"
    )
    if run.shard is not None:
        report.n_images = len(entries)
        return report
    coco = assemble_coco(
        entries,
        [{"id": cat_ids[n], "name": n, "supercategory": "lesion"} for n in categories],
        {"description": "INbreast converted by meddet", "class_scheme": scheme, "preprocessing": pixels.as_kwargs()},
        id_map=out / ID_MAP,
    )
    return write_coco_splits(coco, out, report, split, seed)
