"""benchmarks/peer_benchmark.py without Ultralytics: its predictions become COCO results scored like meddet's
(category ids, xywh), the region split of the real aerial images keeps test rows out of training, the table.
Ultralytics itself is a benchmark-only extra (`make bench-peer`), not a test dependency: the one end-to-end test
that needs it is skipped where it is not importable."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("peer_benchmark", REPO / "benchmarks" / "peer_benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["peer_benchmark"] = mod
    spec.loader.exec_module(mod)
    return mod


pb = _load_bench()


def test_ultralytics_boxes_become_coco_results_with_mapped_ids():
    res = pb.ultralytics_to_coco(
        np.array([[10.0, 20.0, 40.0, 25.0], [0, 0, 5, 5]]),
        np.array([0.9, 0.01]),
        np.array([1.0, 0.0]),
        image_id=7,
        category_ids=[3, 8],
    )
    assert res == [
        {"image_id": 7, "category_id": 8, "bbox": [10.0, 20.0, 30.0, 5.0], "score": pytest.approx(0.9)},
        {"image_id": 7, "category_id": 3, "bbox": [0.0, 0.0, 5.0, 5.0], "score": pytest.approx(0.01)},
    ]
    assert all(isinstance(r["category_id"], int) and isinstance(r["score"], float) for r in res)
    assert json.loads(json.dumps(res))  # plain JSON types, as the results file needs
    assert pb.ultralytics_to_coco(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 1, [1]) == []
    with pytest.raises(ValueError, match="class index 2"):
        pb.ultralytics_to_coco([[0, 0, 1, 1]], [0.5], [2], 1, [1, 2])
    with pytest.raises(ValueError, match="one of each"):
        pb.ultralytics_to_coco([[0, 0, 1, 1]], [0.5, 0.4], [0], 1, [1])


def test_yolo_labels_read_back_as_predictions_score_perfectly(tmp_path):
    """coco_to_yolo writes class k = k-th category by id; predictions in that index space, converted back with
    the same order, match the ground truth exactly (AP50 100 for every class) even with sparse category ids."""
    from meddet.data.formats.yolo import coco_to_yolo
    from meddet.evaluation import run_evaluation

    (tmp_path / "img").mkdir()
    images, anns = [], []
    boxes = {1: [(5, 6, 20, 10, 9)], 2: [(30, 4, 12, 30, 2), (2, 30, 10, 10, 9)]}  # x, y, w, h, category id
    for image_id, bs in boxes.items():
        Image.new("RGB", (64, 48), (image_id * 40, 0, 0)).save(tmp_path / "img" / f"im{image_id}.png")
        images.append({"id": image_id, "file_name": f"img/im{image_id}.png", "height": 48, "width": 64})
        for x, y, w, h, c in bs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": c,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    gt = {"images": images, "annotations": anns, "categories": [{"id": 9, "name": "zeta"}, {"id": 2, "name": "alpha"}]}
    (tmp_path / "test.json").write_text(json.dumps(gt))
    coco_to_yolo({"test": tmp_path / "test.json"}, tmp_path / "yolo")

    cat_ids = [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])]  # what the benchmark passes
    preds = []
    for im in images:
        lines = (tmp_path / "yolo" / "labels" / "test" / f"im{im['id']}.txt").read_text().split()
        v = np.array(lines, dtype=float).reshape(-1, 5)
        cx, cy, w, h = v[:, 1] * 64, v[:, 2] * 48, v[:, 3] * 64, v[:, 4] * 48
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        preds += pb.ultralytics_to_coco(xyxy, np.full(len(v), 0.8), v[:, 0], im["id"], cat_ids)
    assert sorted((p["image_id"], p["category_id"]) for p in preds) == sorted(
        (a["image_id"], a["category_id"]) for a in anns
    )
    m = run_evaluation(tmp_path / "test.json", preds, bootstrap_samples=0).metrics
    assert m["bbox/AP50-alpha"] == pytest.approx(100.0) and m["bbox/AP50-zeta"] == pytest.approx(100.0)
    assert m["bbox/AP"] > 99.0


@pytest.mark.parametrize("height", [10, 400, 1035, 2472])
def test_region_bands_partition_the_rows(height):
    bands = pb.region_bands(height)
    assert list(bands) == ["train", "val", "test"]
    assert bands["train"][0] == 0 and bands["test"][1] == height
    assert bands["train"][1] == bands["val"][0] and bands["val"][1] == bands["test"][0]  # no gap, no overlap
    assert abs(bands["test"][0] - 0.7 * height) <= 0.5 and abs(bands["train"][1] - 0.6 * height) <= 0.5
    with pytest.raises(ValueError, match="no rows"):
        pb.region_bands(3)


def test_clip_to_band_keeps_boxes_mostly_inside_in_band_coordinates():
    boxes = [
        [0, 10, 10, 20],  # inside
        [0, 45, 10, 65],  # 75% inside [0, 60)
        [0, 55, 10, 75],  # 25% inside
        [0, 70, 10, 80],
    ]  # outside
    out, keep = pb.clip_to_band(boxes, 0, 60)
    assert keep.tolist() == [0, 1]
    assert out.tolist() == [[0, 10, 10, 20], [0, 45, 10, 60]]
    out, keep = pb.clip_to_band(boxes, 60, 100)
    assert keep.tolist() == [2, 3]
    assert out.tolist() == [[0, 0, 10, 15], [0, 10, 10, 20]]  # rows shifted by the band's top


def _voc(path: Path, filename: str, w: int, h: int, objects) -> None:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
        f"<ymax>{d}</ymax></bndbox></object>"
        for n, (a, b, c, d) in objects
    )
    path.write_text(
        f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
        f"<depth>3</depth></size>{objs}</annotation>"
    )


def test_region_split_keeps_test_rows_out_of_training(tmp_path):
    """Every test image is the bottom 30% of a source image and every train image its top 60%: pixels equal the
    source rows, every label is 'tree', and no box of one split lies in another split's rows."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (100, 80, 3), dtype=np.uint8)
    Image.fromarray(src).save(data / "A.png")
    _voc(
        data / "A.xml",
        "A.tif",
        80,
        100,
        [("Tree", (5, 5, 20, 20)), ("Dead", (30, 62, 40, 68)), ("Alive", (50, 80, 70, 95)), ("Tree", (0, 55, 10, 72))],
    )
    Image.new("RGB", (80, 100)).save(data / "unannotated.png")  # no .xml: not used
    paths = pb.write_region_split(data, tmp_path / "out")
    cocos = {s: json.loads(Path(p).read_text()) for s, p in paths.items()}
    rows = {"train": (0, 60), "val": (60, 70), "test": (70, 100)}
    for split, coco in cocos.items():
        assert coco["categories"] == [{"id": 1, "name": "tree"}]
        (im,) = coco["images"]
        assert (im["height"], im["width"]) == (rows[split][1] - rows[split][0], 80)
        px = np.asarray(Image.open(tmp_path / "out" / im["file_name"]))
        assert np.array_equal(px, src[rows[split][0] : rows[split][1]])
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert 0 <= y and y + h <= im["height"]
    boxes = {s: [a["bbox"] for a in c["annotations"]] for s, c in cocos.items()}
    assert boxes["train"] == [[5.0, 5.0, 15.0, 15.0]]  # the 55-72 crown is 29% in train: dropped there
    assert boxes["val"] == [[30.0, 2.0, 10.0, 6.0], [0.0, 0.0, 10.0, 10.0]]  # 59% of the 55-72 crown
    assert boxes["test"] == [[50.0, 10.0, 20.0, 15.0]]


