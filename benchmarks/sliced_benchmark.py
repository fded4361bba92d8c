"""Sliced inference benchmark: meddet's sliced_predict against SAHI's get_sliced_prediction.

One run, the same inputs on both sides:
- image: one synthetic 4096x4096 cytology field (meddet.synth.render_cytology: thousands of cells);
- model: the same meddet torchvision-engine detector (ResNet-18 FPN, random init, seeded), with
  ROI_HEADS.SCORE_THRESH_TEST low so each tile yields up to TEST.DETECTIONS_PER_IMAGE boxes and the merge
  has thousands to work on;
- tiles: the same size and overlap (SAHI's grid on both sides), prepared identically (meddet's
  prepare_image: shortest edge to INPUT.MIN_SIZE_TEST);
- merge: GREEDYNMM, IOS, 0.5, class-aware (SAHI's defaults; `force_postprocess_type` keeps SAHI from
  switching to NMS because the score threshold is low).
SAHI runs the model through a `sahi.models.base.DetectionModel` subclass that wraps the plain meddet
model, one tile per call (SAHI's default batch_size=1), on all of torch's `--threads` intra-op threads.
meddet runs what its Predictor runs: an inference-optimised copy of the same model
(meddet.inference.optimize_for_inference: BatchNorm folded into the convolutions, channels_last weights on
the CPU; the same detections up to float rounding), with the same `--threads` divided between tile-parallel
worker threads (sliced_predict's default on the CPU: `--threads` workers of one intra-op thread each),
TILING.BATCH_SIZE tiles per pass (1 on the CPU, where batching does not pay), and its vectorised
merge_detections. `--ablation` also times meddet with each of these turned off in turn.

Prints the median time of each (after a warm-up; timed runs alternate between the two), the speed ratio,
and the agreement: the fraction of meddet boxes matched one-to-one (greedily by IoU) to a SAHI box of the
same class with IoU >= 0.95, and the other way round. PASS when both agreements are >= 95% and meddet is
>= 1.5x faster (exit 1 otherwise); exit 2 when SAHI is not installed.

Installing SAHI: its wheel requires opencv-python, which conflicts with meddet's opencv-python-headless
(same `cv2` module), so install it without dependencies plus the light ones its import needs:

    pip install --no-deps sahi==0.12.8 && pip install shapely fire requests pyyaml pillow

    OMP_NUM_THREADS=2 python benchmarks/sliced_benchmark.py                  # defaults below, CPU
    python benchmarks/sliced_benchmark.py --size 2048 --repeats 1            # quick look
    python benchmarks/sliced_benchmark.py --device cuda --batch 16           # where batching pays

On a CPU the model is >99% of the time: the speed-up comes from the optimised model and from running
tiles in parallel rather than ops (the detector's proposal/box post-processing and the Python between ops
are serial, so one tile per thread keeps every core busy where intra-op threads idle through them).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time

import numpy as np
import torch

from meddet.config import get_fpn_cfg
from meddet.inference.merge import merge_detections
from meddet.inference.predictor import optimize_for_inference, prepare_image
from meddet.inference.sliced import default_workers, sliced_predict
from meddet.modeling import build_model

CLASS_NAMES = ["cell", "cluster"]


def make_cfg(args: argparse.Namespace):
    cfg = get_fpn_cfg()
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            args.device,
            "MODEL.ENGINE",
            "torchvision",
            "MODEL.RESNETS.DEPTH",
            18,
            "MODEL.RESNETS.NORM",
            "BN",
            "MODEL.BACKBONE.FREEZE_AT",
            0,
            "MODEL.FPN.OUT_CHANNELS",
            64,
            "MODEL.ROI_BOX_HEAD.FC_DIM",
            256,
            "MODEL.ANCHOR_GENERATOR.SIZES",
            [[8], [16], [32], [64], [128]],
            "MODEL.RPN.POST_NMS_TOPK_TEST",
            300,
            "MODEL.ROI_HEADS.NUM_CLASSES",
            len(CLASS_NAMES),
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            args.score_thresh,
            "MODEL.PIXEL_STD",
            [57.375, 57.12, 58.395],
            "TEST.DETECTIONS_PER_IMAGE",
            args.per_tile,
            "INPUT.MIN_SIZE_TEST",
            args.tile,
            "INPUT.MAX_SIZE_TEST",
            args.tile,
            "TILING.SIZE",
            args.tile,
            "TILING.OVERLAP",
            args.overlap,
            "TILING.BATCH_SIZE",
            args.batch,
            "TILING.FULL_IMAGE_PASS",
            False,
            "TILING.MERGE",
            "greedy_nmm",
            "TILING.MATCH_METRIC",
            "ios",
            "TILING.MATCH_THRESH",
            0.5,
            "TILING.CLASS_AGNOSTIC",
            False,
        ]
    )
    return cfg


def make_image(size: int) -> np.ndarray:
    """A synthetic cytology field (falls back to OpenCV blobs if meddet.synth lacks it)."""
    try:
        from meddet.synth import render_cytology
    except ImportError:
        import cv2

        rng = np.random.default_rng(0)
        img = np.full((size, size, 3), 235, np.uint8)
        for _ in range(size * size // 8000):
            x, y = (int(v) for v in rng.integers(0, size, 2))
            cv2.circle(img, (x, y), int(rng.integers(4, 12)), tuple(int(v) for v in rng.integers(40, 160, 3)), -1)
        return img
    cells = max(100, int(2000 * (size / 4096) ** 2))
    img, _, _ = render_cytology(size=size, cells=cells, clusters=max(1, cells // 100), seed=0)
    return img


def sahi_model_class():
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class MeddetSahiModel(DetectionModel):
        """SAHI's view of a meddet model: one image per call, outputs as SAHI ObjectPredictions."""

        def __init__(self, model: torch.nn.Module, cfg, **kwargs):
            self._cfg = cfg
            super().__init__(
                model=model,
                confidence_threshold=0.0,
                device=str(cfg.MODEL.DEVICE),
                category_mapping={str(i): n for i, n in enumerate(CLASS_NAMES)},
                **kwargs,
            )

        def set_device(self, device=None) -> None:
            self.device = device

        def load_model(self) -> None:
            raise RuntimeError("MeddetSahiModel wraps a built model; pass model=")

        def set_model(self, model, **kwargs) -> None:
            self.model = model.eval()

        @torch.no_grad()
        def perform_inference(self, image: np.ndarray) -> None:
            self._original_predictions = self.model([prepare_image(image, self._cfg)])

        def _create_object_prediction_list_from_original_predictions(
            self,
            shift_amount_list=[[0, 0]],  # noqa: B006
            full_shape_list=None,
        ) -> None:
            if shift_amount_list and isinstance(shift_amount_list[0], (int, float)):
                shift_amount_list = [shift_amount_list]
            if full_shape_list and isinstance(full_shape_list[0], (int, float)):
                full_shape_list = [full_shape_list]
            per_image = []
            for k, det in enumerate(self._original_predictions):
                boxes = det["boxes"].cpu().numpy()
                scores = det["scores"].cpu().numpy()
                classes = det["classes"].cpu().numpy()
                shift = shift_amount_list[k] if shift_amount_list else [0, 0]
                full = full_shape_list[k] if full_shape_list else None
                per_image.append(
                    [
                        ObjectPrediction(
                            bbox=boxes[i].tolist(),
                            category_id=int(classes[i]),
                            category_name=CLASS_NAMES[int(classes[i])],
                            score=float(scores[i]),
                            shift_amount=list(shift),
                            full_shape=full,
                        )
                        for i in range(len(boxes))
                        if scores[i] > self.confidence_threshold
                    ]
                )
            self._object_prediction_list_per_image = per_image

    return MeddetSahiModel


