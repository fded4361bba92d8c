"""The default hooks, in the order Trainer.build_hooks registers them:

EvalHook (validation every TEST.EVAL_PERIOD and at the end) → EarlyStopping (TEST.EARLY_STOP_PATIENCE) →
BestCheckpointer (model_best.pth for TEST.BEST_METRIC) → PeriodicWriter (metrics.json, TensorBoard) →
[user hooks] → PeriodicCheckpointer (always last: a checkpoint holds everything its iteration did, every
hook's state included).

EarlyStopping and BestCheckpointer judge the value of their metric that an evaluation put into the
EventStorage at this iteration; either works without the other.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from meddet.errors import ConfigError
from meddet.training import comm
from meddet.training.events import EventWriter
from meddet.training.loop import HookBase

logger = logging.getLogger(__name__)


def _metrics_before_resume(trainer: Any) -> list[dict]:
    """metrics.json lines up to the iteration a run resumes from (checkpoints written before hooks saved
    their state: the hooks rebuild it from these lines, as an uninterrupted run holds it)."""
    last = trainer.start_iter - 1
    path = trainer.output_dir / "metrics.json"
    if last < 0 or not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        it = rec.get("iteration", -1) if isinstance(rec, dict) else -1
        if isinstance(it, int) and it <= last:
            out.append(rec)
    return out


class PeriodicWriter(HookBase):
    """Write the storage to `writers` every `period` iterations, at the last one, when the storage asks for
    it (after an evaluation) and at the end; closes them after training."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20):
        self.writers = writers
        self.period = period

    def write(self) -> None:
        for w in self.writers:
            w.write(self.trainer.storage)
        self.trainer.storage.clear_unsmoothed()

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1 or self.trainer.storage.write_requested:
            self.write()

    def after_train(self) -> None:
        self.write()
        for w in self.writers:
            w.close()


class PeriodicCheckpointer(HookBase):
    """model_{iter:07d}.pth every `period` iterations (SOLVER.CHECKPOINT_PERIOD; 0: never), after every
    other hook of the iteration. model_final.pth is written by the trainer when the loop ends."""

    runs_last = True

    def __init__(self, period: int):
        self.period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if self.period > 0 and (it + 1) % self.period == 0 and it < self.trainer.max_iter - 1:
            self.trainer.save(f"model_{it:07d}.pth")


