"""Tiling of large images: tile windows, boxes clipped to tiles, tile records and their way back.

Windows follow SAHI's slicing: a regular grid with the given overlap whose last row/column is shifted
back to end exactly at the image edge, so every pixel is covered and no tile is padded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from tqdm import tqdm

from meddet.data.coco import category_id_to_index, class_names, load_coco, resolve_image_path, save_json_atomic
from meddet.errors import ConfigError, DataError
from meddet.io import read_image, write_png

if TYPE_CHECKING:
    from meddet.config import CfgNode

logger = logging.getLogger(__name__)


def _starts(length: int, size: int, step: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, step))
    starts.append(length - size)
    return starts


def tile_windows(height: int, width: int, size: int | tuple[int, int], overlap: float) -> np.ndarray:
    """Tile windows (N, 4) int64 [x0, y0, x1, y1] covering an image, row by row.

    `size` is the tile side (or (height, width)); `overlap` the fraction of a tile shared with its
    neighbour (0 <= overlap < 1). An image side shorter than the tile gives one window of that side."""
    th, tw = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list, np.ndarray)) else (int(size), int(size))
    if th <= 0 or tw <= 0:
        raise ConfigError(f"TILING.SIZE: expected a positive tile size, found {size!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ConfigError(f"TILING.OVERLAP: expected a fraction in [0, 1), found {overlap!r}")
    if height <= 0 or width <= 0:
        raise ConfigError(f"cannot tile an image of {width}x{height} pixels")
    # SAHI's step: the overlap in whole pixels is int(overlap * side).
    step_y = max(1, th - int(overlap * th))
    step_x = max(1, tw - int(overlap * tw))
    out = [
        (x0, y0, min(x0 + tw, width), min(y0 + th, height))
        for y0 in _starts(height, th, step_y)
        for x0 in _starts(width, tw, step_x)
    ]
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def _clip_many(boxes: np.ndarray, windows: np.ndarray, min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (B, 4) clipped to each of the windows (W, 4), in each window's coordinates: (W, B, 4), (W, B)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(1, -1, 4)
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 1, 4)
    lo, hi = w[..., :2], w[..., 2:]
    clipped = np.concatenate([np.clip(b[..., :2], lo, hi), np.clip(b[..., 2:], lo, hi)], axis=-1)
    full = np.prod(b[..., 2:] - b[..., :2], axis=-1)
    side = clipped[..., 2:] - clipped[..., :2]
    visible = np.prod(side, axis=-1)
    positive = (side > 0).all(axis=-1) & (b[..., 2:] > b[..., :2]).all(axis=-1)
    keep = positive & (visible >= min_visible * full)
    clipped -= np.concatenate([lo, lo], axis=-1)
    return clipped, keep


def clip_boxes_to_window(
    boxes_xyxy: np.ndarray, window: Sequence[float] | np.ndarray, min_visible: float
) -> tuple[np.ndarray, np.ndarray]:
    """XYXY boxes clipped to `window` [x0, y0, x1, y1] and shifted to its coordinates, and the keep mask.

    A box is kept when the part inside the window holds at least `min_visible` of its area and has a
    positive width and height; degenerate boxes (zero or negative size) are never kept. Every box is
    returned (float32, (N, 4)); select the kept ones with the mask."""
    clipped, keep = _clip_many(boxes_xyxy, np.asarray(window).reshape(1, 4), float(min_visible))
    return clipped[0].astype(np.float32), keep[0]


@dataclass(frozen=True)
class TilingParams:
    """How images are cut into tiles and which tiles are kept (the TILING section of the config).

    `keep_classes`: keep only tiles holding a box of one of these classes (names; empty = all tiles).
    `minority_classes`: tiles holding no box of these classes are kept with probability
    `negative_fraction` (exactly round(fraction * count) of them, drawn with `seed`); empty means every
    class, so the undersampled tiles are those without any box."""

    size: int = 512
    overlap: float = 0.2
    min_visible: float = 0.5
    keep_classes: tuple[str, ...] = ()
    minority_classes: tuple[str, ...] = ()
    negative_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size <= 0:
            raise ConfigError(f"TILING.SIZE: expected a positive integer (pixels), found {self.size!r}")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ConfigError(f"TILING.OVERLAP: expected a fraction in [0, 1), found {self.overlap!r}")
        if not 0.0 <= float(self.min_visible) <= 1.0:
            raise ConfigError(f"TILING.MIN_VISIBLE: expected a fraction in [0, 1], found {self.min_visible!r}")
        if not 0.0 <= float(self.negative_fraction) <= 1.0:
            raise ConfigError(
                f"TILING.NEGATIVE_FRACTION: expected a fraction in [0, 1], found {self.negative_fraction!r}"
            )
        if int(self.seed) < 0:
            raise ConfigError(f"SEED: tile selection needs a seed >= 0, found {self.seed!r}")
        object.__setattr__(self, "keep_classes", tuple(str(c) for c in self.keep_classes))
        object.__setattr__(self, "minority_classes", tuple(str(c) for c in self.minority_classes))

    @classmethod
    def from_cfg(cls, cfg: CfgNode, class_names: Sequence[str]) -> TilingParams:
        """Parameters from cfg.TILING and cfg.SEED; class names are checked against `class_names`.

        A negative SEED (random) draws a seed for the tile selection and logs it."""
        seed = int(cfg.SEED)
        if seed < 0:
            entropy = cast(int, np.random.SeedSequence().entropy)  # drawn (an int) when none is given
            seed = int(entropy % (2**31))
            logger.info("SEED < 0: tile selection uses the random seed %d", seed)
        params = cls(
            size=int(cfg.TILING.SIZE),
            overlap=float(cfg.TILING.OVERLAP),
            min_visible=float(cfg.TILING.MIN_VISIBLE),
            keep_classes=tuple(cfg.TILING.KEEP_CLASSES),
            minority_classes=tuple(cfg.TILING.MINORITY_CLASSES),
            negative_fraction=float(cfg.TILING.NEGATIVE_FRACTION),
            seed=seed,
        )
        params.class_indices(class_names)
        return params

    def for_evaluation(self) -> TilingParams:
        """The same grid with every tile kept (no KEEP_CLASSES / NEGATIVE_FRACTION): evaluation tiles."""
        return replace(self, keep_classes=(), minority_classes=(), negative_fraction=1.0)

    def class_indices(self, class_names: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(keep, minority) class indices into `class_names`; None where the list is empty."""
        return (
            _indices_of(self.keep_classes, class_names, "TILING.KEEP_CLASSES"),
            _indices_of(self.minority_classes, class_names, "TILING.MINORITY_CLASSES"),
        )


