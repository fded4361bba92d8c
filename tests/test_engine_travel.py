"""The engine travels with the weights (issue 20): every checkpoint says which engine and architecture made it,
``MODEL.ENGINE auto`` follows the checkpoint, the other engine's weights are converted exactly on loading, and
a load that would leave a model partly random is refused with the likely cause.

detectron2 is not needed: its checkpoints are simulated with the exact converter (detectron2's names and
layout), and a detectron2-engine model by a module with detectron2's parameter names.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
import yaml
from bundle_fixture import shared_run
from conftest import small_model_cfg
from torch import nn

from meddet.errors import ModelError
from meddet.modeling import build as build_module
from meddet.modeling import build_model, load_checkpoint_for_resume, load_model_weights, save_checkpoint
from meddet.modeling.build import resolve_engine
from meddet.modeling.checkpoint import check_loaded, checkpoint_engine, infer_engine
from meddet.modeling.d2_convert import tv_to_d2_state_dict


def cfg_of(*opts):
    return small_model_cfg("torchvision", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, *opts)


def tv_model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg_of(*opts))


def image(h=64, w=96, seed=5):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def detect(model):
    model.eval()
    with torch.no_grad():
        return model([{"image": image(), "height": 64, "width": 96}])[0]


def same_detections(a, b):
    assert len(a["boxes"]) > 0
    for k in ("boxes", "scores", "classes"):
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4), k


@pytest.fixture
def detectron2_importable(monkeypatch):
    """A machine where MODEL.ENGINE auto would pick detectron2 (without importing it)."""
    monkeypatch.setattr(build_module, "detectron2_available", lambda: True)
    monkeypatch.setattr(build_module, "_detectron2_import_error", lambda: None)


@pytest.fixture
def detectron2_absent(monkeypatch):
    monkeypatch.setattr(build_module, "detectron2_available", lambda: False)


class FakeDetectron2Model(nn.Module):
    """Stands in for a detectron2-engine model: its parameters have detectron2's names and shapes."""

    engine = "detectron2"

    def __init__(self, names_and_shapes):
        super().__init__()
        for name, shape in names_and_shapes.items():
            *path, leaf = name.split(".")
            module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, nn.Module())
                module = module._modules[part]
            module.register_parameter(leaf, nn.Parameter(torch.full(shape, float("nan"))))


def d2_twin(model, cfg):
    state = tv_to_d2_state_dict(model.state_dict(), cfg)
    return state, FakeDetectron2Model({k: v.shape for k, v in state.items()})


# ------------------------------------------------------------------------------------- engine resolution
def test_engine_is_read_from_metadata_else_from_parameter_names(tmp_path):
    model = tv_model()
    cfg = cfg_of()
    assert checkpoint_engine(save_checkpoint(tmp_path / "m.pth", model)) == "torchvision"
    torch.save(model.state_dict(), tmp_path / "bare.pth")  # an old checkpoint / bare state dict: no metadata
    assert checkpoint_engine(tmp_path / "bare.pth") == "torchvision"
    torch.save({"model": tv_to_d2_state_dict(model.state_dict(), cfg), "__author__": "x"}, tmp_path / "d2.pth")
    assert checkpoint_engine(tmp_path / "d2.pth") == "detectron2"
    assert infer_engine(["backbone.body.conv1.weight"]) == "torchvision"
    assert infer_engine(["backbone.bottom_up.stem.conv1.weight"]) == "detectron2"
    assert infer_engine(["fc.weight"]) is None
    assert checkpoint_engine(tmp_path / "nowhere.pth") is None


def test_auto_means_the_checkpoints_engine(tmp_path, detectron2_importable):
    model = tv_model()
    torch.save({"model": model.state_dict()}, tmp_path / "old_bundle_model.pth")  # no engine field
    saved = save_checkpoint(tmp_path / "model_final.pth", model)
    assert resolve_engine("auto", saved) == "torchvision"
    assert resolve_engine("auto", tmp_path / "old_bundle_model.pth") == "torchvision"
    torch.save({"model": tv_to_d2_state_dict(model.state_dict(), cfg_of())}, tmp_path / "d2.pth")
    assert resolve_engine("auto", tmp_path / "d2.pth") == "detectron2"
    assert resolve_engine("auto") == "detectron2"  # no checkpoint: detectron2 where it imports


def test_detectron2_weights_where_detectron2_is_absent_get_the_torchvision_engine(tmp_path, detectron2_absent, caplog):
    torch.save({"model": tv_to_d2_state_dict(tv_model().state_dict(), cfg_of())}, tmp_path / "d2.pth")
    with caplog.at_level(logging.WARNING, logger="meddet.modeling.build"):
        assert resolve_engine("auto", tmp_path / "d2.pth") == "torchvision"
        # a run trained on detectron2 (config.yaml says so) still evaluates where detectron2 is gone
        assert resolve_engine("detectron2", tmp_path / "d2.pth") == "torchvision"
    assert "detectron2 is not installed" in caplog.text and "converted on loading" in caplog.text


