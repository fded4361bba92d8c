"""Sliced inference (SAHI-style) on images larger than what the model was trained on.

The image is cut into overlapping tiles on SAHI's grid (meddet.data.tiling.tile_windows with TILING.SIZE
and TILING.OVERLAP); each tile is prepared exactly like a whole image is by the Predictor (shortest edge
resized to INPUT.MIN_SIZE_TEST, longest at most INPUT.MAX_SIZE_TEST) and the tiles go through the model
TILING.BATCH_SIZE at a time. Tile detections are shifted to image pixels; with TILING.FULL_IMAGE_PASS the
whole image, downscaled the same way, adds its detections (large objects); then everything is merged by
meddet.inference.merge.merge_detections with TILING.MERGE / MATCH_METRIC / MATCH_THRESH / CLASS_AGNOSTIC /
SOFT_NMS_SIGMA.

On the CPU, `workers` threads each run the model on their own batches of tiles, torch's intra-op threads
divided between them (why: docs/ARCHITECTURE.md, "Performance notes"); results are gathered in tile order, so
a run is reproducible. On CUDA the model runs in one thread and TILING.BATCH_SIZE is what pays. The Predictor
passes its inference-optimised model (meddet.inference.predictor.optimize_for_inference).

How many detections: the model applies ROI_HEADS.SCORE_THRESH_TEST and TEST.DETECTIONS_PER_IMAGE to each
tile (and to the full-image pass), so an image yields at most (tiles + 1) x DETECTIONS_PER_IMAGE boxes
before merging. The merged set is kept whole by default (a whole mammogram or cytology slide can hold far
more objects than one tile); pass `max_detections` to keep only the highest-scored ones.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from meddet.data.tiling import tile_windows
from meddet.data.transforms import prepare_image
from meddet.errors import ConfigError
from meddet.inference.merge import merge_detections

if TYPE_CHECKING:
    from meddet.config import CfgNode

logger = logging.getLogger(__name__)


def _collect(dets: list[dict], offsets: list[tuple[int, int]], out: dict[str, list[torch.Tensor]]) -> None:
    for det, (x0, y0) in zip(dets, offsets):
        boxes = det["boxes"].detach().float().cpu().reshape(-1, 4)
        out["boxes"].append(boxes + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype))
        out["scores"].append(det["scores"].detach().float().cpu().reshape(-1))
        out["classes"].append(det["classes"].detach().cpu().to(torch.int64).reshape(-1))


MAX_CPU_WORKERS = 4  # tile-parallel threads at most by default (each holds one batch's activations)


def default_workers(model: torch.nn.Module) -> int:
    """Threads that run `model` on tiles concurrently by default: 1 for a model on a GPU; on the CPU
    torch.get_num_threads() (each worker then runs on one intra-op thread), at most MAX_CPU_WORKERS."""
    param = next(model.parameters(), None)
    if param is not None and param.device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), MAX_CPU_WORKERS))


def _run_batches(model: torch.nn.Module, crops: list[list[np.ndarray]], cfg: CfgNode, workers: int) -> list[list[dict]]:
    """model(batch) for each list of image crops (views; each is prepared by prepare_image only when its
    batch runs, so memory holds `workers` batches, not the whole image's tiles), in order; with
    workers > 1 on a thread pool, each thread running torch with get_num_threads() // workers intra-op
    threads (the caller's count is restored afterwards)."""

    def run(batch: list[np.ndarray]) -> list[dict]:
        return model([prepare_image(crop, cfg) for crop in batch])

    if workers <= 1 or len(crops) <= 1:
        return [run(batch) for batch in crops]
    threads = torch.get_num_threads()
    workers = min(workers, len(crops))
    intra = max(1, threads // workers)

    def run_in_worker(batch: list[np.ndarray]) -> list[dict]:
        # Thread-local state: grad mode and the OpenMP/MKL thread count of this worker.
        torch.set_num_threads(intra)
        with torch.inference_mode():
            return run(batch)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="meddet-tiles") as pool:
            return list(pool.map(run_in_worker, crops))
    finally:
        torch.set_num_threads(threads)  # torch's shared thread pools follow the last set_num_threads


@torch.inference_mode()
def sliced_predict(
    model: torch.nn.Module,
    image: np.ndarray,
    cfg: CfgNode,
    batch_size: int | None = None,
    full_image_pass: bool | None = None,
    max_detections: int | None = None,
    workers: int | None = None,
) -> dict:
    """Detections of one whole image by sliced inference: {"boxes" (N, 4) xyxy float32 in `image`'s
    pixels, "scores" (N,) float32, "classes" (N,) int64}, sorted by score descending.

    `model` follows meddet's model interface (a list of input dicts -> per-image boxes/scores/classes) and
    is run in eval mode (its mode is restored afterwards). `image` is HxW or HxWxC (uint8, uint16 or float
    in [0, 1]). `batch_size` and `full_image_pass` override TILING.BATCH_SIZE / TILING.FULL_IMAGE_PASS;
    `max_detections` keeps only that many highest-scored merged detections (default: all; see the module
    doc for how TEST.DETECTIONS_PER_IMAGE applies). `workers`: threads running the model on batches of
    tiles concurrently (default: :func:`default_workers`; 1 runs every batch in the calling thread)."""
    t = cfg.TILING
    batch_size = int(t.BATCH_SIZE if batch_size is None else batch_size)
    if batch_size < 1:
        raise ConfigError(f"TILING.BATCH_SIZE: expected a positive number of tiles per pass, found {batch_size}")
    if max_detections is not None and max_detections < 0:
        raise ValueError(f"max_detections: expected a non-negative number or None, found {max_detections}")
    workers = default_workers(model) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers: expected a positive number of threads or None, found {workers}")
    full_image_pass = bool(t.FULL_IMAGE_PASS if full_image_pass is None else full_image_pass)
    h, w = image.shape[:2]
    windows = tile_windows(h, w, int(t.SIZE), float(t.OVERLAP)).tolist()
    chunks = [windows[start : start + batch_size] for start in range(0, len(windows), batch_size)]
    crops = [[image[y0:y1, x0:x1] for x0, y0, x1, y1 in chunk] for chunk in chunks]
    offsets = [[(int(x0), int(y0)) for x0, y0, _, _ in chunk] for chunk in chunks]
    # As SAHI: the extra whole-image pass only when there is more than one tile.
    if full_image_pass and len(windows) > 1:
        crops.append([image])
        offsets.append([(0, 0)])
    collected: dict[str, list[torch.Tensor]] = {"boxes": [], "scores": [], "classes": []}
    was_training = model.training
    model.eval()
    try:
        for dets, offs in zip(_run_batches(model, crops, cfg, workers), offsets):
            _collect(dets, offs, collected)
    finally:
        model.train(was_training)
    boxes, scores, classes = (torch.cat(collected[k]) for k in ("boxes", "scores", "classes"))
    n_raw = len(boxes)
    # tensors in, tensors out (merge_detections returns the type of `boxes`)
    merged = merge_detections(
        boxes,
        scores,
        classes,
        method=t.MERGE,
        match_metric=t.MATCH_METRIC,
        threshold=float(t.MATCH_THRESH),
        class_agnostic=bool(t.CLASS_AGNOSTIC),
        sigma=float(t.SOFT_NMS_SIGMA),
    )
    boxes, scores, classes = cast("tuple[torch.Tensor, torch.Tensor, torch.Tensor]", merged)
    if max_detections is not None:
        boxes, scores, classes = boxes[:max_detections], scores[:max_detections], classes[:max_detections]
    logger.debug(
        "sliced_predict: %dx%d image, %d tiles (%d per pass, %d worker threads), %d detections -> %d after %s",
        w,
        h,
        len(windows),
        batch_size,
        workers,
        n_raw,
        len(boxes),
        t.MERGE,
    )
    return {
        "boxes": boxes.numpy().astype(np.float32),
        "scores": scores.numpy().astype(np.float32),
        "classes": classes.numpy().astype(np.int64),
    }
