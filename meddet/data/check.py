"""Checking a COCO dataset and its images before training on it.

:func:`check_dataset` takes one or more COCO files (the split is each file's stem: ``train``,
``val``, ``test``...) and reports:

- counts: images, boxes, images without boxes, boxes per class, per split;
- box sizes (the square root of the box area, and width/height) per class in pixels, and in
  millimetres where the image record has ``pixel_spacing`` ``[row, column]``;
- errors: boxes out of bounds or degenerate (zero/negative size, not finite), duplicate image
  ids, missing or unreadable image files, files whose size differs from the record, the same
  image content (hash of the decoded pixels) in two splits, a patient in two splits;
- warnings: images without boxes, the same content twice within a split.

The report prints as a table (:meth:`CheckReport.table`), and writes as JSON and Markdown.
Errors make ``convert_dataset.py check`` exit with 1, warnings do not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from meddet.data.coco import class_names, load_coco, resolve_image_path
from meddet.data.parallel import parallel_map
from meddet.errors import ConfigError, MeddetError
from meddet.io.image import read_image_bits

logger = logging.getLogger(__name__)

__all__ = ["CheckReport", "Finding", "check_dataset"]

# Examples listed per finding in the report (the count is always complete).
MAX_EXAMPLES = 10
# A box may overhang the image by this many pixels (rounding in converters) before it is an error.
BOUNDS_TOLERANCE = 0.5


@dataclass
class Finding:
    """One kind of problem: ``level`` (``error``/``warning``), ``check``, a message, how many
    items have it and up to :data:`MAX_EXAMPLES` of them."""

    level: str
    check: str
    message: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """The outcome of :func:`check_dataset`."""

    files: dict[str, str]
    classes: list[str]
    counts: dict[str, dict[str, Any]]
    box_sizes: dict[str, dict[str, Any]]
    findings: list[Finding]
    # per split: effective bit depth ("8", "16", "12 of 16" ...) -> number of images (when images were read)
    bit_depths: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        """Findings of level ``error``."""
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings of level ``warning``."""
        return [f for f in self.findings if f.level == "warning"]

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serializable."""
        return {
            "files": self.files,
            "classes": self.classes,
            "counts": self.counts,
            "box_sizes": self.box_sizes,
            "bit_depths": self.bit_depths,
            "errors": [asdict(f) for f in self.errors],
            "warnings": [asdict(f) for f in self.warnings],
        }

    def table(self) -> str:
        """Counts per split and class, box sizes per class, then the findings, as plain text."""
        splits = list(self.counts)
        head = ["", *splits]
        rows = [
            ["images", *[str(self.counts[s]["images"]) for s in splits]],
            ["boxes", *[str(self.counts[s]["boxes"]) for s in splits]],
            ["images without boxes", *[str(self.counts[s]["empty_images"]) for s in splits]],
        ]
        if self.bit_depths:
            rows.append(["bit depth", *[_fmt_depths(self.bit_depths.get(s, {})) for s in splits]])
        rows += [[f"  {c}", *[str(self.counts[s]["per_class"].get(c, 0)) for s in splits]] for c in self.classes]
        lines = _format_table(head, rows)
        size_rows = []
        for c in self.classes:
            st = self.box_sizes.get(c, {})
            px = st.get("px")
            mm = st.get("mm")
            size_rows.append([c, str(st.get("n", 0)), _fmt_stats(px), _fmt_stats(mm)])
        lines += [
            "",
            "box size sqrt(w*h): min / median / max",
            *_format_table(["class", "boxes", "px", "mm"], size_rows),
        ]
        lines.append("")
        if not self.findings:
            lines.append("no problems found")
        for f in self.findings:
            lines.append(f"{f.level.upper()} [{f.check}] {f.message}: {f.count}")
            lines += [f"    {e}" for e in f.examples]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as Markdown (tables and lists)."""
        splits = list(self.counts)
        md = ["# Dataset check", "", "Files: " + ", ".join(f"`{s}`: {p}" for s, p in self.files.items()), ""]
        md += ["| | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
        md.append("| images | " + " | ".join(str(self.counts[s]["images"]) for s in splits) + " |")
        md.append("| boxes | " + " | ".join(str(self.counts[s]["boxes"]) for s in splits) + " |")
        md.append("| images without boxes | " + " | ".join(str(self.counts[s]["empty_images"]) for s in splits) + " |")
        if self.bit_depths:
            md.append("| bit depth | " + " | ".join(_fmt_depths(self.bit_depths.get(s, {})) for s in splits) + " |")
        for c in self.classes:
            md.append(f"| {c} | " + " | ".join(str(self.counts[s]["per_class"].get(c, 0)) for s in splits) + " |")
        md += [
            "",
            "## Box sizes (sqrt(w*h); min / median / max)",
            "",
            "| class | boxes | px | mm |",
            "|---|---|---|---|",
        ]
        for c in self.classes:
            st = self.box_sizes.get(c, {})
            md.append(f"| {c} | {st.get('n', 0)} | {_fmt_stats(st.get('px'))} | {_fmt_stats(st.get('mm'))} |")
        md += ["", f"## Errors ({len(self.errors)})", ""]
        md += [
            f"- **{f.check}**: {f.message} ({f.count})" + "".join(f"\n  - {e}" for e in f.examples) for f in self.errors
        ] or ["none"]
        md += ["", f"## Warnings ({len(self.warnings)})", ""]
        md += [
            f"- **{f.check}**: {f.message} ({f.count})" + "".join(f"\n  - {e}" for e in f.examples)
            for f in self.warnings
        ] or ["none"]
        return "\n".join(md) + "\n"

    def write(self, folder: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``check_report.json`` and ``check_report.md`` into ``folder``; returns both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        js, md = folder / "check_report.json", folder / "check_report.md"
        js.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        md.write_text(self.to_markdown(), encoding="utf-8")
        return js, md


def _fmt_depths(depths: dict[str, int]) -> str:
    """``{"8": 3, "12 of 16": 2}`` -> ``"8-bit 3, 12 of 16-bit 2"``."""
    return ", ".join(f"{k}-bit {v}" for k, v in sorted(depths.items())) or "-"


def _format_table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(head), "  ".join("-" * w for w in widths), *[fmt(r) for r in rows]]


def _fmt_stats(st: dict[str, float] | None) -> str:
    if not st:
        return "-"
    return f"{st['min']:.1f} / {st['median']:.1f} / {st['max']:.1f}"


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {
        "min": float(a.min()),
        "p5": float(np.percentile(a, 5)),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
    }


class _Findings:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str, str], Finding] = {}

    def add(self, level: str, check: str, message: str, example: str) -> None:
        f = self.items.setdefault((level, check, message), Finding(level, check, message))
        f.count += 1
        if len(f.examples) < MAX_EXAMPLES:
            f.examples.append(example)

    def sorted(self) -> list[Finding]:
        return sorted(self.items.values(), key=lambda f: (f.level != "error", f.check, f.message))


