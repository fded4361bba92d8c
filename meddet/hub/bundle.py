"""Model bundles: a self-contained folder (weights, config.yaml, meddet.json, README.md model card)
made from a run, loaded locally or from the Hugging Face Hub (through meddet.hub.remote), and pushed there.

>>> export_bundle("output/run", "bundle/")            # -c export
>>> push_bundle("bundle/", "org/mammo-detector")       # -c push (token from env / `hf auth login`)
>>> p = load_predictor("org/mammo-detector")           # also from_pretrained("org/mammo-detector")
>>> export_ensemble(["output/cells", "output/clusters"], "bundle_ens/")   # -c export --run A --ensemble B
>>> save_predictor(predictor, "bundle/")                # any predictor (single, tiled, ensemble) as a bundle

A run's tuned thresholds (``tune/tuned_config.yaml`` from ``-c tune``) go into its bundle unless
``untuned``; meddet.json says which file they came from (``thresholds.tuned``).

An ensemble bundle is a bundle of bundles: each member a complete bundle in a sub-folder
(``member_0/``, ``member_1/``, ...), and at the top ``meddet.json`` (``"kind": "ensemble"``, the members,
the fusion settings, the ensemble's classes and thresholds), ``config.yaml`` (the ensemble's config:
ENSEMBLE.*, TEST.* thresholds) and ``README.md``. `load_predictor` loads it as an EnsemblePredictor.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from meddet.config import CfgNode, load_config, merge_yaml, save_config
from meddet.config.tuned import TUNE_DIR, TUNE_ENSEMBLE_DIR, TUNED_CONFIG, apply_tuned
from meddet.errors import ConfigError, DataError
from meddet.hub.remote import download_bundle, upload_bundle
from meddet.inference.base import score_thresholds
from meddet.inference.ensemble import FUSION_METHODS, EnsemblePredictor, ensemble_config
from meddet.inference.predictor import Predictor
from meddet.io.recipe import PreprocessRecipe
from meddet.modeling.build import select_engine
from meddet.modeling.checkpoint import architecture_of, engine_of, read_checkpoint
from meddet.visualize import class_color

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_FORMAT",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "META_NAME",
    "CARD_NAME",
    "export_bundle",
    "export_ensemble",
    "save_predictor",
    "bundle_metadata",
    "read_bundle",
    "load_predictor",
    "from_pretrained",
    "resolve_bundle",
    "push_bundle",
]

BUNDLE_FORMAT = 1
WEIGHTS_NAME = "model.pth"
CONFIG_NAME = "config.yaml"
META_NAME = "meddet.json"
CARD_NAME = "README.md"
BUNDLE_FILES = (WEIGHTS_NAME, CONFIG_NAME, META_NAME, CARD_NAME)
ENSEMBLE_KIND = "ensemble"
MEMBER_PREFIX = "member_"
# What a bundle folder holds on the Hub: its files and, for an ensemble, its members' files.
BUNDLE_PATTERNS = list(BUNDLE_FILES) + [f"{MEMBER_PREFIX}*/{name}" for name in BUNDLE_FILES]


def _hex(bgr: Sequence[int]) -> str:
    b, g, r = (int(v) for v in bgr)
    return f"#{r:02x}{g:02x}{b:02x}"


def _training_summary(cfg: CfgNode) -> dict[str, Any]:
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


def bundle_metadata(cfg: CfgNode, metrics: dict[str, float] | None = None, engine: str | None = None) -> dict[str, Any]:
    """The content of meddet.json for a run's config (classes, engine, preprocessing, thresholds, data, metrics).

    ``engine``: the engine of the bundle's weights (export_bundle passes the checkpoint's); default the
    config's MODEL.ENGINE resolved here."""
    k = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    names = list(cfg.DATASETS.CLASS_NAMES) or [f"class_{i}" for i in range(k)]
    if len(names) != k:
        raise ConfigError(f"DATASETS.CLASS_NAMES has {len(names)} names but MODEL.ROI_HEADS.NUM_CLASSES is {k}")
    thresholds = score_thresholds(cfg, names)
    per_class = [float(t) for t in thresholds] if list(cfg.TEST.CLASS_SCORE_THRESH) else []
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
            # The whole recipe from the file to the model input (meddet.io.recipe), replayed by the
            # Predictor the bundle loads into (its config.yaml holds the same DICOM.* / PREPROCESS.*).
            "preprocess": PreprocessRecipe.from_cfg(cfg).to_dict(),
        },
        "thresholds": {
            "score_thresh": float(cfg.TEST.SCORE_THRESH),
            "class_score_thresh": per_class,
            "model_score_thresh": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
            "nms_thresh": float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST),
            "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE),
        },
        "training_data": _training_summary(cfg),
        "metrics": dict(metrics or {}),
    }


