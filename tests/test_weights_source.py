"""MODEL.WEIGHTS from where users keep pretrained weights (detectron2 model zoo, URLs, Hugging Face,
torchvision), against loopback stand-ins only: each scheme gives the same model as the same file from
disk; downloads are atomic, resumable, hash-checked; offline use is cached or one clear line; pretrained
formats load with their meaning (backbone only, class change, MSRA conventions checked)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import seeded, small_model_cfg
from http_standin import FileServer

from meddet.errors import ConfigError, ModelError
from meddet.modeling import build_model, load_model_weights, save_checkpoint
from meddet.modeling.d2_convert import tv_to_d2_state_dict
from meddet.modeling.weights_source import (
    DETECTRON2_URL_PREFIX,
    cache_dir,
    detectron2_url,
    resolve_weights,
)

TV_STD = [58.395, 57.12, 57.375]


def _cfg(*opts):
    return small_model_cfg("torchvision", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, *opts)


def _model(cfg, seed: int = 0):
    torch.manual_seed(seeded(seed))
    return build_model(cfg).eval()


def _image() -> dict:
    g = torch.Generator().manual_seed(3)
    return {"image": torch.rand(3, 96, 128, generator=g) * 255, "height": 96, "width": 128}


def _predict(model) -> dict:
    with torch.no_grad():
        return model([_image()])[0]


def _same(a: dict, b: dict) -> None:
    assert len(a["boxes"]) > 0
    for key in ("boxes", "scores", "classes"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-3)


def _d2_pkl(model, cfg, **extra) -> bytes:
    """The model's weights as a detectron2 model-zoo .pkl (numpy blobs, detectron2 names)."""
    state = tv_to_d2_state_dict(model.state_dict(), cfg)
    obj = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo", **extra}
    return pickle.dumps(obj)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private cache, nothing offline; returns the cache folder."""
    for name in ("MEDDET_OFFLINE", "HF_HUB_OFFLINE", "MEDDET_DETECTRON2_URL_PREFIX", "MEDDET_TORCHVISION_URL_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEDDET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def server(monkeypatch):
    with FileServer() as srv:
        monkeypatch.setenv("MEDDET_DETECTRON2_URL_PREFIX", srv.url + "/detectron2/")
        monkeypatch.setenv("MEDDET_TORCHVISION_URL_PREFIX", srv.url + "/models/")
        yield srv


def _tv_url(monkeypatch, name: str, filename: str) -> None:
    """Point torchvision's weight enum ``name`` at ``filename`` under its download prefix."""
    from torchvision.models import get_weight

    monkeypatch.setattr(get_weight(name).value, "url", "https://download.pytorch.org/models/" + filename)


# ------------------------------------------------------------------------------------------------ names
def test_detectron2_names_resolve_as_detectron2_does():
    assert DETECTRON2_URL_PREFIX == "https://dl.fbaipublicfiles.com/detectron2/"
    assert (
        detectron2_url("ImageNetPretrained/MSRA/R-50.pkl", env={})
        == "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    )
    name = "COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
    assert detectron2_url(name, env={}) == DETECTRON2_URL_PREFIX + name
    assert detectron2_url("COCO-Detection/faster_rcnn_R_50_FPN_3x", env={}) == DETECTRON2_URL_PREFIX + name
    assert detectron2_url("COCO-Detection/retinanet_R_50_FPN_3x", env={}).endswith(
        "retinanet_R_50_FPN_3x/190397829/model_final_5bd44e.pkl"
    )
    assert (
        detectron2_url("ImageNetPretrained/MSRA/R-101.pkl", env={"MEDDET_DETECTRON2_URL_PREFIX": "http://m/"})
        == "http://m/ImageNetPretrained/MSRA/R-101.pkl"
    )


def test_auto_engine_follows_the_source():
    from meddet.modeling.build import resolve_engine

    assert resolve_engine("auto", "torchvision://ResNet50_Weights.IMAGENET1K_V2") == "torchvision"
    if importlib.util.find_spec("detectron2") is None:  # detectron2 weights, converted for the torchvision engine
        assert resolve_engine("auto", "detectron2://ImageNetPretrained/MSRA/R-50.pkl") == "torchvision"


def test_cache_folder_follows_the_environment(tmp_path):
    assert cache_dir({"MEDDET_CACHE": str(tmp_path / "c")}) == tmp_path / "c"
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "meddet"
    assert cache_dir({}) == Path.home() / ".cache" / "meddet"


def test_bundle_folder_is_its_weights(tmp_path, env):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "model.pth").write_bytes(b"x")
    assert resolve_weights(str(tmp_path / "bundle")).path == tmp_path / "bundle" / "model.pth"


