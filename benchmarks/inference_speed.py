#!/usr/bin/env python
"""Inference milliseconds per image of meddet's Predictor against Ultralytics YOLO, on the peer benchmark's inputs.

The models and input sizes of ``benchmarks/peer_benchmark.py`` (its meddet configs, built by its
``meddet_config``; YOLO built from its YAML), random weights (speed does not depend on what was learned, but on
how many boxes survive the score floor: at the benchmark's 0.001 every model keeps its maximum, as a barely
trained one does), the same threads on both sides, the same call the benchmark times (``predictor(image)`` /
``YOLO.predict(image)`` on an image in memory: pre- and post-processing included). Median of ``--repeats``
calls after ``--warmup`` ones; ``ratio`` is meddet's median over YOLO11n's, measured in the same run (when
Ultralytics is importable: ``PYTHONPATH=.venv/peer-extras``, see ``make bench-peer``).

``--profile`` adds, per meddet model, the median milliseconds of each stage of one call: ``read+prepare``
(the Predictor's read, recipe and ``prepare_image``: resize, float, tensor), ``transform`` (normalise and pad),
``backbone`` (ResNet body), ``fpn``, then Faster R-CNN's ``rpn`` and ``roi_heads`` or RetinaNet's ``head``,
``anchors`` and ``decode+nms``; ``other`` is the rest of the call (box scaling, numpy conversion, labels).
``--variants`` adds the median ms/image of the plain model (no inference optimisation), of the optimised copy
under no_grad and under inference_mode, timed call by call in turn (so load from other processes hits each
alike).

    PYTHONPATH=.venv/peer-extras python benchmarks/inference_speed.py --profile --variants
    python benchmarks/inference_speed.py --datasets mammo --models frcnn_r18 --opts MODEL.RPN.POST_NMS_TOPK_TEST 1000
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import peer_benchmark as pb  # noqa: E402  (the benchmark's configs and Ultralytics set-up)

# The test inputs of each dataset of the peer benchmark: (height, width, channels), and its config family.
SHAPES = {"mammo": (384, 240, 1), "cytology": (256, 256, 3), "deepforest": (384, 384, 3)}
CLASSES = {"mammo": ["mass_low", "mass_high", "calcification"], "cytology": ["cell", "cluster"], "deepforest": ["tree"]}


def dataset(name: str) -> pb.Dataset:
    """A peer_benchmark Dataset with that dataset's configs, options and class names (no files needed)."""
    h, w, _ = SHAPES[name]
    names = CLASSES[name]
    splits = {s: Path(f"/nonexistent/{s}.json") for s in ("train", "val", "test")}
    if name == "mammo":
        opts = ["MODEL.ROI_HEADS.NUM_CLASSES", len(names), "MODEL.RETINANET.NUM_CLASSES", len(names)]
        opts += ["DATASETS.CLASS_NAMES", list(names)]
        return pb.Dataset(name, splits, names, max(h, w), pb.MAMMO_CONFIGS, opts)
    return pb.Dataset(name, splits, names, max(h, w), pb.CYTO_CONFIGS, pb._tile_opts(h, names))


def image(name: str, seed: int = 0) -> np.ndarray:
    """A textured uint8 test image of the dataset's shape (greyscale 2-D for mammo, as its PNGs read)."""
    h, w, c = SHAPES[name]
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    return img[:, :, 0] if c == 1 else img


