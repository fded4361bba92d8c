"""Training/test data: COCO records → model batches (the model interface of ARCHITECTURE.md)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from meddet.data.coco import class_names, coco_to_records, load_coco
from meddet.data.transforms import (
    apply_augmentation,
    build_augmentation,
    resize,
    shortest_edge_size,
    to_model_tensor,
    to_unit_float,
)
from meddet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def load_records(json_paths: Sequence[str], image_root: str = "") -> tuple[list[dict], list[str]]:
    """Records of one or more COCO files that must share the same categories."""
    if not json_paths:
        raise ConfigError("no dataset given: set DATASETS.TRAIN / DATASETS.TEST to COCO JSON files")
    records: list[dict] = []
    names: list[str] | None = None
    for p in json_paths:
        coco = load_coco(p)
        n = class_names(coco)
        if names is not None and n != names:
            raise DataError(f"{p}: categories {n} differ from those of {json_paths[0]} ({names})")
        names = n
        records.extend(coco_to_records(coco, p, image_root))
    return records, names or []


class DatasetMapper:
    """Reads an image, augments it (training), resizes its shortest edge and builds the model's dict."""

    def __init__(self, cfg, is_train: bool, with_boxes: bool | None = None):
        from meddet.io import read_image

        self._read = read_image
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

    def _short_edge(self, rng: np.random.Generator) -> int:
        if self.sampling == "range" and len(self.min_sizes) == 2:
            return int(rng.integers(self.min_sizes[0], self.min_sizes[1] + 1))
        return int(self.min_sizes[int(rng.integers(len(self.min_sizes)))]) if len(self.min_sizes) > 1 else self.min_sizes[0]

    def __call__(self, record: dict, seed: int = 0) -> dict:
        image = self._read(record["file_name"], **self.dicom_kwargs)
        h0, w0 = image.shape[:2]
        if (h0, w0) != (record["height"], record["width"]):
            raise DataError(
                f"{record['file_name']}: image is {w0}x{h0} but its COCO record says "
                f"{record['width']}x{record['height']}"
            )
        img = to_unit_float(image)
        anns = record.get("annotations", [])
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        classes = np.array([a["category"] for a in anns], dtype=np.int64)
        rng = np.random.default_rng(seed)
        if self.aug is not None:
            img, boxes, classes = apply_augmentation(self.aug, img, boxes, classes, seed)
        h, w = img.shape[:2]
        nh, nw = shortest_edge_size(h, w, self._short_edge(rng), self.max_size)
        img = resize(img, (nh, nw))
        if len(boxes):
            boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
        out = {
            "image": to_model_tensor(img, self.format),
            # The size predictions are mapped back to (after augmentation: the augmented frame).
            "height": h,
            "width": w,
            "image_id": record.get("image_id"),
            "file_name": record["file_name"],
        }
        if self.with_boxes:
            out["boxes"] = torch.from_numpy(boxes)
            out["classes"] = torch.from_numpy(classes)
        return out


def dicom_kwargs(cfg) -> dict:
    """Pixel-reading options of the DICOM section, as keyword arguments of meddet.io.read_image."""
    from meddet.io.dicom import PixelOptions

    return PixelOptions.from_cfg(cfg).as_kwargs()


class _MappedDataset(Dataset):
    """Map-style dataset whose keys are (stream position, record index); the position seeds augmentation."""

    def __init__(self, records: list[dict], mapper: DatasetMapper, seed: int):
        self.records = records
        self.mapper = mapper
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            pos, idx = key
        else:
            pos, idx = key, key
        return self.mapper(self.records[idx], seed=hash((self.seed, pos)) & 0x7FFFFFFF)


class TrainingBatchSampler:
    """Infinite, seeded stream of batches of (position, index): a new permutation every epoch.

    `start_iter` skips the batches already consumed, so a resumed run continues the same sequence.
    `rank`/`world_size` shard each global batch across processes.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_iter: int = 0, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise DataError("the training set has no usable images (all empty or filtered)")
        if batch_size % world_size:
            raise ConfigError(
                f"SOLVER.IMS_PER_BATCH ({batch_size}) must be divisible by the number of processes ({world_size})"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size

    def _indices(self) -> Iterator[int]:
        epoch = 0
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            yield from torch.randperm(self.size, generator=g).tolist()
            epoch += 1

    def __iter__(self):
        stream = self._indices()
        pos = 0
        skip = self.start_iter * self.batch_size
        for _ in range(skip):
            next(stream)
        pos = skip
        per_rank = self.batch_size // self.world_size
        while True:
            batch = [(pos + i, next(stream)) for i in range(self.batch_size)]
            pos += self.batch_size
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]


def _collate(batch):
    return batch


def build_train_loader(cfg, start_iter: int = 0, rank: int = 0, world_size: int = 1,
                       records: list[dict] | None = None) -> tuple[DataLoader, list[str]]:
    """The infinite training loader over DATASETS.TRAIN (or `records` already loaded from it)."""
    names = list(cfg.DATASETS.CLASS_NAMES)
    if records is None:
        records, names = load_records(list(cfg.DATASETS.TRAIN), cfg.DATASETS.IMAGE_ROOT)
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        kept = [r for r in records if r["annotations"]]
        if len(kept) < len(records):
            logger.info("Training on %d of %d images (%d without boxes left out: DATALOADER.FILTER_EMPTY_ANNOTATIONS)",
                        len(kept), len(records), len(records) - len(kept))
        records = kept
    for r in records:
        if not Path(r["file_name"]).is_file():
            raise DataError(f"{r['file_name']}: image file not found (referenced by DATASETS.TRAIN)")
    mapper = DatasetMapper(cfg, is_train=True)
    sampler = TrainingBatchSampler(len(records), int(cfg.SOLVER.IMS_PER_BATCH), int(cfg.SEED), start_iter, rank, world_size)
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


def build_test_loader(cfg, json_path: str, batch_size: int = 1, with_boxes: bool = False, rank: int = 0,
                      world_size: int = 1) -> tuple[DataLoader, list[dict], list[str]]:
    """Test-time loader (no augmentation, MIN_SIZE_TEST); `with_boxes` adds the ground truth (validation
    loss); with several processes each rank takes every world_size-th image."""
    records, names = load_records([json_path], cfg.DATASETS.IMAGE_ROOT)
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
