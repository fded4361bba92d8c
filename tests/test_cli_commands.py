"""The command-line front ends in the package (meddet.cli): each command's --help shows only its own options,
detectron.py's -c form and the `meddet` console scripts run the same commands, and an evaluation reads its
ground-truth split once (meddet.data.coco.DatasetSplit handed down through the applications)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from meddet.cli import COMMANDS, parse_args, parse_dash_c


def _help(capsys, fn) -> str:
    with pytest.raises(SystemExit) as e:
        fn()
    assert e.value.code == 0
    return capsys.readouterr().out


def test_meddet_train_help_shows_train_options_only(capsys):
    out = _help(capsys, lambda: parse_args(["train", "--help"]))
    assert "--resume" in out and "--config-file" in out and "KEY VALUE" in out
    for other in ("--input", "--predictions", "--score-thresh", "--repo-id", "--no-fail-on-verdict"):
        assert other not in out, other


def test_detectron_dash_c_evaluate_help_shows_evaluate_options_only():
    # As users call it: a subprocess from the repository root (no torch is imported for --help).
    done = subprocess.run(
        [sys.executable, "detectron.py", "-c", "evaluate", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "usage: detectron.py -c evaluate" in done.stdout
    for own in ("--gt", "--predictions", "--views", "--ensemble", "--untuned"):
        assert own in done.stdout, own
    for other in ("--resume", "--input", "--repo-id", "--direction", "--method"):
        assert other not in done.stdout, other


def test_options_of_another_command_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        parse_dash_c(["-c", "train", "--input", "x.png"])
    assert e.value.code == 2
    assert "unrecognized arguments: --input" in capsys.readouterr().err


def test_dash_c_form_parses_as_before():
    """-c anywhere, options before or after the KEY VALUE overrides, --ensemble members ended by a key."""
    a = parse_dash_c(["--config-file", "c.yaml", "SOLVER.MAX_ITER", "3", "-c", "train", "--resume", "SEED", "1"])
    assert (a.command, a.config_file, a.resume, a.opts) == (
        "train",
        "c.yaml",
        True,
        ["SOLVER.MAX_ITER", "3", "SEED", "1"],
    )
    a = parse_dash_c(["--command=predict", "--input", "a.png", "--ensemble", "r1", "r2", "TEST.SCORE_THRESH", "0.2"])
    assert (a.command, a.input, a.ensemble, a.opts) == (
        "predict",
        ["a.png"],
        ["r1", "r2"],
        ["TEST.SCORE_THRESH", "0.2"],
    )
    assert parse_args(["predict", "--input", "a.png", "--ensemble", "r1", "MODEL.DEVICE", "cpu"]).opts == [
        "MODEL.DEVICE",
        "cpu",
    ]


def test_compare_takes_its_run_folders(tmp_path, capsys):
    """Run folders as compare's own positional arguments (the old `-c compare a b` form) or --runs."""
    for name, ap in (("a", 10.0), ("b", 20.0)):
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "metrics.json").write_text(json.dumps({"bbox/AP": ap, "bbox/AP50": 2 * ap}))
    from meddet.cli import run_command

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for args in (parse_dash_c(["-c", "compare", a, b]), parse_args(["compare", "--runs", a, b])):
        assert run_command(args) == 0
        out = capsys.readouterr().out
        assert "20" in out and "10" in out


def test_console_scripts_are_declared_and_python_m_meddet_lists_the_commands():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {
        "meddet": "meddet.cli:main",
        "meddet-convert": "meddet.cli.convert:main",
        "meddet-web": "meddet.cli.web:main",
    }
    import importlib

    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name))
    done = subprocess.run([sys.executable, "-m", "meddet", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert command in done.stdout, command


@pytest.mark.parametrize(
    "script, needle",
    [
        (["convert_dataset.py", "--help"], "cbis-ddsm"),
        (["webapp/web.py", "--help"], "--max-upload-mb"),
        (["scripts/demo.py", "--help"], "--output"),
        (["scripts/demo_cytology.py", "--help"], "--output"),
    ],
)
def test_script_front_ends_start_from_the_repository_root(script, needle):
    """The scripts import the installed package (no sys.path patching); PYTHONPATH names this checkout so
    the test checks this tree's package even where another checkout is installed."""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, *script], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert needle in done.stdout


def test_an_evaluation_reads_its_ground_truth_once(tiny_cfg, tmp_path, monkeypatch):
    """evaluate_model on a plain model: the test split's COCO file is opened once (class names, loader
    records, evaluator and report all use the loaded DatasetSplit), and the report's model summary is of
    the model that was evaluated (no second model is built)."""
    import builtins

    import meddet.inference.predictor
    import meddet.modeling
    from meddet.apps.evaluate import evaluate_model
    from meddet.modeling import build_model
    from meddet.modeling.checkpoint import save_checkpoint

    cfg = tiny_cfg.clone()
    cfg.defrost()
    gt = Path(cfg.DATASETS.TEST[0])
    cfg.MODEL.WEIGHTS = str(
        save_checkpoint(tmp_path / "w.pth", build_model(cfg), extra={"class_names": ["square", "disc"]})
    )

    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file, *a, **k):
        if Path(str(file)).resolve() == gt.resolve():
            opened.append(str(file))
        return real_open(file, *a, **k)

    built: list[int] = []
    real_build = meddet.modeling.build_model

    def counting_build(*a, **k):
        built.append(1)
        return real_build(*a, **k)

    monkeypatch.setattr(builtins, "open", counting_open)
    # every way to the builder: the package's name (looked up when called) and the Predictor's own binding
    monkeypatch.setattr(meddet.modeling, "build_model", counting_build)
    monkeypatch.setattr(meddet.inference.predictor, "build_model", counting_build)
    metrics = evaluate_model(cfg, out_dir=tmp_path / "eval", views=["coco", "report"])
    assert "bbox/AP" in metrics
    assert len(opened) == 1, opened
    assert len(built) == 1  # the Predictor's model only
    assert "Model summary" in (tmp_path / "eval" / "report.md").read_text()
