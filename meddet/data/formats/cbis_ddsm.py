"""CBIS-DDSM (mass and calcification description CSVs + DICOM tree) -> COCO.

One COCO image per full mammogram (patient, side, view), whichever CSVs and rows reference it;
one box per connected region of each abnormality's ROI mask, in full-image pixels. The ROI mask
is told apart from the cropped patch by content (binary and of the full image's size), since the
file names in an abnormality folder vary between downloads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from meddet.data.convert import ConversionReport, write_coco_splits
from meddet.data.splits import check_fractions
from meddet.errors import ConfigError, DataError
from meddet.io.dicom import PixelOptions, dicom_to_array, load_dicom, stored_pixels
from meddet.io.image import write_png

logger = logging.getLogger(__name__)

__all__ = [
    "CALC_HEADER",
    "CLASS_SCHEMES",
    "MASS_HEADER",
    "Abnormality",
    "ClassMapping",
    "convert_cbis_ddsm",
    "find_roi_mask",
    "mask_boxes",
    "read_cbis_csv",
    "resolve_dicom_path",
]

MASS_HEADER = [
    "patient_id",
    "breast_density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "mass shape",
    "mass margins",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
CALC_HEADER = [
    "patient_id",
    "breast density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "calc type",
    "calc distribution",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
# Columns the conversion needs (the rest is kept when present, never required).
REQUIRED_COLUMNS = (
    "patient_id",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "assessment",
    "pathology",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
)
PATHOLOGIES = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")

# name -> categories in id order (ids 1..K)
CLASS_SCHEMES: dict[str, tuple[str, ...]] = {
    # calcification; masses split by BI-RADS assessment (<= 3 low, >= 4 high suspicion by default)
    "suspicion": ("calcification", "mass_low", "mass_high"),
    # lesion type only
    "lesion": ("calcification", "mass"),
    # biopsy result; BENIGN_WITHOUT_CALLBACK counts as benign
    "pathology": ("benign", "malignant"),
}


@dataclass(frozen=True)
class Abnormality:
    """One row of a CBIS-DDSM description CSV, validated."""

    source: str  # "<csv path> row <n>" for messages
    patient_id: str
    side: str  # LEFT | RIGHT
    view: str  # CC | MLO
    abnormality_id: int
    abnormality_type: str  # mass | calcification
    assessment: int  # BI-RADS 0-5
    pathology: str  # MALIGNANT | BENIGN | BENIGN_WITHOUT_CALLBACK
    subtlety: int | None
    breast_density: int | None
    image_path: str
    crop_path: str
    mask_path: str

    @property
    def image_key(self) -> str:
        """``P_00001_LEFT_CC``: the mammogram this abnormality is on."""
        return f"{self.patient_id}_{self.side}_{self.view}"


@dataclass(frozen=True)
class ClassMapping:
    """Which COCO category an abnormality becomes.

    ``scheme`` is one of :data:`CLASS_SCHEMES`: ``suspicion`` (default: ``calcification``,
    ``mass_low`` for masses with assessment < ``mass_high_min_assessment``, else ``mass_high``),
    ``lesion`` (``calcification``, ``mass``) or ``pathology`` (``benign``, ``malignant``).
    Subclass and override :meth:`__call__` and :attr:`categories` for other rules; returning
    ``None`` leaves the abnormality out on purpose.
    """

    scheme: str = "suspicion"
    mass_high_min_assessment: int = 4

    def __post_init__(self) -> None:
        if self.scheme not in CLASS_SCHEMES:
            raise ConfigError(f"class scheme: unknown {self.scheme!r}; expected one of {sorted(CLASS_SCHEMES)}")
        if not 0 <= self.mass_high_min_assessment <= 6:
            raise ConfigError(
                f"mass_high_min_assessment: expected a BI-RADS value 0..6 (6 = no mass is high), "
                f"found {self.mass_high_min_assessment}"
            )

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names in id order (COCO ids 1..K)."""
        return CLASS_SCHEMES[self.scheme]

    def __call__(self, abn: Abnormality) -> str | None:
        if self.scheme == "pathology":
            return "malignant" if abn.pathology == "MALIGNANT" else "benign"
        if abn.abnormality_type == "calcification":
            return "calcification"
        if self.scheme == "lesion":
            return "mass"
        return "mass_high" if abn.assessment >= self.mass_high_min_assessment else "mass_low"


