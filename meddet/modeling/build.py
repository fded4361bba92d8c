"""build_model(cfg): pick the engine (MODEL.ENGINE), build the detector, put it on MODEL.DEVICE."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from meddet.errors import EngineUnavailableError, ModelError
from meddet.modeling.checkpoint import load_weights
from meddet.modeling.torchvision_engine import ENGINE_NAME as TORCHVISION, build_torchvision_model

logger = logging.getLogger(__name__)

DETECTRON2 = "detectron2"
ENGINES = ("auto", TORCHVISION, DETECTRON2)
DETECTRON2_INSTALL_URL = "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
# Errors a broken detectron2 installation raises on import (missing or mismatched compiled ops, ...).
_IMPORT_ERRORS = (ImportError, OSError, RuntimeError, AttributeError)


def detectron2_available() -> bool:
    """Whether detectron2 is installed (found on the path, without importing it)."""
    return importlib.util.find_spec("detectron2") is not None


def _detectron2_import_error() -> str | None:
    """None when meddet's detectron2 engine imports, else why not (the import error, one line)."""
    try:
        importlib.import_module("meddet.modeling.d2_engine")
    except _IMPORT_ERRORS as e:
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0] if lines else 'no message'}"
    return None


def resolve_auto_engine() -> str:
    """The engine ``MODEL.ENGINE auto`` means: detectron2 when it is installed and imports, else
    torchvision (a log line says why)."""
    if not detectron2_available():
        logger.info("MODEL.ENGINE auto: detectron2 is not installed; using torchvision")
        return TORCHVISION
    reason = _detectron2_import_error()
    if reason is not None:
        logger.warning("MODEL.ENGINE auto: detectron2 is installed but cannot be imported (%s); using torchvision",
                       reason)
        return TORCHVISION
    return DETECTRON2


def select_engine(requested: str) -> str:
    """Resolve MODEL.ENGINE to the engine that will be built.

    Raises EngineUnavailableError when detectron2 is requested but is not installed or cannot be imported."""
    if requested not in ENGINES:
        raise ModelError(f"MODEL.ENGINE: {requested!r} is not an engine; expected one of {', '.join(ENGINES)}")
    if requested == "auto":
        engine = resolve_auto_engine()
        logger.info("Model engine: %s (MODEL.ENGINE auto)", engine)
        return engine
    if requested == DETECTRON2:
        if not detectron2_available():
            raise EngineUnavailableError(
                f"MODEL.ENGINE detectron2: detectron2 is not installed; install it following "
                f"{DETECTRON2_INSTALL_URL} or use MODEL.ENGINE torchvision"
            )
        reason = _detectron2_import_error()
        if reason is not None:
            raise EngineUnavailableError(
                f"MODEL.ENGINE detectron2: detectron2 is installed but cannot be imported ({reason}); reinstall "
                f"it following {DETECTRON2_INSTALL_URL} or use MODEL.ENGINE torchvision"
            )
    logger.info("Model engine: %s", requested)
    return requested


def _build_detectron2_model(cfg: CfgNode) -> nn.Module:
    from meddet.modeling.d2_engine import build_detectron2_model

    return build_detectron2_model(cfg)


_BUILDERS: dict[str, Callable[[CfgNode], nn.Module]] = {
    TORCHVISION: build_torchvision_model,
    DETECTRON2: _build_detectron2_model,
}


def load_model_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load ``MODEL.WEIGHTS`` into a model of either engine; returns the checkpoint's meddet metadata.

    torchvision engine: :func:`meddet.modeling.checkpoint.load_weights` (meddet checkpoints and state
    dicts, strict except for a class-count change). detectron2 engine: meddet checkpoints the same way,
    detectron2's own checkpoints (model-zoo ``.pkl``, ``model_final.pth``) through detectron2's
    ``DetectionCheckpointer`` (:func:`meddet.modeling.d2_engine.load_detectron2_weights`).
    ``path`` may also name a remote source (``detectron2://``, ``https://``, ``hf://``, ``torchvision://``):
    :mod:`meddet.modeling.weights_source` downloads it once into the cache and loads pretrained formats
    (model-zoo ``.pkl``, Caffe2/MSRA and torchvision backbones) with their meaning."""
    from meddet.modeling.weights_source import resolve_and_load

    path, pretrained = resolve_and_load(model, path)
    if pretrained is not None:
        return pretrained
    inner = model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
    if getattr(inner, "engine", None) == DETECTRON2:
        from meddet.modeling.d2_engine import load_detectron2_weights

        return load_detectron2_weights(inner, path)
    return load_weights(model, path)


def resolve_device(name: str) -> torch.device:
    """MODEL.DEVICE -> torch.device. ``auto``: cuda if available, else mps if available, else cpu.

    An explicitly requested device that is not available raises ModelError."""
    name = str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelError(f"MODEL.DEVICE: {name!r} is not a device; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError("MODEL.DEVICE: 'cuda' requested, but torch finds no CUDA device; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(
                f"MODEL.DEVICE: {name!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelError("MODEL.DEVICE: 'mps' requested, but torch finds no MPS device; use auto or cpu")
    elif device.type != "cpu":
        raise ModelError(f"MODEL.DEVICE: {name!r} is not supported; expected auto, cpu, cuda, cuda:N or mps")
    return device


def build_model(cfg: CfgNode) -> nn.Module:
    """Build the detector described by ``cfg`` with random weights, on ``resolve_device(cfg.MODEL.DEVICE)``.

    MODEL.WEIGHTS is not loaded here (as in detectron2); use :func:`load_model_weights`.
    The model follows meddet's model interface (see TorchvisionRCNN, Detectron2RCNN) and has ``engine``,
    ``num_classes``, ``input_format`` and ``device`` attributes."""
    engine = select_engine(cfg.MODEL.ENGINE)
    device = resolve_device(cfg.MODEL.DEVICE)
    if not cfg.MODEL.WEIGHTS and (cfg.MODEL.RESNETS.NORM == "FrozenBN" or cfg.MODEL.BACKBONE.FREEZE_AT > 0):
        logger.warning(
            "MODEL.WEIGHTS is empty (training from scratch) but MODEL.RESNETS.NORM is %s and "
            "MODEL.BACKBONE.FREEZE_AT is %d: frozen layers keep their random initialisation; "
            "from scratch use NORM BN or GN and FREEZE_AT 0",
            cfg.MODEL.RESNETS.NORM, cfg.MODEL.BACKBONE.FREEZE_AT,
        )
    model = _BUILDERS[engine](cfg)
    model.to(device)
    logger.info("Model on %s", device)
    return model
