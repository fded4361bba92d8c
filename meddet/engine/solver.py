"""Optimizer and learning-rate schedule from SOLVER.* (detectron2 semantics)."""
from __future__ import annotations

import math

import torch
from torch import nn

from meddet.errors import ConfigError

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm2d, nn.LayerNorm, nn.LocalResponseNorm,
)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (detectron2's) or AdamW; norm layers get SOLVER.WEIGHT_DECAY_NORM."""
    decay, no_decay = [], []
    seen = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(module, _NORM_TYPES) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.SOLVER.WEIGHT_DECAY}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": cfg.SOLVER.WEIGHT_DECAY_NORM})
    name = str(cfg.SOLVER.OPTIMIZER).lower()
    lr = cfg.SOLVER.BASE_LR
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ConfigError(f"SOLVER.OPTIMIZER: expected 'SGD' or 'AdamW', found {cfg.SOLVER.OPTIMIZER!r}")


def lr_factor(cfg, it: int) -> float:
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
            "SOLVER.LR_SCHEDULER_NAME: expected 'WarmupMultiStepLR' or 'WarmupCosineLR', "
            f"found {sched!r}"
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


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(cfg, 0)  # validate the names now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it))
