"""Optimizer and learning-rate schedule from SOLVER.* (detectron2 semantics)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from meddet.errors import ConfigError

if TYPE_CHECKING:
    from meddet.config import CfgNode

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# SOLVER.CLIP_GRADIENTS.CLIP_TYPE: detectron2's "value" and "norm" clip each parameter's gradient on its own;
# "full_model" (the name detectron2-based projects such as Mask2Former use) clips the norm of all gradients
# together, as one vector.
CLIP_TYPES = ("value", "norm", "full_model")


def optimizer_param_groups(cfg: CfgNode, model: nn.Module) -> list[dict[str, Any]]:
    """detectron2's ``get_default_optimizer_params`` from SOLVER.*: every trainable parameter once, with
    ``lr`` SOLVER.BASE_LR and ``weight_decay`` SOLVER.WEIGHT_DECAY, except parameters of normalization layers
    (weight decay SOLVER.WEIGHT_DECAY_NORM) and biases (learning rate BASE_LR x SOLVER.BIAS_LR_FACTOR, weight
    decay SOLVER.WEIGHT_DECAY_BIAS unless it is None; a norm layer's bias takes the bias values). Parameters
    with the same values share one group, in the order their first parameter appears."""
    s = cfg.SOLVER
    base = {"lr": float(s.BASE_LR), "weight_decay": float(s.WEIGHT_DECAY)}
    bias: dict[str, float] = {}
    if float(s.BIAS_LR_FACTOR) != 1.0:
        bias["lr"] = float(s.BASE_LR) * float(s.BIAS_LR_FACTOR)
    if s.WEIGHT_DECAY_BIAS is not None:
        bias["weight_decay"] = float(s.WEIGHT_DECAY_BIAS)
    groups: dict[tuple, dict[str, Any]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            hyper = dict(base)
            if isinstance(module, _NORM_TYPES) and s.WEIGHT_DECAY_NORM is not None:
                hyper["weight_decay"] = float(s.WEIGHT_DECAY_NORM)
            if name == "bias":
                hyper.update(bias)
            key = tuple(sorted(hyper.items()))
            groups.setdefault(key, {**hyper, "params": []})["params"].append(p)
    return list(groups.values())


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (detectron2's) or AdamW over :func:`optimizer_param_groups`; the gradient clipping
    type is checked here (:func:`clip_gradients` applies it)."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE not in CLIP_TYPES:
        raise ConfigError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE: expected one of {', '.join(CLIP_TYPES)}, found {clip.CLIP_TYPE!r}"
        )
    groups = optimizer_param_groups(cfg, model)
    name = str(cfg.SOLVER.OPTIMIZER).lower()
    lr = cfg.SOLVER.BASE_LR
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ConfigError(f"SOLVER.OPTIMIZER: expected 'SGD' or 'AdamW', found {cfg.SOLVER.OPTIMIZER!r}")


def clip_gradients(clip: CfgNode, optimizer: torch.optim.Optimizer) -> None:
    """Clip the gradients of ``optimizer``'s parameters per SOLVER.CLIP_GRADIENTS (``clip``), as detectron2's
    ``maybe_add_gradient_clipping`` does before each step: ``value`` clamps every gradient element to
    +-CLIP_VALUE; ``norm`` scales EACH parameter's gradient to a NORM_TYPE-norm of at most CLIP_VALUE on its
    own; ``full_model`` scales all gradients together so that their joint norm is at most CLIP_VALUE.
    Gradients must be unscaled (AMP) before."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if clip.CLIP_TYPE == "value":
        torch.nn.utils.clip_grad_value_(params, clip.CLIP_VALUE)
    elif clip.CLIP_TYPE == "norm":
        for p in params:
            torch.nn.utils.clip_grad_norm_(p, clip.CLIP_VALUE, clip.NORM_TYPE)
    elif clip.CLIP_TYPE == "full_model":
        torch.nn.utils.clip_grad_norm_(params, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        raise ConfigError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE: expected one of {', '.join(CLIP_TYPES)}, found {clip.CLIP_TYPE!r}"
        )


def lr_factor(cfg: CfgNode, it: int) -> float:
    """Multiplier of SOLVER.BASE_LR at iteration `it`: warmup × (multi-step | cosine)."""
    max_iter = cfg.SOLVER.MAX_ITER
    sched = cfg.SOLVER.LR_SCHEDULER_NAME
    if sched == "WarmupMultiStepLR":
        steps = sorted(cfg.SOLVER.STEPS)
        base = cfg.SOLVER.GAMMA ** sum(1 for s in steps if s <= it)
    elif sched == "WarmupCosineLR":
        end = cfg.SOLVER.BASE_LR_END / cfg.SOLVER.BASE_LR if cfg.SOLVER.BASE_LR else 0.0
        t = min(it, max_iter) / max(max_iter, 1)
        base = end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))
    else:
        raise ConfigError(
            f"SOLVER.LR_SCHEDULER_NAME: expected 'WarmupMultiStepLR' or 'WarmupCosineLR', found {sched!r}"
        )
    warm = cfg.SOLVER.WARMUP_ITERS
    if it < warm:
        method = cfg.SOLVER.WARMUP_METHOD
        if method == "linear":
            alpha = it / warm
            base *= cfg.SOLVER.WARMUP_FACTOR * (1 - alpha) + alpha
        elif method == "constant":
            base *= cfg.SOLVER.WARMUP_FACTOR
        else:
            raise ConfigError(f"SOLVER.WARMUP_METHOD: expected 'linear' or 'constant', found {method!r}")
    return base


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(cfg, 0)  # validate the names now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it))
