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
        ("((10 ** 64) ** 64) ** 64", "more than 1024 bits"),
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


# ---------------------------------------------------------------- the real zoo files (detectron2 installed)
ZOO = [
    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
]
# What the torchvision engine builds of them (C4 and DC5 are refused, see above).
ON_TORCHVISION = {"retinanet_R_50_FPN_1x", "faster_rcnn_R_50_FPN_1x", "faster_rcnn_R_50_FPN_3x"}
# Keys the test sets for a CPU model on its 3 classes (weights: random, nothing is downloaded)
TEST_OPTS = [
    "MODEL.WEIGHTS",
    "",
    "MODEL.DEVICE",
    "cpu",
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "3",
    "MODEL.RETINANET.NUM_CLASSES",
    "3",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    "0.0",
    "TEST.DETECTIONS_PER_IMAGE",
    "30",
]


def _zoo_file(name: str) -> Path:
    detectron2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (build it from source to run)")
    path = Path(detectron2.__file__).parent / "model_zoo" / "configs" / name
    if not path.is_file():  # a source checkout installed in place keeps them in the repository's configs/
        from detectron2 import model_zoo

        path = Path(model_zoo.get_config_file(name))
    return path


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.detectron2
@pytest.mark.parametrize("name", ZOO)
def test_zoo_yaml_gives_the_model_detectron2_reads_from_it(name):
    """Every MODEL.*/INPUT.* value meddet passes to detectron2 equals detectron2's own reading of the file,
    except the device (meddet builds on the CPU, then moves), the class count (meddet's default: 3, checked
    against the data by the trainer) and the keys of the mask head, which meddet does not build."""
    path = _zoo_file(name)
    from detectron2.config import get_cfg as d2_get_cfg

    from meddet.modeling.d2_engine import to_detectron2_cfg

    ref = d2_get_cfg()
    ref.merge_from_file(str(path))
    ours = to_detectron2_cfg(load_config(path))
    expected_diff = {"MODEL.DEVICE", "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.RETINANET.NUM_CLASSES"}
    a, b = _flat(ref), _flat(ours)
    differ = {
        k
        for k in a
        if k.startswith(("MODEL.", "INPUT.")) and not k.startswith("MODEL.ROI_MASK_HEAD.") and a[k] != b.get(k)
    }
    assert differ == expected_diff, {k: (a[k], b.get(k)) for k in differ}


def _calibrate_frozen_norms(model, image: torch.Tensor) -> None:
    """Give every FrozenBatchNorm2d of a randomly initialised detectron2 model the statistics of its input on
    ``image`` (a zoo model's FrozenBN starts as the identity, so a random R50's activations explode and every
    proposal becomes the whole image): the model then behaves like a trained one in scale, deterministically."""
    from detectron2.layers import FrozenBatchNorm2d

    def calibrate(module, inputs):
        x = inputs[0].detach()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-2)

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    model.eval()
    with torch.no_grad():
        model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])
    for h in hooks:
        h.remove()


def _same_detections(a: dict, b: dict) -> int:
    """Every detection of one clear of the lowest kept score (by more than the tolerance) has its twin in the
    other: same class, IoU >= 0.99, score within 1e-3. Returns how many were compared."""
    from torchvision.ops import box_iou

    floor = max(float(a["scores"].min()), float(b["scores"].min())) + 1e-3
    compared = 0
    for x, y in ((a, b), (b, a)):
        clear = x["scores"] > floor
        iou = box_iou(x["boxes"][clear], y["boxes"])
        iou[x["classes"][clear][:, None] != y["classes"][None, :]] = 0
        best, match = iou.max(dim=1)
        assert (best >= 0.99).all(), best
        assert torch.allclose(y["scores"][match], x["scores"][clear], atol=1e-3)
        compared += int(clear.sum())
    return compared


