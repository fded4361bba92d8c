#!/usr/bin/env python
"""The meddet demo: the whole chain on synthetic CBIS-DDSM-style mammograms, on CPU.

synthetic DICOM + CSV + ROI masks → COCO (patient-level train/val/test) → train Faster R-CNN
→ evaluate on the test split → predict a few images. Everything goes under output/demo/.
Run it as `make demo` (which also sets up the virtual environment).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from meddet.cli import run_cli, setup_logging

REPO = Path(__file__).resolve().parents[1]  # the configs and output/ of this checkout (meddet is installed)

logger = logging.getLogger("meddet.demo")


def main(args: argparse.Namespace) -> int:
    import torch

    from meddet.apps.evaluate import evaluate_model
    from meddet.apps.predict import predict
    from meddet.config import load_config
    from meddet.data.formats.cbis_ddsm import convert_cbis_ddsm
    from meddet.evaluation import format_per_class_table
    from meddet.synth import make_cbis_ddsm
    from meddet.training import train

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.output)
    if out.exists():
        logger.info("Removing the previous demo output %s (the demo's own folder)", out)
        shutil.rmtree(out)
    t0 = time.perf_counter()

    logger.info("1/5 Generating %d synthetic patients (CBIS-DDSM layout: DICOM, ROI masks, CSVs)", args.patients)
    synth = make_cbis_ddsm(
        out / "cbis_ddsm", n_patients=args.patients, seed=args.seed, image_size=(args.height, args.width)
    )

    logger.info(
        "2/5 Converting DICOM + CSV → 8-bit PNG + COCO (official train/test split, "
        "validation carved from train by patient)"
    )
    report = convert_cbis_ddsm(
        synth["mass_csvs"], synth["calc_csvs"], synth["dicom_root"], out / "coco", seed=args.seed
    )
    if report.skipped:
        logger.error("conversion skipped %d item(s): %s", len(report.skipped), report.skipped[:3])
        return 1

    cfg = load_config(
        REPO / "configs" / "demo_mammo_R18_FPN.yaml",
        [
            "DATASETS.TRAIN",
            f"('{out / 'coco' / 'train.json'}',)",
            "DATASETS.VAL",
            f"('{out / 'coco' / 'val.json'}',)",
            "DATASETS.TEST",
            f"('{out / 'coco' / 'test.json'}',)",
            "OUTPUT_DIR",
            str(out / "run"),
        ]
        + list(args.opts),
    )
    logger.info(
        "3/5 Training %s for %d iterations (batch %d) on %s",
        Path("configs/demo_mammo_R18_FPN.yaml"),
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.IMS_PER_BATCH,
        cfg.MODEL.DEVICE,
    )
    run = train(cfg)

    logger.info("4/5 Evaluating on the test split")
    run_cfg = load_config(run / "config.yaml")
    metrics = evaluate_model(run_cfg)
    table = format_per_class_table(metrics)

    logger.info("5/5 Predicting a few test images")
    test = json.loads((out / "coco" / "test.json").read_text())
    files = [str(out / "coco" / im["file_name"]) for im in test["images"][: args.predict]]
    pred = predict(run_cfg, files, run / "predictions")

    minutes = (time.perf_counter() - t0) / 60
    print("\n" + table)
    print(
        f"\nTest split: bbox/AP50 {metrics['bbox/AP50']:.1f}  bbox/AP {metrics['bbox/AP']:.1f}"
        f"  (demo finished in {minutes:.1f} min)"
    )
    print(f"""
Where everything went:
  synthetic CBIS-DDSM tree   {synth["dicom_root"]}
  COCO + PNG                 {out / "coco"}  (train.json, val.json, test.json, images/)
  run folder                 {run}  (config.yaml, metrics.json, TensorBoard events, model_final.pth)
  evaluation                 {run / "eval"}  (metrics.json, per_class.csv, prf1.csv, confusion_matrix.png)
  predictions                {pred.results_json} and {len(pred.written)} annotated PNGs
Next: python detectron.py -c predict --config-file {run / "config.yaml"} --input <image.dcm|png|folder>""")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(REPO / "output" / "demo"))
    p.add_argument("--patients", type=int, default=60)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=240)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--predict", type=int, default=4, help="how many test images to predict and draw")
    p.add_argument("--debug", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    a = p.parse_args()
    setup_logging(logging.DEBUG if a.debug else logging.INFO)
    sys.exit(run_cli(lambda: main(a), debug=a.debug))
