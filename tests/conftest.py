"""Shared fixtures: tiny COCO datasets made on the fly, and a tiny-model config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

# Two xdist workers on two cores: one thread each (more threads per worker oversubscribe the cores and
# OpenMP's spinning makes every convolution many times slower). CLIs run by tests inherit this.
# scripts/robustness_check.sh runs the suite with other thread counts (MEDDET_TEST_THREADS) and seeds
# (MEDDET_TEST_SEED, added to every seed of a model's random init or training run): no test may depend on
# what one CPU, thread count or seed happens to produce.
THREADS = int(os.environ.get("MEDDET_TEST_THREADS", "1"))
SEED_OFFSET = int(os.environ.get("MEDDET_TEST_SEED", "0"))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
import torch  # noqa: E402

torch.set_num_threads(THREADS)
REPO = Path(__file__).resolve().parents[1]


def seeded(base: int) -> int:
    """A test's seed for random weights or a training run, moved by the robustness check's seed offset."""
    return base + SEED_OFFSET


@pytest.fixture(autouse=True)
def _seed_global_rngs():
    """Every test starts from the same global torch / NumPy / random state (moved by MEDDET_TEST_SEED)."""
    import random

    random.seed(seeded(0))
    np.random.seed(seeded(0))
    torch.manual_seed(seeded(0))


def make_tiny_coco(root: Path, n_images: int = 8, size: int = 96, seed: int = 0, names=("square", "disc")) -> Path:
    """PNG images with bright squares (class 1) and discs (class 2) on noise; returns the COCO path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        img = rng.integers(0, 40, (size, size), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            cls = int(rng.integers(0, len(names)))
            s = int(rng.integers(size // 6, size // 3))
            x, y = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
            if cls == 0:
                img[y : y + s, x : x + s] = 220
            else:
                cv2.circle(img, (x + s // 2, y + s // 2), s // 2, 160, -1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "bbox": [x, y, s, s],
                    "area": s * s,
                    "iscrowd": 0,
                }
            )
        name = f"images/img_{i:03d}.png"
        cv2.imwrite(str(root / name), img)
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size, "patient_id": f"P{i // 2}"})
    coco = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }
    path = root / "train.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    return make_tiny_coco(tmp_path / "data")


# The small R18-FPN the model-level tests build directly (no data): a training step takes a fraction of a
# second on the CPU. Each test module adds its own engine and thresholds.
SMALL_MODEL_OPTS = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.RESNETS.DEPTH",
    18,
    "MODEL.RESNETS.NORM",
    "BN",
    "MODEL.BACKBONE.FREEZE_AT",
    0,
    "MODEL.FPN.OUT_CHANNELS",
    32,
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    64,
    "MODEL.ANCHOR_GENERATOR.SIZES",
    [[8], [16], [32], [64], [128]],
    "MODEL.PIXEL_STD",
    [57.4, 57.1, 58.4],
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    200,
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    200,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    64,
]


def small_model_cfg(engine: str, *opts):
    """The FPN defaults (get_fpn_cfg) with SMALL_MODEL_OPTS, the given MODEL.ENGINE and `opts` on top."""
    from meddet.config import get_fpn_cfg

    cfg = get_fpn_cfg()
    cfg.merge_from_list([*SMALL_MODEL_OPTS, "MODEL.ENGINE", engine, *opts])
    return cfg


def image(h: int, w: int, seed: int = 0):
    """A seeded random 3xHxW float image in [0, 255) (a model's input tensor)."""
    import torch

    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def train_batch(second_class: int = 1) -> list[dict]:
    """Two training inputs: a 64x96 image with two boxes (classes 0 and `second_class`) and an empty 64x64 one."""
    import torch

    return [
        {
            "image": image(64, 96),
            "height": 64,
            "width": 96,
            "boxes": torch.tensor([[10.0, 12.0, 40.0, 30.0], [50.0, 20.0, 90.0, 60.0]]),
            "classes": torch.tensor([0, second_class]),
        },
        {
            "image": image(64, 64, 1),
            "height": 64,
            "width": 64,  # an image without objects
            "boxes": torch.zeros(0, 4),
            "classes": torch.zeros(0, dtype=torch.int64),
        },
    ]


# detectron2's training statistics that meddet's metrics.json carries on both engines (issue 20)
D2_STATS = {
    "fast_rcnn/cls_accuracy",
    "fast_rcnn/fg_cls_accuracy",
    "fast_rcnn/false_negative",
    "roi_head/num_fg_samples",
    "roi_head/num_bg_samples",
    "rpn/num_pos_anchors",
    "rpn/num_neg_anchors",
}


TINY_MODEL_OPTS = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.ENGINE",
    "torchvision",
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.NORM",
    "BN",
    "MODEL.BACKBONE.FREEZE_AT",
    "0",
    "MODEL.FPN.OUT_CHANNELS",
    "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "64",
    "MODEL.ANCHOR_GENERATOR.SIZES",
    "[[8], [16], [32], [64], [128]]",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "128",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "128",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "64",
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "2",
    "MODEL.PIXEL_STD",
    "[57.375, 57.12, 58.395]",
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "96",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.BASE_LR",
    "0.01",
    "SOLVER.WARMUP_ITERS",
    "5",
    "SOLVER.STEPS",
    "()",
    "SEED",
    str(seeded(7)),
]


@pytest.fixture
def tiny_cfg(tiny_coco, tmp_path):
    from meddet.config import load_config

    return load_config(
        str(REPO / "configs" / "Base-RCNN-FPN.yaml"),
        TINY_MODEL_OPTS
        + [
            "DATASETS.TRAIN",
            f"('{tiny_coco}',)",
            "DATASETS.TEST",
            f"('{tiny_coco}',)",
            "OUTPUT_DIR",
            str(tmp_path / "run"),
        ],
    )
