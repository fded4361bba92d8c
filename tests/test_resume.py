"""Resume heals a damaged run folder (issue 19, item 3): last_checkpoint is advisory, the newest checkpoint
that loads is used, nothing of the run is overwritten, the end-of-training steps are resumable, and
metrics.json after kills and resumes equals an uninterrupted run's."""

import hashlib
import logging
import os

import pytest
import torch

from meddet.errors import ConfigError, ModelError
from meddet.training import HookBase, Trainer, last_checkpoint_path
from meddet.training.events import read_metrics

# tiny training runs killed, damaged and resumed (~15 s)
pytestmark = pytest.mark.slow

WALL_CLOCK = {"time", "data_time", "eta_seconds"}


class Killed(BaseException):
    """Stands for kill -9: nothing after the raise runs (no except Exception catches it)."""


class KillAt(HookBase):
    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise Killed


def _cfg(tiny_cfg, **over):
    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.DATASETS.VAL = cfg.DATASETS.TRAIN
    cfg.TEST.EVAL_PERIOD = 2
    for k, v in over.items():
        node = cfg
        *parents, last = k.split("__")
        for p in parents:
            node = node[p]
        node[last] = v
    return cfg


@pytest.fixture(autouse=True)
def fake_validation(monkeypatch):
    """A deterministic stand-in for validation (what it measures is not under test); records calls."""
    calls = []

    def evaluate_val(self):
        calls.append(self.iter)
        if getattr(self, "kill_in_validation_at", None) == self.iter:
            raise Killed
        ap50 = 10 + self.iter if self.iter <= 5 else 20 - self.iter  # best at 5, then worse
        return {"bbox/AP50": float(ap50), "bbox/AP": float(self.iter)}

    monkeypatch.setattr(Trainer, "evaluate_val", evaluate_val)
    return calls


def _killed_run(cfg, at):
    t = Trainer(cfg)
    t.register(KillAt(at))
    with pytest.raises(Killed):
        t.train()
    return t.output_dir


def _resume(cfg):
    t = Trainer(cfg, resume=True)
    t.train()
    return t


def _lines(out):
    return [{k: v for k, v in l.items() if k not in WALL_CLOCK} for l in read_metrics(out / "metrics.json")]


def _assert_same_metrics(got, want):
    assert [sorted(l) for l in got] == [sorted(l) for l in want]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=1e-4, abs=1e-6), (g, w)


def _digests(out, names):
    return {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in names}


def _reference(cfg, tmp_path):
    """metrics.json lines of the same run done without interruption."""
    cfg = cfg.clone()
    cfg.OUTPUT_DIR = str(tmp_path / "straight")
    Trainer(cfg).train()
    return _lines(tmp_path / "straight")


@pytest.fixture
def reference(tiny_cfg, tmp_path):
    return _reference(_cfg(tiny_cfg), tmp_path)


def test_pointer_to_a_missing_file_resumes_from_the_newest_checkpoint(tiny_cfg, reference, caplog):
    cfg = _cfg(tiny_cfg)
    out = _killed_run(cfg, at=5)  # checkpoints at iterations 1 and 3; iteration 5's metrics line written
    (out / "last_checkpoint").write_text("model_0000099.pth")
    kept = _digests(out, ["model_0000001.pth", "model_0000003.pth"])
    with caplog.at_level(logging.INFO, logger="meddet"):
        t = _resume(cfg)
    assert t.start_iter == 4  # not iteration 0
    assert "model_0000099.pth" in caplog.text and "does not exist" in caplog.text
    assert "Resuming from" in caplog.text and "model_0000003.pth" in caplog.text
    assert _digests(out, kept) == kept  # the run's checkpoints are not overwritten
    _assert_same_metrics(_lines(out), reference)  # no duplicated iteration lines, same values


def test_random_bytes_in_the_pointer_are_no_unicode_traceback(tiny_cfg, caplog):
    cfg = _cfg(tiny_cfg, SOLVER__MAX_ITER=4)
    out = _killed_run(cfg, at=3)
    (out / "last_checkpoint").write_bytes(b"\xff\xfe\x80" + os.urandom(40))
    with caplog.at_level(logging.WARNING, logger="meddet"):
        assert last_checkpoint_path(out) is None
    assert "last_checkpoint is not text" in caplog.text
    t = _resume(cfg)
    assert t.start_iter == 2 and (out / "model_final.pth").is_file()
    its = [l["iteration"] for l in read_metrics(out / "metrics.json") if "total_loss" in l]
    assert its == sorted(set(its))


