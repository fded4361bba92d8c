"""detectron2's meaning for detectron2's keys (issue 20 item 3): gradient clipping per parameter, bias and norm
optimizer settings, aspect-ratio grouping, CUDNN_BENCHMARK, VIS_PERIOD and the model keys the torchvision
engine used to ignore."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import D2_STATS, small_model_cfg
from torch import nn

from meddet.config import get_cfg
from meddet.data.dataset import TrainingBatchSampler
from meddet.errors import ConfigError, ModelError
from meddet.training.solver import build_optimizer, clip_gradients, optimizer_param_groups


def _clip_cfg(kind: str, value: float = 5.0):
    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = kind
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = value
    return cfg


def _two_params(grads):
    params = [nn.Parameter(torch.zeros(len(g))) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    return params, torch.optim.SGD(params, lr=0.1)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # detectron2's "norm": each parameter on its own (|g1| = 5 stays, |g2| = 10 halves)
        ("norm", [[3.0, 4.0], [3.0, 4.0]]),
        # "full_model": all together (joint norm sqrt(125) -> 5)
        ("full_model", [[3.0 / math.sqrt(5), 4.0 / math.sqrt(5)], [6.0 / math.sqrt(5), 8.0 / math.sqrt(5)]]),
        ("value", [[3.0, 4.0], [5.0, 5.0]]),
    ],
)
def test_clip_types_have_detectron2s_meaning(kind, expected):
    params, opt = _two_params([[3.0, 4.0], [6.0, 8.0]])
    clip_gradients(_clip_cfg(kind).SOLVER.CLIP_GRADIENTS, opt)
    for p, e in zip(params, expected):
        assert torch.allclose(p.grad, torch.tensor(e), atol=1e-5), (kind, p.grad)


def test_unknown_clip_type_is_refused_when_the_optimizer_is_built():
    with pytest.raises(ConfigError, match="CLIP_TYPE: expected one of value, norm, full_model, found 'global'"):
        build_optimizer(_clip_cfg("global"), nn.Linear(2, 2))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


def _hyper(cfg, model):
    """{parameter name: (lr, weight_decay)} of the optimizer's groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer_param_groups(cfg, model) for p in g["params"]}


def test_param_groups_follow_detectron2s_get_default_optimizer_params():
    model = _Net()
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_NORM = 0.1, 1e-4, 0.0
    assert _hyper(cfg, model) == {
        "conv.weight": (0.1, 1e-4),
        "conv.bias": (0.1, 1e-4),
        "norm.weight": (0.1, 0.0),
        "norm.bias": (0.1, 0.0),
        "fc.weight": (0.1, 1e-4),
        "fc.bias": (0.1, 1e-4),
    }
    assert len(optimizer_param_groups(cfg, model)) == 2  # same values share a group
    cfg.SOLVER.BIAS_LR_FACTOR, cfg.SOLVER.WEIGHT_DECAY_BIAS = 2.0, 0.5
    hyper = _hyper(cfg, model)
    assert hyper["conv.bias"] == hyper["fc.bias"] == hyper["norm.bias"] == (0.2, 0.5)  # bias wins over norm
    assert hyper["norm.weight"] == (0.1, 0.0) and hyper["conv.weight"] == (0.1, 1e-4)
    opt = build_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5)  # the schedule scales every group
    assert sorted({g["lr"] for g in opt.param_groups}) == [0.05, 0.1]
    assert sched is not None


def test_frozen_parameters_are_left_out():
    model = _Net()
    model.conv.weight.requires_grad_(False)
    assert "conv.weight" not in _hyper(get_cfg(), model)


# ------------------------------------------------------------------------------------- aspect-ratio grouping
def _batches(sampler, n):
    return [b for b in itertools.islice(iter(sampler), n)]


