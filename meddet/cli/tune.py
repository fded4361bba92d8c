"""Tune score and NMS thresholds on the validation split, without retraining.

  meddet tune --config-file output/run/config.yaml        # on DATASETS.VAL[0]

Writes OUTPUT_DIR/tune/tune.csv and tuned_config.yaml (with --ensemble: OUTPUT_DIR/tune_ensemble), which
predict / evaluate / export of the run then use (--untuned there to not).
"""

from __future__ import annotations

import argparse

from meddet.cli.base import ENSEMBLE_HELP, add_config, add_debug, add_ensemble, load_cfg

HELP = "tune score and NMS thresholds on the validation split"
SPLIT_ENSEMBLE = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument("--gt", default="", metavar="COCO.json", help="validation split (default DATASETS.VAL[0])")
    p.add_argument(
        "--predictions",
        default="",
        metavar="RESULTS.json",
        help="tune on this COCO-results file (made with permissive thresholds) instead of running the model",
    )
    p.add_argument(
        "--output", default="", metavar="DIR", help="output folder (default OUTPUT_DIR/tune or tune_ensemble)"
    )
    add_ensemble(p, ENSEMBLE_HELP)
    add_debug(p)


def run(args: argparse.Namespace) -> int:
    from meddet.apps.tune import tune_model

    cfg = load_cfg(args)
    result = tune_model(cfg, args.gt or None, args.output or None, args.predictions or None, ensemble=args.ensemble)
    print(result.summary())
    return 0
