"""`predict`: a model (plain, tiled or an ensemble) on images, DICOMs or folders; annotated PNGs and JSON."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meddet.apps.common import check_out_dir
from meddet.apps.predictors import build_predictor
from meddet.data.coco import save_json_atomic
from meddet.errors import DataError, MeddetError

if TYPE_CHECKING:
    from meddet.config import CfgNode

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"}


@dataclass
class PredictReport:
    """What `predict` wrote and skipped."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    results_json: Path | None = None


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders searched recursively for images (PNG, JPEG, TIFF, DICOM)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: input not found (expected an image, a DICOM file or a folder)")
    if not out:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return out


def predict(
    cfg: CfgNode,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    score_thresh: float | None = None,
    overwrite: bool = False,
    ensemble: Sequence[str | os.PathLike] = (),
) -> PredictReport:
    """Predict on images/DICOMs/folders; writes predictions.json (COCO results, each entry also naming its
    file and class), images.json (the images, categories and skipped files) and one annotated PNG per image.
    Models trained on tiles predict by slicing; `ensemble` adds members fused with the configured model
    (see `build_predictor`).

    A bad file is skipped and reported; the rest still run."""
    import cv2
    from tqdm import tqdm

    from meddet.inference.base import score_thresholds
    from meddet.visualize import draw_detections

    files = collect_inputs(inputs)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, ["predictions.json"], overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = build_predictor(cfg, ensemble)
    names = predictor.class_names
    thresh = score_thresholds(predictor.cfg, names, score_thresh)
    report = PredictReport()
    images, results, used = [], [], set()
    for image_id, f in enumerate(tqdm(files, desc="predict", dynamic_ncols=True, mininterval=2), start=1):
        try:
            image = predictor.read(f)
        except MeddetError as e:
            logger.error("skipped %s: %s", f, e)
            report.skipped.append((str(f), str(e)))
            continue
        det = predictor(image)
        keep = det["scores"] >= thresh[det["classes"]]
        stem = f.stem
        name, n = f"{stem}.png", 1
        while name in used:
            n += 1
            name = f"{stem}_{n}.png"
        used.add(name)
        drawn = draw_detections(image, det["boxes"][keep], det["scores"][keep], det["classes"][keep], names)
        if not cv2.imwrite(str(out_dir / name), drawn):
            raise DataError(f"{out_dir / name}: could not write the annotated PNG")
        report.written.append(out_dir / name)
        images.append(
            {
                "id": image_id,
                "file_name": str(f),
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "annotated": name,
            }
        )
        for (x1, y1, x2, y2), s, c in zip(det["boxes"][keep], det["scores"][keep], det["classes"][keep]):
            results.append(
                {
                    "image_id": image_id,
                    "file_name": str(f),
                    "category_id": int(c) + 1,
                    "category_name": names[int(c)],
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(s),
                }
            )
    report.results_json = out_dir / "predictions.json"
    save_json_atomic(results, report.results_json, indent=1)
    save_json_atomic(
        {
            "images": images,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
            "score_thresh": thresh.tolist(),
            "skipped": [{"file": f, "reason": r} for f, r in report.skipped],
        },
        out_dir / "images.json",
        indent=1,
    )
    return report
