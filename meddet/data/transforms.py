"""Augmentation (albumentations, boxes transformed with the image) and shortest-edge resizing.

Every random choice is drawn from a seed given per sample, so a run, and a resumed run, sees the
same augmented images in the same order.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# albumentations asks PyPI for a newer version when imported (an HTTPS request with a 2 s timeout) unless this is
# set: meddet runs on machines that must not reach the network, so the check is off unless the user asked for it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np

from meddet.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from meddet.config import CfgNode

_FLIPS = {"horizontal", "vertical", "both", "none"}


def build_augmentation(cfg: CfgNode) -> A.Compose | None:
    """Training augmentation from INPUT.RANDOM_FLIP and the AUG section; None when nothing is enabled."""
    if not cfg.AUG.ENABLED:
        return None
    flip = str(cfg.INPUT.RANDOM_FLIP).lower()
    if flip not in _FLIPS:
        raise ConfigError(f"INPUT.RANDOM_FLIP: expected one of {sorted(_FLIPS)}, found {cfg.INPUT.RANDOM_FLIP!r}")
    ops: list = []
    if flip in ("horizontal", "both") and cfg.AUG.FLIP_PROB > 0:
        ops.append(A.HorizontalFlip(p=cfg.AUG.FLIP_PROB))
    if flip in ("vertical", "both") and cfg.AUG.FLIP_PROB > 0:
        ops.append(A.VerticalFlip(p=cfg.AUG.FLIP_PROB))
    if cfg.AUG.ROT90_PROB > 0:
        ops.append(A.RandomRotate90(p=cfg.AUG.ROT90_PROB))
    if cfg.AUG.BRIGHTNESS > 0 or cfg.AUG.CONTRAST > 0:
        ops.append(
            A.RandomBrightnessContrast(
                brightness_limit=float(cfg.AUG.BRIGHTNESS), contrast_limit=float(cfg.AUG.CONTRAST), p=cfg.AUG.PROB
            )
        )
    g_lo, g_hi = (float(v) for v in cfg.AUG.GAMMA)
    if not 0 < g_lo <= g_hi:
        raise ConfigError(f"AUG.GAMMA: expected (low, high) with 0 < low <= high, found {tuple(cfg.AUG.GAMMA)}")
    if (g_lo, g_hi) != (1.0, 1.0):
        ops.append(A.RandomGamma(gamma_limit=(g_lo * 100, g_hi * 100), p=cfg.AUG.PROB))
    if not ops:
        return None
    return A.Compose(
        ops,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["classes"], clip=True, min_area=1.0),
    )


def apply_augmentation(
    aug: A.Compose, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply `aug` to a float32 image in [0, 1] (HxW or HxWxC) and its XYXY boxes, seeded."""
    aug.set_random_seed(int(seed) % (2**32))
    out = aug(image=image, bboxes=boxes.reshape(-1, 4), classes=classes)
    img = np.clip(out["image"], 0.0, 1.0).astype(np.float32, copy=False)
    b = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    c = np.asarray(out["classes"], dtype=np.int64).reshape(-1)
    return img, b, c


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Target (h, w) of detectron2's ResizeShortestEdge: shortest edge to `short`, longest at most `max_size`."""
    scale = short / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return int(round(h * scale)), int(round(w * scale))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_AREA if h < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float image → float32 HxWx3 in [0, 1], colour order BGR (greyscale → 3 equal channels)."""
    if image.dtype == np.uint8:
        out = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        out = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        out = image.astype(np.float32, copy=False)
    else:
        raise ValueError(f"unsupported image dtype {image.dtype}; expected uint8, uint16 or float")
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif out.ndim == 3 and out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.ndim == 3 and out.shape[2] == 4:
        out = out[:, :, :3]
    elif not (out.ndim == 3 and out.shape[2] == 3):
        raise ValueError(f"unsupported image shape {image.shape}; expected HxW or HxWx3")
    return out


def to_model_tensor(image_unit_bgr: np.ndarray, fmt: str) -> torch.Tensor:
    """float32 HxWx3 BGR in [0, 1] → CHW float tensor on the 0..255 scale in `fmt` channel order."""
    import torch

    fmt = fmt.upper()
    if fmt == "RGB":
        image_unit_bgr = image_unit_bgr[:, :, ::-1]
    elif fmt != "BGR":
        raise ConfigError(f"INPUT.FORMAT: expected 'BGR' or 'RGB', found {fmt!r}")
    arr = np.ascontiguousarray(image_unit_bgr.transpose(2, 0, 1)) * 255.0
    return torch.from_numpy(arr)


def prepare_image(image: np.ndarray, cfg: CfgNode) -> dict:
    """One image (HxW or HxWxC; uint8, uint16 or float in [0, 1]) as the model's test-time input dict:
    shortest edge resized to INPUT.MIN_SIZE_TEST (longest at most INPUT.MAX_SIZE_TEST), INPUT.FORMAT
    channel order; "height"/"width" are the input's own size, so detections come back in its pixels."""
    h, w = image.shape[:2]
    nh, nw = shortest_edge_size(h, w, int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST))
    if (
        nh < h
        and image.dtype in (np.uint8, np.uint16)
        and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)))
    ):
        # one float32 channel at a time, resized before the next is made (the same values as resizing the
        # full float image, which would cost 12 bytes a pixel: a full-size 8900x8900 float copy is 3.8 GB)
        planes = [image] if image.ndim == 2 else [image[:, :, c] for c in range(min(3, image.shape[2]))]
        small = []
        for plane in planes:
            one = plane.astype(np.float32)
            one /= 255.0 if image.dtype == np.uint8 else 65535.0
            small.append(resize(one, (nh, nw)))
            del one
        img = to_unit_float(small[0] if len(small) == 1 else np.dstack(small))
    else:
        img = resize(to_unit_float(image), (nh, nw))
    return {"image": to_model_tensor(img, cfg.INPUT.FORMAT), "height": h, "width": w}
