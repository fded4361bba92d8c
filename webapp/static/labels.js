/* Label placement for the result canvas: the exact twin of meddet/visualize.py (label_style,
 * layout_labels), so the browser and the annotated PNGs put labels in the same places.
 *
 *   const style = meddetLabels.labelStyle(canvas.width, canvas.height);   // {font_px, line_width}
 *   const placed = meddetLabels.layoutLabels(boxes, scores, sizes, canvas.width, canvas.height);
 *   for (const [i, [x, y, w, h]] of placed) { ...draw box i, then its label in [x, y, w, h]... }
 *
 * `placed` runs from the lowest score to the highest: the highest-scoring box and label are drawn last
 * (on top), and labels do not overlap each other. Integer arithmetic only (rounding half up, as
 * Python's _rint), so both give the same rectangles for the same label sizes.
 */
(function (root) {
  "use strict";

  function labelStyle(width, height) {
    const side = Math.max(Math.trunc(width), Math.trunc(height));
    return { font_px: Math.max(12, Math.floor((side + 35) / 70)), line_width: Math.max(1, Math.floor((side + 300) / 600)) };
  }

  function rint(v) { return Math.floor(Number(v) + 0.5); }

  function overlaps(a, b) {
    return a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3];
  }

  function layoutLabels(boxes, scores, sizes, width, height) {
    const n = scores.length;
    const order = Array.from({ length: n }, (_, i) => i);
    order.sort((a, b) => (Number(scores[b]) - Number(scores[a])) || (a - b));
    const placed = [];
    const rects = new Map();
    const W = Math.trunc(width), H = Math.trunc(height);
    for (const i of order) {
      const [x1, y1, x2, y2] = boxes[i].map(rint);
      const w = Math.trunc(sizes[i][0]), h = Math.trunc(sizes[i][1]);
      const spots = [[x1, y1 - h], [x2 - w, y1 - h], [x1, y2], [x2 - w, y2], [x1, y1]];
      for (let k = 1; k < 9; k++) spots.push([x1, y1 - h - k * h], [x1, y2 + k * h]);
      let chosen = null;
      for (const [sx, sy] of spots) {
        const rect = [Math.min(Math.max(0, sx), Math.max(0, W - w)), Math.min(Math.max(0, sy), Math.max(0, H - h)), w, h];
        if (chosen === null) chosen = rect;
        if (!placed.some((p) => overlaps(rect, p))) { chosen = rect; break; }
      }
      placed.push(chosen);
      rects.set(i, chosen);
    }
    return order.slice().reverse().map((i) => [i, rects.get(i)]);
  }

  const api = { labelStyle, layoutLabels };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.meddetLabels = api;
})(typeof window !== "undefined" ? window : this);
