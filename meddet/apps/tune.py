"""`tune`: score and NMS thresholds swept on the validation split, without retraining."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from meddet.apps.common import load_results, split_or_default
from meddet.apps.predictors import build_predictor, predict_dataset, records_results
from meddet.config import CfgNode
from meddet.config.tuned import TUNE_DIR, TUNE_ENSEMBLE_DIR
from meddet.data.coco import DatasetSplit

if TYPE_CHECKING:
    from meddet.evaluation.tune import TuneResult


def tune_model(
    cfg: CfgNode,
    gt: str | os.PathLike | DatasetSplit | None = None,
    out_dir: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    ensemble: Sequence[str | os.PathLike] = (),
) -> TuneResult:
    """Sweep score and NMS thresholds on the validation split (`gt`: a COCO file or a DatasetSplit;
    default DATASETS.VAL[0]) without retraining; writes tune.csv and tuned_config.yaml (default in
    OUTPUT_DIR/tune, with `ensemble` members OUTPUT_DIR/tune_ensemble), which predict / evaluate /
    export of the run then use (see `meddet.config.tuned.load_run_config`, meddet.hub)."""
    from meddet.evaluation.tune import tune, tune_kwargs

    split = split_or_default(cfg, gt, cfg.DATASETS.VAL, "tune", "DATASETS.VAL")
    out_dir = Path(out_dir or Path(cfg.OUTPUT_DIR) / (TUNE_ENSEMBLE_DIR if ensemble else TUNE_DIR))
    if predictions:
        preds = load_results(predictions)
    else:
        # Permissive settings, so the sweep can only tighten them (see meddet.evaluation.tune).
        nms = max(max(cfg.EVAL.TUNE_NMS_THRESHOLDS), 0.7)
        loose_opts = ["MODEL.ROI_HEADS.NMS_THRESH_TEST", nms, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01]
        loose = cfg.clone()
        loose.defrost()
        loose.merge_from_list(loose_opts)
        if ensemble:
            predictor = build_predictor(loose, ensemble, class_names=split.class_names, member_opts=loose_opts)
            preds = records_results(predictor, split)
        else:
            preds = predict_dataset(loose, split)
    return tune(
        split.coco,
        preds,
        out_dir,
        gt_source=split.path,
        predictions_source=predictions or f"predictions of the model on {split.path}",
        **tune_kwargs(cfg),
    )
