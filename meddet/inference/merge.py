"""Merging overlapping detections: NMS, Gaussian soft-NMS, and SAHI's greedy / transitive non-maximum merging.

Used by sliced inference (tiles overlap, so one object is found by several tiles, often cut in two by a
tile edge) and usable on any set of detections. The cost follows the number of nearby pairs:

* Overlapping pairs come from a sweep: boxes are entered in the horizontal strips they touch, and within
  a strip sorted by their left edge (a box can only overlap the boxes whose left edge lies inside its own
  x-range), so the cost follows the number of *nearby* pairs, never N x N.
* Class-aware merging gives each class its own x-range (as ``torchvision.ops.batched_nms`` does), so
  boxes of different classes never form a pair.
* Sequential rules (a box is kept when no *kept* higher-scored box matches it) are solved by a fixpoint
  over the pair list, whose number of rounds is the length of the longest chain of overlapping boxes,
  not the number of boxes.
* Soft-NMS's rule (scores change after every pick) is sequential: boxes are picked from a heap, and each
  pick only touches the boxes overlapping it.

Semantics follow SAHI 0.12 (``sahi.postprocess.combine``; checked against it in tests/test_merge.py):

* order: score descending, ties broken by x1, y1, x2, y2 ascending;
* a pair matches when IoU (or IoS, intersection over the smaller area) ``>= threshold``;
* ``greedy_nmm``: the highest-scored remaining box absorbs every remaining lower-scored box that matches it;
  its members are then merged into it one by one in score order, each only if it still matches the growing
  box with overlap ``> threshold`` (a member that no longer does is dropped, as in SAHI). Merged box = union
  box, score = max, class = that of the higher-scored box;
* ``nmm``: SAHI's transitive variant: a box absorbed by a group claims, for that group, the lower-scored
  boxes it matches; members are merged in the order they were claimed, with the same re-check (score ties
  are ordered by coordinates here; SAHI's own tie rule for this method differs in that rare case);
* ``nms``: plain suppression (IoU uses ``torchvision.ops.batched_nms``, which suppresses at overlap
  ``> threshold``; IoS uses the fixpoint with ``>=``, as SAHI);
* ``soft_nms``: Gaussian soft-NMS (Bodla et al. 2017): each picked box multiplies the scores of the boxes
  overlapping it by ``exp(-overlap**2 / sigma)``; boxes whose score falls below ``min_score`` are dropped.
  ``threshold`` is not used by this method;
* ``none``: everything is kept.
"""

from __future__ import annotations

import heapq
import logging

import numpy as np
import torch
from torchvision.ops import batched_nms

from meddet.errors import ConfigError

logger = logging.getLogger(__name__)

METHODS = ("greedy_nmm", "nmm", "nms", "soft_nms", "none")
METRICS = ("iou", "ios")
ArrayLike = np.ndarray | torch.Tensor
# Candidate pairs handled at once by the sweep (bounds the memory of one chunk to ~200 MB).
_PAIR_CHUNK = 1_000_000


def _as_tensor(x: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _score_rank(boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """rank[i]: position of box i in SAHI's order (score descending, ties by x1, y1, x2, y2 ascending)."""
    b = boxes.numpy()
    order = np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], -scores.numpy()))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return torch.from_numpy(rank)


