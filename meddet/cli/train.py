"""Train a detector on DATASETS.TRAIN (checkpoints, metrics.json and events in OUTPUT_DIR).

meddet train --config-file configs/demo_mammo_R18_FPN.yaml [--resume] [KEY VALUE ...]
torchrun --nproc_per_node N -m meddet train ...   # DistributedDataParallel, SOLVER.IMS_PER_BATCH global
"""

from __future__ import annotations

import argparse
import logging

from meddet.cli.base import add_config, add_debug, load_cfg

HELP = "train a model (resumable; torchrun for several processes)"
logger = logging.getLogger("meddet.cli")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in OUTPUT_DIR that loads (last_checkpoint is a hint)",
    )
    add_debug(p)


def run(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
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
