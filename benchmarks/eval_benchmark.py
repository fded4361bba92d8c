"""Evaluation benchmark: bare pycocotools COCOeval against meddet's full evaluation.

Synthesises (seeded) a COCO ground truth of N images (default 1,000; 0–5 boxes of 3 classes
each, small greyscale PNGs written to a temporary folder so the error galleries are drawn) and
D detections per image (default 100: jittered copies of the boxes, sometimes of the wrong class,
plus random false positives). Then times, in one run:

- pycocotools: ``COCOeval.evaluate() + accumulate() + summarize()`` (index building and
  ``loadRes`` timed apart, not counted);
- meddet: ``run_evaluation`` with everything — COCO AP (faster-coco-eval), P/R/F1 at the
  threshold and F1-optimal, confusion matrix, curves, FROC, image-level ROC, 1,000 bootstrap
  resamples, error analysis with galleries, and every file and report written.

Prints both times and their ratio; PASS when meddet takes at most 2x pycocotools (exit code 1
otherwise). Also checks that both report the same AP.

    python benchmarks/eval_benchmark.py
    python benchmarks/eval_benchmark.py --images 200 --no-images   # quick look, galleries excluded
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def synthesise(n_images: int, dets_per_image: int, n_classes: int, size: int, seed: int,
               image_dir: Path | None) -> tuple[dict, list[dict]]:
    """A COCO ground truth and COCO-results detections (and the images, when `image_dir`)."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(n_images):
        name = f"images/{i:05d}.png"
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
        img = rng.integers(0, 50, (size, size), dtype=np.uint8) if image_dir is not None else None
        n_det = 0
        for _ in range(int(rng.integers(0, 6))):
            w, h = rng.uniform(10, size / 4, 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            c = int(rng.integers(1, n_classes + 1))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            if img is not None:
                cv2.ellipse(img, (int(x + w / 2), int(y + h / 2)), (int(w / 2), int(h / 2)), 0, 0, 360,
                            int(120 + 40 * c), -1)
            for _ in range(int(rng.integers(1, 4))):
                j = rng.normal(0, 0.1, 4) * [w, h, w, h]
                cls = c if rng.random() < 0.85 else int(rng.integers(1, n_classes + 1))
                dets.append({"image_id": i + 1, "category_id": cls,
                             "bbox": [x + j[0], y + j[1], max(2.0, w + j[2]), max(2.0, h + j[3])],
                             "score": float(rng.beta(4, 2))})
                n_det += 1
        for _ in range(dets_per_image - n_det):
            w, h = rng.uniform(10, size / 4, 2)
            dets.append({"image_id": i + 1, "category_id": int(rng.integers(1, n_classes + 1)),
                         "bbox": [float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h)), w, h],
                         "score": float(rng.beta(1.5, 4))})
        if img is not None:
            cv2.imwrite(str(image_dir / name), img)
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": k + 1, "name": f"class{k + 1}"} for k in range(n_classes)]}
    return gt, dets


def time_pycocotools(gt: dict, dets: list[dict]) -> tuple[float, float, float]:
    """(seconds for evaluate + accumulate + summarize, seconds for loading, AP)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(dets)))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        t1 = time.perf_counter()
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        t2 = time.perf_counter()
    return t2 - t1, t1 - t0, float(ev.stats[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--dets", type=int, default=100, help="detections per image")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-images", action="store_true", help="write no images: galleries excluded")
    p.add_argument("--out", default="", help="keep meddet's evaluation files here (default: a temporary folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from meddet.evaluation import run_evaluation

    with tempfile.TemporaryDirectory(prefix="meddet-evalbench-") as tmp:
        root = Path(tmp)
        image_dir = None if args.no_images else root
        if image_dir is not None:
            (root / "images").mkdir()
        t = time.perf_counter()
        gt, dets = synthesise(args.images, args.dets, args.classes, args.size, args.seed, image_dir)
        gt_path = root / "gt.json"
        gt_path.write_text(json.dumps(gt))
        print(f"data: {args.images} images, {len(gt['annotations'])} ground truths, {len(dets)} detections "
              f"({'with' if image_dir else 'without'} images), made in {time.perf_counter() - t:.1f}s")

        t_coco, t_load, ap_ref = time_pycocotools(gt, dets)
        print(f"pycocotools COCOeval evaluate+accumulate+summarize: {t_coco:7.2f}s  (+{t_load:.2f}s loading, "
              f"not counted)  AP {ap_ref:.6f}")

        out = Path(args.out) if args.out else root / "eval"
        t = time.perf_counter()
        res = run_evaluation(gt_path, dets, out, bootstrap_samples=args.resamples, bootstrap_seed=args.seed)
        t_meddet = time.perf_counter() - t
        n_png = len(list(out.glob("*.png")))
        galleries = len(list(out.glob("errors_f*.png")))
        print(f"meddet full evaluation ({args.resamples} bootstrap resamples, {n_png} PNGs incl. {galleries} "
              f"galleries, all files):      {t_meddet:7.2f}s  AP {res.metrics['bbox/AP'] / 100:.6f}")
        ratio = t_meddet / t_coco
        ok = ratio <= 2.0
        print(f"ratio meddet / pycocotools: {ratio:.2f}  ->  {'PASS' if ok else 'FAIL'} (budget 2.00)")
        if abs(res.metrics["bbox/AP"] / 100 - ap_ref) > 1e-6:
            print("FAIL: AP differs from pycocotools")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
