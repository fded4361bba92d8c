"""The loop and its hooks (detectron2's TrainerBase and HookBase): what runs when, nothing about models or data.

hook.before_train()                           for every hook, in order
for iter in range(start_iter, max_iter):
    hook.before_step()
    trainer.run_step()                        calls hook.after_backward() between backward and the step
    hook.after_step()
    stop if trainer.stop_requested
hook.after_train()                            only when the loop ended normally (not on an exception)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from meddet.training.events import EventStorage

logger = logging.getLogger(__name__)


class HookBase:
    """Called by the trainer around the loop; `self.trainer` is set when the hook is registered, and
    `self.trainer.iter` is the iteration in progress. Every method is a no-op unless overridden.

    A hook with state that must survive a resume (counters, best values) returns it from state_dict() (plain
    Python values or tensors) and takes it back in load_state_dict(): the trainer saves it in every checkpoint
    and restores it before before_train() of the resumed run."""

    trainer: Any  # the TrainerBase that runs the hook (annotated loosely: tests and benchmarks use stand-ins)
    runs_last = False  # True: stays after every hook registered later (the periodic checkpointer)

    def before_train(self) -> None:
        """Before the first iteration (also when a resumed run only repeats the end-of-training steps)."""

    def before_step(self) -> None:
        """Before each iteration's step; keep it cheap."""

    def after_backward(self) -> None:
        """After the backward pass, before gradient clipping and the optimizer step (gradients unscaled)."""

    def after_step(self) -> None:
        """After each iteration's step."""

    def after_train(self) -> None:
        """After the loop ended normally, at the last iteration or by an early stop."""

    def state_dict(self) -> dict:
        """What a resumed run needs to continue as an uninterrupted one; {} (the default) for none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take back what state_dict() returned, from the checkpoint a run resumes from."""


class TrainerBase:
    """An iterative loop with hooks; subclasses implement run_step(). Attributes: iter (the iteration in
    progress), start_iter, max_iter, storage (EventStorage), hooks (in the order they run), stop_requested
    (set by a hook to end the loop after the current iteration)."""

    def __init__(self) -> None:
        self.hooks: list[HookBase] = []
        self.iter = self.start_iter = self.max_iter = 0
        self.storage = EventStorage(0)
        self.stop_requested = False

    def register_hooks(self, hooks: Sequence[HookBase | None]) -> None:
        """Add hooks (None is skipped). They run in the order added, except that a hook with `runs_last`
        stays after those added later."""
        for h in hooks:
            if h is None:
                continue
            if not isinstance(h, HookBase):
                raise TypeError(f"hooks: expected HookBase instances, found {type(h).__name__}")
            h.trainer = self
            last = [k for k, x in enumerate(self.hooks) if x.runs_last]
            self.hooks.insert(last[0] if last and not h.runs_last else len(self.hooks), h)

    def register(self, hook: HookBase) -> None:
        """One hook (register_hooks([hook]))."""
        self.register_hooks([hook])

    # the events, dispatched to every hook in order
    def before_train(self) -> None:
        for h in self.hooks:
            h.before_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self.hooks:
            h.before_step()

    def after_backward(self) -> None:
        for h in self.hooks:
            h.after_backward()

    def after_step(self) -> None:
        for h in self.hooks:
            h.after_step()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self.hooks:
            h.after_train()

    def run_step(self) -> None:
        raise NotImplementedError

    def run_loop(self) -> None:
        """Iterations start_iter .. max_iter - 1, or until a hook sets stop_requested (self.iter then stays
        the last iteration done)."""
        for self.iter in range(self.start_iter, self.max_iter):  # noqa: B020 (detectron2 style)
            self.before_step()
            self.run_step()
            self.after_step()
            if self.stop_requested:
                break

    # hook state, saved with each checkpoint
    def _hook_keys(self) -> list[str]:
        """One key per hook: its class name, with #2, #3, ... for the second, third hook of a class."""
        keys: list[str] = []
        seen: dict[str, int] = {}
        for h in self.hooks:
            name = type(h).__qualname__
            seen[name] = seen.get(name, 0) + 1
            keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return keys

    def hooks_state_dict(self) -> dict[str, dict]:
        """Every hook's non-empty state_dict(), by hook key."""
        out = {}
        for key, h in zip(self._hook_keys(), self.hooks):
            state = h.state_dict()
            if state:
                out[key] = state
        return out

    def load_hooks_state_dict(self, states: dict[str, dict]) -> None:
        """Give each hook its state back; a state whose hook is not registered is reported and ignored."""
        keys = self._hook_keys()
        for key, h in zip(keys, self.hooks):
            if key in states:
                h.load_state_dict(states[key])
        for key in sorted(set(states) - set(keys)):
            logger.warning("The checkpoint holds the state of hook %s, which this run does not have; ignored", key)
