"""Training/test data: COCO records → model batches (the model interface of docs/ARCHITECTURE.md, "Contracts")."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from meddet.data.coco import DatasetSplit, class_names, clip_coco_boxes, coco_to_records, load_coco
from meddet.data.tiling import TilingParams, clip_boxes_to_window, tile_records
from meddet.data.transforms import (
    apply_augmentation,
    build_augmentation,
    prepare_image,
    resize,
    shortest_edge_size,
    to_model_tensor,
    to_unit_float,
)
from meddet.errors import ConfigError, DataError
from meddet.io import Geometry, read_image
from meddet.io.dicom import PixelOptions
from meddet.io.recipe import PreprocessRecipe, read_for_recipe

if TYPE_CHECKING:
    from meddet.config import CfgNode

logger = logging.getLogger(__name__)


def load_records(
    json_paths: Sequence[str], image_root: str = "", strict_boxes: bool = False
) -> tuple[list[dict], list[str]]:
    """Records of one or more COCO files that must share the same categories.

    Boxes are clipped to their image and those left with nothing inside dropped (counted, one
    warning naming the images; `strict_boxes`, DATASETS.STRICT_BOXES: an error instead), so the
    model trains and validates on the boxes it can see (meddet.data.coco.clip_coco_boxes)."""
    if not json_paths:
        raise ConfigError("no dataset given: set DATASETS.TRAIN / DATASETS.TEST to COCO JSON files")
    records: list[dict] = []
    names: list[str] | None = None
    for p in json_paths:
        coco, _ = clip_coco_boxes(load_coco(p), str(p), strict=strict_boxes)
        n = class_names(coco)
        if names is not None and n != names:
            raise DataError(f"{p}: categories {n} differ from those of {json_paths[0]} ({names})")
        names = n
        records.extend(coco_to_records(coco, p, image_root))
    return records, names or []


_AUG_STAGES = ("before", "after")


def _boxes_classes(anns: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
    classes = np.array([a["category"] for a in anns], dtype=np.int64).reshape(-1)
    return boxes, classes


class DatasetMapper:
    """Reads an image, augments it (training), resizes its shortest edge and builds the model's dict. At test
    time (is_train False) the image is prepared by meddet.data.transforms.prepare_image, as the Predictor
    prepares it, so evaluation through the loader and prediction see the same model input.

    Tile records (meddet.data.tiling.tile_records, they carry "tile") are cut out of their parent image,
    read through a per-process LRU cache of TILING.CACHE_IMAGES decoded images. TILING.AUG_STAGE
    "after" augments the tile with its clipped boxes; "before" augments the whole parent image with all
    its boxes (same seed), then cuts the window (moved inside the image if augmentation changed its
    size) and clips the augmented boxes to it with TILING.MIN_VISIBLE."""

    def __init__(self, cfg: CfgNode, is_train: bool, with_boxes: bool | None = None) -> None:
        self._read = read_image
        self.cfg = cfg
        self.is_train = is_train
        # Test-time batches carry boxes too when asked (validation loss).
        self.with_boxes = is_train if with_boxes is None else with_boxes
        self.format = cfg.INPUT.FORMAT
        if is_train:
            self.min_sizes = [int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN]
            self.sampling = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
            self.max_size = int(cfg.INPUT.MAX_SIZE_TRAIN)
            if self.sampling not in ("choice", "range"):
                raise ConfigError(
                    f"INPUT.MIN_SIZE_TRAIN_SAMPLING: expected 'choice' or 'range', found {self.sampling!r}"
                )
        else:
            self.min_sizes = [int(cfg.INPUT.MIN_SIZE_TEST)]
            self.sampling = "choice"
            self.max_size = int(cfg.INPUT.MAX_SIZE_TEST)
        self.aug = build_augmentation(cfg) if is_train else None
        self.dicom_kwargs = dicom_kwargs(cfg)

        # Raw records (not converted with the recipe's flip / crop) get them here, boxes included.
        self.recipe = PreprocessRecipe.from_cfg(cfg)
        self.aug_stage = str(cfg.TILING.AUG_STAGE).lower()
        if self.aug_stage not in _AUG_STAGES:
            raise ConfigError(f"TILING.AUG_STAGE: expected one of {list(_AUG_STAGES)}, found {cfg.TILING.AUG_STAGE!r}")
        self.min_visible = float(cfg.TILING.MIN_VISIBLE)
        self.cache_size = int(cfg.TILING.CACHE_IMAGES)
        if self.cache_size < 0:
            raise ConfigError(f"TILING.CACHE_IMAGES: expected a number of images >= 0, found {self.cache_size}")
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _short_edge(self, rng: np.random.Generator) -> int:
        if self.sampling == "range" and len(self.min_sizes) == 2:
            return int(rng.integers(self.min_sizes[0], self.min_sizes[1] + 1))
        return (
            int(self.min_sizes[int(rng.integers(len(self.min_sizes)))])
            if len(self.min_sizes) > 1
            else self.min_sizes[0]
        )

    def _read_checked(self, file_name: str, height: int, width: int) -> np.ndarray:
        image = self._read(file_name, **self.dicom_kwargs)
        h0, w0 = image.shape[:2]
        if (h0, w0) != (height, width):
            raise DataError(f"{file_name}: image is {w0}x{h0} but its COCO record says {width}x{height}")
        return image

    def _raw(self, record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, Geometry]:
        """An original file flipped / cropped by the preprocessing recipe, with its boxes:
        (image, boxes xyxy, classes, meddet.io.Geometry)."""
        image = read_for_recipe(record["file_name"], self.recipe.pixels)
        if image.shape[:2] != (record["height"], record["width"]):
            raise DataError(
                f"{record['file_name']}: image is {image.shape[1]}x{image.shape[0]} but its COCO "
                f"record says {record['width']}x{record['height']}"
            )
        boxes, classes = _boxes_classes(record.get("annotations", []))
        xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes.tolist()]
        out, moved, geometry = self.recipe.apply(image, xywh)
        moved_xyxy = np.asarray([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in moved], dtype=np.float32)
        return np.asarray(out), moved_xyxy.reshape(-1, 4), classes, geometry

    def _read_parent(self, record: dict) -> np.ndarray:
        """The decoded parent image of a tile record, through the LRU cache (read-only: never modify it)."""
        t = record["tile"]
        key = record["file_name"]
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        image = self._read_checked(key, int(t["parent_height"]), int(t["parent_width"]))
        if self.cache_size > 0:
            self._cache[key] = image
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return image

    def _tile(self, record: dict, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parent = self._read_parent(record)
        t = record["tile"]
        x0, y0, h, w = int(t["x0"]), int(t["y0"]), int(record["height"]), int(record["width"])
        if self.aug is None or self.aug_stage == "after":
            img = to_unit_float(parent[y0 : y0 + h, x0 : x0 + w])
            boxes, classes = _boxes_classes(record.get("annotations", []))
            if self.aug is not None:
                img, boxes, classes = apply_augmentation(self.aug, img, boxes, classes, seed)
            return img, boxes, classes
        boxes, classes = _boxes_classes(record.get("parent_annotations", []))
        img, boxes, classes = apply_augmentation(self.aug, to_unit_float(parent), boxes, classes, seed)
        ah, aw = img.shape[:2]
        h, w = min(h, ah), min(w, aw)
        x0, y0 = min(x0, aw - w), min(y0, ah - h)
        clipped, keep = clip_boxes_to_window(boxes, (x0, y0, x0 + w, y0 + h), self.min_visible)
        return img[y0 : y0 + h, x0 : x0 + w], clipped[keep], classes[keep]

    def __call__(self, record: dict, seed: int = 0) -> dict:
        geometry = None
        if "tile" in record:
            img, boxes, classes = self._tile(record, seed)
        elif self.recipe.geometric and not record.get("preprocessed"):
            img, boxes, classes, geometry = self._raw(record)
            if self.aug is not None:
                img, boxes, classes = apply_augmentation(self.aug, to_unit_float(img), boxes, classes, seed)
        else:
            img = self._read_checked(record["file_name"], record["height"], record["width"])
            boxes, classes = _boxes_classes(record.get("annotations", []))
            if self.aug is not None:
                img, boxes, classes = apply_augmentation(self.aug, to_unit_float(img), boxes, classes, seed)
        h, w = img.shape[:2]
        if self.is_train:
            rng = np.random.default_rng(seed)
            nh, nw = shortest_edge_size(h, w, self._short_edge(rng), self.max_size)
            tensor = to_model_tensor(resize(to_unit_float(img), (nh, nw)), self.format)
        else:  # the Predictor's own test-time preparation (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, INPUT.FORMAT)
            tensor = prepare_image(img, self.cfg)["image"]
            nh, nw = tensor.shape[1:]
        if len(boxes):
            boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
        out = {
            "image": tensor,
            # The size predictions are mapped back to (after augmentation: the augmented frame).
            "height": h,
            "width": w,
            "image_id": record.get("image_id"),
            "file_name": record["file_name"],
        }
        if geometry is not None and not self.is_train:
            out["geometry"] = geometry  # inference_on_dataset maps the detections back to the file's pixels
        if self.with_boxes:
            out["boxes"] = torch.from_numpy(boxes)
            out["classes"] = torch.from_numpy(classes)
        return out


def dicom_kwargs(cfg: CfgNode) -> dict:
    """Pixel-reading options of the DICOM section, as keyword arguments of meddet.io.read_image."""
    return PixelOptions.from_cfg(cfg).as_kwargs()


class _MappedDataset(Dataset):
    """Map-style dataset whose keys are (stream position, record index); the position seeds augmentation."""

    def __init__(self, records: list[dict], mapper: DatasetMapper, seed: int):
        self.records = records
        self.mapper = mapper
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, tuple):
            pos, idx = key
        else:
            pos, idx = key, key
        return self.mapper(self.records[idx], seed=hash((self.seed, pos)) & 0x7FFFFFFF)


class EpochOrder(Protocol):
    """A sampling strategy: the training-set indices of one epoch, a pure function of (seed, epoch)."""

    def indices(self, seed: int, epoch: int) -> list[int]:
        """Indices of epoch `epoch` (0, 1, ...) of the run seeded by `seed`."""
        ...


class PermutationOrder:
    """DATALOADER.SAMPLER_TRAIN "TrainingSampler": every image once per epoch, in a permutation seeded
    by seed + epoch (torch.randperm)."""

    def __init__(self, size: int):
        self.size = int(size)

    def indices(self, seed: int, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(seed + epoch)
        return torch.randperm(self.size, generator=g).tolist()


class RepeatFactorOrder:
    """DATALOADER.SAMPLER_TRAIN "RepeatFactorTrainingSampler" (LVIS, detectron2): image i appears
    floor(r_i) or ceil(r_i) times per epoch (stochastic rounding, so r_i times on average), then the
    epoch is shuffled; both draws from a generator seeded by seed + epoch."""

    def __init__(self, factors: np.ndarray):
        f = np.asarray(factors, dtype=np.float64).reshape(-1)
        if len(f) == 0 or not np.all(np.isfinite(f)) or (f < 1).any():
            raise DataError(f"repeat factors: expected one finite value >= 1 per image, found {f.tolist()[:8]}...")
        self.int_part = torch.from_numpy(np.floor(f))
        self.frac_part = torch.from_numpy(f - np.floor(f))

    def indices(self, seed: int, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(seed + epoch)
        rands = torch.rand(len(self.frac_part), generator=g, dtype=torch.float64)
        counts = (self.int_part + (rands < self.frac_part).double()).long()
        idx = torch.repeat_interleave(torch.arange(len(counts)), counts)
        return idx[torch.randperm(len(idx), generator=g)].tolist()


class ClassBalancedOrder:
    """DATALOADER.SAMPLER_TRAIN "ClassBalancedSampler" (weights from :func:`equal_share_weights`) and
    "RarestClassSampler" (:func:`rarest_class_weights`): len(weights) draws per epoch with replacement,
    image i with probability proportional to weights[i], seeded by seed + epoch."""

    def __init__(self, weights: np.ndarray):
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(w) == 0 or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise DataError(
                "class-balanced weights: expected one finite value >= 0 per image, not all 0, "
                f"found {w.tolist()[:8]}..."
            )
        self.weights = torch.from_numpy(w)

    def indices(self, seed: int, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(seed + epoch)
        return torch.multinomial(self.weights, len(self.weights), replacement=True, generator=g).tolist()


SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler", "ClassBalancedSampler", "RarestClassSampler")


def _class_presence(records: Sequence[dict], num_classes: int = 0) -> np.ndarray:
    """(images, classes) bool: image i holds at least one box of class c."""
    cats = [[int(a["category"]) for a in r.get("annotations", [])] for r in records]
    k = max([num_classes] + [c + 1 for cs in cats for c in cs])
    presence = np.zeros((len(records), k), dtype=bool)
    rows = np.repeat(np.arange(len(records)), [len(cs) for cs in cats])
    presence[rows, np.fromiter((c for cs in cats for c in cs), dtype=np.int64, count=len(rows))] = True
    return presence


def repeat_factors(records: Sequence[dict], threshold: float, sqrt: bool = True) -> np.ndarray:
    """LVIS repeat factor of each image: max over the classes it holds of r_c = max(1, sqrt(t / f_c))
    (max(1, t / f_c) when `sqrt` is False), f_c the fraction of images holding class c; 1 for images
    without boxes (detectron2's RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)."""
    if threshold < 0:
        raise ConfigError(f"DATALOADER.REPEAT_THRESHOLD: expected a frequency >= 0, found {threshold}")
    presence = _class_presence(records)
    freq = presence.mean(axis=0) if len(records) else np.zeros(presence.shape[1])
    ratio = np.divide(float(threshold), freq, out=np.zeros_like(freq), where=freq > 0)
    r_class = np.maximum(1.0, np.sqrt(ratio) if sqrt else ratio)
    return np.maximum(1.0, (presence * r_class).max(axis=1, initial=0.0))


def rarest_class_weights(records: Sequence[dict]) -> np.ndarray:
    """DATALOADER.SAMPLER_TRAIN "RarestClassSampler" (what "ClassBalancedSampler" did before it balanced
    exactly): sampling weight of each image = max over the classes it holds of 1 / (images holding that
    class).

    Images without boxes form one more group with weight 1 / (images without boxes). Each class, and the
    negatives together, are drawn equally often only when every image holds one class: an image with
    several classes counts for its rarest, so classes that share images with rarer ones are over-drawn
    (e.g. shares 0.57 / 0.28 / 0.36 on an imbalanced set). :func:`equal_share_weights` balances exactly."""
    presence = _class_presence(records)
    counts = presence.sum(axis=0)
    w_class = np.divide(1.0, counts, out=np.zeros(len(counts)), where=counts > 0)
    weights = (presence * w_class).max(axis=1, initial=0.0)
    empty = ~presence.any(axis=1)
    if empty.any():
        weights[empty] = 1.0 / empty.sum()
    return weights


class_balanced_weights = rarest_class_weights  # the name before "RarestClassSampler" existed

EQUAL_SHARE_TOL = 1e-4  # relative spread of the class shares at which equal_share_weights stops
EQUAL_SHARE_MAX_ITER = 20000


def equal_share_weights(
    records: Sequence[dict], tol: float = EQUAL_SHARE_TOL, max_iter: int = EQUAL_SHARE_MAX_ITER
) -> np.ndarray:
    """DATALOADER.SAMPLER_TRAIN "ClassBalancedSampler": sampling weights (summing to 1) under which every
    class is held by the same share of the drawn images, and the images without boxes (one more group,
    when there are any) make up that share too.

    Found by multiplicative scaling from equal weights: each step multiplies an image's weight by the
    geometric mean, over the groups it holds, of (mean share / that group's share), until the shares
    agree within `tol` (relative) or `max_iter` steps. Every image keeps a positive weight. When the
    classes cannot be balanced exactly (a class that only ever appears with another), the shares come
    as close as the data allows and a warning says so."""
    presence = _class_presence(records).astype(np.float64)
    if not len(records):
        return np.zeros(0)
    empty = ~presence.any(axis=1)
    groups = np.column_stack([presence, empty]) if empty.any() else presence
    groups = groups[:, groups.any(axis=0)]
    n_groups = groups.sum(axis=1)
    w = np.full(len(records), 1.0 / len(records))
    shares = groups.T @ w
    for _ in range(int(max_iter)):
        shares = groups.T @ w
        target = shares.mean()
        if np.max(np.abs(shares - target)) <= tol * target:
            break
        w = w * np.exp((groups @ np.log(target / shares)) / n_groups)
        w /= w.sum()
    else:
        logger.warning(
            "ClassBalancedSampler: class shares %s could not be made equal (a class only appears "
            "together with another?); using the closest reached",
            np.round(shares, 3).tolist(),
        )
    return w


def _log_class_shares(records: Sequence[dict], weights: np.ndarray, names: Sequence[str], what: str) -> None:
    presence = _class_presence(records, len(names))
    before = presence.mean(axis=0)
    after = (weights[:, None] * presence).sum(axis=0) / weights.sum()
    parts = [
        f"{names[c] if c < len(names) else c}: {100 * before[c]:.1f}% -> {100 * after[c]:.1f}%"
        for c in range(presence.shape[1])
    ]
    logger.info(
        "%s: share of drawn images holding each class (dataset -> expected per epoch): %s",
        what,
        ", ".join(parts) or "no classes",
    )


def build_epoch_order(cfg: CfgNode, records: Sequence[dict], names: Sequence[str] = ()) -> EpochOrder:
    """The sampling strategy of DATALOADER.SAMPLER_TRAIN over `records`; logs each class's share of
    the images drawn per epoch against its share of the dataset."""
    name = str(cfg.DATALOADER.SAMPLER_TRAIN)
    if name == "TrainingSampler":
        return PermutationOrder(len(records))
    if name == "RepeatFactorTrainingSampler":
        factors = repeat_factors(records, float(cfg.DATALOADER.REPEAT_THRESHOLD), bool(cfg.DATALOADER.REPEAT_SQRT))
        _log_class_shares(records, factors, names, f"RepeatFactorTrainingSampler (mean repeat {factors.mean():.2f})")
        return RepeatFactorOrder(factors)
    if name == "ClassBalancedSampler":
        weights = equal_share_weights(records)
        _log_class_shares(records, weights, names, "ClassBalancedSampler")
        return ClassBalancedOrder(weights)
    if name == "RarestClassSampler":
        weights = rarest_class_weights(records)
        _log_class_shares(records, weights, names, "RarestClassSampler")
        return ClassBalancedOrder(weights)
    raise ConfigError(f"DATALOADER.SAMPLER_TRAIN: expected one of {list(SAMPLERS)}, found {name!r}")


class TrainingBatchSampler:
    """Infinite, seeded stream of batches of (position, index); each epoch's indices come from `order`
    (default: a new permutation every epoch, PermutationOrder).

    `start_iter` skips the batches already consumed, so a resumed run continues the same sequence.
    `rank`/`world_size` shard each global batch across processes.

    `groups` (DATALOADER.ASPECT_RATIO_GROUPING, detectron2's AspectRatioGroupedDataset): one bool per index
    (the image is wider than high); the stream then fills one bucket per group and yields a bucket as a
    batch when it is full, so every batch holds images of one orientation and pads less. Deterministic:
    a resumed run replays the grouping of the batches it skips (index arithmetic only).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
        order: EpochOrder | None = None,
        groups: Sequence[bool] | None = None,
    ):
        if size <= 0:
            raise DataError("the training set has no usable images (all empty or filtered)")
        if batch_size % world_size:
            raise ConfigError(
                f"SOLVER.IMS_PER_BATCH ({batch_size}) must be divisible by the number of processes ({world_size})"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size
        self.order = order if order is not None else PermutationOrder(size)
        if groups is not None and len(groups) != size:
            raise ValueError(f"groups: {len(groups)} values for {size} images")
        self.groups = None if groups is None else [bool(g) for g in groups]

    def _indices(self, skip: int) -> Iterator[int]:
        """The index stream, epoch after epoch, less its first `skip` entries."""
        epoch = 0
        while True:
            idx = self.order.indices(self.seed, epoch)
            epoch += 1
            if skip >= len(idx):
                skip -= len(idx)
                continue
            yield from idx[skip:]
            skip = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_rank = self.batch_size // self.world_size
        for batch in self._grouped(self.groups) if self.groups is not None else self._plain():
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def _plain(self) -> Iterator[list[tuple[int, int]]]:
        pos = self.start_iter * self.batch_size
        stream = self._indices(pos)
        while True:
            batch = [(pos + i, next(stream)) for i in range(self.batch_size)]
            pos += self.batch_size
            yield batch

    def _grouped(self, groups: list[bool]) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[bool, list[tuple[int, int]]] = {False: [], True: []}
        done = 0
        for pos, idx in enumerate(self._indices(0)):
            bucket = buckets[groups[idx]]
            bucket.append((pos, idx))
            if len(bucket) == self.batch_size:
                if done >= self.start_iter:
                    yield list(bucket)
                done += 1
                bucket.clear()


def _collate(batch: list[dict]) -> list[dict]:
    return batch


def build_train_loader(
    cfg: CfgNode, start_iter: int = 0, rank: int = 0, world_size: int = 1, records: list[dict] | None = None
) -> tuple[DataLoader, list[str]]:
    """The infinite training loader over DATASETS.TRAIN (or `records` already loaded from it).

    With TILING.ENABLED it trains on the tiles of those images (meddet.data.tiling.tile_records);
    DATALOADER.FILTER_EMPTY_ANNOTATIONS then applies to tiles, and DATALOADER.SAMPLER_TRAIN samples them."""
    names = list(cfg.DATASETS.CLASS_NAMES)
    if records is None:
        records, names = load_records(
            list(cfg.DATASETS.TRAIN), cfg.DATASETS.IMAGE_ROOT, bool(cfg.DATASETS.STRICT_BOXES)
        )
    files = ", ".join(map(str, cfg.DATASETS.TRAIN)) or "DATASETS.TRAIN"
    if not records:
        raise DataError(
            f"{files}: the training split holds no images (DATASETS.TRAIN); expected a COCO file "
            "with at least one image (an empty split of a small dataset? re-split it)"
        )
    n_images, what = len(records), "images"
    if cfg.TILING.ENABLED:
        records = tile_records(records, TilingParams.from_cfg(cfg, names), names)
        what = "tiles"
        if not records:
            raise DataError(
                f"{files}: none of its {n_images} images gives a training tile with the TILING.* "
                "settings (KEEP_CLASSES, NEGATIVE_FRACTION, MIN_VISIBLE); expected at least one"
            )
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        kept = [r for r in records if r["annotations"]]
        if len(kept) < len(records):
            logger.info(
                "Training on %d of %d %s (%d without boxes left out: DATALOADER.FILTER_EMPTY_ANNOTATIONS)",
                len(kept),
                len(records),
                what,
                len(records) - len(kept),
            )
        if not kept:
            raise DataError(
                f"{files}: none of its {len(records)} {what} has a box, and "
                "DATALOADER.FILTER_EMPTY_ANNOTATIONS leaves such images out; expected boxes in the "
                "training split (or set DATALOADER.FILTER_EMPTY_ANNOTATIONS False)"
            )
        records = kept
    for f in dict.fromkeys(r["file_name"] for r in records):
        if not Path(f).is_file():
            raise DataError(f"{f}: image file not found (referenced by DATASETS.TRAIN)")
    mapper = DatasetMapper(cfg, is_train=True)
    order = build_epoch_order(cfg, records, names) if records else None
    groups = None
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        if cfg.AUG.ENABLED and cfg.AUG.ROT90_PROB > 0:
            raise ConfigError(
                f"DATALOADER.ASPECT_RATIO_GROUPING True with AUG.ROT90_PROB {cfg.AUG.ROT90_PROB}: quarter turns "
                "change an image's orientation after it was grouped; expected one of them off"
            )
        groups = [int(r["width"]) > int(r["height"]) for r in records]
        logger.info(
            "DATALOADER.ASPECT_RATIO_GROUPING: batches of one orientation (%d of %d %s wider than high)",
            sum(groups),
            len(groups),
            what,
        )
    sampler = TrainingBatchSampler(
        len(records),
        int(cfg.SOLVER.IMS_PER_BATCH),
        int(cfg.SEED),
        start_iter,
        rank,
        world_size,
        order=order,
        groups=groups,
    )
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    loader = DataLoader(
        _MappedDataset(records, mapper, int(cfg.SEED)),
        batch_sampler=sampler,
        collate_fn=_collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    return loader, names


def build_test_loader(
    cfg: CfgNode,
    json_path: str | DatasetSplit,
    batch_size: int = 1,
    with_boxes: bool = False,
    rank: int = 0,
    world_size: int = 1,
    tiles: bool = False,
) -> tuple[DataLoader, list[dict], list[str]]:
    """Test-time loader (no augmentation, MIN_SIZE_TEST); `with_boxes` adds the ground truth (validation
    loss); with several processes each rank takes every world_size-th image.

    `tiles` yields the tiles of the images instead (TILING.SIZE/OVERLAP/MIN_VISIBLE; every tile, the
    KEEP_CLASSES/NEGATIVE_FRACTION training filters do not apply) and returns the tile records, whose
    image ids are those of meddet.data.tiling.tile_coco on the same COCO (tile-level evaluation).

    `json_path` may be a loaded :class:`~meddet.data.coco.DatasetSplit`: its records are used as they are
    (the file is not read again)."""
    if isinstance(json_path, DatasetSplit):
        records, names = json_path.records, json_path.class_names
    else:
        records, names = load_records([json_path], cfg.DATASETS.IMAGE_ROOT, bool(cfg.DATASETS.STRICT_BOXES))
    if tiles:
        params = TilingParams.from_cfg(cfg, names).for_evaluation()
        records = tile_records(records, params, names)
    records = records[rank::world_size]
    mapper = DatasetMapper(cfg, is_train=False, with_boxes=with_boxes)
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    loader = DataLoader(
        _MappedDataset(records, mapper, 0),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=_collate,
        num_workers=workers,
    )
    return loader, records, names
