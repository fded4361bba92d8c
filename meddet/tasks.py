"""Whole tasks behind `detectron.py -c evaluate|predict` (the CLI stays a thin argument parser).

Importing this module imports neither torch nor cv2: `-c evaluate --predictions` scores a results file
without them. So the modules that import them (meddet.inference, .engine, .modeling, .hub, .data.dataset,
.visualize, meddet.evaluation's views) are imported inside the functions that need them; the light ones
(meddet.config, meddet.data.coco, meddet.errors) at the top."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meddet.config import load_config
from meddet.config.tuned import (  # noqa: F401  (re-exported: meddet.tasks names of the tuned-config contract)
    TUNE_DIR,
    TUNE_ENSEMBLE_DIR,
    TUNED_CONFIG,
    apply_tuned,
    load_run_config,
    tuned_config_path,
)
from meddet.data.coco import load_coco, save_json_atomic
from meddet.errors import ConfigError, DataError, MeddetError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"}


def resolve_weights(cfg) -> str:
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


def _check_out_dir(out_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{out_dir} already holds {', '.join(existing)}; pass --overwrite to replace, or choose another --output"
        )


def _load_results(path: str | os.PathLike) -> list[dict]:
    """A COCO-results JSON file ([{image_id, category_id, bbox, score}, ...]), checked."""
    from meddet.evaluation.matching import load_predictions

    p = Path(path)
    predictions = load_predictions(p)
    for i, d in enumerate(predictions):
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]
        if missing:
            raise DataError(f"{p}: entry {i} lacks {missing} (COCO results format expected)")
    return predictions


def evaluate_predictions(
    cfg,
    gt_path: str | os.PathLike,
    predictions: list[dict] | str | os.PathLike,
    out_dir: str | os.PathLike,
    extra_sections=(),
    predictions_source: str | os.PathLike | None = None,
    views=None,
) -> dict:
    """Score COCO-results predictions (a list or a JSON file, from any detector) against a COCO file:
    every view of the evaluator (COCO AP, per-class table, P/R/F1, confusion, curves, FROC, image-level ROC,
    bootstrap CIs, error galleries, reports; `views`: only those, see `meddet.evaluation.run_evaluation`)
    under `out_dir`. Errors name `gt_path` and the predictions' file (`predictions_source`: the file a list
    was saved to). Imports no torch (unless TEST.CLASS_SCORE_THRESH is set)."""
    from meddet.evaluation import evaluate, evaluation_kwargs

    gt = load_coco(gt_path)
    if not isinstance(predictions, list):
        predictions_source = predictions_source or predictions
        predictions = _load_results(predictions)
    kwargs = evaluation_kwargs(cfg, views)
    if list(cfg.TEST.CLASS_SCORE_THRESH):  # per-class thresholds follow the ground truth's classes by name
        from meddet.inference.base import score_thresholds

        names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
        kwargs["score_thresh"] = score_thresholds(cfg, names).tolist()
    if kwargs["image_root"] is None:  # galleries find the images next to the COCO file
        kwargs["image_root"] = str(Path(gt_path).parent)
    return evaluate(
        gt,
        predictions,
        out_dir,
        extra_sections=extra_sections,
        gt_source=gt_path,
        predictions_source=predictions_source,
        views=views,
        **kwargs,
    )


def predict_dataset(cfg, gt_path: str | os.PathLike, predictor=None) -> list[dict]:
    """COCO results of the configured model on every image of a COCO file (whole images through the
    test loader; a model trained on tiles predicts each image by slicing). `predictor`: the configured
    model's Predictor when the caller already built it (with the file's classes), else built here."""
    from meddet.data.dataset import build_test_loader
    from meddet.inference import Predictor, inference_on_dataset

    gt = load_coco(gt_path)
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    if predictor is None:
        predictor = Predictor(cfg, weights=resolve_weights(cfg), class_names=[c["name"] for c in cats])
    if predictor.tiled:
        return _records_results(predictor, gt_path, cfg)
    loader, _, _ = build_test_loader(cfg, str(gt_path))
    return inference_on_dataset(predictor.inference_model, loader, [c["id"] for c in cats], desc="predict")


def _member_predictor(spec: str | os.PathLike, device: str, opts: Sequence = ()):
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
    cfg,
    ensemble: Sequence[str | os.PathLike] = (),
    class_names: Sequence[str] | None = None,
    member_opts: Sequence = (),
):
    """The configured model's Predictor or, with `ensemble` members (see `_member_predictor`), an
    EnsemblePredictor of it and them fused by ENSEMBLE.*; members' classes are matched by name to
    `class_names` (default: the configured model's classes, then each member's new ones in order).
    `member_opts` (KEY VALUE) are merged into every added member's config. Either way a
    :class:`~meddet.inference.base.DetectorLike`."""
    from meddet.inference import EnsemblePredictor, Predictor

    primary = Predictor(cfg, weights=resolve_weights(cfg), class_names=class_names if not ensemble else None)
    if not ensemble:
        return primary
    members = [primary] + [_member_predictor(m, cfg.MODEL.DEVICE, member_opts) for m in ensemble]
    names = list(class_names or [])
    if not names:
        for m in members:
            names.extend(n for n in m.class_names if n not in names)
    return EnsemblePredictor(members, names, cfg)


def _records_results(predictor, gt_path: str | os.PathLike, cfg) -> list[dict]:
    """COCO results of any predictor (sliced, ensemble) called on each whole image of a COCO file; the
    predictor's classes are matched to the file's categories by name."""
    from meddet.data.dataset import load_records
    from meddet.inference import inference_on_records

    gt = load_coco(gt_path)
    ids = {c["name"]: c["id"] for c in gt["categories"]}
    unknown = [n for n in predictor.class_names if n not in ids]
    if unknown:
        raise DataError(
            f"{gt_path}: the model's classes {unknown} are not among the categories {sorted(ids)}; "
            "expected every predicted class to be a category of the ground truth"
        )
    records, _ = load_records([str(gt_path)], cfg.DATASETS.IMAGE_ROOT)
    return inference_on_records(predictor, records, [ids[n] for n in predictor.class_names])


def _gt_class_names(gt_path: str | os.PathLike) -> list[str]:
    return [c["name"] for c in sorted(load_coco(gt_path)["categories"], key=lambda c: c["id"])]


def tune_model(
    cfg,
    gt_path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    ensemble: Sequence[str | os.PathLike] = (),
):
    """Sweep score and NMS thresholds on the validation split without retraining; writes tune.csv and
    tuned_config.yaml (default in OUTPUT_DIR/tune, with `ensemble` members OUTPUT_DIR/tune_ensemble),
    which predict / evaluate / export of the run then use (see `load_run_config`, meddet.hub)."""
    from meddet.evaluation import tune, tune_kwargs

    gt_path = gt_path or (cfg.DATASETS.VAL[0] if cfg.DATASETS.VAL else None)
    if not gt_path:
        raise ConfigError("nothing to tune on: set DATASETS.VAL or pass --gt COCO.json")
    out_dir = Path(out_dir or Path(cfg.OUTPUT_DIR) / (TUNE_ENSEMBLE_DIR if ensemble else TUNE_DIR))
    if predictions:
        preds = _load_results(predictions)
    else:
        # Permissive settings, so the sweep can only tighten them (see meddet.evaluation.tune).
        nms = max(max(cfg.EVAL.TUNE_NMS_THRESHOLDS), 0.7)
        loose_opts = ["MODEL.ROI_HEADS.NMS_THRESH_TEST", nms, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01]
        loose = cfg.clone()
        loose.defrost()
        loose.merge_from_list(loose_opts)
        if ensemble:
            predictor = build_predictor(loose, ensemble, class_names=_gt_class_names(gt_path), member_opts=loose_opts)
            preds = _records_results(predictor, gt_path, loose)
        else:
            preds = predict_dataset(loose, gt_path)
    result = tune(
        load_coco(gt_path),
        preds,
        out_dir,
        gt_source=gt_path,
        predictions_source=predictions or f"predictions of the model on {gt_path}",
        **tune_kwargs(cfg),
    )
    return result


def evaluate_model(
    cfg,
    gt_path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = True,
    ensemble: Sequence[str | os.PathLike] = (),
    views=None,
) -> dict:
    """Predict on a COCO split with the configured model (or an ensemble of it and `ensemble` members)
    and run the whole evaluator on it (`views`: only those views, see `meddet.evaluation.run_evaluation`).

    A model trained on tiles (TILING.ENABLED) is evaluated at both levels: tile level on the split cut
    into tiles (`out_dir/tiles/`, raw per-tile predictions) and whole image on predictions merged by
    sliced inference (`out_dir/`); the returned dict holds the whole-image metrics plus every tile-level
    one prefixed ``tiles/``, and `out_dir/hierarchical.csv` puts the headline metrics side by side."""
    gt_path = gt_path or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if not gt_path:
        raise ConfigError("nothing to evaluate on: set DATASETS.TEST or pass --gt COCO.json")
    out_dir = Path(out_dir or Path(cfg.OUTPUT_DIR) / "eval")
    _check_out_dir(out_dir, ["metrics.json"], overwrite)
    eval_cfg = cfg
    predictor = build_predictor(cfg, ensemble, class_names=_gt_class_names(gt_path))
    if ensemble:
        preds = _records_results(predictor, gt_path, cfg)
        eval_cfg = predictor.cfg  # thresholds restated for the ensemble's (the ground truth's) classes
        model = predictor.members[0].model  # the configured model, summarised in the report
    else:
        preds = predict_dataset(cfg, gt_path, predictor)
        model = predictor.model
    return _evaluate_and_write(
        cfg,
        eval_cfg,
        gt_path,
        preds,
        out_dir,
        tiles=bool(cfg.TILING.ENABLED and not ensemble),
        views=views,
        model=model,
    )


def evaluate_predictor(
    predictor, gt_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = True
) -> dict:
    """The whole evaluator on any predictor (a :class:`~meddet.inference.base.DetectorLike`: a
    Predictor, a tiled one, an ensemble, a loaded bundle) called on each image of a COCO file;
    thresholds and EVAL.* from ``predictor.cfg``. Writes what `evaluate_model` writes (no run sections)."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, ["metrics.json"], overwrite)
    preds = _records_results(predictor, gt_path, predictor.cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json_atomic(preds, out_dir / "coco_instances_results.json")
    return evaluate_predictions(predictor.cfg, gt_path, preds, out_dir)


def _evaluate_and_write(
    cfg, eval_cfg, gt_path, preds: list[dict], out_dir: Path, tiles: bool, views=None, model=None
) -> dict:
    sections = run_sections(cfg, model)
    tile_metrics: dict = {}
    if tiles:
        tile_metrics = evaluate_tiles(cfg, gt_path, out_dir / "tiles")
        sections.append(("Tile-level evaluation", _tile_section(tile_metrics)))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json_atomic(preds, out_dir / "coco_instances_results.json")
    metrics = evaluate_predictions(
        eval_cfg,
        gt_path,
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


def evaluate_tiles(cfg, gt_path: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Tile-level evaluation: the split cut into TILING.SIZE tiles (every tile, no filtering or
    undersampling; boxes clipped by TILING.MIN_VISIBLE) written under `out_dir/data`, the model run on
    each tile as it was trained, and the whole evaluator on the result under `out_dir`."""
    from meddet.data.dataset import dicom_kwargs
    from meddet.data.tiling import TilingParams, write_tile_dataset

    out_dir = Path(out_dir)
    names = _gt_class_names(gt_path)
    params = TilingParams.from_cfg(cfg, names).for_evaluation()
    data_dir = out_dir / "data"
    if data_dir.exists():
        import shutil

        shutil.rmtree(data_dir)  # our own derived files, remade from the split on every evaluation
    tile_json = write_tile_dataset(
        gt_path, data_dir, params, image_root=cfg.DATASETS.IMAGE_ROOT, dicom_kwargs=dicom_kwargs(cfg)
    )
    whole = cfg.clone()
    whole.defrost()
    whole.TILING.ENABLED = False  # each tile goes through the model as a whole image
    whole.DATASETS.IMAGE_ROOT = ""
    preds = predict_dataset(whole, tile_json)
    save_json_atomic(preds, out_dir / "coco_instances_results.json")
    return evaluate_predictions(
        whole, tile_json, preds, out_dir, predictions_source=out_dir / "coco_instances_results.json"
    )


HEADLINE_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "prf1/precision", "prf1/recall", "prf1/F1")


def hierarchical_table(tile_metrics: dict, image_metrics: dict):
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


def run_sections(cfg, model=None) -> list[tuple[str, str]]:
    """Report sections about the model and its training run: model summary (of `model`, the model that
    was evaluated; without one, of a model built from `cfg`), training diagnosis."""
    from meddet.modeling.summary import model_summary
    from meddet.training.diagnosis import diagnose, format_findings

    if model is None:
        from meddet.modeling import build_model

        model = build_model(cfg)
    sections = [("Model summary", str(model_summary(model, cfg)))]
    metrics = Path(cfg.OUTPUT_DIR) / "metrics.json"
    if metrics.is_file():
        sections.append(("Training diagnosis", format_findings(diagnose(metrics))))
    return sections


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    results_json: Path | None = None


def class_thresholds(cfg, classes: int | Sequence[str], override: float | None = None) -> np.ndarray:
    """Per-class score thresholds: `override`, else TEST.CLASS_SCORE_THRESH (from `-c tune`; matched
    to `classes` by name when given names, see meddet.inference.base.score_thresholds), else
    TEST.SCORE_THRESH for every class."""
    from meddet.inference.base import score_thresholds

    return score_thresholds(cfg, classes, override)


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders searched recursively for images (PNG, JPEG, TIFF, DICOM)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: input not found (expected an image, a DICOM file or a folder)")
    if not out:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return out


def predict(
    cfg,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    score_thresh: float | None = None,
    overwrite: bool = False,
    ensemble: Sequence[str | os.PathLike] = (),
) -> PredictReport:
    """Predict on images/DICOMs/folders; writes predictions.json (COCO results, each entry also naming its
    file and class), images.json (the images, categories and skipped files) and one annotated PNG per image.
    Models trained on tiles predict by slicing; `ensemble` adds members fused with the configured model
    (see `build_predictor`).

    A bad file is skipped and reported; the rest still run."""
    import cv2
    from tqdm import tqdm

    from meddet.visualize import draw_detections

    files = collect_inputs(inputs)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, ["predictions.json"], overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = build_predictor(cfg, ensemble)
    names = predictor.class_names
    thresh = class_thresholds(predictor.cfg, names, score_thresh)
    report = PredictReport()
    images, results, used = [], [], set()
    for image_id, f in enumerate(tqdm(files, desc="predict", dynamic_ncols=True, mininterval=2), start=1):
        try:
            image = predictor.read(f)
        except MeddetError as e:
            logger.error("skipped %s: %s", f, e)
            report.skipped.append((str(f), str(e)))
            continue
        det = predictor(image)
        keep = det["scores"] >= thresh[det["classes"]]
        stem = f.stem
        name, n = f"{stem}.png", 1
        while name in used:
            n += 1
            name = f"{stem}_{n}.png"
        used.add(name)
        drawn = draw_detections(image, det["boxes"][keep], det["scores"][keep], det["classes"][keep], names)
        if not cv2.imwrite(str(out_dir / name), drawn):
            raise DataError(f"{out_dir / name}: could not write the annotated PNG")
        report.written.append(out_dir / name)
        images.append(
            {
                "id": image_id,
                "file_name": str(f),
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "annotated": name,
            }
        )
        for (x1, y1, x2, y2), s, c in zip(det["boxes"][keep], det["scores"][keep], det["classes"][keep]):
            results.append(
                {
                    "image_id": image_id,
                    "file_name": str(f),
                    "category_id": int(c) + 1,
                    "category_name": names[int(c)],
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(s),
                }
            )
    report.results_json = out_dir / "predictions.json"
    save_json_atomic(results, report.results_json, indent=1)
    save_json_atomic(
        {
            "images": images,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
            "score_thresh": thresh.tolist(),
            "skipped": [{"file": f, "reason": r} for f, r in report.skipped],
        },
        out_dir / "images.json",
        indent=1,
    )
    return report
