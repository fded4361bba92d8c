"""The results notebook executes headless against a tiny run and shows every plot."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, TINY_MODEL_OPTS, make_tiny_coco

pytestmark = pytest.mark.slow

NOTEBOOK = REPO / "notebooks" / "results_analysis.ipynb"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("nbrun")
    coco = make_tiny_coco(root / "data")
    run = root / "run"
    opts = TINY_MODEL_OPTS + [
        "DATASETS.TRAIN",
        f"('{coco}',)",
        "DATASETS.VAL",
        f"('{coco}',)",
        "DATASETS.TEST",
        f"('{coco}',)",
        "SOLVER.MAX_ITER",
        "12",
        "TEST.EVAL_PERIOD",
        "6",
        "OUTPUT_DIR",
        str(run),
    ]
    for args in (
        ["-c", "train", "--config-file", str(REPO / "configs" / "Base-RCNN-FPN.yaml"), *opts],
        ["-c", "evaluate", "--config-file", str(run / "config.yaml")],
    ):
        proc = subprocess.run(
            [sys.executable, "detectron.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_notebook_runs_and_shows_every_plot(tiny_run, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MEDDET_RUN_DIR", str(tiny_run))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "RUN_DIR" in params[0].source
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    pngs = sorted(p.name for p in (tiny_run / "eval").glob("*.png"))
    assert pngs, "the evaluation wrote plots"
    # losses, learning rate, accuracy, validation metrics, time split, class distribution + each eval plot
    assert len(figures) == 6 + len(pngs)
    text = "".join(o.get("text", "") for o in outputs)
    assert "Training diagnosis" in text and "training log lines" in text