def _overlap(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """Row-wise IoU or IoS of boxes a[k] and b[k] (both (K, 4) xyxy); 0 where a denominator is 0."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    denom = area_a + area_b - inter if metric == "iou" else torch.minimum(area_a, area_b)
    return torch.where(denom > 0, inter / denom.clamp(min=1e-12), torch.zeros_like(inter))


def overlapping_pairs(
    boxes: torch.Tensor, classes: torch.Tensor | None, metric: str, min_overlap: float, strict: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs (i, j), i < j, whose overlap is >= `min_overlap` (> when `strict`), found by a sweep.

    `boxes` (N, 4) xyxy float64; `classes` (N,) or None (class-agnostic: pairs across classes too).
    Boxes are entered in every horizontal strip they touch, and each strip (and class) is swept along x:
    a box is paired with the later boxes whose left edge lies left of its right edge. A pair is kept only
    in the strip holding the top of its intersection, so it is reported once. Returns (i, j, overlap)."""
    n = len(boxes)
    empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=boxes.dtype))
    if n < 2:
        return empty
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    y0 = float(boxes[:, 1].min())
    extent_y = float(boxes[:, 3].max()) - y0
    # Strips about twice the typical box height: most boxes sit in one or two strips.
    strip_h = max(2.0 * float(heights.median()), extent_y / 4096.0, 1e-6)
    s0 = torch.floor((boxes[:, 1] - y0) / strip_h).long()
    s1 = torch.maximum(torch.floor((boxes[:, 3] - y0) / strip_h).long(), s0)
    reps = s1 - s0 + 1
    entry = torch.repeat_interleave(torch.arange(n), reps)
    strip = s0[entry] + torch.arange(len(entry)) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    n_classes = int(classes.max()) + 1 if classes is not None else 1
    group = strip * n_classes + (classes[entry] if classes is not None else 0)
    x_min = float(boxes[:, 0].min())
    span = float(boxes[:, 2].max()) - x_min + 1.0
    x1 = boxes[entry, 0] - x_min + group.to(boxes.dtype) * span
    x2 = boxes[entry, 2] - x_min + group.to(boxes.dtype) * span
    order = torch.argsort(x1, stable=True)
    sx1, sx2 = x1[order], x2[order]
    m = len(order)
    ends = torch.searchsorted(sx1, sx2, right=False)
    counts = (ends - torch.arange(1, m + 1)).clamp(min=0)
    cum = torch.cumsum(counts, 0)
    out_i, out_j, out_v = [], [], []
    lo = 0
    while lo < m:
        base = int(cum[lo - 1]) if lo else 0
        hi = int(torch.searchsorted(cum, torch.tensor(base + _PAIR_CHUNK), right=True))
        hi = min(max(hi, lo + 1), m)
        c = counts[lo:hi]
        total = int(c.sum())
        if total:
            rows = torch.repeat_interleave(torch.arange(lo, hi), c)
            cols = rows + 1 + torch.arange(total) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
            ea, eb = order[rows], order[cols]
            a, b = entry[ea], entry[eb]
            top = torch.maximum(boxes[a, 1], boxes[b, 1])
            keep = (top < torch.minimum(boxes[a, 3], boxes[b, 3])) & (
                torch.floor((top - y0) / strip_h).long() == strip[ea]
            )
            a, b = a[keep], b[keep]
            v = _overlap(boxes[a], boxes[b], metric)
            keep = v > min_overlap if strict else v >= min_overlap
            a, b, v = a[keep], b[keep], v[keep]
            out_i.append(torch.minimum(a, b))
            out_j.append(torch.maximum(a, b))
            out_v.append(v)
        lo = hi
    if not out_i:
        return empty
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_v)