def greedy_agreement(a_boxes, a_cls, b_boxes, b_cls, thresh: float = 0.95) -> tuple[int, int, int]:
    """One-to-one matches (same class, IoU >= thresh, greedily by IoU): (matches, len(a), len(b))."""
    from torchvision.ops import box_iou

    matched = 0
    for c in np.union1d(a_cls, b_cls):
        ia, ib = np.flatnonzero(a_cls == c), np.flatnonzero(b_cls == c)
        if not len(ia) or not len(ib):
            continue
        iou = box_iou(
            torch.as_tensor(a_boxes[ia], dtype=torch.float64), torch.as_tensor(b_boxes[ib], dtype=torch.float64)
        ).numpy()
        r, k = np.nonzero(iou >= thresh)
        order = np.argsort(-iou[r, k], kind="stable")
        used_a, used_b = set(), set()
        for i, j in zip(r[order].tolist(), k[order].tolist()):
            if i not in used_a and j not in used_b:
                used_a.add(i)
                used_b.add(j)
        matched += len(used_a)
    return matched, len(a_boxes), len(b_boxes)


def timed_pair(fn_a, fn_b, repeats: int) -> tuple[float, object, float, object]:
    """Median seconds and last result of each function; one warm-up each, then the timed runs alternate
    so that both see the same load on a shared machine."""
    out_a, out_b = fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out_a = fn_a()
        t1 = time.perf_counter()
        out_b = fn_b()
        times_a.append(t1 - t0)
        times_b.append(time.perf_counter() - t1)
    return statistics.median(times_a), out_a, statistics.median(times_b), out_b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="image side (px)")
    ap.add_argument("--tile", type=int, default=512, help="TILING.SIZE (px)")
    ap.add_argument("--overlap", type=float, default=0.2, help="TILING.OVERLAP")
    ap.add_argument(
        "--batch", type=int, default=None, help="TILING.BATCH_SIZE (meddet; default 1 on the CPU, 8 on CUDA)"
    )
    ap.add_argument("--per-tile", type=int, default=100, help="TEST.DETECTIONS_PER_IMAGE")
    ap.add_argument("--score-thresh", type=float, default=0.05, help="ROI_HEADS.SCORE_THRESH_TEST")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each (median), after a warm-up")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for both (default: torch.get_num_threads(), i.e. OMP_NUM_THREADS)",
    )
    ap.add_argument(
        "--workers", type=int, default=None, help="meddet tile-parallel threads (default: sliced_predict's)"
    )
    ap.add_argument("--ablation", action="store_true", help="also time meddet with each optimisation off")
    ap.add_argument("--device", default="cpu", help="MODEL.DEVICE")
    args = ap.parse_args(argv)
    if args.batch is None:
        args.batch = 1 if args.device == "cpu" else 8
    logging.basicConfig(level=logging.WARNING)
    try:
        from sahi.postprocess.combine import GreedyNMMPostprocess
        from sahi.predict import get_sliced_prediction
        from sahi.prediction import ObjectPrediction
    except ImportError as e:
        print(
            f"SAHI is not installed ({e}); install it with:\n"
            "  pip install --no-deps sahi==0.12.8 && pip install shapely fire requests pyyaml pillow"
        )
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    torch.manual_seed(0)
    cfg = make_cfg(args)
    model = build_model(cfg).to(cfg.MODEL.DEVICE).eval()
    fast = optimize_for_inference(model)
    workers = default_workers(fast) if args.workers is None else args.workers
    image = make_image(args.size)
    sahi_model = sahi_model_class()(model, cfg)
    n_tiles = len(range(0, max(1, args.size - args.tile), args.tile - int(args.overlap * args.tile))) + 1
    print(
        f"image {args.size}x{args.size}, tiles {args.tile} px, overlap {args.overlap} (~{n_tiles**2} tiles), "
        f"device {args.device}, torch threads {args.threads} (both), merge GREEDYNMM/IOS/0.5 class-aware"
    )
    print(f"SAHI:   plain model, 1 tile per call, {args.threads} intra-op threads")
    print(
        f"meddet: {'; '.join(fast.inference_optimizations) or 'no model optimisation'}; TILING.BATCH_SIZE "
        f"{args.batch}; {workers} tile-parallel worker(s) x {max(1, args.threads // workers)} intra-op thread(s)"
    )

    def run_sahi():
        return get_sliced_prediction(
            image,
            sahi_model,
            slice_height=args.tile,
            slice_width=args.tile,
            overlap_height_ratio=args.overlap,
            overlap_width_ratio=args.overlap,
            perform_standard_pred=False,
            postprocess_type="GREEDYNMM",
            postprocess_match_metric="IOS",
            postprocess_match_threshold=0.5,
            postprocess_class_agnostic=False,
            verbose=0,
            force_postprocess_type=True,
        )

    def run_meddet():
        return sliced_predict(fast, image, cfg, workers=workers)

    t_sahi, res, t_med, det = timed_pair(run_sahi, run_meddet, args.repeats)
    preds = res.object_prediction_list
    s_boxes = np.array([p.bbox.to_xyxy() for p in preds], dtype=np.float64).reshape(-1, 4)
    s_cls = np.array([p.category.id for p in preds], dtype=np.int64)
    matched, n_med, n_sahi = greedy_agreement(det["boxes"].astype(np.float64), det["classes"], s_boxes, s_cls)
    agree_med = matched / n_med if n_med else 1.0
    agree_sahi = matched / n_sahi if n_sahi else 1.0
    ratio = t_sahi / t_med if t_med > 0 else math.inf
    print(
        f"SAHI   get_sliced_prediction: {t_sahi:8.2f} s  ({n_sahi} boxes; its postprocess "
        f"{res.durations_in_seconds.get('postprocess', float('nan')):.2f} s)"
    )
    print(f"meddet sliced_predict:        {t_med:8.2f} s  ({n_med} boxes)")
    print(f"speed-up: {ratio:.2f}x")
    print(
        f"agreement (same class, IoU >= 0.95, one-to-one): {agree_med:.2%} of meddet boxes, "
        f"{agree_sahi:.2%} of SAHI boxes"
    )
    # The merge stage alone, on the same raw tile detections (what meddet does instead of SAHI's postprocess).
    raw_cfg = cfg.clone()
    raw_cfg.TILING.MERGE = "none"
    raw = sliced_predict(fast, image, raw_cfg, workers=workers)
    raw_preds = [
        ObjectPrediction(bbox=b.tolist(), category_id=int(c), score=float(sc))
        for b, sc, c in zip(raw["boxes"], raw["scores"], raw["classes"])
    ]
    post = GreedyNMMPostprocess(match_threshold=0.5, match_metric="IOS", class_agnostic=False)
    t_post, _, t_merge, _ = timed_pair(
        lambda: post(list(raw_preds)),
        lambda: merge_detections(raw["boxes"], raw["scores"], raw["classes"]),
        args.repeats,
    )
    print(
        f"merge stage alone on the {len(raw_preds)} raw tile boxes: SAHI GreedyNMMPostprocess {t_post:.3f} s, "
        f"meddet merge_detections {t_merge:.3f} s ({t_post / max(t_merge, 1e-9):.1f}x)"
    )
    if args.ablation:
        variants = {
            "plain model, 1 worker": (model, 1),
            "plain model, tile-parallel workers": (model, workers),
            "optimised model, 1 worker": (fast, 1),
            "batchnorm folded only, tile-parallel workers": (
                optimize_for_inference(model, channels_last=False),
                workers,
            ),
        }
        for name, (m, wk) in variants.items():
            t_var, _, t_ref, _ = timed_pair(
                lambda m=m, wk=wk: sliced_predict(m, image, cfg, workers=wk), run_meddet, args.repeats
            )
            print(f"ablation: meddet with {name}: {t_var:.2f} s (full meddet alongside: {t_ref:.2f} s)")
    ok = agree_med >= 0.95 and agree_sahi >= 0.95 and ratio >= 1.5
    print("PASS" if ok else "FAIL", "(target: agreement >= 95% both ways, meddet >= 1.5x faster)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
