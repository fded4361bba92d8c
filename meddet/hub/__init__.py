"""Model bundles: a self-contained folder (weights, config.yaml, meddet.json, README.md model card)
made from a run, loaded locally or from the Hugging Face Hub, and pushed there.

>>> export_bundle("output/run", "bundle/")            # -c export
>>> push_bundle("bundle/", "org/mammo-detector")       # -c push (token from env / `hf auth login`)
>>> p = load_predictor("org/mammo-detector")           # also Predictor.from_pretrained(...)
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from meddet.errors import ConfigError, DataError, ModelError

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_FORMAT",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "META_NAME",
    "CARD_NAME",
    "export_bundle",
    "bundle_metadata",
    "read_bundle",
    "load_predictor",
    "resolve_bundle",
    "push_bundle",
]

BUNDLE_FORMAT = 1
WEIGHTS_NAME = "model.pth"
CONFIG_NAME = "config.yaml"
META_NAME = "meddet.json"
CARD_NAME = "README.md"
BUNDLE_FILES = (WEIGHTS_NAME, CONFIG_NAME, META_NAME, CARD_NAME)


def _hex(bgr: Sequence[int]) -> str:
    b, g, r = (int(v) for v in bgr)
    return f"#{r:02x}{g:02x}{b:02x}"


def _training_summary(cfg) -> dict[str, Any]:
    """Images, annotations and per-class annotation counts of the training COCO files (when present)."""
    files = []
    n_images = n_anns = 0
    per_class: dict[str, int] = {}
    for path in cfg.DATASETS.TRAIN:
        p = Path(path)
        files.append(p.name)
        if not p.is_file():
            logger.warning("training COCO %s not found; the bundle's training summary leaves it out", p)
            continue
        try:
            coco = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{p}: cannot read the training COCO JSON for the model card ({e})") from None
        names = {c["id"]: c["name"] for c in coco.get("categories", [])}
        n_images += len(coco.get("images", []))
        for a in coco.get("annotations", []):
            n_anns += 1
            name = names.get(a.get("category_id"), str(a.get("category_id")))
            per_class[name] = per_class.get(name, 0) + 1
    return {"datasets": files, "images": n_images, "annotations": n_anns, "annotations_per_class": per_class}


def _read_metrics(run_dir: Path) -> dict[str, float]:
    path = run_dir / "eval" / "metrics.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); expected the evaluator's metrics") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of metrics, found {type(data).__name__}")
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def bundle_metadata(cfg, metrics: dict[str, float] | None = None, engine: str | None = None) -> dict[str, Any]:
    """The content of meddet.json for a run's config (classes, engine, preprocessing, thresholds, data, metrics).

    ``engine``: the engine of the bundle's weights (export_bundle passes the checkpoint's); default the
    config's MODEL.ENGINE resolved here."""
    from meddet.modeling.build import select_engine
    from meddet.tasks import class_thresholds
    from meddet.visualize import class_color

    k = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    names = list(cfg.DATASETS.CLASS_NAMES) or [f"class_{i}" for i in range(k)]
    if len(names) != k:
        raise ConfigError(f"DATASETS.CLASS_NAMES has {len(names)} names but MODEL.ROI_HEADS.NUM_CLASSES is {k}")
    thresholds = class_thresholds(cfg, k)
    d = cfg.DICOM
    return {
        "format": BUNDLE_FORMAT,
        "weights": WEIGHTS_NAME,
        "config": CONFIG_NAME,
        "engine": engine or select_engine(str(cfg.MODEL.ENGINE)),
        "architecture": {"meta": cfg.MODEL.META_ARCHITECTURE, "depth": int(cfg.MODEL.RESNETS.DEPTH)},
        "classes": [
            {"index": i, "name": n, "color": _hex(class_color(i)), "score_thresh": float(thresholds[i])}
            for i, n in enumerate(names)
        ],
        "input": {
            "format": cfg.INPUT.FORMAT,
            "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
            "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
            "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
            "dicom": {
                "bit_depth": int(d.BIT_DEPTH),
                "apply_voi": bool(d.APPLY_VOI),
                "window_index": int(d.WINDOW_INDEX),
                "normalize": str(d.NORMALIZE),
                "percentiles": [float(v) for v in d.PERCENTILES],
                "fixed_range": [float(v) for v in d.FIXED_RANGE],
                "gamma": float(d.GAMMA),
            },
            # Empty: the model predicts on whole images; else it was trained on tiles and predicts by
            # slicing with these settings (load_predictor applies them to TILING.*).
            "tiling": tiling_metadata(cfg),
        },
        "thresholds": {
            "score_thresh": float(cfg.TEST.SCORE_THRESH),
            "class_score_thresh": [float(v) for v in cfg.TEST.CLASS_SCORE_THRESH],
            "model_score_thresh": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
            "nms_thresh": float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST),
            "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE),
        },
        "training_data": _training_summary(cfg),
        "metrics": dict(metrics or {}),
    }


