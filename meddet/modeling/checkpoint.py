"""Checkpoints in detectron2's layout: ``{"model", "optimizer", "scheduler", "scaler", "iteration"}`` plus a
``"meddet"`` entry (engine, architecture, num_classes, class names, ...).

- The engine travels with the weights: every checkpoint records the engine that wrote it and the model's
  architecture (:func:`architecture_of`); checkpoints without that entry (older meddet files, bare state
  dicts, detectron2's own files) get their engine from their parameter names (:func:`infer_engine`).

- save_checkpoint writes atomically (temporary file in the same folder, then os.replace).
- load_weights is strict: any missing or unexpected key or shape mismatch is an error listing the keys,
  except a change in the number of classes, which re-initialises only the class layer (fine-tuning): Faster
  R-CNN's box predictor, RetinaNet's last classification conv (with its prior-probability bias).
- load_checkpoint_for_resume restores model, optimizer, scheduler and AMP scaler and returns the iteration.
- check_loaded is the same rule for loaders that fill a model non-strictly (detectron2's checkpointer):
  every parameter the model expects must have been filled.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meddet.errors import ModelError

logger = logging.getLogger(__name__)

# The class-dependent layers, skipped when only they differ (another class count): Faster R-CNN's box predictor
# (torchvision and detectron2 use the same name) and RetinaNet's last classification conv (torchvision's name,
# detectron2's). RetinaNet's box regression is class-agnostic and always loads.
PREDICTOR_PREFIX = "roi_heads.box_predictor."
RETINANET_CLS_PREFIXES = ("head.classification_head.cls_logits.", "head.cls_score.")
CLASS_LAYER_PREFIXES = (PREDICTOR_PREFIX, *RETINANET_CLS_PREFIXES)
_RESERVED = ("model", "optimizer", "scheduler", "scaler", "iteration", "meddet")
_SHOWN = 10
TORCHVISION, DETECTRON2 = "torchvision", "detectron2"
# Parameter-name prefixes only one engine's models have.
_ENGINE_PREFIXES = {
    TORCHVISION: ("backbone.body.", "backbone.fpn.", "rpn.head."),
    DETECTRON2: ("backbone.bottom_up.", "backbone.fpn_lateral", "backbone.fpn_output", "proposal_generator."),
}
# Model entries that are no learned weights: rebuilt from the config, so never "missing" (as in detectron2).
_NOT_WEIGHTS = re.compile(r"(^|\.)num_batches_tracked$|^pixel_(mean|std)$|anchor_generator\.cell_anchors")
CONVERT_COMMAND = (
    "python detectron.py -c convert-weights --config-file CONFIG --weights {path} "
    "--output CONVERTED.pth --direction {direction}"
)


def architecture_of(cfg: Any) -> dict[str, Any]:
    """The model a config describes, as plain values stored in every checkpoint's ``meddet`` entry (so a
    checkpoint that does not fit a model can say why)."""
    m = cfg.MODEL
    return {
        "meta_architecture": str(m.META_ARCHITECTURE),
        "backbone": str(m.BACKBONE.NAME),
        "depth": int(m.RESNETS.DEPTH),
        "res5_dilation": int(m.RESNETS.RES5_DILATION),
        "norm": str(m.RESNETS.NORM),
        "fpn_out_channels": int(m.FPN.OUT_CHANNELS),
        "roi_heads": str(m.ROI_HEADS.NAME),
        "box_head": str(m.ROI_BOX_HEAD.NAME),
        "box_head_num_conv": int(m.ROI_BOX_HEAD.NUM_CONV),
        "box_head_num_fc": int(m.ROI_BOX_HEAD.NUM_FC),
        "num_classes": int(m.ROI_HEADS.NUM_CLASSES),
        "input_format": str(cfg.INPUT.FORMAT),
    }


def infer_engine(keys: Iterable[str]) -> str | None:
    """The engine whose parameter names ``keys`` are (``backbone.body.*`` torchvision, ``backbone.bottom_up.*``
    detectron2, ...); None when they are neither or both."""
    found = {engine for k in keys for engine, prefixes in _ENGINE_PREFIXES.items() if k.startswith(prefixes)}
    return found.pop() if len(found) == 1 else None


def engine_of(ckpt: Mapping[str, Any]) -> str | None:
    """The engine of a checkpoint read by :func:`read_checkpoint`: its ``meddet`` entry's, else inferred
    from its parameter names; None when unknown."""
    meta = ckpt.get("meddet") or {}
    if meta.get("engine") in (TORCHVISION, DETECTRON2):
        return str(meta["engine"])
    return infer_engine(ckpt.get("model") or {})


def checkpoint_engine(path: str | os.PathLike) -> str | None:
    """The engine the checkpoint file ``path`` was written for (see :func:`engine_of`): a ``.pkl`` is
    detectron2's; None when the file cannot be read safely or its names belong to no engine (the loader then
    reports what is wrong with it)."""
    if Path(path).suffix == ".pkl":
        return DETECTRON2
    try:
        return engine_of(read_checkpoint(path))
    except ModelError:
        return None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    iteration: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{"model", "optimizer", "scheduler", "scaler", "iteration", "meddet"}`` to ``path`` atomically.

    Only the states given are stored. ``meddet`` holds the model's ``engine``, ``num_classes`` and
    ``architecture`` (:func:`architecture_of`, set by the model builders) and every
    entry of ``extra`` (e.g. ``{"class_names": [...]}``, whose length must match ``num_classes``).
    Returns the path written."""
    path = Path(path)
    model = unwrap_model(model)
    meta: dict[str, Any] = {
        "engine": getattr(model, "engine", None),
        "num_classes": getattr(model, "num_classes", None),
    }
    architecture = getattr(model, "architecture", None)
    if architecture:
        meta["architecture"] = dict(architecture)
    meta.update(extra or {})
    names = meta.get("class_names")
    if names and meta["num_classes"] is not None and len(names) != meta["num_classes"]:
        raise ModelError(
            f"{path}: class_names {list(names)} has {len(names)} names; the model has "
            f"{meta['num_classes']} classes (MODEL.ROI_HEADS.NUM_CLASSES)"
        )
    ckpt: dict[str, Any] = {"model": model.state_dict(), "iteration": int(iteration), "meddet": meta}
    for key, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is not None:
            ckpt[key] = obj.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file (tensors on the CPU) as a dict with at least a ``model`` state dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint file not found")
    try:
        # weights_only: tensors and plain values only, so a checkpoint cannot run code when loaded
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails with many types (UnpicklingError, KeyError, RuntimeError, ...)
        unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", str(e), re.S)
        if unpickler:
            detail = unpickler.group(1)
        else:  # the first sentence only: torch's texts run on for lines, and a cut one ends mid-word
            first = re.split(r"(?<=[.!?])\s", " ".join(str(e).split()), maxsplit=1)[0].rstrip(".")
            detail = f"{type(e).__name__}: {first}"
            if "zip archive" in first:
                detail += "; the file is truncated or damaged"
        raise ModelError(
            f"{path}: cannot be read as a PyTorch checkpoint of tensors and plain values ({detail}); "
            "expected a meddet checkpoint or a state dict saved with torch.save"
        ) from None
    if not isinstance(obj, Mapping):
        raise ModelError(f"{path}: holds a {type(obj).__name__}; expected a dict (state dict or checkpoint)")
    if isinstance(obj.get("model"), Mapping):
        ckpt = dict(obj)
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        ckpt = {"model": obj}  # a bare state dict
    else:
        raise ModelError(
            f"{path}: no model weights found; expected a state dict or a checkpoint with a 'model' entry, "
            f"found keys {sorted(map(str, obj))[:_SHOWN]}"
        )
    state = ckpt["model"]
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        ckpt["model"] = {k[len("module.") :]: v for k, v in state.items()}
    return ckpt


