"""build_model(cfg): pick the engine (MODEL.ENGINE), build the detector, put it on MODEL.DEVICE.

The engine travels with the weights: ``MODEL.ENGINE auto`` means the engine of the checkpoint the model
will load when it says (its ``meddet`` entry, else its parameter names), else detectron2 when it imports,
else torchvision (:func:`resolve_engine`). A checkpoint of the other engine is converted on loading
(:func:`load_model_weights`, the exact conversion of :mod:`meddet.modeling.d2_convert`), with one warning.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from yacs.config import CfgNode

from meddet.errors import EngineUnavailableError, MeddetError, ModelError
from meddet.modeling.checkpoint import (
    CONVERT_COMMAND,
    RETINANET_CLS_PREFIXES,
    checkpoint_engine,
    load_model_state,
    load_weights,
    read_checkpoint,
    unwrap_model,
)
from meddet.modeling.d2_convert import d2_to_tv_state_dict, load_d2_state_dict, tv_to_d2_state_dict
from meddet.modeling.retinanet import build_torchvision_retinanet
from meddet.modeling.torchvision_engine import ENGINE_NAME as TORCHVISION
from meddet.modeling.torchvision_engine import build_torchvision_model
from meddet.modeling.weights_source import is_remote, resolve_and_load, source_engine

if TYPE_CHECKING:
    from meddet.modeling.d2_engine import Detectron2RCNN

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
        logger.warning(
            "MODEL.ENGINE auto: detectron2 is installed but cannot be imported (%s); using torchvision", reason
        )
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


def _detectron2_unavailable() -> str | None:
    """None when the detectron2 engine can be built here, else why not (one line)."""
    if not detectron2_available():
        return "detectron2 is not installed"
    reason = _detectron2_import_error()
    return None if reason is None else f"detectron2 is installed but cannot be imported ({reason})"


def resolve_engine(requested: str, weights: str | os.PathLike | None = None) -> str:
    """The engine to build for MODEL.ENGINE ``requested`` and the checkpoint ``weights`` (optional).

    ``auto``: the checkpoint's engine (:func:`meddet.modeling.checkpoint.checkpoint_engine`) when it names
    one, else detectron2 when it imports, else torchvision. A checkpoint whose engine is not available here
    (detectron2 weights where detectron2 is absent, whether asked for by ``auto`` or by a run's recorded
    ``detectron2``) gets the torchvision engine, and :func:`load_model_weights` converts it (a warning says
    so). Otherwise as :func:`select_engine` (an explicitly requested engine that is unavailable is an error)."""
    if requested not in ENGINES:
        raise ModelError(f"MODEL.ENGINE: {requested!r} is not an engine; expected one of {', '.join(ENGINES)}")
    if requested == TORCHVISION or not weights:
        return select_engine(requested)

    saved = source_engine(weights) if is_remote(weights) else checkpoint_engine(weights)
    if requested == "auto" and saved == TORCHVISION:
        logger.info("Model engine: torchvision (MODEL.ENGINE auto: the engine of %s)", weights)
        return TORCHVISION
    if saved == DETECTRON2 and requested in ("auto", DETECTRON2):
        reason = _detectron2_unavailable()
        if reason is None:
            logger.info("Model engine: detectron2 (MODEL.ENGINE %s: the engine of %s)", requested, weights)
            return DETECTRON2
        logger.warning(
            "%s holds detectron2-engine weights but %s: using the torchvision engine, weights "
            "converted on loading (exact)",
            weights,
            reason,
        )
        return TORCHVISION
    return select_engine(requested)


def _build_detectron2_model(cfg: CfgNode) -> nn.Module:
    from meddet.modeling.d2_engine import build_detectron2_model

    return build_detectron2_model(cfg)


def _build_torchvision_model(cfg: CfgNode) -> nn.Module:
    """The torchvision engine's Faster R-CNN, or with MODEL.META_ARCHITECTURE RetinaNet its RetinaNet."""
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return build_torchvision_retinanet(cfg)
    return build_torchvision_model(cfg)


_BUILDERS: dict[str, Callable[[CfgNode], nn.Module]] = {
    TORCHVISION: _build_torchvision_model,
    DETECTRON2: _build_detectron2_model,
}


_CONVERTED: set[str] = set()  # checkpoints already announced as converted on the fly (one warning each)


def _class_count(state: Any, cfg: CfgNode) -> int | None:
    """The number of classes a state dict scores, if it says: its Faster R-CNN box predictor's (background
    excluded), or its RetinaNet classification conv's outputs over the anchors per location of ``cfg``."""
    if not hasattr(state, "get"):
        return None
    w = state.get("roi_heads.box_predictor.cls_score.weight")
    if w is not None and getattr(w, "ndim", 0) == 2:
        return int(w.shape[0]) - 1
    a = cfg.MODEL.ANCHOR_GENERATOR
    per_location = len(a.SIZES[0]) * len(a.ASPECT_RATIOS[0])
    for key in RETINANET_CLS_PREFIXES:
        w = state.get(key + "weight")
        if w is not None and getattr(w, "ndim", 0) == 4 and per_location and w.shape[0] % per_location == 0:
            return int(w.shape[0]) // per_location
    return None