def _indices_of(names: Sequence[str], class_names: Sequence[str], key: str) -> np.ndarray | None:
    if not names:
        return None
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ConfigError(f"{key}: unknown class names {unknown}; expected names among {list(class_names)}")
    return np.asarray([list(class_names).index(n) for n in names], dtype=np.int64)


@dataclass
class _Tile:
    parent: int  # index of the parent in the input list
    index: int  # window index within the parent (row by row)
    tile_id: int
    window: tuple[int, int, int, int]
    boxes: np.ndarray  # kept boxes clipped, tile coordinates
    ann: np.ndarray  # indices of the kept boxes in the parent's list


def _plan(
    sizes: Sequence[tuple[int, int]],
    boxes: Sequence[np.ndarray],
    classes: Sequence[np.ndarray],
    params: TilingParams,
    keep_idx: np.ndarray | None,
    minority_idx: np.ndarray | None,
) -> list[_Tile]:
    """Tiles of every image, filtered. Tile ids number every window of every image from 1, in order,
    before filtering: the same image list and grid always give a tile the same id."""
    tiles: list[_Tile] = []
    minority: list[bool] = []
    next_id = 1
    n_windows = n_keep_dropped = 0
    for p, ((h, w), bx, cl) in enumerate(zip(sizes, boxes, classes)):
        windows = tile_windows(h, w, params.size, params.overlap)
        n_windows += len(windows)
        clipped, keep = _clip_many(bx, windows, params.min_visible)
        for i, win in enumerate(windows):
            cls_in = cl[keep[i]]
            tid, next_id = next_id, next_id + 1
            if keep_idx is not None and not np.isin(cls_in, keep_idx).any():
                n_keep_dropped += 1
                continue
            idx = np.flatnonzero(keep[i])
            x0, y0, x1, y1 = (int(v) for v in win)
            tiles.append(_Tile(p, i, tid, (x0, y0, x1, y1), clipped[i, idx], idx))
            minority.append(bool(np.isin(cls_in, minority_idx).any()) if minority_idx is not None else len(cls_in) > 0)
    negatives = np.flatnonzero(~np.asarray(minority, dtype=bool))
    dropped: set[int] = set()
    if params.negative_fraction < 1.0 and len(negatives):
        k = int(np.floor(params.negative_fraction * len(negatives) + 0.5))
        rng = np.random.default_rng(int(params.seed))
        chosen = rng.choice(len(negatives), size=k, replace=False)
        dropped = set(np.delete(negatives, chosen).tolist())
        tiles = [t for j, t in enumerate(tiles) if j not in dropped]
    logger.info(
        "Tiling (%d px, overlap %.2f): kept %d of the %d tiles of %d images (%d without a TILING.KEEP_CLASSES box "
        "left out; %d of %d without a minority-class box left out by TILING.NEGATIVE_FRACTION %.2f)",
        params.size,
        params.overlap,
        len(tiles),
        n_windows,
        len(sizes),
        n_keep_dropped,
        len(dropped),
        len(negatives),
        params.negative_fraction,
    )
    return tiles


