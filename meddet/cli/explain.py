"""Class activation maps (Grad-CAM family) of a model's detections, as overlays.

meddet explain --config-file output/run/config.yaml --input IMG ... [--output DIR] [--method gradcam]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from meddet.cli.base import add_config, add_debug, add_ensemble

HELP = "explain detections with class activation maps"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument("--input", nargs="+", default=[], metavar="PATH", help="images or DICOMs")
    p.add_argument("--output", default="", metavar="DIR", help="output folder (default OUTPUT_DIR/explain)")
    p.add_argument(
        "--method",
        default="hirescam",
        choices=("hirescam", "gradcam", "gradcam++", "eigencam"),
        help="CAM variant",
    )
    p.add_argument("--layer", default=None, help="feature map (p2..p5 or a module name)")
    p.add_argument("--per-detection", action="store_true", help="one overlay per detection")
    p.add_argument("--score-thresh", type=float, default=None, help="minimum score (default TEST.SCORE_THRESH)")
    add_ensemble(p, "refused: explain works on one model's layers (explain each member's --config-file)")
    add_debug(p)


def run(args: argparse.Namespace) -> int:
    from meddet.apps.common import resolve_weights
    from meddet.cli.base import load_cfg
    from meddet.errors import ConfigError
    from meddet.xai import explain

    cfg = load_cfg(args)
    if not args.input:
        raise ConfigError("explain needs --input IMAGE|DICOM ...")
    if args.ensemble:
        raise ConfigError(
            "explain works on one model's layers, not an ensemble: explain each member's --config-file instead"
        )
    out_dir = Path(args.output) if args.output else Path(cfg.OUTPUT_DIR) / "explain"
    paths = explain(
        cfg,
        args.input,
        out_dir,
        weights=resolve_weights(cfg),
        score_thresh=args.score_thresh if args.score_thresh is not None else cfg.TEST.SCORE_THRESH,
        layer=args.layer,
        method=args.method,
        per_detection=args.per_detection,
    )
    print("\n".join(str(p) for p in paths))
    return 0
