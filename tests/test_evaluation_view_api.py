"""Evaluation views behind one interface: each view alone computes only what it needs and writes only
its files; all views give the same metrics and files as before the redesign; scoring a results file
imports no torch; validation during training asks for COCO only."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from meddet.errors import ConfigError
from meddet.evaluation import run_evaluation
from meddet.evaluation.views import VIEWS, EvaluationView, register_view, resolve_views, views_for_metrics

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).parent / "data" / "eval_views_reference.json"
FAST = {"bootstrap_samples": 50, "gallery_size": 4}


def write_case(root: Path) -> tuple[Path, Path]:
    """20 images of 10 patients (two sides), two classes, a few jittered hits and random false positives;
    the images exist so the error galleries are drawn. Also made the reference in tests/data (on the
    evaluator before views existed)."""
    rng = np.random.default_rng(0)
    imgs, anns, dets = [], [], []
    for i in range(20):
        imgs.append(
            {
                "id": i + 1,
                "file_name": f"im{i}.png",
                "height": 100,
                "width": 100,
                "patient_id": f"p{i // 2}",
                "laterality": "L" if i % 4 < 2 else "R",
            }
        )
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, 60, 2)
            c = int(rng.integers(1, 3))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": c,
                    "bbox": [x, y, 20, 20],
                    "area": 400,
                    "iscrowd": 0,
                }
            )
            dets.append(
                {"image_id": i + 1, "category_id": c, "bbox": [x + 1, y, 20, 21], "score": float(rng.uniform(0.3, 1))}
            )
        for _ in range(3):
            dets.append(
                {
                    "image_id": i + 1,
                    "category_id": int(rng.integers(1, 3)),
                    "bbox": [float(rng.uniform(0, 60)), float(rng.uniform(0, 60)), 15, 15],
                    "score": float(rng.uniform(0, 0.7)),
                }
            )
        cv2.imwrite(str(root / f"im{i}.png"), np.full((100, 100), 40, np.uint8))
    gt = {"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (root / "gt.json").write_text(json.dumps(gt))
    (root / "res.json").write_text(json.dumps(dets))
    return root / "gt.json", root / "res.json"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_case(tmp_path_factory.mktemp("case"))


@pytest.fixture(scope="module")
def full(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return run_evaluation(*case, out, **FAST), out


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_all_views_give_the_metrics_and_files_of_the_evaluator_before_views(full):
    res, out = full
    ref = json.loads(REFERENCE.read_text())
    assert list(res.metrics) == list(ref["metrics"])  # same names, same order in metrics.json
    assert all(_same(res.metrics[k], v) for k, v in ref["metrics"].items())
    files = {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest() if p.suffix != ".png" else None) for p in out.iterdir()
    }
    assert files == ref["files"]  # every file, and each CSV / JSON / report byte for byte
    assert res.views == tuple(VIEWS) and set(res.results) == set(VIEWS)


@pytest.mark.parametrize("name", list(VIEWS))
def test_each_view_alone_writes_only_its_files(name, case, full, tmp_path):
    res = run_evaluation(*case, tmp_path, views=[name], **FAST)
    view = VIEWS[name]
    written = {p.name for p in tmp_path.iterdir()}
    mine = {n for n in written if any(fnmatch.fnmatch(n, pat) for pat in view.files)}
    assert written - mine == {"metrics.json"}, f"{name} wrote files of other views"
    full_names = {p.name for p in full[1].iterdir()}
    assert mine == {n for n in full_names if any(fnmatch.fnmatch(n, pat) for pat in view.files)}
    # computed: the view and what it reads, nothing else; its metrics are those of the full run
    _, needed = resolve_views([name])
    assert set(res.results) == set(needed)
    assert res.views == (name,)
    for k, v in res.metrics.items():
        assert _same(v, full[0].metrics[k]), k
    assert json.loads((tmp_path / "metrics.json").read_text()).keys() == res.metrics.keys()


def test_coco_only_path_matches_nothing(case):
    res = run_evaluation(*case, views="coco", **FAST)
    assert res.matches is None and res.agnostic_matches is None and res.prf1 is None and res.froc is None
    assert {k.split("/")[0] for k in res.metrics} == {"bbox", "gt"}
    assert res.metrics["bbox/AP"] > 0


def test_views_for_metrics_and_bad_view_names():
    assert views_for_metrics(["bbox/", "bbox/AP50"]) == ("coco",)
    assert views_for_metrics(["prf1/F1", "froc/sens@1fp", "ci95_low/bbox/AP", "breast/auc"]) == (
        "prf1",
        "froc",
        "exam",
        "bootstrap",
    )
    with pytest.raises(ConfigError, match="no/such"):
        views_for_metrics(["no/such"])
    with pytest.raises(ConfigError, match="expected one or more of"):
        resolve_views(["coco", "nope"])
    assert resolve_views("per_class,coco") == (("coco", "per_class"), ("coco", "prf1", "per_class"))


def test_a_new_view_is_one_registered_class(case, tmp_path):
    try:

        @register_view
        class Detections(EvaluationView):
            name = "n_dets"
            requires = ("prf1",)
            metric_prefixes = ("n_dets/",)
            files = ("n_dets.txt",)

            def compute(self, ctx):
                return int(ctx.result("prf1").at_threshold.tp.sum()), len(ctx.data.det_score)

            def metrics(self, result, ctx):
                return {"n_dets/tp": float(result[0]), "n_dets/all": float(result[1])}

            def write(self, result, res, out, opts):
                (out / "n_dets.txt").write_text(f"{result}\n")
                return [out / "n_dets.txt"]

        res = run_evaluation(*case, tmp_path, views=["n_dets"], **FAST)
        assert res.view("n_dets")[1] == res.metrics["n_dets/all"] == len(json.loads(case[1].read_text()))
        assert {p.name for p in tmp_path.iterdir()} == {"metrics.json", "n_dets.txt"}
        assert views_for_metrics(["n_dets/tp"]) == ("n_dets",)
    finally:
        VIEWS.pop("n_dets", None)


_NO_TORCH = """
import runpy, sys
sys.argv = ["detectron.py"] + sys.argv[1:]
code = 0
try:
    runpy.run_path("detectron.py", run_name="__main__")
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "torchvision", "albumentations") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


