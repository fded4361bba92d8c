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

The same commands as `meddet COMMAND ...` (meddet.cli, one module per command).
"""

from __future__ import annotations

import argparse
import sys

from meddet.cli import execute, parse_dash_c, run_command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`-c COMMAND [options] [KEY VALUE ...]` -> the command's namespace."""
    return parse_dash_c(argv, prog="detectron.py", description=__doc__)


def main(args: argparse.Namespace) -> int:
    """Run a parsed command (errors propagate; run as a script, they become one line and exit code 2)."""
    return run_command(args)


if __name__ == "__main__":
    sys.exit(execute(parse_args()))
