"""Export a run as a self-describing model bundle (weights, config, meddet.json, model card), or several runs
as an ensemble bundle (bundle of bundles).

  meddet export --run output/run --output bundles/run
  meddet export --run output/a --ensemble output/b --output bundles/ab [KEY VALUE ...]

A run tuned by `tune` is bundled with its tuned thresholds (--untuned: the config's).
"""

from __future__ import annotations

import argparse

from meddet.cli.base import add_debug, add_ensemble, add_untuned

HELP = "export a run (or an ensemble of runs) as a model bundle"
SPLIT_ENSEMBLE = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default="", metavar="DIR", help="the run folder to bundle")
    p.add_argument("--output", default="", metavar="DIR", help="the bundle folder")
    p.add_argument("--weights", default="", metavar="PTH", help="checkpoint (default model_best/model_final)")
    add_ensemble(p, "more run or bundle folders to bundle with --run as an ensemble bundle")
    add_untuned(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle in --output")
    p.add_argument(
        "opts",
        nargs="*",
        metavar="KEY VALUE",
        help="ensemble bundles only: ENSEMBLE.* and other overrides of the ensemble's config",
    )
    add_debug(p)


def run(args: argparse.Namespace) -> int:
    from meddet.errors import ConfigError
    from meddet.hub import export_bundle, export_ensemble

    if not args.run or not args.output:
        raise ConfigError("export needs --run OUTPUT_DIR and --output BUNDLE_DIR")
    if args.ensemble:
        if args.weights:
            raise ConfigError("export --ensemble takes each run's own weights; --weights is for one run")
        out = export_ensemble(
            [args.run, *args.ensemble], args.output, opts=args.opts, overwrite=args.overwrite, untuned=args.untuned
        )
        print(f"ensemble bundle written to {out}")
        return 0
    if args.opts:
        raise ConfigError(
            f"export takes no KEY VALUE overrides for one run (found {args.opts}); the bundle holds the run's config"
        )
    out = export_bundle(
        args.run, args.output, weights=args.weights or None, overwrite=args.overwrite, untuned=args.untuned
    )
    print(f"bundle written to {out}")
    return 0
