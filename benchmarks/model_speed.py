"""Seconds per training iteration (forward + backward + SGD step) of the torchvision engine on the CPU.

From-scratch settings (NORM BN, FREEZE_AT 0, small anchors), synthetic images with a few boxes.
Used to size a CPU demo that trains a detector from scratch in a few minutes.

Each cell is "wall / CPU" seconds per iteration (fastest of the timed iterations). Wall time is what a
user waits on an otherwise idle machine; CPU time (all threads of this process) stays meaningful when
other processes share the cores: with --threads 1 it is the single-core cost of an iteration.

    python benchmarks/model_speed.py                      # full grid (about 10 minutes on 2 cores)
    python benchmarks/model_speed.py --depths 18 --sizes 256 --batches 2 --fpn 64 --light both
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time

import torch

from meddet.config import get_fpn_cfg
from meddet.modeling import build_model

LIGHT = ["MODEL.RPN.POST_NMS_TOPK_TRAIN", 256, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 128]


def make_cfg(depth: int, fpn: int, fc_dim: int, light: bool):
    cfg = get_fpn_cfg()
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.ENGINE",
            "torchvision",
            "MODEL.RESNETS.DEPTH",
            depth,
            "MODEL.RESNETS.NORM",
            "BN",
            "MODEL.BACKBONE.FREEZE_AT",
            0,
            "MODEL.FPN.OUT_CHANNELS",
            fpn,
            "MODEL.ROI_BOX_HEAD.FC_DIM",
            fc_dim,
            "MODEL.ANCHOR_GENERATOR.SIZES",
            [[8], [16], [32], [64], [128]],
            "MODEL.PIXEL_STD",
            [50.0, 50.0, 50.0],
            *(LIGHT if light else []),
        ]
    )
    return cfg


def make_batch(size: int, batch: int, gen: torch.Generator) -> list[dict]:
    out = []
    for _ in range(batch):
        img = (torch.rand(1, size, size, generator=gen) * 255).expand(3, -1, -1).contiguous()
        xy = torch.rand(3, 2, generator=gen) * (size * 0.7)
        wh = 8 + torch.rand(3, 2, generator=gen) * (size * 0.25)
        out.append(
            {
                "image": img,
                "height": size,
                "width": size,
                "boxes": torch.cat([xy, xy + wh], 1),
                "classes": torch.randint(0, 3, (3,), generator=gen),
            }
        )
    return out


def time_iterations(
    depth: int, fpn: int, fc_dim: int, light: bool, size: int, batch: int, warmup: int, iters: int
) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest timed iteration, the one least disturbed by other processes."""
    torch.manual_seed(0)
    model = build_model(make_cfg(depth, fpn, fc_dim, light))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    batches = [make_batch(size, batch, gen) for _ in range(warmup + iters)]
    times = []
    for b in batches:
        t0, c0 = time.perf_counter(), time.process_time()
        losses = model(b)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(times[warmup:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[18, 50])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--fpn", type=int, nargs="+", default=[64, 128, 256], help="MODEL.FPN.OUT_CHANNELS values")
    ap.add_argument("--fc-dim", type=int, default=256, help="MODEL.ROI_BOX_HEAD.FC_DIM")
    ap.add_argument(
        "--light",
        choices=["no", "yes", "both"],
        default="both",
        help="RPN POST_NMS_TOPK_TRAIN 256 / ROI BATCH_SIZE_PER_IMAGE 128 instead of the defaults",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    lights = {"no": [False], "yes": [True], "both": [False, True]}[args.light]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, FC_DIM {args.fc_dim}, "
        f"wall / CPU seconds of the fastest of {args.iters} iterations after {args.warmup} warm-up"
    )
    print("| model | FPN ch | size | batch | s/iter, RPN/ROI defaults 1000/512 | s/iter, light 256/128 |")
    print("|---|---|---|---|---|---|")
    for depth, fpn, size, batch in itertools.product(args.depths, args.fpn, args.sizes, args.batches):
        cells = {
            light: time_iterations(depth, fpn, args.fc_dim, light, size, batch, args.warmup, args.iters)
            for light in lights
        }
        shown = [f"{cells[light][0]:.2f} / {cells[light][1]:.2f}" if light in cells else "-" for light in (False, True)]
        print(f"| R{depth}-FPN | {fpn} | {size} | {batch} | {shown[0]} | {shown[1]} |", flush=True)


if __name__ == "__main__":
    main()
