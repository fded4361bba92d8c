"""The layered trainer (issue 17, item 4): user hooks see every event in order, hook state survives a resume,
builders can be overridden one at a time, best-checkpoint and early stopping work without each other, writers
are public. Validation is a deterministic stand-in: what a tiny run learns is not under test."""

import pytest
import torch

from meddet.training import (
    AMPStep,
    BestCheckpointer,
    EarlyStopping,
    EvalHook,
    EventWriter,
    HookBase,
    PeriodicCheckpointer,
    PeriodicWriter,
    SimpleStep,
    Trainer,
    train,
)
from meddet.training.events import read_metrics


def _cfg(tiny_cfg, **over):
    cfg = tiny_cfg.clone()
    cfg.defrost()
    for k, v in over.items():
        node = cfg
        *parents, last = k.split("__")
        for p in parents:
            node = node[p]
        node[last] = v
    return cfg


def _validated(tiny_cfg, **over):
    """Validation every 2 iterations, on the training file (the stand-in never reads it)."""
    return _cfg(tiny_cfg, DATASETS__VAL=tiny_cfg.DATASETS.TRAIN, TEST__EVAL_PERIOD=2, **over)


# AP50 by iteration: best at 3 (20), then worse: 15, 12, 11, 10, ...
SCORES = {1: 10.0, 3: 20.0, 5: 15.0, 7: 12.0, 9: 11.0, 11: 10.0, 13: 9.0}


@pytest.fixture
def fake_validation(monkeypatch):
    calls = []

    def evaluate_val(self):
        calls.append(self.iter)
        return {"bbox/AP50": SCORES.get(self.iter, 0.0), "bbox/AP": 1.0}

    monkeypatch.setattr(Trainer, "evaluate_val", evaluate_val)
    return calls


class Recorder(HookBase):
    """Every event with the trainer's iteration; after_backward also says whether gradients exist yet."""

    def __init__(self):
        self.events = []

    def before_train(self):
        self.events.append(("before_train", self.trainer.iter))

    def before_step(self):
        self.events.append(("before_step", self.trainer.iter))

    def after_backward(self):
        has_grad = any(p.grad is not None for p in self.trainer.model.parameters())
        self.events.append(("after_backward", self.trainer.iter, has_grad))

    def after_step(self):
        self.events.append(("after_step", self.trainer.iter))

    def after_train(self):
        self.events.append(("after_train", self.trainer.iter))


class Killed(BaseException):
    """Stands for kill -9 (no except Exception catches it)."""


class KillAt(HookBase):
    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise Killed


class StepCounter(HookBase):
    """A user hook with state: how many iterations it has seen, over every resume."""

    def __init__(self):
        self.count = 0

    def after_step(self):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_a_user_hook_passed_to_train_sees_every_event_in_order(tiny_cfg):
    rec = Recorder()
    train(_cfg(tiny_cfg, SOLVER__MAX_ITER=3), hooks=[rec])
    want = [("before_train", 0)]
    for it in range(3):
        want += [("before_step", it), ("after_backward", it, True), ("after_step", it)]
    want.append(("after_train", 2))
    assert rec.events == want


def test_user_hooks_run_after_the_defaults_and_before_the_checkpointer(tiny_cfg, fake_validation):
    first, later = Recorder(), Recorder()
    t = Trainer(_validated(tiny_cfg, TEST__EARLY_STOP_PATIENCE=2), hooks=[first])
    t.register(later)
    assert [type(h) for h in t.hooks] == [
        EvalHook,
        EarlyStopping,
        BestCheckpointer,
        PeriodicWriter,
        Recorder,
        Recorder,
        PeriodicCheckpointer,
    ]
    assert t.hooks[4] is first and t.hooks[5] is later


