"""build_model(cfg): pick the engine (MODEL.ENGINE), build the detector, put it on MODEL.DEVICE."""
from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import torch
from torch import nn
from yacs.config import CfgNode

from meddet.errors import EngineUnavailableError, ModelError
from meddet.modeling.torchvision_engine import ENGINE_NAME as TORCHVISION, build_torchvision_model

logger = logging.getLogger(__name__)

DETECTRON2 = "detectron2"
ENGINES = ("auto", TORCHVISION, DETECTRON2)
DETECTRON2_INSTALL_URL = "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
_BUILDERS: dict[str, Callable[[CfgNode], nn.Module]] = {TORCHVISION: build_torchvision_model}


def detectron2_available() -> bool:
    """Whether ``import detectron2`` can succeed (without importing it)."""
    return importlib.util.find_spec("detectron2") is not None


def resolve_auto_engine() -> str:
    """The engine ``MODEL.ENGINE auto`` means. The one place to change when meddet's detectron2 engine
    arrives: it will then prefer detectron2 when it is installed."""
    if detectron2_available():
        logger.info(
            "detectron2 is installed, but meddet's detectron2 engine is not available yet; using torchvision"
        )
    return TORCHVISION


def select_engine(requested: str) -> str:
    """Resolve MODEL.ENGINE to the engine that will be built (``torchvision`` for now).

    Raises EngineUnavailableError when detectron2 is requested but cannot be used."""
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
        raise EngineUnavailableError(
            "MODEL.ENGINE detectron2: detectron2 is installed, but this version of meddet has no detectron2 "
            "engine yet; use MODEL.ENGINE torchvision (or auto)"
        )
    logger.info("Model engine: %s", requested)
    return requested


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

    MODEL.WEIGHTS is not loaded here (as in detectron2); use meddet.modeling.load_weights.
    The model follows meddet's model interface (see TorchvisionRCNN) and has ``engine``, ``num_classes``,
    ``input_format`` and ``device`` attributes."""
    engine = select_engine(cfg.MODEL.ENGINE)
    device = resolve_device(cfg.MODEL.DEVICE)
    model = _BUILDERS[engine](cfg)
    model.to(device)
    logger.info("Model on %s", device)
    return model