def _load_converted(model: nn.Module, path: Path, saved: str, cfg: CfgNode | None) -> dict[str, Any]:
    """Load another engine's checkpoint into ``model`` through the exact conversion (d2_convert)."""
    engine = model.engine
    direction = "d2-to-tv" if saved == DETECTRON2 else "tv-to-d2"
    command = CONVERT_COMMAND.format(path=path, direction=direction)
    if cfg is None:
        raise ModelError(
            f"{path}: holds {saved}-engine weights and the model is the {engine} engine's; use MODEL.ENGINE "
            f"{saved} (or auto), or convert it: {command}"
        )
    if saved == DETECTRON2:
        ckpt: dict[str, Any] = {"model": load_d2_state_dict(path)}
    else:
        ckpt = read_checkpoint(path)
    # Convert as the checkpoint's class count (a fine-tuning run re-initialises the predictor below).
    conv_cfg = cfg.clone()
    conv_cfg.defrost()
    classes = _class_count(ckpt["model"], cfg)
    if classes is not None and classes != int(cfg.MODEL.ROI_HEADS.NUM_CLASSES):
        conv_cfg.MODEL.ROI_HEADS.NUM_CLASSES = classes
        conv_cfg.MODEL.RETINANET.NUM_CLASSES = classes
        conv_cfg.MODEL.ROI_HEADS.CLASS_WEIGHTS = []
    try:
        state = (d2_to_tv_state_dict if saved == DETECTRON2 else tv_to_d2_state_dict)(ckpt["model"], conv_cfg)
    except MeddetError as e:
        raise ModelError(
            f"{path}: holds {saved}-engine weights and the model is the {engine} engine's; converting them "
            f"failed ({e}); use MODEL.ENGINE {saved} where it is available, or set the config to the "
            f"checkpoint's model and convert it: {command}"
        ) from None
    load_model_state(path, model, {**ckpt, "model": state}, allow_class_change=True)
    key = str(Path(path).resolve())
    (logger.debug if key in _CONVERTED else logger.warning)(
        "%s: %s-engine weights converted on the fly for the %s engine (exact; %s); to skip this step convert once: %s",
        path,
        saved,
        engine,
        direction,
        command,
    )
    _CONVERTED.add(key)
    meta = dict(ckpt.get("meddet") or {})
    meta["converted_from"] = saved
    return meta


def load_model_weights(model: nn.Module, path: str | os.PathLike, cfg: CfgNode | None = None) -> dict[str, Any]:
    """Load ``MODEL.WEIGHTS`` into a model of either engine; returns the checkpoint's meddet metadata.

    A checkpoint of the model's own engine: torchvision engine through
    :func:`meddet.modeling.checkpoint.load_weights` (meddet checkpoints and state dicts, strict except for a
    class-count change); detectron2 engine meddet checkpoints the same way, detectron2's own checkpoints
    (model-zoo ``.pkl``, ``model_final.pth``) through detectron2's ``DetectionCheckpointer`` and a check
    that every parameter was filled (:func:`meddet.modeling.d2_engine.load_detectron2_weights`).
    A checkpoint of the other engine (its ``meddet`` entry, else its parameter names say so) is converted
    exactly on the fly with ``cfg`` (the model's config) and loaded strictly, with one warning; without
    ``cfg``, or when the conversion fails, ModelError gives the command that converts it.
    ``path`` may also name a remote source (``detectron2://``, ``https://``, ``hf://``, ``torchvision://``):
    :mod:`meddet.modeling.weights_source` downloads it once into the cache and loads pretrained formats
    (model-zoo ``.pkl``, Caffe2/MSRA and torchvision backbones) with their meaning."""
    path, pretrained = resolve_and_load(model, path)
    if pretrained is not None:
        return pretrained
    inner = unwrap_model(model)
    engine, saved = getattr(inner, "engine", None), checkpoint_engine(path)
    if engine in (TORCHVISION, DETECTRON2) and saved and saved != engine:
        return _load_converted(inner, Path(path), saved, cfg)
    if engine == DETECTRON2:
        from meddet.modeling.d2_engine import load_detectron2_weights

        return load_detectron2_weights(cast("Detectron2RCNN", inner), path)  # its engine says so
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
            raise ModelError(f"MODEL.DEVICE: {name!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelError("MODEL.DEVICE: 'mps' requested, but torch finds no MPS device; use auto or cpu")
    elif device.type != "cpu":
        raise ModelError(f"MODEL.DEVICE: {name!r} is not supported; expected auto, cpu, cuda, cuda:N or mps")
    return device


def build_model(cfg: CfgNode, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build the detector described by ``cfg`` with random weights, on ``resolve_device(cfg.MODEL.DEVICE)``.

    The engine: :func:`resolve_engine` for MODEL.ENGINE and the checkpoint the model will load (``weights``,
    default MODEL.WEIGHTS). The weights are not loaded here (as in detectron2); use :func:`load_model_weights`.
    The model follows meddet's model interface (see TorchvisionRCNN, Detectron2RCNN) and has ``engine``,
    ``num_classes``, ``input_format`` and ``device`` attributes."""
    engine = resolve_engine(cfg.MODEL.ENGINE, weights if weights is not None else (cfg.MODEL.WEIGHTS or None))
    device = resolve_device(cfg.MODEL.DEVICE)
    if not cfg.MODEL.WEIGHTS and (cfg.MODEL.RESNETS.NORM == "FrozenBN" or cfg.MODEL.BACKBONE.FREEZE_AT > 0):
        logger.warning(
            "MODEL.WEIGHTS is empty (training from scratch) but MODEL.RESNETS.NORM is %s and "
            "MODEL.BACKBONE.FREEZE_AT is %d: frozen layers keep their random initialisation; "
            "from scratch use NORM BN or GN and FREEZE_AT 0",
            cfg.MODEL.RESNETS.NORM,
            cfg.MODEL.BACKBONE.FREEZE_AT,
        )
    model = _BUILDERS[engine](cfg)
    model.to(device)
    logger.info("Model on %s", device)
    return model