def test_aspect_ratio_grouping_gives_batches_of_one_orientation_and_resumes():
    wide = [i % 3 == 0 for i in range(30)]
    sampler = TrainingBatchSampler(30, 4, seed=1, groups=wide)
    batches = _batches(sampler, 40)
    for b in batches:
        assert len(b) == 4 and len({wide[i] for _, i in b}) == 1
    positions = [p for b in batches for p, _ in b]
    assert len(set(positions)) == len(positions)  # every item its own augmentation seed
    resumed = _batches(TrainingBatchSampler(30, 4, seed=1, start_iter=25, groups=wide), 15)
    assert resumed == batches[25:]
    # two processes share each global batch
    halves = [_batches(TrainingBatchSampler(30, 4, seed=1, rank=r, world_size=2, groups=wide), 5) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == batches[:5]


def test_aspect_ratio_grouping_saves_padding_on_mixed_orientations():
    """Padding of a batch is what its images leave of the largest height x largest width."""
    import numpy as np

    rng = np.random.default_rng(0)
    sizes = [(800, 1333) if rng.random() < 0.5 else (1333, 800) for _ in range(200)]  # (h, w) after resizing
    wide = [w > h for h, w in sizes]

    def padded_fraction(sampler):
        pad = total = 0
        for b in _batches(sampler, 200):
            hs, ws = zip(*(sizes[i] for _, i in b))
            area = len(b) * max(hs) * max(ws)
            pad += area - sum(h * w for h, w in zip(hs, ws))
            total += area
        return pad / total

    plain = padded_fraction(TrainingBatchSampler(200, 4, seed=0))
    grouped = padded_fraction(TrainingBatchSampler(200, 4, seed=0, groups=wide))
    assert grouped == 0.0 and plain > 0.3  # mixed batches of 800x1333 and 1333x800 are ~40% padding


def test_aspect_ratio_grouping_refuses_quarter_turns(tiny_cfg):
    from meddet.data.dataset import build_train_loader

    cfg = tiny_cfg.clone()
    cfg.merge_from_list(["DATALOADER.ASPECT_RATIO_GROUPING", True, "AUG.ROT90_PROB", 0.5])
    with pytest.raises(ConfigError, match="ASPECT_RATIO_GROUPING True with AUG.ROT90_PROB 0.5"):
        build_train_loader(cfg)
    cfg.AUG.ROT90_PROB = 0.0
    loader, _ = build_train_loader(cfg)
    batch = next(iter(loader))
    assert len({b["image"].shape[-1] > b["image"].shape[-2] for b in batch}) == 1


# ------------------------------------------------------------------------------------- other keys
def test_vis_period_is_refused(tiny_cfg):
    from meddet.training import Trainer

    cfg = tiny_cfg.clone()
    cfg.VIS_PERIOD = 20
    with pytest.raises(ConfigError, match="VIS_PERIOD: 20"):
        Trainer(cfg)


@pytest.mark.parametrize(
    ("opts", "key"),
    [
        (["MODEL.RPN.IOU_LABELS", [-1, 0, 1]], "MODEL.RPN.IOU_LABELS"),
        (["MODEL.ROI_HEADS.IOU_LABELS", [1, 0]], "MODEL.ROI_HEADS.IOU_LABELS"),
        (["MODEL.ANCHOR_GENERATOR.ANGLES", [[0]]], "MODEL.ANCHOR_GENERATOR.ANGLES"),
    ],
)
def test_torchvision_engine_refuses_keys_it_cannot_honour(opts, key):
    from meddet.modeling import build_model

    with pytest.raises(ModelError, match=key):
        build_model(small_model_cfg("torchvision", *opts))


def test_proposal_min_size_drops_small_proposals():
    from meddet.modeling import build_model

    torch.manual_seed(0)
    model = build_model(small_model_cfg("torchvision"))
    model.eval()
    proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 3.0, 30.0], [5.0, 5.0, 40.0, 40.0]]])
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    boxes, _ = model.rpn.filter_proposals(proposals, logits, [(64, 64)], [3])
    assert len(boxes[0]) == 3
    model.rpn.min_box_size = 5.0  # MODEL.PROPOSAL_GENERATOR.MIN_SIZE 5: detectron2's nonempty(threshold=5)
    boxes, _ = model.rpn.filter_proposals(proposals, logits, [(64, 64)], [3])
    assert boxes[0].tolist() == [[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 40.0, 40.0]]
    cfg = small_model_cfg("torchvision", "MODEL.PROPOSAL_GENERATOR.MIN_SIZE", 5)
    assert build_model(cfg).rpn.min_box_size == 5.0


