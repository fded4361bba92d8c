"""What every converter to COCO shares: the report of a batch conversion (what was skipped and
why), assembling the COCO dict from manifest entries, and writing ``all.json`` plus the
patient-level ``train/val/test.json`` next to ``images/``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from meddet import __version__
from meddet.data.coco import save_json_atomic
from meddet.errors import DataError
from meddet.data.splits import SPLIT_NAMES, split_by_patient, subset_coco

logger = logging.getLogger(__name__)

__all__ = ["ConversionReport", "Skipped", "assemble_coco", "safe_name", "write_coco_splits"]


@dataclass(frozen=True)
class Skipped:
    """One input left out of the dataset: ``item`` names it (file, CSV row, image), ``reason`` says why."""

    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"


@dataclass
class ConversionReport:
    """The outcome of a conversion: counts, written files, warnings and the skipped items.

    ``skipped``: inputs left out because something is wrong with them (they make the CLI exit
    non-zero and are listed in ``errors.txt``); ``excluded``: inputs left out on purpose by a
    rule (e.g. a class mapping that has no class for an abnormality); ``warnings``: outputs made
    with a correction worth knowing (e.g. a rescaled ROI mask).
    """

    out_dir: Path
    n_images: int = 0
    n_annotations: int = 0
    n_converted: int = 0
    n_reused: int = 0
    categories: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    excluded: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was skipped."""
        return not self.skipped

    def skip(self, item: str, reason: str) -> None:
        """Record a skipped item and log it as a warning."""
        s = Skipped(item, reason)
        self.skipped.append(s)
        logger.warning("skipped %s", s)

    def exclude(self, item: str, reason: str) -> None:
        """Record an item left out on purpose (logged at info level)."""
        s = Skipped(item, reason)
        self.excluded.append(s)
        logger.info("excluded %s", s)

    def warn(self, item: str, message: str) -> None:
        """Record and log a warning about an output that was made."""
        self.warnings.append(f"{item}: {message}")
        logger.warning("%s: %s", item, message)

    def summary(self) -> str:
        """A few human-readable lines: counts per split, categories, then each skipped item."""
        lines = [f"{self.n_images} images, {self.n_annotations} boxes, classes {self.categories} -> {self.out_dir}"]
        if self.splits:
            lines.append("splits: " + ", ".join(f"{k} {v} images" for k, v in self.splits.items()))
        if self.n_reused:
            lines.append(f"{self.n_converted} image(s) converted, {self.n_reused} reused from an earlier run")
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines += [f"  {w}" for w in self.warnings]
        if self.excluded:
            lines.append(f"{len(self.excluded)} item(s) excluded on purpose:")
            lines += [f"  {s}" for s in sorted(self.excluded, key=str)]
        if self.skipped:
            lines.append(f"{len(self.skipped)} item(s) skipped:")
            lines += [f"  {s}" for s in sorted(self.skipped, key=str)]
        return "\n".join(lines)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (path separators and odd characters become ``_``)."""
    return _UNSAFE.sub("_", text).strip("._") or "image"


def assemble_coco(
    entries: Sequence[dict[str, Any]], categories: Sequence[dict[str, Any]], info: dict[str, Any]
) -> dict[str, Any]:
    """A COCO dict from manifest entries (each with ``record`` and ``annotations``): image and
    annotation ids 1..N in the entries' order, so the same inputs give the same ids whatever the
    number of workers."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for entry in entries:
        image_id = len(images) + 1
        images.append({"id": image_id, **entry["record"]})
        for a in entry["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **a})
    return {"info": dict(info), "images": images, "annotations": annotations, "categories": list(categories)}


def write_coco_splits(
    coco: dict[str, Any],
    out_dir: str | os.PathLike,
    report: ConversionReport,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    *,
    assignment: dict[str, list[Any]] | None = None,
    split_info: dict[str, Any] | None = None,
) -> ConversionReport:
    """Write ``all.json`` and ``train.json``, ``val.json``, ``test.json``.

    By default the split is patient-level with ``fractions`` and ``seed``; a converter with its
    own split (e.g. CBIS-DDSM's official one) passes ``assignment`` (``{split: [image ids]}``)
    and ``split_info`` (how it was made). Either way the COCO ``info.split`` records how to
    reproduce it. Fills ``report``'s counts, split sizes and file paths, and returns it.
    """
    out = Path(out_dir)
    if assignment is None:
        assignment = split_by_patient(coco["images"], fractions, seed)
        split_info = {"method": "patient", "fractions": list(fractions), "seed": seed}
    coco.setdefault("info", {})
    coco["info"].update({"meddet_version": __version__, "split": dict(split_info or {})})
    coco.setdefault("licenses", [])
    all_path = out / "all.json"
    save_json_atomic(coco, all_path)
    report.files["all"] = all_path
    for name in SPLIT_NAMES:
        sub = subset_coco(coco, assignment.get(name, []))
        sub["info"] = {**coco["info"], "split": {**coco["info"]["split"], "name": name}}
        path = out / f"{name}.json"
        save_json_atomic(sub, path)
        report.files[name] = path
        report.splits[name] = len(sub["images"])
    report.n_images = len(coco["images"])
    report.n_annotations = len(coco["annotations"])
    report.categories = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    return report


def read_csv_strings(path: str | os.PathLike, what: str = "CSV file", sep: str = ","):
    """A CSV as a DataFrame of strings (empty cells stay ""), column names stripped; a missing or
    unreadable file is a DataError naming it."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV file ({type(e).__name__}: {e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df
