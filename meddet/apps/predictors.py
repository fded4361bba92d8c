"""Building the model (one, or an ensemble) and running it on every image of a split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from meddet.apps.common import load_split, resolve_weights
from meddet.config import CfgNode, load_config
from meddet.data.coco import DatasetSplit
from meddet.errors import ConfigError, DataError

if TYPE_CHECKING:
    from meddet.inference import EnsemblePredictor, Predictor
    from meddet.inference.base import DetectorLike


def member_predictor(
    spec: str | os.PathLike[str], device: str, opts: Sequence[str] = ()
) -> Predictor | EnsemblePredictor:
    """One ensemble member: a run config YAML, a run folder (config.yaml), a bundle folder (meddet.json)
    or a Hugging Face repo id; `opts` (KEY VALUE) are merged into its config."""
    from meddet.hub import META_NAME, load_predictor
    from meddet.inference import Predictor

    p = Path(spec)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        member_cfg = load_config(p)
    elif p.is_dir() and (p / META_NAME).is_file():
        return load_predictor(p, device=device, opts=opts)
    elif p.is_dir() and (p / "config.yaml").is_file():
        member_cfg = load_config(p / "config.yaml")
    elif p.exists():
        raise ConfigError(
            f"{p}: not an ensemble member (expected a config YAML, a run folder with config.yaml "
            "or a model bundle folder with meddet.json)"
        )
    else:
        return load_predictor(str(spec), device=device, opts=opts)
    member_cfg.MODEL.DEVICE = device
    member_cfg.merge_from_list(list(opts))
    return Predictor(member_cfg, weights=resolve_weights(member_cfg))


def build_predictor(
    cfg: CfgNode,
    ensemble: Sequence[str | os.PathLike] = (),
    class_names: Sequence[str] | None = None,
    member_opts: Sequence[str] = (),
) -> Predictor | EnsemblePredictor:
    """The configured model's Predictor or, with `ensemble` members (see `member_predictor`), an
    EnsemblePredictor of it and them fused by ENSEMBLE.*; members' classes are matched by name to
    `class_names` (default: the configured model's classes, then each member's new ones in order).
    `member_opts` (KEY VALUE) are merged into every added member's config. Either way a
    :class:`~meddet.inference.base.DetectorLike`."""
    from meddet.inference import EnsemblePredictor, Predictor

    primary = Predictor(cfg, weights=resolve_weights(cfg), class_names=class_names if not ensemble else None)
    if not ensemble:
        return primary
    members = [primary] + [member_predictor(m, cfg.MODEL.DEVICE, member_opts) for m in ensemble]
    names = list(class_names or [])
    if not names:
        for m in members:
            names.extend(n for n in m.class_names if n not in names)
    return EnsemblePredictor(members, names, cfg)


def predict_dataset(
    cfg: CfgNode, gt: str | os.PathLike | DatasetSplit, predictor: Predictor | None = None
) -> list[dict]:
    """COCO results of the configured model on every image of a split (a COCO file or a loaded
    DatasetSplit; whole images through the test loader; a model trained on tiles predicts each image by
    slicing). `predictor`: the configured model's Predictor when the caller already built it (with the
    split's classes), else built here."""
    from meddet.data.dataset import build_test_loader
    from meddet.inference import Predictor, inference_on_dataset

    split = load_split(cfg, gt)
    if predictor is None:
        predictor = Predictor(cfg, weights=resolve_weights(cfg), class_names=split.class_names)
    if predictor.tiled:
        return records_results(predictor, split)
    loader, _, _ = build_test_loader(cfg, split)
    return inference_on_dataset(predictor.inference_model, loader, split.category_ids, desc="predict")


def records_results(predictor: DetectorLike, split: DatasetSplit) -> list[dict]:
    """COCO results of any predictor (sliced, ensemble) called on each whole image of a split; the
    predictor's classes are matched to the split's categories by name."""
    from meddet.inference import inference_on_records

    ids = dict(zip(split.class_names, split.category_ids))
    unknown = [n for n in predictor.class_names if n not in ids]
    if unknown:
        raise DataError(
            f"{split.path}: the model's classes {unknown} are not among the categories {sorted(ids)}; "
            "expected every predicted class to be a category of the ground truth"
        )
    return inference_on_records(predictor, split.records, [ids[n] for n in predictor.class_names])
