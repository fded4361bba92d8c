"""Predict on images, DICOMs or folders: annotated PNGs, predictions.json (COCO results) and images.json.

  meddet predict --config-file output/run/config.yaml --input IMG|DICOM|DIR ... [--output DIR]
  meddet predict --config-file cells/config.yaml --ensemble clusters/config.yaml --input DIR

A run tuned by `tune` predicts at its tuned thresholds (--untuned: at the config's). A bad file is skipped and
reported (exit 1); the rest still run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meddet.cli.base import ENSEMBLE_HELP, add_config, add_debug, add_ensemble, add_untuned, load_run_cfg

HELP = "predict on images, DICOMs or folders"
SPLIT_ENSEMBLE = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument("--input", nargs="+", default=[], metavar="PATH", help="images, DICOMs or folders")
    p.add_argument("--output", default="", metavar="DIR", help="output folder (default OUTPUT_DIR/predictions)")
    add_ensemble(p, ENSEMBLE_HELP)
    add_untuned(p)
    p.add_argument("--score-thresh", type=float, default=None, help="minimum score (default TEST.SCORE_THRESH)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --output")
    add_debug(p)


def run(args: argparse.Namespace) -> int:
    from meddet.apps.predict import predict
    from meddet.errors import ConfigError

    cfg = load_run_cfg(args)
    if not args.input:
        raise ConfigError("predict needs --input IMAGE|DICOM|FOLDER ...")
    out_dir = Path(args.output) if args.output else Path(cfg.OUTPUT_DIR) / "predictions"
    report = predict(
        cfg, args.input, out_dir, score_thresh=args.score_thresh, overwrite=args.overwrite, ensemble=args.ensemble
    )
    print(f"{len(report.written)} image(s) predicted -> {report.results_json} and annotated PNGs in {out_dir}")
    if report.skipped:
        print(f"{len(report.skipped)} file(s) skipped:", file=sys.stderr)
        for f, why in report.skipped:
            print(f"  {f}: {why}", file=sys.stderr)
        return 1
    return 0