def _record_arrays(record: dict) -> tuple[np.ndarray, np.ndarray]:
    anns = record.get("annotations", [])
    boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    classes = np.asarray([a["category"] for a in anns], dtype=np.int64).reshape(-1)
    return boxes, classes


def tile_records(records: list[dict], params: TilingParams, class_names: Sequence[str]) -> list[dict]:
    """Tile records of whole-image records (meddet.data.coco.coco_to_records), filtered by `params`.

    Each tile record has the keys of its parent record with `image_id` the tile's id (see `_plan`),
    `height`/`width` the tile's, `annotations` the boxes clipped to the tile (TilingParams.min_visible)
    in tile coordinates, plus `tile` {parent_id, parent_file_name, x0, y0, parent_height, parent_width,
    index} and `parent_annotations` (the parent's whole list, for augmentation before tiling)."""
    keep_idx, minority_idx = params.class_indices(class_names)
    arrays = [_record_arrays(r) for r in records]
    plan = _plan(
        [(int(r["height"]), int(r["width"])) for r in records],
        [a[0] for a in arrays],
        [a[1] for a in arrays],
        params,
        keep_idx,
        minority_idx,
    )
    out = []
    for t in plan:
        r = records[t.parent]
        x0, y0, x1, y1 = t.window
        anns = [{**r["annotations"][j], "bbox": [float(v) for v in box]} for j, box in zip(t.ann, t.boxes)]
        out.append(
            {
                **r,
                "image_id": t.tile_id,
                "height": y1 - y0,
                "width": x1 - x0,
                "annotations": anns,
                "tile": {
                    "parent_id": r["image_id"],
                    "parent_file_name": r["file_name"],
                    "x0": x0,
                    "y0": y0,
                    "parent_height": int(r["height"]),
                    "parent_width": int(r["width"]),
                    "index": t.index,
                },
                "parent_annotations": r.get("annotations", []),
            }
        )
    return out


def _tile_file_name(parent_file_name: str, parent_id: Any, window: tuple[int, int, int, int]) -> str:
    """tiles/<parent path without suffix>_<x0>_<y0>_<x1>_<y1>.png (SAHI's naming); a parent given by an
    absolute path or one leaving its folder is named by its id and file name instead."""
    p = PurePosixPath(str(parent_file_name).replace("\\", "/"))
    inside = not p.is_absolute() and ".." not in p.parts and ":" not in str(p)
    base = p.with_suffix("") if inside else PurePosixPath(f"{parent_id}_{p.stem}")
    x0, y0, x1, y1 = window
    return str(PurePosixPath("tiles") / f"{base}_{x0}_{y0}_{x1}_{y1}.png")


def tile_coco(coco: dict, params: TilingParams) -> dict:
    """COCO dict of the tiles of a COCO dict (SAHI's slice_coco without the pixels), filtered by `params`.

    Tile images carry `parent_id`, `parent_file_name`, `offset` [x0, y0], `tile_index`, the tile's
    height/width, a `file_name` under tiles/ (see write_tile_dataset) and the parent's other fields
    (patient_id, source, ...). Annotations keep their category ids and fields, with `bbox` clipped to
    the tile in its coordinates, `area` its w*h, `parent_annotation_id`, and no segmentation (it is in
    the parent's coordinates). Tile ids are those tile_records gives the records of the same COCO."""
    names = class_names(coco)
    keep_idx, minority_idx = params.class_indices(names)
    cat_index = category_id_to_index(coco)
    by_image: dict = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images = coco["images"]
    anns_of = [by_image.get(im["id"], []) for im in images]
    boxes = []
    for anns in anns_of:
        b = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        boxes.append(b)
    classes = [np.asarray([cat_index[a["category_id"]] for a in anns], dtype=np.int64) for anns in anns_of]
    plan = _plan(
        [(int(im["height"]), int(im["width"])) for im in images], boxes, classes, params, keep_idx, minority_idx
    )
    out_images: list[dict] = []
    out_anns: list[dict] = []
    for t in plan:
        im = images[t.parent]
        x0, y0, x1, y1 = t.window
        out_images.append(
            {
                **{k: v for k, v in im.items() if k not in ("id", "file_name", "height", "width")},
                "id": t.tile_id,
                "file_name": _tile_file_name(im["file_name"], im["id"], t.window),
                "height": y1 - y0,
                "width": x1 - x0,
                "parent_id": im["id"],
                "parent_file_name": im["file_name"],
                "offset": [x0, y0],
                "tile_index": t.index,
            }
        )
        for j, (bx0, by0, bx1, by1) in zip(t.ann, t.boxes.tolist()):
            a = anns_of[t.parent][j]
            out_anns.append(
                {
                    **{k: v for k, v in a.items() if k not in ("segmentation", "id", "image_id", "bbox", "area")},
                    "id": len(out_anns) + 1,
                    "image_id": t.tile_id,
                    "bbox": [bx0, by0, bx1 - bx0, by1 - by0],
                    "area": (bx1 - bx0) * (by1 - by0),
                    "parent_annotation_id": a.get("id"),
                }
            )
    info = dict(coco.get("info", {}))
    info["tiling"] = {"size": params.size, "overlap": params.overlap, "min_visible": params.min_visible}
    out = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories", "info")}
    out.update({"info": info, "images": out_images, "annotations": out_anns, "categories": coco["categories"]})
    return out