# ------------------------------------------------------------------------------------------------ schemes
def test_detectron2_scheme_gives_the_model_of_the_same_file_from_disk(tmp_path, env, server):
    cfg = _cfg("INPUT.FORMAT", "BGR", "MODEL.ROI_HEADS.NUM_CLASSES", 3)
    source = _model(cfg, seed=1)
    data = _d2_pkl(source, cfg)
    name = "COCO-Detection/tiny_R_18_FPN/1/model_final_abc123.pkl"
    server.files["/detectron2/" + name] = data
    (tmp_path / "model_final_abc123.pkl").write_bytes(data)

    from_zoo, from_disk = _model(cfg), _model(cfg)
    load_model_weights(from_zoo, f"detectron2://{name}")
    load_model_weights(from_disk, tmp_path / "model_final_abc123.pkl")
    _same(_predict(from_zoo), _predict(source))
    _same(_predict(from_disk), _predict(source))

    cached = env / "detectron2" / name
    assert cached.read_bytes() == data
    assert cached.with_name(cached.name + ".sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    n = len(server.requests)
    load_model_weights(_model(cfg), f"detectron2://{name}")  # downloaded once
    assert len(server.requests) == n


def test_url_and_hub_give_the_model_of_the_same_file_from_disk(tmp_path, env, server, monkeypatch):
    from hf_standin import HubStandIn

    cfg = _cfg()
    source = _model(cfg, seed=2)
    path = save_checkpoint(tmp_path / "bundle" / "model.pth", source)
    server.files["/runs/model_final.pth"] = path.read_bytes()
    reference = _predict(source)

    from_url = _model(cfg)
    load_model_weights(from_url, server.url + "/runs/model_final.pth")
    _same(_predict(from_url), reference)
    assert (env / "url").rglob("model_final.pth")

    with HubStandIn(token="hf_test") as hub:
        sha = "1" * 40
        hub.repos["org/tiny"] = {
            "private": False,
            "refs": {"main": sha},
            "commits": {sha: {"model.pth": path.read_bytes()}},
        }
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        for spec in ("hf://org/tiny/model.pth", "hf://org/tiny@main", "hf://org/tiny"):
            from_hub = _model(cfg)
            load_model_weights(from_hub, spec)
            _same(_predict(from_hub), reference)
        hub.repos["org/private"] = {
            "private": True,
            "refs": {"main": sha},
            "commits": {sha: {"model.pth": path.read_bytes()}},
        }
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")  # not the token of whoever runs the tests
        with pytest.raises(ModelError, match="HF_TOKEN") as e:
            load_model_weights(_model(cfg), "hf://org/private/model.pth")
        assert "\n" not in str(e.value)
        monkeypatch.setenv("HF_TOKEN", "hf_test")  # huggingface_hub's own token handling
        monkeypatch.delenv("HF_HUB_DISABLE_IMPLICIT_TOKEN")
        from_private = _model(cfg)
        load_model_weights(from_private, "hf://org/private/model.pth")
        _same(_predict(from_private), reference)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub's cache serves it offline
        load_model_weights(_model(cfg), "hf://org/tiny/model.pth")
        with pytest.raises(ModelError, match="HF_HUB_OFFLINE") as e:
            load_model_weights(_model(cfg), "hf://org/other/model.pth")
        assert "\n" not in str(e.value)

    from_bundle = _model(cfg)
    load_model_weights(from_bundle, tmp_path / "bundle")
    _same(_predict(from_bundle), reference)


def test_torchvision_backbone_fills_the_backbone_and_says_what_stays_random(tmp_path, env, server, monkeypatch, caplog):
    from torchvision.models import resnet18

    torch.manual_seed(seeded(4))
    resnet = resnet18().state_dict()
    data = _torch_bytes(resnet)
    filename = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files["/models/" + filename] = data
    (tmp_path / filename).write_bytes(data)
    _tv_url(monkeypatch, "ResNet18_Weights.IMAGENET1K_V1", filename)

    cfg = _cfg("MODEL.PIXEL_STD", TV_STD, "MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53], "INPUT.FORMAT", "RGB")
    with caplog.at_level(logging.WARNING):
        model = _model(cfg, seed=5)
        load_model_weights(model, "torchvision://ResNet18_Weights.IMAGENET1K_V1")
    state = model.state_dict()
    for key, value in resnet.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(state["backbone.body." + key], value)
    assert "random" in caplog.text and "rpn" in caplog.text and "roi_heads" in caplog.text
    assert (env / "torchvision" / filename).is_file()

    from_disk = _model(cfg, seed=5)
    load_model_weights(from_disk, tmp_path / filename)
    _same(_predict(from_disk), _predict(model))

    wrong = _model(_cfg())  # the small config's pixel std is not torchvision's (BGR order: reversed)
    with pytest.raises(ConfigError, match=r"MODEL.PIXEL_STD \[57.375, 57.12, 58.395\] \(in BGR order"):
        load_model_weights(wrong, "torchvision://ResNet18_Weights.IMAGENET1K_V1")


def test_torchvision_detector_with_old_names_loads_whole(tmp_path, env, server, monkeypatch):
    cfg = _cfg("MODEL.PIXEL_STD", TV_STD, "INPUT.FORMAT", "RGB")
    source = _model(cfg, seed=6)
    state = {k.replace("rpn.head.conv.0.0.", "rpn.head.conv."): v for k, v in source.state_dict().items()}
    data = _torch_bytes(state)  # torchvision's v1 detector file: RPN conv under its old name
    filename = f"fasterrcnn_resnet50_fpn_coco-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files["/models/" + filename] = data
    _tv_url(monkeypatch, "FasterRCNN_ResNet50_FPN_Weights.COCO_V1", filename)
    model = _model(cfg)
    meta = load_model_weights(model, "torchvision://FasterRCNN_ResNet50_FPN_Weights.COCO_V1")
    assert meta["pretrained_part"] == "detector"
    _same(_predict(model), _predict(source))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_torchvision_detectors_have_the_names_and_shapes_of_a_meddet_config(version):
    """torchvision's own Faster R-CNN R50-FPN (v1: two-FC head; v2: BN convs + FC head, two RPN convs) is a
    meddet torchvision-engine model of the matching config, tensor for tensor (so its COCO weights load whole)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2

    from meddet.modeling.weights_source import _from_torchvision

    opts = [
        "MODEL.RESNETS.DEPTH",
        50,
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        256,
        "MODEL.RESNETS.STRIDE_IN_1X1",
        False,
        "MODEL.FPN.OUT_CHANNELS",
        256,
        "MODEL.ROI_BOX_HEAD.FC_DIM",
        1024,
        "MODEL.ROI_HEADS.NUM_CLASSES",
        90,
    ]
    if version == "v2":
        opts += [
            "MODEL.FPN.NORM",
            "BN",
            "MODEL.RPN.CONV_DIMS",
            [-1, -1],
            "MODEL.ROI_BOX_HEAD.NUM_CONV",
            4,
            "MODEL.ROI_BOX_HEAD.NUM_FC",
            1,
            "MODEL.ROI_BOX_HEAD.NORM",
            "BN",
        ]
        theirs = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    else:
        theirs = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    ours = build_model(_cfg(*opts)).state_dict()
    mapped = _from_torchvision(theirs.state_dict())
    shapes = {k: tuple(v.shape) for k, v in mapped.items() if not k.endswith("num_batches_tracked")}
    assert shapes == {k: tuple(v.shape) for k, v in ours.items() if not k.endswith("num_batches_tracked")}


# ------------------------------------------------------------------------------------------------ cache
def test_wrong_hash_is_refused_and_nothing_is_cached(env, server, monkeypatch):
    data = _torch_bytes({"conv1.weight": torch.zeros(1)})
    filename = "resnet18-deadbeef.pth"
    server.files["/models/" + filename] = data
    _tv_url(monkeypatch, "ResNet18_Weights.IMAGENET1K_V1", filename)
    with pytest.raises(ModelError, match="refused"):
        resolve_weights("torchvision://ResNet18_Weights.IMAGENET1K_V1")
    assert [f.name for f in (env / "torchvision").iterdir() if f.suffix != ".lock"] == []


@pytest.mark.parametrize("ranges", [True, False], ids=["resumes", "restarts"])
def test_download_cut_half_way_leaves_nothing_usable_and_the_next_call_succeeds(env, server, ranges):
    data = np.random.default_rng(0).bytes(3 << 20)
    name = "ImageNetPretrained/test/blob.pkl"
    server.files["/detectron2/" + name] = data
    server.cut.add("/detectron2/" + name)
    server.ranges = ranges
    with pytest.raises(ModelError, match="run again to resume") as e:
        resolve_weights(f"detectron2://{name}")
    assert "\n" not in str(e.value)
    cached = env / "detectron2" / name
    assert not cached.exists()
    part = cached.with_name(cached.name + ".part")
    assert 0 < part.stat().st_size < len(data)

    assert resolve_weights(f"detectron2://{name}").path.read_bytes() == data
    assert not part.exists()
    assert server.requests[-1][1] == f"bytes={len(data) // 2}-"


def test_a_changed_file_is_warned_about(env, server, caplog):
    name = "ImageNetPretrained/test/changing.pkl"
    server.files["/detectron2/" + name] = b"first"
    path = resolve_weights(f"detectron2://{name}").path
    path.unlink()  # a later re-download finds other bytes under the same name
    server.files["/detectron2/" + name] = b"second"
    with caplog.at_level(logging.WARNING):
        resolve_weights(f"detectron2://{name}")
    assert "differs from the one recorded" in caplog.text


# ------------------------------------------------------------------------------------------------ offline
@pytest.mark.parametrize("variable", ["MEDDET_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_uses_the_cache_or_fails_with_one_line(env, server, monkeypatch, variable):
    name = "ImageNetPretrained/MSRA/R-50.pkl"
    server.files["/detectron2/" + name] = b"weights"
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ModelError) as e:
        resolve_weights(f"detectron2://{name}")
    message = str(e.value)
    assert "\n" not in message
    assert server.url + "/detectron2/" + name in message
    assert str(env / "detectron2" / name) in message
    assert "MEDDET_OFFLINE" in message and "MEDDET_CACHE" in message
    assert server.requests == []

    monkeypatch.delenv(variable)
    resolve_weights(f"detectron2://{name}")
    monkeypatch.setenv(variable, "1")
    n = len(server.requests)
    assert resolve_weights(f"detectron2://{name}").path.read_bytes() == b"weights"
    assert len(server.requests) == n


def test_no_network_is_the_same_one_line(env, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MEDDET_DETECTRON2_URL_PREFIX", f"http://127.0.0.1:{port}/")
    with pytest.raises(ModelError, match="cannot be reached") as e:
        resolve_weights("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert "\n" not in str(e.value) and "ImageNetPretrained/MSRA/R-50.pkl" in str(e.value)


# ------------------------------------------------------------------------------------------------ semantics
def _caffe2_backbone(model) -> dict[str, np.ndarray]:
    """The model's ResNet as Caffe2 ImageNet blobs (res2_0_branch2a_w, ..._bn_s/_bn_b: no statistics)."""
    blobs = {}
    for key, value in model.backbone.body.state_dict().items():
        if "running" in key or "num_batches" in key:
            continue
        k = key.replace("bn1.", "res_conv1_bn.") if key.startswith("bn1.") else key
        k = k.replace("conv1.weight", "conv1_w") if k == "conv1.weight" else k
        m = __import__("re").match(r"layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)?\.?(weight|bias)$", k)
        if m:
            stage, block, kind, idx, leaf = m.groups()
            branch = {"1": "2a", "2": "2b", "3": "2c"}.get(idx, "1") if kind != "downsample." else "1"
            if kind == "downsample.":
                suffix = "_w" if idx == "0" else ("_bn_s" if leaf == "weight" else "_bn_b")
            else:
                suffix = "_w" if kind == "conv" else ("_bn_s" if leaf == "weight" else "_bn_b")
            k = f"res{int(stage) + 1}_{block}_branch{branch}{suffix}"
        elif k.startswith("res_conv1_bn."):
            k = "res_conv1_bn_s" if k.endswith("weight") else "res_conv1_bn_b"
        blobs[k] = value.numpy().copy()
    blobs["fc1000_w"] = np.zeros((10, 512), np.float32)
    return blobs


def test_msra_backbone_initialises_the_backbone_frozen_as_detectron2(env, server, caplog):
    cfg = _cfg(
        "INPUT.FORMAT",
        "BGR",
        "MODEL.PIXEL_STD",
        [1.0, 1.0, 1.0],
        "MODEL.RESNETS.NORM",
        "FrozenBN",
        "MODEL.BACKBONE.FREEZE_AT",
        2,
    )
    source = _model(cfg, seed=7)
    server.files["/detectron2/ImageNetPretrained/MSRA/R-50.pkl"] = pickle.dumps(_caffe2_backbone(source))
    model = _model(cfg, seed=8)
    with caplog.at_level(logging.WARNING):
        meta = load_model_weights(model, "detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert meta["pretrained_part"] == "backbone"
    assert "random" in caplog.text
    got, want = model.backbone.body.state_dict(), source.backbone.body.state_dict()
    torch.testing.assert_close(got["conv1.weight"], want["conv1.weight"].flip(1))  # BGR weights, RGB network
    torch.testing.assert_close(got["layer3.1.conv2.weight"], want["layer3.1.conv2.weight"])
    assert torch.all(got["bn1.running_var"] == 1) and torch.all(got["layer1.0.bn1.running_mean"] == 0)
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())  # FREEZE_AT 2
    assert all(p.requires_grad for p in model.backbone.body.layer2.parameters())

    from meddet.inference import Predictor

    with pytest.raises(ConfigError, match="only a pretrained backbone"):  # no random detector to predict with
        Predictor(cfg, weights="detectron2://ImageNetPretrained/MSRA/R-50.pkl")


def test_msra_checkpoint_with_an_rgb_config_is_refused_with_the_keys_to_set(env, server):
    server.files["/detectron2/ImageNetPretrained/MSRA/R-50.pkl"] = pickle.dumps(
        {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res_conv1_bn_s": np.ones(64, np.float32)}
    )
    cfg = _cfg(
        "MODEL.RESNETS.DEPTH",
        50,
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        256,
        "INPUT.FORMAT",
        "RGB",
        "MODEL.RESNETS.STRIDE_IN_1X1",
        False,
    )
    with pytest.raises(ConfigError) as e:
        load_model_weights(_model(cfg), "detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    message = str(e.value)
    for fix in ("INPUT.FORMAT BGR", "MODEL.PIXEL_STD [1.0, 1.0, 1.0]", "MODEL.RESNETS.STRIDE_IN_1X1 True"):
        assert fix in message


def test_coco_detector_loads_all_but_the_predictor_for_other_classes(tmp_path, env, caplog):
    coco = _cfg("INPUT.FORMAT", "BGR", "MODEL.ROI_HEADS.NUM_CLASSES", 5)
    source = _model(coco, seed=9)
    (tmp_path / "coco.pkl").write_bytes(_d2_pkl(source, coco))
    model = _model(_cfg("INPUT.FORMAT", "BGR", "MODEL.ROI_HEADS.NUM_CLASSES", 2))
    with caplog.at_level(logging.WARNING):
        load_model_weights(model, tmp_path / "coco.pkl")
    assert "re-initialising the class layer (roi_heads.box_predictor)" in caplog.text
    got, want = model.state_dict(), source.state_dict()
    torch.testing.assert_close(got["roi_heads.box_head.fc6.weight"], want["roi_heads.box_head.fc6.weight"])
    fpn = "backbone.fpn.layer_blocks.0.0.weight"
    torch.testing.assert_close(got[fpn], want[fpn])
    assert got["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize(
    "name", ["mammo_faster_rcnn_R50_FPN_coco", "mammo_faster_rcnn_R50_FPN_imagenet", "cyto_faster_rcnn_R50_FPN_coco"]
)
def test_pretrained_configs_fit_their_checkpoints(name):
    """Each recipe's model has the checkpoint's conventions and, for the COCO ones, the COCO R50-FPN's
    shapes (so the real model_final_280758.pkl fills everything but the box predictor)."""
    from meddet.config import load_config
    from meddet.modeling.weights_source import MSRA, WeightsSource, _tv_names, check_conventions, conventions_of

    # the torchvision engine's layout (with detectron2 installed, `auto` would pick detectron2 for a zoo name)
    cfg = load_config(
        Path(__file__).parents[1] / "configs" / f"{name}.yaml", ["MODEL.DEVICE", "cpu", "MODEL.ENGINE", "torchvision"]
    )
    spec = cfg.MODEL.WEIGHTS
    assert spec.startswith("detectron2://")
    model = build_model(cfg)
    source = WeightsSource(spec, Path("x.pkl"), "detectron2", url=detectron2_url(spec[len("detectron2://") :], env={}))
    assert conventions_of(source, "detectron2") is MSRA
    check_conventions(model, MSRA, spec)  # no ConfigError
    assert model.backbone.body.layer1[0].bn1.__class__.__name__ == "FrozenBatchNorm2d"
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())
    names = _tv_names(model)
    weights = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(names.values()) == sorted(weights)  # every tensor has its detectron2 name
    if "coco" in name:
        state = model.state_dict()
        assert tuple(state["backbone.fpn.layer_blocks.0.0.weight"].shape) == (256, 256, 3, 3)
        assert tuple(state["roi_heads.box_head.fc6.weight"].shape) == (1024, 256 * 7 * 7)
        assert tuple(state["rpn.head.cls_logits.weight"].shape) == (3, 256, 1, 1)


@pytest.mark.detectron2
@pytest.mark.skipif(
    importlib.util.find_spec("detectron2") is None,
    reason="detectron2 is not installed (build it from source to run these tests)",
)
def test_detectron2_engine_loads_a_zoo_name_as_the_same_file_from_disk(tmp_path, env, server):
    cfg = small_model_cfg("detectron2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.ROI_HEADS.NUM_CLASSES", 3)
    source = _model(cfg, seed=1)
    data = pickle.dumps(
        {"model": {k: v.numpy() for k, v in source.state_dict().items()}, "__author__": "Detectron2 Model Zoo"}
    )
    name = "COCO-Detection/tiny_R_18_FPN/1/model_final_abc123.pkl"
    server.files["/detectron2/" + name] = data
    (tmp_path / "model_final_abc123.pkl").write_bytes(data)
    from_zoo, from_disk = _model(cfg), _model(cfg)
    load_model_weights(from_zoo, f"detectron2://{name}", cfg)
    load_model_weights(from_disk, tmp_path / "model_final_abc123.pkl", cfg)
    _same(_predict(from_zoo), _predict(source))
    _same(_predict(from_disk), _predict(source))