def test_config_version_other_than_detectron2s_is_refused(tmp_path):
    from meddet.config import load_config

    (tmp_path / "old.yaml").write_text("VERSION: 1\n")
    with pytest.raises(ConfigError, match="old.yaml: VERSION 1; expected 2"):
        load_config(tmp_path / "old.yaml")


# ------------------------------------------------------------------------------------- detectron2's own configs
# The keys of detectron2's model-zoo Base-RCNN-FPN.yaml and COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml.
D2_BASE_RCNN_FPN = """
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  BACKBONE:
    NAME: "build_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
  ANCHOR_GENERATOR:
    SIZES: [[32], [64], [128], [256], [512]]
    ASPECT_RATIOS: [[0.5, 1.0, 2.0]]
  RPN:
    IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"]
    PRE_NMS_TOPK_TRAIN: 2000
    PRE_NMS_TOPK_TEST: 1000
    POST_NMS_TOPK_TRAIN: 1000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: "StandardROIHeads"
    IN_FEATURES: ["p2", "p3", "p4", "p5"]
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_FC: 2
    POOLER_RESOLUTION: 7
  ROI_MASK_HEAD:
    NAME: "MaskRCNNConvUpsampleHead"
    NUM_CONV: 4
    POOLER_RESOLUTION: 14
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST: ("coco_2017_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
  STEPS: (60000, 80000)
  MAX_ITER: 90000
INPUT:
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
VERSION: 2
"""


def _zoo(tmp_path, body: str):
    (tmp_path / "Base-RCNN-FPN.yaml").write_text(D2_BASE_RCNN_FPN)
    (tmp_path / "COCO-Detection").mkdir(exist_ok=True)
    path = tmp_path / "COCO-Detection" / "model.yaml"
    path.write_text('_BASE_: "../Base-RCNN-FPN.yaml"\n' + body)
    return path


def test_detectron2_model_zoo_box_config_loads_and_builds(tmp_path, caplog):
    import logging

    from meddet.config import load_config
    from meddet.modeling import build_model

    path = _zoo(
        tmp_path,
        "MODEL:\n  WEIGHTS: 'detectron2://ImageNetPretrained/MSRA/R-50.pkl'\n  MASK_ON: False\n"
        "  RESNETS:\n    DEPTH: 50\nSOLVER:\n  STEPS: (210000, 250000)\n  MAX_ITER: 270000\n",
    )
    with caplog.at_level(logging.INFO, logger="meddet.config"):
        cfg = load_config(
            path,
            [
                "MODEL.ENGINE",
                "torchvision",
                "MODEL.DEVICE",
                "cpu",
                "MODEL.WEIGHTS",
                "",
                "MODEL.ROI_HEADS.NUM_CLASSES",
                80,
            ],
        )
    assert "MODEL.ROI_MASK_HEAD.NAME" in caplog.text and "not used" in caplog.text
    assert cfg.SOLVER.MAX_ITER == 270000 and cfg.MODEL.RESNETS.DEPTH == 50 and not cfg.MODEL.MASK_ON
    model = build_model(cfg)
    assert model.engine == "torchvision" and model.roi_heads.box_predictor.cls_score.out_features == 81


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("MODEL: {MASK_ON: True}\n", "MODEL.MASK_ON is True; meddet builds box detectors only .*without a mask head"),
        (
            "MODEL:\n  KEYPOINT_ON: True\n  ROI_KEYPOINT_HEAD: {NUM_KEYPOINTS: 17}\n",
            "MODEL.KEYPOINT_ON is True.*a keypoint head",
        ),
        (
            "MODEL:\n  ROI_HEADS: {NAME: CascadeROIHeads}\n  ROI_BOX_CASCADE_HEAD: {IOUS: [0.5, 0.6, 0.7]}\n",
            r"MODEL.ROI_BOX_CASCADE_HEAD.IOUS belongs to the cascade box head",
        ),
        ("MODEL: {ROI_MASK_HEED: {NUM_CONV: 4}}\n", "unknown config key 'MODEL.ROI_MASK_HEED'"),
    ],
)
def test_detectron2_parts_meddet_lacks_are_refused_when_switched_on(tmp_path, body, match):
    from meddet.config import load_config

    with pytest.raises(ConfigError, match=match):
        load_config(_zoo(tmp_path, body))
    with pytest.raises(ConfigError, match="command line: MODEL.MASK_ON is True"):
        load_config(None, ["MODEL.MASK_ON", "True"])


