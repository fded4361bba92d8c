"""Convert a checkpoint between the two engines (detectron2 <-> torchvision), exactly.

meddet convert-weights --config-file CFG --weights d2_model.pth --output tv.pth [--direction d2-to-tv]
"""

from __future__ import annotations

import argparse

from meddet.cli.base import add_config, add_debug, load_cfg

HELP = "convert a checkpoint between the detectron2 and torchvision engines"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p, "the model's YAML config (may use _BASE_)")
    p.add_argument("--weights", default="", metavar="PTH", help="the source checkpoint")
    p.add_argument("--output", default="", metavar="PTH", help="the converted checkpoint")
    p.add_argument(
        "--direction",
        default="d2-to-tv",
        choices=("d2-to-tv", "tv-to-d2"),
        help="detectron2 -> torchvision engine or back",
    )
    add_debug(p)


def run(args: argparse.Namespace) -> int:
    from meddet.errors import ConfigError
    from meddet.modeling import convert_checkpoint

    cfg = load_cfg(args)
    if not args.weights or not args.output:
        raise ConfigError("convert-weights needs --weights SRC and --output DST (and the model's --config-file)")
    out = convert_checkpoint(args.weights, args.output, args.direction, cfg=cfg)
    print(f"converted ({args.direction}) -> {out}")
    return 0
