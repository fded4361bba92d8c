"""Readable annotations: one label placement (meddet.visualize.layout_labels) shared by the annotated PNGs
and the explain overlays, with an exact JavaScript twin for the web canvas (webapp/static/labels.js)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import REPO


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_highest_score_label_stays_readable_when_boxes_overlap():
    """Two overlapping boxes (0.76 and 0.63, different classes): the pixels of the 0.76 label are exactly
    those drawn when it is alone (nothing of the 0.63 one covers it), and the labels do not overlap."""
    from meddet.visualize import draw_detections, label_style, layout_labels

    img = np.full((300, 400), 60, np.uint8)
    boxes = np.array([[100, 100, 220, 200], [110, 104, 230, 210]], np.float32)
    scores, classes = np.array([0.76, 0.63]), np.array([0, 1])
    both = draw_detections(img, boxes, scores, classes, ["mass_high", "calcification"])
    alone = draw_detections(img, boxes[:1], scores[:1], classes[:1], ["mass_high", "calcification"])
    # where the top label goes (its size measured as draw_detections does)
    import cv2

    style = label_style(400, 300)
    thick = max(1, style["line_width"] - 1)
    font = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, style["font_px"], thick)
    sizes = []
    for name, s in (("mass_high", 0.76), ("calcification", 0.63)):
        (tw, th), base = cv2.getTextSize(f"{name} {s:.2f}", cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        sizes.append((tw + 4, th + base + 4))
    placed = dict(layout_labels(boxes, scores, sizes, 400, 300))
    assert [i for i, _ in layout_labels(boxes, scores, sizes, 400, 300)] == [1, 0]  # highest drawn last
    assert not _overlap(placed[0], placed[1])
    x, y, w, h = placed[0]
    np.testing.assert_array_equal(both[y : y + h, x : x + w], alone[y : y + h, x : x + w])
    # the label carries text (dark pixels on the class colour), i.e. it is readable
    patch = both[y : y + h, x : x + w].astype(int)
    assert (patch.sum(axis=2) < 100).sum() > 0.05 * w * h


def test_label_size_follows_the_image_size():
    from meddet.visualize import label_style

    small, big = label_style(400, 300), label_style(2800, 4500)
    assert small["font_px"] == 12 and big["font_px"] >= 60 and big["line_width"] >= 7


CASES = [
    (
        [[10, 10, 50, 50], [12, 14, 60, 58], [200, 5, 230, 40]],
        [0.63, 0.76, 0.5],
        [[60, 16], [70, 16], [40, 16]],
        240,
        120,
    ),
    ([[0, 0, 30, 30], [0, 0, 30, 30], [0, 0, 30, 30], [0, 0, 30, 30]], [0.9, 0.9, 0.8, 0.95], [[50, 14]] * 4, 100, 60),
    ([[5.5, 2.5, 40.5, 20.5], [300, 100, 320, 140]], [0.4, 0.41], [[80, 20], [90, 20]], 320, 140),
]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_twin_places_labels_exactly_like_python():
    from meddet.visualize import label_style, layout_labels

    script = (
        f"const L = require({json.dumps(str(REPO / 'webapp' / 'static' / 'labels.js'))});"
        f"const cases = {json.dumps(CASES)};"
        "console.log(JSON.stringify({layouts: cases.map(c => L.layoutLabels(...c)),"
        " styles: [[400, 300], [2800, 4500], [1000, 35]].map(s => L.labelStyle(...s))}));"
    )
    out = json.loads(
        subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True, timeout=30).stdout
    )
    assert out["layouts"] == [[[i, r] for i, r in layout_labels(*c)] for c in CASES]
    assert out["styles"] == [label_style(*s) for s in [(400, 300), (2800, 4500), (1000, 35)]]
