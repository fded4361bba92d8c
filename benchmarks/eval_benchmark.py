"""Evaluation benchmark: meddet's evaluation against bare pycocotools, end to end, in one run.

Synthesises (seeded) a COCO ground truth of N images (default 1,000; 0–5 boxes of 3 classes
each, small greyscale PNGs written to a temporary folder so the error galleries are drawn) and
D detections per image (default 100: jittered copies of the boxes, sometimes of the wrong class,
plus random false positives), written as ``gt.json`` and ``results.json``. Then times, in one run,
each as a fresh subprocess from process start to files written (what a user waits for):

- bare pycocotools: ``COCO(gt.json)``, ``loadRes(results.json)``, ``COCOeval`` evaluate + accumulate +
  summarize (the reference);
- meddet full: ``detectron.py -c evaluate --gt gt.json --predictions results.json`` with every view —
  COCO AP (faster-coco-eval), P/R/F1 at the threshold and F1-optimal, confusion matrix, curves, FROC,
  image-level ROC, breast/exam level, 1,000 bootstrap resamples, error analysis with galleries, and
  every file and report written;
- meddet COCO-only: the same with ``--views coco`` (COCO AP, ``metrics.json``).

Each command runs `--repeat` times (default 3, alternating); the fastest run counts, as the least
disturbed by other load. Prints the times, their CPU seconds, where meddet's time goes (start-up and
loading / computing / writing, from its log) and the two ratios against their targets (issue 17:
full <= 1.3x, COCO-only <= 0.6x bare pycocotools); exit code 1 when a target is missed or an AP differs
from pycocotools'. Also runs the
in-process `run_evaluation` once for the compute-only figure of earlier versions of this benchmark.

    python benchmarks/eval_benchmark.py
    python benchmarks/eval_benchmark.py --images 200 --no-images   # quick look, galleries excluded
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def synthesise(
    n_images: int, dets_per_image: int, n_classes: int, size: int, seed: int, image_dir: Path | None
) -> tuple[dict, list[dict]]:
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
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": c,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            if img is not None:
                cv2.ellipse(
                    img, (int(x + w / 2), int(y + h / 2)), (int(w / 2), int(h / 2)), 0, 0, 360, int(120 + 40 * c), -1
                )
            for _ in range(int(rng.integers(1, 4))):
                j = rng.normal(0, 0.1, 4) * [w, h, w, h]
                cls = c if rng.random() < 0.85 else int(rng.integers(1, n_classes + 1))
                dets.append(
                    {
                        "image_id": i + 1,
                        "category_id": cls,
                        "bbox": [x + j[0], y + j[1], max(2.0, w + j[2]), max(2.0, h + j[3])],
                        "score": float(rng.beta(4, 2)),
                    }
                )
                n_det += 1
        for _ in range(dets_per_image - n_det):
            w, h = rng.uniform(10, size / 4, 2)
            dets.append(
                {
                    "image_id": i + 1,
                    "category_id": int(rng.integers(1, n_classes + 1)),
                    "bbox": [float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h)), w, h],
                    "score": float(rng.beta(1.5, 4)),
                }
            )
        if img is not None:
            cv2.imwrite(str(image_dir / name), img)
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": f"class{k + 1}"} for k in range(n_classes)],
    }
    return gt, dets


ROOT = Path(__file__).resolve().parents[1]
TARGET_FULL, TARGET_COCO = 1.3, 0.6

BARE_PYCOCOTOOLS = """
import json, sys
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
gt = COCO(sys.argv[1])
dt = gt.loadRes(sys.argv[2])
ev = COCOeval(gt, dt, "bbox")
ev.evaluate()
ev.accumulate()
ev.summarize()
print("AP=" + repr(float(ev.stats[0])))
"""


CPU_SECONDS: dict[str, list[float]] = {}


def run_timed(cmd: list[str], cwd: Path, repeat: int = 1, key: str = "") -> tuple[float, subprocess.CompletedProcess]:
    """Wall-clock seconds of a fresh process, from start to exit (the fastest of `repeat` runs: the
    least disturbed by other load on the machine) and the last run's output; its CPU seconds (user +
    system) are kept in CPU_SECONDS[key]. Fails loudly on a non-zero exit."""
    import resource

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    best = float("inf")
    for _ in range(repeat):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
        best = min(best, time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        CPU_SECONDS.setdefault(key, []).append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return best, proc


def _logged_seconds(stderr: str, pattern: str) -> float:
    m = re.search(pattern + r".* in ([0-9.]+)s", stderr)
    return float(m.group(1)) if m else float("nan")


def breakdown(total: float, stderr: str) -> str:
    """Start-up and loading / computing / writing, from meddet's own log lines."""
    compute = _logged_seconds(stderr, r"evaluated \d+ images")
    write = _logged_seconds(stderr, r"evaluation files written")
    write = 0.0 if write != write else write
    rest = total - compute - write
    return f"start-up, imports and loading {rest:.2f}s, computing {compute:.2f}s, writing files {write:.2f}s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--dets", type=int, default=100, help="detections per image")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (EVAL.BOOTSTRAP_SAMPLES)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-images", action="store_true", help="write no images: galleries excluded")
    p.add_argument(
        "--repeat", type=int, default=3, help="runs of each command, alternating; the fastest counts (default 3)"
    )
    p.add_argument("--no-in-process", action="store_true", help="skip the in-process run_evaluation timing")
    p.add_argument("--out", default="", help="keep meddet's evaluation files here (default: a temporary folder)")
    args = p.parse_args(argv)
    py = sys.executable

    with tempfile.TemporaryDirectory(prefix="meddet-evalbench-") as tmp:
        root = Path(tmp)
        image_dir = None if args.no_images else root
        if image_dir is not None:
            (root / "images").mkdir()
        t = time.perf_counter()
        gt, dets = synthesise(args.images, args.dets, args.classes, args.size, args.seed, image_dir)
        gt_path, res_path = root / "gt.json", root / "results.json"
        gt_path.write_text(json.dumps(gt))
        res_path.write_text(json.dumps(dets))
        print(
            f"data: {args.images} images, {len(gt['annotations'])} ground truths, {len(dets)} detections "
            f"({'with' if image_dir else 'without'} images), made in {time.perf_counter() - t:.1f}s"
        )
        del gt, dets

        bare_cmd = [py, "-c", BARE_PYCOCOTOOLS, str(gt_path), str(res_path)]
        t_bare, proc = run_timed(bare_cmd, root, key="bare")
        ap_ref = float(re.search(r"AP=([0-9.eE+-]+|nan)", proc.stdout).group(1))
        print(
            f"bare pycocotools (COCO, loadRes, evaluate+accumulate+summarize), end to end: {t_bare:7.2f}s  "
            f"AP {ap_ref:.6f}"
        )

        out = Path(args.out) if args.out else root / "eval"
        base = [py, str(ROOT / "detectron.py"), "-c", "evaluate", "--gt", str(gt_path), "--predictions", str(res_path)]
        opts = ["EVAL.BOOTSTRAP_SAMPLES", str(args.resamples), "EVAL.BOOTSTRAP_SEED", str(args.seed)]
        full_cmd = base + ["--output", str(out)] + opts
        coco_cmd = base + ["--output", str(root / "eval_coco"), "--views", "coco"] + opts
        t_full, proc_full = run_timed(full_cmd, root, key="full")
        ap_full = json.loads((out / "metrics.json").read_text())["bbox/AP"] / 100
        n_png = len(list(out.glob("*.png")))
        galleries = len(list(out.glob("errors_f*.png")))
        print(
            f"meddet full evaluation ({args.resamples} bootstrap resamples, {n_png} PNGs incl. {galleries} "
            f"galleries, {len(list(out.iterdir()))} files), end to end: {t_full:7.2f}s  AP {ap_full:.6f}"
        )
        print(f"    {breakdown(t_full, proc_full.stderr)}")

        out_coco = root / "eval_coco"
        t_coco, proc_coco = run_timed(coco_cmd, root, key="coco")
        ap_coco = json.loads((out_coco / "metrics.json").read_text())["bbox/AP"] / 100
        print(
            f"meddet COCO-only (--views coco), end to end:                              {t_coco:7.2f}s  "
            f"AP {ap_coco:.6f}"
        )
        print(f"    {breakdown(t_coco, proc_coco.stderr)}")
        for _ in range(args.repeat - 1):  # alternate, so that a burst of load elsewhere hits all three alike
            t_bare = min(t_bare, run_timed(bare_cmd, root, key="bare")[0])
            t_full = min(t_full, run_timed(full_cmd, root, key="full")[0])
            t_coco = min(t_coco, run_timed(coco_cmd, root, key="coco")[0])
        if args.repeat > 1:
            print(
                f"fastest of {args.repeat} alternating runs each: bare pycocotools {t_bare:.2f}s, meddet full "
                f"{t_full:.2f}s, COCO-only {t_coco:.2f}s"
            )
        cpu = {k: min(v) for k, v in CPU_SECONDS.items()}
        print(
            f"CPU seconds (user+system, least of the runs): bare pycocotools {cpu['bare']:.2f}, meddet full "
            f"{cpu['full']:.2f} ({cpu['full'] / cpu['bare']:.2f}x), COCO-only {cpu['coco']:.2f} "
            f"({cpu['coco'] / cpu['bare']:.2f}x)"
        )

        if not args.no_in_process:
            import logging

            logging.basicConfig(level=logging.WARNING)
            from meddet.evaluation import run_evaluation

            t = time.perf_counter()
            run_evaluation(
                gt_path,
                res_path,
                root / "eval_inprocess",
                bootstrap_samples=args.resamples,
                bootstrap_seed=args.seed,
                gallery_size=16,
            )
            print(
                f"(in process, imports done: run_evaluation with every view and file: {time.perf_counter() - t:.2f}s)"
            )

        ok = True
        r_full, r_coco = t_full / t_bare, t_coco / t_bare
        for what, r, target in (("full", r_full, TARGET_FULL), ("COCO-only", r_coco, TARGET_COCO)):
            passed = r <= target
            ok &= passed
            print(
                f"ratio meddet {what} / bare pycocotools: {r:.2f}  ->  {'PASS' if passed else 'FAIL'} "
                f"(target <= {target:.2f})"
            )
        for what, ap in (("full", ap_full), ("COCO-only", ap_coco)):
            if abs(ap - ap_ref) > 1e-6:
                print(f"FAIL: meddet {what} AP {ap:.6f} differs from pycocotools {ap_ref:.6f}")
                ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