class EvalHook(HookBase):
    """Run `eval_fn` every `period` iterations and after training (unless the last iteration was just
    evaluated); its finite results go into the storage (so into metrics.json, one line per evaluation).
    `expected`: metric names other hooks judge; a warning says when an evaluation lacks one."""

    def __init__(self, period: int, eval_fn: Callable[[], dict], expected: Sequence[str] = ()):
        self.period = period
        self.eval_fn = eval_fn
        self.expected = tuple(expected)
        self.last_eval_iter = -1
        self.results: dict = {}
        self._restored = False

    def state_dict(self) -> dict:
        return {"last_eval_iter": self.last_eval_iter}

    def load_state_dict(self, state: dict) -> None:
        self.last_eval_iter = int(state["last_eval_iter"])
        self._restored = True

    def before_train(self) -> None:
        if not self._restored:  # a checkpoint without hook state: the last evaluation from metrics.json
            for rec in _metrics_before_resume(self.trainer):
                if any(str(k).startswith(("bbox/", "val/")) for k in rec):
                    self.last_eval_iter = max(self.last_eval_iter, rec["iteration"])

    def _run(self) -> None:
        self.last_eval_iter = self.trainer.iter
        self.results = self.eval_fn()
        storage = self.trainer.storage
        for k, v in self.results.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                storage.put_scalar(k, v, smooth=False)
        storage.request_write()  # written after the hooks that judge it: model_best.pth comes first
        for name in self.expected:
            value = self.results.get(name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                logger.warning(
                    "TEST.BEST_METRIC %r is not among the validation results (%s); no model_best.pth or "
                    "early stopping from this evaluation",
                    name,
                    ", ".join(sorted(self.results)[:12]),
                )

    def after_step(self) -> None:
        it = self.trainer.iter
        if self.period > 0 and (it + 1) % self.period == 0 and it < self.trainer.max_iter - 1:
            self._run()

    def after_train(self) -> None:
        if self.last_eval_iter != self.trainer.iter:
            self._run()


class _MetricJudge(HookBase):
    """Follows `metric` (mode max or min) through the evaluations: judge(value) is called once for each value
    put into the storage at the current iteration."""

    def __init__(self, metric: str, mode: str):
        if mode not in ("max", "min"):
            raise ConfigError(f"TEST.BEST_MODE: expected 'max' or 'min', found {mode!r}")
        self.metric, self.mode = metric, mode
        self.best: float | None = None
        self._judged_iter = -1
        self._restored = False

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _state(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "best": self.best}

    def _load(self, state: dict) -> bool:
        """False (and the state ignored) when it follows another metric or mode: rebuilt from metrics.json."""
        if (state.get("metric"), state.get("mode")) != (self.metric, self.mode):
            logger.info(
                "%s: the checkpoint followed %s (%s), this run follows %s (%s); its history is read from metrics.json",
                type(self).__name__,
                state.get("metric"),
                state.get("mode"),
                self.metric,
                self.mode,
            )
            return False
        self.best = state["best"]
        self._restored = True
        return True

    def before_train(self) -> None:
        if not self._restored:  # a checkpoint without (matching) hook state: replay the values in metrics.json
            for rec in _metrics_before_resume(self.trainer):
                v = rec.get(self.metric)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.replay(float(v))

    def replay(self, value: float) -> None:
        """Account for a value judged before the resume, without acting on it."""
        raise NotImplementedError

    def judge(self, value: float, final: bool) -> None:
        raise NotImplementedError

    def _check(self, final: bool) -> None:
        latest = self.trainer.storage.latest(self.metric)
        if latest is None:
            return
        value, it = latest
        if it != self.trainer.iter or it <= self._judged_iter:
            return
        self._judged_iter = it
        self.judge(value, final)

    def after_step(self) -> None:
        self._check(final=False)

    def after_train(self) -> None:
        self._check(final=True)


class BestCheckpointer(_MetricJudge):
    """model_best.pth (with best_metric and best_value in its `meddet` entry) whenever `metric` improves."""

    def __init__(self, metric: str = "bbox/AP50", mode: str = "max"):
        super().__init__(metric, mode)
        self.best_iter = -1

    def state_dict(self) -> dict:
        return {**self._state(), "best_iter": self.best_iter}

    def load_state_dict(self, state: dict) -> None:
        if self._load(state):
            self.best_iter = int(state["best_iter"])

    def replay(self, value: float) -> None:
        if self.improved(value):
            self.best = value

    def judge(self, value: float, final: bool) -> None:
        if not self.improved(value):
            return
        self.best, self.best_iter = value, self.trainer.iter
        if comm.is_main_process():
            self.trainer.save(
                "model_best.pth", update_last=False, extra={"best_metric": self.metric, "best_value": value}
            )
        logger.info("New best %s = %.4f at iteration %d (model_best.pth)", self.metric, value, self.trainer.iter)


class EarlyStopping(_MetricJudge):
    """Stop the loop after `patience` evaluations in a row without improvement of `metric`."""

    def __init__(self, metric: str = "bbox/AP50", mode: str = "max", patience: int = 1):
        if patience < 1:
            raise ConfigError(f"TEST.EARLY_STOP_PATIENCE: expected at least 1 for early stopping, found {patience}")
        super().__init__(metric, mode)
        self.patience = patience
        self.bad_evals = 0

    def state_dict(self) -> dict:
        return {**self._state(), "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        if self._load(state):
            self.bad_evals = int(state["bad_evals"])

    def replay(self, value: float) -> None:
        if self.improved(value):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1

    def judge(self, value: float, final: bool) -> None:
        self.replay(value)
        if not final and self.bad_evals >= self.patience:
            logger.info(
                "Early stopping: %s has not improved on %.4f for %d evaluations",
                self.metric,
                self.best,
                self.bad_evals,
            )
            self.trainer.stop_requested = True
