"""Models: build_model(cfg) for each engine (torchvision; detectron2 where installed) and checkpoints."""

from meddet.modeling.build import build_model, load_model_weights, resolve_device, resolve_engine, select_engine
from meddet.modeling.checkpoint import checkpoint_engine, load_checkpoint_for_resume, load_weights, save_checkpoint
from meddet.modeling.d2_convert import convert_checkpoint

__all__ = [
    "build_model",
    "resolve_device",
    "select_engine",
    "resolve_engine",
    "checkpoint_engine",
    "save_checkpoint",
    "load_weights",
    "load_model_weights",
    "load_checkpoint_for_resume",
    "convert_checkpoint",
]
