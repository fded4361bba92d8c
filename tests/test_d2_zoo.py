"""detectron2's model-zoo YAMLs as `--config-file`: every key means what it means in detectron2, unset keys
included (meddet's defaults are detectron2's: the C4 architecture; the FPN keys live in the recipes' base,
configs/Base-RCNN-FPN.yaml), and detectron2's `!!python/object/apply:eval` tag is evaluated safely.

The tests here write small YAMLs shaped like the zoo's (a _BASE_ chain with the C4 / DC5 / RetinaNet settings)
and run everywhere; the detectron2-marked ones at the end load the real zoo files from the installed detectron2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from meddet.config import FPN_ARCHITECTURE, get_cfg, get_fpn_cfg, load_config, merge_yaml
from meddet.errors import ConfigError, ModelError

REPO = Path(__file__).resolve().parents[1]

# The architecture parts of detectron2's base YAMLs (configs/Base-*.yaml), as detectron2 writes them.
BASE_C4 = """MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  RPN:
    PRE_NMS_TOPK_TEST: 6000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: "Res5ROIHeads"
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
INPUT:
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
VERSION: 2
"""
BASE_DC5 = """MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  RESNETS:
    OUT_FEATURES: ["res5"]
    RES5_DILATION: 2
  RPN:
    IN_FEATURES: ["res5"]
    PRE_NMS_TOPK_TEST: 6000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: "StandardROIHeads"
    IN_FEATURES: ["res5"]
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_FC: 2
    POOLER_RESOLUTION: 7
  ROI_MASK_HEAD:
    NAME: "MaskRCNNConvUpsampleHead"
    NUM_CONV: 4
    POOLER_RESOLUTION: 14
VERSION: 2
"""
BASE_RETINANET = """MODEL:
  META_ARCHITECTURE: "RetinaNet"
  BACKBONE:
    NAME: "build_retinanet_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res3", "res4", "res5"]
  ANCHOR_GENERATOR:
    SIZES: !!python/object/apply:eval ["[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]"]
  FPN:
    IN_FEATURES: ["res3", "res4", "res5"]
  RETINANET:
    IOU_THRESHOLDS: [0.4, 0.5]
    IOU_LABELS: [0, -1, 1]
    SMOOTH_L1_LOSS_BETA: 0.0
SOLVER:
  BASE_LR: 0.01
VERSION: 2
"""
CHILD = """_BASE_: "../{base}"
MODEL:
  WEIGHTS: ""
  MASK_ON: False
  RESNETS:
    DEPTH: 50
"""
# Small models for building on a CPU (keys the zoo YAMLs leave to the user: device, engine, depth, classes).
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]


def _zoo(tmp_path: Path, name: str, base: str) -> Path:
    """tmp_path/Base-<name>.yaml holding ``base`` and tmp_path/COCO-Detection/<name>.yaml inheriting it."""
    (tmp_path / f"Base-{name}.yaml").write_text(base)
    child = tmp_path / "COCO-Detection" / f"{name}.yaml"
    child.parent.mkdir(exist_ok=True)
    child.write_text(CHILD.format(base=f"Base-{name}.yaml"))
    return child


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


# ------------------------------------------------------------------------------------------- defaults
def test_defaults_are_detectron2s_c4_and_the_fpn_keys_are_the_recipes_base():
    cfg = get_cfg()
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone" and cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads"
    assert list(cfg.MODEL.RESNETS.OUT_FEATURES) == ["res4"] and list(cfg.MODEL.RPN.IN_FEATURES) == ["res4"]
    assert _plain(cfg.MODEL.ANCHOR_GENERATOR.SIZES) == [[32, 64, 128, 256, 512]]
    assert (cfg.MODEL.ROI_BOX_HEAD.NAME, cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION) == (
        "",
        0,
        14,
    )
    # get_fpn_cfg differs from get_cfg in exactly FPN_ARCHITECTURE's keys, and the recipes' base sets them all
    fpn = get_fpn_cfg()
    base = yaml.safe_load((REPO / "configs" / "Base-RCNN-FPN.yaml").read_text())
    for key, value in FPN_ARCHITECTURE.items():
        assert _plain(_get(fpn, key)) == _plain(value), key
        assert _plain(_get(base, key)) == _plain(value), f"configs/Base-RCNN-FPN.yaml: {key}"
    for key in FPN_ARCHITECTURE:
        *path, leaf = key.split(".")
        node = cfg
        for p in path:
            node = node[p]
        node[leaf] = _get(fpn, key)
    assert cfg == fpn


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_sets_its_architecture_so_the_defaults_change_nothing(path):
    """Each config in configs/ gives the same values on detectron2's defaults as on the former FPN defaults."""
    on_fpn = merge_yaml(get_fpn_cfg(), path)
    assert load_config(path) == on_fpn