# ------------------------------------------------------------------------------------- the silent-random case
def _old_style_bundle(tmp_path):
    """A bundle as exported before issue 20 where detectron2 was absent: model.pth holds only {'model': ...},
    config.yaml says MODEL.ENGINE auto, meddet.json says torchvision."""
    src = shared_run(_factory(tmp_path))[1]
    bundle = tmp_path / "old_bundle"
    shutil.copytree(src, bundle)
    weights = torch.load(bundle / "model.pth", weights_only=True)
    torch.save({"model": weights["model"]}, bundle / "model.pth")
    cfg = yaml.safe_load((bundle / "config.yaml").read_text())
    cfg["MODEL"]["ENGINE"] = "auto"
    (bundle / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert json.loads((bundle / "meddet.json").read_text())["engine"] == "torchvision"
    return bundle


class _factory:
    """A minimal stand-in for pytest's tmp_path_factory (shared_run only calls mktemp)."""

    def __init__(self, root):
        self.root = root

    def mktemp(self, name):
        path = self.root / name
        path.mkdir()
        return path


def test_torchvision_bundle_where_detectron2_would_be_chosen_loads_its_own_model(tmp_path, monkeypatch):
    import numpy as np

    from meddet.hub import from_pretrained

    bundle = _old_style_bundle(tmp_path)
    rng = np.random.default_rng(3)
    img = rng.integers(0, 40, (96, 112), dtype=np.uint8)
    img[20:50, 30:60] = 220
    reference = from_pretrained(bundle, device="cpu")(img)
    monkeypatch.setattr(build_module, "detectron2_available", lambda: True)
    monkeypatch.setattr(build_module, "_detectron2_import_error", lambda: None)
    assert resolve_engine("auto") == "detectron2"  # what auto alone would build: the silent-random case
    loaded = from_pretrained(bundle, device="cpu")
    assert loaded.model.engine == "torchvision" and loaded.cfg.MODEL.ENGINE == "torchvision"
    out = loaded(img)
    assert len(out["scores"]) > 0
    np.testing.assert_array_equal(out["boxes"], reference["boxes"])
    np.testing.assert_array_equal(out["scores"], reference["scores"])


def test_torchvision_weights_into_a_detectron2_model_are_converted_or_refused(tmp_path, caplog):
    """Forced into the detectron2 engine (MODEL.ENGINE detectron2), torchvision weights are converted
    exactly; without the config to convert with, the load is refused with the command that converts."""
    model, cfg = tv_model(), cfg_of()
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")  # no engine field: names tell
    expected, d2_model = d2_twin(model, cfg)
    with pytest.raises(ModelError) as e:
        load_model_weights(d2_model, tmp_path / "model.pth")
    msg = str(e.value)
    assert "torchvision-engine weights" in msg and "-c convert-weights" in msg and "--direction tv-to-d2" in msg
    assert all(torch.isnan(p).all() for p in d2_model.parameters())  # nothing half-loaded
    with caplog.at_level(logging.WARNING, logger="meddet.modeling.build"):
        load_model_weights(d2_model, tmp_path / "model.pth", cfg)
        load_model_weights(d2_model, tmp_path / "model.pth", cfg)
    assert caplog.text.count("converted on the fly") == 1  # said once
    loaded = d2_model.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_detectron2_weights_into_the_torchvision_engine_give_the_same_detections(tmp_path, caplog):
    model, cfg = tv_model(), cfg_of()
    reference = detect(model)
    d2 = {"model": tv_to_d2_state_dict(model.state_dict(), cfg), "__author__": "detectron2", "iteration": 9}
    torch.save(d2, tmp_path / "d2_model_final.pth")
    fresh = tv_model(seed=11)
    with caplog.at_level(logging.WARNING, logger="meddet.modeling.build"):
        meta = load_model_weights(fresh, tmp_path / "d2_model_final.pth", cfg)
    assert "detectron2-engine weights converted on the fly for the torchvision engine" in caplog.text
    assert meta["converted_from"] == "detectron2"
    same_detections(reference, detect(fresh))

    # fine-tuning to another class count: everything but the predictor is loaded
    five = tv_model("MODEL.ROI_HEADS.NUM_CLASSES", 5, seed=3)
    load_model_weights(five, tmp_path / "d2_model_final.pth", cfg_of("MODEL.ROI_HEADS.NUM_CLASSES", 5))
    assert torch.equal(five.backbone.body.conv1.weight, model.backbone.body.conv1.weight)
    assert five.roi_heads.box_predictor.cls_score.out_features == 6

    # another architecture: refused with the conversion command, not loaded half-way
    deeper = tv_model("MODEL.RESNETS.DEPTH", 34)
    with pytest.raises(ModelError, match=r"converting them failed .*-c convert-weights .*--direction d2-to-tv"):
        load_model_weights(deeper, tmp_path / "d2_model_final.pth", cfg_of("MODEL.RESNETS.DEPTH", 34))


# ------------------------------------------------------------------------------------- strict loading
def test_other_architecture_is_named_as_the_likely_cause(tmp_path):
    path = save_checkpoint(tmp_path / "r18.pth", tv_model())
    with pytest.raises(ModelError) as e:
        load_model_weights(tv_model("MODEL.RESNETS.DEPTH", 34), path)
    msg = str(e.value)
    assert "missing keys" in msg and "another architecture" in msg and "MODEL.RESNETS.DEPTH 18 (model: 34)" in msg


def test_a_non_strict_load_must_fill_every_parameter():
    """detectron2's DetectionCheckpointer only warns about what it did not fill: check_loaded decides."""
    model, cfg = tv_model(), cfg_of()
    state, d2_model = d2_twin(model, cfg)
    names = list(state)
    predictor = [k for k in names if k.startswith("roi_heads.box_predictor.")]
    backbone = [k for k in names if k.startswith("backbone.bottom_up.")]
    assert check_loaded("m.pth", d2_model, {}, []) == "full"
    assert check_loaded("m.pth", d2_model, {}, predictor, predictor) == "class_change"
    heads = [k for k in names if k not in backbone]
    assert check_loaded("R-18.pkl", d2_model, {}, heads, allow_backbone_only=True) == "backbone"
    with pytest.raises(ModelError, match=r"missing keys .*backbone.bottom_up"):  # a torchvision file: nothing fits
        check_loaded("model.pth", d2_model, {}, names, allow_backbone_only=True)
    with pytest.raises(ModelError, match=r"30 missing keys \(backbone.fpn_lateral2"):  # heads: only if allowed
        check_loaded("m.pth", d2_model, {}, heads)
    with pytest.raises(ModelError, match="6 missing keys"):  # the predictor missing without a shape change
        check_loaded("m.pth", d2_model, {}, predictor + backbone[:2])


def test_resume_needs_the_engine_that_trained_the_run(tmp_path):
    model = tv_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    path = save_checkpoint(tmp_path / "model_0000009.pth", model, opt, sched, iteration=9)
    ckpt = torch.load(path, weights_only=True)
    ckpt["meddet"]["engine"] = "detectron2"
    torch.save(ckpt, path)
    with pytest.raises(ModelError, match="resuming needs the engine that trained the run"):
        load_checkpoint_for_resume(path, model, opt, sched)


# ------------------------------------------------------------------------------------- runs and bundles
def test_run_records_the_resolved_engine_and_checkpoints_their_architecture(tiny_cfg, detectron2_absent, caplog):
    from meddet.training import Trainer

    cfg = tiny_cfg.clone()
    cfg.merge_from_list(["MODEL.ENGINE", "auto", "SOLVER.MAX_ITER", 2, "SOLVER.CHECKPOINT_PERIOD", 1])
    with caplog.at_level(logging.INFO, logger="meddet.training.trainer"):
        Trainer(cfg).train()
    run = cfg.OUTPUT_DIR
    assert "Training torchvision from iteration 0" in caplog.text
    assert yaml.safe_load(open(f"{run}/config.yaml"))["MODEL"]["ENGINE"] == "torchvision"
    lines = [json.loads(line) for line in open(f"{run}/metrics.json")]
    # detectron2's training statistics are in metrics.json as in detectron2's runs
    assert {"fast_rcnn/cls_accuracy", "roi_head/num_fg_samples", "rpn/num_pos_anchors"} <= set(lines[-1])
    for name in ("model_0000000.pth", "model_final.pth"):
        meta = torch.load(f"{run}/{name}", weights_only=True)["meddet"]
        assert meta["engine"] == "torchvision", name
        assert meta["architecture"]["depth"] == 18 and meta["architecture"]["num_classes"] == 2, name


def test_export_writes_the_checkpoints_engine_not_the_environments(tmp_path, detectron2_importable):
    from meddet.hub import export_bundle

    run = tmp_path / "run"
    shutil.copytree(shared_run(_factory(tmp_path))[0], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["MODEL"]["ENGINE"] = "auto"  # a run from before engines were recorded
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    bundle = export_bundle(run, tmp_path / "bundle")
    assert json.loads((bundle / "meddet.json").read_text())["engine"] == "torchvision"
    assert yaml.safe_load((bundle / "config.yaml").read_text())["MODEL"]["ENGINE"] == "torchvision"
    assert torch.load(bundle / "model.pth", weights_only=True)["meddet"]["engine"] == "torchvision"