def test_table_prints_every_model_and_class_and_writes_csv_and_markdown(tmp_path):
    rows = [
        {
            "dataset": "mammo",
            "model": "yolo11n",
            "mAP50": 41.234,
            "mAP50-95": 20.0,
            "sens@1FP": 55.5,
            "iterations": 120,
            "batch": 16,
            "epochs": 12.04,
            "train_s": 600.4,
            "ms/image": 35.25,
            "AP50 mass": 50.0,
            "AP50 calc": float("nan"),
        },
        {
            "dataset": "mammo",
            "model": "frcnn_r18",
            "mAP50": 60.0,
            "mAP50-95": 30.0,
            "sens@1FP": 70.0,
            "iterations": 800,
            "batch": 4,
            "epochs": None,
            "train_s": 601.0,
            "ms/image": 80.0,
            "AP50 mass": 61.0,
            "AP50 calc": 59.0,
        },
    ]
    md = pb.format_table(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| dataset | model | mAP50 | mAP50-95 | sens@1FP")
    assert lines[0].rstrip(" |").endswith("AP50 mass | AP50 calc")
    assert set(lines[1]) <= set("|-") and len(lines) == 4
    assert "| mammo | yolo11n | 41.2 | 20.0 | 55.5 | 120 | 16 | 12.0 | 600.4 | 35.2 | 50.0 | - |" == lines[2]
    assert "| - |" in lines[3]  # no epochs for meddet
    plain = pb.format_table(rows, markdown=False).splitlines()
    assert len(plain) == 3 and plain[0].split()[:3] == ["dataset", "model", "mAP50"]
    assert len({len(line.rstrip()) for line in plain}) >= 1 and "frcnn_r18" in plain[2]
    csv_path, md_path = pb.write_table(rows, tmp_path)
    assert md_path.read_text().strip() == md
    back = list(csv.DictReader(csv_path.open()))
    assert [r["model"] for r in back] == ["yolo11n", "frcnn_r18"]
    assert float(back[0]["mAP50"]) == pytest.approx(41.234) and math.isnan(float(back[0]["AP50 calc"]))


def test_pr_plot_of_both_sides_is_written(tmp_path):
    import pandas as pd

    r = np.linspace(0, 1, 101)
    curves = {
        "yolo11n": pd.DataFrame({"recall": r, "all": 1 - r}),
        "frcnn_r18": pd.DataFrame({"recall": r, "all": 1 - r / 2}),
    }
    path = pb.plot_pr(curves, "mammo", tmp_path, {"yolo11n": 50.0, "frcnn_r18": 75.0})
    assert path == tmp_path / "pr_curves_mammo.png"
    assert Image.open(path).size[0] > 100


def test_time_budget_refits_the_schedule_and_stops(monkeypatch):
    """The budget hook sets MAX_ITER from the measured speed (the cosine schedule then reaches its end at the
    budget) and stops the loop there."""
    import torch

    from meddet.config import get_cfg
    from meddet.training.solver import build_lr_scheduler

    cfg = get_cfg()
    cfg.merge_from_list(
        ["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.MAX_ITER", 10_000_000, "SOLVER.WARMUP_ITERS", 50]
    )
    opt = torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.zeros(1))]}, {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1
    )
    clock = [0.0]
    monkeypatch.setattr(pb.time, "perf_counter", lambda: clock[0])

    class FakeTrainer:
        start_iter, iter, stop_requested = 0, 0, False

    t = FakeTrainer()
    t.cfg, t.scheduler = cfg, build_lr_scheduler(cfg, opt)
    hook = pb._time_budget_hook(100.0)
    hook.trainer = t
    hook.before_train()
    while not t.stop_requested:
        clock[0] += 2.0 if t.iter == 0 else 1.0  # a slow first iteration, then 1 s each
        hook.after_step()
        opt.step()
        t.scheduler.step()
        t.iter += 1
    assert 95 <= t.iter <= 100 and hook.target == t.iter
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-3)  # the cosine ended with the budget
    assert opt.param_groups[1]["lr"] == opt.param_groups[0]["lr"]