def test_truncated_newest_checkpoint_falls_back_to_the_intact_previous_one(tiny_cfg, tmp_path, caplog):
    cfg = _cfg(tiny_cfg, TEST__EVAL_PERIOD=0)  # no model_best.pth (also a candidate when it is newer)
    reference = _reference(cfg, tmp_path)
    out = _killed_run(cfg, at=5)
    newest = out / "model_0000003.pth"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.INFO, logger="meddet"):
        t = _resume(cfg)
    assert t.start_iter == 2
    # the damaged file is kept aside, not overwritten; the message says what is wrong in whole sentences
    assert (out / "model_0000003.pth.damaged").read_bytes() == data[: len(data) // 2]
    assert "the file is truncated or damaged" in caplog.text
    assert "miniz" not in caplog.text and "file is)" not in caplog.text
    assert torch.load(out / "model_0000003.pth", weights_only=True)["iteration"] == 3  # re-made by the resume
    _assert_same_metrics(_lines(out), reference)


def test_no_checkpoint_that_loads_is_one_clear_error_and_nothing_changes(tiny_cfg):
    cfg = _cfg(tiny_cfg, SOLVER__MAX_ITER=4, TEST__EVAL_PERIOD=0)
    out = _killed_run(cfg, at=3)
    for name in ("model_0000001.pth",):
        (out / name).write_bytes(os.urandom(300))
    (out / "last_checkpoint").write_text("model_0000001.pth")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ModelError) as e:
        Trainer(cfg, resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "model_0000001.pth" in msg and "iteration 0 would overwrite" in msg
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(ConfigError, match="--resume"):  # nor does a run without --resume start over it
        Trainer(cfg)


def test_checkpoints_without_pointer_are_found_and_protected(tiny_cfg):
    cfg = _cfg(tiny_cfg, SOLVER__MAX_ITER=4)
    out = _killed_run(cfg, at=3)
    (out / "last_checkpoint").unlink()
    with pytest.raises(ConfigError, match="model_0000001.pth"):
        Trainer(cfg)
    assert Trainer(cfg, resume=True).start_iter == 2


def test_kill_during_final_validation_is_repaired_by_resume(tiny_cfg, reference, fake_validation, caplog):
    cfg = _cfg(tiny_cfg)
    t = Trainer(cfg)
    t.kill_in_validation_at = 5  # the loop ended; the final validation is killed
    with pytest.raises(Killed):
        t.train()
    out = t.output_dir
    assert (out / "model_final.pth").is_file() and not (out / "training_done.json").exists()
    best_before = torch.load(out / "model_best.pth", weights_only=True)["iteration"]
    fake_validation.clear()
    with caplog.at_level(logging.INFO, logger="meddet"):
        r = _resume(cfg)
    assert "Nothing to do" not in caplog.text and "end-of-training steps" in caplog.text
    assert fake_validation == [5]  # only the final validation is repeated, no training
    assert r.start_iter == 6
    _assert_same_metrics(_lines(out), reference)
    best = torch.load(out / "model_best.pth", weights_only=True)
    assert best["iteration"] == 5 and best_before == 3  # AP50 15 at iteration 5 beats 13 at iteration 3
    assert (out / "training_done.json").is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="meddet"):
        _resume(cfg)
    assert "Nothing to do" in caplog.text and fake_validation == [5]


def test_resume_after_early_stop_does_not_train_on(tiny_cfg, fake_validation):
    cfg = _cfg(tiny_cfg, SOLVER__MAX_ITER=20, TEST__EARLY_STOP_PATIENCE=1)
    t = Trainer(cfg)
    t.train()  # AP50 11 (1), 13 (3), 15 (5), 13 (7): stop at 7
    assert t.iter == 7
    (t.output_dir / "training_done.json").unlink()  # as if killed during the end-of-training steps
    fake_validation.clear()
    r = _resume(cfg)
    assert r.iter == 7 and fake_validation == []  # stopped: no training; iteration 7 was already evaluated
    assert (t.output_dir / "training_done.json").is_file()
