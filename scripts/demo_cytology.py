#!/usr/bin/env python
"""The cytology demo: small objects in large images, on CPU.

synthetic cytology (large images, thousands of cells, ~1 cluster per 100 cells) → COCO by patient →
train Faster R-CNN on tiles → evaluate at tile level and on whole images merged by sliced inference
→ predict a whole test image by slicing. Everything goes under output/demo_cytology/.
Run it as `make demo-cytology` (which also sets up the virtual environment).
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

logger = logging.getLogger("meddet.demo_cytology")
CONFIG = REPO / "configs" / "cyto_demo_R18_FPN.yaml"


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from meddet.apps.evaluate import evaluate_model
    from meddet.apps.predict import predict
    from meddet.config import load_config
    from meddet.synth import make_cytology
    from meddet.training import train

    out = Path(args.output)
    if out.exists():
        logger.info("Removing the previous demo output %s (the demo's own folder)", out)
        shutil.rmtree(out)
    t0 = time.perf_counter()

    logger.info(
        "1/4 Generating %d synthetic cytology images of %d² px (~%d cells each, 1 cluster per %d cells)",
        args.images,
        args.size,
        args.cells,
        round(1 / args.cluster_ratio),
    )
    data = make_cytology(
        out / "data",
        n_images=args.images,
        size=args.size,
        cells_per_image=args.cells,
        cluster_ratio=args.cluster_ratio,
        seed=args.seed,
    )

    cfg = load_config(
        CONFIG,
        [
            "DATASETS.TRAIN",
            f"('{data['train']}',)",
            "DATASETS.VAL",
            f"('{data['val']}',)",
            "DATASETS.TEST",
            f"('{data['test']}',)",
            "OUTPUT_DIR",
            str(out / "run"),
        ]
        + list(args.opts),
    )
    logger.info(
        "2/4 Training %s on %d-px tiles for %d iterations (batch %d)",
        CONFIG.relative_to(REPO),
        cfg.TILING.SIZE,
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.IMS_PER_BATCH,
    )
    run = train(cfg)

    logger.info("3/4 Evaluating the test split: every tile, then whole images merged by sliced inference")
    run_cfg = load_config(run / "config.yaml")
    metrics = evaluate_model(run_cfg)
    table = pd.read_csv(run / "eval" / "hierarchical.csv")

    logger.info("4/4 Predicting a whole test image by sliced inference")
    test = json.loads(Path(data["test"]).read_text())
    first = Path(data["test"]).parent / test["images"][0]["file_name"]
    pred = predict(run_cfg, [first], run / "predictions")

    def row(key: str) -> str:
        r = table[table.metric == key]
        if r.empty:
            return "   -      -"
        return f"{float(r.tile.iloc[0]):6.3f} {float(r.whole_image.iloc[0]):6.3f}"

    minutes = (time.perf_counter() - t0) / 60
    print("\nTest split            tile  whole image")
    print(f"  mAP50 (COCO, %)   {row('bbox/AP50')}")
    print(f"  mAP50-95 (%)      {row('bbox/AP')}")
    print(f"  cluster recall    {row('prf1/recall-cluster')}")
    print(f"  cell recall       {row('prf1/recall-cell')}")
    print(
        f"  (recall at score >= {run_cfg.TEST.SCORE_THRESH}, IoU >= {run_cfg.EVAL.IOU_THRESH}; "
        f"demo finished in {minutes:.1f} min)"
    )
    print(f"""
Where everything went:
  synthetic cytology         {out / "data"}  (images/, coco/train.json, val.json, test.json)
  run folder                 {run}  (config.yaml, metrics.json, model_final.pth)
  evaluation                 {run / "eval"}  (whole image: report.md, metrics.json; tiles/: tile level;
                             hierarchical.csv: both side by side)
  sliced prediction          {pred.results_json} and {pred.written[0] if pred.written else "-"}
Next: python detectron.py -c experiment --config-file configs/experiments/demo_imbalance.yaml
      (imbalance strategies over seeds: mean ± std, 95% CIs, paired differences, verdict)""")
    return 0 if metrics else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(REPO / "output" / "demo_cytology"))
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--size", type=int, default=1536, help="image side in pixels (make_cytology's default is 4096)")
    p.add_argument("--cells", type=int, default=300, help="cells per image")
    p.add_argument("--cluster-ratio", type=float, default=0.01, help="clusters per cell")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--debug", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    a = p.parse_args()
    setup_logging(logging.DEBUG if a.debug else logging.INFO)
    sys.exit(run_cli(lambda: main(a), debug=a.debug))