_TILING_KEYS = {  # meddet.json "tiling" field -> TILING key
    "tile_size": "SIZE",
    "overlap": "OVERLAP",
    "min_visible": "MIN_VISIBLE",
    "batch_size": "BATCH_SIZE",
    "full_image_pass": "FULL_IMAGE_PASS",
    "merge": "MERGE",
    "match_metric": "MATCH_METRIC",
    "match_thresh": "MATCH_THRESH",
    "class_agnostic": "CLASS_AGNOSTIC",
    "soft_nms_sigma": "SOFT_NMS_SIGMA",
}


def tiling_metadata(cfg: CfgNode) -> dict[str, Any]:
    """The bundle's "tiling" field: {} for whole-image models, else the sliced-inference settings."""
    if not cfg.TILING.ENABLED:
        return {}
    return {name: cfg.TILING[key] for name, key in _TILING_KEYS.items()}


def apply_tiling_metadata(cfg: CfgNode, tiling: dict[str, Any], source: str) -> None:
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
    return (
        f"Trained on {tiling['tile_size']}-pixel tiles; predicts any image size by sliced inference "
        f"({tiling['overlap']:.0%} overlap, tiles merged by {tiling['merge']} with "
        f"{tiling['match_metric'].upper()} >= {tiling['match_thresh']})."
    )


def _card_front_matter(tags: list[str]) -> list[str]:
    """The YAML front matter of a bundle's model card (Hugging Face reads library, pipeline and tags from it)."""
    head = ["---", "library_name: meddet", "pipeline_tag: object-detection", "license: other", "tags:"]
    return head + [f"- {t}" for t in ("object-detection", "medical-imaging", *tags)] + ["---", ""]


def _model_card(meta: dict[str, Any], repo_name: str) -> str:
    names = [c["name"] for c in meta["classes"]]
    header = _card_front_matter(["mammography", meta["engine"]])
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
        "from meddet.hub import from_pretrained",
        f"p = from_pretrained({repo_name!r})",
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
        _geometry_text(meta["input"].get("preprocess") or {}),
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


def _geometry_text(recipe: dict) -> str:
    steps = []
    if recipe.get("flip_left"):
        steps.append(f"breasts mirrored so the chest wall is on the left (side from the {recipe['flip_left']})")
    if recipe.get("crop_breast"):
        steps.append(f"cropped to the breast (margin {recipe.get('crop_margin')})")
    if not steps:
        return ""
    return (
        "Before the model: " + "; ".join(steps) + ". The Predictor replays this on original files and "
        "reports boxes in the original file's pixels."
    )


