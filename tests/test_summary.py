"""Model summary: a correct FLOP counter (ResNet-50 = 4.1 GMACs) and the detector's numbers."""

from __future__ import annotations

import pytest
import torch
import torchvision

from meddet.errors import ModelError
from meddet.modeling.summary import model_summary


def test_resnet50_classifier_counts_4_1_gflops():
    s = model_summary(torchvision.models.resnet50(), input_size=(224, 224))
    assert s.gflops == pytest.approx(4.11, rel=0.05)  # multiply-adds, as fvcore/YOLO report it
    assert s.parameters == 25_557_032 == s.trainable_parameters
    assert "4.1 GFLOPs at 224x224" in str(s)


def test_detector_summary_at_configured_size(tiny_cfg):
    from meddet.modeling import build_model

    model = build_model(tiny_cfg)
    model.backbone.body.conv1.weight.requires_grad_(False)
    model.train()
    s = model_summary(model, tiny_cfg)
    assert s.input_size == (96, 96)
    assert s.parameters == sum(p.numel() for p in model.parameters())
    assert s.trainable_parameters == s.parameters - model.backbone.body.conv1.weight.numel()
    assert s.layers > 20 and s.gflops > 0
    assert model.training, "the summary must leave the model in the mode it found it"
    bigger = model_summary(model, tiny_cfg, input_size=(192, 192))
    assert bigger.gflops > 2.5 * s.gflops  # the backbone scales with the pixel count


def test_bad_input_size_is_refused():
    with pytest.raises(ModelError, match="input size"):
        model_summary(torch.nn.Conv2d(3, 4, 3), input_size=(0, 10))
