"""CBIS-DDSM as downloaded -> COCO.

Two layouts are read:

- the TCIA release: the mass / calcification description CSVs plus the DICOM tree, with either
  the legacy names (``.../000000.dcm``) or the newer download's (``.../1-1.dcm``, renamed study
  and series folders);
- the popular JPEG re-release: ``csv/`` (the same description CSVs plus ``dicom_info.csv``) and
  ``jpeg/<SeriesInstanceUID>/*.jpg``; files are found through ``dicom_info.csv`` by the series
  UID in the CSV paths (the CSV paths themselves are wrong there), its ``SeriesDescription``
  (``full mammogram images``, ``cropped images``, ``ROI mask images``; sometimes blank) being
  only a hint.

One COCO image per full mammogram (patient, side, view), whichever CSVs and rows reference it;
one box per connected region of each abnormality's ROI mask, in full-image pixels. The ROI mask
is told apart from the cropped patch by content (binary, or near-binary for JPEG, and of about
the full image's size), never by name. A mask whose size differs from the mammogram's by a few
percent is rescaled to it, with a warning naming the case.

Splits: the official train/test split by default (the ``-Training_`` / ``-Test_`` folder
prefixes; a patient with any test image goes wholly to test, so no patient is in two splits),
validation carved from train by patient; or a patient-level re-split with given fractions.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import pandas as pd

from meddet.data.convert import ID_MAP, ConversionReport, assemble_coco, read_csv_strings, write_coco_splits
from meddet.data.parallel import Converted, Job, RunOptions, file_stamps, run_jobs
from meddet.data.splits import check_fractions, split_by_patient
from meddet.errors import ConfigError, DataError
from meddet.io.breast import orient_and_crop
from meddet.io.dicom import PixelOptions, dicom_to_array, is_dicom_file, load_dicom, pixel_spacing, stored_pixels
from meddet.io.image import read_image, write_png
from meddet.io.recipe import PreprocessRecipe

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
    "pick_roi_mask",
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
_SEVERITY = {"BENIGN_WITHOUT_CALLBACK": 0, "BENIGN": 1, "MALIGNANT": 2}

# name -> categories in id order (ids 1..K)
CLASS_SCHEMES: dict[str, tuple[str, ...]] = {
    # calcification; masses split by BI-RADS assessment (<= 3 low, >= 4 high suspicion by default)
    "suspicion": ("calcification", "mass_low", "mass_high"),
    # abnormality type only
    "type": ("calcification", "mass"),
    # biopsy result; BENIGN_WITHOUT_CALLBACK counts as benign unless benign_without_callback="separate"
    "pathology": ("benign", "malignant"),
}
BWC_CHOICES = ("benign", "separate")

# The release's SeriesDescription values (JPEG re-release, dicom_info.csv).
FULL_DESC, CROP_DESC, MASK_DESC = "full mammogram images", "cropped images", "ROI mask images"
# A mask may differ from the mammogram's size by this fraction per side and still be its mask.
MASK_SIZE_TOLERANCE = 0.1


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

    @property
    def case(self) -> str:
        """The abnormality's case folder, e.g. ``Mass-Training_P_00001_LEFT_CC_1``."""
        return PurePosixPath(self.mask_path).parts[0]