# ------------------------------------------------------------------------------------- training statistics


def test_classification_stats_are_detectron2s_with_background_first():
    from meddet.modeling.torchvision_engine import classification_stats

    # 5 ROIs, classes 1..2 (0 = background): predictions bg, 1, 2, 2, 0 for labels 0, 1, 1, 2, 2
    logits = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 5], [0, 0, 5], [5, 0, 0]])
    labels = torch.tensor([0, 1, 1, 2, 2])
    stats = {k: float(v) for k, v in classification_stats(logits, labels, torch.where(labels > 0)[0]).items()}
    assert stats == pytest.approx(
        {"fast_rcnn/cls_accuracy": 3 / 5, "fast_rcnn/fg_cls_accuracy": 2 / 4, "fast_rcnn/false_negative": 1 / 4}
    )
    only_bg = classification_stats(logits[:1], labels[:1], torch.where(labels[:1] > 0)[0])
    assert set(only_bg) == {"fast_rcnn/cls_accuracy"}  # no foreground: detectron2 logs accuracy only
    assert classification_stats(logits[:0], labels[:0], labels[:0]) == {}


def test_torchvision_engine_reports_detectron2s_training_statistics():
    from meddet.modeling import build_model

    torch.manual_seed(0)
    cfg = small_model_cfg("torchvision")
    model = build_model(cfg)
    model.train()
    g = torch.Generator().manual_seed(0)
    batch = [
        {
            "image": torch.rand(3, 64, 96, generator=g) * 255,
            "height": 64,
            "width": 96,
            "boxes": torch.tensor([[10.0, 12.0, 40.0, 30.0], [50.0, 20.0, 90.0, 60.0]]),
            "classes": torch.tensor([0, 2]),
        },
        {
            "image": torch.rand(3, 64, 64, generator=g) * 255,
            "height": 64,
            "width": 64,
            "boxes": torch.zeros(0, 4),
            "classes": torch.zeros(0, dtype=torch.int64),
        },
    ]
    model(batch)
    stats = {k: float(v) for k, v in model.training_stats.items()}
    assert set(stats) == D2_STATS
    rpn_batch = cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE
    assert 0 < stats["rpn/num_pos_anchors"] <= rpn_batch * cfg.MODEL.RPN.POSITIVE_FRACTION
    assert stats["rpn/num_pos_anchors"] + stats["rpn/num_neg_anchors"] == rpn_batch  # plenty of anchors
    roi_batch = cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    assert 0 < stats["roi_head/num_fg_samples"] <= roi_batch * cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION
    assert 0 < stats["roi_head/num_fg_samples"] + stats["roi_head/num_bg_samples"] <= roi_batch
    for k in ("fast_rcnn/cls_accuracy", "fast_rcnn/fg_cls_accuracy", "fast_rcnn/false_negative"):
        assert 0.0 <= stats[k] <= 1.0, k