def test_ultralytics_is_kept_offline(monkeypatch, tmp_path):
    for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "YOLO_VERBOSE"):
        monkeypatch.delenv(k, raising=False)
    pb.setup_ultralytics_offline(tmp_path / "cfg")
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "cfg") and (tmp_path / "cfg").is_dir()


@pytest.mark.peer
def test_whole_benchmark_runs_offline_on_a_tiny_region_split(tmp_path, monkeypatch):
    """Both sides trained a few seconds, scored, table and plot written. Needs Ultralytics, a benchmark-only
    extra: `make bench-peer` installs it and runs this first; `make test` leaves `peer` tests out."""
    assert importlib.util.find_spec("ultralytics") is not None, "run through make bench-peer (installs Ultralytics)"
    # offline before Ultralytics is first imported (its import checks the network and writes its settings)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_AUTOINSTALL", "0")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics_config"))
    monkeypatch.setenv("YOLO_VERBOSE", "False")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (200, 160, 3), dtype=np.uint8)).save(data / "A.png")
    objs = [("Tree", (x, y, x + 20, y + 20)) for x in range(5, 140, 40) for y in range(5, 180, 40)]
    _voc(data / "A.xml", "A.png", 160, 200, objs)
    monkeypatch.setattr(pb, "build_deepforest", lambda root, small, seed, data_dir=None: _tiny(pb, root, data))
    assert (
        pb.main(
            [
                "--output",
                str(tmp_path / "out"),
                "--datasets",
                "deepforest",
                "--models",
                "yolov8n,frcnn_r18",
                "--budget-seconds",
                "3",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    back = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [r["model"] for r in back] == ["yolov8n", "frcnn_r18"]
    assert all(int(r["iterations"]) >= 1 for r in back)
    assert (tmp_path / "out" / "pr_curves_deepforest.png").is_file()


def _tiny(pb, root: Path, data: Path):
    splits = pb.write_region_split(data, root / "regions")
    names = ["tree"]
    return pb.Dataset(
        "deepforest",
        splits,
        names,
        160,
        pb.CYTO_CONFIGS,
        pb._tile_opts(160, names)
        + [
            "INPUT.MIN_SIZE_TRAIN",
            (120,),
            "INPUT.MAX_SIZE_TRAIN",
            160,
            "INPUT.MIN_SIZE_TEST",
            120,
            "INPUT.MAX_SIZE_TEST",
            160,
        ],
    )


def test_amp_check_stands_in_for_the_download_only_on_cuda():
    """On the CPU the real check's answer (False) is kept: taking True there had Ultralytics train under CPU
    bfloat16 autocast, about 6x slower per step. On CUDA the real check would download weights."""
    calls = []

    def real(model):
        calls.append(model)
        return False

    check = pb._check_amp_offline(real)
    cpu_model = torch.nn.Linear(2, 2)
    assert check(cpu_model) is False and calls == [cpu_model]
    cuda_like = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda", 0))]))
    assert check(cuda_like) is True and calls == [cpu_model]  # the real (downloading) check is not called


@pytest.mark.peer
def test_ultralytics_trains_on_the_cpu_without_autocast(tmp_path, monkeypatch):
    """The patched module-level check, as Ultralytics' trainer calls it, says no AMP for a CPU model."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics_config"))
    pb._ultralytics(1)
    pb._ultralytics(1)  # twice: the second call wraps the original again, not the wrapper
    import ultralytics.engine.trainer as ul_trainer

    assert ul_trainer.check_amp(torch.nn.Linear(2, 2)) is False


def test_yolo_args_are_read_as_yaml_and_the_fixed_ones_refused():
    assert pb.parse_yolo_args(["nbs=16", "warmup_epochs=0.5", "mosaic=0", "optimizer=SGD"]) == {
        "nbs": 16,
        "warmup_epochs": 0.5,
        "mosaic": 0,
        "optimizer": "SGD",
    }
    with pytest.raises(pb.BenchError, match="time is set by the benchmark"):
        pb.parse_yolo_args(["time=1"])
    with pytest.raises(pb.BenchError, match="not key=value"):
        pb.parse_yolo_args(["nbs"])


def test_meddet_opts_override_the_benchmark_config(tmp_path):
    ds = pb.Dataset(
        "deepforest",
        {s: tmp_path / f"{s}.json" for s in ("train", "val", "test")},
        ["tree"],
        384,
        pb.CYTO_CONFIGS,
        pb._tile_opts(384, ["tree"]),
    )
    cfg = pb.meddet_config(ds, "frcnn_r18", tmp_path / "run", "cpu", 0)
    assert [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES] == [[8], [16], [32], [64], [128]]
    extra = ["MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]", "SOLVER.BASE_LR", "0.04"]
    cfg = pb.meddet_config(ds, "frcnn_r18", tmp_path / "run", "cpu", 0, extra)
    assert [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES] == [[16], [32], [64], [128], [256]]
    assert cfg.SOLVER.BASE_LR == 0.04 and cfg.SOLVER.MAX_ITER == 10_000_000  # the benchmark's own keys stay


def test_yolo_runs_with_ultralytics_default_epochs_so_auto_picks_its_usual_optimizer(tmp_path):
    """Ultralytics' optimizer=auto reads `epochs` (AdamW up to 10,000 iterations, MuSGD above): a placeholder
    epochs=10_000 made it choose MuSGD for a ~100-image set, which a user giving only `time=` would not get."""
    ds = pb.Dataset("mammo", {}, ["a"], 384, pb.MAMMO_CONFIGS)
    kw = pb.yolo_train_args(ds, tmp_path / "data.yaml", tmp_path / "run" / "train", 300.0, "cpu", 0, 16)
    assert "epochs" not in kw and "optimizer" not in kw and "nbs" not in kw  # Ultralytics' own defaults
    assert kw["time"] == pytest.approx(300 / 3600) and kw["imgsz"] == 384 and kw["batch"] == 16
    assert kw["project"] == str(tmp_path / "run") and kw["name"] == "train"
