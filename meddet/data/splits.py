"""Patient-level train/val/test splits of a COCO dataset.

No patient ever lands in two splits: images are grouped by ``patient_id`` (an image without one
is its own group). Each group's split is a pure function of its key and the seed: a keyed hash
(BLAKE2b, keyed by the seed) places the group at a point in [0, 1), and the split is the
fraction interval that point falls in (train ``[0, f_train)``, val ``[f_train, f_train + f_val)``,
...). So removing an image or a whole patient (an unreadable file skipped by a re-conversion)
never moves another patient, and adding one never does either. The fractions are met in
expectation: with N patients each split's share is within about ``1/sqrt(N)`` of the request.
The one exception, for tiny datasets: a split asked for that no group hashes into takes the
group whose point lies nearest its interval (from a split keeping at least one group).

``method="balanced"`` is the other choice, for a fixed set of groups (synthetic data): groups are
shuffled with the seed and each goes to the split whose cumulative image-count target its midpoint
falls in, so even a few patients share the fractions closely, but one group more or less can move
others.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meddet.data.coco import load_coco, resolve_image_path, save_json_atomic
from meddet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["SPLIT_NAMES", "check_fractions", "patient_key", "split_by_patient", "split_point", "subset_coco"]

SPLIT_NAMES = ("train", "val", "test")


def check_fractions(fractions: Sequence[float], names: Sequence[str] = SPLIT_NAMES) -> tuple[float, ...]:
    """Validate split fractions: one per split name, each >= 0, summing to 1 (within 1e-6)."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != len(names):
        raise ConfigError(f"split fractions: expected {len(names)} values ({'/'.join(names)}), found {list(fractions)}")
    if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions: expected non-negative values summing to 1, found {list(fractions)}")
    return fr


def patient_key(image: dict[str, Any]) -> str:
    """The grouping key of a COCO image record: its ``patient_id``, else the image itself."""
    pid = image.get("patient_id")
    if pid not in (None, ""):
        return f"patient:{pid}"
    return f"image:{image.get('file_name', image['id'])}"


def split_point(key: str, seed: int) -> float:
    """The group's point in [0, 1): a BLAKE2b hash of its key, keyed by the seed (stable across
    runs, platforms and Python versions, unlike ``hash()``)."""
    h = hashlib.blake2b(str(key).encode("utf-8"), digest_size=8, key=f"meddet-split:{int(seed)}".encode())
    return int.from_bytes(h.digest(), "big") / 2.0**64


def split_by_patient(
    images: Sequence[dict[str, Any]],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    names: Sequence[str] = SPLIT_NAMES,
    method: str = "hash",
) -> dict[str, list[Any]]:
    """Assign COCO image records to splits by patient; returns ``{split name: [image ids]}``
    (ids in the input's order).

    ``method="hash"`` (default): a group's split depends only on its key (``patient_key``), the
    seed and the fractions (module docstring): the same patient goes to the same split whatever
    else is in the dataset. ``"balanced"``: closest image-count fractions for a fixed set.
    A split with a fraction > 0 is never left empty while another split has two or more groups.
    """
    fr = check_fractions(fractions, names)
    groups: dict[str, list[Any]] = {}
    for im in images:
        groups.setdefault(patient_key(im), []).append(im["id"])
    if method == "balanced":
        assigned = _balanced(groups, fr, seed, names)
    elif method == "hash":
        assigned = _hashed(groups, fr, seed, names)
    else:
        raise ConfigError(f"split method: expected 'hash' or 'balanced', found {method!r}")
    position = {im["id"]: pos for pos, im in enumerate(images)}
    return {n: sorted((i for key in assigned[n] for i in groups[key]), key=position.__getitem__) for n in names}


def _hashed(groups: dict[str, list[Any]], fr: Sequence[float], seed: int, names: Sequence[str]) -> dict[str, list[str]]:
    bounds, acc = [], 0.0
    for f in fr:
        acc += f
        bounds.append(acc)
    point = {key: split_point(key, seed) for key in groups}
    assigned: dict[str, list[str]] = {n: [] for n in names}
    for key in sorted(groups):
        k = next((i for i, b in enumerate(bounds) if point[key] < b), len(names) - 1)
        while fr[k] == 0 and k > 0:  # never put a patient into a split asked to be empty
            k -= 1
        while fr[k] == 0:
            k += 1
        assigned[names[k]].append(key)
    # Tiny datasets: a split asked for but left empty takes the group whose point lies nearest its
    # interval, from a split that keeps at least one group.
    for k, (n, f) in enumerate(zip(names, fr)):
        if f > 0 and not assigned[n]:
            lo, hi = bounds[k] - f, bounds[k]
            donors = [
                (max(lo - point[key], point[key] - hi), key, m)
                for m in names
                if len(assigned[m]) > 1
                for key in assigned[m]
            ]
            if donors:
                _, key, m = min(donors)
                assigned[m].remove(key)
                assigned[n].append(key)
            else:
                logger.warning(
                    "split %r is empty: %d patient group(s) are too few for fractions %s", n, len(groups), list(fr)
                )
    return assigned


