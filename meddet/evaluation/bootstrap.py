"""95% confidence intervals by cluster bootstrap (patients, by default), without re-running COCOeval.

**The resampling unit** (``EVAL.BOOTSTRAP_UNIT``, `image_clusters`): views of one patient are
correlated (a screening exam has 2–4 views of each breast, and a lesion seen on one is usually
seen on the other), so resampling images as if independent gives intervals that are too narrow.
``patient`` (the default) resamples patients — all images of a drawn patient enter together —
whenever the ground truth's images carry ``patient_id`` (an image without one is its own patient;
with no ``patient_id`` at all it falls back to ``image``); ``image`` resamples images; any other
value names an image field to group by (e.g. ``study_id``, ``parent_id`` for tiles). The unit is
written next to every interval (``bootstrap_ci.csv``, report.md, ``-c compare``).

A resample draws as many units as the set holds, uniformly with replacement (seeded NumPy
`Generator`); it is represented by its weights — how many times each image was drawn (its
unit's count) — and every statistic is a weighted sum over per-image quantities computed once:

- **COCO AP** (`APStats`): for each IoU threshold 0.50:0.05:0.95, the detections of each class
  in COCO's accumulation order (score descending, then image id, then input order; the 100
  highest-scoring per image and class, COCO's maxDets), with their TP / ignored flags from the
  greedy matching at that threshold, and the ground-truth count per image and class. For a
  resample, the weighted cumulative TP and FP counts at the true positives give recall and
  precision, and COCO's 101-point interpolated AP follows exactly as `COCOeval.accumulate`
  computes it (same precision formula, same recall-threshold search, done on integers so the
  floating-point comparisons are COCO's). Only the true-positive positions are needed: the
  interpolated precision at any recall is attained at one, and a detection drawn w times acts
  as w identical detections in a row. On the full set (all weights 1) this reproduces COCO's
  AP50 and AP to floating-point precision (differences arise only for equal IoUs of one
  detection with two ground truths, which the two greedy rules break differently).
- **Recall at the score threshold** per class: weighted TP and ground-truth counts per image.
- **FROC sensitivity at x FP/image** (all lesions): the false positives and lesions of the
  ``all`` curve as weighted events in score order, read with the rule of `meddet.evaluation.froc`
  (step or linear); FP/image divides by the resample's number of images.

Intervals are percentile intervals (2.5th and 97.5th percentiles of the resampled values,
NaN-resampled values left out); the estimate is the full-set value.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from meddet.errors import ConfigError
from meddet.evaluation.froc import FROCCurve, rate_label
from meddet.evaluation.matching import EvalData, Matches, match_detections

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from scipy.sparse import csr_matrix

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_IOUS",
    "RECALL_THRESHOLDS",
    "BOOTSTRAP_UNITS",
    "APStats",
    "BootstrapCI",
    "Clusters",
    "bootstrap_ci",
    "image_clusters",
    "percentile_interval",
    "resample_weights",
]

# Named units; any other EVAL.BOOTSTRAP_UNIT value is an image field to group images by.
BOOTSTRAP_UNITS = ("patient", "image")

# pycocotools' Params: iouThrs and recThrs, built the same way so the floats are identical.
COCO_IOUS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = 100
# Resamples drawn per call of the generator (fixed, so a seed gives the same resamples for any
# data size), and the number of array cells (positions x resamples) handled at once.
_DRAW_BATCH = 50
_CELLS = 1 << 22


def resample_weights(n_images: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_resamples x n_images]`` counts of each image in resamples of `n_images` images drawn
    uniformly with replacement."""
    idx = rng.integers(0, n_images, size=(n_resamples, n_images))
    flat = (np.arange(n_resamples)[:, None] * n_images + idx).ravel()
    return np.bincount(flat, minlength=n_resamples * n_images).reshape(n_resamples, n_images).astype(np.int32)


