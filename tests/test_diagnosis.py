"""Training diagnosis: crafted metrics.json files are diagnosed as what they are; a healthy run raises nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from meddet.errors import DataError
from meddet.training.diagnosis import diagnose, format_findings


def _train(n=100, loss=lambda i: 2.0 * math.exp(-i / 30) + 0.2, data_time=0.01, time=0.5, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "iteration": 20 * i + 19,
            "total_loss": float(loss(i) * (1 + 0.03 * rng.standard_normal())),
            "lr": 0.01,
            "time": time,
            "data_time": data_time,
        }
        for i in range(n)
    ]


def _evals(values, key="val/total_loss", every=200):
    return [{"iteration": every * (k + 1) - 1, key: v} for k, v in enumerate(values)]


def _write(tmp_path, lines):
    path = tmp_path / "metrics.json"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def kinds(findings):
    return sorted(f.kind for f in findings)


def test_healthy_run_raises_nothing(tmp_path):
    lines = (
        _train()
        + _evals([1.5, 1.1, 0.9, 0.8, 0.75, 0.74, 0.73, 0.73, 0.72, 0.72])
        + _evals([10, 20, 30, 35, 38, 40, 41, 41.5, 42, 42], key="bbox/AP")
    )
    findings = diagnose(_write(tmp_path, lines))
    assert findings == []
    assert "no problem" in format_findings(findings)


def test_overfitting_from_rising_validation_loss(tmp_path):
    lines = _train() + _evals([1.5, 1.0, 0.8, 0.7, 0.72, 0.78, 0.85, 0.95, 1.1, 1.2])
    findings = diagnose(_write(tmp_path, lines))
    assert kinds(findings) == ["overfitting"]
    assert (
        "validation loss rose" in findings[0].evidence
        and "6 evaluations" in findings[0].evidence
        and "iteration 799" in findings[0].suggestion
    )


def test_overfitting_from_falling_ap(tmp_path):
    lines = _train() + _evals([20, 35, 45, 44, 41, 38, 36], key="bbox/AP")
    assert kinds(diagnose(lines)) == ["overfitting"]


def test_rising_validation_loss_with_rising_training_loss_is_not_overfitting():
    lines = _train(loss=lambda i: 1.0 + i / 200) + _evals([1.0, 1.1, 1.2, 1.3, 1.4])
    assert "overfitting" not in kinds(diagnose(lines))


def test_divergence_to_nan(tmp_path):
    lines = _train(n=10)
    lines[6]["total_loss"] = float("nan")
    path = tmp_path / "metrics.json"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))  # json writes NaN, as the trainer does
    findings = diagnose(path)
    assert kinds(findings) == ["divergence"]
    assert "139" in findings[0].evidence and "BASE_LR" in findings[0].suggestion


def test_divergence_from_rising_loss():
    assert kinds(diagnose(_train(loss=lambda i: 0.5 * math.exp(i / 40)))) == ["divergence"]


def test_oscillation():
    findings = diagnose(_train(loss=lambda i: 1.0 + 0.9 * (-1) ** i))
    assert kinds(findings) == ["oscillation"]


def test_plateau_from_the_start():
    findings = diagnose(_train(loss=lambda i: 1.4))
    assert kinds(findings) == ["plateau"]
    assert "BASE_LR" in findings[0].suggestion


def test_loading_bottleneck(tmp_path):
    findings = diagnose(_write(tmp_path, _train(data_time=0.2, time=0.5)))
    assert kinds(findings) == ["loading_bottleneck"]
    assert "40%" in findings[0].evidence and "NUM_WORKERS" in findings[0].suggestion
    assert "loading_bottleneck" in format_findings(findings)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="metrics.json"):
        diagnose(tmp_path / "metrics.json")
    bad = tmp_path / "bad" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match=str(bad)):
        diagnose(bad)