# ------------------------------------------------------------------------------ CSV
def _clean_path(value: str) -> str:
    p = value.strip().strip('"').strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p.lstrip("/")


def _int_or_none(value: str) -> int | None:
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


def read_cbis_csv(path: str | os.PathLike) -> tuple[list[Abnormality], list[tuple[str, str | None, str]]]:
    """Read a mass or calc description CSV (either density spelling).

    Returns the valid rows and the bad ones as ``(row, image key or None, reason)``.
    Raises :class:`DataError` when the file is missing, unreadable or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV file ({type(e).__name__}: {e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    df = df.rename(columns={"breast density": "breast_density"})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} (expected a CBIS-DDSM mass or calc description CSV "
            f"with the header {','.join(MASS_HEADER)} or the calc equivalent)"
        )
    rows: list[Abnormality] = []
    bad: list[tuple[str, str | None, str]] = []
    for i, rec in enumerate(df.to_dict("records")):
        source = f"{path} row {i + 1}"
        try:
            abn = _parse_row(rec, source)
        except ValueError as e:
            key = _key_or_none(rec)
            bad.append((source, key, str(e)))
            continue
        rows.append(abn)
    return rows, bad


def _key_or_none(rec: dict[str, str]) -> str | None:
    pid = rec.get("patient_id", "").strip()
    side = rec.get("left or right breast", "").strip().upper()
    view = rec.get("image view", "").strip().upper()
    if pid and side in ("LEFT", "RIGHT") and view in ("CC", "MLO"):
        return f"{pid}_{side}_{view}"
    return None


def _parse_row(rec: dict[str, str], source: str) -> Abnormality:
    def field_(name: str) -> str:
        value = str(rec.get(name, "")).strip()
        if not value:
            raise ValueError(f"empty {name!r}")
        return value

    pid = field_("patient_id")
    side = field_("left or right breast").upper()
    if side not in ("LEFT", "RIGHT"):
        raise ValueError(f"'left or right breast' is {side!r} (expected LEFT or RIGHT)")
    view = field_("image view").upper()
    if view not in ("CC", "MLO"):
        raise ValueError(f"'image view' is {view!r} (expected CC or MLO)")
    abn_id = _int_or_none(field_("abnormality id"))
    if abn_id is None or abn_id < 0:
        raise ValueError(f"'abnormality id' is {rec['abnormality id']!r} (expected a non-negative integer)")
    abn_type = field_("abnormality type").lower()
    if abn_type not in ("mass", "calcification"):
        raise ValueError(f"'abnormality type' is {abn_type!r} (expected mass or calcification)")
    assessment = _int_or_none(field_("assessment"))
    if assessment is None or not 0 <= assessment <= 5:
        raise ValueError(f"'assessment' is {rec['assessment']!r} (expected a BI-RADS value 0..5)")
    pathology = field_("pathology").upper()
    if pathology not in PATHOLOGIES:
        raise ValueError(f"'pathology' is {pathology!r} (expected one of {', '.join(PATHOLOGIES)})")
    return Abnormality(
        source=source,
        patient_id=pid,
        side=side,
        view=view,
        abnormality_id=abn_id,
        abnormality_type=abn_type,
        assessment=assessment,
        pathology=pathology,
        subtlety=_int_or_none(str(rec.get("subtlety", ""))),
        breast_density=_int_or_none(str(rec.get("breast_density", ""))),
        image_path=_clean_path(field_("image file path")),
        crop_path=_clean_path(field_("cropped image file path")),
        mask_path=_clean_path(field_("ROI mask file path")),
    )


# ------------------------------------------------------------------------------ DICOM tree
def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".dcm")


def resolve_dicom_path(dicom_root: str | os.PathLike, rel_path: str, what: str = "full mammogram") -> Path:
    """Find the file a CSV path means, tolerating the release's naming drift.

    Tries the exact path; then the only ``.dcm`` in its series folder (CSV says ``000000.dcm``,
    the folder holds ``1-1.dcm``); then the only ``.dcm`` anywhere under its top folder (newer
    downloads rename the study/series folders). Raises :class:`DataError` otherwise.
    """
    root = Path(dicom_root)
    exact = root / rel_path
    if exact.is_file():
        return exact
    if exact.parent.is_dir():
        files = _dicom_files(exact.parent)
        if len(files) == 1:
            return files[0]
    top = root / PurePosixPath(rel_path).parts[0]
    if not top.is_dir():
        raise DataError(f"{exact}: not found, nor its folder {top} (expected the {what} named in the CSV)")
    files = _dicom_files(top)
    if len(files) == 1:
        return files[0]
    if not files:
        raise DataError(f"{top}: no .dcm file (expected the {what} {rel_path})")
    raise DataError(f"{exact}: not found, and {top} holds {len(files)} .dcm files (expected exactly one {what})")


def find_roi_mask(abn: Abnormality, dicom_root: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """The abnormality's ROI mask as a bool array of ``shape`` (the full mammogram's size).

    Looks at every ``.dcm`` in the abnormality's folder(s) and picks the binary image of the full
    mammogram's size, whatever its name; the cropped patch is smaller and not binary. Only
    candidates of the right size have their pixels decoded.
    """
    root = Path(dicom_root)
    tops = sorted({PurePosixPath(p).parts[0] for p in (abn.mask_path, abn.crop_path)})
    candidates = [f for t in tops if (root / t).is_dir() for f in _dicom_files(root / t)]
    if not candidates:
        raise DataError(f"{abn.source}: ROI mask folder {root / tops[0]} not found or holds no .dcm file")
    notes: list[str] = []
    masks: list[tuple[Path, np.ndarray]] = []
    for path in candidates:
        try:
            ds = load_dicom(path)
            size = (int(ds.Rows), int(ds.Columns))
            if size != tuple(shape):
                notes.append(f"{path.name} is {size[0]}x{size[1]}")
                continue
            arr = stored_pixels(ds, path)
        except DataError as e:
            notes.append(str(e))
            continue
        lo, hi = arr.min(), arr.max()
        if lo == hi or not np.all((arr == lo) | (arr == hi)):
            notes.append(f"{path.name} is {'constant' if lo == hi else 'not binary'}")
            continue
        fg = (arr == lo) if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1" else (arr == hi)
        masks.append((path, fg))
    if not masks:
        raise DataError(
            f"{abn.source}: no ROI mask among {len(candidates)} file(s) in {root / tops[0]} "
            f"(expected a binary image of {shape[0]}x{shape[1]}; found: {'; '.join(notes)})"
        )
    if len(masks) > 1 and not all(np.array_equal(masks[0][1], m) for _, m in masks[1:]):
        named = [m for p, m in masks if p == root / abn.mask_path]
        if len(named) != 1:
            raise DataError(
                f"{abn.source}: {len(masks)} different binary full-size images in {root / tops[0]} "
                f"({', '.join(p.name for p, _ in masks)}); cannot tell which is the ROI mask"
            )
        return named[0]
    return masks[0][1]


def mask_boxes(mask: np.ndarray) -> list[list[int]]:
    """One ``[x, y, w, h]`` box per 8-connected region of a binary mask (pixel extents:
    ``w = xmax - xmin + 1``), in raster order of the regions' first pixels."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [[int(s[0]), int(s[1]), int(s[2]), int(s[3])] for s in stats[1:n]]