@pytest.mark.slow  # training runs, killed and resumed: make test runs it, test-fast does not
def test_hook_state_is_saved_with_each_checkpoint_and_restored_on_resume(tiny_cfg, fake_validation):
    """Early stopping after 3 evaluations without improvement: 15 (5), 12 (7), 11 (9) after 20 (3). Killed at
    8 and resumed from the checkpoint of 7, the patience counter (2) and a user hook's counter go on from the
    checkpoint, not from zero: the run stops at 9 as an uninterrupted one does."""
    cfg = _validated(tiny_cfg, SOLVER__MAX_ITER=20, SOLVER__CHECKPOINT_PERIOD=2, TEST__EARLY_STOP_PATIENCE=3)
    counter = StepCounter()
    t = Trainer(cfg, hooks=[counter, KillAt(8)])
    with pytest.raises(Killed):
        t.train()
    out = t.output_dir
    state = torch.load(out / "model_0000007.pth", weights_only=True)["meddet"]["hooks"]
    assert state["EarlyStopping"] == {"metric": "bbox/AP50", "mode": "max", "best": 20.0, "bad_evals": 2}
    assert state["BestCheckpointer"]["best"] == 20.0 and state["BestCheckpointer"]["best_iter"] == 3
    assert state["EvalHook"] == {"last_eval_iter": 7} and state["StepCounter"] == {"count": 8}
    # metrics.json is where checkpoints without hook state are rebuilt from: without it, only the
    # checkpoint can say how many evaluations went without improvement
    (out / "metrics.json").unlink()
    fake_validation.clear()
    counter = StepCounter()
    r = Trainer(cfg, resume=True, hooks=[counter])
    r.train()
    assert r.start_iter == 8 and r.iter == 9  # early stop at 9, as the uninterrupted run
    assert fake_validation == [9] and counter.count == 10  # iterations 0..9, counted across the resume
    stopper = next(h for h in r.hooks if isinstance(h, EarlyStopping))
    assert stopper.bad_evals == 3 and stopper.best == 20.0
    assert torch.load(out / "model_best.pth", weights_only=True)["iteration"] == 3


@pytest.mark.slow  # training runs, killed and resumed: make test runs it, test-fast does not
def test_a_checkpoint_without_hook_state_is_resumed_from_metrics_json(tiny_cfg, fake_validation):
    """Checkpoints of earlier meddet versions hold no hook state: best value and patience counter are read
    back from metrics.json up to the resumed iteration."""
    cfg = _validated(tiny_cfg, SOLVER__MAX_ITER=20, SOLVER__CHECKPOINT_PERIOD=2, TEST__EARLY_STOP_PATIENCE=3)
    t = Trainer(cfg, hooks=[KillAt(8)])
    with pytest.raises(Killed):
        t.train()
    ckpt_path = t.output_dir / "model_0000007.pth"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["meddet"]["hooks"]
    torch.save(ckpt, ckpt_path)
    fake_validation.clear()
    r = Trainer(cfg, resume=True)
    r.train()
    assert r.iter == 9 and fake_validation == [9]
    best = next(h for h in r.hooks if isinstance(h, BestCheckpointer))
    assert best.best == 20.0


def test_a_subclass_overriding_build_optimizer_trains_with_it(tiny_cfg):
    class CountingSGD(torch.optim.SGD):
        steps = 0

        def step(self, closure=None):
            CountingSGD.steps += 1
            return super().step(closure)

    class MyTrainer(Trainer):
        @classmethod
        def build_optimizer(cls, cfg, model):
            return CountingSGD([p for p in model.parameters() if p.requires_grad], lr=cfg.SOLVER.BASE_LR)

    t = MyTrainer(_cfg(tiny_cfg, SOLVER__MAX_ITER=3))
    assert isinstance(t.optimizer, CountingSGD) and t.step.optimizer is t.optimizer
    t.train()
    assert CountingSGD.steps == 3 and t.scheduler.optimizer is t.optimizer
    saved = torch.load(t.output_dir / "model_final.pth", weights_only=True)["optimizer"]
    assert len(saved["param_groups"]) == 1  # this optimizer's one group, not detectron2's bias/norm groups


@pytest.mark.slow  # a training run of several seconds: make test runs it, test-fast does not
def test_best_checkpoint_without_early_stopping(tiny_cfg, fake_validation):
    """TEST.EARLY_STOP_PATIENCE 0: model_best.pth follows the metric, the run goes on to MAX_ITER."""
    t = Trainer(_validated(tiny_cfg, SOLVER__MAX_ITER=10, TEST__EARLY_STOP_PATIENCE=0))
    assert not any(isinstance(h, EarlyStopping) for h in t.hooks)
    t.train()
    assert t.iter == 9 and fake_validation == [1, 3, 5, 7, 9]
    best = torch.load(t.output_dir / "model_best.pth", weights_only=True)
    assert best["iteration"] == 3 and best["meddet"]["best_value"] == 20.0