_TILING_KEYS = {  # meddet.json "tiling" field -> TILING key
    "tile_size": "SIZE", "overlap": "OVERLAP", "min_visible": "MIN_VISIBLE", "batch_size": "BATCH_SIZE",
    "full_image_pass": "FULL_IMAGE_PASS", "merge": "MERGE", "match_metric": "MATCH_METRIC",
    "match_thresh": "MATCH_THRESH", "class_agnostic": "CLASS_AGNOSTIC", "soft_nms_sigma": "SOFT_NMS_SIGMA",
}


def tiling_metadata(cfg) -> dict[str, Any]:
    """The bundle's "tiling" field: {} for whole-image models, else the sliced-inference settings."""
    if not cfg.TILING.ENABLED:
        return {}
    return {name: cfg.TILING[key] for name, key in _TILING_KEYS.items()}


def apply_tiling_metadata(cfg, tiling: dict[str, Any], source: str) -> None:
    """Set TILING.* from a bundle's "tiling" field (an empty field leaves whole-image prediction)."""
    if not tiling:
        cfg.TILING.ENABLED = False
        return
    unknown = sorted(set(tiling) - set(_TILING_KEYS))
    if unknown:
        raise DataError(f"{source}: input.tiling has unknown fields {unknown}; expected {sorted(_TILING_KEYS)}")
    cfg.TILING.ENABLED = True
    for name, value in tiling.items():
        key = _TILING_KEYS[name]
        expected = type(cfg.TILING[key])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected):
            raise DataError(f"{source}: input.tiling.{name} is {value!r}; expected {expected.__name__}")
        cfg.TILING[key] = value


def _tiling_text(tiling: dict[str, Any]) -> str:
    if not tiling:
        return "Predicts on the whole image."
    return (f"Trained on {tiling['tile_size']}-pixel tiles; predicts any image size by sliced inference "
            f"({tiling['overlap']:.0%} overlap, tiles merged by {tiling['merge']} with "
            f"{tiling['match_metric'].upper()} >= {tiling['match_thresh']}).")