# ------------------------------------------------------------------------------ conversion
def _as_list(paths: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[Path]:
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _official_split(abns: Sequence[Abnormality]) -> str:
    found = set()
    for a in abns:
        top = PurePosixPath(a.image_path).parts[0]
        found.add("test" if "-Test_" in top else "train" if "-Training_" in top else "unknown")
    return found.pop() if len(found) == 1 else "mixed"


def convert_cbis_ddsm(
    mass_csvs: str | os.PathLike | Iterable[str | os.PathLike] | None,
    calc_csvs: str | os.PathLike | Iterable[str | os.PathLike] | None,
    dicom_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    classes: ClassMapping | None = None,
    pixels: PixelOptions | None = None,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    progress: bool = True,
) -> ConversionReport:
    """Convert CBIS-DDSM to ``out_dir/images/*.png`` + ``all/train/val/test.json`` (COCO).

    Args:
        mass_csvs, calc_csvs: description CSV path(s) (train and/or test sets); either may be empty.
        dicom_root: the folder the CSV paths are relative to (holding ``Mass-Training_...``).
        classes: category rule (default :class:`ClassMapping` ``suspicion``).
        pixels: DICOM-to-PNG options (bit depth, gamma, normalization, VOI).
        split: train/val/test fractions of a patient-level split with ``seed``.

    A bad item (a bad CSV row, a missing or corrupt DICOM, no ROI mask) skips its whole
    mammogram (a partly annotated image would teach the model that lesions are background);
    the returned report lists each with the reason. Bad whole inputs (missing CSV, missing
    column, missing DICOM root) raise :class:`DataError`.
    """
    classes = classes or ClassMapping()
    pixels = pixels or PixelOptions()
    split = check_fractions(split)
    root = Path(dicom_root)
    if not root.is_dir():
        raise DataError(f"{root}: DICOM root folder not found (expected the folder holding Mass-Training_... folders)")
    csvs = _as_list(mass_csvs) + _as_list(calc_csvs)
    if not csvs:
        raise ConfigError("CBIS-DDSM conversion: no mass or calc CSV given (expected at least one)")
    out = Path(out_dir)
    report = ConversionReport(out_dir=out)

    groups: dict[str, list[Abnormality]] = {}
    bad_keys: dict[str, list[str]] = {}
    for csv_path in csvs:
        rows, bad = read_cbis_csv(csv_path)
        for abn in rows:
            groups.setdefault(abn.image_key, []).append(abn)
        for source, key, reason in bad:
            if key is None:
                report.skip(source, reason)
            else:
                bad_keys.setdefault(key, []).append(f"{source}: {reason}")
    for key in sorted(set(bad_keys) - set(groups)):
        report.skip(f"image {key}", "; ".join(bad_keys[key]))

    categories = list(classes.categories)
    cat_ids = {name: i + 1 for i, name in enumerate(categories)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    keys = sorted(groups)
    for key in tqdm(keys, desc="CBIS-DDSM", unit="image", disable=not progress):
        abns = groups[key]
        if key in bad_keys:
            report.skip(f"image {key}", "; ".join(bad_keys[key]))
            continue
        try:
            record, anns = _convert_image(key, abns, root, out, classes, cat_ids, pixels)
        except DataError as e:
            report.skip(f"image {key}", str(e))
            continue
        record["id"] = len(images) + 1
        for a in anns:
            a.update(id=len(annotations) + 1, image_id=record["id"])
            annotations.append(a)
        images.append(record)
    coco = {
        "info": {
            "description": "CBIS-DDSM converted by meddet",
            "preprocessing": pixels.as_kwargs(),
            "class_scheme": classes.scheme,
            "mass_high_min_assessment": classes.mass_high_min_assessment,
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_ids[n], "name": n, "supercategory": "lesion"} for n in categories],
    }
    return write_coco_splits(coco, out, report, split, seed)


def _convert_image(
    key: str,
    abns: list[Abnormality],
    root: Path,
    out: Path,
    classes: ClassMapping,
    cat_ids: dict[str, int],
    pixels: PixelOptions,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    first = abns[0]
    full_path = resolve_dicom_path(root, first.image_path)
    ds = load_dicom(full_path)
    shape = (int(ds.Rows), int(ds.Columns))
    anns: list[dict[str, Any]] = []
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for abn in abns:
        name = classes(abn)
        if name is None:
            continue
        if name not in cat_ids:
            raise DataError(f"{abn.source}: class rule returned {name!r}, not one of {list(cat_ids)}")
        mask = find_roi_mask(abn, root, shape)
        for box in mask_boxes(mask):
            dup = (cat_ids[name], tuple(box))
            if dup in seen:
                logger.debug("%s: duplicate box %s of %s dropped", abn.source, box, name)
                continue
            seen.add(dup)
            anns.append(
                {
                    "category_id": cat_ids[name],
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                    "abnormality_type": abn.abnormality_type,
                    "abnormality_id": abn.abnormality_id,
                    "assessment": abn.assessment,
                    "pathology": abn.pathology,
                    "subtlety": abn.subtlety,
                }
            )
    arr = dicom_to_array(ds, source=full_path, **pixels.as_kwargs())
    file_name = f"images/{key}.png"
    write_png(out / file_name, arr)
    densities = [a.breast_density for a in abns if a.breast_density is not None]
    record = {
        "file_name": file_name,
        "height": shape[0],
        "width": shape[1],
        "patient_id": first.patient_id,
        "laterality": first.side,
        "view": first.view,
        "source": full_path.relative_to(root).as_posix(),
        "breast_density": densities[0] if densities else None,
        "official_split": _official_split(abns),
    }
    return record, anns