def export_bundle(
    run: str | os.PathLike,
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    overwrite: bool = False,
    untuned: bool = False,
) -> Path:
    """Turn a run folder (config.yaml, model_final.pth / model_best.pth, eval/metrics.json and, from
    `-c tune`, tune/tuned_config.yaml) into a bundle.

    `weights` defaults to the run's model_final.pth, else model_best.pth. The run's tuned thresholds
    (NMS, score, per class) are the bundle's unless `untuned`; the log and meddet.json's
    ``thresholds.tuned`` name the file they came from (null: the run config's own). Returns the bundle folder.
    """
    run = Path(run)
    cfg_path = run / CONFIG_NAME
    if not cfg_path.is_file():
        raise DataError(f"{cfg_path}: run config not found (expected a training run folder with config.yaml)")
    cfg = load_config(cfg_path)
    tuned = None if untuned else apply_tuned(cfg, run)
    if tuned is None and not untuned:
        logger.info(
            "%s: no %s/%s (from -c tune); the bundle keeps the run config's thresholds", run, TUNE_DIR, TUNED_CONFIG
        )
    if weights is None:
        for name in ("model_final.pth", "model_best.pth"):
            if (run / name).is_file():
                weights = run / name
                break
        else:
            raise DataError(f"{run}: no model_final.pth or model_best.pth (expected a finished training run)")
    weights = Path(weights)
    state = read_checkpoint(weights)  # raises ModelError with the file name when unreadable
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: folder exists and is not empty (pass overwrite=True / --overwrite)")
        for name in BUNDLE_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    # Only the model weights travel (optimizer/scheduler state are of no use to a user and large), with the
    # checkpoint's engine and architecture: the weights always load into the model that made them.
    model_state = state.get("model", state)
    saved_meta = dict(state.get("meddet") or {})
    engine = engine_of(state)
    if engine is None:
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
    meta["thresholds"]["tuned"] = tuned.relative_to(run).as_posix() if tuned is not None else None
    bundle_cfg = cfg.clone()
    bundle_cfg.defrost()
    bundle_cfg.MODEL.ENGINE = engine
    bundle_cfg.MODEL.WEIGHTS = ""
    bundle_cfg.MODEL.DEVICE = "auto"
    bundle_cfg.OUTPUT_DIR = "./output"
    bundle_cfg.DATASETS.CLASS_NAMES = [c["name"] for c in meta["classes"]]
    if meta["thresholds"]["class_score_thresh"]:  # restated in class order, by name
        bundle_cfg.TEST.CLASS_SCORE_THRESH = list(meta["thresholds"]["class_score_thresh"])
        bundle_cfg.TEST.CLASS_SCORE_THRESH_NAMES = list(bundle_cfg.DATASETS.CLASS_NAMES)
    save_config(bundle_cfg, out / CONFIG_NAME)
    (out / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / CARD_NAME).write_text(_model_card(meta, out.resolve().name), encoding="utf-8")
    logger.info(
        "exported %s (weights %s%s) to bundle %s",
        run,
        weights.name,
        f", tuned thresholds from {tuned}" if tuned is not None else "",
        out,
    )
    return out


def read_bundle(folder: str | os.PathLike) -> dict[str, Any]:
    """meddet.json of a bundle folder, checked for the files a prediction needs (for an ensemble bundle:
    its config and every member bundle)."""
    folder = Path(folder)
    if not (folder / META_NAME).is_file():
        missing = next(n for n in (WEIGHTS_NAME, CONFIG_NAME, META_NAME) if not (folder / n).is_file())
        raise DataError(f"{folder}: not a meddet bundle ({missing} missing; expected {', '.join(BUNDLE_FILES)})")
    try:
        meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{folder / META_NAME}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise DataError(
            f"{folder / META_NAME}: bundle format {meta.get('format') if isinstance(meta, dict) else meta!r}; "
            f"expected {BUNDLE_FORMAT}"
        )
    if meta.get("kind") == ENSEMBLE_KIND:
        members = meta.get("members")
        if (
            not isinstance(members, list)
            or not members
            or not all(isinstance(m, dict) and isinstance(m.get("folder"), str) for m in members)
        ):
            raise DataError(
                f"{folder / META_NAME}: members is {members!r}; expected a list of "
                '{"folder": "member_0", ...} entries'
            )
        if not (folder / CONFIG_NAME).is_file():
            raise DataError(f"{folder}: ensemble bundle without {CONFIG_NAME}")
        for m in members:
            sub = folder / m["folder"]
            if Path(m["folder"]).is_absolute() or ".." in Path(m["folder"]).parts or not sub.is_dir():
                raise DataError(f"{folder / META_NAME}: member folder {m['folder']!r} not found in the bundle")
            read_bundle(sub)
        return meta
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if not (folder / name).is_file():
            raise DataError(f"{folder}: not a meddet bundle ({name} missing; expected {', '.join(BUNDLE_FILES)})")
    return meta


