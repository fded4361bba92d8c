"""One optimization step (detectron2's SimpleTrainer / AMPTrainer run_step, without the data fetching):
forward → sum of losses → NaN/inf guard → backward → after_backward hooks → gradient clipping → optimizer step.
SimpleStep in float32; AMPStep with float16 autocast and a GradScaler (CUDA only; Trainer.build_step picks)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch

from meddet.training import comm
from meddet.training.solver import clip_gradients

if TYPE_CHECKING:
    from meddet.config import CfgNode


class SimpleStep:
    """`model` is the module that trains (DistributedDataParallel in a multi-process run); `clip` the
    SOLVER.CLIP_GRADIENTS node (detectron2's CLIP_TYPE meaning), or None for no clipping."""

    scaler: torch.amp.GradScaler | None = None  # saved with each checkpoint when there is one

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip: CfgNode | None = None) -> None:
        self.model, self.optimizer, self.clip = model, optimizer, clip

    def __call__(
        self, batch: list[dict], iteration: int, after_backward: Callable[[], None] = lambda: None
    ) -> dict[str, float]:
        """Train on `batch`; returns the losses as floats (mean over ranks). FloatingPointError when their
        sum is not finite (nothing is stepped then)."""
        with self.autocast():
            losses = self.model(batch)
        total = sum(losses.values())
        values = comm.reduce_mean({k: float(v.detach()) for k, v in losses.items()})
        total_value = sum(values.values())
        if not math.isfinite(total_value):
            raise FloatingPointError(
                f"loss became {total_value} at iteration {iteration} (losses: {values}); lower "
                "SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS, or check MODEL.RESNETS.NORM / MODEL.PIXEL_STD"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(total)
        after_backward()
        if self.clip is not None:
            clip_gradients(self.clip, self.optimizer)
        self.optimizer_step()
        return values

    def autocast(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def backward(self, total: torch.Tensor) -> None:
        total.backward()

    def optimizer_step(self) -> None:
        self.optimizer.step()


class AMPStep(SimpleStep):
    """Mixed precision (the trainer uses it on CUDA only): float16 autocast and a GradScaler; gradients are
    unscaled right after the backward pass, so after_backward hooks and clipping see their true values."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        clip: CfgNode | None = None,
        device_type: str = "cuda",
        dtype: torch.dtype = torch.float16,
    ) -> None:
        super().__init__(model, optimizer, clip)
        self.device_type, self.dtype = device_type, dtype
        self.scaler = torch.amp.GradScaler(device_type)

    def autocast(self) -> AbstractContextManager[object]:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, total: torch.Tensor) -> None:
        assert self.scaler is not None
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)

    def optimizer_step(self) -> None:
        assert self.scaler is not None
        self.scaler.step(self.optimizer)
        self.scaler.update()
