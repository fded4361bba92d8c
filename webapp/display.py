"""Lean transfer for the web page: a display image sized for the screen, full-resolution crops on demand.

The page never receives the full-resolution image. With ``display=1`` a prediction answers with a JPEG
(or WebP) of at most `max_side` pixels on the longer side (2048 by default, or what the page asks for
its screen) and the boxes stay in the original image's pixels. For zooming, the decoded image is kept
in memory only (:class:`ImageStore`: never written to disk, at most `max_items` images and `max_bytes`
bytes, each dropped `ttl_s` seconds after its upload) under an unguessable id; ``GET
/api/v1/images/<id>/crop?x=&y=&w=&h=&max_side=`` answers one region of it, downscaled to what the page
shows. An expired id answers 404: the page asks for the file again.
"""

from __future__ import annotations

import base64
import math
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

import cv2
import numpy as np

# JPEG is the default: WebP is ~30% smaller but ~25 times slower to encode with OpenCV (270 ms for 2048 px)
FORMATS = {
    "jpeg": (".jpg", "image/jpeg", cv2.IMWRITE_JPEG_QUALITY),
    "webp": (".webp", "image/webp", cv2.IMWRITE_WEBP_QUALITY),
}
DEFAULT_MAX_SIDE = 2048
MAX_CROP_SIDE = 4096


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An 8-bit copy of a greyscale or BGR image (uint16: the high byte; float: [0, 1] scaled)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    return (np.clip(image.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def encode(image: np.ndarray, max_side: int, fmt: str = "jpeg", quality: int = 85) -> tuple[bytes, int, int]:
    """`image` (any part of an uploaded image) shrunk to at most `max_side` pixels on its longer side and
    encoded as `fmt`: (bytes, width, height of the encoded picture)."""
    ext, _, flag = FORMATS[fmt]
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # shrink before the 8-bit conversion (averaging 16-bit values keeps the detail of the bright tissue);
        # first by a whole factor (OpenCV's fast path: half the time for a 4500 x 2800 mammogram), then the rest
        k = int(1 / scale)
        if k >= 2 and w // k >= size[0] and h // k >= size[1]:
            image = cv2.resize(image[: h // k * k, : w // k * k], (w // k, h // k), interpolation=cv2.INTER_AREA)
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    image = to_uint8(image)
    ok, buf = cv2.imencode(ext, image, [flag, int(quality)])
    if not ok:
        raise ValueError(f"the image could not be encoded as {fmt}")
    return buf.tobytes(), int(image.shape[1]), int(image.shape[0])


def display_entry(
    image: np.ndarray, max_side: int = DEFAULT_MAX_SIDE, fmt: str = "jpeg", image_id: str | None = None
) -> dict[str, Any]:
    """The response's ``image.display``: a data URL of the display picture, its size, the scale from
    original to display pixels, and the id under which crops can be asked (None: not kept)."""
    data, w, h = encode(image, max_side, fmt)
    mime = FORMATS[fmt][1]
    return {
        "url": f"data:{mime};base64," + base64.b64encode(data).decode("ascii"),
        "format": fmt,
        "width": w,
        "height": h,
        "scale": round(w / image.shape[1], 6),
        "bytes": len(data),
        "id": image_id,
    }


class ImageStore:
    """Decoded uploads kept in memory only, for crops: bounded in count, bytes and age (oldest dropped
    first). Thread-safe; ids are unguessable (128 random bits)."""

    def __init__(self, max_items: int = 16, max_bytes: int = 512 * 1024 * 1024, ttl_s: float = 600.0):
        self.max_items = max(0, int(max_items))
        self.max_bytes = int(max_bytes)
        self.ttl_s = float(ttl_s)
        self._items: OrderedDict[str, tuple[float, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._items and next(iter(self._items.values()))[0] + self.ttl_s < now:
            self._items.popitem(last=False)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for _, a in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            self._expire(time.monotonic())
            return len(self._items)

    def put(self, image: np.ndarray) -> str | None:
        """Keep `image` and return its id; None when the store is off or the image alone is over the limit."""
        if self.max_items == 0 or image.nbytes > self.max_bytes or self.ttl_s <= 0:
            return None
        key = secrets.token_urlsafe(16)
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            self._items[key] = (now, image)
            total = sum(a.nbytes for _, a in self._items.values())
            while len(self._items) > self.max_items or total > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                total -= dropped.nbytes
        return key

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            self._expire(time.monotonic())
            item = self._items.get(key)
        return None if item is None else item[1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def crop_region(shape: tuple[int, ...], x: float, y: float, w: float, h: float) -> tuple[int, int, int, int]:
    """The region (x0, y0, x1, y1) in whole pixels covering [x, x + w] x [y, y + h], clipped to the image;
    ValueError when it lies outside or is empty."""
    values = (x, y, w, h)
    if not all(math.isfinite(v) for v in values) or w <= 0 or h <= 0:
        raise ValueError(f"expected a finite region with w and h > 0, found x={x}, y={y}, w={w}, h={h}")
    H, W = shape[:2]
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(W, math.ceil(x + w)), min(H, math.ceil(y + h))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"the region x={x}, y={y}, w={w}, h={h} lies outside the {W}x{H} image")
    return x0, y0, x1, y1