def _image_facts(task: tuple[str, str, str, int, int]) -> tuple[str, str | None, str]:
    """``("ok", content hash, effective bit depth)`` or ``("missing" | "unreadable" | "size", None, message)`` for
    a ``(split, file_name, path, height, width)`` task."""
    _, _, path, height, width = task
    if not os.path.isfile(path):
        return "missing", None, f"{path}: file not found"
    try:
        img, bits = read_image_bits(path)
    except MeddetError as e:
        return "unreadable", None, str(e)
    if img.shape[:2] != (height, width):
        return "size", None, f"{path}: file is {img.shape[0]}x{img.shape[1]}, the record says {height}x{width}"
    digest = hashlib.sha256(f"{img.shape}{img.dtype}".encode() + img.tobytes()).hexdigest()
    # the effective bit depth: "8", "16", or e.g. "12 of 16" for 16-bit files whose values use 12 bits
    depth = f"{bits} of 16" if bits else str(8 * img.dtype.itemsize)
    return "ok", digest, depth


def _indexed_facts(task: tuple[int, tuple[str, str, str, int, int]]) -> tuple[str, str | None, str]:
    return _image_facts(task[1])


def check_dataset(
    coco_files: Sequence[str | os.PathLike],
    *,
    image_root: str | os.PathLike = "",
    check_images: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> CheckReport:
    """Check COCO files and their images (see the module docstring).

    Args:
        coco_files: one file per split; the split is the file's stem. Do not pass ``all.json``
            together with the splits (every image would be a duplicate across "splits").
        image_root: the folder ``file_name`` is relative to (default: each JSON's folder).
        check_images: open every image (existence, readability, size, content hashes).
        workers: processes reading images.

    Raises :class:`~meddet.data.coco` errors (DataError) only for a file that is not COCO at all.
    """
    if not coco_files:
        raise ConfigError("check: no COCO file given")
    stems = [Path(p).stem for p in coco_files]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"check: two files with the same name {stems} (the file name is the split name)")
    findings = _Findings()
    classes: list[str] = []
    counts: dict[str, dict[str, Any]] = {}
    sizes_px: dict[str, list[float]] = defaultdict(list)
    sizes_mm: dict[str, list[float]] = defaultdict(list)
    patients: dict[str, set[str]] = defaultdict(set)
    tasks: list[tuple[str, str, str, int, int]] = []  # split, name, path, h, w
    bit_depths: dict[str, dict[str, int]] = {}
    for path, split in zip(coco_files, stems):
        coco = load_coco(path)
        names = class_names(coco)
        classes += [n for n in names if n not in classes]
        cat_name = {c["id"]: c["name"] for c in coco["categories"]}
        images = {}
        for im in coco["images"]:
            if im["id"] in images:
                findings.add("error", "duplicate id", "image ids used twice in one file", f"{split}: id {im['id']}")
            images[im["id"]] = im
        per_class: dict[str, int] = defaultdict(int)
        with_boxes = set()
        for a in coco["annotations"]:
            im = images[a["image_id"]]
            name = cat_name[a["category_id"]]
            per_class[name] += 1
            with_boxes.add(a["image_id"])
            where = f"{split}: {im['file_name']} annotation {a.get('id')} bbox {a['bbox']}"
            try:
                x, y, w, h = (float(v) for v in a["bbox"])
            except (TypeError, ValueError):
                findings.add("error", "degenerate box", "boxes with non-numeric values", where)
                continue
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                findings.add("error", "degenerate box", "boxes with zero, negative or non-finite size", where)
                continue
            t = BOUNDS_TOLERANCE
            if x < -t or y < -t or x + w > float(im["width"]) + t or y + h > float(im["height"]) + t:
                findings.add("error", "box out of bounds", "boxes reaching outside their image", where)
            side = math.sqrt(w * h)
            sizes_px[name].append(side)
            spacing = im.get("pixel_spacing")
            if spacing and len(spacing) == 2:
                sizes_mm[name].append(math.sqrt(w * float(spacing[1]) * h * float(spacing[0])))
        empty = [im for i, im in images.items() if i not in with_boxes]
        for im in empty:
            findings.add("warning", "no boxes", "images without boxes", f"{split}: {im['file_name']}")
        counts[split] = {
            "images": len(images),
            "boxes": len(coco["annotations"]),
            "empty_images": len(empty),
            "per_class": dict(per_class),
        }
        for im in images.values():
            if im.get("patient_id") not in (None, ""):
                patients[str(im["patient_id"])].add(split)
            tasks.append(
                (
                    split,
                    im["file_name"],
                    str(resolve_image_path(im["file_name"], path, image_root)),
                    int(im["height"]),
                    int(im["width"]),
                )
            )
    for pid, in_splits in sorted(patients.items()):
        if len(in_splits) > 1:
            findings.add(
                "error",
                "patient in several splits",
                "patients with images in more than one split",
                f"patient {pid}: {', '.join(sorted(in_splits))}",
            )
    if check_images:
        _check_images(tasks, findings, workers, progress, bit_depths)
    box_sizes = {c: {"n": len(sizes_px[c]), "px": _stats(sizes_px[c]), "mm": _stats(sizes_mm[c])} for c in classes}
    return CheckReport(
        {s: str(p) for s, p in zip(stems, coco_files)}, classes, counts, box_sizes, findings.sorted(), bit_depths
    )