def resolve_bundle(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> Path:
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
    return download_bundle(repo_id, BUNDLE_PATTERNS, revision=revision, cache_dir=cache_dir, token=token)


def load_predictor(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    opts: Sequence = (),
) -> Predictor | EnsemblePredictor:
    """A predictor from a bundle folder or a Hub repo id: a Predictor, or for an ensemble bundle an
    EnsemblePredictor of its members (each a Predictor); `device` overrides MODEL.DEVICE (default auto),
    `opts` (KEY VALUE) are merged into the config (of each member and of the ensemble). Either way a
    :class:`~meddet.inference.base.DetectorLike` with ``bundle`` (meddet.json) and ``bundle_dir``."""
    folder = resolve_bundle(path_or_repo_id, revision=revision, cache_dir=cache_dir, token=token)
    meta = read_bundle(folder)
    cfg = load_config(folder / CONFIG_NAME)
    if meta.get("kind") == ENSEMBLE_KIND:
        members = [load_predictor(folder / m["folder"], device=device, opts=opts) for m in meta["members"]]
        cfg.merge_from_list(list(opts))
        if device:
            cfg.MODEL.DEVICE = device
        predictor: Predictor | EnsemblePredictor = EnsemblePredictor(members, [c["name"] for c in meta["classes"]], cfg)
    else:
        apply_tiling_metadata(cfg, meta.get("input", {}).get("tiling", {}), str(folder / META_NAME))
        recipe = meta.get("input", {}).get("preprocess")
        if recipe:  # the recorded preprocessing recipe is what the model expects: replay it (DICOM.*, PREPROCESS.*)
            cfg.merge_from_list(
                PreprocessRecipe.from_dict(recipe, f"{folder / META_NAME}: input.preprocess").config_opts()
            )
        cfg.merge_from_list(list(opts))
        if device:
            cfg.MODEL.DEVICE = device
        predictor = Predictor(cfg, weights=folder / WEIGHTS_NAME, class_names=[c["name"] for c in meta["classes"]])
    predictor.bundle = meta
    predictor.bundle_dir = folder
    return predictor


def from_pretrained(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> Predictor | EnsemblePredictor:
    """A predictor from a model bundle folder or a Hugging Face Hub repo id (ORG/NAME): a
    :class:`~meddet.inference.predictor.Predictor` (whole-image or tiled, as the bundle says), or for an
    ensemble bundle an :class:`~meddet.inference.ensemble.EnsemblePredictor`. `revision`, `cache_dir` and
    `token` go to huggingface_hub (HF_HUB_OFFLINE=1 loads from its cache); `device` overrides MODEL.DEVICE.

    >>> from meddet.hub import from_pretrained
    >>> p = from_pretrained("org/mammo-detector", device="cpu")
    >>> out = p("image.dcm")   # boxes (x1, y1, x2, y2 in the file's pixels), scores, classes, labels

    The same as :func:`load_predictor` without its config overrides. (It replaces
    ``Predictor.from_pretrained``: meddet.inference sits below meddet.hub and does not import it.)"""
    return load_predictor(path_or_repo_id, revision=revision, device=device, cache_dir=cache_dir, token=token)


def _copy_bundle(src: Path, dst: Path) -> dict[str, Any]:
    """A bundle folder (or an ensemble bundle) copied to `dst`; returns its meddet.json."""
    meta = read_bundle(src)
    dst.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for m in meta.get("members", []) if meta.get("kind") == ENSEMBLE_KIND else []:
        _copy_bundle(src / m["folder"], dst / m["folder"])
    return meta


def export_ensemble(
    members: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    opts: Sequence = (),
    overwrite: bool = False,
    untuned: bool = False,
    class_names: Sequence[str] | None = None,
) -> Path:
    """An ensemble bundle (a bundle of bundles, see the module doc) of `members`: run folders (exported
    as by `export_bundle`, with their tuned thresholds unless `untuned`), bundle folders or Hub repo ids,
    fused in this order.

    The ensemble's config is the first member's bundle config (its thresholds, tuned when its run was;
    a first-member run's ``tune_ensemble/tuned_config.yaml``, from ``-c tune --ensemble``, wins unless
    `untuned`) with `opts` (KEY VALUE, e.g. ENSEMBLE.METHOD nms) on top; its classes are `class_names`
    (default: the first member's, then each member's new ones in order) and per-class thresholds follow
    them by name (a class only a later member has gets TEST.SCORE_THRESH)."""
    if len(members) < 2:
        raise ConfigError(f"ensemble export: {len(members)} member(s) given; expected at least two")
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    entries: list[dict[str, Any]] = []
    metas: list[dict[str, Any]] = []
    for k, spec in enumerate(members):
        folder = f"{MEMBER_PREFIX}{k}"
        p = Path(spec)
        if p.is_dir() and not (p / META_NAME).is_file() and (p / CONFIG_NAME).is_file():
            export_bundle(p, out / folder, untuned=untuned)
            meta = read_bundle(out / folder)
        else:
            meta = _copy_bundle(resolve_bundle(spec), out / folder)
        if meta.get("kind") == ENSEMBLE_KIND:
            raise ConfigError(f"{spec}: an ensemble bundle cannot be an ensemble member; give its members")
        metas.append(meta)
        entries.append(
            {
                "folder": folder,
                "source": str(spec),
                "engine": meta.get("engine"),
                "classes": [c["name"] for c in meta["classes"]],
            }
        )
    first = [c["name"] for c in metas[0]["classes"]]
    names = list(class_names or [])
    if not names:
        for e in entries:
            names.extend(n for n in e["classes"] if n not in names)
    cfg = load_config(out / entries[0]["folder"] / CONFIG_NAME)
    first_run = Path(members[0])
    tuned = first_run / TUNE_ENSEMBLE_DIR / TUNED_CONFIG
    tuned_from = None
    if not untuned and first_run.is_dir() and tuned.is_file():
        merge_yaml(cfg, tuned)
        tuned_from = tuned.relative_to(first_run).as_posix()
        logger.info("ensemble export: using the tuned ensemble thresholds of %s", tuned)
    elif metas[0].get("thresholds", {}).get("tuned"):
        tuned_from = f"{entries[0]['folder']}: {metas[0]['thresholds']['tuned']}"
    cfg.merge_from_list(list(opts))
    meta = _write_ensemble_top(out, cfg, names, first, entries, metas, tuned_from)
    logger.info(
        "exported an ensemble of %d members (%s fusion) to bundle %s", len(entries), meta["ensemble"]["method"], out
    )
    return out


def _prepare_out(out: Path, overwrite: bool) -> None:
    """An empty bundle folder: created, or emptied of bundle files and member folders with `overwrite`."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: folder exists and is not empty (pass overwrite=True / --overwrite)")
        for name in BUNDLE_FILES:
            (out / name).unlink(missing_ok=True)
        for sub in out.glob(f"{MEMBER_PREFIX}*"):
            if sub.is_dir():
                shutil.rmtree(sub)
    out.mkdir(parents=True, exist_ok=True)


def _write_ensemble_top(
    out: Path,
    cfg: CfgNode,
    names: Sequence[str],
    first: Sequence[str],
    entries: list[dict],
    metas: list[dict],
    tuned_from: str | None,
) -> dict[str, Any]:
    """The top of an ensemble bundle (config.yaml, meddet.json, README.md) over member bundles already in
    `out/<entry folder>`; `cfg` the first member's config with ENSEMBLE.* and the thresholds. Returns meta."""
    if str(cfg.ENSEMBLE.METHOD).lower() not in FUSION_METHODS:
        raise ConfigError(f"ENSEMBLE.METHOD: expected 'wbf' or 'nms', found {cfg.ENSEMBLE.METHOD!r}")
    weights = [float(w) for w in cfg.ENSEMBLE.WEIGHTS]
    if weights and len(weights) != len(entries):
        raise ConfigError(
            f"ENSEMBLE.WEIGHTS: {len(weights)} weights for {len(entries)} models; expected one per model (or none)"
        )
    ens_cfg = ensemble_config(cfg, names, first).clone()
    ens_cfg.defrost()
    ens_cfg.MODEL.WEIGHTS = ""
    ens_cfg.MODEL.DEVICE = "auto"
    ens_cfg.OUTPUT_DIR = "./output"
    thresholds = score_thresholds(ens_cfg, list(names))
    e = ens_cfg.ENSEMBLE
    meta = {
        "format": BUNDLE_FORMAT,
        "kind": ENSEMBLE_KIND,
        "config": CONFIG_NAME,
        "engine": ENSEMBLE_KIND,
        "members": entries,
        "ensemble": {
            "method": str(e.METHOD).lower(),
            "iou_thresh": float(e.IOU_THRESH),
            "weights": weights,
            "skip_box_thresh": float(e.SKIP_BOX_THRESH),
        },
        "classes": [
            {"index": i, "name": n, "color": _hex(class_color(i)), "score_thresh": float(thresholds[i])}
            for i, n in enumerate(names)
        ],
        "input": metas[0].get("input", {}),
        "thresholds": {
            "score_thresh": float(ens_cfg.TEST.SCORE_THRESH),
            "class_score_thresh": [float(v) for v in ens_cfg.TEST.CLASS_SCORE_THRESH],
            "tuned": tuned_from,
        },
        "training_data": {},
        "metrics": {},
    }
    save_config(ens_cfg, out / CONFIG_NAME)
    (out / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / CARD_NAME).write_text(_ensemble_card(meta, out.resolve().name), encoding="utf-8")
    return meta


def save_predictor(
    predictor: Predictor | EnsemblePredictor, out_dir: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Any predictor (a :class:`~meddet.inference.base.DetectorLike`) as a bundle `load_predictor` loads
    back: a Predictor (whole-image or tiled) as a model bundle of its loaded weights, config and
    thresholds; an EnsemblePredictor as an ensemble bundle of its members' bundles and its fusion settings
    and thresholds. What a loaded bundle knew (metrics, training data, where tuned thresholds came from)
    is kept. Returns the bundle folder."""
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    known = getattr(predictor, "bundle", None) or {}
    members = getattr(predictor, "members", None)
    if members is not None:
        entries, metas = [], []
        for k, m in enumerate(members):
            if getattr(m, "members", None) is not None:
                raise ConfigError(f"ensemble member {k} is itself an ensemble; expected single models as members")
            folder = f"{MEMBER_PREFIX}{k}"
            save_predictor(m, out / folder)
            meta = read_bundle(out / folder)
            metas.append(meta)
            entries.append(
                {
                    "folder": folder,
                    "source": str(getattr(m, "bundle_dir", "") or "in memory"),
                    "engine": meta.get("engine"),
                    "classes": [c["name"] for c in meta["classes"]],
                }
            )
        _write_ensemble_top(
            out,
            predictor.cfg,
            predictor.class_names,
            members[0].class_names,
            entries,
            metas,
            (known.get("thresholds") or {}).get("tuned"),
        )
        logger.info("saved an ensemble of %d members to bundle %s", len(entries), out)
        return out
    cfg = predictor.cfg.clone()
    cfg.defrost()
    cfg.DATASETS.CLASS_NAMES = list(predictor.class_names)
    model = cast(Predictor, predictor).model  # no members: a single model
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": state}, out / WEIGHTS_NAME)
    meta = bundle_metadata(cfg, known.get("metrics"))
    if known.get("training_data"):
        meta["training_data"] = known["training_data"]
    meta["thresholds"]["tuned"] = (known.get("thresholds") or {}).get("tuned")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "auto"
    cfg.OUTPUT_DIR = "./output"
    if meta["thresholds"]["class_score_thresh"]:
        cfg.TEST.CLASS_SCORE_THRESH = list(meta["thresholds"]["class_score_thresh"])
        cfg.TEST.CLASS_SCORE_THRESH_NAMES = list(cfg.DATASETS.CLASS_NAMES)
    save_config(cfg, out / CONFIG_NAME)
    (out / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / CARD_NAME).write_text(_model_card(meta, out.resolve().name), encoding="utf-8")
    logger.info("saved a predictor to bundle %s", out)
    return out


def _ensemble_card(meta: dict[str, Any], repo_name: str) -> str:
    ens = meta["ensemble"]
    lines = [
        *_card_front_matter(["ensemble"])[:-1],
        "",
        f"# {repo_name}",
        "",
        f"Ensemble of {len(meta['members'])} meddet detectors, fused by {ens['method'].upper()} "
        f"(IoU >= {ens['iou_thresh']:g}, weights {ens['weights'] or 'equal'}). Each member is a complete model "
        "bundle in its sub-folder, with its own model card.",
        "",
        "> **Not a medical device.** This model is for research only. It has not been cleared or approved "
        "by any regulator and must not be used for diagnosis or treatment decisions.",
        "",
        "## Use",
        "",
        "```python",
        "from meddet.hub import from_pretrained",
        f"p = from_pretrained({repo_name!r})  # an EnsemblePredictor",
        'out = p("image.png")  # boxes (x1, y1, x2, y2 in pixels), scores, classes, labels',
        "```",
        "",
        "## Members",
        "",
        "| folder | engine | classes |",
        "|---|---|---|",
        *[f"| {m['folder']} | {m['engine']} | {', '.join(m['classes'])} |" for m in meta["members"]],
        "",
        "## Classes",
        "",
        "| index | name | colour | score threshold |",
        "|---|---|---|---|",
        *[f"| {c['index']} | {c['name']} | `{c['color']}` | {c['score_thresh']:.3f} |" for c in meta["classes"]],
        "",
    ]
    return "\n".join(lines)


def push_bundle(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload meddet model bundle",
    token: str | bool | None = None,
) -> str:
    """Create (if needed) the Hub model repo and upload the bundle; returns the commit URL.

    The token comes from `token`, else HF_TOKEN or the user's `hf auth login` — never from a repository file.
    """
    folder = Path(folder)
    read_bundle(folder)
    url = upload_bundle(
        folder, repo_id, BUNDLE_PATTERNS, private=private, revision=revision, commit_message=commit_message, token=token
    )
    logger.info("pushed bundle %s to %s", folder, repo_id)
    return url