@dataclass(frozen=True, eq=False)
class Clusters:
    """The bootstrap's resampling units: `index[i]` is the unit (0..n-1) of image i; `unit` names
    what a unit is (``patient``, ``image`` or an image field)."""

    unit: str
    index: np.ndarray

    @property
    def n(self) -> int:
        return int(self.index.max()) + 1 if self.index.size else 0

    def describe(self) -> str:
        """E.g. ``patient (40 patients)``, ``image (160 images)``, ``study_id (52 groups)``."""
        what = {"patient": "patients", "image": "images"}.get(self.unit, "groups")
        return f"{self.unit} ({self.n} {what})"

    def weights(self, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
        """``[n_resamples x images]`` image weights: each resample draws `n` units with
        replacement, and every image counts as often as its unit was drawn."""
        return resample_weights(self.n, n_resamples, rng)[:, self.index]


def _key(v: object) -> object:
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


def image_clusters(data: EvalData, unit: str = "patient") -> Clusters:
    """The resampling units of `data`'s images for ``EVAL.BOOTSTRAP_UNIT`` `unit` (see the module
    docstring). An image lacking the field (``None`` or empty) is a unit of its own; a field no
    image has is a ConfigError (``patient`` instead falls back to ``image``)."""
    if not isinstance(unit, str) or not unit:
        raise ConfigError(
            f"EVAL.BOOTSTRAP_UNIT is {unit!r}; expected {' | '.join(BOOTSTRAP_UNITS)} or the "
            "name of an image field of the ground truth"
        )
    I = data.num_images
    if unit == "image":
        return Clusters("image", np.arange(I, dtype=np.int64))
    images = data.images or [{} for _ in range(I)]
    field_name = "patient_id" if unit == "patient" else unit
    values = [im.get(field_name) for im in images]
    present = [v not in (None, "") for v in values]
    if not any(present):
        if unit == "patient":
            if I:
                logger.info("%s: no image has a patient_id; the bootstrap resamples images", data.gt_source)
            return Clusters("image", np.arange(I, dtype=np.int64))
        found = sorted({k for im in images for k in im})
        raise ConfigError(
            f"EVAL.BOOTSTRAP_UNIT is {unit!r}, but no image of {data.gt_source} has a {unit!r} field; "
            f"expected {' | '.join(BOOTSTRAP_UNITS)} or one of the image fields {found}"
        )
    missing = present.count(False)
    if missing:
        logger.warning(
            "%s: %d of %d images have no %s; each is resampled as a unit of its own",
            data.gt_source,
            missing,
            I,
            field_name,
        )
    keys = [("v", _key(v)) if ok else ("image", i) for i, (v, ok) in enumerate(zip(values, present))]
    lookup: dict = {}
    index = np.fromiter((lookup.setdefault(k, len(lookup)) for k in keys), dtype=np.int64, count=I)
    return Clusters(unit, index)


def percentile_interval(
    compute: Callable[[np.ndarray], ArrayLike],
    clusters: Clusters,
    n_resamples: int,
    rng: np.random.Generator,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, low, high) of the statistics `compute` maps image weights ``[B x I]`` (float) to
    (``[B x M]``): the estimate at all weights 1, the `level` percentile interval over
    `n_resamples` cluster resamples of `clusters` (NaN resampled values left out)."""
    I = clusters.index.size
    estimate = np.asarray(compute(np.ones((1, I))), dtype=np.float64)[0]
    samples = np.concatenate(
        [
            np.asarray(compute(clusters.weights(min(_DRAW_BATCH, n_resamples - a), rng).astype(np.float64)))
            for a in range(0, n_resamples, _DRAW_BATCH)
        ]
    )
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():  # all-NaN columns (e.g. a class never drawn) give NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return estimate, low, high


def _row_searchsorted(sorted_cols: np.ndarray, queries: np.ndarray, big: float) -> np.ndarray:
    """Per-column ``searchsorted(col, q, 'left')`` for integer-valued float arrays: columns of
    ``[n x b]`` non-decreasing, queries ``[b x Q]``, all values in [0, big)."""
    n, b = sorted_cols.shape
    off = np.arange(b, dtype=np.float64)[:, None] * big
    pos = np.searchsorted((sorted_cols.T + off).ravel(), (queries + off).ravel(), side="left")
    return pos.reshape(queries.shape) - np.arange(b)[:, None] * n


def _block_counts(positions: np.ndarray, checkpoints: np.ndarray, images: np.ndarray, n_images: int) -> csr_matrix:
    """Sparse ``[len(checkpoints) x n_images]`` counts: item at `positions` (with image
    `images`) goes to the first checkpoint at or after it; items after the last are dropped.
    Its product with ``weights.T`` summed cumulatively gives weighted counts up to each checkpoint."""
    from scipy.sparse import csr_matrix

    block = np.searchsorted(checkpoints, positions, side="left")
    keep = block < checkpoints.size
    return csr_matrix((np.ones(int(keep.sum())), (block[keep], images[keep])), shape=(checkpoints.size, n_images))


@dataclass(frozen=True, eq=False)
class APStats:
    """Sufficient statistics of COCO AP for image-weighted resamples (see the module docstring).

    Detections are in COCO's accumulation order; `tp_pos[t][k]` / `ign_pos[t][k]` are the
    positions of the true positives / ignored detections of class k at IoU threshold t, and
    `counts` the sparse per-image counts of detections between consecutive `checkpoints` (every
    such position, and the last position before each class).
    """

    n_images: int
    n_classes: int
    iou_thresholds: np.ndarray
    gt_counts: np.ndarray
    det_image: np.ndarray
    class_bounds: np.ndarray
    tp_pos: list[list[np.ndarray]]
    ign_pos: list[list[np.ndarray]]
    checkpoints: np.ndarray
    counts: csr_matrix

    @classmethod
    def from_data(
        cls, data: EvalData, iou_thresholds: Sequence[float] | np.ndarray = COCO_IOUS, max_dets: int = MAX_DETS
    ) -> APStats:
        """Match `data` at each IoU threshold and keep what AP needs."""
        I, K = data.num_images, data.num_classes
        n = data.det_score.size
        idx = np.arange(n)
        # Rank of each detection within its (image, class), by score then input order.
        by_group = np.lexsort((idx, -data.det_score, data.det_class, data.det_image))
        g = data.det_image[by_group] * K + data.det_class[by_group]
        start = np.flatnonzero(np.append(True, g[1:] != g[:-1])) if n else np.zeros(0, dtype=np.int64)
        rank = np.empty(n, dtype=np.int64)
        rank[by_group] = idx - np.repeat(start, np.diff(np.append(start, n)))
        valid = np.flatnonzero(rank < max_dets)
        image_rank = data.coco_image_rank[data.det_image[valid]]  # ties by image id, as COCO
        order = valid[np.lexsort((valid, image_rank, -data.det_score[valid], data.det_class[valid]))]
        bounds = np.searchsorted(data.det_class[order], np.arange(K + 1))
        real = ~data.gt_crowd
        gt_counts = np.zeros((I, K), dtype=np.int64)
        np.add.at(gt_counts, (data.gt_image[real], data.gt_class[real]), 1)
        tp_pos, ign_pos = [], []
        for t in iou_thresholds:
            m = match_detections(data, float(t))
            tp, ig = np.flatnonzero((m.det_gt >= 0)[order]), np.flatnonzero(m.det_ignored[order])
            tp_pos.append([tp[(tp >= bounds[k]) & (tp < bounds[k + 1])] for k in range(K)])
            ign_pos.append([ig[(ig >= bounds[k]) & (ig < bounds[k + 1])] for k in range(K)])
        det_image = data.det_image[order]
        checkpoints = np.unique(
            np.concatenate(
                [bounds[1:-1] - 1, *[p for per_t in tp_pos for p in per_t], *[p for per_t in ign_pos for p in per_t]]
            ).astype(np.int64)
        )
        counts = _block_counts(np.arange(order.size), checkpoints, det_image, I)
        return cls(
            I,
            K,
            np.asarray(iou_thresholds, dtype=np.float64),
            gt_counts,
            det_image,
            bounds,
            tp_pos,
            ign_pos,
            checkpoints,
            counts,
        )

    def ap(self, weights: np.ndarray) -> np.ndarray:
        """COCO AP ``[B x T x K]`` for image weights ``[B x I]`` (NaN where a class has no
        ground truth in the resample); ``weights = np.ones((1, I))`` gives the full set's AP."""
        W = np.asarray(weights, dtype=np.float64)
        out = np.empty((W.shape[0], len(self.iou_thresholds), self.n_classes))
        # Resamples per chunk: the largest arrays are [checkpoints x chunk] and a few [TPs x chunk].
        step = max(1, _CELLS // max(1, 4 * self.checkpoints.size))
        for a in range(0, W.shape[0], step):
            out[a : a + step] = self._ap_chunk(W[a : a + step])
        return out

    def _ap_chunk(self, W: np.ndarray) -> np.ndarray:
        b = W.shape[0]
        T, K = len(self.iou_thresholds), self.n_classes
        WT = np.ascontiguousarray(W.T)  # [I x b]
        npig = W @ self.gt_counts  # [b x K], integer-valued
        cum = np.cumsum(self.counts @ WT, axis=0)  # [checkpoints x b]: detections up to each
        out = np.zeros((b, T, K))
        R = RECALL_THRESHOLDS[None, :]
        eps = np.spacing(1)
        for k in range(K):
            n_gt = npig[:, k]
            has = n_gt > 0
            if not has.any():
                out[:, :, k] = np.nan
                continue
            nf = np.maximum(n_gt, 1.0)[:, None]
            # Smallest TP count m with m / n_gt >= r, evaluated in floating point as COCO does.
            m0 = np.ceil(R * nf)
            m = np.where((m0 >= 1) & ((m0 - 1) / nf >= R), m0 - 1, np.where(m0 / nf >= R, m0, m0 + 1))
            big = float(n_gt.max()) + 2.0
            a = self.class_bounds[k]
            base = cum[np.searchsorted(self.checkpoints, a - 1)] if a > 0 else np.zeros(b)
            for t in range(T):
                P = self.tp_pos[t][k]
                if P.size == 0:
                    continue
                tpc = np.cumsum(WT[self.det_image[P]], axis=0)  # [n_P x b]
                denom = cum[np.searchsorted(self.checkpoints, P)] - base
                G = self.ign_pos[t][k]
                if G.size:
                    igc = np.concatenate([np.zeros((1, b)), np.cumsum(WT[self.det_image[G]], axis=0)])
                    denom -= igc[np.searchsorted(G, P, side="right")]
                pr = tpc / (denom + eps)
                env = np.maximum.accumulate(pr[::-1], axis=0)[::-1]
                pos = _row_searchsorted(tpc, m, big)  # [b x R]
                q = np.take_along_axis(env.T, np.minimum(pos, P.size - 1), axis=1)
                out[:, t, k] = np.where(pos < P.size, q, 0.0).mean(axis=1)
            out[~has, :, k] = np.nan
        return out


def _mean_classes(ap: np.ndarray) -> np.ndarray:
    """Mean over the classes (and IoUs) with a defined AP, per resample; NaN where none."""
    flat = ap.reshape(ap.shape[0], -1)
    n = np.sum(~np.isnan(flat), axis=1)
    s = np.nansum(flat, axis=1)
    out = np.full(ap.shape[0], np.nan)
    np.divide(s, n, out=out, where=n > 0)
    return out


@dataclass(frozen=True, eq=False)
class _FROCStats:
    """The ``all`` FROC curve as weighted events: per-image counts of false positives and of
    found lesions up to each score group that finds a lesion (and of false positives scoring
    above it, for the linear rule), and lesions per image. FP/image divides by the resample's
    image count (its weights' sum: a patient resample holds a varying number of images). Step
    rule: the sensitivity at x FP/image is that of the last such group with at most x FP/image (a
    group finding no lesion cannot raise it). Linear rule: the polyline of those groups' corners,
    each preceded by the point just above its score, interpolated at x (`FROCCurve.polyline`)."""

    n_images: int
    fp_counts: csr_matrix
    fp_above_counts: csr_matrix
    hit_counts: csr_matrix
    lesions: np.ndarray
    interpolation: str = "step"

    @classmethod
    def from_curve(cls, curve: FROCCurve, interpolation: str = "step") -> _FROCStats:
        found = np.isfinite(curve.lesion_scores)
        score = np.concatenate([curve.lesion_scores[found], curve.fp_scores])
        image = np.concatenate([curve.lesion_images[found], curve.fp_images])
        is_fp = np.concatenate([np.zeros(int(found.sum()), dtype=bool), np.ones(curve.fp_scores.size, dtype=bool)])
        order = np.argsort(-score, kind="stable")
        score, image, is_fp = score[order], image[order], is_fp[order]
        ends = np.flatnonzero(np.append(score[1:] != score[:-1], True)) if score.size else np.zeros(0, np.int64)
        starts = np.append(0, ends[:-1] + 1) if ends.size else np.zeros(0, np.int64)
        group = np.searchsorted(ends, np.arange(score.size))
        lesion_groups = np.unique(group[~is_fp])
        checkpoints = ends[lesion_groups]
        pos = np.arange(score.size)
        I = curve.n_images
        return cls(
            I,
            _block_counts(pos[is_fp], checkpoints, image[is_fp], I),
            _block_counts(pos[is_fp], starts[lesion_groups] - 1, image[is_fp], I),
            _block_counts(pos[~is_fp], checkpoints, image[~is_fp], I),
            np.bincount(curve.lesion_images, minlength=I).astype(np.float64),
            interpolation,
        )

    def sensitivity_at(self, weights: np.ndarray, rate: float) -> np.ndarray:
        W = np.asarray(weights, dtype=np.float64)
        total = W @ self.lesions
        n_img = W.sum(axis=1)
        n_cp = self.fp_counts.shape[0]
        if n_cp == 0:
            return np.where(total > 0, 0.0, np.nan)
        WT = np.ascontiguousarray(W.T)
        cfp = np.cumsum(self.fp_counts @ WT, axis=0)  # [checkpoints x B]
        chit = np.cumsum(self.hit_counts @ WT, axis=0)
        if self.interpolation == "linear":
            above = np.cumsum(self.fp_above_counts @ WT, axis=0)
            found = np.empty(W.shape[0])
            for b in range(W.shape[0]):
                x = np.empty(2 * n_cp + 1)
                y = np.empty(2 * n_cp + 1)
                x[0] = y[0] = 0.0
                x[1::2], y[1::2] = above[:, b], np.append(0.0, chit[:-1, b])
                x[2::2], y[2::2] = cfp[:, b], chit[:, b]
                found[b] = np.interp(rate, x / n_img[b], y) if n_img[b] > 0 else np.nan
        else:
            n_ok = np.sum(cfp <= rate * n_img[None, :] + 1e-9, axis=0)
            found = np.where(n_ok > 0, chit[np.maximum(n_ok - 1, 0), np.arange(W.shape[0])], 0.0)
        out = np.full(W.shape[0], np.nan)
        np.divide(found, total, out=out, where=total > 0)
        return out


@dataclass(frozen=True)
class BootstrapCI:
    """Bootstrap confidence intervals: one row per metric (``metric``, ``estimate``,
    ``ci95_low``, ``ci95_high``), `n_resamples` resamples of `n_units` units of kind `unit`
    (``patient``, ``image`` or an image field) drawn with `seed`."""

    table: pd.DataFrame
    n_resamples: int
    seed: int
    unit: str = "image"
    n_units: int = 0

    def describe(self) -> str:
        """What was resampled, e.g. ``patient (40 patients)``."""
        return Clusters(self.unit, np.arange(self.n_units)).describe()

    def to_metrics(self) -> dict[str, float]:
        """``ci95_low/<metric>`` and ``ci95_high/<metric>`` for each metric."""
        out: dict[str, float] = {}
        for row in self.table.itertuples(index=False):
            out[f"ci95_low/{row.metric}"] = float(row.ci95_low)
            out[f"ci95_high/{row.metric}"] = float(row.ci95_high)
        return out

    def to_frame(self) -> pd.DataFrame:
        """``bootstrap_ci.csv``: the table with the resampling unit, the number of units, of
        resamples and the seed."""
        return self.table.assign(unit=self.unit, units=self.n_units, resamples=self.n_resamples, seed=self.seed)


def bootstrap_ci(
    data: EvalData,
    matches: Matches,
    score_thresh: float | np.ndarray,
    froc_all: FROCCurve,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    fp_rate: float = 1.0,
    ap_stats: APStats | None = None,
    unit: str | Clusters = "patient",
    froc_interpolation: str = "step",
) -> BootstrapCI:
    """95% bootstrap intervals for ``bbox/AP50`` and ``bbox/AP`` (percent, as COCO's), recall
    per class at `score_thresh` from class-aware `matches` (``prf1/recall-<class>``), and the
    all-lesion FROC sensitivity at `fp_rate` FP/image (``froc/sens@1fp``, read by the
    `froc_interpolation` rule of ``EVAL.FROC_INTERPOLATION``), resampling `unit`
    (``EVAL.BOOTSTRAP_UNIT``, see `image_clusters`; or given `Clusters`)."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ConfigError(f"EVAL.BOOTSTRAP_SAMPLES is {n_resamples!r}; expected a positive integer (0 disables)")
    try:
        rng = np.random.default_rng(int(seed))
    except (TypeError, ValueError):
        raise ConfigError(f"EVAL.BOOTSTRAP_SEED is {seed!r}; expected a non-negative integer") from None
    clusters = unit if isinstance(unit, Clusters) else image_clusters(data, unit)
    I, K = data.num_images, data.num_classes
    stats = ap_stats or APStats.from_data(data)
    t50 = int(np.flatnonzero(np.isclose(stats.iou_thresholds, 0.5))[0])
    tp_ik = np.zeros((I, K))
    tp = matches.det_tp(score_thresh)
    np.add.at(tp_ik, (data.det_image[tp], data.det_class[tp]), 1)
    gt_ik = stats.gt_counts.astype(np.float64)
    froc_stats = _FROCStats.from_curve(froc_all, froc_interpolation)

    def compute(W: np.ndarray) -> np.ndarray:
        W = W.astype(np.float64)
        ap = stats.ap(W)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = (W @ tp_ik) / (W @ gt_ik)
        sens = froc_stats.sensitivity_at(W, fp_rate)
        return np.column_stack([100 * _mean_classes(ap[:, t50 : t50 + 1]), 100 * _mean_classes(ap), recall, sens])

    estimate, low, high = percentile_interval(compute, clusters, n_resamples, rng)
    names = ["bbox/AP50", "bbox/AP", *[f"prf1/recall-{n}" for n in data.class_names], f"froc/{rate_label(fp_rate)}"]
    table = pd.DataFrame({"metric": names, "estimate": estimate, "ci95_low": low, "ci95_high": high})
    logger.debug("bootstrap: %d resamples of %s over %d images", n_resamples, clusters.describe(), I)
    return BootstrapCI(table, int(n_resamples), int(seed), clusters.unit, clusters.n)
