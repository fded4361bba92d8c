"""What every converter to COCO shares: the report of a batch conversion (what was skipped and
why, what changed against the previous conversion in the same folder), assembling the COCO dict
from manifest entries, and writing ``all.json`` plus the patient-level ``train/val/test.json``
next to ``images/``.

Image and annotation ids are stable across re-conversions: ``ids.json`` next to the manifest maps
each output's key (its source file's identity, e.g. CBIS-DDSM's ``Mass-Training_P_00001_LEFT_CC``)
to its image id and annotation ids. A first conversion numbers the images 1..N in key order (as
before); a later one into the same folder keeps every id it already gave and numbers new outputs
after the largest id ever given, so an image that drops out (an unreadable file) changes no other
id and its id is never reused. Copy ``ids.json`` into a new output folder to keep the ids there.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meddet import __version__
from meddet.data.coco import class_names, save_json_atomic
from meddet.data.splits import SPLIT_NAMES, split_by_patient, subset_coco
from meddet.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["ID_MAP", "ConversionReport", "Skipped", "assemble_coco", "safe_name", "write_coco_splits"]

ID_MAP = "ids.json"


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
    # against the previous conversion in the same folder: "added", "removed", "changed" (outputs, from
    # the manifest) and "moved" (images now in another split); empty on a first conversion
    changes: dict[str, list[str]] = field(default_factory=dict)

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
        if self.changes:
            counts = ", ".join(f"{len(self.changes.get(k, []))} {k}" for k in ("added", "removed", "changed", "moved"))
            lines.append(
                f"against the previous conversion: {counts}"
                + (f" (listed in {self.files['changes']})" if "changes" in self.files else "")
            )
            for k in ("removed", "moved", "added", "changed"):
                items = self.changes.get(k, [])
                lines += [f"  {k}: {i}" for i in items[:20]]
                if len(items) > 20:
                    lines.append(f"  ... {len(items) - 20} more {k}")
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


def _load_id_map(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None or not path.is_file():
        return {"images": {}, "annotations": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ids: dict[str, dict[str, Any]] = {
            "images": {str(k): int(v) for k, v in data["images"].items()},
            "annotations": {str(k): [int(i) for i in v] for k, v in data["annotations"].items()},
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(
            f"{path}: not an id map written by meddet ({type(e).__name__}: {e}); expected "
            '{"images": {key: id}, "annotations": {key: [ids]}}; move it away to number ids afresh'
        ) from None
    return ids


def assemble_coco(
    entries: Sequence[dict[str, Any]],
    categories: Sequence[dict[str, Any]],
    info: dict[str, Any],
    id_map: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """A COCO dict from manifest entries (each with ``key``, ``record`` and ``annotations``).

    Without ``id_map``: image and annotation ids 1..N in the entries' order. With it (a path,
    normally ``OUT/ids.json``): ids already given to a key are kept, new keys get ids after the
    largest ever given, and the map is written back (module docstring). Either way the same
    inputs give the same ids whatever the number of workers."""
    path = Path(id_map) if id_map is not None else None
    ids = _load_id_map(path)
    next_image = max(ids["images"].values(), default=0) + 1
    next_ann = max((i for v in ids["annotations"].values() for i in v), default=0) + 1
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for n, entry in enumerate(entries):
        key = str(entry.get("key", n))
        if key not in ids["images"]:
            ids["images"][key] = next_image
            next_image += 1
        image_id = ids["images"][key]
        images.append({"id": image_id, **entry["record"]})
        ann_ids = ids["annotations"].setdefault(key, [])
        while len(ann_ids) < len(entry["annotations"]):
            ann_ids.append(next_ann)
            next_ann += 1
        for a, ann_id in zip(entry["annotations"], ann_ids):
            annotations.append({"id": ann_id, "image_id": image_id, **a})
    if path is not None:
        save_json_atomic(ids, path)
    return {"info": dict(info), "images": images, "annotations": annotations, "categories": list(categories)}


def _previous_splits(out: Path) -> dict[str, str]:
    """file_name -> split in the split files an earlier conversion left in ``out`` (empty if none)."""
    found: dict[str, str] = {}
    for name in SPLIT_NAMES:
        path = out / f"{name}.json"
        try:
            images = json.loads(path.read_text(encoding="utf-8")).get("images", [])
        except (OSError, ValueError, AttributeError):
            continue
        for im in images:
            if isinstance(im, dict) and "file_name" in im:
                found[str(im["file_name"])] = name
    return found


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
    before = _previous_splits(out)
    if assignment is None:
        assignment = split_by_patient(coco["images"], fractions, seed)
        split_info = {"method": "patient", "assignment": "hash", "fractions": list(fractions), "seed": seed}
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
    if before:
        split_of = {i: name for name in SPLIT_NAMES for i in assignment.get(name, [])}
        now = {im["file_name"]: split_of.get(im["id"], "none") for im in coco["images"]}
        moved = [f"{f}: {before[f]} -> {now[f]}" for f in sorted(now) if f in before and before[f] != now[f]]
        report.changes["moved"] = moved
        if moved:
            logger.warning(
                "%d image(s) are in another split than in the previous conversion of %s (seed, "
                "fractions or patient ids changed?)",
                len(moved),
                out,
            )
        write_changes(out, report)
    report.n_images = len(coco["images"])
    report.n_annotations = len(coco["annotations"])
    report.categories = class_names(coco)
    return report


def write_changes(out_dir: str | os.PathLike, report: ConversionReport) -> None:
    """``changes.txt``: one line ``KIND: ITEM`` per change against the previous conversion."""
    path = Path(out_dir) / "changes.txt"
    if not any(report.changes.values()):  # nothing changed: no file (and no stale one from an older run)
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(
        "".join(f"{k}: {i}\n" for k in ("removed", "moved", "added", "changed") for i in report.changes.get(k, [])),
        encoding="utf-8",
    )
    os.replace(tmp, path)
    report.files["changes"] = path


def read_csv_strings(path: str | os.PathLike, what: str = "CSV file", sep: str = ",") -> pd.DataFrame:
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
