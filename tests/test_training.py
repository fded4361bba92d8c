"""The training loop: detectron2-style run folder, checkpoints, resume, no silent overwrite."""

import pytest
import torch
from conftest import seeded

from meddet.config import load_config
from meddet.errors import ConfigError
from meddet.training import Trainer, last_checkpoint_path
from meddet.training.events import read_metrics

D2_KEYS = {
    "iteration",
    "total_loss",
    "loss_cls",
    "loss_box_reg",
    "loss_rpn_cls",
    "loss_rpn_loc",
    "lr",
    "time",
    "data_time",
}


def _train(cfg, resume=False, **over):
    cfg = cfg.clone()
    cfg.defrost()
    for k, v in over.items():
        node = cfg
        *parents, last = k.split("__")
        for p in parents:
            node = node[p]
        node[last] = v
    t = Trainer(cfg, resume=resume)
    t.train()
    return t


def test_run_folder_has_detectron2_metrics_and_checkpoints(tiny_cfg):
    t = _train(tiny_cfg, SOLVER__MAX_ITER=6, SOLVER__CHECKPOINT_PERIOD=3)
    out = t.output_dir
    lines = read_metrics(out / "metrics.json")
    assert lines and D2_KEYS <= set(lines[-1])
    assert lines[-1]["iteration"] == 5
    assert all(torch.isfinite(torch.tensor(l["total_loss"])) for l in lines)
    assert (out / "model_0000002.pth").is_file() and (out / "model_final.pth").is_file()
    assert last_checkpoint_path(out).name == "model_final.pth"
    saved = load_config(out / "config.yaml")
    assert list(saved.DATASETS.CLASS_NAMES) == ["square", "disc"]  # class names travel with the run
    assert saved.SEED == seeded(7)
    assert list(out.glob("events.out.tfevents.*"))


def test_resume_continues_from_last_checkpoint(tiny_cfg):
    _train(tiny_cfg, SOLVER__MAX_ITER=4, SOLVER__CHECKPOINT_PERIOD=2)
    t = _train(tiny_cfg, resume=True, SOLVER__MAX_ITER=8, SOLVER__CHECKPOINT_PERIOD=2)
    assert t.start_iter == 4
    its = [l["iteration"] for l in read_metrics(t.output_dir / "metrics.json") if "total_loss" in l]
    assert its == sorted(set(its)) and its[-1] == 7


def test_resume_reproduces_the_uninterrupted_run(tiny_cfg, tmp_path):
    """Same seed: stopping at a checkpoint and resuming gives the same weights as one straight run."""
    a = tiny_cfg.clone()
    a.defrost()
    a.OUTPUT_DIR = str(tmp_path / "a")
    b = tiny_cfg.clone()
    b.defrost()
    b.OUTPUT_DIR = str(tmp_path / "b")
    straight = _train(a, SOLVER__MAX_ITER=6, SOLVER__CHECKPOINT_PERIOD=100)
    _train(b, SOLVER__MAX_ITER=3, SOLVER__CHECKPOINT_PERIOD=100)
    resumed = _train(b, resume=True, SOLVER__MAX_ITER=6, SOLVER__CHECKPOINT_PERIOD=100)
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    for k in sa:
        if sa[k].is_floating_point():
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_refuses_to_overwrite_a_run(tiny_cfg):
    _train(tiny_cfg, SOLVER__MAX_ITER=2)
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(tiny_cfg)


def test_nan_loss_is_reported_clearly(tiny_cfg):
    """An absurd learning rate: the first step moves the weights to ~1e27, whose products overflow float32,
    so the next loss is not finite on any machine (1e6 diverged within 30 steps only on some CPUs)."""
    with pytest.raises(FloatingPointError, match=r"at iteration [12]\b.*BASE_LR"):
        _train(tiny_cfg, SOLVER__MAX_ITER=5, SOLVER__BASE_LR=1e30, SOLVER__WARMUP_ITERS=0)


def test_lr_schedule_warmup_then_steps():
    from meddet.training.solver import lr_factor

    cfg = load_config(
        None,
        [
            "SOLVER.WARMUP_ITERS",
            "10",
            "SOLVER.WARMUP_FACTOR",
            "0.1",
            "SOLVER.STEPS",
            "(20, 30)",
            "SOLVER.GAMMA",
            "0.5",
            "SOLVER.MAX_ITER",
            "40",
        ],
    )
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 10) == 1.0 and lr_factor(cfg, 25) == 0.5 and lr_factor(cfg, 35) == 0.25
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    assert lr_factor(cfg, 40) == pytest.approx(0.0, abs=1e-9) and lr_factor(cfg, 20) == pytest.approx(0.5)


def test_best_checkpoint_and_early_stopping_follow_the_metric(tiny_cfg, monkeypatch):
    """model_best.pth is written when TEST.BEST_METRIC improves; training stops after PATIENCE bad evaluations."""
    scores = iter([10.0, 30.0, 20.0, 25.0, 5.0, 50.0, 60.0])
    monkeypatch.setattr(Trainer, "evaluate_val", lambda self: {"bbox/AP50": next(scores)})
    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.DATASETS.VAL = cfg.DATASETS.TRAIN
    cfg.TEST.EVAL_PERIOD = 2
    cfg.TEST.EARLY_STOP_PATIENCE = 2
    cfg.SOLVER.MAX_ITER = 20
    t = Trainer(cfg)
    t.train()
    # evaluations at iterations 1, 3, 5, 7: 10 (best), 30 (best), 20, 25 -> two without improvement: stop at 7
    assert t.iter == 7
    best = torch.load(t.output_dir / "model_best.pth", weights_only=True)
    assert best["iteration"] == 3 and best["meddet"]["best_value"] == 30.0
    assert (t.output_dir / "model_final.pth").is_file()
    lines = read_metrics(t.output_dir / "metrics.json")
    assert [l["bbox/AP50"] for l in lines if "bbox/AP50" in l] == [10.0, 30.0, 20.0, 25.0]