def _check_images(
    tasks: list[tuple[str, str, str, int, int]],
    findings: _Findings,
    workers: int,
    progress: bool,
    bit_depths: dict[str, dict[str, int]],
) -> None:
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    messages = {
        "missing": ("missing image", "image files not found"),
        "unreadable": ("unreadable image", "image files that cannot be read"),
        "size": ("size mismatch", "image files whose size differs from the record"),
    }
    done: dict[int, Any] = {}
    indexed = ((i, t) for i, t in enumerate(tasks))
    for (i, _), result in tqdm(
        parallel_map(_indexed_facts, indexed, workers, preload=[__name__]),
        total=len(tasks),
        desc="check",
        unit="image",
        disable=not progress,
    ):
        done[i] = result
    for i, task in enumerate(tasks):  # in the files' order, whatever order the workers finished in
        split, name, result = task[0], task[1], done[i]
        status, digest, message = (
            ("unreadable", None, f"{task[2]}: {result}") if isinstance(result, Exception) else result
        )
        if status == "ok" and digest is not None:  # an "ok" always carries the content hash
            by_hash[digest].append((split, name))
            depths = bit_depths.setdefault(split, {})
            depths[message] = depths.get(message, 0) + 1
            if " of " in message:
                findings.add(
                    "warning",
                    "effective bit depth",
                    "16-bit images whose values use fewer bits (read normalized by their effective depth)",
                    f"{split}: {name} ({message} bits)",
                )
        else:
            check, text = messages[status]
            findings.add("error", check, text, f"{split}: {message}")
    for members in by_hash.values():
        if len(members) < 2:
            continue
        splits = {s for s, _ in members}
        listing = ", ".join(f"{s}:{n}" for s, n in members)
        if len(splits) > 1:
            findings.add("error", "duplicate across splits", "identical images in more than one split", listing)
        else:
            findings.add("warning", "duplicate within split", "identical images within a split", listing)