@pytest.mark.parametrize("views", [[], ["--views", "coco"]], ids=["all-views", "coco-only"])
def test_scoring_a_results_file_imports_no_torch(case, tmp_path, views):
    gt, res = case
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _NO_TORCH,
            "-c",
            "evaluate",
            "--gt",
            str(gt),
            "--predictions",
            str(res),
            "--output",
            str(tmp_path / "eval"),
            *views,
            "EVAL.BOOTSTRAP_SAMPLES",
            "20",
            "EVAL.GALLERY_SIZE",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout[-500:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["bbox/AP"] > 0
    assert ("prf1/F1" in metrics) == (not views)
    assert (tmp_path / "eval" / "report.md").is_file() == (not views)


def test_validation_during_training_computes_only_the_coco_view(tiny_cfg, tiny_coco, monkeypatch):
    from meddet.training import Trainer

    computed = []
    for view in VIEWS.values():
        orig = type(view).compute

        def spy(self, ctx, _orig=orig):
            computed.append(self.name)
            return _orig(self, ctx)

        monkeypatch.setattr(type(view), "compute", spy)
    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.DATASETS.VAL = (str(tiny_coco),)
    cfg.TEST.EVAL_PERIOD = 1
    out = Trainer(cfg).evaluate_val()
    assert computed == ["coco"]
    assert "bbox/AP" in out and "bbox/AP50" in out and not any(k.startswith("prf1/") for k in out)


def test_evaluation_kwargs_reads_dicom_options_only_for_the_galleries():
    from meddet.config import get_cfg
    from meddet.data.dataset import dicom_kwargs
    from meddet.evaluation import evaluation_kwargs

    cfg = get_cfg()
    assert evaluation_kwargs(cfg)["dicom_kwargs"] == dicom_kwargs(cfg)  # unchanged by default
    assert evaluation_kwargs(cfg, "errors")["dicom_kwargs"] == dicom_kwargs(cfg)
    assert evaluation_kwargs(cfg, "coco")["dicom_kwargs"] is None


def test_coco_only_in_process_loads_no_plotting_or_tables(case):
    code = (
        "import sys; from meddet.evaluation import run_evaluation; "
        f"m = run_evaluation({str(case[0])!r}, {str(case[1])!r}, views='coco').metrics; "
        "print(sorted(x for x in ('torch', 'pandas', 'matplotlib', 'scipy', 'pydicom') if x in sys.modules), "
        "m['bbox/AP'] > 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] True"