def _model_card(meta: dict[str, Any], repo_name: str) -> str:
    names = [c["name"] for c in meta["classes"]]
    header = [
        "---",
        "library_name: meddet",
        "pipeline_tag: object-detection",
        "license: other",
        "tags:",
        "- object-detection",
        "- medical-imaging",
        "- mammography",
        f"- {meta['engine']}",
        "---",
        "",
    ]
    body = [
        f"# {repo_name}",
        "",
        f"Object detector ({meta['architecture']['meta']}, ResNet-{meta['architecture']['depth']}, "
        f"{meta['engine']} engine) trained with [meddet](https://github.com/) on medical images.",
        "",
        "> **Not a medical device.** This model is for research only. It has not been cleared or approved "
        "by any regulator and must not be used for diagnosis or treatment decisions.",
        "",
        "## Intended use",
        "",
        "Research on computer-aided detection in mammograms (or the images it was trained on): it proposes "
        "boxes with classes and scores for a human reader to review.",
        "",
        "## Use",
        "",
        "```python",
        "from meddet.inference import Predictor",
        f"p = Predictor.from_pretrained({repo_name!r})",
        'out = p("image.dcm")  # boxes (x1, y1, x2, y2 in pixels), scores, classes, labels',
        "```",
        "",
        "## Classes",
        "",
        "| index | name | colour | score threshold |",
        "|---|---|---|---|",
        *[f"| {c['index']} | {c['name']} | `{c['color']}` | {c['score_thresh']:.3f} |" for c in meta["classes"]],
        "",
        "## Metrics",
        "",
    ]
    if meta["metrics"]:
        body += ["| metric | value |", "|---|---|"]
        body += [f"| {k} | {v:.4f} |" for k, v in sorted(meta["metrics"].items())]
    else:
        body += ["No evaluation was run on this model (no `eval/metrics.json` in its run folder)."]
    td = meta["training_data"]
    per_class = ", ".join(f"{n}: {td['annotations_per_class'].get(n, 0)}" for n in names)
    dicom = meta["input"]["dicom"]
    body += [
        "",
        "## Training data",
        "",
        f"{td['images']} images, {td['annotations']} annotations "
        f"({per_class}); "
        f"files: {', '.join(td['datasets']) or 'unknown'}.",
        "",
        "## Input preprocessing",
        "",
        f"DICOM: {dicom['normalize']} normalization, gamma {dicom['gamma']}, {dicom['bit_depth']}-bit, "
        f"VOI {'applied' if dicom['apply_voi'] else 'ignored'}. Shortest edge resized to "
        f"{meta['input']['min_size_test']} (longest at most {meta['input']['max_size_test']}).",
        "",
        _tiling_text(meta["input"].get("tiling", {})),
        "",
        "## Limitations",
        "",
        "- Performance outside the training distribution (other vendors, sites, populations, views) is unknown.",
        "- Scores are not calibrated probabilities; thresholds were chosen on the data listed above.",
        "- A missed finding is possible at any threshold: never use the output to rule out disease.",
        "",
    ]
    return "\n".join(header + body)


def export_bundle(run: str | os.PathLike, out_dir: str | os.PathLike, weights: str | os.PathLike | None = None,
                  overwrite: bool = False) -> Path:
    """Turn a run folder (config.yaml, model_final.pth / model_best.pth, eval/metrics.json) into a bundle.

    `weights` defaults to the run's model_final.pth, else model_best.pth. Returns the bundle folder.
    """
    from meddet.config import load_config, save_config
    from meddet.modeling.checkpoint import _read, architecture_of, engine_of

    run = Path(run)
    cfg_path = run / CONFIG_NAME
    if not cfg_path.is_file():
        raise DataError(f"{cfg_path}: run config not found (expected a training run folder with config.yaml)")
    cfg = load_config(cfg_path)
    if weights is None:
        for name in ("model_final.pth", "model_best.pth"):
            if (run / name).is_file():
                weights = run / name
                break
        else:
            raise DataError(f"{run}: no model_final.pth or model_best.pth (expected a finished training run)")
    weights = Path(weights)
    state = _read(weights)  # raises ModelError with the file name when unreadable
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: folder exists and is not empty (pass overwrite=True / --overwrite)")
        for name in BUNDLE_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    # Only the model weights travel (optimizer/scheduler state are of no use to a user and large), with the
    # checkpoint's engine and architecture: the weights always load into the model that made them.
    model_state = state.get("model", state)
    saved_meta = dict(state.get("meddet") or {})
    engine = engine_of(state)
    if engine is None:
        from meddet.modeling.build import select_engine

        engine = select_engine(str(cfg.MODEL.ENGINE))
        logger.warning("%s: names no engine and its parameter names fit none; the bundle says %s", weights, engine)
    weights_meta = {
        "engine": engine,
        "num_classes": int(saved_meta.get("num_classes") or cfg.MODEL.ROI_HEADS.NUM_CLASSES),
        "architecture": dict(saved_meta.get("architecture") or architecture_of(cfg)),
    }
    if saved_meta.get("class_names"):
        weights_meta["class_names"] = list(saved_meta["class_names"])
    torch.save({"model": model_state, "meddet": weights_meta}, out / WEIGHTS_NAME)
    meta = bundle_metadata(cfg, _read_metrics(run), engine=engine)
    bundle_cfg = cfg.clone()
    bundle_cfg.defrost()
    bundle_cfg.MODEL.ENGINE = engine
    bundle_cfg.MODEL.WEIGHTS = ""
    bundle_cfg.MODEL.DEVICE = "auto"
    bundle_cfg.OUTPUT_DIR = "./output"
    bundle_cfg.DATASETS.CLASS_NAMES = [c["name"] for c in meta["classes"]]
    save_config(bundle_cfg, out / CONFIG_NAME)
    (out / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / CARD_NAME).write_text(_model_card(meta, out.resolve().name), encoding="utf-8")
    logger.info("exported %s (weights %s) to bundle %s", run, weights.name, out)
    return out