@dataclass(frozen=True)
class ClassMapping:
    """Which COCO category an abnormality becomes.

    ``scheme`` is one of :data:`CLASS_SCHEMES`: ``suspicion`` (default: ``calcification``,
    ``mass_low`` for masses with assessment < ``mass_high_min_assessment``, else ``mass_high``),
    ``type`` (``calcification``, ``mass``) or ``pathology`` (``benign``, ``malignant``;
    ``BENIGN_WITHOUT_CALLBACK`` is ``benign``, or its own class ``benign_without_callback`` with
    ``benign_without_callback="separate"``).
    Subclass and override :meth:`__call__` and :attr:`categories` for other rules; returning
    ``None`` leaves the abnormality's whole image out on purpose (a partly annotated image would
    teach the model that a lesion is background), listed in the report's ``excluded``.
    """

    scheme: str = "suspicion"
    mass_high_min_assessment: int = 4
    benign_without_callback: str = "benign"

    def __post_init__(self) -> None:
        if self.scheme not in CLASS_SCHEMES:
            raise ConfigError(f"class scheme: unknown {self.scheme!r}; expected one of {sorted(CLASS_SCHEMES)}")
        if not 0 <= self.mass_high_min_assessment <= 6:
            raise ConfigError(
                f"mass_high_min_assessment: expected a BI-RADS value 0..6 (6 = no mass is high), "
                f"found {self.mass_high_min_assessment}"
            )
        if self.benign_without_callback not in BWC_CHOICES:
            raise ConfigError(
                f"benign_without_callback: expected one of {list(BWC_CHOICES)}, found {self.benign_without_callback!r}"
            )

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names in id order (COCO ids 1..K)."""
        if self.scheme == "pathology" and self.benign_without_callback == "separate":
            return ("benign", "benign_without_callback", "malignant")
        return CLASS_SCHEMES[self.scheme]

    def __call__(self, abn: Abnormality) -> str | None:
        if self.scheme == "pathology":
            if abn.pathology == "BENIGN_WITHOUT_CALLBACK" and self.benign_without_callback == "separate":
                return "benign_without_callback"
            return "malignant" if abn.pathology == "MALIGNANT" else "benign"
        if abn.abnormality_type == "calcification":
            return "calcification"
        if self.scheme == "type":
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
    df = read_csv_strings(path)
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


# ------------------------------------------------------------------------------ TCIA tree
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


class _TciaTree:
    """Files of the TCIA download, from the CSV paths."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def full_image(self, abns: Sequence[Abnormality]) -> Path:
        errors = []
        for rel in dict.fromkeys(a.image_path for a in abns):  # Mass- and Calc- copies of one mammogram
            try:
                return resolve_dicom_path(self.root, rel)
            except DataError as e:
                errors.append(str(e))
        raise DataError("; ".join(errors))

    def roi_files(self, abn: Abnormality) -> list[tuple[str, str]]:
        tops = sorted({PurePosixPath(p).parts[0] for p in (abn.mask_path, abn.crop_path)})
        files = [str(f) for t in tops if (self.root / t).is_dir() for f in _dicom_files(self.root / t)]
        if not files:
            raise DataError(f"{abn.source}: ROI mask folder {self.root / tops[0]} not found or holds no .dcm file")
        return [(f, "") for f in files]

    def named_mask(self, abn: Abnormality) -> str:
        return str(self.root / abn.mask_path)


# ------------------------------------------------------------------------------ JPEG re-release
_UID = re.compile(r"^\d+(\.\d+)+$")
_INFO_COLUMNS = ("image_path", "SeriesInstanceUID", "SeriesDescription")


def _series_uid(csv_path: str) -> str | None:
    uids = [p for p in PurePosixPath(csv_path).parts if _UID.match(p)]
    return uids[-1] if uids else None


