"""What the applications share: the model's weights, output folders, results files and the split they run on.

Importing the applications imports neither torch nor cv2 (`-c evaluate --predictions` scores a results file
without them): the modules that import them (meddet.inference, .training, .modeling, .hub, .data.dataset,
.visualize, meddet.evaluation's views) are imported inside the functions that need them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from meddet.data.coco import DatasetSplit
from meddet.errors import ConfigError, DataError

if TYPE_CHECKING:
    from meddet.config import CfgNode


def resolve_weights(cfg: CfgNode) -> str:
    """MODEL.WEIGHTS, else the run's model_final.pth, else its last checkpoint."""
    from meddet.training import last_checkpoint_path

    if cfg.MODEL.WEIGHTS:
        return cfg.MODEL.WEIGHTS
    final = Path(cfg.OUTPUT_DIR) / "model_final.pth"
    if final.is_file():
        return str(final)
    last = last_checkpoint_path(cfg.OUTPUT_DIR)
    if last is not None:
        return str(last)
    raise ConfigError(
        f"MODEL.WEIGHTS is empty and {cfg.OUTPUT_DIR} holds no model_final.pth or last_checkpoint; "
        "give MODEL.WEIGHTS path/to/model.pth"
    )


def check_out_dir(out_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    """Refuse to replace earlier outputs `names` in `out_dir` unless `overwrite`."""
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{out_dir} already holds {', '.join(existing)}; pass --overwrite to replace, or choose another --output"
        )


def load_results(path: str | os.PathLike) -> list[dict]:
    """A COCO-results JSON file ([{image_id, category_id, bbox, score}, ...]), checked."""
    from meddet.evaluation.matching import load_predictions

    p = Path(path)
    predictions = load_predictions(p)
    for i, d in enumerate(predictions):
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]
        if missing:
            raise DataError(f"{p}: entry {i} lacks {missing} (COCO results format expected)")
    return predictions


def load_split(cfg: CfgNode, gt: str | os.PathLike | DatasetSplit) -> DatasetSplit:
    """`gt` as a loaded split: a DatasetSplit as it is, a COCO file read once (images resolved by
    DATASETS.IMAGE_ROOT, boxes checked by DATASETS.STRICT_BOXES)."""
    if isinstance(gt, DatasetSplit):
        return gt
    return DatasetSplit.load(gt, cfg.DATASETS.IMAGE_ROOT, bool(cfg.DATASETS.STRICT_BOXES))


def split_or_default(
    cfg: CfgNode, gt: str | os.PathLike | DatasetSplit | None, datasets: Sequence[str], what: str, key: str
) -> DatasetSplit:
    """`gt` (a path or a split), else the first file of `datasets` (e.g. DATASETS.TEST), loaded once."""
    gt = gt or (datasets[0] if datasets else None)
    if not gt:
        raise ConfigError(f"nothing to {what} on: set {key} or pass --gt COCO.json")
    return load_split(cfg, gt)