@pytest.mark.detectron2
@pytest.mark.parametrize("name", ZOO)
def test_zoo_yaml_trains_and_predicts_on_both_engines_with_the_same_detections(name):
    """The zoo file as --config-file: detectron2's model trains a step and predicts; where the torchvision
    engine builds the architecture, the converted weights give the same detections there and train a step
    too; where it does not (C4, DC5), it refuses with the key and the alternatives."""
    from meddet.modeling import build_model
    from meddet.modeling.d2_convert import d2_to_tv_state_dict, tv_to_d2_state_dict

    cfg = load_config(_zoo_file(name), [*TEST_OPTS, "MODEL.ENGINE", "detectron2"])
    torch.manual_seed(0)
    d2_model = build_model(cfg)
    assert d2_model.engine == "detectron2"
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 128, 160, generator=g) * 255
    train_item = {
        "image": image,
        "height": 128,
        "width": 160,
        "boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [90.0, 30.0, 150.0, 100.0]]),
        "classes": torch.tensor([1, 2]),
    }

    def train_step(model):
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        losses = model([train_item])
        assert losses and all(torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        model.eval()

    _calibrate_frozen_norms(d2_model, image)
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":  # scores spread out, not all at the prior probability 0.01
        with torch.no_grad():
            d2_model.head.cls_score.weight.mul_(100.0)
    train_step(d2_model)
    with torch.no_grad():
        (ref,) = d2_model([{"image": image, "height": 128, "width": 160}])
    assert set(ref) == {"boxes", "scores", "classes"} and len(ref["boxes"]) > 0
    assert (ref["boxes"][:, 2] <= 160).all() and set(ref["classes"].tolist()) <= {0, 1, 2}

    tv_cfg = cfg.clone()
    tv_cfg.MODEL.ENGINE = "torchvision"
    if Path(name).stem not in ON_TORCHVISION:
        with pytest.raises(ModelError, match=r"MODEL.ENGINE detectron2.*Base-RCNN-FPN.yaml"):
            build_model(tv_cfg)
        return
    tv_model = build_model(tv_cfg).eval()
    state = {k: v for k, v in d2_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    tv_model.load_state_dict(d2_to_tv_state_dict(state, tv_cfg), strict=False)
    back = tv_to_d2_state_dict(tv_model.state_dict(), tv_cfg)
    assert all(torch.equal(back[k], state[k]) for k in back)
    with torch.no_grad():
        (ours,) = tv_model([{"image": image, "height": 128, "width": 160}])
    assert _same_detections(ref, ours) >= 10
    train_step(tv_model)


@pytest.mark.slow  # two R50 trainings on the CPU: minutes on 2 cores
@pytest.mark.detectron2
@pytest.mark.parametrize(
    "name", ["COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", "COCO-Detection/retinanet_R_50_FPN_1x.yaml"]
)
def test_zoo_yaml_runs_meddets_training_and_its_checkpoint_loads_strictly(name, tiny_coco, tmp_path):
    """`-c train --config-file <zoo yaml>` on meddet's data: the run records the detectron2 engine, and its
    checkpoint fills every parameter of the model its config.yaml builds, which then predicts."""
    from meddet.modeling import build_model
    from meddet.training import Trainer

    path = _zoo_file(name)
    opts = [
        "MODEL.ENGINE", "detectron2", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]",
        "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.RETINANET.NUM_CLASSES", "2",
        "DATASETS.TRAIN", f"('{tiny_coco}',)", "DATASETS.TEST", f"('{tiny_coco}',)",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.BASE_LR", "0.001", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.MAX_ITER", "2",
        "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0", "SEED", "3", "OUTPUT_DIR", str(tmp_path / "run"),
    ]  # fmt: skip
    cfg = load_config(path, opts)
    Trainer(cfg).train()
    run = tmp_path / "run"
    saved = load_config(run / "config.yaml")
    assert saved.MODEL.ENGINE == "detectron2" and saved.MODEL.META_ARCHITECTURE == cfg.MODEL.META_ARCHITECTURE
    assert saved.MODEL.ROI_HEADS.NAME == cfg.MODEL.ROI_HEADS.NAME
    model = build_model(saved, weights=run / "model_final.pth").eval()
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        (det,) = model([{"image": image, "height": 96, "width": 128}])
    assert set(det) == {"boxes", "scores", "classes"}


@pytest.mark.parametrize(
    ("key", "match"),
    [
        ("roi_heads.res5.0.conv1.weight", "a C4 backbone"),
        ("backbone.res5.0.conv2.weight", "a ResNet without FPN .*C4 or DC5"),
    ],
)
def test_c4_and_dc5_checkpoints_are_refused_by_the_converter_naming_the_part(key, match):
    from meddet.modeling.d2_convert import d2_to_tv_state_dict

    state = {key: torch.zeros(1)}
    with pytest.raises(ModelError, match=rf"detectron2 parameter '.*': belongs to {match}"):
        d2_to_tv_state_dict(state, get_fpn_cfg())
