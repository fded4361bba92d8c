"""Checkpoints in detectron2's layout: ``{"model", "optimizer", "scheduler", "scaler", "iteration"}`` plus a
``"meddet"`` entry (engine, num_classes, class names, ...).

- save_checkpoint writes atomically (temporary file in the same folder, then os.replace).
- load_weights is strict: any missing or unexpected key or shape mismatch is an error listing the keys,
  except a change in the number of classes, which re-initialises only the box predictor (fine-tuning).
- load_checkpoint_for_resume restores model, optimizer, scheduler and AMP scaler and returns the iteration.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meddet.errors import ModelError

logger = logging.getLogger(__name__)

# The class-dependent layers (torchvision and detectron2 use the same name): skipped when only they differ.
PREDICTOR_PREFIX = "roi_heads.box_predictor."
_RESERVED = ("model", "optimizer", "scheduler", "scaler", "iteration", "meddet")
_SHOWN = 10


def _unwrap(model: nn.Module) -> nn.Module:
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

    Only the states given are stored. ``meddet`` holds the model's ``engine`` and ``num_classes`` and every
    entry of ``extra`` (e.g. ``{"class_names": [...]}``, whose length must match ``num_classes``).
    Returns the path written."""
    path = Path(path)
    model = _unwrap(model)
    meta: dict[str, Any] = {
        "engine": getattr(model, "engine", None),
        "num_classes": getattr(model, "num_classes", None),
    }
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


def _read(path: str | os.PathLike) -> dict[str, Any]:
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
        ckpt["model"] = {k[len("module."):]: v for k, v in state.items()}
    return ckpt


def _listing(what: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"{len(items)} {what} ({shown}{more})"


def _load_model_state(
    path: str | os.PathLike, model: nn.Module, ckpt: Mapping[str, Any], allow_class_change: bool
) -> None:
    model = _unwrap(model)
    state = dict(ckpt["model"])
    own = model.state_dict()

    def counted(k: str) -> bool:  # BatchNorm's step counter is not a weight (FrozenBN has none)
        return not k.endswith("num_batches_tracked")

    missing = [k for k in own if k not in state and counted(k)]
    unexpected = [k for k in state if k not in own and counted(k)]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    class_change = bool(
        allow_class_change and mismatched and not missing and not unexpected
        and all(k.startswith(PREDICTOR_PREFIX) for k in mismatched)
    )
    if (missing or unexpected or mismatched) and not class_change:
        parts = []
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if mismatched:
            parts.append(_listing(
                "shape mismatches",
                [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched],
            ))
        meta = ckpt.get("meddet") or {}
        saved_engine, engine = meta.get("engine"), getattr(model, "engine", None)
        if saved_engine and engine and saved_engine != engine:
            hint = f"the checkpoint was saved by the {saved_engine} engine, the model is {engine}"
        else:
            hint = ("expected weights of the same architecture (MODEL.RESNETS.*, MODEL.FPN.OUT_CHANNELS, "
                    "MODEL.ANCHOR_GENERATOR.*, MODEL.ROI_BOX_HEAD.*, MODEL.ROI_HEADS.NUM_CLASSES)")
        raise ModelError(f"{path}: checkpoint does not fit the model: {'; '.join(parts)}; {hint}")
    if class_change:
        skipped = [k for k in state if k.startswith(PREDICTOR_PREFIX)]
        logger.warning(
            "%s: the number of classes differs from the model's (%s); not loading %s and re-initialising "
            "the box predictor; all other weights are loaded",
            path, ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched),
            ", ".join(skipped),
        )
        for k in skipped:
            del state[k]
        predictor = model.get_submodule(PREDICTOR_PREFIX.rstrip("."))
        for module in predictor.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    model.load_state_dict(state, strict=False)


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load model weights from a meddet checkpoint or a bare state dict into ``model``.

    Strict: missing/unexpected keys or shape mismatches raise ModelError listing the keys, except when only
    the box predictor's class-dependent layers differ (a different number of classes): then the predictor is
    re-initialised, a warning names the skipped keys, and everything else is loaded.
    Returns the checkpoint's ``meddet`` metadata (engine, num_classes, class_names, ...; empty if none)."""
    ckpt = _read(path)
    _load_model_state(path, model, ckpt, allow_class_change=True)
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
    ckpt = _read(path)
    if "iteration" not in ckpt:
        raise ModelError(f"{path}: no 'iteration' entry; expected a training checkpoint written by meddet")
    for key, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None and not ckpt.get(key):
            raise ModelError(
                f"{path}: no {key} state, so training cannot resume from it; "
                "start a new run with MODEL.WEIGHTS pointing to it instead"
            )
    _load_model_state(path, model, ckpt, allow_class_change=False)
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
