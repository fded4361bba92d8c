#!/usr/bin/env python
"""Convert medical detection datasets to meddet's COCO layout, check them, or generate a synthetic one:
`python convert_dataset.py COMMAND ...` (the same as `meddet-convert` / `meddet convert`; meddet.cli.convert,
whose --help lists the commands)."""

from __future__ import annotations

import argparse
import sys

from meddet.cli import convert

PROG = "convert_dataset.py"


def build_parser() -> argparse.ArgumentParser:
    return convert.build_parser(prog=PROG)


def entry(argv: list[str] | None = None) -> int:
    return convert.main(argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(entry())
