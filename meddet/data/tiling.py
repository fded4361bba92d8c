"""Tiling of large images: tile windows, boxes clipped to tiles, tile records and their way back.

Windows follow SAHI's slicing: a regular grid with the given overlap whose last row/column is shifted
back to end exactly at the image edge, so every pixel is covered and no tile is padded.
"""
from __future__ import annotations

import logging

import numpy as np

from meddet.errors import ConfigError

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
    th, tw = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
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
