"""Evaluate a model (or an ensemble) on a COCO split, or score another detector's COCO-results file.

  meddet evaluate --config-file output/run/config.yaml [--gt test.json] [KEY VALUE ...]
  meddet evaluate --gt test.json --predictions results.json             # score any detector
  meddet evaluate --gt test.json --predictions results.json --views coco  # COCO AP only, fast

Outputs (default OUTPUT_DIR/eval): report.md, metrics.json, per_class.csv, curves, FROC, confusion matrix, ...
A run tuned by `tune` is evaluated at its tuned thresholds (--untuned: at the config's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from meddet.cli.base import ENSEMBLE_HELP, add_config, add_debug, add_ensemble, add_untuned, load_run_cfg

HELP = "evaluate a model, an ensemble or a results file on a COCO split"
SPLIT_ENSEMBLE = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument("--gt", default="", metavar="COCO.json", help="ground truth (default DATASETS.TEST[0])")
    p.add_argument(
        "--predictions",
        default="",
        metavar="RESULTS.json",
        help="score this COCO-results file instead of running a model",
    )
    p.add_argument(
        "--views",
        default="",
        metavar="V1,V2",
        help="compute and write only these evaluation views (coco, prf1, per_class, confusion, "
        "curves, froc, roc, exam, bootstrap, errors, report; default all)",
    )
    p.add_argument("--output", default="", metavar="DIR", help="output folder (default OUTPUT_DIR/eval)")
    add_ensemble(p, ENSEMBLE_HELP)
    add_untuned(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="accepted as for predict; evaluate always replaces its earlier outputs in --output",
    )
    add_debug(p)


def run(args: argparse.Namespace) -> int:
    from meddet.apps.evaluate import evaluate_model, evaluate_predictions
    from meddet.errors import ConfigError
    from meddet.evaluation import format_per_class_table, format_summary

    cfg = load_run_cfg(args)
    out_dir = Path(args.output) if args.output else Path(cfg.OUTPUT_DIR) / "eval"
    views = args.views or None
    if args.predictions:
        gt = args.gt or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
        if not gt:
            raise ConfigError("--predictions needs --gt COCO.json (or DATASETS.TEST in the config)")
        metrics = evaluate_predictions(cfg, gt, args.predictions, out_dir, views=views)
    else:
        metrics = evaluate_model(cfg, args.gt or None, out_dir, overwrite=True, ensemble=args.ensemble, views=views)
    print(format_per_class_table(metrics))
    print("\n" + format_summary(metrics))
    if (out_dir / "hierarchical.csv").is_file():
        import pandas as pd

        print("\nTile level vs whole image (merged by sliced inference):")
        print(pd.read_csv(out_dir / "hierarchical.csv").to_string(index=False, float_format="%.3f"))
    if views:
        print(f"\n(outputs in {out_dir}: metrics.json and the files of the views {views})")
    else:
        print(f"\n(outputs in {out_dir}: report.md, metrics.json, per_class.csv, curves, FROC, confusion matrix)")
    return 0