def _balanced(
    groups: dict[str, list[Any]], fr: Sequence[float], seed: int, names: Sequence[str]
) -> dict[str, list[str]]:
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    total = sum(len(v) for v in groups.values())
    bounds = np.cumsum(fr) * total
    assigned: dict[str, list[str]] = {n: [] for n in names}
    done = 0
    for idx in order:
        key = keys[idx]
        mid = done + len(groups[key]) / 2.0
        k = min(int(np.searchsorted(bounds, mid, side="right")), len(names) - 1)
        while fr[k] == 0 and k > 0:  # never put a patient into a split asked to be empty
            k -= 1
        assigned[names[k]].append(key)
        done += len(groups[key])
    for n, f in zip(names, fr):
        if f > 0 and not assigned[n]:
            donor = max(names, key=lambda m: len(assigned[m]))
            if len(assigned[donor]) > 1:
                assigned[n].append(assigned[donor].pop())
            else:
                logger.warning(
                    "split %r is empty: %d patient group(s) are too few for fractions %s", n, len(keys), list(fr)
                )
    return assigned


def subset_coco(coco: dict[str, Any], image_ids: Sequence[Any]) -> dict[str, Any]:
    """A COCO dict with only the given images and their annotations (same categories, info)."""
    keep = set(image_ids)
    sub = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    sub["images"] = [im for im in coco["images"] if im["id"] in keep]
    sub["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    return sub


KFOLD_BY = ("patient", "image")


def kfold_split(images: Sequence[dict[str, Any]], k: int, by: str = "patient", seed: int = 0) -> list[list[Any]]:
    """Image ids of each of `k` folds (input order kept within a fold).

    Groups: the image's patient (`meddet.data.splits.patient_key`) for `by` "patient", else the image
    itself (a tile's ``parent_id`` when it has one). Groups are shuffled with `seed` and each goes to the
    fold holding the fewest images so far, so folds are disjoint by group, cover every image and differ
    in size by at most one group. Deterministic for the same images (in any order), k, by and seed.
    """
    if by not in KFOLD_BY:
        raise ConfigError(f"kfold.by: found {by!r}; expected one of {list(KFOLD_BY)}")
    groups: dict[str, list[Any]] = {}
    for im in images:
        key = patient_key(im) if by == "patient" else f"image:{im.get('parent_id', im['id'])}"
        groups.setdefault(key, []).append(im["id"])
    if len(groups) < k:
        raise DataError(f"kfold: {len(groups)} {by} group(s) in {len(images)} images are too few for k={k} folds")
    keys = sorted(groups)
    sizes = np.zeros(k, dtype=np.int64)
    fold_of: dict[str, int] = {}
    for idx in np.random.default_rng(seed).permutation(len(keys)):
        f = int(np.argmin(sizes))
        fold_of[keys[idx]] = f
        sizes[f] += len(groups[keys[idx]])
    folds: list[list[Any]] = [[] for _ in range(k)]
    for key in keys:
        folds[fold_of[key]].extend(groups[key])
    position = {im["id"]: pos for pos, im in enumerate(images)}
    return [sorted(f, key=position.__getitem__) for f in folds]


def pool_coco(files: Sequence[str | os.PathLike], image_root: str | os.PathLike = "") -> dict[str, Any]:
    """COCO files (e.g. DATASETS.TRAIN + DATASETS.VAL) as one COCO dict to deal into folds: image and box
    ids renumbered, file names made absolute (resolved by `image_root`, else each file's folder). The files
    must share their categories (DataError naming the file otherwise)."""
    pooled: dict[str, Any] = {"images": [], "annotations": [], "categories": None}
    cats_of = None
    for f in files:
        coco = load_coco(f)
        cats = sorted((c["id"], c["name"]) for c in coco["categories"])
        if cats_of is not None and cats != cats_of[1]:
            raise DataError(
                f"{f}: categories {cats} differ from those of {cats_of[0]} ({cats_of[1]}); "
                "kfold pools the files, they must share categories"
            )
        if cats_of is None:
            cats_of = (f, cats)
            pooled["categories"] = coco["categories"]
        new_id = {}
        for im in coco["images"]:
            new_id[im["id"]] = len(pooled["images"]) + 1
            path = resolve_image_path(im["file_name"], f, image_root).absolute()
            pooled["images"].append({**im, "id": new_id[im["id"]], "file_name": str(path)})
        for a in coco["annotations"]:
            pooled["annotations"].append({**a, "id": len(pooled["annotations"]) + 1, "image_id": new_id[a["image_id"]]})
    return pooled


def write_fold(
    pooled: dict[str, Any], k: int, by: str, seed: int, fold: int, out_dir: str | os.PathLike
) -> tuple[Path, Path]:
    """Fold `fold` of `kfold_split(pooled images, k, by, seed)` as `out_dir/test.json` and the other folds
    as `out_dir/train.json`; returns their paths."""
    test_ids = kfold_split(pooled["images"], k, by, seed)[fold]
    held = set(test_ids)
    train_ids = [im["id"] for im in pooled["images"] if im["id"] not in held]
    train_p, test_p = Path(out_dir) / "train.json", Path(out_dir) / "test.json"
    save_json_atomic(subset_coco(pooled, train_ids), train_p)
    save_json_atomic(subset_coco(pooled, test_ids), test_p)
    return train_p, test_p