class _JpegRelease:
    """Files of the JPEG re-release, through ``dicom_info.csv``. Only the columns that locate
    files are read (the file also carries names, dates and UIDs; none of it is kept)."""

    def __init__(self, root: Path, info_csv: Path) -> None:
        self.root, self.info_csv = root, info_csv
        if not info_csv.is_file():
            raise DataError(f"{info_csv}: dicom_info.csv not found (expected the JPEG re-release's csv/dicom_info.csv)")
        try:
            header = pd.read_csv(info_csv, nrows=0).columns
            wanted = [c for c in header if c.strip() in (*_INFO_COLUMNS, "PatientID")]
            df = pd.read_csv(info_csv, dtype=str, keep_default_na=False, usecols=wanted)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
            raise DataError(f"{info_csv}: not a readable CSV file ({type(e).__name__}: {e})") from None
        df.columns = [c.strip() for c in df.columns]
        missing = [c for c in _INFO_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"{info_csv}: missing column(s) {missing} (expected the re-release's dicom_info.csv)")
        self.by_series: dict[str, list[tuple[str, str]]] = {}
        self.by_folder: dict[str, list[tuple[str, str]]] = {}
        for rec in df.to_dict("records"):
            row = (rec["image_path"].strip(), rec["SeriesDescription"].strip())
            if not row[0]:
                continue
            self.by_series.setdefault(rec["SeriesInstanceUID"].strip(), []).append(row)
            if rec.get("PatientID", "").strip():
                self.by_folder.setdefault(rec["PatientID"].strip(), []).append(row)

    def _file(self, listed: str) -> Path:
        parts = PurePosixPath(listed.replace("\\", "/")).parts
        for k in range(len(parts)):
            candidate = self.root.joinpath(*parts[k:])
            if candidate.is_file():
                return candidate
        raise DataError(f"{listed}: listed in {self.info_csv} but not found under {self.root}")

    def _rows(self, csv_path: str) -> list[tuple[str, str]]:
        uid = _series_uid(csv_path)
        rows = list(self.by_series.get(uid, [])) if uid else []
        return rows or list(self.by_folder.get(PurePosixPath(csv_path).parts[0], []))

    def full_image(self, abns: Sequence[Abnormality]) -> Path:
        for rel in dict.fromkeys(a.image_path for a in abns):
            rows = self._rows(rel)
            full = [r for r in rows if r[1] == FULL_DESC] or [r for r in rows if not r[1]]
            if len(full) == 1:
                return self._file(full[0][0])
            if len(full) > 1:
                raise DataError(
                    f"{abns[0].source}: {len(full)} files in {self.info_csv} could be the full mammogram of {rel} "
                    f"({', '.join(r[0] for r in full)}); expected one"
                )
        raise DataError(
            f"{abns[0].source}: no full mammogram for {abns[0].image_path} in {self.info_csv} "
            f"(looked up by SeriesInstanceUID {_series_uid(abns[0].image_path)} and by folder)"
        )

    def roi_files(self, abn: Abnormality) -> list[tuple[str, str]]:
        rows: dict[str, str] = {}
        for rel in (abn.mask_path, abn.crop_path):
            for path, desc in self._rows(rel):
                if desc != FULL_DESC:
                    rows.setdefault(path, desc)
        if not rows:
            raise DataError(f"{abn.source}: no cropped image or ROI mask for case {abn.case} in {self.info_csv}")
        return [(str(self._file(p)), d) for p, d in rows.items()]

    def named_mask(self, abn: Abnormality) -> str:
        return ""  # the re-release's file names say nothing


# ------------------------------------------------------------------------------ masks -> boxes
def _candidate_pixels(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray | None, str, bool]:
    """``(pixels or None, note, monochrome1)``; pixels only when the size is near ``shape``."""
    h, w = shape
    if is_dicom_file(path):
        ds = load_dicom(path)
        size = (int(ds.Rows), int(ds.Columns))
        if abs(size[0] - h) > MASK_SIZE_TOLERANCE * h or abs(size[1] - w) > MASK_SIZE_TOLERANCE * w:
            return None, f"{path.name} is {size[0]}x{size[1]}", False
        mono1 = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
        return stored_pixels(ds, path), "", mono1
    arr = read_image(path)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
    if abs(arr.shape[0] - h) > MASK_SIZE_TOLERANCE * h or abs(arr.shape[1] - w) > MASK_SIZE_TOLERANCE * w:
        return None, f"{path.name} is {arr.shape[0]}x{arr.shape[1]}", False
    return arr, "", False


