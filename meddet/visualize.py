"""Drawing detections on images (annotated PNGs of predict, galleries of the evaluator)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Distinct BGR colours (Okabe–Ito palette, colour-blind safe), cycled over classes.
PALETTE_BGR = [
    (0, 159, 230),  # orange
    (233, 180, 86),  # sky blue
    (115, 158, 0),  # bluish green
    (66, 228, 240),  # yellow
    (178, 114, 0),  # blue
    (0, 94, 213),  # vermillion
    (167, 121, 204),  # reddish purple
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


def label_style(width: int, height: int) -> dict[str, int]:
    """Label text height (``font_px``) and box line width (``line_width``) in image pixels for an image of
    ``width`` x ``height``: scaled to the image so a label stays readable when the image is shown at screen
    size (a 4500-pixel mammogram gets ~64-pixel labels). Twin: ``labelStyle`` in webapp/static/labels.js."""
    side = max(int(width), int(height))
    return {"font_px": max(12, (side + 35) // 70), "line_width": max(1, (side + 300) // 600)}


def _rint(v: float) -> int:
    """Round half up (Math.round in JavaScript), not Python's half-to-even."""
    return int(np.floor(float(v) + 0.5))


def _overlaps(a: list[int], b: list[int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def layout_labels(
    boxes: Sequence[Sequence[float]] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    sizes: Sequence[tuple[int, int]],
    width: int,
    height: int,
) -> list[tuple[int, list[int]]]:
    """Where each detection's label goes, and the order to draw: ``[(index, [x, y, w, h]), ...]`` from the
    lowest score to the highest, so the highest-scoring box and label are drawn last (on top).

    ``boxes``: xyxy; ``sizes``: ``(w, h)`` of each label in pixels (measured by the caller's font). The
    highest score is placed first, at the first of these spots that overlaps no label placed before it:
    above the box's top-left corner, above its top-right corner, below its bottom-left, below its
    bottom-right, inside its top-left, then further above / below in steps of one label height; every spot is
    kept inside the image. When none is free the first spot is used. Pure integer arithmetic, so the
    JavaScript twin (``layoutLabels`` in webapp/static/labels.js) gives the same rectangles."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    placed: list[list[int]] = []
    rects: dict[int, list[int]] = {}
    W, H = int(width), int(height)
    for i in order:
        x1, y1, x2, y2 = (_rint(v) for v in boxes[i])
        w, h = int(sizes[i][0]), int(sizes[i][1])
        spots = [(x1, y1 - h), (x2 - w, y1 - h), (x1, y2), (x2 - w, y2), (x1, y1)]
        for k in range(1, 9):
            spots += [(x1, y1 - h - k * h), (x1, y2 + k * h)]
        candidates = [[min(max(0, sx), max(0, W - w)), min(max(0, sy), max(0, H - h)), w, h] for sx, sy in spots]
        chosen = next((r for r in candidates if not any(_overlaps(r, p) for p in placed)), candidates[0])
        placed.append(chosen)
        rects[i] = chosen
    return [(i, rects[i]) for i in reversed(order)]


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    class_names: list[str],
    score_thresh: float = 0.0,
    box_colors: list[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Boxes in class colours (or ``box_colors``, one per box) with `name score` labels placed by
    :func:`layout_labels` (highest score on top, labels not overlapping each other), font and line width
    from :func:`label_style`. Used by the annotated PNGs of predict, the evaluator's galleries and the
    ``-c explain`` overlays."""
    out = to_display_bgr(image).copy()
    h, w = out.shape[:2]
    style = label_style(w, h)
    thick = style["line_width"]
    text_thick = max(1, thick - 1) if style["font_px"] < 40 else max(2, style["font_px"] // 16)
    font = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, style["font_px"], text_thick)
    keep = [i for i in range(len(scores)) if float(scores[i]) >= score_thresh]
    labels, sizes = [], []
    for i in keep:
        c = int(classes[i])
        labels.append(f"{class_names[c] if c < len(class_names) else c} {float(scores[i]):.2f}")
        (tw, th), base = cv2.getTextSize(labels[-1], cv2.FONT_HERSHEY_SIMPLEX, font, text_thick)
        sizes.append((tw + 4, th + base + 4))
    sel_boxes = [boxes[i] for i in keep]
    for j, (x, y, lw, lh) in layout_labels(sel_boxes, [scores[i] for i in keep], sizes, w, h):
        i = keep[j]
        color = box_colors[i] if box_colors is not None else class_color(int(classes[i]))
        x1, y1, x2, y2 = (_rint(v) for v in sel_boxes[j])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        cv2.rectangle(out, (x, y), (x + lw - 1, y + lh - 1), color, -1)
        (_, th), base = cv2.getTextSize(labels[j], cv2.FONT_HERSHEY_SIMPLEX, font, text_thick)
        cv2.putText(
            out, labels[j], (x + 2, y + 2 + th), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), text_thick, cv2.LINE_AA
        )
    return out
