#!/usr/bin/env python
"""meddet command line: train, evaluate and predict with detectron2-style configs.

python detectron.py -c train    --config-file configs/demo_mammo_R18_FPN.yaml [--resume] [KEY VALUE ...]
torchrun --nproc_per_node N detectron.py -c train ...   # DistributedDataParallel, SOLVER.IMS_PER_BATCH global
python detectron.py -c evaluate --config-file output/run/config.yaml [--gt test.json] [KEY VALUE ...]
python detectron.py -c evaluate --gt test.json --predictions results.json   # score any detector
python detectron.py -c evaluate --gt test.json --predictions results.json --views coco   # COCO AP only, fast
python detectron.py -c predict  --config-file output/run/config.yaml --input IMG|DICOM|DIR ... [--output DIR]
python detectron.py -c predict  --config-file cells/config.yaml --ensemble clusters/config.yaml --input DIR
python detectron.py -c tune     --config-file output/run/config.yaml        # thresholds on DATASETS.VAL
    (then predict / evaluate / export of that run use output/run/tune/tuned_config.yaml; --untuned to not)
python detectron.py -c experiment --config-file configs/experiments/demo_imbalance.yaml   # variants x seeds
python detectron.py -c compare  output/run_a output/run_b ...                # headline metrics side by side
python detectron.py -c explain  --config-file output/run/config.yaml --input IMG ... [--output DIR]   # Grad-CAM
python detectron.py -c export   --run output/run --output bundles/run        # self-describing model bundle
python detectron.py -c export   --run output/a --ensemble output/b --output bundles/ab   # bundle of bundles
python detectron.py -c push     --bundle bundles/run --repo-id ORG/NAME [--private]   # to the Hugging Face Hub
python detectron.py -c convert-weights --config-file CFG --weights d2_model.pth --output tv.pth
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from meddet.cli import run_cli, setup_logging

logger = logging.getLogger("meddet.cli")

COMMANDS = (
    "train",
    "evaluate",
    "predict",
    "tune",
    "compare",
    "explain",
    "export",
    "push",
    "convert-weights",
    "experiment",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="detectron.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--command", required=True, choices=COMMANDS, help="what to do")
    p.add_argument("--config-file", default="", metavar="FILE", help="YAML config (may use _BASE_)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="train: continue from the newest checkpoint in OUTPUT_DIR that loads (last_checkpoint is a hint)",
    )
    p.add_argument("--gt", default="", metavar="COCO.json", help="evaluate: ground truth (default DATASETS.TEST[0])")
    p.add_argument(
        "--predictions",
        default="",
        metavar="RESULTS.json",
        help="evaluate: score this COCO-results file instead of running a model",
    )
    p.add_argument(
        "--views",
        default="",
        metavar="V1,V2",
        help="evaluate: compute and write only these evaluation views (coco, prf1, per_class, confusion, "
        "curves, froc, roc, exam, bootstrap, errors, report; default all)",
    )
    p.add_argument("--input", nargs="+", default=[], metavar="PATH", help="predict: images, DICOMs or folders")
    p.add_argument(
        "--output",
        default="",
        metavar="DIR",
        help="evaluate/predict: output folder (default OUTPUT_DIR/eval, OUTPUT_DIR/predictions)",
    )
    p.add_argument(
        "--ensemble",
        nargs="+",
        default=[],
        metavar="MODEL",
        help="evaluate/predict/tune: more models fused with the configured one by ENSEMBLE.* (run config "
        "YAMLs, run folders, bundle folders or Hub repo ids); classes are matched by name. "
        "export: more run or bundle folders to bundle with --run as an ensemble bundle",
    )
    p.add_argument(
        "--untuned",
        action="store_true",
        help="predict/evaluate/export: ignore the run's tune/tuned_config.yaml (from -c tune) and use "
        "the thresholds of the config as it is",
    )
    p.add_argument(
        "--no-fail-on-verdict",
        action="store_true",
        help="experiment: exit 0 when a variant's verdict is FAIL (default: exit 1, as a CI gate)",
    )
    p.add_argument(
        "--score-thresh", type=float, default=None, help="predict: minimum score (default TEST.SCORE_THRESH)"
    )
    p.add_argument("--overwrite", action="store_true", help="evaluate/predict: replace earlier outputs in --output")
    p.add_argument("--run", default="", metavar="DIR", help="export: the run folder to bundle")
    p.add_argument(
        "--weights",
        default="",
        metavar="PTH",
        help="export: checkpoint (default model_best/model_final); convert-weights: the source",
    )
    p.add_argument("--bundle", default="", metavar="DIR", help="push: the bundle folder")
    p.add_argument("--repo-id", default="", metavar="ORG/NAME", help="push: Hugging Face repository")
    p.add_argument("--private", action="store_true", help="push: create the repository private")
    p.add_argument("--revision", default=None, help="push: branch to commit to")
    p.add_argument(
        "--direction",
        default="d2-to-tv",
        choices=("d2-to-tv", "tv-to-d2"),
        help="convert-weights: detectron2 -> torchvision engine or back",
    )
    p.add_argument(
        "--method",
        default="hirescam",
        choices=("hirescam", "gradcam", "gradcam++", "eigencam"),
        help="explain: CAM variant",
    )
    p.add_argument("--layer", default=None, help="explain: feature map (p2..p5 or a module name)")
    p.add_argument("--per-detection", action="store_true", help="explain: one overlay per detection")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument(
        "opts",
        nargs="*",
        metavar="KEY VALUE",
        help="config overrides, e.g. SOLVER.BASE_LR 0.001 OUTPUT_DIR output/x (options may come before or after them)",
    )
    args = p.parse_intermixed_args(argv)
    # `--ensemble A B KEY VALUE ...`: nargs="+" also takes the overrides after the members; a config key
    # (UPPER.CASE dotted) ends the member list.
    for i, item in enumerate(args.ensemble):
        if _CONFIG_KEY.match(item):
            args.opts = args.ensemble[i:] + args.opts
            args.ensemble = args.ensemble[:i]
            break
    return args


_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def main(args: argparse.Namespace) -> int:
    from meddet.config import load_config
    from meddet.errors import ConfigError

    if args.command == "compare":
        from meddet.evaluation import compare, format_comparison, write_comparison

        if not args.opts:
            raise ConfigError("compare needs run folders: detectron.py -c compare output/a output/b ...")
        df = compare(args.opts)
        print(format_comparison(df))
        if args.output:
            csv, _ = write_comparison(df, args.output)
            print(f"\n(written to {csv})")
        return 0
    if args.command == "export":
        from meddet.hub import export_bundle

        if not args.run or not args.output:
            raise ConfigError("export needs --run OUTPUT_DIR and --output BUNDLE_DIR")
        if args.ensemble:
            from meddet.hub import export_ensemble

            if args.weights:
                raise ConfigError("export --ensemble takes each run's own weights; --weights is for one run")
            out = export_ensemble(
                [args.run, *args.ensemble], args.output, opts=args.opts, overwrite=args.overwrite, untuned=args.untuned
            )
            print(f"ensemble bundle written to {out}")
            return 0
        if args.opts:
            raise ConfigError(
                f"export takes no KEY VALUE overrides for one run (found {args.opts}); the bundle "
                "holds the run's config"
            )
        out = export_bundle(
            args.run, args.output, weights=args.weights or None, overwrite=args.overwrite, untuned=args.untuned
        )
        print(f"bundle written to {out}")
        return 0
    if args.command == "push":
        from meddet.hub import push_bundle

        if not args.bundle or not args.repo_id:
            raise ConfigError("push needs --bundle BUNDLE_DIR and --repo-id ORG/NAME")
        url = push_bundle(args.bundle, args.repo_id, private=args.private, revision=args.revision)
        print(f"pushed {args.bundle} -> {url}")
        return 0
    if args.command == "experiment":
        from meddet.experiment import run_experiment

        if not args.config_file:
            raise ConfigError("experiment needs --config-file EXPERIMENT.yaml (variants, seeds, metrics, rules)")
        if args.opts:
            raise ConfigError(
                f"experiment takes no KEY VALUE overrides (found {args.opts}); put them in the "
                "experiment YAML's variants or base config"
            )
        result = run_experiment(args.config_file)
        print(result.format())
        if not result.ok:
            return 1
        failing = result.failing_variants
        if failing and not args.no_fail_on_verdict:
            print(f"verdict FAIL for {', '.join(failing)} (exit 1; --no-fail-on-verdict to exit 0)", file=sys.stderr)
            return 1
        return 0
    if args.command in ("predict", "evaluate"):
        from meddet.tasks import load_run_config

        cfg = load_run_config(args.config_file or None, args.opts, tuned=not args.untuned, ensemble=bool(args.ensemble))
    else:
        cfg = load_config(args.config_file or None, args.opts)
    if args.command == "convert-weights":
        from meddet.modeling import convert_checkpoint

        if not args.weights or not args.output:
            raise ConfigError("convert-weights needs --weights SRC and --output DST (and the model's --config-file)")
        out = convert_checkpoint(args.weights, args.output, args.direction, cfg=cfg)
        print(f"converted ({args.direction}) -> {out}")
        return 0
    if args.command == "explain":
        from meddet.tasks import resolve_weights
        from meddet.xai import explain

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
    if args.command == "train":
        from meddet.training import comm, train

        # Under torchrun (one process per GPU or CPU slot): join the process group; rank 0 writes the run.
        if comm.init_from_torchrun() and not comm.is_main_process():
            logging.getLogger().setLevel(logging.WARNING)
        try:
            out = train(cfg, resume=args.resume)
        finally:
            if comm.get_world_size() > 1:
                import torch.distributed as dist

                dist.destroy_process_group()
        logger.info("Run folder: %s (config.yaml, metrics.json, model_final.pth)", out)
        return 0
    if args.command == "evaluate":
        from meddet.evaluation import format_per_class_table, format_summary
        from meddet.tasks import evaluate_model, evaluate_predictions

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
    if args.command == "tune":
        from meddet.tasks import tune_model

        result = tune_model(cfg, args.gt or None, args.output or None, args.predictions or None, ensemble=args.ensemble)
        print(result.summary())
        return 0
    if args.command == "predict":
        from meddet.tasks import predict

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
    raise AssertionError(args.command)


if __name__ == "__main__":
    _args = parse_args()
    setup_logging(logging.DEBUG if _args.debug else logging.INFO)
    sys.exit(run_cli(lambda: main(_args), debug=_args.debug))