class StageTimer:
    """Wall-clock seconds spent in named callables of one object tree (their forward / methods wrapped)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.current: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        import torch

        if isinstance(getattr(owner, attr), torch.nn.Module):  # a child module: wrap its forward
            owner, attr = getattr(owner, attr), "forward"
        fn = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - t0

        setattr(owner, attr, timed)

    def flush(self, total: float) -> None:
        staged = sum(self.current.values())
        for k, v in self.current.items():
            self.calls[k].append(v)
        self.calls["other"].append(max(total - staged, 0.0))
        self.current.clear()

    def medians_ms(self) -> dict[str, float]:
        return {k: 1000 * statistics.median(v) for k, v in self.calls.items()}


def instrument(predictor: Any, timer: StageTimer) -> None:
    m = predictor.inference_model
    timer.wrap(predictor, "read", "read+prepare")
    timer.wrap(predictor, "prepare", "read+prepare")
    timer.wrap(m, "transform", "transform")
    timer.wrap(m.backbone, "body", "backbone")
    timer.wrap(m.backbone, "fpn", "fpn")
    if hasattr(m, "rpn"):
        timer.wrap(m, "rpn", "rpn")
        timer.wrap(m, "roi_heads", "roi_heads")
    else:
        timer.wrap(m, "head", "head")
        timer.wrap(m, "anchor_generator", "anchors")
        timer.wrap(m, "_decode", "decode+nms")


def time_calls(fn: Any, warmup: int, repeats: int, timer: StageTimer | None = None) -> float:
    for _ in range(warmup):
        fn()
    if timer is not None:
        timer.current.clear()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if timer is not None:
            timer.flush(times[-1])
    return 1000 * statistics.median(times)


def meddet_ms(ds_name: str, model: str, opts: list, args: argparse.Namespace, tmp: Path) -> tuple[float, dict, int]:
    from meddet.inference import Predictor
    from meddet.modeling import build_model
    from meddet.modeling.checkpoint import save_checkpoint

    ds = dataset(ds_name)
    cfg = pb.meddet_config(ds, model, tmp / f"{ds_name}_{model}", "cpu", 0)
    if opts:
        cfg.defrost()
        cfg.merge_from_list(opts)
        cfg.freeze()
    weights = save_checkpoint(tmp / f"{ds_name}_{model}.pth", build_model(cfg).eval())
    predictor = Predictor(cfg, weights=weights, class_names=ds.class_names, optimize=not args.no_optimize)
    img = image(ds_name)
    timer = StageTimer() if args.profile else None
    if timer is not None:
        instrument(predictor, timer)
    n_boxes = len(predictor(img)["boxes"])
    ms = time_calls(lambda: predictor(img), args.warmup, args.repeats, timer)
    return ms, (timer.medians_ms() if timer else {}), n_boxes


def variant_ms(ds_name: str, model: str, opts: list, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Median ms/image of the Predictor's call paths, timed in turn call by call (so a load change on a shared
    machine hits each alike): ``plain`` the model as trained (no BatchNorm folding, no channels_last) under
    no_grad; ``optimized, no_grad`` the inference copy (optimize_for_inference) under no_grad (meddet before
    inference_mode); ``optimized, inference_mode`` what ``predictor(image)`` runs now."""
    import torch

    from meddet.inference import Predictor
    from meddet.modeling import build_model
    from meddet.modeling.checkpoint import save_checkpoint

    ds = dataset(ds_name)
    cfg = pb.meddet_config(ds, model, tmp / f"{ds_name}_{model}", "cpu", 0)
    if opts:
        cfg.defrost()
        cfg.merge_from_list(opts)
        cfg.freeze()
    weights = save_checkpoint(tmp / f"{ds_name}_{model}_v.pth", build_model(cfg).eval())
    fast = Predictor(cfg, weights=weights, class_names=ds.class_names)
    plain = Predictor(cfg, weights=weights, class_names=ds.class_names, optimize=False)
    raw = Predictor.predict_batch.__wrapped__  # predict_batch without its grad-mode decorator
    img = image(ds_name)

    def under(mode: Any, predictor: Any) -> Any:
        def call() -> None:
            with mode():
                raw(predictor, [img])

        return call

    calls = {
        "plain, no_grad": under(torch.no_grad, plain),
        "optimized, no_grad": under(torch.no_grad, fast),
        "optimized, inference_mode": under(torch.inference_mode, fast),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.warmup):
        for fn in calls.values():
            fn()
    for _ in range(args.repeats):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def yolo_ms(ds_name: str, model: str, args: argparse.Namespace, tmp: Path) -> tuple[float, int]:
    pb.setup_ultralytics_offline(tmp / "ultralytics_config")
    YOLO = pb._ultralytics(args.threads)
    net = YOLO(f"{model}.yaml")
    img = image(ds_name)
    bgr = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img
    kw = dict(conf=pb.CONF, max_det=pb.MAX_DET, imgsz=max(bgr.shape[:2]), device="cpu", verbose=False)
    n_boxes = len(net.predict(bgr, **kw)[0].boxes)
    return time_calls(lambda: net.predict(bgr, **kw), args.warmup, args.repeats), n_boxes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="mammo,cytology,deepforest")
    p.add_argument("--models", default="yolo11n,frcnn_r18,retinanet_r18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--profile", action="store_true", help="median ms of each stage of meddet's call")
    p.add_argument("--no-optimize", action="store_true", help="Predictor(optimize=False): the plain model")
    p.add_argument(
        "--variants",
        action="store_true",
        help="also time, call by call in turn, the plain model, the optimised one under no_grad and under "
        "inference_mode (what each inference optimisation buys)",
    )
    p.add_argument("--opts", nargs="*", default=[], help="config overrides for every meddet model (KEY VALUE ...)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for ds_name in [x for x in args.datasets.split(",") if x]:
            yolo_ref = None
            for model in models:
                torch.set_num_threads(args.threads)
                if model in pb.YOLO_MODELS:
                    try:
                        ms, n = yolo_ms(ds_name, model, args, tmp)
                    except pb.BenchError as e:
                        print(f"{model}: skipped ({e})", file=sys.stderr)
                        continue
                    stages: dict = {}
                    if model == "yolo11n":
                        yolo_ref = ms
                else:
                    ms, stages, n = meddet_ms(ds_name, model, args.opts, args, tmp)
                torch.set_num_threads(args.threads)
                ratio = f"{ms / yolo_ref:.2f}" if yolo_ref and model not in pb.YOLO_MODELS else "-"
                rows.append((ds_name, model, ms, ratio, n))
                line = f"{ds_name:11s} {model:14s} {ms:8.1f} ms/image  ratio to yolo11n {ratio:>5s}  boxes {n}"
                if stages:
                    line += "\n    " + "  ".join(f"{k} {v:.1f}" for k, v in stages.items())
                if args.variants and model not in pb.YOLO_MODELS:
                    variants = variant_ms(ds_name, model, args.opts, args, tmp)
                    line += "\n    " + "  ".join(f"{k} {v:.1f}" for k, v in variants.items())
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