# --------------------------------------------------------------------------------------- the eval tag
def test_retinanet_base_eval_tag_gives_detectron2s_anchor_sizes(tmp_path):
    cfg = load_config(_zoo(tmp_path, "RetinaNet", BASE_RETINANET), SMALL)
    sizes = _plain(cfg.MODEL.ANCHOR_GENERATOR.SIZES)
    expected = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]
    assert sizes == expected
    assert list(cfg.MODEL.RESNETS.OUT_FEATURES) == ["res3", "res4", "res5"] and cfg.SOLVER.BASE_LR == 0.01


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ('__import__(\\"os\\").getcwd()', "Call"),
        ("open('/etc/passwd')", "Call"),
        ("[x for x in range(3)]", "Call"),
        ("x * 2", "Name"),
        ("(1).real", "Attribute"),
        ("[0] * 100000000", "repeating"),
        ("10 ** 100000", "too large"),
        ("lambda: 0", "Lambda"),
    ],
)
def test_eval_tag_refuses_anything_but_literals_arithmetic_and_comprehensions(tmp_path, expression, why):
    path = tmp_path / "bad.yaml"
    path.write_text(f'MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval ["{expression}"]\n')
    with pytest.raises(ConfigError, match=rf"{path}: .*python/object/apply:eval.*{why}"):
        load_config(path)


def test_other_python_tags_stay_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("SEED: !!python/object/apply:os.getpid []\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        load_config(path)


# ------------------------------------------------------------------------- C4 / DC5 / RetinaNet chains
def test_c4_chain_means_detectron2s_c4(tmp_path):
    cfg = load_config(_zoo(tmp_path, "RCNN-C4", BASE_C4), SMALL)
    m = cfg.MODEL
    assert (m.BACKBONE.NAME, m.ROI_HEADS.NAME, m.ROI_BOX_HEAD.NAME) == ("build_resnet_backbone", "Res5ROIHeads", "")
    assert list(m.RESNETS.OUT_FEATURES) == ["res4"] == list(m.RPN.IN_FEATURES) == list(m.ROI_HEADS.IN_FEATURES)
    assert _plain(m.ANCHOR_GENERATOR.SIZES) == [[32, 64, 128, 256, 512]] and m.ROI_BOX_HEAD.POOLER_RESOLUTION == 14
    assert (m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TRAIN) == (12000, 6000, 2000)


def test_dc5_chain_means_detectron2s_dc5(tmp_path):
    cfg = load_config(_zoo(tmp_path, "RCNN-DilatedC5", BASE_DC5), SMALL)
    m = cfg.MODEL
    assert (m.BACKBONE.NAME, m.ROI_HEADS.NAME, m.RESNETS.RES5_DILATION) == (
        "build_resnet_backbone",
        "StandardROIHeads",
        2,
    )
    assert list(m.RESNETS.OUT_FEATURES) == ["res5"] == list(m.RPN.IN_FEATURES) == list(m.ROI_HEADS.IN_FEATURES)
    assert _plain(m.ANCHOR_GENERATOR.SIZES) == [[32, 64, 128, 256, 512]]
    assert (m.ROI_BOX_HEAD.NUM_FC, m.ROI_BOX_HEAD.POOLER_RESOLUTION) == (2, 7)


def test_retinanet_chain_builds_detectron2s_retinanet_on_the_torchvision_engine(tmp_path):
    from meddet.modeling import build_model

    cfg = load_config(
        _zoo(tmp_path, "RetinaNet", BASE_RETINANET),
        [*SMALL, "MODEL.ENGINE", "torchvision", "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.RETINANET.NUM_CLASSES", "3"],
    )
    model = build_model(cfg)
    assert model.engine == "torchvision" and model.num_classes == 3
    gen = model.anchor_generator
    assert [len(s) for s in gen.sizes] == [3] * 5 and gen.num_anchors_per_location() == [9] * 5
    assert gen.sizes[0][1] == pytest.approx(32 * 2 ** (1 / 3))
    model.eval()
    with torch.no_grad():
        (det,) = model([{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}])
    assert set(det) == {"boxes", "scores", "classes"}


@pytest.mark.parametrize(
    ("name", "base", "match"),
    [
        ("RCNN-C4", BASE_C4, r"MODEL.ROI_HEADS.NAME: 'Res5ROIHeads' is detectron2's C4 architecture"),
        ("RCNN-DilatedC5", BASE_DC5, r"MODEL.BACKBONE.NAME: 'build_resnet_backbone' .*DC5 architecture"),
    ],
)
def test_torchvision_engine_refuses_c4_and_dc5_naming_the_key_and_the_alternatives(tmp_path, name, base, match):
    from meddet.modeling import build_model

    cfg = load_config(_zoo(tmp_path, name, base), [*SMALL, "MODEL.ENGINE", "torchvision"])
    with pytest.raises(ModelError, match=match) as e:
        build_model(cfg)
    assert "MODEL.ENGINE detectron2" in str(e.value) and "Base-RCNN-FPN.yaml" in str(e.value)
    # and so do the bare defaults (detectron2's C4)
    with pytest.raises(ModelError, match="Res5ROIHeads"):
        build_model(load_config(None, [*SMALL, "MODEL.ENGINE", "torchvision"]))
