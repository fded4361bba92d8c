"""Run a seeded experiment: variants of one config x seeds (x folds), paired differences against the baseline,
verdict by rules (format: meddet.apps.experiment).

  meddet experiment --config-file configs/experiments/demo_imbalance.yaml

Exit 1 when a run failed, a metric is missing or a variant's verdict is FAIL (a CI gate; --no-fail-on-verdict
to exit 0 on FAIL verdicts).
"""

from __future__ import annotations

import argparse
import sys

from meddet.cli.base import add_debug

HELP = "run a seeded experiment (variants x seeds [x folds]) and judge it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-file", default="", metavar="FILE", help="the experiment YAML")
    p.add_argument(
        "--no-fail-on-verdict",
        action="store_true",
        help="exit 0 when a variant's verdict is FAIL (default: exit 1, as a CI gate)",
    )
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="refused: put overrides in the experiment YAML")
    add_debug(p)


def run(args: argparse.Namespace) -> int:
    from meddet.apps.experiment import run_experiment
    from meddet.errors import ConfigError

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
