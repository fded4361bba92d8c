"""Model summary like the one YOLO prints: layers, parameters, trainable parameters and GFLOPs.

GFLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass at the configured
test input size, and reported as multiply-adds (FlopCounterMode's count / 2), the convention of
detectron2/fvcore and Ultralytics: a torchvision ResNet-50 classifier at 224x224 is 4.1 "GFLOPs".
For a detector the count depends on the number of proposals the RPN keeps (``MODEL.RPN.POST_NMS_TOPK_TEST``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from yacs.config import CfgNode

from meddet.errors import ModelError

logger = logging.getLogger(__name__)

__all__ = ["ModelSummary", "model_summary"]


@dataclass(frozen=True)
class ModelSummary:
    """``layers``: modules without children (convolutions, norms, activations, ...); ``gflops``: giga
    multiply-adds of one forward pass at ``input_size`` (height, width)."""

    name: str
    layers: int
    parameters: int
    trainable_parameters: int
    gflops: float
    input_size: tuple[int, int]

    def __str__(self) -> str:
        h, w = self.input_size
        return (
            f"{self.name} summary: {self.layers} layers, {self.parameters:,} parameters, "
            f"{self.trainable_parameters:,} trainable, {self.gflops:.1f} GFLOPs at {h}x{w} "
            "(multiply-adds, as detectron2/fvcore and YOLO count them)"
        )


def _input_size(cfg: CfgNode | None, input_size: tuple[int, int] | None) -> tuple[int, int]:
    if input_size is not None:
        h, w = (int(v) for v in input_size)
    elif cfg is not None:
        side = int(cfg.INPUT.MIN_SIZE_TEST)
        h = w = min(side, int(cfg.INPUT.MAX_SIZE_TEST))
    else:
        h = w = 224
    if h < 1 or w < 1:
        raise ModelError(f"model summary input size: {h}x{w}; expected positive height and width (INPUT.MIN_SIZE_TEST)")
    return h, w


def model_summary(
    model: nn.Module, cfg: CfgNode | None = None, input_size: tuple[int, int] | None = None
) -> ModelSummary:
    """Summarise `model`. The input is ``input_size`` (height, width) when given, else a square of
    ``INPUT.MIN_SIZE_TEST`` (capped at ``INPUT.MAX_SIZE_TEST``) from `cfg`, else 224x224.

    A meddet detector (it has an ``engine`` attribute) gets a one-image batch in its model interface;
    any other module a ``(1, 3, H, W)`` tensor. The model runs in eval mode without gradients and is
    put back in the mode it was in."""
    h, w = _input_size(cfg, input_size)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    layers = sum(1 for m in model.modules() if not list(m.children()))
    is_detector = hasattr(model, "engine")
    image = torch.full((3, h, w), 128.0, device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            if is_detector:
                model([{"image": image, "height": h, "width": w}])
            else:
                model(image[None] / 255.0)
    except RuntimeError as e:
        raise ModelError(f"model summary: the forward pass at {h}x{w} failed ({e})") from e
    finally:
        model.train(was_training)
    name = type(model).__name__
    summary = ModelSummary(name, layers, total, trainable, counter.get_total_flops() / 2 / 1e9, (h, w))
    logger.debug("%s", summary)
    return summary