def write_tile_dataset(
    coco_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: TilingParams,
    *,
    image_root: str | os.PathLike = "",
    dicom_kwargs: dict | None = None,
    coco: dict | None = None,
) -> Path:
    """Cut the images of a COCO file into tile PNGs (lossless; 16-bit stays 16-bit) under out_dir/tiles/
    and write their COCO as out_dir/<name of coco_path>; returns that path.

    Parent images are resolved as meddet.data.coco does (`image_root`, else the COCO's folder) and read
    with meddet.io.read_image (`dicom_kwargs` for DICOM files); tile images record the resolved parent
    path as `parent_file_name`. Refuses (ConfigError) to overwrite an existing output COCO. `coco`: the
    content of `coco_path` when the caller already loaded it (the file is then not read again)."""
    out_dir = Path(out_dir)
    out_json = out_dir / Path(coco_path).name
    if out_json.exists():
        raise ConfigError(f"{out_json}: a tile COCO is already there; remove it or choose another output folder")
    if coco is None:
        coco = load_coco(coco_path)
    tiled = tile_coco(coco, params)
    parents = {im["id"]: im for im in coco["images"]}
    by_parent: dict = {}
    for tim in tiled["images"]:
        by_parent.setdefault(tim["parent_id"], []).append(tim)
    for pid, tims in tqdm(by_parent.items(), desc="tiling", unit="image", mininterval=2, dynamic_ncols=True):
        im = parents[pid]
        src = resolve_image_path(im["file_name"], coco_path, image_root)
        pixels = read_image(src, **(dicom_kwargs or {}))
        if pixels.shape[:2] != (int(im["height"]), int(im["width"])):
            raise DataError(
                f"{src}: image is {pixels.shape[1]}x{pixels.shape[0]} but {coco_path} says {im['width']}x{im['height']}"
            )
        for tim in tims:
            x0, y0 = tim["offset"]
            write_png(out_dir / tim["file_name"], pixels[y0 : y0 + tim["height"], x0 : x0 + tim["width"]])
            tim["parent_file_name"] = str(src.resolve())
    save_json_atomic(tiled, out_json)
    logger.info("Wrote %d tiles of %d images to %s", len(tiled["images"]), len(by_parent), out_json)
    return out_json


def _offset_of(entry: dict, where: str) -> tuple[object, float, float]:
    if "tile" in entry:  # a tile record
        t = entry["tile"]
        return t["parent_id"], float(t["x0"]), float(t["y0"])
    if "parent_id" not in entry or "offset" not in entry:
        raise DataError(f"{where}: image {entry.get('id')!r} has no parent_id/offset (expected a tile image)")
    return entry["parent_id"], float(entry["offset"][0]), float(entry["offset"][1])


def tiles_to_image(results: list[dict], tile_coco_images: Sequence[dict]) -> list[dict]:
    """COCO results on tile images mapped to their parent images: image_id becomes the parent's id and
    the box moves by the tile's offset. No merging: overlapping tiles give duplicate detections.

    `tile_coco_images` are the images of a tile COCO (or tile records, which carry `tile`)."""
    where = "tile COCO images"
    lookup = {}
    for e in tile_coco_images:
        lookup[e["image_id"] if "tile" in e else e["id"]] = _offset_of(e, where)
    out = []
    for i, r in enumerate(results):
        if r["image_id"] not in lookup:
            raise DataError(
                f"results[{i}]: image_id {r['image_id']!r} is not a tile of the {len(lookup)} tile images given"
            )
        pid, ox, oy = lookup[r["image_id"]]
        x, y, w, h = (float(v) for v in r["bbox"])
        out.append({**r, "image_id": pid, "bbox": [x + ox, y + oy, w, h]})
    return out
