#!/usr/bin/env python
"""meddet against Ultralytics YOLO: accuracy per CPU-minute, from scratch, on the same data (issue 16, item 2).

Each model is trained from random weights (no pretrained weights: there is no network), one after the other in
this one process, on the same machine, with the same wall-clock training budget (``--budget-seconds``, default
600 s each on ``--threads`` CPU threads, default 2), on the same train/val/test split at the same input size,
then predicts the same test images and is scored by the same evaluator (meddet.evaluation.run_evaluation) from
a COCO-results list:

- meddet: Faster R-CNN R18-FPN and R50-FPN, RetinaNet R18-FPN (the dataset's demo config; ``TEST.EVAL_PERIOD``
  0, boxes kept down to score 0.001, at most 300 per image). The budget is met by a hook that measures the
  seconds per iteration over the first 10% of the budget (and again at 50%), then sets ``SOLVER.MAX_ITER`` so
  the cosine schedule ends with the budget; a hard stop guards the budget.
- Ultralytics: YOLO11n/s or YOLOv8n/s built from their YAML (``yolo11n.yaml``...), its own recipe (mosaic,
  SGD/AdamW "auto", EMA, ``batch`` ``--yolo-batch``) with ``time=budget`` (Ultralytics fits its epochs and LR
  schedule to the time, then validates once); ``val=False``, ``plots=False``, ``last.pt`` predicted at
  ``conf=0.001``, ``max_det=300``; its boxes become COCO results with category ids mapped (class k → the
  k-th category by id, as meddet.data.formats.yolo.coco_to_yolo wrote the labels).

Threads: torch uses ``--threads`` on both sides (Ultralytics' own CPU default, cpu_count - 1, is overridden).
Input size: every image goes in at its own resolution on both sides (meddet: INPUT.MIN/MAX_SIZE equal to the
image sides; Ultralytics: ``imgsz`` = the longest image side, letterboxed). Inference time is the median
milliseconds per test image of the predict call on an image already in memory (pre- and post-processing
included, disk reading excluded), after one warm-up image, on the same threads.

Datasets (``--datasets``, comma-separated):
  mammo      the synthetic CBIS-DDSM demo set (meddet.synth.make_cbis_ddsm → convert_cbis_ddsm, official split,
             validation carved by patient; 384x240 8-bit PNG; classes of the demo).
  cytology   the synthetic cytology set (meddet.synth.make_cytology, split by patient), cut into 256x256 tiles
             (meddet.data.tiling.write_tile_dataset; train tiles keep every cluster tile and 30% of empty
             ones; val/test tiles are every tile of a grid without overlap, so an object counts about once).
             Models are trained and scored on tiles.
  deepforest real aerial RGB images with Pascal VOC tree-crown boxes, the data files of the PyPI package
             ``deepforest`` 2.1.0 (installed with ``pip install --no-deps --target``; only its data/ folder is
             read, the package is never imported): 4 annotated images, 951 crowns (one 2299x2472 image holds
             574), every label (Tree, Alive, Dead) mapped to one class ``tree``; SOAP_031.png has no boxes and
             is not used.
             Split by image region, never by tile, so no test pixel is seen in training: each image is cut into
             horizontal bands, rows [0, 60%) train, [60%, 70%) validation, [70%, 100%) test. A box crossing a
             band edge is clipped to each band and kept where at least half its area lies inside,
             so a crown on a boundary can appear, cut, on both sides (568 / 91 / 292 crowns). Each band is then
             tiled, 384x384, every tile kept (train: 25% overlap; val/test: no overlap, so a crown counts
             about once); models train and are scored on tiles.

Output (``--output``, default output/peer_benchmark): per dataset its data, each model's run folder and its
evaluation folder (``<dataset>/<model>/eval``: every file of meddet's evaluator), ``pr_curves_<dataset>.png``
(all models' precision-recall at IoU 0.5), and ``results.csv`` / ``results.md`` (the printed table).

Defaults: models yolo11n, yolo11s, frcnn_r18, frcnn_r50, retinanet_r18 on all three datasets, 15 runs of 10 min
plus data preparation and inference: about 3 hours on 2 CPU cores. Data loading follows each tool's CPU
default (meddet: the config's DATALOADER.NUM_WORKERS 1; Ultralytics: in the main process).

Install and run (``make bench-peer`` does both): the ``ultralytics`` wheel requires opencv-python, which clashes
with meddet's opencv-python-headless (both own ``cv2``); its build ``ultralytics-opencv-headless`` (the same code)
goes, without dependencies like deepforest, into a folder put on PYTHONPATH, so the venv itself is unchanged:

    pip install --no-deps --target .venv/peer-extras ultralytics-opencv-headless==8.4.190 \\
        ultralytics-thop==2.2.3 polars==2.1.0 polars-runtime-32==2.1.0 deepforest==2.1.0
    PYTHONPATH=.venv/peer-extras python benchmarks/peer_benchmark.py                       # all, 10 min each
    PYTHONPATH=.venv/peer-extras python benchmarks/peer_benchmark.py --budget-seconds 20 \\
        --datasets mammo --models yolo11n,frcnn_r18 --small                                 # smoke run

Ultralytics runs offline: YOLO_OFFLINE=1 (its is_online() is False: no downloads), YOLO_AUTOINSTALL=0 (no pip
at run time), its settings in the output folder (YOLO_CONFIG_DIR) with sync and every logger integration off,
plots off (no font download) and the AMP check (which downloads yolo26n.pt) replaced by "AMP on" on CUDA; on
the CPU its own answer (off) is kept.

Variants (a recipe change on one side, measured in the same harness): ``--opts`` adds meddet config overrides
(``KEY VALUE`` pairs, as on meddet's command line) to every meddet model, ``--yolo-args`` adds Ultralytics
``train()`` arguments (``nbs=16 warmup_epochs=0.5``; the ones the benchmark sets are refused), ``--tag`` names
the variant in the table and its run folders:

    PYTHONPATH=.venv/peer-extras python benchmarks/peer_benchmark.py --datasets deepforest --models frcnn_r18 \
        --opts "SOLVER.BASE_LR 0.04" --tag +lr04
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import shlex
import shutil
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("meddet.peer_benchmark")

YOLO_MODELS = ("yolo11n", "yolo11s", "yolov8n", "yolov8s")
MEDDET_MODELS = ("frcnn_r18", "frcnn_r50", "retinanet_r18")
DEFAULT_MODELS = "yolo11n,yolo11s,frcnn_r18,frcnn_r50,retinanet_r18"
DATASETS = ("mammo", "cytology", "deepforest")
# The demo configs (data, input size, augmentation, schedule); R50 = the R18 one with DEPTH 50.
MAMMO_CONFIGS = {"frcnn": "configs/demo_mammo_R18_FPN.yaml", "retinanet": "configs/demo_mammo_retinanet_R18_FPN.yaml"}
CYTO_CONFIGS = {"frcnn": "configs/cyto_demo_R18_FPN.yaml", "retinanet": "configs/cyto_demo_retinanet_R18_FPN.yaml"}
REGION_BANDS = {"train": (0.0, 0.6), "val": (0.6, 0.7), "test": (0.7, 1.0)}
CONF = 0.001  # score floor of the predictions scored on both sides
MAX_DET = 300  # boxes kept per image on both sides


class BenchError(RuntimeError):
    """A missing extra, missing data or a bad flag: main() prints it as one line and exits 2."""


# ---------------------------------------------------------------------------------------------- pure helpers
def ultralytics_to_coco(
    boxes_xyxy: Any, scores: Any, classes: Any, image_id: Any, category_ids: Sequence[int]
) -> list[dict]:
    """COCO results (``bbox`` = [x, y, w, h] in the image's pixels) from one image's Ultralytics boxes
    (``Results.boxes.xyxy``, ``.conf``, ``.cls``); class index k becomes ``category_ids[k]``."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    c = np.asarray(classes).reshape(-1).astype(np.int64)
    if not (len(b) == len(s) == len(c)):
        raise ValueError(f"{len(b)} boxes, {len(s)} scores and {len(c)} classes; expected one of each per box")
    if len(c) and (c.min() < 0 or c.max() >= len(category_ids)):
        raise ValueError(
            f"class index {int(c.max()) if c.max() >= len(category_ids) else int(c.min())} outside "
            f"0..{len(category_ids) - 1} (the {len(category_ids)} categories)"
        )
    return [
        {
            "image_id": image_id,
            "category_id": int(category_ids[k]),
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "score": float(sc),
        }
        for (x0, y0, x1, y1), sc, k in zip(b, s, c)
    ]


def region_bands(height: int, bands: dict[str, tuple[float, float]] = REGION_BANDS) -> dict[str, tuple[int, int]]:
    """Row ranges [y0, y1) of each split of an image `height` rows tall (fractions rounded to rows)."""
    out = {name: (int(round(lo * height)), int(round(hi * height))) for name, (lo, hi) in bands.items()}
    for name, (y0, y1) in out.items():
        if y1 <= y0:
            raise ValueError(f"split {name!r} gets no rows of an image {height} rows tall")
    return out


def clip_to_band(boxes_xyxy: Any, y0: int, y1: int, min_visible: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to rows [y0, y1), in the band's coordinates (y - y0), and the indices of those kept:
    a box is kept where at least `min_visible` of its area lies inside the band."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    top, bottom = np.clip(b[:, 1], y0, y1), np.clip(b[:, 3], y0, y1)
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    inside = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(bottom - top, 0)
    keep = np.flatnonzero((area > 0) & (inside >= min_visible * area) & (inside > 0))
    out = b[keep].copy()
    out[:, 1], out[:, 3] = top[keep] - y0, bottom[keep] - y0
    return out, keep


def read_voc(xml_path: str | os.PathLike) -> dict:
    """A Pascal VOC file: {"filename", "width", "height", "boxes": (N, 4) xyxy, "names": [...]}."""
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_path}: no <size>")
    boxes, names = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        boxes.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        names.append(obj.findtext("name", "").strip())
    return {
        "filename": root.findtext("filename", ""),
        "width": int(size.findtext("width")),
        "height": int(size.findtext("height")),
        "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
        "names": names,
    }


TABLE_COLUMNS = [
    "dataset",
    "model",
    "mAP50",
    "mAP50-95",
    "sens@1FP",
    "iterations",
    "batch",
    "epochs",
    "train_s",
    "ms/image",
]


def format_table(rows: Sequence[dict], markdown: bool = True) -> str:
    """The results table: one row per dataset x model; AP and sensitivity in percent; per-class AP50 columns
    (``AP50 <class>``) after the fixed ones, in the order first seen; '-' where a value does not apply."""
    extra: list[str] = []
    for r in rows:
        extra += [k for k in r if k.startswith("AP50 ") and k not in extra]
    cols = TABLE_COLUMNS + extra

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.1f}"
        return str(v)

    body = [[cell(r.get(c)) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def write_table(rows: Sequence[dict], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """results.csv (raw numbers) and results.md (the printed table) in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []
    for r in rows:
        extra += [k for k in r if k.startswith("AP50 ") and k not in extra]
    cols = TABLE_COLUMNS + extra
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    (out / "results.md").write_text(format_table(rows) + "\n", encoding="utf-8")
    return out / "results.csv", out / "results.md"


# ---------------------------------------------------------------------------------------------- datasets
@dataclass
class Dataset:
    name: str
    splits: dict[str, Path]  # train/val/test COCO files
    class_names: list[str]
    imgsz: int  # longest image side: Ultralytics' imgsz; meddet takes images at their own size
    configs: dict[str, str]  # meddet config of each family: {"frcnn": yaml, "retinanet": yaml}
    opts: list = field(default_factory=list)  # dataset overrides for every meddet model


def _coco_stats(coco_path: Path) -> tuple[list[str], int]:
    from meddet.data.coco import class_names, load_coco

    coco = load_coco(coco_path)
    names = class_names(coco)
    side = max(max(int(im["height"]), int(im["width"])) for im in coco["images"])
    return names, side


def _pixel_stats(coco_path: Path, limit: int = 200) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (RGB, 0-255) of the first `limit` images of a COCO file."""
    from meddet.data.coco import load_coco, resolve_image_path
    from meddet.io import read_image

    coco = load_coco(coco_path)
    acc = []
    for im in coco["images"][:limit]:
        px = read_image(resolve_image_path(im["file_name"], coco_path, "")).astype(np.float64)
        acc.append(px.reshape(-1, px.shape[-1] if px.ndim == 3 else 1)[::7])
    v = np.concatenate(acc)
    return [round(float(x), 2) for x in v.mean(0)], [round(max(float(x), 1.0), 2) for x in v.std(0)]


def build_mammo(root: Path, small: bool, seed: int) -> Dataset:
    from meddet.data.formats.cbis_ddsm import convert_cbis_ddsm
    from meddet.synth import make_cbis_ddsm

    if not (root / "coco" / "test.json").is_file():
        synth = make_cbis_ddsm(root / "cbis_ddsm", n_patients=20 if small else 60, seed=42, image_size=(384, 240))
        report = convert_cbis_ddsm(synth["mass_csvs"], synth["calc_csvs"], synth["dicom_root"], root / "coco", seed=42)
        if report.skipped:
            raise BenchError(f"mammo: conversion skipped {len(report.skipped)} item(s): {report.skipped[:3]}")
    splits = {s: root / "coco" / f"{s}.json" for s in ("train", "val", "test")}
    names, side = _coco_stats(splits["train"])
    return Dataset("mammo", splits, names, side, MAMMO_CONFIGS)


def _tile_opts(size: int, names: list[str]) -> list:
    return [
        "TILING.ENABLED",
        False,
        "INPUT.MIN_SIZE_TRAIN",
        (size,),
        "INPUT.MAX_SIZE_TRAIN",
        size,
        "INPUT.MIN_SIZE_TEST",
        size,
        "INPUT.MAX_SIZE_TEST",
        size,
        "MODEL.ROI_HEADS.NUM_CLASSES",
        len(names),
        "MODEL.RETINANET.NUM_CLASSES",
        len(names),
        "DATASETS.CLASS_NAMES",
        list(names),
    ]


def build_cytology(root: Path, small: bool, seed: int) -> Dataset:
    from meddet.data.tiling import TilingParams, write_tile_dataset
    from meddet.synth import make_cytology

    size = 256
    tiles = root / "tiles"
    if not (tiles / "test" / "test.json").is_file():
        data_dir = root / "data"
        make_cytology(
            data_dir,
            n_images=6 if small else 12,
            size=768 if small else 1536,
            cells_per_image=80 if small else 300,
            n_patients=6 if small else 12,
            seed=7,
        )
        train = TilingParams(
            size=size, overlap=0.2, min_visible=0.5, minority_classes=("cluster",), negative_fraction=0.3, seed=seed
        )
        for split in ("train", "val", "test"):
            params = train if split == "train" else replace(train.for_evaluation(), overlap=0.0)
            write_tile_dataset(data_dir / "coco" / f"{split}.json", tiles / split, params)
    splits = {s: tiles / s / f"{s}.json" for s in ("train", "val", "test")}
    names, _ = _coco_stats(splits["train"])
    return Dataset("cytology", splits, names, size, CYTO_CONFIGS, _tile_opts(size, names))


def deepforest_data_dir() -> Path:
    """The data/ folder of the installed deepforest package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("deepforest")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(
            "deepforest is not installed: pip install --no-deps --target <dir> deepforest==2.1.0 "
            "and put <dir> on PYTHONPATH (or pass --deepforest-data)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def write_region_split(data_dir: Path, out: Path, min_visible: float = 0.5) -> dict[str, Path]:
    """Band images (PNG) and one COCO file per split from every annotated image of deepforest's data/ (see the
    module docstring); returns {split: COCO path}."""
    from PIL import Image

    from meddet.data.coco import save_json_atomic

    xmls = sorted(data_dir.glob("*.xml"))
    if not xmls:
        raise BenchError(f"{data_dir}: no Pascal VOC .xml files (expected deepforest's data/ folder)")
    cocos = {s: {"images": [], "annotations": [], "categories": [{"id": 1, "name": "tree"}]} for s in REGION_BANDS}
    (out / "images").mkdir(parents=True, exist_ok=True)
    for xml in xmls:
        voc = read_voc(xml)
        image_file = next((p for p in (xml.with_suffix(".png"), data_dir / voc["filename"]) if p.is_file()), None)
        if image_file is None:
            logger.warning("%s: no image (%s or .png) next to it; skipped", xml, voc["filename"])
            continue
        pixels = np.asarray(Image.open(image_file).convert("RGB"))
        if pixels.shape[:2] != (voc["height"], voc["width"]):
            raise BenchError(
                f"{image_file}: {pixels.shape[1]}x{pixels.shape[0]}, but {xml} says {voc['width']}x{voc['height']}"
            )
        for split, (y0, y1) in region_bands(voc["height"]).items():
            coco = cocos[split]
            image_id = len(coco["images"]) + 1
            name = f"images/{xml.stem}_{split}.png"
            Image.fromarray(pixels[y0:y1]).save(out / name)
            coco["images"].append(
                {
                    "id": image_id,
                    "file_name": name,
                    "height": y1 - y0,
                    "width": voc["width"],
                    "source": image_file.name,
                    "patient_id": xml.stem,
                    "rows": [y0, y1],
                }
            )
            boxes, _ = clip_to_band(voc["boxes"], y0, y1, min_visible)
            for x0, by0, x1, by1 in boxes:
                w, h = float(x1 - x0), float(by1 - by0)
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [float(x0), float(by0), w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
    paths = {}
    for split, coco in cocos.items():
        paths[split] = out / f"{split}.json"
        save_json_atomic(coco, paths[split])
    return paths


def build_deepforest(root: Path, small: bool, seed: int, data_dir: Path | None = None) -> Dataset:
    from meddet.data.tiling import TilingParams, write_tile_dataset

    size = 384
    tiles = root / "tiles"
    if not (tiles / "test" / "test.json").is_file():
        bands = write_region_split(data_dir or deepforest_data_dir(), root / "regions")
        params = TilingParams(size=size, overlap=0.25, min_visible=0.5, seed=seed)
        for split, path in bands.items():
            write_tile_dataset(path, tiles / split, params if split == "train" else replace(params, overlap=0.0))
    splits = {s: tiles / s / f"{s}.json" for s in ("train", "val", "test")}
    names, _ = _coco_stats(splits["train"])
    mean, std = _pixel_stats(splits["train"])
    opts = _tile_opts(size, names) + ["MODEL.PIXEL_MEAN", mean, "MODEL.PIXEL_STD", std]
    return Dataset("deepforest", splits, names, size, CYTO_CONFIGS, opts)


# ---------------------------------------------------------------------------------------------- meddet side
def _time_budget_hook(budget: float, calibrate: float = 0.1):
    from meddet.training import HookBase
    from meddet.training.solver import lr_factor

    class TimeBudget(HookBase):
        """Fit the schedule to a wall-clock budget: at 10% and 50% of it, set MAX_ITER from the measured
        seconds per iteration (the first iteration, which warms up, left out); the cosine schedule then ends
        with the budget. Stops at that MAX_ITER or at the budget, whichever comes first."""

        def before_train(self) -> None:
            self.t0 = time.perf_counter()
            self.t_first: float | None = None
            self.target: int | None = None
            self.checks = [calibrate, 0.5]

        def _refit(self, now: float) -> None:
            t = self.trainer
            done = t.iter + 1 - t.start_iter
            rate = (now - self.t_first) / (done - 1) if done > 1 else now - self.t0
            target = t.iter + 1 + max(int((budget - (now - self.t0)) / rate), 1)
            cfg = t.cfg.clone()
            cfg.defrost()
            cfg.SOLVER.MAX_ITER = target
            cfg.SOLVER.WARMUP_ITERS = min(int(cfg.SOLVER.WARMUP_ITERS), max(target // 5, 1))
            cfg.freeze()
            t.scheduler.lr_lambdas = [lambda it, c=cfg: lr_factor(c, it)] * len(t.scheduler.lr_lambdas)
            self.target = target
            logger.info("time budget: %.3f s/it over %d iterations; MAX_ITER set to %d", rate, done, target)

        def after_step(self) -> None:
            now = time.perf_counter()
            if self.t_first is None:
                self.t_first = now
            elapsed = now - self.t0
            if self.checks and elapsed >= self.checks[0] * budget:
                while self.checks and elapsed >= self.checks[0] * budget:
                    self.checks.pop(0)
                self._refit(now)
            if elapsed >= budget or (self.target is not None and self.trainer.iter + 1 >= self.target):
                self.trainer.stop_requested = True

    return TimeBudget()


def meddet_config(ds: Dataset, model: str, out: Path, device: str, seed: int, extra: Sequence[str] = ()):
    from meddet.config import load_config

    base = ds.configs["frcnn" if model.startswith("frcnn") else "retinanet"]
    opts = list(ds.opts) + [
        "DATASETS.TRAIN",
        (str(ds.splits["train"]),),
        "DATASETS.VAL",
        (str(ds.splits["val"]),),
        "DATASETS.TEST",
        (str(ds.splits["test"]),),
        "OUTPUT_DIR",
        str(out),
        "MODEL.DEVICE",
        device,
        "SEED",
        seed,
        "TEST.EVAL_PERIOD",
        0,
        "SOLVER.MAX_ITER",
        10_000_000,
        "SOLVER.CHECKPOINT_PERIOD",
        0,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        CONF,
        "MODEL.RETINANET.SCORE_THRESH_TEST",
        CONF,
        "TEST.DETECTIONS_PER_IMAGE",
        MAX_DET,
    ]
    if model == "frcnn_r50":
        opts += ["MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256]
    # `extra` (--opts: KEY VALUE pairs as on meddet's command line) last, so it overrides the benchmark's own
    cfg = load_config(REPO / base, [str(o) if isinstance(o, Path) else o for o in _flatten(opts)] + list(extra))
    return cfg


def _flatten(opts: list) -> list:
    """merge_from_list wants strings or literals: tuples/lists become their Python literal."""
    return [repr(o) if isinstance(o, (tuple, list)) else (str(o) if not isinstance(o, str) else o) for o in opts]


def train_meddet(
    ds: Dataset, model: str, out: Path, budget: float, device: str, seed: int, extra: Sequence[str] = ()
) -> dict:
    from meddet.training import Trainer

    if out.exists():
        shutil.rmtree(out)
    cfg = meddet_config(ds, model, out, device, seed, extra)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, hooks=[_time_budget_hook(budget)])
    trainer.train()
    iterations, batch = trainer.iter + 1, int(cfg.SOLVER.IMS_PER_BATCH)
    try:  # the images it trains on (empty ones left out by DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        epochs = iterations * batch / len(trainer.train_loader.dataset)
    except (AttributeError, TypeError, ZeroDivisionError):
        epochs = None
    return {
        "train_s": time.perf_counter() - t0,
        "iterations": iterations,
        "batch": batch,
        "epochs": epochs,
        "weights": out / "model_final.pth",
        "cfg": cfg,
    }


def predict_meddet(trained: dict, ds: Dataset) -> tuple[list[dict], float]:
    from meddet.data.coco import category_ids, load_coco, resolve_image_path
    from meddet.inference import Predictor
    from meddet.inference.predictor import detections_to_coco_results

    gt = load_coco(ds.splits["test"])
    cat_ids = category_ids(gt)
    predictor = Predictor(trained["cfg"], weights=trained["weights"], class_names=ds.class_names)
    results, times = [], []
    for k, im in enumerate(gt["images"]):
        image = predictor.read(resolve_image_path(im["file_name"], ds.splits["test"], ""))
        if k == 0:
            predictor(image)  # warm-up
        t0 = time.perf_counter()
        det = predictor(image)
        times.append(time.perf_counter() - t0)
        results.extend(detections_to_coco_results(det, im["id"], cat_ids))
    return results, 1000 * statistics.median(times)


# ---------------------------------------------------------------------------------------------- Ultralytics side
def setup_ultralytics_offline(config_dir: Path) -> None:
    """Environment and settings that keep Ultralytics from reaching the network (call before importing it)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    os.environ.setdefault("YOLO_VERBOSE", "False")


def _ultralytics(threads: int | None = None):
    """Ultralytics' YOLO class, set up offline; `threads`: the torch threads it sets when it picks a CPU device
    (its own default is cpu_count - 1)."""
    try:
        from ultralytics import YOLO
        from ultralytics.utils import SETTINGS
    except ImportError as e:
        raise BenchError(
            f"Ultralytics is not importable: `make bench-peer` installs it (see the module docstring) ({e})"
        ) from None
    SETTINGS.update(
        {
            "sync": False,
            "clearml": False,
            "comet": False,
            "dvc": False,
            "mlflow": False,
            "raytune": False,
            "tensorboard": False,
            "wandb": False,
            "vscode_msg": False,
            "openvino_msg": False,
        }
    )
    import ultralytics.engine.trainer as ul_trainer
    import ultralytics.utils.checks as ul_checks

    ul_trainer.check_amp = _check_amp_offline(ul_checks.check_amp)  # the original each call: never wrapped twice
    if threads:
        import ultralytics.utils.torch_utils as ul_torch

        ul_torch.NUM_THREADS = threads  # select_device() calls torch.set_num_threads(NUM_THREADS) on the CPU
    return YOLO


def _check_amp_offline(check_amp):
    """Ultralytics' AMP check without its download: on a CUDA device the real check runs yolo26n.pt (not
    reachable offline), so AMP is taken as working there; on the CPU the real answer (False, given before any
    download) is kept. An earlier `lambda model: True` turned on CPU autocast (bfloat16) in Ultralytics'
    training step, which made each 16-image step at 384 px about 6x slower (28 s instead of ~5 s on 2 cores)."""

    def check(model) -> bool:
        if next(model.parameters()).device.type == "cuda":
            return True
        return bool(check_amp(model))

    return check


def _yolo_device(device: str) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "0" if device == "cuda" else device


# train() arguments --yolo-args may not set: the ones the benchmark sets (data, budget, run folder, what is
# measured) and `epochs`, which the time budget decides (left at Ultralytics' default: see yolo_train_args)
YOLO_FIXED_ARGS = ("data", "epochs", "time", "imgsz", "device", "project", "name", "exist_ok", "pretrained", "val")


def parse_yolo_args(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` words (values read as YAML: ``nbs=16``, ``warmup_epochs=0.5``, ``mosaic=0``) for
    Ultralytics' ``train()``; the keys the benchmark fixes (YOLO_FIXED_ARGS) are refused."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--yolo-args: {item!r} is not key=value")
        if key.strip() in YOLO_FIXED_ARGS:
            raise BenchError(
                f"--yolo-args: {key.strip()} is set by the benchmark (fixed: {', '.join(YOLO_FIXED_ARGS)})"
            )
        out[key.strip()] = yaml.safe_load(value)
    return out


def yolo_train_args(
    ds: Dataset, data_yaml: Path, out: Path, budget: float, device: str, seed: int, batch: int
) -> dict[str, Any]:
    """Ultralytics ``train()`` arguments of a budgeted run. ``epochs`` is left at Ultralytics' default (100): with
    ``time`` set it refits the epochs to the budget after the first one, but its ``optimizer=auto`` picks from
    ``ceil(images / nbs) * epochs`` iterations (AdamW up to 10,000, MuSGD above), so the placeholder
    ``epochs=10_000`` used before made it pick MuSGD, whose orthogonalising step is slow on a CPU, for the
    synthetic sets, which a user running ``time=`` would not get."""
    return dict(
        data=str(data_yaml),
        time=budget / 3600,
        imgsz=ds.imgsz,
        batch=batch,
        device=_yolo_device(device),
        workers=1,
        project=str(out.parent),
        name=out.name,
        exist_ok=True,
        pretrained=False,
        plots=False,
        val=False,
        seed=seed,
        deterministic=False,
        verbose=False,
        patience=0,
    )


def train_yolo(
    ds: Dataset,
    model: str,
    data_yaml: Path,
    out: Path,
    budget: float,
    device: str,
    seed: int,
    batch: int,
    threads: int,
    extra: dict[str, Any] | None = None,
) -> dict:
    YOLO = _ultralytics(threads)
    if out.exists():
        shutil.rmtree(out)
    net = YOLO(f"{model}.yaml")
    batches = [0]  # counted at the start: a batch begun is trained on (the time stop comes after its step)
    net.add_callback("on_train_batch_start", lambda trainer: batches.__setitem__(0, batches[0] + 1))
    t0 = time.perf_counter()
    train_kw = yolo_train_args(ds, data_yaml, out, budget, device, seed, batch)
    train_kw.update(extra or {})
    net.train(**train_kw)
    train_s = time.perf_counter() - t0
    per_epoch = len(net.trainer.train_loader)
    return {
        "train_s": train_s,
        "iterations": batches[0],
        "batch": int(net.trainer.batch_size),
        "epochs": batches[0] / per_epoch if per_epoch else None,
        "weights": out / "weights" / "last.pt",
    }


def predict_yolo(trained: dict, ds: Dataset, device: str, threads: int) -> tuple[list[dict], float]:
    import cv2

    from meddet.data.coco import category_ids, load_coco, resolve_image_path

    YOLO = _ultralytics(threads)
    net = YOLO(str(trained["weights"]))
    gt = load_coco(ds.splits["test"])
    cat_ids = category_ids(gt)
    kw = dict(conf=CONF, max_det=MAX_DET, imgsz=ds.imgsz, device=_yolo_device(device), verbose=False)
    results, times = [], []
    for k, im in enumerate(gt["images"]):
        path = resolve_image_path(im["file_name"], ds.splits["test"], "")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR, as Ultralytics reads its training images
        if image is None:
            raise BenchError(f"{path}: OpenCV cannot read it")
        if k == 0:
            net.predict(image, **kw)  # warm-up
        t0 = time.perf_counter()
        r = net.predict(image, **kw)[0]
        times.append(time.perf_counter() - t0)
        bx = r.boxes
        results.extend(
            ultralytics_to_coco(bx.xyxy.cpu().numpy(), bx.conf.cpu().numpy(), bx.cls.cpu().numpy(), im["id"], cat_ids)
        )
    return results, 1000 * statistics.median(times)


# ---------------------------------------------------------------------------------------------- scoring
def score(ds: Dataset, model: str, preds: list[dict], out: Path) -> tuple[dict, Any]:
    from meddet.data.coco import save_json_atomic
    from meddet.evaluation import pr_curve_frame, run_evaluation

    out.mkdir(parents=True, exist_ok=True)
    save_json_atomic(preds, out / "coco_instances_results.json")
    res = run_evaluation(
        ds.splits["test"],
        out / "coco_instances_results.json",
        out,
        bootstrap_samples=0,
        gallery_size=0,
        image_root=str(ds.splits["test"].parent),
    )
    m = res.metrics
    row = {
        "dataset": ds.name,
        "model": model,
        "mAP50": float(m["bbox/AP50"]),
        "mAP50-95": float(m["bbox/AP"]),
        "sens@1FP": 100 * float(m.get("froc/sens@1fp", float("nan"))),
    }
    for n in ds.class_names:
        row[f"AP50 {n}"] = float(m.get(f"bbox/AP50-{n}", float("nan")))
    return row, pr_curve_frame(res.coco, res.data.class_names)


def plot_pr(curves: dict[str, Any], ds: str, out: Path, map50: dict[str, float] | None = None) -> Path:
    """pr_curves_<ds>.png in `out`: each model's COCO-interpolated precision against recall at IoU 0.5 (the
    ``all`` column of meddet.evaluation.pr_curve_frame), YOLO dashed; `map50` adds each model's mAP50 to the
    legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for model, df in curves.items():
        style = "--" if model.startswith("yolo") else "-"
        label = f"{model} (mAP50 {map50[model]:.1f})" if map50 and model in map50 else model
        ax.plot(df["recall"], df["all"], style, label=label)
    ax.set(
        xlabel="Recall",
        ylabel="Precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=f"{ds}: precision-recall, IoU 0.5 (mean over classes)",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / f"pr_curves_{ds}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> list[dict]:
    import torch

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    setup_ultralytics_offline(out / "ultralytics_config")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in YOLO_MODELS + MEDDET_MODELS]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown += [d for d in datasets if d not in DATASETS]
    if unknown:
        raise BenchError(
            f"unknown model/dataset {unknown}; models: {YOLO_MODELS + MEDDET_MODELS}, datasets: {DATASETS}"
        )
    yolo_extra = parse_yolo_args(shlex.split(args.yolo_args))
    meddet_extra = shlex.split(args.opts)
    if len(meddet_extra) % 2:
        raise BenchError(f"--opts: KEY VALUE pairs expected, got {len(meddet_extra)} words: {meddet_extra}")
    if any(m in YOLO_MODELS for m in models):
        _ultralytics(args.threads)  # fail now, not after an hour of meddet training
    rows: list[dict] = []
    for name in datasets:
        torch.set_num_threads(args.threads)
        root = out / name
        logger.info("== dataset %s", name)
        data = root / ("data-small" if args.small else "data")  # reused by later runs with the same --small
        if name == "mammo":
            ds = build_mammo(data, args.small, args.seed)
        elif name == "cytology":
            ds = build_cytology(data, args.small, args.seed)
        else:
            ds = build_deepforest(
                data, args.small, args.seed, Path(args.deepforest_data) if args.deepforest_data else None
            )
        data_yaml = None
        curves = {}
        for model in models:
            torch.set_num_threads(args.threads)
            label = model + args.tag  # the table's name of this run (a variant: --tag, with --opts / --yolo-args)
            logger.info("== %s / %s: training for %.0f s", name, label, args.budget_seconds)
            run_dir = root / label
            if model in YOLO_MODELS:
                if data_yaml is None:
                    from meddet.data.formats.yolo import coco_to_yolo

                    data_yaml = coco_to_yolo({s: p for s, p in ds.splits.items()}, root / "yolo_data", link=True)
                trained = train_yolo(
                    ds,
                    model,
                    data_yaml,
                    run_dir / "train",
                    args.budget_seconds,
                    args.device,
                    args.seed,
                    args.yolo_batch,
                    args.threads,
                    yolo_extra,
                )
                torch.set_num_threads(args.threads)
                preds, ms = predict_yolo(trained, ds, args.device, args.threads)
            else:
                trained = train_meddet(
                    ds, model, run_dir / "train", args.budget_seconds, args.device, args.seed, meddet_extra
                )
                preds, ms = predict_meddet(trained, ds)
            row, curves[label] = score(ds, label, preds, run_dir / "eval")
            row.update(
                iterations=trained["iterations"],
                batch=trained["batch"],
                epochs=trained["epochs"],
                train_s=trained["train_s"],
                **{"ms/image": ms},
            )
            rows.append(row)
            write_table(rows, out)
            logger.info(
                "%s / %s: mAP50 %.1f, %d iterations, %.1f ms/image", name, label, row["mAP50"], row["iterations"], ms
            )
        if curves:
            plot_pr(curves, name, out, {r["model"]: r["mAP50"] for r in rows if r["dataset"] == name})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(REPO / "output" / "peer_benchmark"))
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {DATASETS}")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, of {YOLO_MODELS + MEDDET_MODELS}")
    p.add_argument("--budget-seconds", type=float, default=600.0, help="wall-clock training time of each model")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (both sides)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of both sides")
    p.add_argument("--yolo-batch", type=int, default=16, help="Ultralytics' batch (its default)")
    p.add_argument(
        "--opts",
        default="",
        help="meddet config overrides for every meddet model, KEY VALUE pairs in one string "
        "(\"MODEL.ANCHOR_GENERATOR.SIZES '[[16],[32],[64],[128],[256]]'\")",
    )
    p.add_argument(
        "--yolo-args", default="", help='Ultralytics train() arguments in one string: "nbs=16 warmup_epochs=0.5"'
    )
    p.add_argument("--tag", default="", help="appended to every model's name in the table and its run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="smaller synthetic datasets (smoke runs)")
    p.add_argument("--deepforest-data", default="", help="deepforest's data/ folder (default: the installed package's)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    try:
        rows = run(args)
    except BenchError as e:
        if args.debug:
            raise
        print(f"peer_benchmark: {e}", file=sys.stderr)
        return 2
    print()
    print(format_table(rows, markdown=False))
    print(
        f"\nmAP50, mAP50-95, AP50 <class>: COCO AP in percent on the test split; sens@1FP: FROC sensitivity (%) at "
        f"1 false positive per image; iterations: batches of `batch` images trained on (Ultralytics steps its "
        f"optimizer every 64 images); epochs: passes over the training images; train_s: wall-clock of training "
        f"({args.budget_seconds:.0f} s budget; Ultralytics adds its data scan and final validation); "
        f"ms/image: median predict time.\nFiles: {Path(args.output).resolve()} (results.csv, results.md, "
        "pr_curves_<dataset>.png, <dataset>/<model>/eval/)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
