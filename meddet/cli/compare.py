"""Headline metrics of several evaluated runs side by side.

meddet compare output/run_a output/run_b ... [--output DIR]
"""

from __future__ import annotations

import argparse

from meddet.cli.base import add_debug

HELP = "compare the headline metrics of evaluated runs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folders (each with eval/metrics.json)")
    p.add_argument("--runs", dest="runs_opt", nargs="+", default=[], metavar="RUN", help="run folders, as an option")
    p.add_argument("--output", default="", metavar="DIR", help="also write the table (CSV) to this folder")
    add_debug(p)


def run(args: argparse.Namespace) -> int:
    from meddet.errors import ConfigError
    from meddet.evaluation.compare import compare, format_comparison, write_comparison

    runs = list(args.runs) + list(args.runs_opt)
    if not runs:
        raise ConfigError("compare needs run folders: compare output/a output/b ...")
    df = compare(runs)
    print(format_comparison(df))
    if args.output:
        csv, _ = write_comparison(df, args.output)
        print(f"\n(written to {csv})")
    return 0
