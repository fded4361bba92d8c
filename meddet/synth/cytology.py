"""Synthetic cytology slides: large bright-field RGB images with thousands of small cells and rare
multi-cell clusters, written as PNGs plus patient-level COCO splits.

What is drawn (per image):

- a light background lit by a tinted lamp, with a faint uneven stain haze (low-frequency optical
  density), mild optical blur and sensor noise;
- single cells: ellipses 8-20 px across (random orientation and aspect) whose cytoplasm takes a
  pink (eosin-like) to purple stain and whose smaller, textured nucleus takes a dark blue-purple
  (haematoxylin-like) one; cells are laid out on a jittered grid weighted by a smooth density
  field, so they clump and thin out like a smear, may touch but never overlap by more than ~3 px;
- clusters: 3-12 overlapping cells grown around each other (larger, darker nuclei), 30-100 px
  across, about ``cluster_ratio`` clusters per single cell and at least one per image.

Colours come from a Beer-Lambert model: every stain adds optical density (OD) and a pixel is
``lamp * exp(-OD)``, so overlapping cells darken where they overlap as on a real slide. Stain
vectors, stain strengths, lamp colour and haze vary between patients (slides) and a little between
the images of one patient, giving the per-slide colour variation that colour augmentation and
stain normalisation have to cope with.

Annotations: one ``cell`` box per single cell and one ``cluster`` box per cluster (its cells are not
annotated as cells), each tight to the drawn pixels (``[x, y, w, h]`` in whole pixels, the extent of
the pixels drawn before the blur). Everything is a pure function of ``seed``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.special import ndtri
from tqdm import tqdm

from meddet import __version__
from meddet.data.coco import save_json_atomic
from meddet.data.splits import check_fractions, split_by_patient, subset_coco
from meddet.errors import ConfigError
from meddet.io.image import write_png

logger = logging.getLogger(__name__)

__all__ = ["CYTOLOGY_CATEGORIES", "make_cytology", "render_cytology"]

CYTOLOGY_CATEGORIES = [{"id": 1, "name": "cell"}, {"id": 2, "name": "cluster"}]

# Single cells: long-axis diameter range (px) and short/long axis ratio range.
_CELL_DIAMETER = (8.0, 20.0)
_CELL_ASPECT = (0.7, 1.0)
# Clusters: member count range (inclusive) and the accepted range of the box's longer side (px).
_CLUSTER_CELLS = (3, 12)
_CLUSTER_SIDE = (30, 100)
_CLUSTER_CANVAS = 192  # local canvas a cluster is grown on before it is placed
_CLUSTER_GAP = 4  # px kept free around a cluster's box (no single cell, no other cluster)
_TOUCH = 1.5  # px a cell may reach beyond its grid site: neighbours touch, overlap at most 2 * _TOUCH
_MIN_SITE = int(_CELL_DIAMETER[1]) + 2  # the densest grid: one site per largest cell plus 2 px
_MIN_SIDE = 128
_MAX_CLUSTER_COVER = 0.3  # at most this fraction of the image under cluster boxes
_STRIP = 256  # rows composed at a time (keeps float temporaries small on 4096² images)

# Stain optical-density directions (RGB), after Ruifrok & Johnston's H&E vectors.
_HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def make_cytology(
    out_dir: str | os.PathLike,
    n_images: int = 6,
    size: int | tuple[int, int] = 4096,
    cells_per_image: int = 2000,
    cluster_ratio: float = 0.01,
    n_patients: int | None = None,
    splits: dict[str, float] | None = {"train": 0.6, "val": 0.2, "test": 0.2},  # noqa: B006 (never mutated)
    seed: int = 0,
    *,
    progress: bool = False,
) -> dict[str, Path]:
    """Write a synthetic cytology dataset: ``out_dir/images/cyto_NNNN.png`` (RGB, 8-bit) and
    ``out_dir/coco/all.json`` plus one ``out_dir/coco/<split>.json`` per split.

    Categories are ``cell`` (id 1) and ``cluster`` (id 2). Each image record carries
    ``patient_id`` (the slide's patient; images are dealt to patients in contiguous blocks),
    ``source`` and its ``file_name`` relative to the JSON's folder (``../images/...``), so the
    JSONs work without ``DATASETS.IMAGE_ROOT``.

    Args:
        out_dir: output folder (created; existing files of the same names are overwritten).
        n_images: number of images (slides' fields of view).
        size: image side in pixels, or ``(height, width)``; at least 128.
        cells_per_image: single cells (``cell`` boxes) per image.
        cluster_ratio: clusters per single cell (0.01: one cluster per 100 cells); the number of
            clusters per image is ``round(cells_per_image * cluster_ratio)``, at least 1 when
            ``cluster_ratio > 0``.
        n_patients: patients the images belong to (default ``n_images // 2``, at least 1); at
            most ``n_images``. Images of one patient share the slide's stain and lamp, with small
            per-image changes.
        splits: ``{split name: fraction of images}`` (fractions >= 0 summing to 1), assigned by
            patient with :func:`meddet.data.splits.split_by_patient` (``method="balanced"``) and ``seed``; ``None``
            writes ``all.json`` only.
        seed: the only source of randomness: the same arguments give byte-identical files.
        progress: show a tqdm progress bar over the images.

    Returns:
        ``{split name: COCO JSON path}`` plus ``"all"``.

    Raises:
        ConfigError: naming the argument, when an argument has the wrong type or value, or when
            the cells and clusters asked for do not fit in the image.
    """
    height, width = _check_size(size)
    n_images = _check_int("n_images", n_images, 1)
    cells_per_image = _check_int("cells_per_image", cells_per_image, 0)
    seed = _check_int("seed", seed, 0)
    if n_patients is None:
        n_patients = max(1, n_images // 2)
    n_patients = _check_int("n_patients", n_patients, 1)
    if n_patients > n_images:
        raise ConfigError(
            f"n_patients: expected at most n_images ({n_images}) so every patient has an image, found {n_patients}"
        )
    n_clusters = _n_clusters(cells_per_image, cluster_ratio)
    _check_capacity(height, width, cells_per_image, n_clusters)
    split_names, fractions = _check_splits(splits)

    out = Path(out_dir)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    patient_of = [i * n_patients // n_images for i in range(n_images)]
    slides = {p: _slide_style(np.random.default_rng([seed, 1, p])) for p in sorted(set(patient_of))}
    for i in tqdm(range(n_images), desc="synthetic cytology", unit="image", disable=not progress):
        rng = np.random.default_rng([seed, 0, i])
        rgb, boxes, classes = _render(rng, height, width, cells_per_image, n_clusters, slides[patient_of[i]])
        name = f"cyto_{i:04d}.png"
        write_png(out / "images" / name, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        image_id = i + 1
        images.append(
            {
                "id": image_id,
                "file_name": f"../images/{name}",
                "height": height,
                "width": width,
                "patient_id": f"CYTO_P{patient_of[i]:04d}",
                "source": f"meddet.synth.cytology(seed={seed}, image={i})",
            }
        )
        for (x0, y0, x1, y1), c in zip(boxes.tolist(), classes.tolist()):
            w, h = x1 - x0, y1 - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": c,
                    "bbox": [x0, y0, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        logger.debug("%s: %d cells, %d clusters", name, int((classes == 1).sum()), int((classes == 2).sum()))

    info: dict[str, Any] = {
        "description": "meddet synthetic cytology",
        "meddet_version": __version__,
        "generator": {
            "seed": seed,
            "cells_per_image": cells_per_image,
            "clusters_per_image": n_clusters,
            "height": height,
            "width": width,
        },
    }
    coco = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CYTOLOGY_CATEGORIES],
    }
    paths: dict[str, Path] = {}
    if split_names:
        # a fixed set of patients: the closest shares (converters use the hash split, stable when images drop out)
        assignment = split_by_patient(images, fractions, seed, names=split_names, method="balanced")
        split_info = {
            "method": "patient",
            "assignment": "balanced",
            "names": list(split_names),
            "fractions": list(fractions),
            "seed": seed,
        }
        info["split"] = split_info
        for name in split_names:
            sub = subset_coco(coco, assignment[name])
            sub["info"] = {**info, "split": {**split_info, "name": name}}
            paths[name] = out / "coco" / f"{name}.json"
            save_json_atomic(sub, paths[name])
    paths["all"] = out / "coco" / "all.json"
    save_json_atomic(coco, paths["all"])
    logger.info(
        "synthetic cytology: %d images of %dx%d, %d patients, %d boxes in %s",
        n_images,
        width,
        height,
        n_patients,
        len(annotations),
        out,
    )
    return paths


def render_cytology(
    size: int | tuple[int, int] = 1024,
    cells: int = 500,
    clusters: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one synthetic cytology image in memory (no files).

    Returns ``(image, boxes, classes)``: an ``(H, W, 3)`` RGB ``uint8`` image, ``(N, 4)`` int64
    boxes ``[x0, y0, x1, y1]`` (exclusive ends, tight to the drawn pixels) in raster order and
    ``(N,)`` category ids (1 = cell, 2 = cluster). Raises ConfigError naming the argument.
    """
    height, width = _check_size(size)
    cells = _check_int("cells", cells, 0)
    clusters = _check_int("clusters", clusters, 0)
    seed = _check_int("seed", seed, 0)
    _check_capacity(height, width, cells, clusters)
    rng = np.random.default_rng([seed, 0, 0])
    return _render(rng, height, width, cells, clusters, _slide_style(np.random.default_rng([seed, 1, 0])))


# ------------------------------------------------------------------------------ argument checks
def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{name}: expected an integer >= {minimum}, found {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, found {value}")
    return int(value)


def _check_size(size: Any) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ConfigError(f"size: expected an int or (height, width), found {size!r}")
        return _check_int("size (height)", size[0], _MIN_SIDE), _check_int("size (width)", size[1], _MIN_SIDE)
    side = _check_int("size", size, _MIN_SIDE)
    return side, side


def _n_clusters(cells: int, ratio: Any) -> int:
    if isinstance(ratio, bool) or not isinstance(ratio, Real) or not 0.0 <= float(ratio) <= 1.0:
        raise ConfigError(f"cluster_ratio: expected a number in [0, 1] (clusters per single cell), found {ratio!r}")
    ratio = float(ratio)
    return 0 if ratio == 0 else max(1, round(cells * ratio))


def _check_capacity(height: int, width: int, cells: int, clusters: int) -> None:
    """Refuse requests that cannot be laid out (before anything is drawn or written)."""
    # One cluster always fits (the smallest image is larger than a cluster box and its gap).
    most = max(1, int(_MAX_CLUSTER_COVER * height * width // (_CLUSTER_SIDE[1] + 2 * _CLUSTER_GAP) ** 2))
    if clusters > most:
        raise ConfigError(
            f"cluster_ratio: {clusters} clusters of up to {_CLUSTER_SIDE[1]} px do not fit in a "
            f"{width}x{height} image (at most {most}); lower cluster_ratio or cells_per_image"
        )
    per_dim = math.ceil((_CLUSTER_SIDE[1] + 2 * _CLUSTER_GAP) / _MIN_SITE) + 1
    capacity = (height // _MIN_SITE) * (width // _MIN_SITE) - clusters * per_dim**2
    if cells > max(capacity, 0):
        raise ConfigError(
            f"cells_per_image: {cells} cells of up to {int(_CELL_DIAMETER[1])} px do not fit beside "
            f"{clusters} cluster(s) in a {width}x{height} image (at most {max(capacity, 0)})"
        )


def _check_splits(splits: Any) -> tuple[list[str], tuple[float, ...]]:
    if splits is None:
        return [], ()
    if not isinstance(splits, dict) or not splits:
        raise ConfigError(f"splits: expected None or a non-empty {{name: fraction}} dict, found {splits!r}")
    names = list(splits)
    for name in names:
        if not isinstance(name, str) or not _SPLIT_NAME.match(name) or name == "all":
            raise ConfigError(f"splits: split names must be file-name-safe and not 'all', found {name!r}")
    try:
        fractions = check_fractions([float(v) for v in splits.values()], names)
    except (TypeError, ValueError):
        raise ConfigError(f"splits: fractions must be numbers, found {splits!r}") from None
    except ConfigError as e:
        raise ConfigError(f"splits: {e}") from None
    return names, fractions


# ------------------------------------------------------------------------------ rendering
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _slide_style(rng: np.random.Generator) -> dict[str, Any]:
    """Stain and lamp of one slide (patient): the per-slide colour variation."""
    hema = _unit(np.clip(_HEMATOXYLIN + rng.normal(0, 0.07, 3), 0.05, None))
    eosin = _unit(np.clip(_EOSIN + rng.normal(0, 0.07, 3), 0.02, None))
    return {
        "hema": hema,
        "eosin": eosin,
        # Cytoplasm stain: eosin with some haematoxylin (pink → mauve → purple between slides).
        "cyto_mix": rng.uniform(0.0, 0.45),
        "hema_strength": rng.uniform(0.75, 1.3),
        "eosin_strength": rng.uniform(0.6, 1.5),
        "lamp": rng.uniform(0.84, 0.97) * 255.0 * (1.0 + rng.normal(0, 0.03, 3)),
        "haze": rng.uniform(0.0, 0.1),
    }


def _image_style(rng: np.random.Generator, slide: dict[str, Any]) -> dict[str, Any]:
    """One image of a slide: the slide's stain and lamp with small changes, plus blur and noise."""
    return {
        "hema": _unit(np.clip(slide["hema"] + rng.normal(0, 0.02, 3), 0.02, None)),
        "eosin": _unit(np.clip(slide["eosin"] + rng.normal(0, 0.02, 3), 0.02, None)),
        "cyto_mix": float(np.clip(slide["cyto_mix"] + rng.normal(0, 0.04), 0.0, 0.6)),
        "hema_strength": slide["hema_strength"] * rng.uniform(0.93, 1.07),
        "eosin_strength": slide["eosin_strength"] * rng.uniform(0.9, 1.1),
        "lamp": np.clip(slide["lamp"] * rng.uniform(0.97, 1.03) * (1.0 + rng.normal(0, 0.01, 3)), 150.0, 255.0),
        "haze": slide["haze"] * rng.uniform(0.7, 1.3),
        "blur": rng.uniform(0.5, 0.9),
        "noise": rng.uniform(1.0, 3.0),
    }


def _render(
    rng: np.random.Generator, height: int, width: int, n_cells: int, n_clusters: int, slide: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image; returns (RGB uint8 image, [x0, y0, x1, y1] boxes, category ids), boxes in raster order."""
    style = _image_style(rng, slide)
    od = _background_od(rng, height, width, style)
    cluster_boxes = _place_clusters(rng, od, n_clusters, style)
    cell_boxes = _draw_single_cells(rng, od, n_cells, cluster_boxes, style)
    boxes = np.concatenate([cell_boxes, cluster_boxes]).reshape(-1, 4).astype(np.int64)
    classes = np.concatenate([np.full(len(cell_boxes), 1), np.full(len(cluster_boxes), 2)]).astype(np.int64)
    order = np.lexsort((boxes[:, 0], boxes[:, 1]))
    return _compose(rng, od, style), boxes[order], classes[order]


def _background_od(rng: np.random.Generator, height: int, width: int, style: dict[str, Any]) -> np.ndarray:
    """The OD map, started with the smooth stain haze and uneven illumination of the background."""
    coarse = cv2.resize(rng.random((4, 4), dtype=np.float32), (16, 16), interpolation=cv2.INTER_CUBIC)
    field = np.clip(coarse + 0.35 * rng.random((16, 16), dtype=np.float32), 0.0, None)
    haze = style["haze"] * ((1 - style["cyto_mix"]) * style["eosin"] + style["cyto_mix"] * style["hema"])
    shade = rng.uniform(0.0, 0.04)  # neutral density: the lamp's fall-off across the field
    low = field[..., None] * (haze + shade).astype(np.float32)
    # Cubic to 1/8 of the size, then linear (kinks every 8 px are invisible, and it is 3x faster).
    mid = cv2.resize(low, (max(16, width // 8), max(16, height // 8)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(mid, (width, height), interpolation=cv2.INTER_LINEAR)


def _draw_cell(
    od: np.ndarray,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    semi_axes: tuple[float, float],
    style: dict[str, Any],
    nucleus_scale: tuple[float, float] = (0.35, 0.55),
    nucleus_density: tuple[float, float] = (0.9, 1.3),
) -> tuple[int, int, int, int]:
    """Add one cell's optical density to ``od`` (in place); returns the drawn pixels' box [x0, y0, x1, y1)."""
    a, b = semi_axes
    angle = rng.uniform(0.0, 180.0)
    ox, oy = int(math.floor(cx - a)) - 2, int(math.floor(cy - a)) - 2
    n = int(math.ceil(2 * a)) + 5
    cyto = np.zeros((n, n), np.uint8)
    nuc = np.zeros((n, n), np.uint8)
    px, py = cx - ox, cy - oy
    cv2.ellipse(
        cyto, (round(px * 16), round(py * 16)), (round(a * 16), round(b * 16)), angle, 0, 360, 1, -1, cv2.LINE_8, 4
    )
    k = rng.uniform(*nucleus_scale)
    # The nucleus sits inside the cytoplasm, a little off centre.
    shift = (1 - k) * b * 0.5 * rng.uniform(0, 1)
    phi = rng.uniform(0, 2 * math.pi)
    nx, ny = px + shift * math.cos(phi), py + shift * math.sin(phi)
    nax = k * a * rng.uniform(0.85, 1.0)
    nby = k * b * rng.uniform(0.85, 1.0)
    cv2.ellipse(
        nuc,
        (round(nx * 16), round(ny * 16)),
        (max(1, round(nax * 16)), max(1, round(nby * 16))),
        angle + rng.uniform(-30, 30),
        0,
        360,
        1,
        -1,
        cv2.LINE_8,
        4,
    )
    cyto |= nuc
    ys, xs = np.nonzero(cyto)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    cyto, nuc = cyto[y0:y1, x0:x1], nuc[y0:y1, x0:x1]
    tex = rng.random((2, y1 - y0, x1 - x0), dtype=np.float32)
    mix = min(1.0, max(0.0, style["cyto_mix"] + rng.normal(0, 0.08)))
    cyto_vec = (1 - mix) * style["eosin"] + mix * style["hema"]
    cyto_vec *= rng.uniform(0.18, 0.4) * style["eosin_strength"] / math.sqrt(cyto_vec @ cyto_vec)
    nuc_vec = style["hema"] * (rng.uniform(*nucleus_density) * style["hema_strength"])
    cyto_od = cyto * (0.85 + 0.3 * tex[0])
    nuc_od = nuc * (0.7 + 0.6 * tex[1])  # chromatin texture
    patch = cyto_od[..., None] * cyto_vec.astype(np.float32) + nuc_od[..., None] * nuc_vec.astype(np.float32)
    od[oy + y0 : oy + y1, ox + x0 : ox + x1] += patch
    return ox + x0, oy + y0, ox + x1, oy + y1


def _cell_axes(rng: np.random.Generator, scale: float = 1.0) -> tuple[float, float]:
    a = rng.uniform(*_CELL_DIAMETER) / 2 * scale
    return a, a * rng.uniform(*_CELL_ASPECT)


def _grow_cluster(rng: np.random.Generator, style: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Grow a cluster on a local canvas until its box's longer side is in range; returns (OD canvas, box)."""
    c = _CLUSTER_CANVAS
    while True:  # about 94% of the attempts are accepted
        canvas = np.zeros((c, c, 3), np.float32)
        n = int(rng.integers(_CLUSTER_CELLS[0], _CLUSTER_CELLS[1] + 1))
        centres: list[tuple[float, float, float]] = []
        boxes = []
        for _ in range(n):
            a, b = _cell_axes(rng, scale=1.2)
            if centres:  # attach to a random member, overlapping it
                px, py, pa = centres[int(rng.integers(len(centres)))]
                dist = rng.uniform(0.5, 0.95) * (pa + a)
                phi = rng.uniform(0, 2 * math.pi)
                x, y = px + dist * math.cos(phi), py + dist * math.sin(phi)
            else:
                x = y = c / 2
            if not a + 3 <= x <= c - a - 3 or not a + 3 <= y <= c - a - 3:
                continue
            centres.append((x, y, a))
            boxes.append(_draw_cell(canvas, rng, x, y, (a, b), style, (0.45, 0.65), (1.1, 1.6)))
        bx = np.array(boxes)
        box = (int(bx[:, 0].min()), int(bx[:, 1].min()), int(bx[:, 2].max()), int(bx[:, 3].max()))
        sides = (box[2] - box[0], box[3] - box[1])
        if len(centres) >= _CLUSTER_CELLS[0] and _CLUSTER_SIDE[0] <= max(sides) <= _CLUSTER_SIDE[1]:
            return canvas, box


def _place_clusters(rng: np.random.Generator, od: np.ndarray, n: int, style: dict[str, Any]) -> np.ndarray:
    """Draw ``n`` clusters at random places, apart from each other; returns their boxes (n, 4)."""
    height, width = od.shape[:2]
    placed = np.zeros((0, 4), np.int64)
    for _ in range(n):
        canvas, (x0, y0, x1, y1) = _grow_cluster(rng, style)
        w, h = x1 - x0, y1 - y0
        g = _CLUSTER_GAP
        for _try in range(1000):
            tx = int(rng.integers(0, width - w + 1))
            ty = int(rng.integers(0, height - h + 1))
            clash = (
                (tx - g < placed[:, 2] + g)
                & (placed[:, 0] - g < tx + w + g)
                & (ty - g < placed[:, 3] + g)
                & (placed[:, 1] - g < ty + h + g)
            )
            if not clash.any():
                break
        else:
            raise ConfigError(
                f"cluster_ratio: could not place {n} clusters apart in a {width}x{height} image; "
                "lower cluster_ratio or cells_per_image"
            )
        od[ty : ty + h, tx : tx + w] += canvas[y0:y1, x0:x1]
        placed = np.vstack([placed, [[tx, ty, tx + w, ty + h]]])
    return placed


def _draw_single_cells(
    rng: np.random.Generator, od: np.ndarray, n: int, cluster_boxes: np.ndarray, style: dict[str, Any]
) -> np.ndarray:
    """Lay ``n`` single cells on a jittered grid (sites chosen by a smooth density field, none near a
    cluster) and draw them; returns their boxes (n, 4)."""
    height, width = od.shape[:2]
    if n == 0:
        return np.zeros((0, 4), np.int64)
    free_area = height * width - float(np.prod(cluster_boxes[:, 2:] - cluster_boxes[:, :2], axis=1).sum())
    spacing = max(_MIN_SITE, int(math.sqrt(free_area / (2.0 * n))))
    density = rng.random((4, 4), dtype=np.float32)
    while True:
        ny, nx = height // spacing, width // spacing
        oy, ox = (height - ny * spacing) // 2, (width - nx * spacing) // 2
        gy, gx = np.meshgrid(oy + spacing * np.arange(ny), ox + spacing * np.arange(nx), indexing="ij")
        sx, sy = gx.ravel(), gy.ravel()
        cb = cluster_boxes[None] + np.array([-_CLUSTER_GAP, -_CLUSTER_GAP, _CLUSTER_GAP, _CLUSTER_GAP])
        near = (
            (sx[:, None] < cb[..., 2])
            & (cb[..., 0] < sx[:, None] + spacing)
            & (sy[:, None] < cb[..., 3])
            & (cb[..., 1] < sy[:, None] + spacing)
        )
        free = ~near.any(axis=1)
        if free.sum() >= n or spacing == _MIN_SITE:
            break
        spacing -= 1
    # Weighted sampling without replacement (Efraimidis-Spirakis keys): denser where the field is high.
    weight = cv2.resize(density, (nx, ny), interpolation=cv2.INTER_CUBIC).ravel()
    keys = np.log(rng.random(sx.size)) / np.exp(2.5 * weight)
    keys[~free] = -np.inf
    chosen = np.sort(np.argpartition(-keys, n - 1)[:n])
    boxes = np.empty((n, 4), np.int64)
    for j, site in enumerate(chosen):
        a, b = _cell_axes(rng)
        lo_x, hi_x = max(sx[site] + a - _TOUCH, a + 0.5), min(sx[site] + spacing - a + _TOUCH, width - a - 1.5)
        lo_y, hi_y = max(sy[site] + a - _TOUCH, a + 0.5), min(sy[site] + spacing - a + _TOUCH, height - a - 1.5)
        boxes[j] = _draw_cell(od, rng, rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y), (a, b), style)
    return boxes


def _compose(rng: np.random.Generator, od: np.ndarray, style: dict[str, Any]) -> np.ndarray:
    """``lamp * exp(-OD)`` as RGB uint8, then optical blur and sensor noise.

    The noise is Gaussian with the image's sigma, drawn as uniform random bytes mapped through the
    Gaussian quantile function (the 8-bit output is integer anyway): four times faster than
    normal deviates on a 4096² image, and added with saturation in uint8.
    """
    lamp = tuple(float(v) for v in style["lamp"]) + (0.0,)
    out: np.ndarray = np.empty(od.shape, np.uint8)
    for r0 in range(0, od.shape[0], _STRIP):
        strip = od[r0 : r0 + _STRIP]  # a view: the OD map is consumed in place
        np.negative(strip, out=strip)
        cv2.exp(strip, dst=strip)
        cv2.multiply(strip, lamp, dst=strip)
        out[r0 : r0 + _STRIP] = cv2.convertScaleAbs(strip)  # rounds and saturates to 0..255
    cv2.GaussianBlur(out, (0, 0), style["blur"], dst=out)
    noise = np.rint(style["noise"] * ndtri((np.arange(256) + 0.5) / 256))
    up = np.clip(noise, 0, 255).astype(np.uint8).reshape(1, 256)
    down = np.clip(-noise, 0, 255).astype(np.uint8).reshape(1, 256)
    for r0 in range(0, out.shape[0], _STRIP):
        strip = out[r0 : r0 + _STRIP]
        draws = np.frombuffer(rng.bytes(strip.size), np.uint8).reshape(strip.shape)
        cv2.add(strip, cv2.LUT(draws, up), dst=strip)
        cv2.subtract(strip, cv2.LUT(draws, down), dst=strip)
    return out