def _greedy_keep(n: int, hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """Sequential NMS outcome on a match graph whose edges point from higher- to lower-ranked boxes:
    a box is kept iff no kept box points to it. Solved by a fixpoint over the edges."""
    state = torch.zeros(n, dtype=torch.int8)  # 0 undecided, 1 kept, 2 suppressed
    while True:
        undecided = state == 0
        if not bool(undecided.any()):
            return state == 1
        live = undecided[lo] & (state[hi] != 2)
        hi, lo = hi[live], lo[live]
        from_kept = torch.zeros(n, dtype=torch.bool)
        from_kept[lo[state[hi] == 1]] = True
        from_undecided = torch.zeros(n, dtype=torch.bool)
        from_undecided[lo[state[hi] == 0]] = True
        state[undecided & from_kept] = 2
        state[undecided & ~from_kept & ~from_undecided] = 1


def _first_parent(n: int, hi: torch.Tensor, lo: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """For each box, the best-ranked box among the edges pointing to it (itself when none)."""
    best = torch.full((n,), n, dtype=torch.int64)
    best.scatter_reduce_(0, lo, rank[hi], reduce="amin")
    by_rank = torch.empty(n + 1, dtype=torch.int64)
    by_rank[rank] = torch.arange(n)
    by_rank[n] = -1
    parent = by_rank[best]
    return torch.where(parent < 0, torch.arange(n), parent)


def _merge_groups(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    root: torch.Tensor,
    member_key: torch.Tensor,
    metric: str,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge each group's members into its root in `member_key` order, SAHI's way (see module doc)."""
    n = len(boxes)
    is_root = root == torch.arange(n)
    roots = torch.nonzero(is_root).flatten()
    out_b, out_s, out_c = boxes[roots].clone(), scores[roots].clone(), classes[roots].clone()
    slot = torch.full((n,), -1, dtype=torch.int64)
    slot[roots] = torch.arange(len(roots))
    members = torch.nonzero(~is_root).flatten()
    if len(members):
        # Sort members by (group, key) and number them within their group.
        key = member_key[members]
        members = members[torch.argsort(key, stable=True)]
        members = members[torch.argsort(slot[root[members]], stable=True)]
        g = slot[root[members]]
        first = torch.ones(len(members), dtype=torch.bool)
        first[1:] = g[1:] != g[:-1]
        start = torch.cummax(torch.where(first, torch.arange(len(members)), torch.zeros_like(g)), 0).values
        pos = torch.arange(len(members)) - start
        for p in range(int(pos.max()) + 1):
            sel = pos == p
            m, gs = members[sel], g[sel]
            ok = _overlap(out_b[gs], boxes[m], metric) > threshold
            m, gs = m[ok], gs[ok]
            cur_b, cur_s = out_b[gs], out_s[gs]
            out_b[gs] = torch.cat(
                [torch.minimum(cur_b[:, :2], boxes[m, :2]), torch.maximum(cur_b[:, 2:], boxes[m, 2:])], 1
            )
            out_c[gs] = torch.where(cur_s > scores[m], out_c[gs], classes[m])
            out_s[gs] = torch.maximum(cur_s, scores[m])
    return out_b, out_s, out_c


def _soft_nms(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor | None, metric: str, sigma: float, min_score: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian soft-NMS on the sparse overlap graph; returns (kept indices, their decayed scores)."""
    n = len(boxes)
    i, j, v = overlapping_pairs(boxes, classes, metric, 0.0, strict=True)
    # Symmetric adjacency in CSR form, with the decay factor of each edge.
    src, dst = torch.cat([i, j]), torch.cat([j, i])
    decay = torch.exp(-(torch.cat([v, v]) ** 2) / sigma)
    order = torch.argsort(src, stable=True)
    dst_np, decay_np = dst[order].numpy(), decay[order].numpy()
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(src.numpy(), minlength=n))
    cur = scores.numpy().astype(np.float64).copy()
    picked = np.zeros(n, dtype=bool)
    heap = [(-s, k) for k, s in enumerate(cur)]
    heapq.heapify(heap)
    keep, kept_scores = [], []
    while heap:
        neg, k = heapq.heappop(heap)
        if picked[k] or -neg != cur[k]:
            continue  # stale entry: the score was decayed after it was pushed
        if -neg < min_score:
            break
        picked[k] = True
        keep.append(k)
        kept_scores.append(-neg)
        nb = dst_np[indptr[k] : indptr[k + 1]]
        f = decay_np[indptr[k] : indptr[k + 1]]
        live = ~picked[nb]
        nb, f = nb[live], f[live]
        cur[nb] *= f
        for idx in nb.tolist():
            heapq.heappush(heap, (-cur[idx], idx))
    return torch.as_tensor(keep, dtype=torch.int64), torch.as_tensor(kept_scores, dtype=torch.float64)


def merge_detections(
    boxes: ArrayLike,
    scores: ArrayLike,
    classes: ArrayLike,
    method: str = "greedy_nmm",
    match_metric: str = "ios",
    threshold: float = 0.5,
    class_agnostic: bool = False,
    sigma: float = 0.5,
    min_score: float = 1e-3,
) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """Merge overlapping detections (e.g. of overlapping tiles) into one set, sorted by score descending.

    boxes (N, 4) xyxy, scores (N,), classes (N,) integer; numpy arrays or torch tensors (the result has the
    type of `boxes`: float32 boxes and scores, int64 classes). `method` is one of "greedy_nmm" (SAHI's
    GREEDYNMM), "nmm" (SAHI's NMM), "nms", "soft_nms", "none"; `match_metric` "iou" or "ios"
    (intersection over the smaller box); `threshold` in (0, 1]; `class_agnostic` lets boxes of different
    classes merge (the merged box takes the class of the highest-scored one); `sigma` and `min_score` are
    soft-NMS's Gaussian width and the score below which a decayed box is dropped. See the module doc for
    the exact rules."""
    method, match_metric = str(method).lower(), str(match_metric).lower()
    if method not in METHODS:
        raise ConfigError(f"TILING.MERGE: expected one of {', '.join(METHODS)}, found {method!r}")
    if match_metric not in METRICS:
        raise ConfigError(f"TILING.MATCH_METRIC: expected 'iou' or 'ios', found {match_metric!r}")
    if not 0.0 < float(threshold) <= 1.0:
        raise ConfigError(f"TILING.MATCH_THRESH: expected a value in (0, 1], found {threshold!r}")
    if method == "soft_nms" and not float(sigma) > 0.0:
        raise ConfigError(f"TILING.SOFT_NMS_SIGMA: expected a positive value, found {sigma!r}")
    as_numpy = not isinstance(boxes, torch.Tensor)
    b = _as_tensor(boxes, torch.float64).reshape(-1, 4)
    s = _as_tensor(scores, torch.float64).reshape(-1)
    c = _as_tensor(classes, torch.int64).reshape(-1)
    if not len(b) == len(s) == len(c):
        raise ValueError(f"boxes ({len(b)}), scores ({len(s)}) and classes ({len(c)}) differ in length")
    group = None if class_agnostic else c
    n = len(b)
    if n == 0 or method == "none":
        out_b, out_s, out_c = b, s, c
    elif method == "nms" and match_metric == "iou":
        idx = batched_nms(b, s, torch.zeros_like(c) if class_agnostic else c, float(threshold))
        out_b, out_s, out_c = b[idx], s[idx], c[idx]
    elif method == "soft_nms":
        idx, new_s = _soft_nms(b, s, group, match_metric, float(sigma), float(min_score))
        out_b, out_s, out_c = b[idx], new_s, c[idx]
    else:
        rank = _score_rank(b, s)
        i, j, _ = overlapping_pairs(b, group, match_metric, float(threshold))
        hi = torch.where(rank[i] < rank[j], i, j)
        lo = torch.where(rank[i] < rank[j], j, i)
        if method == "nmm":
            parent = _first_parent(n, hi, lo, rank)
            root = parent.clone()
            while True:  # pointer jumping to each chain's root
                nxt = root[root]
                if torch.equal(nxt, root):
                    break
                root = nxt
            # Members are claimed when their parent is processed, each parent's in index order (as SAHI).
            out_b, out_s, out_c = _merge_groups(
                b, s, c, root, rank[parent] * n + torch.arange(n), match_metric, float(threshold)
            )
        else:
            kept = _greedy_keep(n, hi, lo)
            if method == "nms":
                out_b, out_s, out_c = b[kept], s[kept], c[kept]
            else:
                to_kept = kept[hi]
                root = _first_parent(n, hi[to_kept], lo[to_kept], rank)
                out_b, out_s, out_c = _merge_groups(b, s, c, root, rank, match_metric, float(threshold))
    order = torch.argsort(out_s, descending=True, stable=True)
    out_b, out_s, out_c = out_b[order].float(), out_s[order].float(), out_c[order]
    logger.debug("merge_detections(%s, %s, %.2f): %d -> %d boxes", method, match_metric, threshold, n, len(out_b))
    if as_numpy:
        return out_b.numpy(), out_s.numpy(), out_c.numpy()
    return out_b, out_s, out_c
