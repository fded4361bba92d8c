"""`evaluate`: a model (plain, tiled or an ensemble) or another tool's results file scored on a split by the
whole evaluator (`meddet.evaluation`). The split is read once and handed down (`DatasetSplit`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from meddet.apps.common import check_out_dir, load_results, load_split, split_or_default
from meddet.apps.predictors import build_predictor, predict_dataset, records_results
from meddet.apps.report import run_sections
from meddet.data.coco import DatasetSplit, save_json_atomic

if TYPE_CHECKING:
    import pandas as pd

    from meddet.config import CfgNode
    from meddet.inference.base import DetectorLike

HEADLINE_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "prf1/precision", "prf1/recall", "prf1/F1")


def evaluate_predictions(
    cfg: CfgNode,
    gt: str | os.PathLike | DatasetSplit,
    predictions: list[dict] | str | os.PathLike,
    out_dir: str | os.PathLike,
    extra_sections: Sequence[tuple[str, str]] = (),
    predictions_source: str | os.PathLike | None = None,
    views: Sequence[str] | None = None,
) -> dict:
    """Score COCO-results predictions (a list or a JSON file, from any detector) against a split (a COCO
    file or a loaded DatasetSplit): every view of the evaluator (COCO AP, per-class table, P/R/F1,
    confusion, curves, FROC, image-level ROC, bootstrap CIs, error galleries, reports; `views`: only
    those, see `meddet.evaluation.run_evaluation`) under `out_dir`. Errors name the split's file and the
    predictions' file (`predictions_source`: the file a list was saved to). Imports no torch (unless
    TEST.CLASS_SCORE_THRESH is set)."""
    from meddet.evaluation import evaluate, evaluation_kwargs

    split = load_split(cfg, gt)
    if not isinstance(predictions, list):
        predictions_source = predictions_source or predictions
        predictions = load_results(predictions)
    kwargs = evaluation_kwargs(cfg, views)
    if list(cfg.TEST.CLASS_SCORE_THRESH):  # per-class thresholds follow the ground truth's classes by name
        from meddet.inference.base import score_thresholds

        kwargs["score_thresh"] = score_thresholds(cfg, split.class_names).tolist()
    if kwargs["image_root"] is None:  # galleries find the images next to the COCO file
        kwargs["image_root"] = str(split.path.parent)
    return evaluate(
        split.coco,
        predictions,
        out_dir,
        extra_sections=extra_sections,
        gt_source=split.path,
        predictions_source=predictions_source,
        views=views,
        **kwargs,
    )


def evaluate_model(
    cfg: CfgNode,
    gt: str | os.PathLike | DatasetSplit | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = True,
    ensemble: Sequence[str | os.PathLike] = (),
    views: Sequence[str] | None = None,
) -> dict:
    """Predict on a split (`gt`: a COCO file or a DatasetSplit; default DATASETS.TEST[0]) with the
    configured model (or an ensemble of it and `ensemble` members) and run the whole evaluator on it
    (`views`: only those views, see `meddet.evaluation.run_evaluation`).

    A model trained on tiles (TILING.ENABLED) is evaluated at both levels: tile level on the split cut
    into tiles (`out_dir/tiles/`, raw per-tile predictions) and whole image on predictions merged by
    sliced inference (`out_dir/`); the returned dict holds the whole-image metrics plus every tile-level
    one prefixed ``tiles/``, and `out_dir/hierarchical.csv` puts the headline metrics side by side."""
    from meddet.inference import EnsemblePredictor

    split = split_or_default(cfg, gt, cfg.DATASETS.TEST, "evaluate", "DATASETS.TEST")
    out_dir = Path(out_dir or Path(cfg.OUTPUT_DIR) / "eval")
    check_out_dir(out_dir, ["metrics.json"], overwrite)
    eval_cfg = cfg
    predictor = build_predictor(cfg, ensemble, class_names=split.class_names)
    if isinstance(predictor, EnsemblePredictor):  # `ensemble` members given
        preds = records_results(predictor, split)
        eval_cfg = predictor.cfg  # thresholds restated for the ensemble's (the ground truth's) classes
        model = predictor.members[0].model  # the configured model, summarised in the report
    else:
        preds = predict_dataset(cfg, split, predictor)
        model = predictor.model
    sections = run_sections(cfg, model)
    tile_metrics: dict = {}
    if cfg.TILING.ENABLED and not ensemble:
        tile_metrics = evaluate_tiles(cfg, split, out_dir / "tiles")
        sections.append(("Tile-level evaluation", _tile_section(tile_metrics)))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json_atomic(preds, out_dir / "coco_instances_results.json")
    metrics = evaluate_predictions(
        eval_cfg,
        split,
        preds,
        out_dir,
        extra_sections=sections,
        predictions_source=out_dir / "coco_instances_results.json",
        views=views,
    )
    if tile_metrics:
        table = hierarchical_table(tile_metrics, metrics)
        table.to_csv(out_dir / "hierarchical.csv", index=False)
        metrics = {**metrics, **{f"tiles/{k}": v for k, v in tile_metrics.items()}}
    return metrics


def evaluate_predictor(
    predictor: DetectorLike, gt: str | os.PathLike | DatasetSplit, out_dir: str | os.PathLike, overwrite: bool = True
) -> dict:
    """The whole evaluator on any predictor (a :class:`~meddet.inference.base.DetectorLike`: a
    Predictor, a tiled one, an ensemble, a loaded bundle) called on each image of a split; thresholds
    and EVAL.* from ``predictor.cfg``. Writes what `evaluate_model` writes (no run sections)."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, ["metrics.json"], overwrite)
    split = load_split(predictor.cfg, gt)
    preds = records_results(predictor, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json_atomic(preds, out_dir / "coco_instances_results.json")
    return evaluate_predictions(predictor.cfg, split, preds, out_dir)


def evaluate_tiles(cfg: CfgNode, gt: str | os.PathLike | DatasetSplit, out_dir: str | os.PathLike) -> dict:
    """Tile-level evaluation: the split cut into TILING.SIZE tiles (every tile, no filtering or
    undersampling; boxes clipped by TILING.MIN_VISIBLE) written under `out_dir/data`, the model run on
    each tile as it was trained, and the whole evaluator on the result under `out_dir`."""
    from meddet.data.dataset import dicom_kwargs
    from meddet.data.tiling import TilingParams, write_tile_dataset

    split = load_split(cfg, gt)
    out_dir = Path(out_dir)
    params = TilingParams.from_cfg(cfg, split.class_names).for_evaluation()
    data_dir = out_dir / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)  # our own derived files, remade from the split on every evaluation
    tile_json = write_tile_dataset(
        split.path,
        data_dir,
        params,
        image_root=cfg.DATASETS.IMAGE_ROOT,
        dicom_kwargs=dicom_kwargs(cfg),
        coco=split.coco,
    )
    whole = cfg.clone()
    whole.defrost()
    whole.TILING.ENABLED = False  # each tile goes through the model as a whole image
    whole.DATASETS.IMAGE_ROOT = ""
    tiles = load_split(whole, tile_json)
    preds = predict_dataset(whole, tiles)
    save_json_atomic(preds, out_dir / "coco_instances_results.json")
    return evaluate_predictions(
        whole, tiles, preds, out_dir, predictions_source=out_dir / "coco_instances_results.json"
    )


def hierarchical_table(tile_metrics: dict, image_metrics: dict) -> pd.DataFrame:
    """Headline metrics at tile level and whole-image level side by side (pandas DataFrame):
    COCO AP, P/R/F1 at the operating point, and per-class AP50, precision and recall."""
    import pandas as pd

    per_class = sorted(k for k in image_metrics if k.startswith(("bbox/AP50-", "prf1/precision-", "prf1/recall-")))
    rows = [
        {
            "metric": k,
            "tile": float(tile_metrics.get(k, float("nan"))),
            "whole_image": float(image_metrics.get(k, float("nan"))),
        }
        for k in list(HEADLINE_KEYS) + per_class
    ]
    return pd.DataFrame(rows)


def _tile_section(tile_metrics: dict) -> str:
    from meddet.evaluation import format_summary

    return (
        "The same model on every tile of this split (boxes clipped to tiles), before merging; "
        "full tile-level report in `tiles/report.md`, both levels side by side in `hierarchical.csv`.\n\n"
        + format_summary(tile_metrics)
    )
