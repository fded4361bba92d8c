"""Patient-level train/val/test splits of a COCO dataset.

No patient ever lands in two splits: images are grouped by ``patient_id`` (an image without one
is its own group), the groups are shuffled with the seed, and each group goes to the split whose
cumulative image-count target its midpoint falls in, so the fractions come out close to the
requested ones in images, not just in patients.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from meddet.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["SPLIT_NAMES", "check_fractions", "patient_key", "split_by_patient", "subset_coco"]

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


def split_by_patient(
    images: Sequence[dict[str, Any]],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    names: Sequence[str] = SPLIT_NAMES,
) -> dict[str, list[Any]]:
    """Assign COCO image records to splits by patient; returns ``{split name: [image ids]}``
    (ids in the input's order).

    Deterministic: the same images (in any order), fractions and seed give the same split.
    A split with a fraction > 0 is never left empty while another split has two or more groups.
    """
    fr = check_fractions(fractions, names)
    groups: dict[str, list[Any]] = {}
    for im in images:
        groups.setdefault(patient_key(im), []).append(im["id"])
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
    # Small datasets: a split asked for but left empty takes the last group of the split with
    # the most groups, as long as that one keeps at least one.
    for n, f in zip(names, fr):
        if f > 0 and not assigned[n]:
            donor = max(names, key=lambda m: len(assigned[m]))
            if len(assigned[donor]) > 1:
                assigned[n].append(assigned[donor].pop())
            else:
                logger.warning(
                    "split %r is empty: %d patient group(s) are too few for fractions %s", n, len(keys), list(fr)
                )
    position = {im["id"]: pos for pos, im in enumerate(images)}
    return {n: sorted((i for key in assigned[n] for i in groups[key]), key=position.__getitem__) for n in names}


def subset_coco(coco: dict[str, Any], image_ids: Sequence[Any]) -> dict[str, Any]:
    """A COCO dict with only the given images and their annotations (same categories, info)."""
    keep = set(image_ids)
    sub = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    sub["images"] = [im for im in coco["images"] if im["id"] in keep]
    sub["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    return sub