@pytest.mark.slow  # a training run of several seconds: make test runs it, test-fast does not
def test_early_stopping_without_best_checkpoint(tiny_cfg, fake_validation):
    class NoBest(Trainer):
        def build_hooks(self):
            return [h for h in super().build_hooks() if not isinstance(h, BestCheckpointer)]

    t = NoBest(_validated(tiny_cfg, SOLVER__MAX_ITER=20, TEST__EARLY_STOP_PATIENCE=2))
    t.train()
    assert t.iter == 7  # 15 (5) and 12 (7) after 20 (3)
    assert not (t.output_dir / "model_best.pth").exists() and (t.output_dir / "model_final.pth").is_file()
    evaluated = [l["iteration"] for l in read_metrics(t.output_dir / "metrics.json") if "bbox/AP50" in l]
    assert evaluated == [1, 3, 5, 7]  # every evaluation has its line


@pytest.mark.slow  # a training run of several seconds: make test runs it, test-fast does not
def test_writers_are_public_and_closed(tiny_cfg):
    class ListWriter(EventWriter):
        def __init__(self):
            self.iterations, self.closed = [], False

        def write(self, storage):
            latest = storage.latest("total_loss")
            self.iterations.append(latest[1])

        def close(self):
            self.closed = True

    mine = ListWriter()

    class MyTrainer(Trainer):
        def build_writers(self):
            return [*super().build_writers(), mine]

    t = MyTrainer(_cfg(tiny_cfg, SOLVER__MAX_ITER=3))
    assert mine in t.writers
    t.train()
    assert mine.iterations[0] == 2 and mine.closed  # the last iteration, then the end of training
    assert len(read_metrics(t.output_dir / "metrics.json")) >= 1  # the default writers still write


# ---------------------------------------------------------------------------------------------- the step object
class TwoLosses(torch.nn.Module):
    """Losses of a batch of numbers: (w·x)² and |b|, so the gradients are known in closed form."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        self.b = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, batch):
        x = torch.stack([b["x"] for b in batch])
        return {"loss_a": ((x @ self.w) ** 2).mean(), "loss_b": self.b.abs() * batch[0]["scale"]}


def _batch(scale=1.0):
    return [{"x": torch.tensor([1.0, 1.0]), "scale": scale}, {"x": torch.tensor([2.0, 0.0]), "scale": scale}]


def test_step_guards_against_a_non_finite_loss_before_stepping():
    model = TwoLosses()
    step = SimpleStep(model, torch.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match=r"loss became inf at iteration 7 \(losses: .*loss_b.*BASE_LR"):
        step(_batch(scale=float("inf")), 7)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("clip_type", ["full_model", "value"])
def test_amp_step_unscales_before_the_hooks_and_clipping(clip_type):
    """after_backward sees the true gradients (not multiplied by the loss scale), clipping applies to them,
    and the parameters move as in float32 (CPU autocast stands in for CUDA's)."""
    from meddet.config import get_cfg

    clip = get_cfg().SOLVER.CLIP_GRADIENTS.clone()
    clip.defrost()
    clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE = True, clip_type, 1.0
    seen = {}
    moved = {}
    for name, cls, kw in (("fp32", SimpleStep, {}), ("amp", AMPStep, {"device_type": "cpu", "dtype": torch.bfloat16})):
        model = TwoLosses()
        step = cls(model, torch.optim.SGD(model.parameters(), lr=0.1), clip, **kw)
        w0 = model.w.detach().clone()
        step(_batch(), 0, after_backward=lambda m=model, n=name: seen.setdefault(n, m.w.grad.clone()))
        moved[name] = model.w.detach() - w0
    # d/dw mean((x·w)²) = mean(2 (x·w) x) = ((-1)·2·[1,1] + 2·2·[2,0]) / 2 = [3, -1]
    torch.testing.assert_close(seen["fp32"], torch.tensor([3.0, -1.0]))
    torch.testing.assert_close(seen["amp"], seen["fp32"], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(moved["amp"], moved["fp32"], rtol=2e-2, atol=2e-2)
    assert moved["fp32"].abs().max() <= 0.1 * 1.0 + 1e-6  # clipped to 1 before the step of lr 0.1