def _foreground(arr: np.ndarray, monochrome1: bool) -> np.ndarray | None:
    """The mask's foreground if ``arr`` is binary (exactly two values), or near-binary as a
    lossy JPEG mask is (at most 2% of pixels away from both ends); else None."""
    lo, hi = int(arr.min()), int(arr.max())
    if lo == hi:
        return None
    if np.all((arr == lo) | (arr == hi)):
        return (arr == lo) if monochrome1 else (arr == hi)
    span = hi - lo
    middle = (arr > lo + span // 8) & (arr < hi - span // 8)
    if np.count_nonzero(middle) > 0.02 * arr.size:
        return None
    fg = arr > lo + span // 2
    return ~fg if monochrome1 else fg


def pick_roi_mask(
    candidates: Sequence[tuple[str, str]], shape: tuple[int, int], context: str, named: str = ""
) -> tuple[np.ndarray, str | None]:
    """The ROI mask among an abnormality's files, as a bool array of ``shape``.

    Args:
        candidates: ``(path, series description)`` of every file in the abnormality's folders
            (crop and mask; DICOM or JPEG/PNG); the description may be empty.
        shape: the full mammogram's ``(height, width)``.
        context: names the abnormality in messages (CSV row and case folder).
        named: the file the CSV calls the mask, preferred when several masks differ.

    The mask is the binary (or near-binary) candidate of the mammogram's size; one within
    :data:`MASK_SIZE_TOLERANCE` of it is rescaled to it (nearest neighbour) and the second
    return value is a warning saying so. Raises :class:`DataError` when no candidate is a mask,
    or when several different ones are and neither the description nor the CSV name decides.
    """
    notes: list[str] = []
    exact: list[tuple[str, str, np.ndarray]] = []
    near: list[tuple[str, str, np.ndarray]] = []
    for path_str, desc in candidates:
        path = Path(path_str)
        try:
            arr, note, mono1 = _candidate_pixels(path, shape)
        except DataError as e:
            notes.append(str(e))
            continue
        if arr is None:
            notes.append(note)
            continue
        fg = _foreground(arr, mono1)
        if fg is None:
            notes.append(f"{path.name} is not binary")
            continue
        (exact if fg.shape == tuple(shape) else near).append((path_str, desc, fg))
    found = exact or near
    if not found:
        raise DataError(
            f"{context}: no ROI mask among {len(candidates)} file(s) (expected a binary image of "
            f"{shape[0]}x{shape[1]}; found: {'; '.join(notes)})"
        )
    if len(found) > 1 and not all(np.array_equal(found[0][2], f[2]) for f in found[1:]):
        by_desc = [f for f in found if f[1] == MASK_DESC]
        by_name = [f for f in found if named and Path(f[0]) == Path(named)]
        found = by_desc if len(by_desc) == 1 else by_name
        if len(found) != 1:
            raise DataError(
                f"{context}: {len(exact or near)} different binary images of the mammogram's size "
                f"({', '.join(Path(f[0]).name for f in exact or near)}); cannot tell which is the ROI mask"
            )
    path_str, _, fg = found[0]
    if fg.shape == tuple(shape):
        return fg, None
    resized = cv2.resize(fg.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    warning = (
        f"ROI mask {Path(path_str).name} of {context} is {fg.shape[0]}x{fg.shape[1]}, the mammogram "
        f"{shape[0]}x{shape[1]}: rescaled to the mammogram"
    )
    return resized, warning


def find_roi_mask(abn: Abnormality, dicom_root: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """The abnormality's ROI mask in a TCIA tree as a bool array of ``shape`` (the full
    mammogram's size), whatever the files are called; see :func:`pick_roi_mask`."""
    tree = _TciaTree(Path(dicom_root))
    mask, warning = pick_roi_mask(tree.roi_files(abn), shape, f"{abn.source} ({abn.case})", tree.named_mask(abn))
    if warning:
        logger.warning(warning)
    return mask


def mask_boxes(mask: np.ndarray) -> list[list[int]]:
    """One ``[x, y, w, h]`` box per 8-connected region of a binary mask (pixel extents:
    ``w = xmax - xmin + 1``), in raster order of the regions' first pixels."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [[int(s[0]), int(s[1]), int(s[2]), int(s[3])] for s in stats[1:n]]


# ------------------------------------------------------------------------------ one image (worker)
@dataclass(frozen=True)
class _ImageJob:
    abns: tuple[Abnormality, ...]
    classes: tuple[int, ...]  # category id per abnormality
    image: str
    source: str  # relative to the dataset root
    rois: tuple[tuple[tuple[str, str], ...], ...]  # candidates per abnormality
    named: tuple[str, ...]  # the CSV's mask file per abnormality ("" in the JPEG re-release)
    pixels: PixelOptions
    flip_left: str
    crop_breast: bool


def _convert_image(job: Job, out_dir: Path) -> Converted:
    p: _ImageJob = job.payload
    image_path = Path(p.image)
    ds = None
    orientation, laterality = None, None
    if p.flip_left == "tags":  # PatientOrientation, else the breast's side (DICOM, else the CSV)
        laterality = p.abns[0].side
    if is_dicom_file(image_path):
        ds = load_dicom(image_path)
        shape = (int(ds.Rows), int(ds.Columns))
        if p.flip_left == "tags":
            orientation = ds.get("PatientOrientation")
            orientation = [orientation] if isinstance(orientation, str) else orientation
            laterality = str(ds.get("Laterality") or ds.get("ImageLaterality") or laterality)
    else:
        img = read_image(image_path)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
        shape = img.shape[:2]
    inputs = [str(image_path)]
    warnings: list[str] = []
    boxes: list[list[int]] = []
    fields: list[dict[str, Any]] = []
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for abn, cat, candidates, named in zip(p.abns, p.classes, p.rois, p.named):
        inputs += [c for c, _ in candidates]
        mask, warning = pick_roi_mask(candidates, shape, f"{abn.source} ({abn.case})", named)
        if warning:
            warnings.append(warning)
        for box in mask_boxes(mask):
            if (cat, tuple(box)) in seen:  # the same mask listed twice
                continue
            seen.add((cat, tuple(box)))
            boxes.append(box)
            fields.append(
                {
                    "category_id": cat,
                    "iscrowd": 0,
                    "abnormality_type": abn.abnormality_type,
                    "abnormality_id": abn.abnormality_id,
                    "assessment": abn.assessment,
                    "pathology": abn.pathology,
                    "subtlety": abn.subtlety,
                }
            )
    arr = dicom_to_array(ds, source=image_path, **p.pixels.as_kwargs()) if ds is not None else img
    arr, moved, geometry = orient_and_crop(
        arr,
        boxes,
        flip_left=bool(p.flip_left),
        crop=p.crop_breast,
        patient_orientation=orientation,
        laterality=laterality,
        source=str(image_path),
    )
    digest = write_png(out_dir / job.output, arr)
    annotations = [{**f, "bbox": b, "area": b[2] * b[3]} for f, b in zip(fields, moved)]
    first = p.abns[0]
    densities = [a.breast_density for a in p.abns if a.breast_density is not None]
    record: dict[str, Any] = {
        "file_name": job.output,
        "height": int(arr.shape[0]),
        "width": int(arr.shape[1]),
        "patient_id": first.patient_id,
        "laterality": first.side,
        "view": first.view,
        "source": p.source,
        "breast_density": densities[0] if densities else None,
        "assessment": max(a.assessment for a in p.abns),
        "pathology": max((a.pathology for a in p.abns), key=_SEVERITY.__getitem__),
        "abnormality_types": sorted({a.abnormality_type for a in p.abns}),
        "official_split": _official_split(p.abns),
    }
    spacing = pixel_spacing(ds) if ds is not None else None
    if spacing:
        record["pixel_spacing"] = spacing
    if p.flip_left or p.crop_breast:
        record.update(geometry.to_record())
    return Converted(
        source=p.source,
        record=record,
        annotations=annotations,
        sha256=digest,
        shape=[int(arr.shape[0]), int(arr.shape[1])],
        bit_depth=8 * arr.dtype.itemsize,
        inputs=file_stamps(dict.fromkeys(inputs)),
        warnings=warnings,
    )


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


def _official_assignment(
    images: Sequence[dict[str, Any]], val_fraction: float, seed: int, report: ConversionReport
) -> dict[str, list[Any]]:
    unknown = [im for im in images if im["official_split"] in ("unknown",)]
    if unknown:
        raise ConfigError(
            f"official split: {len(unknown)} image(s) have no Mass-/Calc-Training_ or -Test_ folder in their "
            f"CSV path (e.g. {unknown[0]['source']}); use a patient-level re-split (--resplit) instead"
        )
    test_patients = {im["patient_id"] for im in images if im["official_split"] in ("test", "mixed")}
    moved = sorted({im["patient_id"] for im in images if im["official_split"] == "train"} & test_patients)
    if moved:
        report.warn(
            "official split",
            f"{len(moved)} patient(s) have both training and test images; all their images go to test so "
            f"that no patient is in two splits: {', '.join(moved)}",
        )
    test = [im["id"] for im in images if im["patient_id"] in test_patients]
    train = [im for im in images if im["patient_id"] not in test_patients]
    parts = split_by_patient(train, (1.0 - val_fraction, val_fraction), seed, names=("train", "val"))
    return {"train": parts["train"], "val": parts["val"], "test": test}


def convert_cbis_ddsm(
    mass_csvs: str | os.PathLike | Iterable[str | os.PathLike] | None,
    calc_csvs: str | os.PathLike | Iterable[str | os.PathLike] | None,
    dicom_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    classes: ClassMapping | None = None,
    pixels: PixelOptions | None = None,
    split: str | Sequence[float] = "official",
    val_fraction: float = 0.15,
    seed: int = 42,
    dicom_info: str | os.PathLike | None = None,
    flip_left: str = "",
    crop_breast: bool = False,
    run: RunOptions | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert CBIS-DDSM to ``out_dir/images/*.png`` + ``all/train/val/test.json`` (COCO), with
    ``manifest.jsonl`` and ``errors.txt``.

    Args:
        mass_csvs, calc_csvs: description CSV path(s) (train and/or test sets); either may be empty.
        dicom_root: the folder the CSV paths are relative to (holding ``Mass-Training_...``), or
            with ``dicom_info`` the JPEG re-release's root (holding ``jpeg/``).
        classes: category rule (default :class:`ClassMapping` ``suspicion``).
        pixels: DICOM-to-PNG options (bit depth, gamma, normalization, VOI); JPEG re-release
            images are 8-bit already and are copied unchanged.
        split: ``"official"`` (default: the release's train/test split, validation carved from
            train by patient with ``val_fraction``) or train/val/test fractions of a
            patient-level re-split with ``seed``.
        dicom_info: the JPEG re-release's ``csv/dicom_info.csv``; files are then found through it.
        flip_left: mirror breasts so every chest wall is on the left, deciding the side from
            ``"tags"`` (*Patient Orientation*, else *Laterality* / the CSV's side by the standard
            hanging convention) or from the ``"pixels"``; ``""`` (default): no flip.
        crop_breast: crop to the breast. Boxes move with the pixels; the image records say what
            was done (``flipped``, ``crop``, ``original_size``).
        run: workers, shard, resume (:class:`~meddet.data.parallel.RunOptions`).

    Each image carries ``patient_id``, ``laterality``, ``view``, ``breast_density``, the most
    severe ``pathology``, the highest ``assessment``, ``abnormality_types``, ``source`` and
    ``official_split``; each box its abnormality's type, id, assessment, pathology, subtlety.
    A bad item (a bad CSV row, a missing or corrupt file, no ROI mask) skips its whole mammogram;
    the report and ``errors.txt`` list each with the reason. Bad whole inputs (missing CSV,
    missing column, missing root) raise :class:`DataError`. A sharded run converts its share of
    the images and writes no COCO files: run once more without a shard to assemble them.
    """
    classes = classes or ClassMapping()
    pixels = pixels or PixelOptions()
    run = run or RunOptions()
    if flip_left not in ("", "tags", "pixels"):
        raise ConfigError(f"flip_left: expected '', 'tags' or 'pixels', found {flip_left!r}")
    fractions: tuple[float, ...] | None = None  # None: the official split
    if isinstance(split, str):
        if split != "official":
            raise ConfigError(f"split: expected 'official' or three fractions, found {split!r}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"val_fraction: expected 0 <= value < 1, found {val_fraction}")
    else:
        fractions = check_fractions(split)
    root = Path(dicom_root)
    if not root.is_dir():
        raise DataError(
            f"{root}: CBIS-DDSM root folder not found (expected the folder holding "
            f"{'jpeg/' if dicom_info else 'Mass-Training_... folders'})"
        )
    csvs = _as_list(mass_csvs) + _as_list(calc_csvs)
    if not csvs:
        raise ConfigError("CBIS-DDSM conversion: no mass or calc CSV given (expected at least one)")
    locator: _TciaTree | _JpegRelease = _JpegRelease(root, Path(dicom_info)) if dicom_info else _TciaTree(root)
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
    jobs: list[Job] = []
    for key in sorted(groups):
        abns = groups[key]
        item = f"image {key}"
        if key in bad_keys:
            report.skip(item, "; ".join(bad_keys[key]))
            continue
        names = [classes(a) for a in abns]
        unmapped = [a.source for a, n in zip(abns, names) if n is None]
        if unmapped:
            report.exclude(item, f"the class rule gives no class to {', '.join(unmapped)}")
            continue
        wrong = sorted({str(n) for n in names if n not in cat_ids})
        if wrong:
            raise ConfigError(f"class rule {classes!r} returned {wrong}, not one of its categories {categories}")
        try:
            image = locator.full_image(abns)
            rois = tuple(tuple(locator.roi_files(a)) for a in abns)
        except DataError as e:
            report.skip(item, str(e))
            continue
        payload = _ImageJob(
            abns=tuple(abns),
            classes=tuple(cat_ids[n] for n in names if n is not None),  # all: unmapped ones were excluded
            image=str(image),
            source=image.relative_to(root).as_posix(),
            rois=rois,
            named=tuple(locator.named_mask(a) for a in abns),
            pixels=pixels,
            flip_left=flip_left,
            crop_breast=crop_breast,
        )
        jobs.append(Job(key=key, output=f"images/{key}.png", item=item, payload=payload))

    settings = {
        "converter": "cbis-ddsm",
        "pixels": pixels.as_kwargs(),
        "classes": [classes.scheme, classes.mass_high_min_assessment, classes.benign_without_callback],
        "categories": categories,
        "flip_left": flip_left,
        "crop_breast": crop_breast,
    }
    entries = run_jobs(
        jobs, _convert_image, out, settings=settings, options=run, report=report, progress=progress, desc="CBIS-DDSM"
    )
    if run.shard is not None:
        report.n_images = len(entries)
        report.n_annotations = sum(len(e["annotations"]) for e in entries)
        report.categories = categories
        logger.info("shard %d/%d done; run again without --shard to write the COCO files", *run.shard)
        return report
    info = {
        "description": "CBIS-DDSM converted by meddet",
        "preprocessing": pixels.as_kwargs(),
        "class_scheme": classes.scheme,
        "mass_high_min_assessment": classes.mass_high_min_assessment,
        "benign_without_callback": classes.benign_without_callback,
        "flip_left": flip_left,
        "crop_breast": crop_breast,
        # the whole recipe (meddet.io.recipe): the trainer adopts it, bundles and predictors replay it
        "preprocess": PreprocessRecipe(pixels=pixels, flip_left=flip_left, crop_breast=crop_breast).to_dict(),
    }
    coco = assemble_coco(
        entries,
        [{"id": cat_ids[n], "name": n, "supercategory": "lesion"} for n in categories],
        info,
        id_map=out / ID_MAP,
    )
    if fractions is None:
        assignment = _official_assignment(coco["images"], float(val_fraction), seed, report)
        split_info = {"method": "official", "val_assignment": "hash", "val_fraction": float(val_fraction), "seed": seed}
        return write_coco_splits(coco, out, report, assignment=assignment, split_info=split_info)
    return write_coco_splits(coco, out, report, fractions, seed)