def read_bundle(folder: str | os.PathLike) -> dict[str, Any]:
    """meddet.json of a bundle folder, checked for the files a prediction needs."""
    folder = Path(folder)
    for name in (WEIGHTS_NAME, CONFIG_NAME, META_NAME):
        if not (folder / name).is_file():
            raise DataError(f"{folder}: not a meddet bundle ({name} missing; expected {', '.join(BUNDLE_FILES)})")
    try:
        meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{folder / META_NAME}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise DataError(
            f"{folder / META_NAME}: bundle format {meta.get('format') if isinstance(meta, dict) else meta!r}; "
            f"expected {BUNDLE_FORMAT}"
        )
    return meta


def resolve_bundle(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> Path:
    """A local bundle folder as is; otherwise a Hub repo id downloaded through huggingface_hub's cache
    (HF_HUB_OFFLINE=1 loads from the cache without the network)."""
    local = Path(path_or_repo_id)
    if local.is_dir():
        return local
    repo_id = str(path_or_repo_id)
    if local.exists() or repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise DataError(
            f"{repo_id}: not a bundle folder and not a Hugging Face repo id (expected a folder or ORG/NAME)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, \
        RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                      allow_patterns=list(BUNDLE_FILES)))
    except RepositoryNotFoundError:
        raise ModelError(f"{repo_id}: Hugging Face repo not found (or private without a token)") from None
    except RevisionNotFoundError:
        raise ModelError(f"{repo_id}: revision {revision!r} not found on the Hub") from None
    except LocalEntryNotFoundError as e:
        raise ModelError(f"{repo_id}: not in the local Hugging Face cache and the Hub cannot be reached ({e})") from None
    except HfHubHTTPError as e:
        raise ModelError(f"{repo_id}: download from the Hugging Face Hub failed ({e})") from None


def load_predictor(path_or_repo_id: str | os.PathLike, revision: str | None = None, device: str | None = None,
                   cache_dir: str | os.PathLike | None = None, token: str | bool | None = None):
    """A Predictor from a bundle folder or a Hub repo id; `device` overrides MODEL.DEVICE (default auto)."""
    from meddet.config import load_config
    from meddet.inference.predictor import Predictor

    folder = resolve_bundle(path_or_repo_id, revision=revision, cache_dir=cache_dir, token=token)
    meta = read_bundle(folder)
    cfg = load_config(folder / CONFIG_NAME)
    apply_tiling_metadata(cfg, meta.get("input", {}).get("tiling", {}), str(folder / META_NAME))
    if device:
        cfg.MODEL.DEVICE = device
    predictor = Predictor(cfg, weights=folder / WEIGHTS_NAME, class_names=[c["name"] for c in meta["classes"]])
    predictor.bundle = meta
    predictor.bundle_dir = folder
    return predictor


def push_bundle(folder: str | os.PathLike, repo_id: str, private: bool = False, revision: str | None = None,
                commit_message: str = "Upload meddet model bundle", token: str | bool | None = None) -> str:
    """Create (if needed) the Hub model repo and upload the bundle; returns the commit URL.

    The token comes from `token`, else HF_TOKEN or the user's `hf auth login` — never from a repository file.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    read_bundle(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision,
                                 commit_message=commit_message, allow_patterns=list(BUNDLE_FILES))
    except HfHubHTTPError as e:
        raise ModelError(f"{repo_id}: push to the Hugging Face Hub failed ({e})") from None
    logger.info("pushed bundle %s to %s", folder, repo_id)
    return str(getattr(info, "commit_url", info))
