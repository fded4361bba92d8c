"""Drawing detections on images (annotated PNGs of predict, galleries of the evaluator)."""
from __future__ import annotations

import cv2
import numpy as np

# Distinct BGR colours (Okabe–Ito palette, colour-blind safe), cycled over classes.
PALETTE_BGR = [
    (0, 159, 230),   # orange
    (233, 180, 86),  # sky blue
    (115, 158, 0),   # bluish green
    (66, 228, 240),  # yellow
    (178, 114, 0),   # blue
    (0, 94, 213),    # vermillion
    (167, 121, 204), # reddish purple
    (255, 255, 255),
]


def class_color(index: int) -> tuple[int, int, int]:
    return PALETTE_BGR[int(index) % len(PALETTE_BGR)]


def to_display_bgr(image: np.ndarray) -> np.ndarray:
    """Any greyscale/colour uint8/uint16/float image → 8-bit BGR for drawing."""
    img = image
    if img.dtype == np.uint16:
        wide = img.astype(np.uint32)  # round(v / 257) in integers: the same values as float, less memory
        wide += 128
        wide //= 257
        img = wide.astype(np.uint8)
        del wide
    elif np.issubdtype(img.dtype, np.floating):
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    class_names: list[str],
    score_thresh: float = 0.0,
) -> np.ndarray:
    """Boxes in class colours with `name score` labels; line width and font scale follow the image size."""
    out = to_display_bgr(image).copy()
    h, w = out.shape[:2]
    thick = max(1, int(round(max(h, w) / 500)))
    font = max(0.4, max(h, w) / 1400)
    order = np.argsort(-np.asarray(scores))
    for i in order:
        s = float(scores[i])
        if s < score_thresh:
            continue
        c = int(classes[i])
        color = class_color(c)
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        label = f"{class_names[c] if c < len(class_names) else c} {s:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, max(1, thick - 1))
        ty = y1 - 3 if y1 - th - base - 3 >= 0 else y2 + th + 3
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + base - 1), color, -1)
        cv2.putText(out, label, (x1 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0),
                    max(1, thick - 1), cv2.LINE_AA)
    return out
