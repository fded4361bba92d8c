"""What every converter to COCO shares: the report of a batch conversion (what was skipped and
why), and writing ``all.json`` plus the patient-level ``train/val/test.json`` next to ``images/``.
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
from meddet.data.splits import SPLIT_NAMES, split_by_patient, subset_coco

logger = logging.getLogger(__name__)

__all__ = ["ConversionReport", "Skipped", "safe_name", "write_coco_splits"]


@dataclass(frozen=True)
class Skipped:
    """One input left out of the dataset: ``item`` names it (file, CSV row, image), ``reason`` says why."""

    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"


@dataclass
class ConversionReport:
    """The outcome of a conversion: counts, written files and the skipped items."""

    out_dir: Path
    n_images: int = 0
    n_annotations: int = 0
    categories: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was skipped."""
        return not self.skipped

    def skip(self, item: str, reason: str) -> None:
        """Record a skipped item and log it as a warning."""
        s = Skipped(item, reason)
        self.skipped.append(s)
        logger.warning("skipped %s", s)

    def summary(self) -> str:
        """A few human-readable lines: counts per split, categories, then each skipped item."""
        lines = [
            f"{self.n_images} images, {self.n_annotations} boxes, classes {self.categories} -> {self.out_dir}",
            "splits: " + ", ".join(f"{k} {v} images" for k, v in self.splits.items()),
        ]
        if self.skipped:
            lines.append(f"{len(self.skipped)} item(s) skipped:")
            lines += [f"  {s}" for s in self.skipped]
        return "\n".join(lines)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (path separators and odd characters become ``_``)."""
    return _UNSAFE.sub("_", text).strip("._") or "image"


def write_coco_splits(
    coco: dict[str, Any],
    out_dir: str | os.PathLike,
    report: ConversionReport,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
) -> ConversionReport:
    """Write ``all.json`` and the patient-level ``train.json``, ``val.json``, ``test.json``.

    Fills ``report``'s counts, split sizes and file paths, and returns it. The COCO ``info``
    records the split fractions and seed so the split can be reproduced.
    """
    out = Path(out_dir)
    assignment = split_by_patient(coco["images"], fractions, seed)
    coco.setdefault("info", {})
    coco["info"].update({"meddet_version": __version__, "split": {"fractions": list(fractions), "seed": seed}})
    coco.setdefault("licenses", [])
    all_path = out / "all.json"
    save_json_atomic(coco, all_path)
    report.files["all"] = all_path
    for name in SPLIT_NAMES:
        sub = subset_coco(coco, assignment[name])
        sub["info"] = {**coco["info"], "split": {**coco["info"]["split"], "name": name}}
        path = out / f"{name}.json"
        save_json_atomic(sub, path)
        report.files[name] = path
        report.splits[name] = len(sub["images"])
    report.n_images = len(coco["images"])
    report.n_annotations = len(coco["annotations"])
    report.categories = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    return report