def format_listing(what: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"{len(items)} {what} ({shown}{more})"


def is_class_layer(key: str) -> bool:
    """True for a parameter of a class-dependent layer (:data:`CLASS_LAYER_PREFIXES`)."""
    return key.startswith(CLASS_LAYER_PREFIXES)


def reinit_class_layers(model: nn.Module) -> list[str]:
    """Re-initialise, in place, the class-dependent layers ``model`` has, as its builder does, and return their
    names: Faster R-CNN's box predictor by its layers' ``reset_parameters``; RetinaNet's classification conv
    as detectron2 (weights N(0, 0.01), bias ``-log((1 - p) / p)`` with ``p`` the model's ``prior_prob``,
    MODEL.RETINANET.PRIOR_PROB), so every anchor starts at score ``p`` and the focal loss starts stable."""
    model = unwrap_model(model)
    names = {n for n, _ in model.named_modules()}
    done = []
    for prefix in CLASS_LAYER_PREFIXES:
        name = prefix.rstrip(".")
        if name not in names:
            continue
        layer = model.get_submodule(name)
        if prefix == PREDICTOR_PREFIX:
            for module in layer.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
        else:
            prior = getattr(model, "prior_prob", None)
            if prior is None or not 0 < float(prior) < 1:
                raise ModelError(
                    f"{type(model).__name__}: no prior_prob in (0, 1) (found {prior!r}) to re-initialise {name} "
                    "with; expected a RetinaNet built by meddet (MODEL.RETINANET.PRIOR_PROB)"
                )
            if not isinstance(layer, nn.Conv2d):
                raise ModelError(f"{type(model).__name__}: {name} is a {type(layer).__name__}, expected a Conv2d")
            with torch.no_grad():
                nn.init.normal_(layer.weight, std=0.01)
                if layer.bias is not None:
                    nn.init.constant_(layer.bias, -math.log((1 - float(prior)) / float(prior)))
        done.append(name)
    return done


def load_model_state(
    path: str | os.PathLike, model: nn.Module, ckpt: Mapping[str, Any], allow_class_change: bool
) -> None:
    model = unwrap_model(model)
    state = dict(ckpt["model"])
    own = model.state_dict()

    def counted(k: str) -> bool:  # BatchNorm's step counter, pixel statistics, anchors: no learned weights
        return not _NOT_WEIGHTS.search(k)

    missing = [k for k in own if k not in state and counted(k)]
    unexpected = [k for k in state if k not in own and counted(k)]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    class_change = bool(
        allow_class_change
        and mismatched
        and not missing
        and not unexpected
        and all(is_class_layer(k) for k in mismatched)
    )
    shapes = {k: state[k].shape for k in mismatched}
    if (missing or unexpected or mismatched) and not class_change:
        parts = []
        if missing:
            parts.append(format_listing("missing keys", missing))
        if unexpected:
            parts.append(format_listing("unexpected keys", unexpected))
        if mismatched:
            parts.append(
                format_listing(
                    "shape mismatches",
                    [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched],
                )
            )
        raise ModelError(
            f"{path}: checkpoint does not fit the model: {'; '.join(parts)}; {likely_cause(ckpt, model, path)}"
        )
    if class_change:
        skipped = [k for k in state if is_class_layer(k)]
        for k in skipped:
            del state[k]
        layers = reinit_class_layers(model)
        logger.warning(
            "%s: the number of classes differs from the model's (%s); not loading %s and re-initialising "
            "the class layer (%s); all other weights are loaded",
            path,
            ", ".join(f"{k} {tuple(state_shape)} vs {tuple(own[k].shape)}" for k, state_shape in shapes.items()),
            ", ".join(skipped),
            ", ".join(layers),
        )
    model.load_state_dict(state, strict=False)


_ARCH_KEYS = {  # architecture field -> the config key that sets it
    "meta_architecture": "MODEL.META_ARCHITECTURE",
    "backbone": "MODEL.BACKBONE.NAME",
    "depth": "MODEL.RESNETS.DEPTH",
    "res5_dilation": "MODEL.RESNETS.RES5_DILATION",
    "norm": "MODEL.RESNETS.NORM",
    "fpn_out_channels": "MODEL.FPN.OUT_CHANNELS",
    "roi_heads": "MODEL.ROI_HEADS.NAME",
    "box_head": "MODEL.ROI_BOX_HEAD.NAME",
    "box_head_num_conv": "MODEL.ROI_BOX_HEAD.NUM_CONV",
    "box_head_num_fc": "MODEL.ROI_BOX_HEAD.NUM_FC",
    "num_classes": "MODEL.ROI_HEADS.NUM_CLASSES",
}


def likely_cause(ckpt: Mapping[str, Any], model: nn.Module, path: str | os.PathLike) -> str:
    """Why a checkpoint does not fit ``model``, as far as its metadata and names tell: another engine (with
    the command that converts it), another architecture (the config keys that differ), or else what to check."""
    model = unwrap_model(model)
    saved, engine = engine_of(ckpt), getattr(model, "engine", None)
    if saved and engine and saved != engine:
        direction = "d2-to-tv" if saved == DETECTRON2 else "tv-to-d2"
        return (
            f"likely cause: the checkpoint holds {saved}-engine weights and the model is the {engine} engine's; "
            f"use MODEL.ENGINE {saved} (or auto), or convert it: "
            f"{CONVERT_COMMAND.format(path=path, direction=direction)}"
        )
    arch = (ckpt.get("meddet") or {}).get("architecture") or {}
    own = getattr(model, "architecture", None) or {}
    differ = [
        f"{_ARCH_KEYS[k]} {arch[k]!r} (model: {own[k]!r})"
        for k in _ARCH_KEYS
        if k in arch and k in own and arch[k] != own[k]
    ]
    if differ:
        return (
            "likely cause: the checkpoint is another architecture; set the model's keys to the checkpoint's: "
            + ", ".join(differ)
        )
    return (
        "expected weights of the same engine and architecture (MODEL.ENGINE, MODEL.RESNETS.*, "
        "MODEL.FPN.OUT_CHANNELS, MODEL.ANCHOR_GENERATOR.*, MODEL.ROI_BOX_HEAD.*, MODEL.ROI_HEADS.NUM_CLASSES)"
    )


def check_loaded(
    path: str | os.PathLike,
    model: nn.Module,
    ckpt: Mapping[str, Any],
    missing: Sequence[str],
    incorrect_shapes: Sequence[str] = (),
    allow_backbone_only: bool = False,
) -> str:
    """Refuse a non-strict load (detectron2's ``DetectionCheckpointer``) that left expected parameters unfilled.

    ``missing``: the model's keys the checkpoint did not fill (shape mismatches included);
    ``incorrect_shapes``: the keys skipped for their shape. Accepted, and returned as ``"full"``,
    ``"class_change"`` or ``"backbone"``: everything filled; only the class layer (:data:`CLASS_LAYER_PREFIXES`:
    Faster R-CNN's box predictor, RetinaNet's ``head.cls_score``) left out for its shape (another class count:
    it keeps the fresh initialisation of the model just built, a warning says so); with
    ``allow_backbone_only``, a checkpoint that holds exactly the backbone (``backbone.bottom_up.*``, an
    ImageNet-pretrained ResNet as detectron2 trains from). Anything else raises ModelError listing the
    missing keys and the likely cause (:func:`likely_cause`)."""
    model = unwrap_model(model)
    own = [k for k in model.state_dict() if not _NOT_WEIGHTS.search(k)]
    missing = [k for k in dict.fromkeys(missing) if not _NOT_WEIGHTS.search(k)]
    if not missing:
        return "full"
    wrong_shape = set(incorrect_shapes)
    if all(is_class_layer(k) and k in wrong_shape for k in missing):
        logger.warning(
            "%s: the number of classes differs from the model's; not loading %s (the class layer "
            "keeps its fresh initialisation); all other weights are loaded",
            path,
            ", ".join(missing),
        )
        return "class_change"
    backbone = "backbone.bottom_up."
    filled = set(own) - set(missing)
    if (
        allow_backbone_only
        and filled
        and all(k.startswith(backbone) for k in filled)
        and not any(k.startswith(backbone) for k in missing)
    ):
        logger.warning(
            "%s: holds only the backbone (%d tensors); the FPN, RPN and box head (%d tensors) start from "
            "random initialisation",
            path,
            len(filled),
            len(missing),
        )
        return "backbone"
    parts = [format_listing("missing keys", missing)]
    shapes = [k for k in missing if k in wrong_shape]
    if shapes:
        parts.append(format_listing("shape mismatches", shapes))
    raise ModelError(
        f"{path}: checkpoint does not fit the model: {'; '.join(parts)} ({len(filled)} of {len(own)} "
        f"filled); {likely_cause(ckpt, model, path)}"
    )


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load model weights from a meddet checkpoint or a bare state dict into ``model``.

    Strict: missing/unexpected keys or shape mismatches raise ModelError listing the keys, except when only
    the class-dependent layers differ (a different number of classes: Faster R-CNN's box predictor, RetinaNet's
    classification conv): then they are re-initialised (:func:`reinit_class_layers`), a warning names the
    skipped keys, and everything else is loaded.
    Returns the checkpoint's ``meddet`` metadata (engine, num_classes, class_names, ...; empty if none)."""
    ckpt = read_checkpoint(path)
    load_model_state(path, model, ckpt, allow_class_change=True)
    logger.info("Loaded model weights from %s", path)
    return dict(ckpt.get("meddet") or {})


def load_checkpoint_for_resume(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> int:
    """Restore a training run from a checkpoint written by save_checkpoint: the model (strictly, no class
    change), and the optimizer, scheduler and AMP scaler when given. Returns the stored ``iteration``
    (the last completed iteration in the trainer's convention)."""
    ckpt = read_checkpoint(path)
    if "iteration" not in ckpt:
        raise ModelError(f"{path}: no 'iteration' entry; expected a training checkpoint written by meddet")
    for key, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None and not ckpt.get(key):
            raise ModelError(
                f"{path}: no {key} state, so training cannot resume from it; "
                "start a new run with MODEL.WEIGHTS pointing to it instead"
            )
    saved, engine = engine_of(ckpt), getattr(unwrap_model(model), "engine", None)
    if saved and engine and saved != engine:
        raise ModelError(
            f"{path}: written by the {saved} engine and the model is the {engine} engine's; resuming needs the "
            f"engine that trained the run (its optimizer state belongs to that engine's parameters): use MODEL.ENGINE "
            f"{saved} where it is available, or start a new run with MODEL.WEIGHTS {path} (converted on loading)"
        )
    load_model_state(path, model, ckpt, allow_class_change=False)
    try:
        if optimizer is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise ModelError(
            f"{path}: the optimizer/scheduler state does not fit this run's SOLVER settings ({e})"
        ) from None
    if scaler is not None:
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        elif scaler.is_enabled():
            logger.warning("%s: no AMP scaler state (saved without AMP); the scaler starts fresh", path)
    meta = ckpt.get("meddet") or {}
    if isinstance(meta.get("rng_torch"), torch.Tensor):  # the random stream goes on where it stopped
        torch.set_rng_state(meta["rng_torch"])
    if isinstance(meta.get("rng_cuda"), torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(meta["rng_cuda"])
    iteration = int(ckpt["iteration"])
    logger.info("Resumed model, optimizer and scheduler from %s (iteration %d)", path, iteration)
    return iteration
